//! One fine-tuning run (what the `finetune` stage runs): ACPO (or a baseline) from a
//! `train-base` checkpoint, with CNNIQA as the guidance, a fixed held-out probe set, judges,
//! drift stop, checkpoints and exact resume.
//!
//! Inputs: `base_dir` = `results/base/<benchmark>/` (`model.safetensors`, `config.json` =
//! acpo-diffusion's `BenchmarkParams`), `data_dir` = `data/prepared/<benchmark>/`
//! (`train.safetensors` for `x_t`, `val.safetensors` for the probe set), the CNNIQA weights and
//! the judge registry (`judges.yaml`).
//!
//! Outputs in `out_dir` (`results/finetune/<benchmark>/<run>/`), each written to a temporary
//! name and renamed: `model.safetensors` (tuned weights, the base's parameter names),
//! `checkpoint.safetensors` (`model.*`, `adam.m.*`, `adam.v.*`, `meta.step`, `meta.config`),
//! `config.json` (the resolved [`FinetuneConfig`] plus the base's model/schedule), `loss.csv`
//! (every step), `curve.csv` (every `probe.every` steps and step 0) and `metrics.json`
//! ([`FinetuneOutcome`]).
//!
//! Resume: a checkpoint is used only when its `meta.config` equals the current resolved config;
//! every draw of step `s` comes from `(seed, s)`, so a resumed run is bit-identical on the CPU.
//!
//! Here: [`run_finetune`], the set-up of a run on acpo-diffusion's UNet. Its parts:
//! `config` (what a run is asked to do), `inputs` (its paths, the base's parameters, the
//! base-quality gate), `probe` (the guidance network and the held-out probe), `train_loop`
//! (steps, checkpoints, final outputs; shared with the Stable Diffusion runs of `crate::sd`),
//! `resume`, `files` (atomic writes, the CSV logs) and `outcome` (what a run reports).

mod config;
mod files;
mod inputs;
mod outcome;
mod probe;
mod resume;
mod train_loop;

pub use config::{merge_json, DrawSource, FinetuneConfig, OnPolicyConfig, ProbeConfig};
pub(crate) use files::save_tensors_atomic;
pub use inputs::{check_base_quality, load_base_params, BaseEval, FinetunePaths, RunOptions};
pub use outcome::{CurveRow, DriftStop, FinetuneInvocation, FinetuneOutcome};
pub(crate) use probe::{sample_from, Guides, Probe};
pub use probe::{CnniqaGuidance, Decoder, Tunable};
pub(crate) use train_loop::run_loop;

use crate::draws::{self, Stream};
use crate::objective::ObjectiveBatch;
use crate::objective::{Calibration, Normalize, Schedule};
use crate::refl;
use crate::text::CaptionedImages;
use crate::train::{calibration_batches, data_batch_from, ProbeSet};
use crate::{FinetuneError, Result};
use acpo_diffusion::data::ImageSet;
use acpo_diffusion::{NoiseSchedule, UNet, UNetConfig};
use acpo_iqa::{Judge, Registry};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use files::{io_err, json_string};
use inputs::diffusion_err;
use resume::Resolved;
use std::path::Path;

