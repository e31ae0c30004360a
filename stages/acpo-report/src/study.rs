//! The base-training study (stage `base-study@<config>`): one training configuration of one
//! benchmark trained for a fixed compute budget and scored by FID and KID at several points
//! of its run, so that configurations are compared per unit of compute, not per step.
//!
//! A configuration is the benchmark's `diffusion.<benchmark>` params with the overrides of
//! `study.configs.<config>.set` deep-merged on top. Its step count is not given: it is the
//! budget `study.budget_tflop` divided by the analytic training FLOPs of one step
//! (`acpo_diffusion::flops`), so a wider model gets fewer steps and a larger batch fewer steps
//! of more images. The run is evaluated after the fractions `study.eval_fractions` of those
//! steps (the learning-rate schedule is always the whole run's), each time with its EMA
//! weights: `study.evaluate.samples` DDIM samples from fixed seeds, their Inception features
//! against the test split's reference statistics (FID, KID), and the held-out noise-prediction
//! MSE. Training CPU time (user + system, this process) is measured per segment.
//!
//! Outputs in `out_dir` (`results/study/<config>/`): `run/` (checkpoint, EMA model, loss.csv,
//! config.json of the training run), `points/<step>.json` (one [`StudyPoint`] per evaluation;
//! a restarted stage skips the points it has) and `points/<step>.png` (its first 64 samples),
//! `grid.png` (the last point's),
//! `metrics.json` ([`StudyMetrics`]) and `config.json` (the resolved params).

use crate::error::{ReportError, Result};
use crate::fsio::{read_string, write_json};
use crate::plots::write_grid_png;
use acpo_core::layout::{Artifact, Layout};
use acpo_diffusion::config::{SamplerKind, Spacing};
use acpo_diffusion::data::{to_u8_hwc, ImageSet};
use acpo_diffusion::flops::{train_step_flops, unet_forward_flops};
use acpo_diffusion::sampler::{sample, SamplerOpts};
use acpo_diffusion::train::train_loop_until;
use acpo_diffusion::{heldout_mse, BenchmarkParams, NoiseSchedule, UNet};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How each point of a study run is scored (`study.evaluate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudyEval {
    /// Samples per point (default 500); image `i` from seed `seed + i`.
    pub samples: usize,
    /// Default 2000000 (away from training and report seeds).
    pub seed: u64,
    /// `ddim` (default) or `ddpm`.
    pub sampler: SamplerKind,
    /// DDIM steps (default 25, the evaluation's).
    pub steps: usize,
    /// DDIM timestep spacing (default `leading`, the evaluation's).
    pub spacing: Spacing,
    /// Images per sampler and Inception batch (default 50).
    pub batch_size: usize,
    /// Test images for the held-out MSE (default 500; 0 = all).
    pub heldout_images: usize,
    /// Seed of the held-out draws (default 1234, as train-base's).
    pub heldout_seed: u64,
    /// KID subsets (default 100) and their size (default 500, capped at the smaller set).
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
}

impl Default for StudyEval {
    fn default() -> Self {
        StudyEval {
            samples: 500,
            seed: 2_000_000,
            sampler: SamplerKind::Ddim,
            steps: 25,
            spacing: Spacing::Leading,
            batch_size: 50,
            heldout_images: 500,
            heldout_seed: 1234,
            kid_subsets: 100,
            kid_subset_size: 500,
        }
    }
}

/// The study's shared settings (`study.budget_tflop`, `study.eval_fractions`,
/// `study.evaluate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    /// Training compute of every configuration, in 10^12 analytic FLOPs.
    pub budget_tflop: f64,
    /// Fractions of the run's steps after which it is evaluated, increasing, the last 1.
    pub eval_fractions: Vec<f64>,
    pub evaluate: StudyEval,
}

/// One configuration (`study.configs.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The benchmark whose `diffusion.<benchmark>` params it starts from.
    pub benchmark: String,
    /// What the configuration changes, in words (shown in the table).
    pub description: String,
    /// Overrides deep-merged onto `diffusion.<benchmark>` (keys `model`, `schedule`, `train`;
    /// `train.steps` is set from the budget).
    #[serde(default)]
    pub set: serde_json::Value,
    /// This configuration's budget instead of `study.budget_tflop` (e.g. a long run of the best
    /// recipe, to measure how quality keeps improving with compute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tflop: Option<f64>,
    /// This configuration's evaluation fractions instead of `study.eval_fractions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fractions: Option<Vec<f64>>,
}

