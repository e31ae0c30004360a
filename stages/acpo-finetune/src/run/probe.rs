//! The fixed held-out probe and the networks a run scores: CNNIQA as the guidance, the
//! tunable network, the probe's samples and judges.

use super::config::{FinetuneConfig, ProbeConfig};
use super::outcome::CurveRow;
use crate::draws::{self, Stream};
use crate::objective::{EpsModel, Guidance, Schedule};
use crate::refl;
use crate::text::Guided;
use crate::train::{per_item_mean, probe_metrics, ProbeSet, Stat};
use crate::{FinetuneError, Result};
use acpo_diffusion::data::to_u8_hwc;
use acpo_diffusion::UNet;
use acpo_iqa::{Cnniqa, Judge, PatchMode, RgbImage};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

impl EpsModel for UNet {
    fn eps(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.forward(x_t, t, cond)
    }
}

/// CNNIQA as the guidance `Q = -score` (its raw score is DMOS-like, higher = worse).
pub struct CnniqaGuidance {
    pub model: Cnniqa,
    pub mode: PatchMode,
}

impl CnniqaGuidance {
    /// Load `CNNIQA-LIVE.safetensors`.
    pub fn load(path: &Path, mode: PatchMode, device: &Device) -> Result<Self> {
        let model = Cnniqa::load(path, device).map_err(|e| FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(Self { model, mode })
    }
}

impl Guidance for CnniqaGuidance {
    fn quality(&self, images01: &Tensor) -> candle_core::Result<Tensor> {
        self.model
            .score(images01, self.mode)
            .map_err(candle_core::Error::wrap)?
            .neg()
    }
}

/// A network a run can tune: its noise prediction, and the classifier-free guided prediction
/// that its on-policy trajectories and probe samples use on prompts.
pub trait Tunable: EpsModel {
    /// The guided prediction at `scale` (the condition is the prompt's context).
    fn guided(&self, scale: f64) -> Box<dyn EpsModel + '_>;
}

impl Tunable for UNet {
    fn guided(&self, scale: f64) -> Box<dyn EpsModel + '_> {
        Box::new(Guided { model: self, scale })
    }
}

/// Turns a model's samples into images in `[-1, 1]` (a latent model's VAE decoder; pixel
/// models need none).
pub type Decoder = std::sync::Arc<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

/// The fixed probe: held-out draws, sample noise, base samples, judges.
pub(crate) struct Probe {
    pub(crate) set: ProbeSet,
    pub(crate) noise: Option<Tensor>,
    /// The base's samples as images in `[-1, 1]`.
    pub(crate) base_samples: Option<Tensor>,
    pub(crate) judges: Vec<Judge>,
    /// The probe samples' prompts and guidance scale (runs on prompts).
    pub(crate) prompts: Option<(Tensor, f64)>,
    /// Latent models: their samples to images.
    pub(crate) decode: Option<Decoder>,
}

/// The guidance of a run: `objective` scores the objective's `x0_hat` (a latent model's
/// decodes first), `images` scores images (the probe samples).
#[derive(Clone, Copy)]
pub(crate) struct Guides<'a> {
    pub(crate) objective: &'a dyn Guidance,
    pub(crate) images: &'a dyn Guidance,
}

impl Probe {
    pub(crate) fn row<M: Tunable>(
        &self,
        step: usize,
        model: &M,
        reference: &M,
        guides: Guides,
        schedule: &Schedule,
        cfg: &FinetuneConfig,
    ) -> Result<CurveRow> {
        let pm = probe_metrics(
            model,
            reference,
            guides.objective,
            schedule,
            &cfg.objective,
            &self.set,
            cfg.probe.batch_size,
        )?;
        let empty = Stat::of(&[]);
        let (mut gs, mut drift, mut judges) = (empty, empty, vec![]);
        if let (Some(noise), Some(base)) = (&self.noise, &self.base_samples) {
            let x = self.sample(model, schedule, noise, &cfg.probe)?;
            let x = self.images(&x, cfg.probe.batch_size)?;
            let q = guides.images.quality(&((&x + 1.0)? * 0.5)?)?;
            gs = Stat::of(&q.to_dtype(DType::F64)?.to_vec1::<f64>()?);
            drift = Stat::of(&per_item_mean(&(&x - base)?.sqr()?)?);
            let imgs = to_rgb_images(&x)?;
            for j in &self.judges {
                let s = j.score(&imgs).map_err(|e| {
                    FinetuneError::config(format!("probe.judges ({})", j.name()), e.to_string())
                })?;
                judges.push((j.name().to_string(), Stat::of(&s)));
            }
        }
        Ok(CurveRow {
            step,
            anchor_distance: pm.anchor_distance,
            heldout_mse: pm.heldout_mse,
            guidance_x0hat: pm.guidance_x0hat,
            guidance_samples: gs,
            sample_pixel_drift: drift,
            judges,
        })
    }

    /// The probe samples of `model` (latents for a latent model): with its prompts and
    /// guidance on a run on prompts.
    pub(crate) fn sample<M: Tunable>(
        &self,
        model: &M,
        schedule: &Schedule,
        noise: &Tensor,
        probe: &ProbeConfig,
    ) -> Result<Tensor> {
        match &self.prompts {
            None => sample_from(model, schedule, noise, None, probe),
            Some((cond, scale)) => {
                sample_from(&*model.guided(*scale), schedule, noise, Some(cond), probe)
            }
        }
    }

    /// Samples as images in `[-1, 1]`: decoded (and clamped) for a latent model, in `probe`
    /// batches.
    pub(crate) fn images(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let Some(decode) = &self.decode else {
            return Ok(x.clone());
        };
        let (n, b) = (x.dim(0)?, batch.max(1));
        let parts = (0..n)
            .step_by(b)
            .map(|s| decode(&x.narrow(0, s, b.min(n - s))?)?.clamp(-1.0, 1.0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// DDIM samples (eta 0) from fixed initial noise (and conditions, row for row), in batches.
pub(crate) fn sample_from(
    model: &dyn EpsModel,
    schedule: &Schedule,
    noise: &Tensor,
    cond: Option<&Tensor>,
    probe: &ProbeConfig,
) -> Result<Tensor> {
    let ddim = refl::trajectory_for(
        schedule,
        probe.sample_steps,
        probe.spacing,
        0.0,
        "probe.sample_steps",
    )?;
    let n = noise.dim(0)?;
    let mut parts = vec![];
    let mut start = 0;
    // eta = 0 draws nothing from the generator
    let mut rng = draws::rng(0, Stream::ProbeSamples, 0);
    let (batch, len_all) = (probe.batch_size, ddim.timesteps().len());
    while start < n {
        let len = batch.min(n - start);
        let c = match cond {
            Some(c) => Some(c.narrow(0, start, len)?),
            None => None,
        };
        let x0 = refl::ddim_sample(
            model,
            schedule,
            &ddim,
            &noise.narrow(0, start, len)?,
            c.as_ref(),
            len_all,
            &mut rng,
        )?;
        parts.push(x0);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

pub(crate) fn to_rgb_images(x: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, _c, h, w) = x.dims4()?;
    let bytes = to_u8_hwc(x)?;
    let per = h * w * 3;
    (0..n)
        .map(|i| {
            RgbImage::new(w, h, bytes[i * per..(i + 1) * per].to_vec())
                .map_err(|e| FinetuneError::config("samples", e.to_string()))
        })
        .collect()
}
