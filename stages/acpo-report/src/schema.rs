//! `results/eval/<benchmark>/<run>/metrics.json`: what the `evaluate` stage writes and
//! `aggregate` reads. The `schema` field is checked first, so an old file gives a clear error
//! that says how to regenerate it.

use crate::error::{ReportError, Result};
use crate::stats::{Estimate, Improvement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the metrics format; bump it when a field changes meaning or is removed.
pub const SCHEMA: u32 = 1;

/// One score (guidance or judge) of the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// `guidance` (ACPO's `Q`, = -CNNIQA score, higher = better) or `judge`.
    pub role: String,
    /// Direction of the raw score.
    pub higher_is_better: bool,
    /// Mean over the samples, t-interval.
    pub value: Estimate,
}

/// FID of the samples against the test split's reference statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidKidMetrics {
    /// FID; its interval is a bootstrap over samples (when `fid_bootstrap >= 20`).
    pub fid: Estimate,
    /// KID (mean over subsets ± 1.96 sd over subsets).
    pub kid: Estimate,
    /// Reference statistics file and its sample count.
    pub reference: String,
    pub n_ref: usize,
}

/// Diversity of the samples: mean pairwise Euclidean distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiversityMetrics {
    /// In pixel space (images in [0, 1], flattened).
    pub pixel: Estimate,
    /// In Inception pool3 space (absent without Inception weights).
    pub inception: Option<Estimate>,
}

/// Where the evaluated model came from (the fine-tuning run's settings, for plots).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// `base` or the fine-tuning method (`acpo`, `perceptual-only`, ...).
    pub method: String,
    pub lambda_p: Option<f64>,
    pub lambda_a: Option<f64>,
    pub lambda_d: Option<f64>,
    /// Fine-tuning steps done.
    pub steps: Option<usize>,
    /// The model file and its SHA-256.
    pub model: String,
    pub model_sha256: String,
}

/// How the samples were drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingInfo {
    /// Image `i` uses seed `seed + i` (its initial noise and every later noise).
    pub seed: u64,
    pub samples: usize,
    pub sampler: String,
    pub steps: usize,
    pub eta: f64,
    /// DDIM timestep spacing (`leading` when absent: every evaluation before it was recorded).
    #[serde(default = "leading")]
    pub spacing: String,
}

fn leading() -> String {
    "leading".into()
}

/// The whole metrics file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalMetrics {
    pub schema: u32,
    pub benchmark: String,
    /// `base` or the fine-tuning run name.
    pub run: String,
    pub info: RunInfo,
    pub sampling: SamplingInfo,
    /// `guidance` plus every judge, by name.
    pub scores: BTreeMap<String, Score>,
    /// Improvement over the base model on the same seeds, per score (absent for the base).
    pub improvement: BTreeMap<String, Improvement>,
    /// The base only: the same scores of as many real test images (the reference each score
    /// is read against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_test: Option<RealTest>,
    /// Held-out noise-prediction MSE on the test split (fixed `(x0, t, eps)` draws).
    pub heldout_mse: Estimate,
    /// This model's held-out MSE minus the base's on the same draws (paired; absent for the
    /// base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_mse_delta: Option<Estimate>,
    /// The held-out values per timestep bin (`report.evaluate.heldout_t_bins`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_t: Vec<TBin>,
    /// Anchor distance `E ||eps_theta - eps_base||^2` on the same draws (0 for the base).
    pub anchor_distance: Estimate,
    /// Pixel MSE (in [-1, 1] units) to the base's sample from the same noise (0 for the base).
    pub pixel_drift: Estimate,
    pub diversity: DiversityMetrics,
    /// Absent (with the reason in `notes`) when Inception weights or reference stats are not
    /// given.
    pub fid_kid: Option<FidKidMetrics>,
    /// The base only, with `report.evaluate.base_fid_samples`: FID and KID on that many
    /// images (its quality beside the real-data floor at the same n).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_quality: Option<FidKidMetrics>,
    /// What was not computed and why, and caveats.
    pub notes: Vec<String>,
    /// Wall-clock seconds per part of the evaluation.
    pub seconds: BTreeMap<String, f64>,
}

/// Scores of real test images (the first `images` of the test split).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RealTest {
    pub images: usize,
    pub scores: BTreeMap<String, Score>,
}

/// Held-out values of the draws with `t_lo <= t < t_hi`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TBin {
    pub t_lo: usize,
    pub t_hi: usize,
    pub heldout_mse: Estimate,
    /// Paired difference to the base's MSE (absent for the base).
    pub heldout_mse_delta: Option<Estimate>,
    /// Anchor distance to the base (absent for the base).
    pub anchor_distance: Option<Estimate>,
}

/// Reads a metrics file, checking its schema version before anything else.
/// `fix` is the command that regenerates it (named in the error).
pub fn read_metrics(path: &Path, fix: &str) -> Result<EvalMetrics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ReportError::MissingInput {
                what: "evaluation metrics".into(),
                path: path.to_path_buf(),
                fix: fix.to_string(),
            }
        } else {
            ReportError::io(path, e)
        }
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ReportError::bad(path, format!("line {}", e.line()), e.to_string()))?;
    let found = v.get("schema");
    if found.and_then(|s| s.as_u64()) != Some(SCHEMA as u64) {
        return Err(ReportError::Schema {
            path: path.to_path_buf(),
            found: found
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none (no `schema` field)".into()),
            expected: SCHEMA,
            fix: fix.to_string(),
        });
    }
    serde_json::from_value(v).map_err(|e| ReportError::bad(path, "metrics", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_schema_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.json");
        std::fs::write(&p, r#"{"benchmark": "cifar10", "fid": 3.0}"#).unwrap();
        let e = read_metrics(&p, "acpo repro -f evaluate@cifar10-base")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.json") && e.contains("no `schema`"),
            "{e}"
        );
        assert!(e.contains("acpo repro -f evaluate@cifar10-base"), "{e}");
        std::fs::write(&p, r#"{"schema": 0}"#).unwrap();
        let e = read_metrics(&p, "x").unwrap_err().to_string();
        assert!(
            e.contains("schema 0") && e.contains("reads schema 1"),
            "{e}"
        );
        let e = read_metrics(&dir.path().join("none.json"), "acpo repro evaluate@x").unwrap_err();
        assert!(e.to_string().contains("acpo repro evaluate@x"), "{e}");
    }
}
