//! The `finetune` stage: ACPO (or a baseline) from a `train-base` checkpoint, with CNNIQA as
//! the guidance, a fixed held-out probe set, judges, drift stop, checkpoints and exact resume.
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

use crate::draws::{self, Stream};
use crate::objective::ObjectiveBatch;
use crate::objective::{
    Calibration, EpsModel, Guidance, Method, Normalize, ObjectiveConfig, Schedule,
};
use crate::refl;
use crate::text::{self, Guided, TextConfig, TextInputs};
use crate::train::{
    calibration_batches, data_batch_from, per_item_mean, probe_metrics, train_step_with_data,
    ProbeSet, Stat,
};
use crate::{FinetuneError, Result};
use acpo_core::layout::{Artifact, Layout, Model};
use acpo_diffusion::config::Spacing;
use acpo_diffusion::data::{to_u8_hwc, ImageSet};
use acpo_diffusion::optim::{AdamW, AdamWConfig};
use acpo_diffusion::{BenchmarkParams, NoiseSchedule, UNet};
use acpo_iqa::{Cnniqa, Judge, PatchMode, Registry, RgbImage};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// The held-out probe (SPEC section 5 drift and MSE, plus sample quality).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Probe every this many steps (and at step 0 and at the end); default 25.
    pub every: usize,
    /// `(image, t, noise)` draws from the validation split (default 256).
    pub draws: usize,
    /// Seed of the probe draws and of the probe samples' noise (default 0).
    pub seed: u64,
    /// Draws per forward pass (default 64).
    pub batch_size: usize,
    /// Images generated from fixed noise at every probe, for the guidance and judge scores
    /// and the pixel drift against the base's samples (default 32; 0 = none).
    pub samples: usize,
    /// DDIM steps of those samples (default 20).
    pub sample_steps: usize,
    /// DDIM timestep spacing of those samples (default `leading`, the evaluation's).
    pub spacing: Spacing,
    /// Judge names from `judges.yaml` scored on the samples (default brisque, niqe).
    pub judges: Vec<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            every: 25,
            draws: 256,
            seed: 0,
            batch_size: 64,
            samples: 32,
            sample_steps: 20,
            spacing: Spacing::Leading,
            judges: vec!["brisque".into(), "niqe".into()],
        }
    }
}

/// Where the training `x_t` of a step come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DrawSource {
    /// Real training images noised forward to a timestep of the objective's window (default).
    #[default]
    Forward,
    /// ReFL-style: the current model's own DDIM trajectory from noise, stopped (without
    /// gradient) at a timestep of the objective's window, the same timestep for the whole batch
    /// (see [`refl::partial_sample_batch`]). No data noise, so methods with a data term refuse it.
    OnPolicy,
}

/// The trajectory of `draws: on-policy` (its stop window is the objective's `[t_min, t_max]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnPolicyConfig {
    /// DDIM steps of the whole trajectory (default 20).
    pub sample_steps: usize,
    /// DDIM timestep spacing (default `leading`, the evaluation's).
    pub spacing: Spacing,
}

impl Default for OnPolicyConfig {
    fn default() -> Self {
        Self {
            sample_steps: 20,
            spacing: Spacing::Leading,
        }
    }
}

impl OnPolicyConfig {
    /// The partial-sampling parameters of a run whose objective window is `[t_min, t_max]`.
    pub fn partial(&self, objective: &ObjectiveConfig) -> refl::PartialSamplingConfig {
        refl::PartialSamplingConfig {
            sample_steps: self.sample_steps,
            spacing: self.spacing,
            stop_t_min: objective.t_min,
            stop_t_max: objective.t_max,
            eta: 0.0,
        }
    }
}

