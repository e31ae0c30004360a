//! Fine-tuning Stable Diffusion from a user's weights (issue 20, item 5): the same objective,
//! methods, probe and loop as every other run ([`crate::run`]), on SD's latent UNet.
//!
//! What differs from a run of a small model on prompts ([`crate::text`]):
//! - the network is acpo-sd's differentiable UNet in latent space; the guidance decodes
//!   `x0_hat` with the VAE before CNNIQA scores it ([`LatentGuidance`]), and `x0_hat` is not
//!   clamped (latents are not in `[-1, 1]`);
//! - classifier-free guidance uses SD's unconditional context, the encoded empty prompt
//!   (`null.safetensors` of the prompt folder), where the small models use zeros;
//! - SD's training images are not here, so there is no data term: methods with one are
//!   refused, draws are on-policy, and the probe set and the calibration are drawn from the
//!   base's own probe samples (noised forward): the held-out MSE and anchor distance measure
//!   drift on the base's distribution.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use acpo_sd::sampling::{load_null_context, SdModel};
use acpo_sd::{SdLink, Vae};
use acpo_text::PromptTable;
use candle_core::Tensor;

use crate::draws::{self, Stream};
use crate::objective::{Calibration, EpsModel, Guidance, Normalize, ObjectiveBatch, Schedule};
use crate::refl;
use crate::run::{
    calibrated, load_judges, probe_noise, run_loop, sample_from, save_tensors_atomic,
    CnniqaGuidance, DrawSource, FinetuneConfig, FinetuneOutcome, Guides, Probe, Run, RunOptions,
    Tunable,
};
use crate::train::{calibration_draws, draw_batch_indexed, select_rows, ProbeSet};
use crate::{FinetuneError, Result};

impl EpsModel for SdModel {
    fn eps(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        SdModel::eps(self, x_t, t, cond)
    }
}

/// SD with classifier-free guidance (acpo-sd's `guided_eps`: the empty prompt's context as
/// the unconditional one).
struct SdGuided<'a> {
    model: &'a SdModel,
    scale: f64,
}

impl EpsModel for SdGuided<'_> {
    fn eps(&self, x: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        match cond {
            Some(ctx) => self.model.guided_eps(x, t, ctx, self.scale),
            None => SdModel::eps(self.model, x, t, None),
        }
    }
}

impl Tunable for SdModel {
    fn guided(&self, scale: f64) -> Box<dyn EpsModel + '_> {
        Box::new(SdGuided { model: self, scale })
    }
}

/// CNNIQA on decoded latents: the objective hands `(z + 1) / 2` for latents `z` (as it hands
/// pixel models' `x0_hat`), so `z` is recovered, decoded to an image and scored.
pub struct LatentGuidance {
    pub vae: Arc<Vae>,
    pub pixels: CnniqaGuidance,
}

impl Guidance for LatentGuidance {
    fn quality(&self, latents01: &Tensor) -> candle_core::Result<Tensor> {
        let z = ((latents01 * 2.0)? - 1.0)?;
        let img = self.vae.decode(&z)?.clamp(-1.0, 1.0)?;
        self.pixels.quality(&((img + 1.0)? * 0.5)?)
    }
}

/// Where an SD run reads and writes.
#[derive(Clone, Debug)]
pub struct SdPaths {
    /// `results/base/<name>/` with `link-sd`'s `sd.json`.
    pub base_dir: PathBuf,
    /// The prompt sets encoded with SD's CLIP (`train`, `probe`, `null.safetensors`).
    pub prompts_dir: PathBuf,
    pub out_dir: PathBuf,
    /// `CNNIQA-LIVE.safetensors`.
    pub guidance: PathBuf,
    /// `judges.yaml`.
    pub judges: PathBuf,
}

/// What SD runs cannot do, as config errors: a data term, forward draws, a KID gate, no probe
/// samples (the probe set is drawn from them).
fn check_sd_config(cfg: &FinetuneConfig) -> Result<()> {
    let refuse = |field: &str, msg: String| Err(FinetuneError::config(field, msg));
    if cfg.objective.lambdas().d != 0.0 {
        return refuse(
            "objective.method",
            format!(
                "{} has a data term, and SD's training images are not available; SD runs take \
                 perceptual-only or acpo",
                cfg.objective.method
            ),
        );
    }
    if cfg.draws != DrawSource::OnPolicy {
        return refuse(
            "draws",
            "SD runs have no images to noise forward: use on-policy".into(),
        );
    }
    if cfg.base_max_kid.is_some() {
        return refuse(
            "base_max_kid",
            "SD has no reference statistics here: set it to null".into(),
        );
    }
    if cfg.probe.samples == 0 {
        return refuse(
            "probe.samples",
            "SD runs draw their probe set from the base's probe samples: must be > 0".into(),
        );
    }
    Ok(())
}

