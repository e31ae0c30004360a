//! Sampling a linked SD model: the conditional noise prediction with SD's unconditional
//! context, classifier-free guidance, and DDIM (acpo-diffusion's one sampler, without its
//! image-range clip of the predicted `x0`) in latent space, decoded by the VAE.

use std::path::Path;

use acpo_diffusion::config::Spacing;
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::sampler::Ddim;
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, SdError};
use crate::link::SdLink;
use crate::model::{Denoiser, Vae};

/// SD's UNet with its unconditional context: the condition is a CLIP context `[N, L, D]`,
/// none means the encoded empty prompt.
pub struct SdModel {
    pub denoiser: Denoiser,
    /// The encoded empty prompt, `[1, L, D]`.
    pub null: Tensor,
}

impl SdModel {
    fn null_for(&self, n: usize) -> candle_core::Result<Tensor> {
        let (_, l, d) = self.null.dims3()?;
        self.null.broadcast_as((n, l, d))?.contiguous()
    }

    /// `eps(x_t, t, c)`; `c = None` is the unconditional prediction.
    pub fn eps(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match cond {
            Some(c) => self.denoiser.eps(x, t, c),
            None => self.denoiser.eps(x, t, &self.null_for(x.dim(0)?)?),
        }
    }

    /// Classifier-free guidance `eps_u + w (eps_c - eps_u)`, one forward pass on the doubled
    /// batch (`w = 1`: the plain conditional prediction).
    pub fn guided_eps(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Tensor,
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        if scale == 1.0 {
            return self.eps(x, t, Some(ctx));
        }
        let b = x.dim(0)?;
        let e = self.denoiser.eps(
            &Tensor::cat(&[x, x], 0)?,
            &Tensor::cat(&[t, t], 0)?,
            &Tensor::cat(&[ctx, &self.null_for(b)?], 0)?,
        )?;
        let (ec, eu) = (e.narrow(0, 0, b)?, e.narrow(0, b, b)?);
        eu.add(&((ec - &eu)? * scale)?)
    }
}

/// The unconditional context of an `embed-prompts-sd` folder (`null.safetensors`, tensor
/// `context`, `[1, L, D]`).
pub fn load_null_context(prompts_dir: &Path, device: &Device) -> Result<Tensor> {
    let path = prompts_dir.join("null.safetensors");
    let map = candle_core::safetensors::load(&path, device)
        .map_err(|e| SdError::bad(&path, format!("not a readable safetensors file: {e}")))?;
    let t = map
        .get("context")
        .ok_or_else(|| SdError::bad(&path, "no `context` tensor (the encoded empty prompt)"))?;
    match t.dims() {
        [1, _, _] => Ok(t.clone()),
        d => Err(SdError::bad(
            &path,
            format!("`context` has shape {d:?}, expected [1, L, D]"),
        )),
    }
}

/// How [`SdSampler::sample`] samples.
#[derive(Clone, Copy, Debug)]
pub struct SdSampling {
    pub steps: usize,
    pub spacing: Spacing,
    /// Classifier-free guidance scale.
    pub scale: f64,
    /// Images per forward pass.
    pub batch: usize,
}

/// A linked SD model loaded for sampling: the base or a fine-tuned UNet.
pub struct SdSampler {
    pub model: SdModel,
    pub vae: Vae,
    pub alphas_cumprod: Vec<f64>,
    /// `[C, h, w]` of the latents.
    pub latent: [usize; 3],
    /// The link record (the evaluation's config names it).
    pub link: SdLink,
}

impl SdSampler {
    /// Load from the base folder (`sd.json`), the prompt folder (its unconditional context)
    /// and, for a fine-tuned run, its `model.safetensors`.
    pub fn load(
        base_dir: &Path,
        prompts_dir: &Path,
        tuned: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let link = SdLink::read(base_dir)?;
        let w = link.open()?;
        let denoiser = match tuned {
            None => w.unet(device)?,
            Some(p) => w.unet_from_file(p, device)?,
        };
        let ls = w.arch.latent_size();
        Ok(Self {
            model: SdModel {
                denoiser,
                null: load_null_context(prompts_dir, device)?,
            },
            vae: w.vae(device)?,
            latent: [w.arch.unet.in_channels, ls, ls],
            alphas_cumprod: w.alphas_cumprod,
            link,
        })
    }

    /// Images, `[N, 3, H, W]` in `[-1, 1]`: image `j` starts from the latent noise of
    /// `seeds[j]` alone (`SeededRng::new(seed, &[])`, as acpo-diffusion's sampler seeds each
    /// image), is prompted with row `j` of `contexts` and sampled by DDIM (eta 0) with
    /// guidance, then decoded; `s.batch` images per forward pass.
    pub fn sample(&self, seeds: &[u64], contexts: &Tensor, s: SdSampling) -> Result<Tensor> {
        let ab = &self.alphas_cumprod;
        let ddim = Ddim::new(ab.len(), s.steps, s.spacing, 0.0)
            .map_err(|e| SdError::config("steps", e.to_string()))?
            .without_x0_clip();
        let dev = contexts.device();
        let [c, h, w] = self.latent;
        let batch = s.batch.max(1);
        let mut parts = vec![];
        for (k, chunk) in seeds.chunks(batch).enumerate() {
            let noise = chunk
                .iter()
                .map(|&seed| SeededRng::new(seed, &[]).normal(&[1, c, h, w], dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let ctx = contexts.narrow(0, k * batch, chunk.len())?;
            let z = ddim.run(
                &Tensor::cat(&noise, 0)?,
                0..ddim.timesteps().len(),
                &|t| ab[t],
                &mut |x, t| {
                    let tt = Tensor::full(t as u32, chunk.len(), dev)?.to_dtype(DType::U32)?;
                    self.model.guided_eps(x, &tt, &ctx, s.scale)
                },
                &mut || candle_core::bail!("eta 0 draws no noise"),
                &mut || {},
            )?;
            parts.push(self.vae.decode(&z)?.clamp(-1.0, 1.0)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}
