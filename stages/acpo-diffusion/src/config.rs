//! Serde configs of the model, the training run and the sampler, with documented defaults.
//!
//! A benchmark's params (`diffusion.<benchmark>` in `params.yaml`) deserialise into
//! [`BenchmarkParams`]; the resolved value is written as `config.json` next to every artifact.

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};

/// Architecture of the DDPM UNet (Ho et al. 2020; the improved-DDPM knobs are optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Image side length in pixels (square images). Default 32.
    pub image_size: usize,
    /// Image channels (3 for RGB). Default 3.
    pub in_channels: usize,
    /// Base channel count `ch`. Default 64.
    pub channels: usize,
    /// Channel multiplier per resolution level; the number of levels is its length.
    /// Default `[1, 2, 2]`.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more). Default 1.
    pub num_res_blocks: usize,
    /// Resolutions (side length in pixels) that get self-attention. Default `[8]`.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads (each head has `channels / heads` dims). Default 1 (as in DDPM).
    pub num_heads: usize,
    /// Dropout probability inside residual blocks during training. Default 0.0.
    pub dropout: f32,
    /// Groups of every GroupNorm. Default 32 (lowered automatically never: must divide channels).
    pub norm_groups: usize,
    /// Dimension of text-conditioning embeddings; `None` (default) builds an unconditional model
    /// without cross-attention. When set, every attention resolution also gets cross-attention
    /// over a context `[B, L, context_dim]`.
    pub context_dim: Option<usize>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            image_size: 32,
            in_channels: 3,
            channels: 64,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![8],
            num_heads: 1,
            dropout: 0.0,
            norm_groups: 32,
            context_dim: None,
        }
    }
}

impl UNetConfig {
    /// Checks that the sizes fit together (group counts divide channels, the image halves
    /// cleanly at every level, heads divide channels).
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.channel_mult.is_empty() || self.in_channels == 0 {
            return Err(DiffusionError::config(
                "model",
                "channels, in_channels and channel_mult must be non-empty/non-zero",
            ));
        }
        if self.norm_groups == 0 || self.num_heads == 0 {
            return Err(DiffusionError::config(
                "model.norm_groups/num_heads",
                "must be > 0",
            ));
        }
        if !self.channels.is_multiple_of(2) {
            return Err(DiffusionError::config(
                "model.channels",
                "must be even (sinusoidal time embedding)",
            ));
        }
        let levels = self.channel_mult.len();
        if !self.image_size.is_multiple_of(1 << (levels - 1)) {
            return Err(DiffusionError::config(
                "model.image_size",
                format!(
                    "{} is not divisible by 2^{} (channel_mult has {levels} levels)",
                    self.image_size,
                    levels - 1
                ),
            ));
        }
        for &m in &self.channel_mult {
            let c = self.channels * m;
            if m == 0 || !c.is_multiple_of(self.norm_groups) {
                return Err(DiffusionError::config(
                    "model.norm_groups",
                    format!("{} does not divide channel count {c}", self.norm_groups),
                ));
            }
            if !c.is_multiple_of(self.num_heads) {
                return Err(DiffusionError::config(
                    "model.num_heads",
                    format!("{} does not divide channel count {c}", self.num_heads),
                ));
            }
        }
        if !self.channels.is_multiple_of(self.norm_groups) {
            return Err(DiffusionError::config(
                "model.norm_groups",
                format!("{} does not divide {}", self.norm_groups, self.channels),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(DiffusionError::config("model.dropout", "must be in [0, 1)"));
        }
        if self.context_dim == Some(0) {
            return Err(DiffusionError::config("model.context_dim", "must be > 0"));
        }
        Ok(())
    }
}

/// Beta schedule of the forward process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear betas from `beta_start` to `beta_end` (DDPM).
    Linear,
    /// Cosine alpha-bar (Nichol & Dhariwal 2021), betas clipped at 0.999.
    Cosine,
}

/// The noise schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `linear` (default) or `cosine`.
    pub kind: ScheduleKind,
    /// Number of diffusion steps T. Default 1000.
    pub timesteps: usize,
    /// First beta of the linear schedule. Default 1e-4.
    pub beta_start: f64,
    /// Last beta of the linear schedule. Default 0.02.
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Linear,
            timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

/// Learning-rate schedule after the linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` until the last step (DDPM).
    Constant,
    /// Half a cosine from `lr` down to 0 at `steps`.
    Cosine,
    /// A straight line from `lr` down to 0 at `steps`.
    Linear,
}