/// Run (or resume) one fine-tuning run. See the module docs for inputs and outputs.
pub fn run_finetune(
    cfg: &FinetuneConfig,
    paths: &FinetunePaths,
    opts: &RunOptions,
) -> Result<Option<FinetuneOutcome>> {
    let bp = load_base_params(&paths.base_dir)?;
    let ns = NoiseSchedule::from_config(&bp.schedule).map_err(diffusion_err)?;
    let schedule = Schedule::new(ns);
    cfg.validate_for(schedule.num_steps(), paths.text.is_some())?;
    check_base_quality(cfg, paths)?;
    let guidance_scale = cfg.guidance_scale();
    let device = acpo_core::device::default_device();
    let out = &paths.out_dir;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;

    // models: the tuned copy (vars) and the frozen anchor, both from the base weights
    let base_path = paths.base_dir.join("model.safetensors");
    let varmap = VarMap::new();
    let model =
        UNet::load_trainable(&bp.model, &base_path, &varmap, &device).map_err(diffusion_err)?;
    let reference = UNet::load(&bp.model, &base_path, &device).map_err(diffusion_err)?;
    let vars = model.vars().map_err(diffusion_err)?;
    let guidance = CnniqaGuidance::load(&paths.guidance, cfg.guidance_patch_mode, &device)?;
    let guides = Guides {
        objective: &guidance,
        images: &guidance,
    };

    let m = &bp.model;
    let train = training_images(cfg, paths, m)?;
    let fetch = |idx: &[usize]| train.batch(idx, &[], &device);
    let captioned = paths.text.as_ref().map(|t| CaptionedImages {
        n: train.n,
        fetch: &fetch,
        labels: &train.labels,
        captions: &t.captions,
        device: &device,
    });
    let calibration = match cfg.objective.normalize {
        Normalize::None => None,
        Normalize::Base => {
            let (batch, seed) = (cfg.probe.batch_size, cfg.probe.seed);
            let batches = match &captioned {
                None => {
                    calibration_batches(train.n, &fetch, &schedule, &cfg.objective, batch, seed)?
                }
                Some(c) => c.calibration_batches(&schedule, &cfg.objective, batch, seed)?,
            };
            Some(Calibration::measure(
                &reference, &guidance, &schedule, &batches,
            )?)
        }
    };
    let cfg = &calibrated(cfg, calibration.as_ref());
    let resolved = json_string(&Resolved {
        finetune: cfg,
        base_model: &bp.model,
        base_schedule: &bp.schedule,
        base_dir: paths.base_dir.display().to_string(),
        data_dir: paths.data_dir.display().to_string(),
        calibration,
        prompts: paths.text.as_ref().map(|t| (t.train.len(), t.probe.len())),
    });
    let probe = pixel_probe(cfg, paths, m, &reference, &schedule, &device)?;

    let n_train = train.n;
    let on_policy = cfg.on_policy.partial(&cfg.objective);
    let dims = [cfg.batch_size, m.in_channels, m.image_size, m.image_size];
    let draw = |step: u64| -> Result<ObjectiveBatch> {
        match (cfg.draws, &paths.text) {
            (DrawSource::Forward, _) => data_batch_from(
                n_train,
                &fetch,
                &schedule,
                &cfg.objective,
                cfg.batch_size,
                cfg.seed,
                step,
            ),
            (DrawSource::OnPolicy, None) => refl::partial_sample_batch(
                &model, &schedule, &on_policy, &dims, None, cfg.seed, step, &device,
            ),
            (DrawSource::OnPolicy, Some(t)) => refl::partial_sample_batch(
                &*model.guided(guidance_scale),
                &schedule,
                &on_policy,
                &dims,
                Some(t.draw_prompts(cfg.batch_size, cfg.seed, step, &device)?),
                cfg.seed,
                step,
                &device,
            ),
        }
    };
    let data = |step: u64| -> Result<Option<ObjectiveBatch>> {
        match &captioned {
            Some(c) if cfg.objective.lambdas().d > 0.0 => Ok(Some(c.data_batch(
                &schedule,
                &cfg.objective,
                cfg.batch_size,
                cfg.seed,
                step,
            )?)),
            _ => Ok(None),
        }
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
            data: &data,
            save_model: &|path| model.save(path).map_err(diffusion_err),
            num_params: model.num_params(),
            train_images: n_train,
            device: &device,
            resolved,
            calibration,
        },
        opts,
    )
}

/// The base's training images (`train_subset` of them), checked against the base model's
/// input and, on prompts, against the captions.
fn training_images(
    cfg: &FinetuneConfig,
    paths: &FinetunePaths,
    m: &UNetConfig,
) -> Result<ImageSet> {
    let path = paths.data_dir.join("train.safetensors");
    let mut train = ImageSet::load(&path).map_err(diffusion_err)?;
    train.truncate(cfg.train_subset);
    if train.h != m.image_size || train.w != m.image_size || train.c != m.in_channels {
        return Err(FinetuneError::BadFile {
            path,
            msg: format!(
                "images are {}x{}x{}, the base model takes {}x{}x{}",
                train.h, train.w, train.c, m.image_size, m.image_size, m.in_channels
            ),
        });
    }
    if let Some(t) = &paths.text {
        t.check(m.context_dim, &train.labels)?;
    }
    Ok(train)
}