/// One evaluated point of a study run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyPoint {
    pub step: usize,
    /// Training images seen (`step * batch_size`).
    pub images: usize,
    /// Analytic training compute so far, 10^12 FLOPs.
    pub train_tflop: f64,
    /// Measured training CPU seconds so far (user + system of this process, all threads).
    pub train_cpu_s: f64,
    /// Measured training wall-clock seconds so far.
    pub train_wall_s: f64,
    pub fid: f64,
    pub kid: f64,
    /// Half-width of KID's 95% interval (1.96 sd over subsets).
    pub kid_ci95: f64,
    pub heldout_mse: f64,
    /// Samples the FID/KID used, and reference images.
    pub n: usize,
    pub n_ref: usize,
    /// Wall-clock seconds of this point's evaluation (sampling, Inception, MSE).
    pub eval_wall_s: f64,
}

/// `metrics.json` of a study run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyMetrics {
    pub config: String,
    pub benchmark: String,
    pub description: String,
    pub steps: usize,
    pub batch_size: usize,
    pub num_params: usize,
    /// Analytic forward FLOPs of one image, 10^9.
    pub forward_gflop: f64,
    pub budget_tflop: f64,
    pub points: Vec<StudyPoint>,
}

impl StudyMetrics {
    /// The last (full-budget) point.
    pub fn last(&self) -> Option<&StudyPoint> {
        self.points.last()
    }
}

/// Where a study run reads and writes.
#[derive(Debug, Clone)]
pub struct StudyPaths {
    /// `data/prepared/<benchmark>/` (train and test splits).
    pub data: Artifact,
    /// Converted Inception weights.
    pub inception: Artifact,
    /// The same network exported to ONNX: its forward runs in ONNX Runtime.
    pub inception_onnx: Option<Artifact>,
    /// Reference statistics of the benchmark's test split.
    pub fid_ref: Artifact,
    /// `results/study/<config>/`.
    pub out_dir: PathBuf,
}

impl StudyPaths {
    /// Configuration `config` of `benchmark`'s study where `layout` puts its inputs and
    /// output, FID's forward in ONNX Runtime.
    pub fn new(layout: &Layout, benchmark: &str, config: &str) -> StudyPaths {
        StudyPaths {
            data: layout.prepared(benchmark),
            inception: layout.inception_weights(),
            inception_onnx: Some(layout.inception_onnx()),
            fid_ref: layout.fid_ref(benchmark),
            out_dir: layout.study(config).path,
        }
    }
}