/// Weight of each training draw's noise-prediction error, by its noise level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossWeighting {
    /// Every draw weighs 1: the plain eps MSE of DDPM.
    Uniform,
    /// Min-SNR-gamma (Hang et al. 2023) for eps prediction: `min(SNR_t, gamma) / SNR_t`,
    /// `SNR_t = alpha_bar_t / (1 - alpha_bar_t)`; low-noise draws, whose eps error is large
    /// and says little about images, weigh less.
    MinSnr,
}

/// The `train-base` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps. Default 2000.
    pub steps: usize,
    /// Images per step. Default 32.
    pub batch_size: usize,
    /// Peak learning rate (AdamW). Default 2e-4 (DDPM).
    pub lr: f64,
    /// Linear warm-up steps from 0 to `lr`. Default 100.
    pub warmup_steps: usize,
    /// Schedule after warm-up: `constant` (default), `cosine` or `linear` (both decay to 0 at
    /// `steps`).
    pub lr_schedule: LrSchedule,
    /// AdamW decoupled weight decay. Default 0.0.
    pub weight_decay: f64,
    /// Adam beta1. Default 0.9.
    pub beta1: f64,
    /// Adam beta2. Default 0.999.
    pub beta2: f64,
    /// Adam epsilon. Default 1e-8.
    pub eps: f64,
    /// Clip the global gradient norm to this value; `0` disables. Default 1.0.
    pub grad_clip: f64,
    /// EMA decay of the weights kept for sampling, in (0, 1). Default 0.999.
    pub ema_decay: f64,
    /// EMA warm-up: update `n` (1-based) uses `min(ema_decay, (1 + n) / (10 + n))`, so the
    /// average forgets the random initialisation early in short runs. Default false.
    pub ema_warmup: bool,
    /// Noise-level weighting of the loss: `uniform` (default) or `min-snr`.
    pub loss_weighting: LossWeighting,
    /// `gamma` of `min-snr` weighting (> 0). Default 5 (the paper's value).
    pub min_snr_gamma: f64,
    /// Write a checkpoint every this many steps (and at the end). Default 250.
    pub checkpoint_every: usize,
    /// Use only the first this many training images; `0` uses all. Default 0.
    pub train_subset: usize,
    /// Random horizontal flips of training images. Default true.
    pub random_flip: bool,
    /// Probability of dropping the condition (classifier-free guidance training); only used by
    /// conditional models. Default 0.1.
    pub cond_drop: f64,
    /// Seed of parameter initialisation and of every training draw. Default 0.
    pub seed: u64,
    /// Test images for the final held-out MSE; `0` uses all. Default 1000.
    pub heldout_images: usize,
    /// Seed of the held-out `(t, eps)` draws. Default 1234.
    pub heldout_seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 32,
            lr: 2e-4,
            warmup_steps: 100,
            lr_schedule: LrSchedule::Constant,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            ema_decay: 0.999,
            ema_warmup: false,
            loss_weighting: LossWeighting::Uniform,
            min_snr_gamma: 5.0,
            checkpoint_every: 250,
            train_subset: 0,
            random_flip: true,
            cond_drop: 0.1,
            seed: 0,
            heldout_images: 1000,
            heldout_seed: 1234,
        }
    }
}