/// Everything one `finetune` run reads (params `finetune.defaults` deep-merged with
/// `finetune.<benchmark>`, then the command line's `--method`/`--lambda-a`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The objective: method, lambdas, timestep window, `w(t)`, `Q` normalisation.
    pub objective: ObjectiveConfig,
    /// AdamW (lr default 1e-5, no weight decay).
    pub optim: AdamWConfig,
    /// Optimiser steps (default 200).
    pub steps: usize,
    /// Images per step (default 16).
    pub batch_size: usize,
    /// Seed of the training draws (default 0).
    pub seed: u64,
    /// Global gradient-norm clip (default 1.0; 0 = off).
    pub grad_clip: f64,
    /// Use only the first this many training images (default 0 = all).
    pub train_subset: usize,
    /// Write a checkpoint every this many steps (default 50; the end always writes one).
    pub checkpoint_every: usize,
    /// CNNIQA patch grid for the guidance (default inclusive: every full 32x32 patch).
    pub guidance_patch_mode: PatchMode,
    /// Stop when the probe's anchor distance exceeds this value (default none).
    pub drift_stop: Option<f64>,
    /// Refuse a base whose KID (its evaluation, [`FinetunePaths::base_eval`]) is above this
    /// (default none: no gate).
    pub base_max_kid: Option<f64>,
    /// Where the training `x_t` come from (default `forward`; `on-policy`: ReFL-style).
    pub draws: DrawSource,
    /// The trajectory of `draws: on-policy`.
    pub on_policy: OnPolicyConfig,
    /// The held-out probe.
    pub probe: ProbeConfig,
    /// Runs on prompts ([`FinetunePaths::text`] given): the guidance scale of the trajectories
    /// (default: [`TextConfig`]'s). Not written when unset, so runs without prompts keep
    /// their config bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveConfig::default(),
            optim: AdamWConfig::default(),
            steps: 200,
            batch_size: 16,
            seed: 0,
            grad_clip: 1.0,
            train_subset: 0,
            checkpoint_every: 50,
            guidance_patch_mode: PatchMode::Inclusive,
            drift_stop: None,
            base_max_kid: None,
            draws: DrawSource::Forward,
            on_policy: OnPolicyConfig::default(),
            probe: ProbeConfig::default(),
            text: None,
        }
    }
}

