//! What a prompt-conditioned model is trained and checked on: caption contexts grouped by
//! class.
//!
//! A labelled dataset has no text of its own; the text-to-image rows caption each class with
//! several templates (acpo-text, `embed-captions`) and train on a caption drawn per image and
//! step, so the model sees every phrasing of its class. This module knows only tensors and
//! labels: reading the caption files is the stage glue's business.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::metrics::HeldoutMse;
use crate::rng::SeededRng;

/// Caption contexts `[K, L, D]` and, per class, the rows that caption it.
#[derive(Debug, Clone)]
pub struct ClassContexts {
    table: Tensor,
    rows: Vec<Vec<u32>>,
}

impl ClassContexts {
    /// `table` `[K, L, D]` with `row_labels[k]` the class of row `k`.
    pub fn new(table: Tensor, row_labels: &[usize]) -> Result<Self> {
        let (k, _, _) = table.dims3().map_err(|_| {
            DiffusionError::config(
                "contexts",
                format!("shape {:?}, expected [K, L, D]", table.dims()),
            )
        })?;
        if k != row_labels.len() || k == 0 {
            return Err(DiffusionError::config(
                "contexts",
                format!("{k} context rows for {} labels", row_labels.len()),
            ));
        }
        let classes = row_labels.iter().max().map_or(0, |m| m + 1);
        let mut rows = vec![Vec::new(); classes];
        for (r, &l) in row_labels.iter().enumerate() {
            rows[l].push(r as u32);
        }
        Ok(ClassContexts { table, rows })
    }

    /// Width of a token state (the UNet's `context_dim`).
    pub fn context_dim(&self) -> usize {
        self.table.dims()[2]
    }

    pub fn classes(&self) -> usize {
        self.rows.len()
    }

    /// Checks that every label of `labels` has at least one caption.
    pub fn check_covers(&self, labels: &[i64]) -> Result<()> {
        for &l in labels {
            if l < 0 || self.rows.get(l as usize).is_none_or(|r| r.is_empty()) {
                return Err(DiffusionError::config(
                    "contexts",
                    format!(
                        "label {l} has no caption ({} classes captioned)",
                        self.classes()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn select(&self, rows: Vec<u32>, device: &Device) -> Result<Tensor> {
        let n = rows.len();
        let ids = Tensor::from_vec(rows, n, self.table.device())?;
        Ok(self.table.index_select(&ids, 0)?.to_device(device)?)
    }

    /// One caption per image, drawn uniformly among its class's rows from `r` (no draw for a
    /// class with a single caption).
    pub fn draw(&self, labels: &[i64], r: &mut SeededRng, device: &Device) -> Result<Tensor> {
        let rows = labels
            .iter()
            .map(|&l| {
                let rs = &self.rows[l as usize];
                if rs.len() == 1 {
                    rs[0]
                } else {
                    rs[r.below(rs.len())]
                }
            })
            .collect();
        self.select(rows, device)
    }

    /// The first caption of each image's class (the fixed caption of held-out checks).
    pub fn first(&self, labels: &[i64], device: &Device) -> Result<Tensor> {
        self.select(
            labels.iter().map(|&l| self.rows[l as usize][0]).collect(),
            device,
        )
    }
}

/// How much a conditional model uses its condition: held-out noise-prediction MSE with the
/// image's own caption, and the paired increase (same `(x0, t, eps)` draws) when the caption is
/// replaced by the null condition or by the next class's caption. A model that ignores its
/// prompt has both increases at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditioningCheck {
    /// MSE with the image's own class caption (first template).
    pub caption: HeldoutMse,
    /// MSE with the null condition (all-zero context) minus `caption`, draw by draw.
    pub null_minus_caption: HeldoutMse,
    /// MSE with the caption of class `(label + 1) mod classes` minus `caption`.
    pub other_class_minus_caption: HeldoutMse,
}

impl ConditioningCheck {
    /// From per-draw MSEs under the three conditions (same draws, same order).
    pub fn from_draws(caption: &[f64], null: &[f64], other: &[f64]) -> Self {
        let diff = |a: &[f64]| -> Vec<f64> { a.iter().zip(caption).map(|(x, c)| x - c).collect() };
        ConditioningCheck {
            caption: HeldoutMse::from_values(caption),
            null_minus_caption: HeldoutMse::from_values(&diff(null)),
            other_class_minus_caption: HeldoutMse::from_values(&diff(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ClassContexts {
        // 5 rows [K=5, L=1, D=2]: row k holds (k, k); classes 0,0,1,2,2
        let v: Vec<f32> = (0..5).flat_map(|k| [k as f32, k as f32]).collect();
        let t = Tensor::from_vec(v, (5, 1, 2), &Device::Cpu).unwrap();
        ClassContexts::new(t, &[0, 0, 1, 2, 2]).unwrap()
    }

    #[test]
    fn draws_stay_within_the_class_and_first_is_fixed() {
        let c = table();
        assert_eq!((c.classes(), c.context_dim()), (3, 2));
        let mut r = SeededRng::new(7, &[1]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let t = c.draw(&[0, 1, 2], &mut r, &Device::Cpu).unwrap();
            let v: Vec<Vec<Vec<f32>>> = t.to_vec3().unwrap();
            assert!(v[0][0][0] < 2.0); // rows 0, 1
            assert_eq!(v[1][0][0], 2.0); // row 2 only
            assert!(v[2][0][0] >= 3.0); // rows 3, 4
            seen.insert(v[0][0][0] as i32);
            seen.insert(v[2][0][0] as i32);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        let f: Vec<Vec<Vec<f32>>> = c.first(&[2, 0], &Device::Cpu).unwrap().to_vec3().unwrap();
        assert_eq!((f[0][0][0], f[1][0][0]), (3.0, 0.0));
    }

    #[test]
    fn uncaptioned_labels_and_bad_shapes_are_refused() {
        let c = table();
        c.check_covers(&[0, 1, 2]).unwrap();
        assert!(c.check_covers(&[3]).is_err());
        assert!(c.check_covers(&[-1]).is_err());
        let t = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(ClassContexts::new(t, &[0, 1]).is_err());
        let t = Tensor::zeros((2, 1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(ClassContexts::new(t, &[0]).is_err());
    }

    #[test]
    fn check_is_paired() {
        let c = ConditioningCheck::from_draws(&[1.0, 2.0], &[1.5, 2.5], &[1.0, 2.0]);
        assert_eq!(c.null_minus_caption.mean, 0.5);
        assert_eq!(c.null_minus_caption.ci95, 0.0);
        assert_eq!(c.other_class_minus_caption.mean, 0.0);
        assert_eq!(c.caption.mean, 1.5);
    }
}
