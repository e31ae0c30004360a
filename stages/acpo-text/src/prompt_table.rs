//! An encoded prompt set as `embed-prompts` writes it, and the contexts a prompt-conditioned
//! UNet reads from it.
//!
//! Folder layout (one per set, `data/prepared/prompt-embeddings/<name>/`):
//! `prompts.json` (a list of [`PromptRecord`], row for row) and `embeddings.safetensors`
//! ([`crate::EmbeddingSet`]'s file: `tokens` `[N, L, D]`, zero past each prompt's length).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TextError};

/// One prompt of a set: where it came from and how it was encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    /// Source set and split of `prompts.parquet` (`diffusiondb`/`test`, `drawbench`/`test`, ...).
    pub set: String,
    pub split: String,
    pub id: String,
    pub prompt: String,
    /// The source's category (empty when it has none).
    pub category: String,
    /// Tokens encoded, `[CLS]` and `[SEP]` included.
    pub tokens: usize,
    /// Whether the prompt was cut to the encoder's limit.
    pub truncated: bool,
}

/// A loaded prompt set: its records and token states.
#[derive(Debug, Clone)]
pub struct PromptTable {
    pub records: Vec<PromptRecord>,
    /// `[N, L, D]` F32 token states, zero past each prompt's length.
    pub tokens: Tensor,
}

impl PromptTable {
    /// Reads `dir/prompts.json` and `dir/embeddings.safetensors`, checking they agree.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (ppath, records, tokens): (_, Vec<PromptRecord>, _) = crate::embeddings::load_embedded(
            dir,
            "prompts.json",
            "prompt records",
            "embed-prompts",
            device,
        )?;
        if records.is_empty() {
            return Err(TextError::bad(&ppath, "no prompts"));
        }
        let l = tokens.dim(1)?;
        if let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.tokens == 0 || r.tokens > l)
        {
            return Err(TextError::bad(
                &ppath,
                format!(
                    "record {i} has {} tokens; the embeddings hold 1..={l} per prompt",
                    r.tokens
                ),
            ));
        }
        Ok(PromptTable { records, tokens })
    }

    /// Writes the two files [`PromptTable::load`] reads (`embeddings.safetensors` with
    /// `tokens` only) into `dir`: a set made by hand, e.g. by a test.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TextError::io(dir, e))?;
        let ppath = dir.join("prompts.json");
        let json = serde_json::to_string_pretty(&self.records)
            .map_err(|e| TextError::bad(&ppath, e.to_string()))?;
        std::fs::write(&ppath, json).map_err(|e| TextError::io(&ppath, e))?;
        let tokens = self.tokens.to_device(&Device::Cpu)?;
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("tokens".to_string(), tokens)]),
            dir.join("embeddings.safetensors"),
        )?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Width of a token state (the UNet's `context_dim`).
    pub fn dim(&self) -> usize {
        self.tokens.dims()[2]
    }

    /// The contexts of rows `rows` (`[rows.len(), L', D]` on `device`), `L'` the longest of
    /// these prompts: a batch is padded only as far as it needs, as the captions a model is
    /// trained on are (the UNet's cross-attention has no key mask, so padding tokens count).
    pub fn contexts(&self, rows: &[usize], device: &Device) -> Result<Tensor> {
        let n = self.len();
        if let Some(bad) = rows.iter().find(|&&r| r >= n) {
            return Err(TextError::Param {
                key: "rows".into(),
                msg: format!("row {bad} of a set of {n} prompts"),
            });
        }
        let longest = rows
            .iter()
            .map(|&r| self.records[r].tokens)
            .max()
            .unwrap_or(1);
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::from_vec(ids, rows.len(), self.tokens.device())?;
        Ok(self
            .tokens
            .index_select(&ids, 0)?
            .narrow(1, 0, longest)?
            .to_device(device)?)
    }
}

/// `count` of `0..total` chosen with a seeded generator `below(n)` (uniform in `0..n`), in
/// ascending order; `count` 0 or `>= total` keeps everything. A partial Fisher-Yates shuffle,
/// so the same seed and sizes always choose the same rows.
pub fn choose_subset(
    total: usize,
    count: usize,
    mut below: impl FnMut(usize) -> usize,
) -> Vec<usize> {
    if count == 0 || count >= total {
        return (0..total).collect();
    }
    let mut idx: Vec<usize> = (0..total).collect();
    for i in 0..count {
        let j = i + below(total - i);
        idx.swap(i, j);
    }
    let mut out = idx[..count].to_vec();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tokens: usize) -> PromptRecord {
        PromptRecord {
            set: "s".into(),
            split: "test".into(),
            id: "0".into(),
            prompt: "p".into(),
            category: String::new(),
            tokens,
            truncated: false,
        }
    }

    fn write(dir: &Path, records: &[PromptRecord], tokens: &Tensor) {
        let t = PromptTable {
            records: records.to_vec(),
            tokens: tokens.clone(),
        };
        t.save(dir).unwrap();
    }

    #[test]
    fn contexts_are_cut_to_the_longest_selected_prompt() {
        let d = tempfile::tempdir().unwrap();
        let v: Vec<f32> = (0..3 * 4 * 2).map(|x| x as f32).collect();
        let tokens = Tensor::from_vec(v, (3, 4, 2), &Device::Cpu).unwrap();
        write(d.path(), &[record(2), record(4), record(3)], &tokens);
        let t = PromptTable::load(d.path(), &Device::Cpu).unwrap();
        assert_eq!((t.len(), t.dim()), (3, 2));
        let c = t.contexts(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(c.dims(), &[2, 3, 2]);
        let rows: Vec<Vec<Vec<f32>>> = c.to_vec3().unwrap();
        assert_eq!(rows[0][0], vec![16.0, 17.0]); // row 2 starts at 2 * 4 * 2
        assert_eq!(rows[1][2], vec![4.0, 5.0]);
        assert_eq!(t.contexts(&[1], &Device::Cpu).unwrap().dims(), &[1, 4, 2]);
        assert!(t.contexts(&[3], &Device::Cpu).is_err());
    }

    #[test]
    fn disagreeing_files_are_refused_naming_them() {
        let d = tempfile::tempdir().unwrap();
        let tokens = Tensor::zeros((2, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        write(d.path(), &[record(2)], &tokens);
        let e = PromptTable::load(d.path(), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("embeddings.safetensors"), "{e}");
        write(d.path(), &[record(2), record(5)], &tokens);
        let e = PromptTable::load(d.path(), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("record 1 has 5 tokens"), "{e}");
        std::fs::write(d.path().join("prompts.json"), "[{").unwrap();
        let e = PromptTable::load(d.path(), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("prompts.json"), "{e}");
    }

    #[test]
    fn subsets_are_seeded_sorted_and_whole_when_asked() {
        let mut state = 7u64;
        let mut lcg = move |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let a = choose_subset(100, 10, &mut lcg);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[9] < 100);
        assert_eq!(choose_subset(5, 0, |_| 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(choose_subset(5, 9, |_| 0), vec![0, 1, 2, 3, 4]);
        // below() always 0: the first `count` rows
        assert_eq!(choose_subset(5, 2, |_| 0), vec![0, 1]);
    }
}