/// Deep-merges `over` onto `base` (mappings key by key; anything else replaces; null adds
/// nothing).
fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (_, serde_json::Value::Null) => {}
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl StudySettings {
    /// Checks ranges; errors name the param.
    pub fn validate(&self) -> Result<()> {
        if !(self.budget_tflop > 0.0 && self.budget_tflop.is_finite()) {
            return Err(ReportError::config("study.budget_tflop", "must be > 0"));
        }
        let f = &self.eval_fractions;
        let increasing = f.windows(2).all(|w| w[0] < w[1]);
        if f.is_empty() || !increasing || f[0] <= 0.0 || f[f.len() - 1] != 1.0 {
            return Err(ReportError::config(
                "study.eval_fractions",
                format!("{f:?}: need increasing fractions in (0, 1], the last 1"),
            ));
        }
        let e = &self.evaluate;
        if e.samples < 2 || e.batch_size == 0 || e.steps == 0 {
            return Err(ReportError::config(
                "study.evaluate",
                "samples must be >= 2, batch_size and steps > 0",
            ));
        }
        Ok(())
    }

    /// The training params of configuration `name`: `diffusion` (the benchmark's params as
    /// JSON) with `cfg.set` merged on top and `train.steps` from this budget (call it on
    /// [`StudySettings::for_config`]'s result so that a configuration's own budget counts).
    pub fn resolve(
        &self,
        name: &str,
        cfg: &StudyConfig,
        diffusion: &serde_json::Value,
    ) -> Result<BenchmarkParams> {
        self.validate()?;
        let key = format!("study.configs.{name}.set");
        if !(cfg.set.is_null() || cfg.set.is_object()) {
            return Err(ReportError::config(key, "must be a mapping of params"));
        }
        let mut v = diffusion.clone();
        merge(&mut v, &cfg.set);
        let mut p: BenchmarkParams = serde_json::from_value(v).map_err(|e| {
            ReportError::config(
                key.clone(),
                format!("{e} (keys are those of diffusion.{})", cfg.benchmark),
            )
        })?;
        let per_step = train_step_flops(&p.model, p.train.batch_size) as f64;
        let budget = self.budget_tflop;
        let steps = (budget * 1e12 / per_step).floor() as usize;
        if steps <= p.train.warmup_steps {
            return Err(ReportError::config(
                "study.budget_tflop",
                format!(
                    "{budget} TFLOP buys {steps} steps of configuration `{name}` ({:.3} TFLOP \
                     each), not more than its {} warm-up steps",
                    per_step / 1e12,
                    p.train.warmup_steps
                ),
            ));
        }
        p.train.steps = steps;
        p.train.checkpoint_every = p.train.checkpoint_every.min(steps);
        p.validate()
            .map_err(|e| ReportError::config(key, e.to_string()))?;
        Ok(p)
    }

    /// These settings with `cfg`'s own budget and evaluation fractions, where it has them.
    pub fn for_config(&self, name: &str, cfg: &StudyConfig) -> Result<StudySettings> {
        let s = StudySettings {
            budget_tflop: cfg.budget_tflop.unwrap_or(self.budget_tflop),
            eval_fractions: cfg
                .eval_fractions
                .clone()
                .unwrap_or_else(|| self.eval_fractions.clone()),
            evaluate: self.evaluate.clone(),
        };
        s.validate().map_err(|e| match e {
            ReportError::Config { field, msg } => ReportError::Config {
                field: field.replace("study.", &format!("study.configs.{name}.")),
                msg,
            },
            e => e,
        })?;
        Ok(s)
    }

    /// The steps after which the run is evaluated.
    pub fn eval_steps(&self, steps: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .eval_fractions
            .iter()
            .map(|f| ((f * steps as f64).round() as usize).clamp(1, steps))
            .collect();
        out.dedup();
        out
    }
}

/// CPU seconds (user + system) of this process so far.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

fn point_path(out_dir: &Path, step: usize) -> PathBuf {
    out_dir.join("points").join(format!("{step:09}.json"))
}

fn read_point(path: &Path) -> Result<StudyPoint> {
    serde_json::from_str(&read_string(path)?)
        .map_err(|e| ReportError::bad(path, "point", e.to_string()))
}

/// Samples, Inception features and FID/KID, held-out MSE of the EMA model in `run_dir`.
struct Scores {
    fid_kid: acpo_fid::FidKid,
    heldout_mse: f64,
    pixels: Vec<u8>,
}