impl TrainConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(DiffusionError::config(
                "train.steps/batch_size",
                "must be > 0",
            ));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(DiffusionError::config("train.lr", "must be > 0"));
        }
        if !(self.ema_decay > 0.0 && self.ema_decay < 1.0) {
            return Err(DiffusionError::config(
                "train.ema_decay",
                format!("{} is outside (0, 1)", self.ema_decay),
            ));
        }
        if !(self.min_snr_gamma > 0.0 && self.min_snr_gamma.is_finite()) {
            return Err(DiffusionError::config(
                "train.min_snr_gamma",
                format!("{} must be a finite number > 0", self.min_snr_gamma),
            ));
        }
        if self.lr_schedule != LrSchedule::Constant && self.warmup_steps >= self.steps {
            return Err(DiffusionError::config(
                "train.warmup_steps",
                format!(
                    "{} leaves no steps for the {:?} decay (train.steps = {})",
                    self.warmup_steps, self.lr_schedule, self.steps
                ),
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(DiffusionError::config(
                "train.checkpoint_every",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

/// Which sampler the `sample` stage uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDPM ancestral sampling over all T steps.
    Ddpm,
    /// DDIM over `steps` evenly spaced steps with stochasticity `eta`.
    Ddim,
}

/// Where DDIM's steps fall in `[0, T)`. One default for every DDIM of the project (the
/// evaluation, the `sample` stage, the fine-tuning probe and its ReFL path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// `[(S-1) T/S, ..., T/S, 0]` (the DDIM paper's; the default, and the spacing of every
    /// evaluation so far).
    #[default]
    Leading,
    /// `[T-1, T-1-T/S, ..., T/S-1]`: the first step starts from pure noise at `T-1`.
    Trailing,
}

impl Spacing {
    /// The name in params and reports.
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Leading => "leading",
            Spacing::Trailing => "trailing",
        }
    }
}

/// The `sample` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Number of images. Default 64.
    pub num_images: usize,
    /// Image `i` uses seed `seed + i`. Default 0.
    pub seed: u64,
    /// `ddim` (default) or `ddpm`.
    pub sampler: SamplerKind,
    /// DDIM steps. Default 100.
    pub steps: usize,
    /// DDIM eta (0 = deterministic). Default 0.0.
    pub eta: f64,
    /// DDIM timestep spacing, `leading` (default) or `trailing`.
    pub spacing: Spacing,
    /// Classifier-free guidance scale for conditional models (1 = no guidance). Default 1.0.
    pub guidance: f64,
    /// Images per forward pass. Default 32.
    pub batch_size: usize,
    /// Images per row of the PNG grid. Default 8.
    pub grid_cols: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            num_images: 64,
            seed: 0,
            sampler: SamplerKind::Ddim,
            steps: 100,
            eta: 0.0,
            spacing: Spacing::Leading,
            guidance: 1.0,
            batch_size: 32,
            grid_cols: 8,
        }
    }
}

/// Everything one benchmark's diffusion stages read: `diffusion.<benchmark>` in params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchmarkParams {
    /// The UNet.
    pub model: UNetConfig,
    /// The forward-process noise schedule.
    pub schedule: ScheduleConfig,
    /// The `train-base` run.
    pub train: TrainConfig,
    /// The `sample` stage.
    pub sample: SampleConfig,
}

impl BenchmarkParams {
    /// Validates all parts.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        if self.schedule.timesteps == 0 {
            return Err(DiffusionError::config("schedule.timesteps", "must be > 0"));
        }
        if self.sample.batch_size == 0 || self.sample.grid_cols == 0 {
            return Err(DiffusionError::config(
                "sample.batch_size/grid_cols",
                "must be > 0",
            ));
        }
        if self.sample.sampler == SamplerKind::Ddim
            && (self.sample.steps == 0 || self.sample.steps > self.schedule.timesteps)
        {
            return Err(DiffusionError::config(
                "sample.steps",
                format!("must be in 1..={}", self.schedule.timesteps),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_str::<BenchmarkParams>(r#"{"model":{"chanels":3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chanels"), "{err}");
    }

    #[test]
    fn recipe_names_and_ranges_are_checked() {
        let err = serde_json::from_str::<BenchmarkParams>(r#"{"train":{"lr_schedule":"cosin"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cosin") && err.contains("cosine"), "{err}");
        let err = serde_json::from_str::<BenchmarkParams>(r#"{"train":{"loss_weighting":"snr"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("min-snr"), "{err}");
        let p: BenchmarkParams = serde_json::from_str(
            r#"{"train":{"lr_schedule":"cosine","loss_weighting":"min-snr","ema_warmup":true}}"#,
        )
        .unwrap();
        p.validate().unwrap();
        for (field, bad) in [
            ("ema_decay", 1.0),
            ("ema_decay", 0.0),
            ("min_snr_gamma", 0.0),
        ] {
            let mut p = BenchmarkParams::default();
            match field {
                "ema_decay" => p.train.ema_decay = bad,
                _ => p.train.min_snr_gamma = bad,
            }
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut p = BenchmarkParams::default();
        p.train.lr_schedule = LrSchedule::Cosine;
        p.train.warmup_steps = p.train.steps;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("warmup_steps"));
    }

    #[test]
    fn defaults_validate() {
        BenchmarkParams::default().validate().unwrap();
        let mut p = BenchmarkParams::default();
        p.model.norm_groups = 24;
        assert!(p.validate().is_err());
    }
}