/// Deep-merge `overlay` onto `base` (objects merge key by key, anything else replaces).
pub fn merge_json(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl FinetuneConfig {
    /// Parse the deep merge of `layers` (first is lowest); `what` names them in errors.
    pub fn from_layers(layers: &[Value], what: &str) -> Result<Self> {
        let mut v = Value::Object(Default::default());
        for l in layers {
            if !l.is_null() {
                merge_json(&mut v, l);
            }
        }
        serde_json::from_value(v).map_err(|e| FinetuneError::config(what, e.to_string()))
    }

    /// Check ranges (the objective against a schedule of `num_steps` timesteps) for a run
    /// without prompts.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        self.validate_for(num_steps, false)
    }

    /// Check ranges; `on_prompts`: a run on prompts, which draws on-policy and takes its data
    /// term from the base's captioned images.
    pub fn validate_for(&self, num_steps: usize, on_prompts: bool) -> Result<()> {
        if on_prompts {
            if self.draws != DrawSource::OnPolicy {
                return Err(FinetuneError::config(
                    "draws",
                    "prompts have no images to noise forward: a run on prompts needs draws: on-policy",
                ));
            }
            self.text.clone().unwrap_or_default().validate()?;
        }
        self.objective.validate(num_steps)?;
        let pos = |name: &str, v: usize| {
            if v == 0 {
                Err(FinetuneError::config(name, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("steps", self.steps)?;
        pos("batch_size", self.batch_size)?;
        pos("checkpoint_every", self.checkpoint_every)?;
        pos("probe.every", self.probe.every)?;
        pos("probe.draws", self.probe.draws)?;
        pos("probe.batch_size", self.probe.batch_size)?;
        if self.probe.samples > 0 {
            pos("probe.sample_steps", self.probe.sample_steps)?;
            let p = &self.probe;
            refl::trajectory(
                num_steps,
                p.sample_steps,
                p.spacing,
                0.0,
                "probe.sample_steps",
            )?;
        }
        if self.draws == DrawSource::OnPolicy {
            if self.objective.lambdas().d != 0.0 && !on_prompts {
                return Err(FinetuneError::config(
                    "draws",
                    format!(
                        "on-policy draws have no data noise: method {} has a data term (use forward draws)",
                        self.objective.method
                    ),
                ));
            }
            let o = &self.on_policy;
            refl::trajectory(
                num_steps,
                o.sample_steps,
                o.spacing,
                0.0,
                "on_policy.sample_steps",
            )?;
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return Err(FinetuneError::config("optim.lr", "must be > 0"));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(FinetuneError::config("grad_clip", "must be >= 0"));
        }
        if let Some(d) = self.drift_stop {
            if !(d.is_finite() && d > 0.0) {
                return Err(FinetuneError::config("drift_stop", "must be > 0 (or null)"));
            }
        }
        if let Some(k) = self.base_max_kid {
            if !(k.is_finite() && k > 0.0) {
                return Err(FinetuneError::config(
                    "base_max_kid",
                    "must be > 0 (or null)",
                ));
            }
        }
        Ok(())
    }
}

/// Where a run reads and writes.
#[derive(Clone, Debug)]
pub struct FinetunePaths {
    /// `results/base/<benchmark>/`.
    pub base_dir: PathBuf,
    /// `data/prepared/<benchmark>/`.
    pub data_dir: PathBuf,
    /// `results/finetune/<benchmark>/<run>/`.
    pub out_dir: PathBuf,
    /// `CNNIQA-LIVE.safetensors`.
    pub guidance: PathBuf,
    /// `judges.yaml` (needed when `probe.samples > 0` and `probe.judges` is not empty).
    pub judges: PathBuf,
    /// The base's evaluation, read only when `base_max_kid` is set.
    pub base_eval: Option<BaseEval>,
    /// A run on prompts: the prompt sets and the base's captions (see [`crate::text`]).
    pub text: Option<TextInputs>,
}

/// Where the base-quality gate reads the base's KID; its errors name the stages that make
/// the two.
#[derive(Clone, Debug)]
pub struct BaseEval {
    /// `results/eval/<benchmark>/base/quality.json` (FID/KID of the base's evaluation).
    pub quality: Artifact,
    /// The base model, `results/base/<benchmark>/` (retrained when its KID is too high).
    pub base: Artifact,
}

impl BaseEval {
    /// The gate's inputs for the base of `benchmark` where `layout` puts them.
    pub fn new(layout: &Layout, benchmark: &str) -> BaseEval {
        let model = Model::Bench(benchmark);
        BaseEval {
            quality: layout.eval(model, "base").file("quality.json"),
            base: layout.base(model),
        }
    }
}

/// Run controls that are not part of the result.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Ignore an existing checkpoint.
    pub fresh: bool,
    /// Stop (with a checkpoint, without final outputs) once this many steps are done: for
    /// time-sliced runs and the resume test.
    pub stop_after: Option<usize>,
}

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

fn io_err(path: &Path, source: std::io::Error) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

pub(crate) fn save_tensors_atomic(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    acpo_core::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(map, tmp).map_err(FinetuneError::from)
    })
}

fn json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("config types serialise")
}

const LOSS_HEADER: &str = "step,loss,l_perc,q_batch,l_anchor,l_simple,grad_norm";

fn opt_num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

fn curve_header(judges: &[String]) -> String {
    let mut h = String::from(
        "step,anchor_distance,anchor_distance_ci95,heldout_mse,heldout_mse_ci95,probe_draws,\
         guidance_x0hat,guidance_x0hat_ci95,guidance_x0hat_n,guidance_samples,guidance_samples_ci95,\
         sample_pixel_drift,sample_pixel_drift_ci95,samples",
    );
    for j in judges {
        h.push_str(&format!(",judge_{j},judge_{j}_ci95"));
    }
    h
}

