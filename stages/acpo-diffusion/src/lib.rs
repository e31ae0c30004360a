//! Diffusion core in candle: UNet, noise schedules, DDPM/DDIM samplers, base training.
//!
//! The public API that other crates (ACPO fine-tuning) use:
//! - [`UNetConfig`] and [`UNet`]: build a noise-prediction network from a serde config, either
//!   trainable ([`UNet::new_trainable`], parameters are [`candle_core::Var`]s in a
//!   [`candle_nn::VarMap`]) or frozen ([`UNet::from_tensors`], [`UNet::frozen_copy`]).
//!   `eps = unet.forward(&x_t, &t, cond)`.
//! - [`NoiseSchedule`]: linear or cosine betas, `alpha_bar`, forward noising `q_sample`.
//! - [`sampler`]: DDPM ancestral and DDIM (eta) samplers with classifier-free guidance,
//!   reproducible from one seed per image, plus the single DDIM step for policy-gradient use.
//! - [`heldout_mse`]: the held-out noise-prediction MSE with fixed `(x0, t, eps)` draws.
//! - [`train`]: the `train-base` loop (AdamW, warm-up, clipping, EMA, exact resume) and
//!   [`sample_to_dir`] for the `sample` stage.
//!
//! Every random draw comes from [`rng::SeededRng`] streams keyed by explicit seeds, never from
//! candle's global RNG, so results are reproducible and training resumes bit-exactly.

pub mod conditioning;
pub mod config;
/// The hand-written CPU ops (acpo-ops), re-exported where the UNet's layers call them.
pub use acpo_ops::{conv, norm, reference_ops};
pub mod data;
pub mod error;
pub mod flops;
pub mod grid;
pub mod malloc;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod startup;
pub mod train;
pub mod unet;

pub use conditioning::{ClassContexts, ConditioningCheck};
pub use config::{
    BenchmarkParams, LossWeighting, LrSchedule, SampleConfig, ScheduleKind, Spacing, TrainConfig,
    UNetConfig,
};
pub use error::{DiffusionError, Result};
pub use metrics::{heldout_mse, HeldoutMse};
pub use schedule::NoiseSchedule;
pub use train::{
    sample_to_dir, sample_to_dir_conditional, train_base, train_base_conditional, TrainCond,
    TrainInvocation, TrainOutcome,
};
pub use unet::{Cond, UNet};