fn score(
    p: &BenchmarkParams,
    run_dir: &Path,
    ev: &StudyEval,
    inception: &acpo_fid::InceptionV3,
    reference: &acpo_fid::RefStats,
    test: &Tensor,
    device: &Device,
) -> Result<Scores> {
    let model = UNet::load(&p.model, &run_dir.join("model.safetensors"), device)?;
    let schedule = NoiseSchedule::from_config(&p.schedule)?;
    let opts = SamplerOpts {
        kind: ev.sampler,
        steps: ev.steps,
        eta: 0.0,
        guidance: 1.0,
        spacing: ev.spacing,
    };
    let seeds: Vec<u64> = (0..ev.samples as u64).map(|i| ev.seed + i).collect();
    let pb = acpo_core::progress::bar(seeds.len() as u64, "study sample+inception");
    let mut pixels = Vec::new();
    let mut feats = Vec::new();
    let s = p.model.image_size;
    for chunk in seeds.chunks(ev.batch_size) {
        let x = sample(&model, &schedule, chunk, None, &opts, device, || {})?;
        let px = to_u8_hwc(&x)?;
        let nchw = Tensor::from_vec(px.clone(), (chunk.len(), s, s, 3), device)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        feats.push(inception.features(&nchw)?.to_device(&Device::Cpu)?);
        pixels.extend(px);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let feats = Tensor::cat(&feats, 0)?;
    let kc = acpo_fid::KidConfig {
        subsets: ev.kid_subsets,
        subset_size: ev.kid_subset_size,
        seed: 0,
    };
    let fid_kid = acpo_fid::fid_kid(&feats, reference, &kc)?;
    let mse = heldout_mse(&model, &schedule, test, ev.heldout_seed, 1, None)?;
    Ok(Scores {
        fid_kid,
        heldout_mse: mse.mean,
        pixels,
    })
}

/// Trains configuration `name` (params `p`, resolved by [`StudySettings::resolve`]) and
/// scores it at every evaluation step; resumes from what `paths.out_dir` already holds.
pub fn run_study(
    name: &str,
    cfg: &StudyConfig,
    p: &BenchmarkParams,
    settings: &StudySettings,
    paths: &StudyPaths,
) -> Result<StudyMetrics> {
    let train = paths.data.file("train.safetensors");
    for (what, a) in [
        ("the Inception weights", &paths.inception),
        ("the FID reference statistics", &paths.fid_ref),
        ("the prepared dataset", &train),
    ] {
        crate::evaluate::require(a, what, false)?;
    }
    let device = acpo_core::device::default_device();
    let data = ImageSet::load(&train.path)?;
    let mut test = ImageSet::load(&paths.data.path.join("test.safetensors"))?;
    test.truncate(settings.evaluate.heldout_images);
    let test = test.all(&device)?;
    let inception = crate::evaluate::load_inception(
        &paths.inception.path,
        paths.inception_onnx.as_ref(),
        &device,
    )?;
    let reference = acpo_fid::RefStats::load(&paths.fid_ref.path)?;
    let run_dir = paths.out_dir.join("run");
    for d in [paths.out_dir.join("points"), run_dir.clone()] {
        std::fs::create_dir_all(&d).map_err(|e| ReportError::io(&d, e))?;
    }
    write_json(&paths.out_dir.join("config.json"), p)?;

    let tc = &p.train;
    let step_tflop = train_step_flops(&p.model, tc.batch_size) as f64 / 1e12;
    let mut points: Vec<StudyPoint> = Vec::new();
    let mut num_params = 0;
    let (mut cpu_so_far, mut wall_so_far) = (0.0, 0.0);
    for until in settings.eval_steps(tc.steps) {
        let pp = point_path(&paths.out_dir, until);
        if pp.exists() {
            let pt = read_point(&pp)?;
            (cpu_so_far, wall_so_far) = (pt.train_cpu_s, pt.train_wall_s);
            points.push(pt);
            continue;
        }
        let (c0, w0) = (process_cpu_seconds(), Instant::now());
        let (model, _) = train_loop_until(p, &data, None, &run_dir, false, &device, until)?;
        num_params = model.num_params();
        cpu_so_far += process_cpu_seconds() - c0;
        wall_so_far += w0.elapsed().as_secs_f64();
        let t_eval = Instant::now();
        let sc = score(
            p,
            &run_dir,
            &settings.evaluate,
            &inception,
            &reference,
            &test,
            &device,
        )?;
        let fk = sc.fid_kid;
        let pt = StudyPoint {
            step: until,
            images: until * tc.batch_size,
            train_tflop: until as f64 * step_tflop,
            train_cpu_s: cpu_so_far,
            train_wall_s: wall_so_far,
            fid: fk.fid,
            kid: fk.kid_mean,
            kid_ci95: 1.96 * fk.kid_std,
            heldout_mse: sc.heldout_mse,
            n: fk.n,
            n_ref: fk.n_ref,
            eval_wall_s: t_eval.elapsed().as_secs_f64(),
        };
        let shown = sc.pixels.len().min(64 * 3 * p.model.image_size.pow(2));
        let n_shown = shown / (3 * p.model.image_size.pow(2));
        let s = p.model.image_size;
        for grid in [paths.out_dir.join("grid.png"), pp.with_extension("png")] {
            write_grid_png(&sc.pixels[..shown], n_shown, s, s, 8, &grid)?;
        }
        write_json(&pp, &pt)?;
        eprintln!(
            "base-study {name}: step {until}/{} ({:.1} CPU-min): FID {:.2}, KID {:.4}, held-out MSE {:.4}",
            tc.steps,
            pt.train_cpu_s / 60.0,
            pt.fid,
            pt.kid,
            pt.heldout_mse
        );
        points.push(pt);
    }
    if num_params == 0 {
        // Every point was on disk: count the parameters of the saved model.
        num_params =
            UNet::load(&p.model, &run_dir.join("model.safetensors"), &device)?.num_params();
    }
    let m = StudyMetrics {
        config: name.to_string(),
        benchmark: cfg.benchmark.clone(),
        description: cfg.description.clone(),
        steps: tc.steps,
        batch_size: tc.batch_size,
        num_params,
        forward_gflop: unet_forward_flops(&p.model) as f64 / 1e9,
        budget_tflop: settings.budget_tflop,
        points,
    };
    write_json(&paths.out_dir.join("metrics.json"), &m)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StudySettings {
        StudySettings {
            budget_tflop: 1.0,
            eval_fractions: vec![0.5, 1.0],
            evaluate: StudyEval::default(),
        }
    }

    fn diffusion() -> serde_json::Value {
        serde_json::json!({
            "model": {"image_size": 32, "channels": 32, "channel_mult": [1, 2, 2],
                      "attention_resolutions": [8], "norm_groups": 8},
            "train": {"batch_size": 16, "warmup_steps": 10, "lr": 5e-4}
        })
    }

    fn config(set: serde_json::Value) -> StudyConfig {
        StudyConfig {
            benchmark: "anime32".into(),
            description: "test".into(),
            set,
            budget_tflop: None,
            eval_fractions: None,
        }
    }

    #[test]
    fn budget_sets_the_steps_and_overrides_merge() {
        let s = settings();
        let base = s
            .resolve("a", &config(serde_json::Value::Null), &diffusion())
            .unwrap();
        let per_step = train_step_flops(&base.model, 16) as f64;
        assert_eq!(base.train.steps, (1e12 / per_step).floor() as usize);
        // Batch 32 buys half the steps; the merge keeps the keys it does not name.
        let b32 = s
            .resolve(
                "b",
                &config(serde_json::json!({"train": {"batch_size": 32}})),
                &diffusion(),
            )
            .unwrap();
        assert_eq!(b32.train.steps, (1e12 / (2.0 * per_step)).floor() as usize);
        assert_eq!(b32.train.lr, 5e-4);
        assert_eq!(b32.model.channels, 32);
        // A wider model buys fewer steps.
        let wide = s
            .resolve(
                "w",
                &config(serde_json::json!({"model": {"channels": 48}})),
                &diffusion(),
            )
            .unwrap();
        assert!(wide.train.steps < base.train.steps / 2);
        assert_eq!(
            s.eval_steps(base.train.steps).last(),
            Some(&base.train.steps)
        );
    }

    #[test]
    fn bad_configurations_name_the_key() {
        let s = settings();
        let e = s
            .resolve(
                "x",
                &config(serde_json::json!({"train": {"lr_sched": "cosine"}})),
                &diffusion(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("study.configs.x.set") && e.contains("lr_sched"),
            "{e}"
        );
        let e = s
            .resolve(
                "x",
                &config(serde_json::json!({"train": {"ema_decay": 1.5}})),
                &diffusion(),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("ema_decay"), "{e}");
        let tiny = StudySettings {
            budget_tflop: 1e-6,
            ..settings()
        };
        let e = tiny
            .resolve("x", &config(serde_json::Value::Null), &diffusion())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("study.budget_tflop") && e.contains("warm-up"),
            "{e}"
        );
        for bad in [vec![], vec![0.5], vec![1.0, 0.5], vec![0.0, 1.0]] {
            let b = StudySettings {
                eval_fractions: bad.clone(),
                ..settings()
            };
            let e = b.validate().unwrap_err().to_string();
            assert!(e.contains("study.eval_fractions"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_configuration_may_have_its_own_budget_and_points() {
        let mut cfg = config(serde_json::Value::Null);
        cfg.budget_tflop = Some(4.0);
        cfg.eval_fractions = Some(vec![0.25, 0.5, 1.0]);
        let s = settings().for_config("long", &cfg).unwrap();
        assert_eq!((s.budget_tflop, s.eval_fractions.len()), (4.0, 3));
        let base = settings().resolve("a", &config(serde_json::Value::Null), &diffusion());
        let long = s.resolve("long", &cfg, &diffusion()).unwrap();
        assert!(long.train.steps >= 4 * base.unwrap().train.steps - 3);
        cfg.budget_tflop = Some(-1.0);
        let e = settings().for_config("long", &cfg).unwrap_err().to_string();
        assert!(e.contains("study.configs.long.budget_tflop"), "{e}");
    }

    #[test]
    fn evaluation_steps_follow_the_fractions() {
        let s = StudySettings {
            eval_fractions: vec![0.25, 0.5, 1.0],
            ..settings()
        };
        assert_eq!(s.eval_steps(1000), vec![250, 500, 1000]);
        assert_eq!(s.eval_steps(2), vec![1, 2]);
    }
}