fn curve_line(r: &CurveRow) -> String {
    let mut s = format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        r.step,
        r.anchor_distance.mean,
        r.anchor_distance.ci95,
        r.heldout_mse.mean,
        r.heldout_mse.ci95,
        r.heldout_mse.n,
        r.guidance_x0hat.mean,
        r.guidance_x0hat.ci95,
        r.guidance_x0hat.n,
        r.guidance_samples.mean,
        r.guidance_samples.ci95,
        r.sample_pixel_drift.mean,
        r.sample_pixel_drift.ci95,
        r.guidance_samples.n
    );
    for (_, st) in &r.judges {
        s.push_str(&format!(",{},{}", st.mean, st.ci95));
    }
    s
}

/// Lines of a CSV written by an earlier invocation whose step (first field) is `<= step`.
fn csv_rows_upto(path: &Path, header: &str, step: usize) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: format!("header is not `{header}`"),
        });
    }
    let mut out = vec![];
    for (i, l) in lines.enumerate() {
        let s: usize = l
            .split(',')
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| FinetuneError::BadFile {
                path: path.to_path_buf(),
                msg: format!("line {}: no step number", i + 2),
            })?;
        if s <= step {
            out.push(l.to_string());
        }
    }
    Ok(out)
}

fn write_csv(path: &Path, header: &str, rows: &[String]) -> Result<()> {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
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

fn diffusion_err(e: acpo_diffusion::DiffusionError) -> FinetuneError {
    FinetuneError::config("base model / data", e.to_string())
}

/// Read `base_dir/config.json` (acpo-diffusion's `BenchmarkParams`).
pub fn load_base_params(base_dir: &Path) -> Result<BenchmarkParams> {
    let path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| FinetuneError::BadFile {
        path: path.clone(),
        msg: format!("not a train-base config.json: {e}"),
    })
}

/// The resolved config saved as `config.json` (and compared on resume).
#[derive(Serialize)]
struct Resolved<'a> {
    finetune: &'a FinetuneConfig,
    base_model: &'a acpo_diffusion::UNetConfig,
    base_schedule: &'a acpo_diffusion::config::ScheduleConfig,
    base_dir: String,
    data_dir: String,
    /// The base's statistics that set the loss units (`objective.normalize: base`).
    calibration: Option<Calibration>,
    /// A run on prompts: its training and probe prompt counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompts: Option<(usize, usize)>,
}