/// The fixed probe of a run on the pixel UNet: held-out draws from the validation split
/// (captioned on prompts), and with `probe.samples`, the base's samples from fixed noise and
/// the judges.
fn pixel_probe(
    cfg: &FinetuneConfig,
    paths: &FinetunePaths,
    m: &UNetConfig,
    reference: &UNet,
    schedule: &Schedule,
    device: &Device,
) -> Result<Probe> {
    let val = ImageSet::load(&paths.data_dir.join("val.safetensors")).map_err(diffusion_err)?;
    let mut set = ProbeSet::new(&val.all(device)?, schedule, cfg.probe.draws, cfg.probe.seed)?;
    let mut probe_prompts = None;
    if let Some(t) = &paths.text {
        t.check(m.context_dim, &val.labels)?;
        let labels: Vec<i64> = set.images.iter().map(|&i| val.labels[i]).collect();
        let captions = t
            .captions
            .first(&labels, device)
            .map_err(|e| FinetuneError::config("captions", e.to_string()))?;
        set = set.with_cond(captions)?;
        if cfg.probe.samples > 0 {
            probe_prompts = Some((
                t.probe_contexts(cfg.probe.samples, device)?,
                cfg.guidance_scale(),
            ));
        }
    }
    let mut probe = Probe {
        set,
        noise: None,
        base_samples: None,
        judges: vec![],
        prompts: probe_prompts,
        decode: None,
    };
    if cfg.probe.samples > 0 {
        let noise = probe_noise(cfg, &[m.in_channels, m.image_size, m.image_size], device)?;
        probe.base_samples = Some(probe.sample(reference, schedule, &noise, &cfg.probe)?);
        probe.noise = Some(noise);
        probe.judges = load_judges(cfg, &paths.judges)?;
    }
    Ok(probe)
}

/// `cfg` with the objective's units set from the base's calibration, when there is one.
pub(crate) fn calibrated(
    cfg: &FinetuneConfig,
    calibration: Option<&Calibration>,
) -> FinetuneConfig {
    match calibration {
        Some(c) => FinetuneConfig {
            objective: cfg.objective.calibrated(c),
            ..cfg.clone()
        },
        None => cfg.clone(),
    }
}

/// The probe samples' initial noise: `probe.samples` draws of `dims` from the probe seed.
pub(crate) fn probe_noise(cfg: &FinetuneConfig, dims: &[usize], device: &Device) -> Result<Tensor> {
    let mut rng = draws::rng(cfg.probe.seed, Stream::ProbeSamples, 0);
    let mut shape = vec![cfg.probe.samples];
    shape.extend_from_slice(dims);
    draws::normal(&mut rng, &shape, device)
}

/// The judges of `probe.judges` from the registry.
pub(crate) fn load_judges(cfg: &FinetuneConfig, registry: &Path) -> Result<Vec<Judge>> {
    if cfg.probe.judges.is_empty() {
        return Ok(vec![]);
    }
    let reg = Registry::load(registry)
        .map_err(|e| FinetuneError::config("probe.judges", e.to_string()))?;
    cfg.probe
        .judges
        .iter()
        .map(|n| {
            reg.load_judge(n)
                .map_err(|e| FinetuneError::config("probe.judges", e.to_string()))
        })
        .collect()
}

/// Everything the training loop needs from a run's set-up.
pub(crate) struct Run<'a, M: Tunable> {
    pub(crate) model: &'a M,
    pub(crate) reference: &'a M,
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) guides: Guides<'a>,
    pub(crate) schedule: &'a Schedule,
    pub(crate) probe: Probe,
    /// Step `s`'s training batch, and its data batch (methods with a data term).
    pub(crate) draw: &'a dyn Fn(u64) -> Result<ObjectiveBatch>,
    pub(crate) data: &'a dyn Fn(u64) -> Result<Option<ObjectiveBatch>>,
    /// Write the tuned weights (`model.safetensors`).
    pub(crate) save_model: &'a dyn Fn(&Path) -> Result<()>,
    pub(crate) num_params: usize,
    pub(crate) train_images: usize,
    pub(crate) device: &'a Device,
    /// The resolved config's JSON (`config.json`, and the checkpoint's `meta.config`).
    pub(crate) resolved: String,
    pub(crate) calibration: Option<Calibration>,
}