/// Run (or resume) one fine-tuning run of a linked SD model. Outputs as [`crate::run`]'s,
/// `model.safetensors` holding the tuned UNet under diffusers' names.
pub fn run_finetune_sd(
    cfg: &FinetuneConfig,
    paths: &SdPaths,
    opts: &RunOptions,
) -> Result<Option<FinetuneOutcome>> {
    let sd_err = |e: acpo_sd::SdError| FinetuneError::config("stable diffusion", e.to_string());
    let link = SdLink::read(&paths.base_dir).map_err(sd_err)?;
    let weights = link.open().map_err(sd_err)?;
    let schedule = Schedule::from_alpha_bar(weights.alphas_cumprod.clone())?.without_x0_clamp();
    cfg.validate_for(schedule.num_steps(), true)?;
    check_sd_config(cfg)?;
    let scale = cfg.guidance_scale();
    let device = acpo_core::device::default_device();
    let out = &paths.out_dir;
    std::fs::create_dir_all(out).map_err(|e| FinetuneError::Io {
        path: out.clone(),
        source: e,
    })?;

    // models
    let null = load_null_context(&paths.prompts_dir, &device).map_err(sd_err)?;
    let (tuned, vars) = weights.unet_trainable(&device).map_err(sd_err)?;
    let model = SdModel {
        denoiser: tuned,
        null: null.clone(),
    };
    let reference = SdModel {
        denoiser: weights.unet(&device).map_err(sd_err)?,
        null,
    };
    let vae = Arc::new(weights.vae(&device).map_err(sd_err)?);
    let guidance = LatentGuidance {
        vae: vae.clone(),
        pixels: CnniqaGuidance::load(&paths.guidance, cfg.guidance_patch_mode, &device)?,
    };
    let guides = Guides {
        objective: &guidance,
        images: &guidance.pixels,
    };

    // prompts
    let table = |name: &str| {
        let t = PromptTable::load(&paths.prompts_dir.join(name), &device)
            .map_err(|e| FinetuneError::config(format!("prompts ({name})"), e.to_string()))?;
        let want = weights.arch.unet.cross_attention_dim;
        if t.dim() != want {
            return Err(FinetuneError::config(
                format!("prompts ({name})"),
                format!(
                    "token states are {} wide, the UNet's context is {want}",
                    t.dim()
                ),
            ));
        }
        Ok(t)
    };
    let (train, probe_prompts) = (table("train")?, table("probe")?);
    let contexts = |t: &PromptTable, rows: &[usize]| {
        t.contexts(rows, &device)
            .map_err(|e| FinetuneError::config("prompts", e.to_string()))
    };

    // the probe: the base's samples, the held-out draws from them
    let ls = weights.arch.latent_size();
    let c = weights.arch.unet.in_channels;
    let noise = probe_noise(cfg, &[c, ls, ls], &device)?;
    let rows: Vec<usize> = (0..cfg.probe.samples)
        .map(|i| i % probe_prompts.len())
        .collect();
    let probe_ctx = contexts(&probe_prompts, &rows)?;
    let base_latents = sample_from(
        &*reference.guided(scale),
        &schedule,
        &noise,
        Some(&probe_ctx),
        &cfg.probe,
    )?;
    let set = ProbeSet::new(&base_latents, &schedule, cfg.probe.draws, cfg.probe.seed)?;
    let set_ctx = select_rows(&probe_ctx, &set.images)?;
    let set = set.with_cond(set_ctx)?;
    let decode_vae = vae.clone();
    let mut probe = Probe {
        set,
        noise: Some(noise),
        base_samples: None,
        judges: load_judges(cfg, &paths.judges)?,
        prompts: Some((probe_ctx.clone(), scale)),
        decode: Some(Arc::new(move |z: &Tensor| decode_vae.decode(z))),
    };
    probe.base_samples = Some(probe.images(&base_latents, cfg.probe.batch_size)?);

    // calibration on the base's samples, forward-noised into the training window
    let fetch = |idx: &[usize]| select_rows(&base_latents, idx);
    let calibration = match cfg.objective.normalize {
        Normalize::None => None,
        Normalize::Base => {
            let batches = calibration_draws(
                &cfg.objective,
                cfg.probe.batch_size,
                cfg.probe.seed,
                |len, rng, _| {
                    let n = base_latents.dim(0)?;
                    let (mut b, idx) =
                        draw_batch_indexed(n, &fetch, &schedule, &cfg.objective, len, rng)?;
                    b.cond = Some(select_rows(&probe_ctx, &idx)?);
                    Ok(b)
                },
            )?;
            Some(Calibration::measure(
                &reference, &guidance, &schedule, &batches,
            )?)
        }
    };
    let cfg = &calibrated(cfg, calibration.as_ref());
    let resolved = serde_json::to_string_pretty(&serde_json::json!({
        "finetune": cfg,
        "stable_diffusion": link,
        "base_dir": paths.base_dir,
        "prompts_dir": paths.prompts_dir,
        "calibration": calibration,
        "prompts": [train.len(), probe_prompts.len()],
    }))
    .expect("config types serialise");

    let on_policy = cfg.on_policy.partial(&cfg.objective);
    let dims = [cfg.batch_size, c, ls, ls];
    let draw = |step: u64| -> Result<ObjectiveBatch> {
        let mut rng = draws::rng(cfg.seed, Stream::Prompts, step);
        let rows = draws::indices(&mut rng, cfg.batch_size, train.len());
        refl::partial_sample_batch(
            &*model.guided(scale),
            &schedule,
            &on_policy,
            &dims,
            Some(contexts(&train, &rows)?),
            cfg.seed,
            step,
            &device,
        )
    };
    let num_params = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let save_vars = vars.clone();
    let save_model = move |path: &Path| -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = save_vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        save_tensors_atomic(&map, path)
    };
    run_loop(
        cfg,
        out,
        Run {
            model: &model,
            reference: &reference,
            vars,
            guides,
            schedule: &schedule,
            probe,
            draw: &draw,
            data: &|_| Ok(None),
            save_model: &save_model,
            num_params,
            train_images: 0,
            device: &device,
            resolved,
            calibration,
        },
        opts,
    )
}