/// The base-quality gate: with `base_max_kid` set, the base's KID (its `base_quality` at the
/// larger sample count when the evaluation has one, else `fid_kid`) must be at most the limit.
pub fn check_base_quality(cfg: &FinetuneConfig, paths: &FinetunePaths) -> Result<()> {
    let Some(limit) = cfg.base_max_kid else {
        return Ok(());
    };
    let base_dir = paths.base_dir.display().to_string();
    let refuse = |what: String, fix: &str| FinetuneError::BaseQuality {
        base: base_dir.clone(),
        what,
        limit,
        fix: fix.to_string(),
    };
    let Some(BaseEval { quality, base }) = &paths.base_eval else {
        return Err(refuse(
            "has no evaluation to read its KID from".into(),
            "give the stage the base's evaluation",
        ));
    };
    let (path, fix) = (&quality.path, &quality.fix());
    let text = std::fs::read_to_string(path).map_err(|e| {
        refuse(
            format!("has no readable evaluation ({}: {e})", path.display()),
            fix,
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| FinetuneError::BadFile {
        path: path.clone(),
        msg: format!("line {}: {e}", e.line()),
    })?;
    let (kid, n) = ["base_quality", "fid_kid"]
        .iter()
        .find_map(|k| {
            let kid = v.get(k)?.get("kid")?;
            Some((
                kid.get("mean")?.as_f64()?,
                kid.get("n")?.as_u64().unwrap_or(0),
            ))
        })
        .ok_or_else(|| {
            refuse(
                format!(
                    "has no KID in {} (evaluated without Inception?)",
                    path.display()
                ),
                fix,
            )
        })?;
    if kid.is_nan() || kid > limit {
        return Err(refuse(
            format!("has KID {kid:.4} on {n} samples, above the limit"),
            &format!("{} (with more training steps), then {fix}", base.fix()),
        ));
    }
    Ok(())
}

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
    let guidance_scale = cfg.text.clone().unwrap_or_default().guidance;
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

    // data
    let mut train =
        ImageSet::load(&paths.data_dir.join("train.safetensors")).map_err(diffusion_err)?;
    train.truncate(cfg.train_subset);
    let m = &bp.model;
    if train.h != m.image_size || train.w != m.image_size || train.c != m.in_channels {
        return Err(FinetuneError::BadFile {
            path: paths.data_dir.join("train.safetensors"),
            msg: format!(
                "images are {}x{}x{}, the base model takes {}x{}x{}",
                train.h, train.w, train.c, m.image_size, m.image_size, m.in_channels
            ),
        });
    }
    if let Some(t) = &paths.text {
        t.check(m.context_dim, &train.labels)?;
    }
    let fetch = |idx: &[usize]| train.batch(idx, &[], &device);
    let calibration = match cfg.objective.normalize {
        Normalize::None => None,
        Normalize::Base => {
            let batches = match &paths.text {
                None => calibration_batches(
                    train.n,
                    &fetch,
                    &schedule,
                    &cfg.objective,
                    cfg.probe.batch_size,
                    cfg.probe.seed,
                )?,
                Some(t) => text::calibration_batches(
                    train.n,
                    &fetch,
                    &train.labels,
                    &t.captions,
                    &schedule,
                    &cfg.objective,
                    cfg.probe.batch_size,
                    cfg.probe.seed,
                    &device,
                )?,
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
    let val = ImageSet::load(&paths.data_dir.join("val.safetensors")).map_err(diffusion_err)?;
    let mut set = ProbeSet::new(
        &val.all(&device)?,
        &schedule,
        cfg.probe.draws,
        cfg.probe.seed,
    )?;
    let mut probe_prompts = None;
    if let Some(t) = &paths.text {
        t.check(m.context_dim, &val.labels)?;
        let labels: Vec<i64> = set.images.iter().map(|&i| val.labels[i]).collect();
        let captions = t
            .captions
            .first(&labels, &device)
            .map_err(|e| FinetuneError::config("captions", e.to_string()))?;
        set = set.with_cond(captions)?;
        if cfg.probe.samples > 0 {
            probe_prompts = Some((
                t.probe_contexts(cfg.probe.samples, &device)?,
                guidance_scale,
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
        let noise = probe_noise(cfg, &[m.in_channels, m.image_size, m.image_size], &device)?;
        probe.base_samples = Some(probe.sample(&reference, &schedule, &noise, &cfg.probe)?);
        probe.noise = Some(noise);
        probe.judges = load_judges(cfg, &paths.judges)?;
    }

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
        match &paths.text {
            Some(t) if cfg.objective.lambdas().d > 0.0 => Ok(Some(text::data_batch(
                n_train,
                &fetch,
                &train.labels,
                &t.captions,
                &schedule,
                &cfg.objective,
                cfg.batch_size,
                cfg.seed,
                step,
                &device,
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

/// What a checkpoint restores.
struct Resumed {
    step: usize,
    drift_stop: Option<DriftStop>,
    loss_rows: Vec<String>,
    curve_rows: Vec<String>,
}

/// Set every var of `vars` from `tensors` (checkpoint names `model.<var>`).
fn set_vars(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = tensors
            .get(&format!("model.{name}"))
            .ok_or_else(|| FinetuneError::BadFile {
                path: origin.to_path_buf(),
                msg: format!("missing `model.{name}`"),
            })?;
        if t.dims() != var.dims() {
            return Err(FinetuneError::BadFile {
                path: origin.to_path_buf(),
                msg: format!(
                    "`model.{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Restore the checkpoint at `path` when it was written with the same resolved config.
fn resume(
    path: &Path,
    run: &Run<'_, impl Tunable>,
    opt: &mut AdamW,
    out: &Path,
    curve_hdr: &str,
) -> Result<Option<Resumed>> {
    let t =
        candle_core::safetensors::load(path, run.device).map_err(|e| FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let same_config = t
        .get("meta.config")
        .and_then(|c| c.to_vec1::<u8>().ok())
        .map(|b| b == run.resolved.as_bytes())
        .unwrap_or(false);
    if !same_config {
        eprintln!(
            "finetune: {} was written with another config; starting fresh",
            path.display()
        );
        return Ok(None);
    }
    let step = t
        .get("meta.step")
        .and_then(|s| s.to_vec1::<u32>().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: "missing `meta.step`".into(),
        })? as usize;
    set_vars(&run.vars, &t, path)?;
    opt.load_state(&t, "adam.", step)
        .map_err(FinetuneError::optim)?;
    let drift_stop = match t.get("meta.drift_stop") {
        Some(d) => {
            let v = d.to_vec1::<f64>()?;
            Some(DriftStop {
                step: v[0] as usize,
                anchor_distance: v[1],
                threshold: v[2],
            })
        }
        None => None,
    };
    Ok(Some(Resumed {
        step,
        drift_stop,
        loss_rows: csv_rows_upto(&out.join("loss.csv"), LOSS_HEADER, step)?,
        curve_rows: csv_rows_upto(&out.join("curve.csv"), curve_hdr, step)?,
    }))
}

/// The optimisation loop of a run, its checkpoints and its final outputs (shared by every
/// kind of network).
pub(crate) fn run_loop<M: Tunable>(
    cfg: &FinetuneConfig,
    out: &Path,
    run: Run<'_, M>,
    opts: &RunOptions,
) -> Result<Option<FinetuneOutcome>> {
    let (model, reference, schedule, guides) = (run.model, run.reference, run.schedule, run.guides);
    let mut opt = AdamW::new(run.vars.clone(), cfg.optim.clone()).map_err(FinetuneError::optim)?;
    let judge_names: Vec<String> = run
        .probe
        .judges
        .iter()
        .map(|j| j.name().to_string())
        .collect();
    let curve_hdr = curve_header(&judge_names);
    let ckpt_path = out.join("checkpoint.safetensors");
    let resumed = match !opts.fresh && ckpt_path.exists() {
        true => resume(&ckpt_path, &run, &mut opt, out, &curve_hdr)?,
        false => None,
    };
    let (start, mut drift_stop, mut loss_rows, mut curve_rows) = match resumed {
        Some(r) => (r.step, r.drift_stop, r.loss_rows, r.curve_rows),
        None => (0, None, vec![], vec![]),
    };
    let save_ckpt = |opt: &AdamW,
                     step: usize,
                     loss_rows: &[String],
                     curve_rows: &[String],
                     stop: Option<&DriftStop>|
     -> Result<()> {
        write_csv(&out.join("loss.csv"), LOSS_HEADER, loss_rows)?;
        write_csv(&out.join("curve.csv"), &curve_hdr, curve_rows)?;
        let mut map: HashMap<String, Tensor> = opt.state_tensors("adam.");
        for (n, v) in &run.vars {
            map.insert(format!("model.{n}"), v.as_tensor().clone());
        }
        map.insert(
            "meta.step".into(),
            Tensor::new(&[step as u32], &Device::Cpu)?,
        );
        map.insert(
            "meta.config".into(),
            Tensor::new(run.resolved.as_bytes(), &Device::Cpu)?,
        );
        if let Some(d) = stop {
            map.insert(
                "meta.drift_stop".into(),
                Tensor::new(
                    &[d.step as f64, d.anchor_distance, d.threshold],
                    &Device::Cpu,
                )?,
            );
        }
        save_tensors_atomic(&map, &ckpt_path)
    };

    let probe = &run.probe;
    let mut base_row = None;
    if start == 0 {
        let row = probe.row(0, model, reference, guides, schedule, cfg)?;
        curve_rows.push(curve_line(&row));
        base_row = Some(row);
    }
    let pb = acpo_core::progress::bar_with_template(
        cfg.steps as u64,
        "finetune {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
    );
    pb.set_position(start as u64);
    let t0 = Instant::now();
    let mut last_row: Option<CurveRow> = None;
    let mut step = start;
    // a run that stopped on drift stays stopped
    while step < cfg.steps && drift_stop.is_none() {
        let batch = (run.draw)(step as u64)?;
        let data = (run.data)(step as u64)?;
        let st = train_step_with_data(
            model,
            reference,
            guides.objective,
            schedule,
            &cfg.objective,
            &batch,
            data.as_ref(),
            &mut opt,
            cfg.grad_clip,
        )?;
        step += 1;
        loss_rows.push(format!(
            "{},{},{},{},{},{},{}",
            step,
            st.loss,
            opt_num(st.perceptual),
            opt_num(st.quality),
            opt_num(st.anchor),
            opt_num(st.simple),
            st.grad_norm
        ));
        pb.inc(1);
        pb.set_message(format!("loss {:.4}", st.loss));
        if step.is_multiple_of(cfg.probe.every) || step == cfg.steps {
            let row = probe.row(step, model, reference, guides, schedule, cfg)?;
            curve_rows.push(curve_line(&row));
            if let Some(th) = cfg.drift_stop {
                if row.anchor_distance.mean > th {
                    drift_stop = Some(DriftStop {
                        step,
                        anchor_distance: row.anchor_distance.mean,
                        threshold: th,
                    });
                }
            }
            last_row = Some(row);
            if drift_stop.is_some() {
                break;
            }
        }
        if step.is_multiple_of(cfg.checkpoint_every) && step < cfg.steps {
            save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
        }
        if opts.stop_after == Some(step) && step < cfg.steps {
            save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
            pb.finish_and_clear();
            return Ok(None);
        }
    }
    pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let done = step - start;

    // final outputs
    let last = match last_row {
        Some(r) => r,
        None => probe.row(step, model, reference, guides, schedule, cfg)?,
    };
    let base = match base_row {
        Some(r) => r,
        None => probe.row(0, reference, reference, guides, schedule, cfg)?,
    };
    save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
    (run.save_model)(&out.join("model.safetensors"))?;
    write_atomic(&out.join("config.json"), run.resolved.as_bytes())?;
    let tail = (loss_rows.len() / 10).max(1);
    let final_train_loss = loss_rows[loss_rows.len().saturating_sub(tail)..]
        .iter()
        .filter_map(|l| l.split(',').nth(1).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / tail as f64;
    let lambdas = cfg.objective.lambdas();
    let outcome = FinetuneOutcome {
        method: cfg.objective.method,
        lambda_p: lambdas.p,
        lambda_a: lambdas.a,
        lambda_d: lambdas.d,
        steps: step,
        drift_stop,
        base,
        last,
        final_train_loss,
        device: format!("{:?}", run.device),
        num_params: run.num_params,
        train_images: run.train_images,
        calibration: run.calibration,
        seed: cfg.seed,
        invocation: FinetuneInvocation {
            resumed_from: start,
            steps_done: done,
            train_seconds,
            steps_per_s: if train_seconds > 0.0 {
                done as f64 / train_seconds
            } else {
                0.0
            },
        },
    };
    write_atomic(&out.join("metrics.json"), json_string(&outcome).as_bytes())?;
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    fn paths(dir: &Path, metrics: Option<&str>) -> FinetunePaths {
        let gate = BaseEval::new(&Layout::new(dir), "anime32");
        if let Some(text) = metrics {
            std::fs::create_dir_all(gate.quality.path.parent().unwrap()).unwrap();
            std::fs::write(&gate.quality.path, text).unwrap();
        }
        FinetunePaths {
            base_dir: PathBuf::from("results/base/anime32"),
            data_dir: dir.to_path_buf(),
            out_dir: dir.join("out"),
            guidance: dir.join("g"),
            judges: dir.join("j"),
            base_eval: Some(gate),
            text: None,
        }
    }

    fn gated(limit: Option<f64>) -> FinetuneConfig {
        FinetuneConfig {
            base_max_kid: limit,
            ..FinetuneConfig::default()
        }
    }

    const EVAL: &str = r#"{"fid_kid": {"kid": {"mean": 0.30, "n": 256}},
                          "base_quality": {"kid": {"mean": 0.08, "n": 1000}}}"#;

    #[test]
    fn the_gate_is_off_by_default_and_reads_nothing() {
        let d = tempfile::tempdir().unwrap();
        check_base_quality(&gated(None), &paths(d.path(), None)).unwrap();
    }

    #[test]
    fn the_gate_uses_the_larger_sample_kid_when_there_is_one() {
        let d = tempfile::tempdir().unwrap();
        check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some(EVAL))).unwrap();
        let only_small = r#"{"fid_kid": {"kid": {"mean": 0.30, "n": 256}}}"#;
        let e = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some(only_small)));
        assert!(matches!(e, Err(FinetuneError::BaseQuality { .. })), "{e:?}");
    }

    #[test]
    fn a_poor_base_is_refused_naming_base_kid_limit_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let e = check_base_quality(&gated(Some(0.05)), &paths(d.path(), Some(EVAL))).unwrap_err();
        assert!(e.is_bad_input());
        assert_eq!(
            e.to_string(),
            "base `results/base/anime32` has KID 0.0800 on 1000 samples, above the limit \
             (finetune.base_max_kid = 0.05): fine-tuning a base that does not generate images \
             tests nothing; retrain or re-evaluate it: acpo repro train-base@anime32 (with more \
             training steps), then acpo repro evaluate-base@anime32"
        );
    }

    #[test]
    fn a_missing_evaluation_names_the_command_that_makes_it() {
        let d = tempfile::tempdir().unwrap();
        let e = check_base_quality(&gated(Some(0.1)), &paths(d.path(), None)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no readable evaluation"), "{msg}");
        assert!(msg.ends_with("acpo repro evaluate-base@anime32"), "{msg}");
        let no_kid = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some("{}")));
        assert!(no_kid.unwrap_err().to_string().contains("has no KID"));
        let bad = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some("{")));
        assert!(matches!(bad, Err(FinetuneError::BadFile { .. })));
    }

    #[test]
    fn unknown_draw_and_spacing_names_are_refused_naming_them() {
        let bad = |v: serde_json::Value| {
            FinetuneConfig::from_layers(&[v], "finetune.defaults")
                .unwrap_err()
                .to_string()
        };
        let e = bad(serde_json::json!({"draws": "sideways"}));
        assert!(e.contains("sideways") && e.contains("on-policy"), "{e}");
        let e = bad(serde_json::json!({"probe": {"spacing": "middle"}}));
        assert!(e.contains("middle") && e.contains("trailing"), "{e}");
        let c = FinetuneConfig::from_layers(
            &[serde_json::json!({"draws": "on-policy", "on_policy": {"spacing": "trailing"}})],
            "finetune.defaults",
        )
        .unwrap();
        assert_eq!(c.draws, DrawSource::OnPolicy);
        assert_eq!(c.on_policy.spacing, Spacing::Trailing);
        let mut c = FinetuneConfig::default();
        c.on_policy.sample_steps = 2000;
        c.draws = DrawSource::OnPolicy;
        let e = c.validate(1000).unwrap_err().to_string();
        assert!(e.contains("on_policy.sample_steps"), "{e}");
    }

    #[test]
    fn the_limit_must_be_positive() {
        let e = gated(Some(-1.0)).validate(1000).unwrap_err();
        assert!(e.to_string().contains("base_max_kid"), "{e}");
    }
}
