//! What a run reports: the rows of `curve.csv`, the drift stop and `metrics.json`.

use crate::objective::{Calibration, Method};
use crate::train::Stat;
use serde::{Deserialize, Serialize};

/// One row of `curve.csv`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CurveRow {
    pub step: usize,
    pub anchor_distance: Stat,
    pub heldout_mse: Stat,
    /// Guidance `Q` (= -CNNIQA score) of `x0_hat` on probe draws in the training window.
    pub guidance_x0hat: Stat,
    /// Guidance `Q` of the probe samples (`n = 0` without samples).
    pub guidance_samples: Stat,
    /// Pixel MSE (in [-1, 1] units) between the tuned and the base model's samples from the same
    /// noise.
    pub sample_pixel_drift: Stat,
    /// Raw judge scores of the probe samples (each in its own direction; see `judges.yaml`).
    pub judges: Vec<(String, Stat)>,
}

/// The drift stop rule, when it fired.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DriftStop {
    pub step: usize,
    pub anchor_distance: f64,
    pub threshold: f64,
}

/// `metrics.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FinetuneOutcome {
    pub method: Method,
    /// Effective `(lambda_p, lambda_a, lambda_d)` after the method's mask.
    pub lambda_p: f64,
    pub lambda_a: f64,
    pub lambda_d: f64,
    /// Steps done (fewer than configured when the drift stop fired).
    pub steps: usize,
    pub drift_stop: Option<DriftStop>,
    /// The probe at step 0 (the base model).
    pub base: CurveRow,
    /// The probe at the last step.
    #[serde(rename = "final")]
    pub last: CurveRow,
    /// Mean training loss over the last 10% of steps.
    pub final_train_loss: f64,
    pub device: String,
    pub num_params: usize,
    pub train_images: usize,
    /// The loss units measured on the base (`objective.normalize: base`), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Seed of the training draws (the replicate).
    #[serde(default)]
    pub seed: u64,
    /// This invocation's resume point and speed. Not in `metrics.json`: the run folder is
    /// the evaluation's dependency, so it holds only what the same inputs reproduce byte for
    /// byte (the stage glue writes this to a timing file under `results/timing/`).
    #[serde(skip)]
    pub invocation: FinetuneInvocation,
}

/// How one fine-tuning invocation went (see [`FinetuneOutcome::invocation`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FinetuneInvocation {
    /// Step the run resumed from (0 = fresh).
    pub resumed_from: usize,
    /// Steps done by this invocation.
    pub steps_done: usize,
    /// Wall-clock seconds of the steps done in this invocation, and their rate.
    pub train_seconds: f64,
    pub steps_per_s: f64,
}
