//! Fine-tuning a prompt-conditioned base on prompts (the text-to-image rows, issue 20).
//!
//! Prompts have no images, so the training `x_t` are on-policy (ReFL): the current model's
//! own DDIM trajectory from noise, with classifier-free guidance at `text.guidance` (the
//! scale the evaluation samples with), stopped without gradient at a timestep of the
//! objective's window. The perceptual and anchor terms then use the plain conditional
//! prediction `eps_theta(x_t, t, c)` of the prompt `c`, and the anchor the frozen base's
//! `eps_ref(x_t, t, c)` on the same input.
//!
//! The methods with a data term (data-anchor, acpo+data) take it where a text-to-image model's
//! data anchor comes from: the base's own training pairs, here the prepared images with a
//! caption of their class ([`ClassContexts`]), noised forward into the same window. The
//! calibration (`normalize: base`) and the probe's held-out MSE and anchor distance use those
//! pairs too (the validation images with their class's first caption), so drift is measured
//! on the distribution the base was trained on; the probe samples use held-out prompts.

use crate::draws::{self, Stream};
use crate::objective::{EpsModel, ObjectiveBatch, ObjectiveConfig, Schedule};
use crate::train::draw_batch_indexed;
use crate::{FinetuneError, Result};
use acpo_diffusion::sampler::guided_eps;
use acpo_diffusion::{ClassContexts, UNet};
use acpo_text::PromptTable;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Params of a run on prompts (`finetune.<benchmark>.text`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Classifier-free guidance scale of the on-policy trajectories and of the probe samples
    /// (default 3, the `sample-text` and evaluation scale).
    pub guidance: f64,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self { guidance: 3.0 }
    }
}

impl TextConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.guidance.is_finite() && self.guidance >= 1.0) {
            return Err(FinetuneError::config(
                "text.guidance",
                format!("{} is not a guidance scale >= 1", self.guidance),
            ));
        }
        Ok(())
    }
}

/// What a run on prompts reads besides the base and its images.
#[derive(Debug, Clone)]
pub struct TextInputs {
    /// The training prompts (`embed-prompts`' `train` set).
    pub train: PromptTable,
    /// The probe samples' prompts (sample `i` gets row `i mod len`).
    pub probe: PromptTable,
    /// The captions of the base's training classes (`embed-captions`).
    pub captions: ClassContexts,
}

impl TextInputs {
    /// The training prompts' width must be the model's `context_dim`, and every label of
    /// `labels` must have a caption.
    pub fn check(&self, context_dim: Option<usize>, labels: &[i64]) -> Result<()> {
        let Some(d) = context_dim else {
            return Err(FinetuneError::config(
                "base model",
                "prompts were given but the base has no cross-attention (model.context_dim unset)",
            ));
        };
        for (what, got) in [
            ("training prompts", self.train.dim()),
            ("probe prompts", self.probe.dim()),
            ("captions", self.captions.context_dim()),
        ] {
            if got != d {
                return Err(FinetuneError::config(
                    what,
                    format!("token states are {got} wide, the base's context_dim is {d}"),
                ));
            }
        }
        self.captions
            .check_covers(labels)
            .map_err(|e| FinetuneError::config("captions", e.to_string()))
    }

    /// The contexts of the probe samples: sample `i` prompted with probe row `i mod len`.
    pub fn probe_contexts(&self, samples: usize, device: &Device) -> Result<Tensor> {
        let rows: Vec<usize> = (0..samples).map(|i| i % self.probe.len()).collect();
        contexts(&self.probe, &rows, device)
    }

    /// Step `step`'s prompts: `batch` rows drawn uniformly from `(seed, step)` alone.
    pub fn draw_prompts(
        &self,
        batch: usize,
        seed: u64,
        step: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let mut rng = draws::rng(seed, Stream::Prompts, step);
        let rows = draws::indices(&mut rng, batch, self.train.len());
        contexts(&self.train, &rows, device)
    }
}

fn contexts(table: &PromptTable, rows: &[usize], device: &Device) -> Result<Tensor> {
    table
        .contexts(rows, device)
        .map_err(|e| FinetuneError::config("prompts", e.to_string()))
}

/// A UNet sampled with classifier-free guidance (acpo-diffusion's `guided_eps`): the
/// trajectories of on-policy draws and probe samples, never the objective's prediction.
pub struct Guided<'a> {
    pub model: &'a UNet,
    pub scale: f64,
}

impl EpsModel for Guided<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        guided_eps(self.model, x_t, t, cond, self.scale)
    }
}

/// The base's captioned training pairs as the data draws see them: `n` images fetched by
/// index (`fetch` returns `[len, C, H, W]` in `[-1, 1]`), each image's class label, and the
/// captions of every class (on `device`).
pub struct CaptionedImages<'a> {
    pub n: usize,
    pub fetch: &'a dyn Fn(&[usize]) -> candle_core::Result<Tensor>,
    pub labels: &'a [i64],
    pub captions: &'a ClassContexts,
    pub device: &'a Device,
}

impl CaptionedImages<'_> {
    /// A batch of `batch_size` pairs: images drawn and noised as the unconditional path draws
    /// them (from `rng`), each with a caption of its class drawn from `caption_rng`.
    fn batch(
        &self,
        schedule: &Schedule,
        cfg: &ObjectiveConfig,
        batch_size: usize,
        rng: acpo_diffusion::rng::SeededRng,
        caption_rng: &mut acpo_diffusion::rng::SeededRng,
    ) -> Result<ObjectiveBatch> {
        let (mut batch, idx) =
            draw_batch_indexed(self.n, self.fetch, schedule, cfg, batch_size, rng)?;
        let l: Vec<i64> = idx.iter().map(|&i| self.labels[i]).collect();
        batch.cond = Some(
            self.captions
                .draw(&l, caption_rng, self.device)
                .map_err(|e| FinetuneError::config("captions", e.to_string()))?,
        );
        Ok(batch)
    }

    /// The training data batch of step `step` (methods with a data term): streams `Train`
    /// and `Captions` of `(seed, step)`.
    pub fn data_batch(
        &self,
        schedule: &Schedule,
        cfg: &ObjectiveConfig,
        batch_size: usize,
        seed: u64,
        step: u64,
    ) -> Result<ObjectiveBatch> {
        self.batch(
            schedule,
            cfg,
            batch_size,
            draws::rng(seed, Stream::Train, step),
            &mut draws::rng(seed, Stream::Captions, step),
        )
    }

    /// The calibration draws of `normalize: base` on these pairs (as
    /// [`crate::train::calibration_batches`], with captions).
    pub fn calibration_batches(
        &self,
        schedule: &Schedule,
        cfg: &ObjectiveConfig,
        batch: usize,
        seed: u64,
    ) -> Result<Vec<ObjectiveBatch>> {
        crate::train::calibration_draws(cfg, batch, seed, |len, rng, k| {
            self.batch(
                schedule,
                cfg,
                len,
                rng,
                &mut draws::rng(seed, Stream::Captions, u64::MAX - k),
            )
        })
    }
}
