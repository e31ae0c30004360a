//! ACPO fine-tuning (SPEC section 2): the anchor-constrained perceptual objective and the
//! baselines it is compared with, in one code path.
//!
//! The objective is written against two small abstractions so that it does not care which
//! concrete networks it gets:
//! - [`EpsModel`]: a noise predictor `eps(x_t, t, c)` (the tuned UNet, the frozen anchor, or a
//!   tiny test network);
//! - [`Guidance`]: a differentiable no-reference quality model `Q(images in [0,1])`, oriented so
//!   that higher = better (CNNIQA's DMOS-like score is negated by its adapter).
//!
//! Modules:
//! - [`objective`]: `x0_hat`, `L_perc`, `L_anchor`, `L_simple`, the `method` table, `w(t)`;
//! - the optimiser is acpo-diffusion's ([`AdamW`], [`clip_grad_norm`], re-exported), the one
//!   the base models are trained with;
//! - [`draws`]: seeded per-step draws (timesteps, noise, batch indices) so that a resumed run
//!   draws exactly what an uninterrupted one would;
//! - [`refl`]: DDIM sampling and the ReFL-style partial sampling path for text-to-image
//!   (no-gradient sampling down to a late step, then one differentiable step);
//! - [`run`]: one fine-tuning run (what the `finetune` stage runs) on acpo-diffusion's UNet with CNNIQA guidance (probe set,
//!   judges, drift stop, checkpoints, exact resume);
//! - [`text`]: runs on prompts (a prompt-conditioned base; on-policy draws with
//!   classifier-free guidance, the data term on the base's captioned training images);
//! - [`train`]: one optimisation step, the data batch of the unconditional path, and the
//!   held-out probe metrics (anchor distance, held-out MSE, guidance on `x0_hat`).

pub mod draws;
pub mod objective;
pub mod refl;
pub mod run;
pub mod sd;
pub mod text;
pub mod train;

pub use acpo_diffusion::optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use objective::{
    acpo_loss, acpo_loss_with_data, Calibration, EpsModel, Guidance, Lambdas, LossOutput, Method,
    Normalize, ObjectiveBatch, ObjectiveConfig, Schedule, Weighting,
};
pub use train::{
    calibration_batches, data_batch, data_batch_from, probe_metrics, train_step,
    train_step_with_data, ProbeMetrics, ProbeSet, Stat, StepStats,
};

use std::path::PathBuf;

/// Errors of the fine-tuning library.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// An output could not be written (acpo-core's atomic write names the file).
    #[error(transparent)]
    Write(#[from] acpo_core::AtomicError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what was expected.
    #[error("{}: {msg}", path.display())]
    BadFile { path: PathBuf, msg: String },
    /// The base model is too poor to fine-tune (`base_max_kid`), or its quality is unknown.
    #[error(
        "base `{base}` {what} (finetune.base_max_kid = {limit}): fine-tuning a base that does \
         not generate images tests nothing; retrain or re-evaluate it: {fix}"
    )]
    BaseQuality {
        base: String,
        what: String,
        limit: f64,
        fix: String,
    },
}

impl acpo_core::BadInput for FinetuneError {
    /// A config value, an input file or the base model is wrong.
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            FinetuneError::Config { .. }
                | FinetuneError::BadFile { .. }
                | FinetuneError::BaseQuality { .. }
        )
    }
}

impl FinetuneError {
    /// An error of acpo-diffusion's optimiser: a tensor failure stays one, a checkpoint whose
    /// optimizer state does not fit is bad input (`Config`, field `checkpoint`).
    pub(crate) fn optim(e: acpo_diffusion::DiffusionError) -> Self {
        use acpo_diffusion::DiffusionError as D;
        match e {
            D::Candle(e) => FinetuneError::Candle(e),
            D::Config { field, msg } => FinetuneError::Config { field, msg },
            other => FinetuneError::config("optimizer", other.to_string()),
        }
    }

    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        FinetuneError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, FinetuneError>;
