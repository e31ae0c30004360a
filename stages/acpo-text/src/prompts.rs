//! Prompt lists as read from files: empty prompts dropped and counted.

/// The prompts to encode, the count of empty ones dropped, and where each kept one came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptSet {
    /// Non-empty prompts, trimmed, in input order.
    pub prompts: Vec<String>,
    /// Index in the input of each kept prompt.
    pub source_index: Vec<usize>,
    /// Prompts dropped because they were empty or white space only.
    pub empty: usize,
}

impl PromptSet {
    /// Keeps every prompt with a non-space character (trimmed), counts the rest.
    pub fn new<S: AsRef<str>>(raw: &[S]) -> Self {
        let mut set = PromptSet::default();
        for (i, p) in raw.iter().enumerate() {
            let p = p.as_ref().trim();
            if p.is_empty() {
                set.empty += 1;
            } else {
                set.prompts.push(p.to_string());
                set.source_index.push(i);
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prompts_are_dropped_and_counted() {
        let s = PromptSet::new(&["a cat", "", "  ", " a dog\n", "\t"]);
        assert_eq!(s.prompts, vec!["a cat", "a dog"]);
        assert_eq!(s.source_index, vec![0, 3]);
        assert_eq!(s.empty, 3);
        assert_eq!(s.len(), 2);
        assert!(PromptSet::new::<&str>(&[]).is_empty());
    }
}
