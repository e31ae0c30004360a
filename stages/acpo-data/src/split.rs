//! Deterministic, seeded orders for train/val/test selection.
//!
//! ChaCha8 is used (not `StdRng`) because its output is fixed by its
//! specification, so a seed gives the same split on every platform and version.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A seeded permutation of `0..n`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    v
}

/// A seeded, class-interleaved order of `0..labels.len()`: each class's indices are
/// shuffled, then the classes are taken in turn (class 0's first, class 1's first, ...),
/// so every prefix of the order is as class-balanced as the data allows.
pub fn stratified(labels: &[i64], seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut lists: Vec<Vec<usize>> = by_class.into_values().collect();
    for l in &mut lists {
        l.shuffle(&mut rng);
    }
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(labels.len());
    for k in 0..longest {
        for l in &lists {
            if let Some(&i) = l.get(k) {
                out.push(i);
            }
        }
    }
    out
}

/// Cuts consecutive pieces of the given sizes from `order` (`None` = all that is left).
/// Returns an error message when the order is too short.
pub fn take_pieces(
    order: &[usize],
    sizes: &[(&str, Option<usize>)],
) -> Result<Vec<Vec<usize>>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    for (name, size) in sizes {
        let left = order.len() - at;
        let n = match size {
            Some(n) if *n > left => {
                return Err(format!(
                    "split {name} asks for {n} images but only {left} are left of {}",
                    order.len()
                ))
            }
            Some(n) => *n,
            None => left,
        };
        out.push(order[at..at + n].to_vec());
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_deterministic_and_a_permutation() {
        let a = shuffled(100, 7);
        assert_eq!(a, shuffled(100, 7));
        assert_ne!(a, shuffled(100, 8));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn stratified_prefixes_are_balanced() {
        let labels: Vec<i64> = (0..300).map(|i| (i % 3) as i64).collect();
        let o = stratified(&labels, 1);
        assert_eq!(o.len(), 300);
        let first: Vec<i64> = o[..30].iter().map(|&i| labels[i]).collect();
        for c in 0..3 {
            assert_eq!(first.iter().filter(|&&l| l == c).count(), 10);
        }
        let mut s = o.clone();
        s.sort();
        assert_eq!(s, (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn pieces_are_disjoint_and_checked() {
        let o: Vec<usize> = (0..10).collect();
        let p = take_pieces(&o, &[("val", Some(2)), ("train", None)]).unwrap();
        assert_eq!(p[0], vec![0, 1]);
        assert_eq!(p[1].len(), 8);
        let e = take_pieces(&o, &[("val", Some(11))]).unwrap_err();
        assert!(e.contains("val") && e.contains("11"), "{e}");
    }
}
