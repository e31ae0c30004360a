//! The `evaluate` stage: one model of one benchmark (the base or a fine-tuning run) on fixed
//! seeds and fixed held-out draws, every SPEC section 5 metric with its sample count and 95%
//! interval.
//!
//! Same seeds, same noise: image `i` is sampled from seed `seed + i` (its initial noise and
//! every later noise come from that seed's own stream, acpo-diffusion's sampler), so the base
//! and every tuned model of a benchmark start from identical noise, and the tuned model's
//! image `i` is compared with the base's image `i` (improvement, win rate, pixel drift).
//! Held-out MSE and anchor distance use the draws `(x0_i, t_ij, eps_ij)` from
//! `SeededRng::new(heldout_seed, [i, j])`, the same scheme as `acpo_diffusion::heldout_mse`.
//!
//! Outputs in `out_dir` (`results/eval/<benchmark>/<run>/`): `metrics.json`
//! ([`EvalMetrics`]), `scores.csv` (per seed: guidance and judge scores, pixel drift),
//! `samples.safetensors` (`images` U8 `[N, H, W, 3]`, `x0` F32 `[N, 3, H, W]` in [-1, 1],
//! `seeds` I64), `grid.png`, `config.json`, and `quality.json` (FID/KID only: reproducible
//! bytes for the base-quality gate of the fine-tuning stages).

use crate::error::{ReportError, Result};
use crate::fsio::{write_atomic, write_json};
use crate::schema::{
    DiversityMetrics, EvalMetrics, FidKidMetrics, RealTest, RunInfo, SamplingInfo, Score, TBin,
    SCHEMA,
};
use crate::stats::{self, Estimate};
use acpo_core::layout::{Artifact, Layout, Model};
use acpo_diffusion::config::{SamplerKind, Spacing};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::sampler::{sample, SamplerOpts};
use acpo_diffusion::{BenchmarkParams, NoiseSchedule, UNet};
use acpo_iqa::{Registry, RgbImage};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Params of the evaluation (`report.evaluate` in params.yaml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Images sampled per model (default 256).
    pub samples: usize,
    /// Image `i` uses seed `seed + i` (default 1000000, away from training seeds).
    pub seed: u64,
    /// `ddim` (default) or `ddpm`.
    pub sampler: SamplerKind,
    /// DDIM steps (default 50).
    pub steps: usize,
    /// DDIM eta (default 0: deterministic given the initial noise).
    pub eta: f64,
    /// DDIM timestep spacing, `leading` (default) or `trailing`.
    pub spacing: Spacing,
    /// Images per sampler batch (default 32).
    pub batch_size: usize,
    /// Registry name of the guidance model; reported as `guidance` = -score (default `cnniqa`).
    pub guidance: String,
    /// Judges from the registry (default brisque, niqe, cnniqa-onnx).
    pub judges: Vec<String>,
    /// Test images for held-out MSE and anchor distance (default 1000; 0 = all).
    pub heldout_images: usize,
    /// `(t, eps)` draws per test image (default 1).
    pub heldout_draws: usize,
    /// Seed of the held-out draws (default 1234, as train-base's held-out MSE).
    pub heldout_seed: u64,
    /// Edges of the timestep bins that held-out MSE, its paired difference to the base and
    /// the anchor distance are also reported in (`by_t`; default [0, 100, 300, 600, 1000]:
    /// bin `[e_k, e_k+1)`; the last edge at most the schedule's T).
    pub heldout_t_bins: Vec<usize>,
    /// Bootstrap resamples of the relative improvement (default 2000).
    pub bootstrap: usize,
    /// Seed of the bootstraps (default 0).
    pub bootstrap_seed: u64,
    /// Bootstrap resamples of FID (each one a 2048-d matrix square root; default 0 = no FID
    /// interval; at least 20 gives one).
    pub fid_bootstrap: usize,
    /// KID subsets (default 100) and their size (default 1000, capped at the smaller set).
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    /// The base only: FID and KID also on this many images (seeds `seed .. seed + n`, the
    /// `samples` judged ones first), reported as `base_quality` beside the real-data floor at
    /// the same n (default 0: off). Fine-tuned runs are compared with the base on `samples`.
    pub base_fid_samples: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            samples: 256,
            seed: 1_000_000,
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            spacing: Spacing::Leading,
            batch_size: 32,
            guidance: "cnniqa".into(),
            judges: vec!["brisque".into(), "niqe".into(), "cnniqa-onnx".into()],
            heldout_images: 1000,
            heldout_draws: 1,
            heldout_seed: 1234,
            heldout_t_bins: vec![0, 100, 300, 600, 1000],
            bootstrap: 2000,
            bootstrap_seed: 0,
            fid_bootstrap: 0,
            kid_subsets: 100,
            kid_subset_size: 1000,
            base_fid_samples: 0,
        }
    }
}

impl EvalConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = |f: &str, v: usize| {
            if v == 0 {
                Err(ReportError::config(
                    format!("report.evaluate.{f}"),
                    "must be > 0",
                ))
            } else {
                Ok(())
            }
        };
        pos("samples", self.samples)?;
        pos("batch_size", self.batch_size)?;
        pos("heldout_draws", self.heldout_draws)?;
        pos("steps", self.steps)?;
        if self.samples < 2 {
            return Err(ReportError::config(
                "report.evaluate.samples",
                "must be >= 2 (intervals, diversity)",
            ));
        }
        let e = &self.heldout_t_bins;
        if e.len() < 2 || e.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ReportError::config(
                "report.evaluate.heldout_t_bins",
                format!("{e:?}: need at least two strictly increasing timestep edges"),
            ));
        }
        Ok(())
    }
}

/// Where one evaluation reads and writes, and the commands that make missing inputs.
#[derive(Debug, Clone)]
pub struct EvalPaths {
    pub benchmark: String,
    /// `base` or a fine-tuning run name.
    pub run: String,
    /// The base model, `results/base/<benchmark>/` (`model.safetensors`, `config.json`).
    pub base: Artifact,
    /// The fine-tuning run, `results/finetune/<benchmark>/<run>/` (None for the base).
    pub tuned: Option<Artifact>,
    /// The base's evaluation, `results/eval/<benchmark>/base/` (runs compare with its samples
    /// and scores).
    pub base_eval: Option<Artifact>,
    /// The prepared dataset, `data/prepared/<dataset>/` (its `test.safetensors`).
    pub data: Artifact,
    /// The judge registry.
    pub judges: PathBuf,
    /// Converted Inception weights (FID, KID, Inception diversity); None skips them.
    pub inception: Option<Artifact>,
    /// The same network exported to ONNX (`fid-onnx`): its forward runs in ONNX Runtime.
    pub inception_onnx: Option<Artifact>,
    /// Reference statistics of the test split; None skips FID and KID.
    pub fid_ref: Option<Artifact>,
    /// `results/eval/<benchmark>/<run>/`.
    pub out_dir: PathBuf,
}

impl EvalPaths {
    /// The inputs of evaluating `run` (`base`, or a fine-tuning run) of `benchmark` on
    /// `dataset` (default: the benchmark's own) where `layout` puts them, without FID/KID.
    pub fn new(
        layout: &Layout,
        benchmark: &str,
        dataset: Option<&str>,
        run: &str,
        judges: PathBuf,
    ) -> EvalPaths {
        let model = Model::Bench(benchmark);
        let is_base = run == "base";
        EvalPaths {
            benchmark: benchmark.to_string(),
            run: run.to_string(),
            base: layout.base(model),
            tuned: (!is_base).then(|| layout.finetune(model, run)),
            base_eval: (!is_base).then(|| layout.eval(model, "base")),
            data: layout.prepared(dataset.unwrap_or(benchmark)),
            judges,
            inception: None,
            inception_onnx: None,
            fid_ref: None,
            out_dir: layout.eval(model, run).path,
        }
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    acpo_core::digest::sha256_file(path)
        .map(|(d, _)| d)
        .map_err(|e| ReportError::io(path, e))
}

/// The model an evaluation scores: a fine-tuning run's `model.safetensors` (its `metrics.json`
/// must exist too; [`run_info`] reads it), or `base_model` for the base (`tuned` `None`).
/// `what` names the run in the errors, `trained` whether a missing one is reported as never
/// trained.
pub(crate) fn model_under_test(
    base_model: &Path,
    tuned: Option<&Artifact>,
    what: &str,
    trained: bool,
) -> Result<(PathBuf, RunInfo)> {
    let Some(run) = tuned else {
        let info = RunInfo {
            method: "base".into(),
            ..Default::default()
        };
        return Ok((base_model.to_path_buf(), info));
    };
    let m = run.file("model.safetensors");
    require(&m, what, trained)?;
    require(
        &run.file("metrics.json"),
        &format!("{what} (metrics)"),
        trained,
    )?;
    Ok((m.path, run_info(&run.path)?))
}

/// `a` exists, or an error naming it and the stage that makes it.
pub(crate) fn require(a: &Artifact, what: &str, trained: bool) -> Result<()> {
    require_path(&a.path, what, &a.fix(), trained)
}

/// `path` exists, or an error naming it and `fix`, the command that makes it.
pub(crate) fn require_path(path: &Path, what: &str, fix: &str, trained: bool) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let (what, path, fix) = (what.into(), path.to_path_buf(), fix.into());
    Err(if trained {
        ReportError::NotTrained { what, path, fix }
    } else {
        ReportError::MissingInput { what, path, fix }
    })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ReportError::bad(path, format!("line {}", e.line()), e.to_string()))
}

/// The run's method and lambdas from the fine-tuning run's `metrics.json` (read loosely, so
/// that this crate does not depend on the fine-tuning crate's types).
pub(crate) fn run_info(run_dir: &Path) -> Result<RunInfo> {
    let p = run_dir.join("metrics.json");
    let v = read_json(&p)?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
    Ok(RunInfo {
        method: v
            .get("method")
            .and_then(|m| m.as_str())
            .ok_or_else(|| ReportError::bad(&p, "method", "missing (expected a string)"))?
            .to_string(),
        lambda_p: f("lambda_p"),
        lambda_a: f("lambda_a"),
        lambda_d: f("lambda_d"),
        steps: v.get("steps").and_then(|x| x.as_u64()).map(|x| x as usize),
        model: String::new(),
        model_sha256: String::new(),
    })
}

/// Samples of one model: u8 HWC pixels and the float `x0`.
struct Samples {
    n: usize,
    h: usize,
    w: usize,
    pixels: Vec<u8>,
    x0: Tensor,
    seeds: Vec<u64>,
}

impl Samples {
    /// The pixels as a U8 `[N, 3, H, W]` tensor (what Inception and the diversity take).
    fn u8_nchw(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.pixels.clone(),
            (self.n, self.h, self.w, 3),
            &Device::Cpu,
        )?
        .permute((0, 3, 1, 2))?
        .contiguous()?)
    }

    fn images(&self) -> Result<Vec<RgbImage>> {
        rgb_images(&self.pixels, self.n, self.h, self.w)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "images".to_string(),
            Tensor::from_vec(self.pixels.clone(), (self.n, self.h, self.w, 3), &dev)?,
        );
        map.insert("x0".to_string(), self.x0.clone());
        map.insert(
            "seeds".to_string(),
            Tensor::from_vec(
                self.seeds.iter().map(|&s| s as i64).collect::<Vec<_>>(),
                self.n,
                &dev,
            )?,
        );
        crate::fsio::with_tmp_file(path, |tmp| Ok(candle_core::safetensors::save(&map, tmp)?))
    }

    /// Reads samples written by [`Samples::save`].
    fn load(path: &Path) -> Result<Samples> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)?;
        let get = |k: &str| {
            map.get(k)
                .cloned()
                .ok_or_else(|| ReportError::bad(path, k, "tensor missing"))
        };
        let images = get("images")?;
        let (n, h, w, c) = images.dims4()?;
        if c != 3 || images.dtype() != DType::U8 {
            return Err(ReportError::bad(path, "images", "expected U8 [N, H, W, 3]"));
        }
        let seeds: Vec<u64> = get("seeds")?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|s| s as u64)
            .collect();
        Ok(Samples {
            n,
            h,
            w,
            pixels: images.flatten_all()?.to_vec1::<u8>()?,
            x0: get("x0")?,
            seeds,
        })
    }
}

/// Loads a samples file of an evaluation (for grids in the report).
pub fn load_sample_pixels(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let s = Samples::load(path)?;
    Ok((s.n, s.h, s.w, s.pixels))
}

/// Images `from .. to` of the evaluation: image `i` from seed `cfg.seed + i`.
fn draw_samples(
    model: &UNet,
    schedule: &NoiseSchedule,
    cfg: &EvalConfig,
    (from, to): (usize, usize),
    device: &Device,
) -> Result<Samples> {
    let seeds: Vec<u64> = (from as u64..to as u64).map(|i| cfg.seed + i).collect();
    let opts = SamplerOpts {
        kind: cfg.sampler,
        steps: cfg.steps,
        eta: cfg.eta,
        guidance: 1.0,
        spacing: cfg.spacing,
    };
    let per_batch = match cfg.sampler {
        SamplerKind::Ddpm => schedule.timesteps(),
        SamplerKind::Ddim => cfg.steps,
    };
    let pb = acpo_core::progress::bar(
        (seeds.len().div_ceil(cfg.batch_size) * per_batch) as u64,
        "sample",
    );
    let mut xs = Vec::new();
    let mut pixels = Vec::new();
    for chunk in seeds.chunks(cfg.batch_size) {
        let x = sample(model, schedule, chunk, None, &opts, device, || pb.inc(1))?;
        pixels.extend(acpo_diffusion::data::to_u8_hwc(&x)?);
        xs.push(x.to_device(&Device::Cpu)?);
    }
    pb.finish_and_clear();
    let x0 = Tensor::cat(&xs, 0)?;
    let (n, _c, h, w) = x0.dims4()?;
    Ok(Samples {
        n,
        h,
        w,
        pixels,
        x0,
        seeds,
    })
}

/// Per-image values by name, in column order.
/// The first `n` images of `h x w` RGB pixels stored image after image (HWC, u8).
fn rgb_images(pixels: &[u8], n: usize, h: usize, w: usize) -> Result<Vec<RgbImage>> {
    let len = h * w * 3;
    (0..n)
        .map(|i| {
            Ok(RgbImage::new(
                w,
                h,
                pixels[i * len..(i + 1) * len].to_vec(),
            )?)
        })
        .collect()
}

type NamedColumns = Vec<(String, Vec<f64>)>;

/// The guidance (as `guidance` = Q, higher = better) and every judge of `cfg` on `images`:
/// the scores with their t-intervals and the per-image columns.
pub(crate) fn score_images(
    registry: &Registry,
    guidance: &str,
    judges: &[String],
    images: &[RgbImage],
) -> Result<(BTreeMap<String, Score>, NamedColumns)> {
    let mut cols: Vec<(String, Vec<f64>)> = Vec::new();
    let mut scores = BTreeMap::new();
    let g = registry.load_judge(guidance)?;
    let raw = acpo_iqa::judge_images(&g, images)?;
    // Q is oriented higher = better (SPEC section 3).
    let q: Vec<f64> = raw
        .iter()
        .map(|s| if g.spec.higher_is_better { *s } else { -s })
        .collect();
    scores.insert(
        "guidance".to_string(),
        Score {
            role: "guidance".into(),
            higher_is_better: true,
            value: stats::mean_t(&q),
        },
    );
    cols.push(("guidance".into(), q));
    for name in judges {
        let j = registry.load_judge(name)?;
        let v = acpo_iqa::judge_images(&j, images)?;
        scores.insert(
            name.clone(),
            Score {
                role: "judge".into(),
                higher_is_better: j.spec.higher_is_better,
                value: stats::mean_t(&v),
            },
        );
        cols.push((name.clone(), v));
    }
    Ok((scores, cols))
}

/// Per-draw values on the held-out draws.
#[derive(Debug, Default)]
struct Heldout {
    t: Vec<usize>,
    /// The model's noise-prediction MSE.
    mse: Vec<f64>,
    /// The reference's (base's) MSE on the same draw (empty without a reference).
    ref_mse: Vec<f64>,
    /// Anchor distance to the reference (empty without a reference).
    dist: Vec<f64>,
}

impl Heldout {
    /// The paired MSE change against the reference, per draw (empty without a reference).
    fn mse_delta(&self) -> Vec<f64> {
        self.mse
            .iter()
            .zip(&self.ref_mse)
            .map(|(m, r)| m - r)
            .collect()
    }
}

/// Per-draw held-out MSE and (when `reference` is given) the base's MSE and the anchor
/// distance on the same draws.
fn heldout(
    model: &UNet,
    reference: Option<&UNet>,
    schedule: &NoiseSchedule,
    images: &Tensor,
    cfg: &EvalConfig,
) -> Result<Heldout> {
    let (n, c, h, w) = images.dims4()?;
    let device = images.device().clone();
    let d = c * h * w;
    let batch = cfg.batch_size.max(1);
    let mut out = Heldout::default();
    let pb = acpo_core::progress::bar((n * cfg.heldout_draws) as u64, "held-out");
    for j in 0..cfg.heldout_draws {
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            let mut ts = Vec::with_capacity(b);
            let mut eps = Vec::with_capacity(b * d);
            for i in start..start + b {
                // Same stream as acpo_diffusion::heldout_mse: (seed, [image, draw]).
                let mut r = SeededRng::new(cfg.heldout_seed, &[i as u64, j as u64]);
                ts.push(r.below(schedule.timesteps()));
                eps.extend(r.normal_vec(d));
            }
            let eps = Tensor::from_vec(eps, (b, c, h, w), &device)?;
            let xt = schedule.q_sample(&images.narrow(0, start, b)?, &ts, &eps)?;
            let tt =
                Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, &device)?;
            let pred = model.forward(&xt, &tt, None)?;
            let per = |a: &Tensor, b2: &Tensor| -> Result<Vec<f64>> {
                Ok((a - b2)?
                    .sqr()?
                    .flatten_from(1)?
                    .mean(1)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?)
            };
            out.mse.extend(per(&pred, &eps)?);
            if let Some(r) = reference {
                let pref = r.forward(&xt, &tt, None)?;
                out.dist.extend(per(&pred, &pref)?);
                out.ref_mse.extend(per(&pref, &eps)?);
            }
            out.t.extend(ts);
            pb.inc(b as u64);
            start += b;
        }
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Held-out MSE, its paired difference to the base and the anchor distance per timestep bin
/// `[edges[k], edges[k+1])` (bins without draws are left out).
fn by_t_bins(h: &Heldout, edges: &[usize]) -> Vec<TBin> {
    let delta = h.mse_delta();
    let has_ref = !h.ref_mse.is_empty();
    edges
        .windows(2)
        .filter_map(|w| {
            let idx: Vec<usize> = (0..h.t.len())
                .filter(|&i| h.t[i] >= w[0] && h.t[i] < w[1])
                .collect();
            if idx.is_empty() {
                return None;
            }
            let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
            Some(TBin {
                t_lo: w[0],
                t_hi: w[1],
                heldout_mse: stats::mean_t(&pick(&h.mse)),
                heldout_mse_delta: has_ref.then(|| stats::mean_t(&pick(&delta))),
                anchor_distance: has_ref.then(|| stats::mean_t(&pick(&h.dist))),
            })
        })
        .collect()
}

/// Per-seed scores file: `seed,<name>...` with the guidance as `guidance` (= -score).
pub(crate) fn write_scores_csv(
    path: &Path,
    seeds: &[u64],
    cols: &[(String, Vec<f64>)],
) -> Result<()> {
    let mut s = String::from("seed");
    for (name, _) in cols {
        s.push(',');
        s.push_str(name);
    }
    s.push('\n');
    for (i, seed) in seeds.iter().enumerate() {
        s.push_str(&seed.to_string());
        for (_, v) in cols {
            s.push_str(&format!(",{}", v[i]));
        }
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// Per-seed score columns by name.
pub type ScoreColumns = BTreeMap<String, Vec<f64>>;

/// Reads `scores.csv`: seeds and columns by name. Every field must parse; an error names the
/// line and column.
pub fn read_scores_csv(path: &Path) -> Result<(Vec<u64>, ScoreColumns)> {
    let csv = crate::fsio::read_csv(path)?;
    if csv.header.first().map(String::as_str) != Some("seed") {
        return Err(ReportError::bad(
            path,
            "line 1",
            "header must start with `seed`",
        ));
    }
    let mut seeds = Vec::with_capacity(csv.rows.len());
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); csv.header.len() - 1];
    for (ln, fields) in &csv.rows {
        seeds.push(
            fields[0].parse().map_err(|_| {
                ReportError::bad(path, format!("line {ln}"), "seed is not an integer")
            })?,
        );
        for ((col, name), v) in cols.iter_mut().zip(&csv.header[1..]).zip(&fields[1..]) {
            col.push(v.parse().map_err(|_| {
                ReportError::bad(
                    path,
                    format!("line {ln} column {name}"),
                    format!("`{v}` is not a number"),
                )
            })?);
        }
    }
    let names = csv.header.into_iter().skip(1);
    Ok((seeds, names.zip(cols).collect()))
}

/// A sampler-steps study: the base and some fine-tuning runs of one benchmark sampled again
/// with another number of DDIM steps, on the same seeds ([`evaluate_step_study`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepStudy {
    pub benchmark: String,
    /// DDIM steps.
    pub steps: usize,
    /// Fine-tuning runs (the base is always evaluated, first).
    pub runs: Vec<String>,
    /// Images per model (default: `report.evaluate.samples`); the first of the main
    /// evaluation's seeds.
    #[serde(default)]
    pub samples: Option<usize>,
}

/// Evaluates the base and `study.runs` with `study.steps` DDIM steps and `cfg`'s other
/// settings, each into `<out>/<run>/`, every run against this study's own base (same seeds,
/// same steps). FID and KID are skipped: Inception costs most of an evaluation, and the study
/// asks how scores and drift depend on the sampler. `paths_for(run)` gives a model's inputs
/// as for [`evaluate`].
pub fn evaluate_step_study(
    cfg: &EvalConfig,
    study: &StepStudy,
    out: &Artifact,
    paths_for: &dyn Fn(&str) -> EvalPaths,
) -> Result<Vec<EvalMetrics>> {
    if cfg.sampler != SamplerKind::Ddim {
        return Err(ReportError::config(
            "sampler",
            "a sampler-steps study varies DDIM steps: set report.evaluate.sampler to ddim",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &study.runs {
        if r == "base" || !seen.insert(r) {
            return Err(ReportError::config(
                "runs",
                format!("`{r}` is listed twice or is `base` (the base is always evaluated)"),
            ));
        }
    }
    let cfg = EvalConfig {
        steps: study.steps,
        samples: study.samples.unwrap_or(cfg.samples),
        base_fid_samples: 0,
        ..cfg.clone()
    };
    let mut metrics = Vec::new();
    for run in std::iter::once("base").chain(study.runs.iter().map(String::as_str)) {
        let mut p = paths_for(run);
        p.out_dir = out.path.join(run);
        p.inception = None;
        p.fid_ref = None;
        if run != "base" {
            p.base_eval = Some(out.file("base"));
        }
        metrics.push(evaluate(&cfg, &p)?);
    }
    Ok(metrics)
}

/// Evaluates one model; writes every output into `paths.out_dir` (a temporary sibling
/// directory renamed into place) and returns the metrics. The steps, in order: check every
/// input ([`Inputs::check`]), sample from fixed seeds, score the samples (and, for the base,
/// as many real test images), held-out MSE and anchor distance, the comparison with the
/// base's samples from the same noise, diversity/FID/KID, then the outputs.
pub fn evaluate(cfg: &EvalConfig, paths: &EvalPaths) -> Result<EvalMetrics> {
    cfg.validate()?;
    let device = Device::Cpu;
    let mut seconds = BTreeMap::new();
    let mut notes = Vec::new();
    let is_base = paths.tuned.is_none();
    let Inputs {
        model_path,
        base_model,
        mut info,
        base_eval,
        test_path,
        registry,
        bp,
    } = Inputs::check(cfg, paths)?;
    let schedule = NoiseSchedule::from_config(&bp.schedule)?;
    let model = UNet::load(&bp.model, &model_path, &device)?;
    info.model = model_path.display().to_string();
    info.model_sha256 = sha256_file(&model_path)?;

    let t0 = Instant::now();
    let samples = draw_samples(&model, &schedule, cfg, (0, cfg.samples), &device)?;
    seconds.insert("sampling".into(), t0.elapsed().as_secs_f64());

    let t0 = Instant::now();
    let (scores, mut cols) =
        score_images(&registry, &cfg.guidance, &cfg.judges, &samples.images()?)?;
    let mut test = acpo_diffusion::data::ImageSet::load(&test_path)?;
    let real_test = match is_base {
        true => Some(real_test_scores(cfg, &registry, &test)?),
        false => None,
    };
    seconds.insert("scores".into(), t0.elapsed().as_secs_f64());

    let t0 = Instant::now();
    test.truncate(cfg.heldout_images);
    let reference = match is_base {
        true => None,
        false => Some(UNet::load(&bp.model, &base_model, &device)?),
    };
    let drift = heldout_drift(
        cfg,
        &model,
        reference.as_ref(),
        &schedule,
        &test.all(&device)?,
    )?;
    seconds.insert("heldout".into(), t0.elapsed().as_secs_f64());

    let (improvement, pixel_drift) = match &base_eval {
        None => (BTreeMap::new(), Estimate::exact(0.0, samples.n)),
        Some(dir) => against_base(cfg, paths, dir, &samples, &scores, &mut cols)?,
    };

    let t0 = Instant::now();
    let quality = quality(
        cfg,
        paths,
        &model,
        &schedule,
        &samples,
        &mut notes,
        &mut seconds,
    )?;
    seconds.insert("fid_diversity".into(), t0.elapsed().as_secs_f64());
    if quality.fid_kid.is_some() && samples.n < 2048 {
        notes.push(format!(
            "FID from {} samples is biased upwards (compare models at equal sample counts only)",
            samples.n
        ));
    }

    let metrics = EvalMetrics {
        schema: SCHEMA,
        benchmark: paths.benchmark.clone(),
        run: paths.run.clone(),
        info,
        sampling: SamplingInfo {
            seed: cfg.seed,
            samples: samples.n,
            sampler: format!("{:?}", cfg.sampler).to_lowercase(),
            steps: cfg.steps,
            eta: cfg.eta,
            spacing: cfg.spacing.name().into(),
        },
        scores,
        improvement,
        real_test,
        heldout_mse: drift.heldout_mse,
        heldout_mse_delta: drift.heldout_mse_delta,
        by_t: drift.by_t,
        anchor_distance: drift.anchor_distance,
        pixel_drift,
        diversity: quality.diversity,
        fid_kid: quality.fid_kid,
        base_quality: quality.base_quality,
        notes,
        seconds,
    };
    let config = serde_json::json!({ "evaluate": cfg, "benchmark": paths.benchmark, "run": paths.run,
        "base_params": bp, "model": model_path, "data": paths.data.path,
        "judges": paths.judges, "inception": paths.inception.as_ref().map(|a| &a.path),
        "fid_ref": paths.fid_ref.as_ref().map(|a| &a.path) });
    write_outputs(&paths.out_dir, &samples, &cols, &config, &metrics)?;
    Ok(metrics)
}

/// What [`evaluate`] reads, each checked (with the command that makes it) before any work.
struct Inputs {
    /// The model evaluated: the run's, or the base's for the base.
    model_path: PathBuf,
    base_model: PathBuf,
    info: RunInfo,
    /// The base's evaluation, for a fine-tuned run.
    base_eval: Option<PathBuf>,
    test_path: PathBuf,
    registry: Registry,
    bp: BenchmarkParams,
}

impl Inputs {
    fn check(cfg: &EvalConfig, paths: &EvalPaths) -> Result<Self> {
        let is_base = paths.tuned.is_none();
        let base_model = paths.base.file("model.safetensors");
        require(
            &base_model,
            &format!("the base model of `{}`", paths.benchmark),
            true,
        )?;
        let (model_path, info) = model_under_test(
            &base_model.path,
            paths.tuned.as_ref(),
            &format!("fine-tuning run `{}` of `{}`", paths.run, paths.benchmark),
            true,
        )?;
        let base_eval = match (&paths.base_eval, is_base) {
            (Some(d), false) => {
                for f in ["samples.safetensors", "scores.csv"] {
                    require(
                        &d.file(f),
                        &format!("the base evaluation of `{}`", paths.benchmark),
                        false,
                    )?;
                }
                Some(d.path.clone())
            }
            (None, false) => {
                return Err(ReportError::config(
                    "base_eval",
                    "a fine-tuned run needs the base's evaluation directory",
                ))
            }
            _ => None,
        };
        let test = paths.data.file("test.safetensors");
        require(&test, "the prepared test split", false)?;
        let test_path = test.path;
        let registry = Registry::load(&paths.judges)?;
        let known = registry
            .judges
            .iter()
            .map(|j| j.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        for (name, param) in std::iter::once((&cfg.guidance, "report.evaluate.guidance"))
            .chain(cfg.judges.iter().map(|j| (j, "report.evaluate.judges")))
        {
            if registry.get(name).is_err() {
                return Err(ReportError::UnknownJudge {
                    judge: name.clone(),
                    registry: paths.judges.clone(),
                    known,
                    param: param.into(),
                });
            }
        }
        let bp_path = paths.base.path.join("config.json");
        let bp: BenchmarkParams = serde_json::from_value(read_json(&bp_path)?)
            .map_err(|e| ReportError::bad(&bp_path, "config", e.to_string()))?;
        if bp.model.context_dim.is_some() {
            return Err(ReportError::config(
                "model.context_dim",
                format!(
                    "{}: conditional (text-to-image) models are not evaluated by this stage yet",
                    bp_path.display()
                ),
            ));
        }
        let t_max = cfg.heldout_t_bins.last().copied().unwrap_or(0);
        let timesteps = bp.schedule.timesteps;
        if t_max > timesteps {
            return Err(ReportError::config(
                "report.evaluate.heldout_t_bins",
                format!("last edge {t_max} is past the schedule's T = {timesteps}"),
            ));
        }
        Ok(Self {
            model_path,
            base_model: base_model.path,
            info,
            base_eval,
            test_path,
            registry,
            bp,
        })
    }
}

/// The guidance and judge scores of as many real test images as samples: the reference every
/// score of the base is read against.
fn real_test_scores(
    cfg: &EvalConfig,
    registry: &Registry,
    test: &acpo_diffusion::data::ImageSet,
) -> Result<RealTest> {
    let real = rgb_images(&test.pixels, test.n.min(cfg.samples), test.h, test.w)?;
    Ok(RealTest {
        images: real.len(),
        scores: score_images(registry, &cfg.guidance, &cfg.judges, &real)?.0,
    })
}

/// Held-out MSE (and its paired change), anchor distance and both by timestep bin.
struct Drift {
    heldout_mse: Estimate,
    heldout_mse_delta: Option<Estimate>,
    anchor_distance: Estimate,
    by_t: Vec<TBin>,
}

/// Held-out MSE and anchor distance on the same draws of `test_x`; with no `reference`
/// (the base itself) the anchor distance is exactly 0 and there is no paired change.
fn heldout_drift(
    cfg: &EvalConfig,
    model: &UNet,
    reference: Option<&UNet>,
    schedule: &NoiseSchedule,
    test_x: &Tensor,
) -> Result<Drift> {
    let h = heldout(model, reference, schedule, test_x, cfg)?;
    Ok(Drift {
        heldout_mse: stats::mean_t(&h.mse),
        heldout_mse_delta: reference.map(|_| stats::mean_t(&h.mse_delta())),
        anchor_distance: match reference {
            None => Estimate::exact(0.0, h.mse.len()),
            Some(_) => stats::mean_t(&h.dist),
        },
        by_t: by_t_bins(&h, &cfg.heldout_t_bins),
    })
}

/// Each score's improvement over the base's samples from the same seeds (paired), and the
/// pixel drift to them; adds the per-sample drift to `cols`.
fn against_base(
    cfg: &EvalConfig,
    paths: &EvalPaths,
    dir: &Path,
    samples: &Samples,
    scores: &BTreeMap<String, Score>,
    cols: &mut NamedColumns,
) -> Result<(BTreeMap<String, stats::Improvement>, Estimate)> {
    let bs = Samples::load(&dir.join("samples.safetensors"))?;
    if bs.seeds != samples.seeds || bs.h != samples.h {
        return Err(ReportError::bad(
            dir.join("samples.safetensors"),
            "seeds",
            format!(
                "the base was sampled from other seeds or sizes; re-run `{}`",
                base_eval_fix(paths)
            ),
        ));
    }
    let (bseeds, bcols) = read_scores_csv(&dir.join("scores.csv"))?;
    if bseeds != samples.seeds {
        return Err(ReportError::bad(
            dir.join("scores.csv"),
            "seed",
            format!(
                "other seeds than this run; re-run `{}`",
                base_eval_fix(paths)
            ),
        ));
    }
    let mut improvement = BTreeMap::new();
    for (name, tuned) in cols.iter() {
        let base = bcols.get(name).ok_or_else(|| {
            ReportError::bad(
                dir.join("scores.csv"),
                name,
                format!(
                    "no column for this score; re-run `{}`",
                    base_eval_fix(paths)
                ),
            )
        })?;
        let hib = scores[name].higher_is_better;
        improvement.insert(
            name.clone(),
            stats::improvement(base, tuned, hib, cfg.bootstrap, cfg.bootstrap_seed),
        );
    }
    let d = (&samples.x0 - &bs.x0)?
        .sqr()?
        .flatten_from(1)?
        .mean(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    cols.push(("pixel_drift".into(), d.clone()));
    Ok((improvement, stats::mean_t(&d)))
}

/// Pixel and Inception diversity, FID and KID (and, for the base, FID/KID on more samples).
struct Quality {
    diversity: DiversityMetrics,
    fid_kid: Option<FidKidMetrics>,
    base_quality: Option<FidKidMetrics>,
}

/// Diversity of `samples`, and FID/KID against the reference statistics when the Inception
/// weights and statistics are given (a note says what was skipped otherwise). For the base
/// with `base_fid_samples` above the sample count, the next seeds are drawn too and FID/KID
/// computed on all of them (`seconds.base_quality`).
fn quality(
    cfg: &EvalConfig,
    paths: &EvalPaths,
    model: &UNet,
    schedule: &NoiseSchedule,
    samples: &Samples,
    notes: &mut Vec<String>,
    seconds: &mut BTreeMap<String, f64>,
) -> Result<Quality> {
    let device = Device::Cpu;
    let u8_nchw = samples.u8_nchw()?;
    let pd = acpo_fid::pixel_diversity(&u8_nchw)?;
    let mut q = Quality {
        diversity: DiversityMetrics {
            pixel: from_diversity(&pd),
            inception: None,
        },
        fid_kid: None,
        base_quality: None,
    };
    let Some(w) = &paths.inception else {
        notes.push("Inception weights not given: no FID, KID or Inception-space diversity".into());
        return Ok(q);
    };
    require(w, "the converted Inception weights", false)?;
    let inc = load_inception(&w.path, paths.inception_onnx.as_ref(), &device)?;
    let feats = inception_features(&inc, &u8_nchw, cfg.batch_size)?;
    q.diversity.inception = Some(from_diversity(&acpo_fid::feature_diversity(&feats)?));
    let Some(r) = &paths.fid_ref else {
        notes.push("reference statistics not given: no FID or KID".into());
        return Ok(q);
    };
    require(r, "the FID reference statistics of the test split", false)?;
    let r = &r.path;
    q.fid_kid = Some(fid_and_kid(&feats, r, cfg)?);
    let is_base = paths.tuned.is_none();
    if is_base && cfg.base_fid_samples > samples.n {
        let t1 = Instant::now();
        let more = (samples.n, cfg.base_fid_samples);
        let extra = draw_samples(model, schedule, cfg, more, &device)?;
        let extra = inception_features(&inc, &extra.u8_nchw()?, cfg.batch_size)?;
        let all = Tensor::cat(&[&feats, &extra], 0)?;
        q.base_quality = Some(fid_and_kid(&all, r, cfg)?);
        seconds.insert("base_quality".into(), t1.elapsed().as_secs_f64());
    }
    Ok(q)
}

/// The evaluation's files, written into a temporary sibling of `out` and renamed into place.
fn write_outputs(
    out: &Path,
    samples: &Samples,
    cols: &NamedColumns,
    config: &serde_json::Value,
    metrics: &EvalMetrics,
) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ReportError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        out.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ReportError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ReportError::io(&tmp, e))?;
    samples.save(&tmp.join("samples.safetensors"))?;
    write_scores_csv(&tmp.join("scores.csv"), &samples.seeds, cols)?;
    crate::plots::write_grid_png(
        &samples.pixels,
        samples.n.min(64),
        samples.h,
        samples.w,
        8,
        &tmp.join("grid.png"),
    )?;
    write_json(&tmp.join("config.json"), config)?;
    write_json(&tmp.join("metrics.json"), metrics)?;
    // FID/KID alone, without timings: the same bytes whenever the same model is evaluated
    // again, so the fine-tuning stages' base-quality gate depends on it rather than on
    // metrics.json (whose `seconds` change on every run).
    write_json(
        &tmp.join("quality.json"),
        &serde_json::json!({ "benchmark": metrics.benchmark, "run": metrics.run,
            "fid_kid": metrics.fid_kid, "base_quality": metrics.base_quality }),
    )?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| ReportError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| ReportError::io(out, e))?;
    Ok(())
}

/// The command that makes the base's evaluation a run is compared with.
fn base_eval_fix(paths: &EvalPaths) -> String {
    paths
        .base_eval
        .as_ref()
        .map(Artifact::fix)
        .unwrap_or_default()
}

fn from_diversity(d: &acpo_fid::Diversity) -> Estimate {
    Estimate {
        mean: d.mean,
        lo: Some(d.mean - d.ci95),
        hi: Some(d.mean + d.ci95),
        n: d.n,
        interval: "u-statistic".into(),
        note: Some("mean pairwise distance; 1.96 * 2 sd(h_i) / sqrt(n)".into()),
    }
}

/// Inception pool features of U8 `[N, 3, H, W]` images, `batch` at a time.
fn inception_features(
    inc: &acpo_fid::InceptionV3,
    u8_nchw: &Tensor,
    batch: usize,
) -> Result<Tensor> {
    let n = u8_nchw.dim(0)?;
    let mut feats = Vec::new();
    let pb = acpo_core::progress::bar(n as u64, "inception");
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        feats.push(
            inc.features(&u8_nchw.narrow(0, start, b)?)?
                .to_device(&Device::Cpu)?,
        );
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    Ok(Tensor::cat(&feats, 0)?)
}

fn fid_and_kid(feats: &Tensor, ref_path: &Path, cfg: &EvalConfig) -> Result<FidKidMetrics> {
    let reference = acpo_fid::RefStats::load(ref_path)?;
    let kc = acpo_fid::KidConfig {
        subsets: cfg.kid_subsets,
        subset_size: cfg.kid_subset_size,
        seed: cfg.bootstrap_seed,
    };
    let fk = acpo_fid::fid_kid(feats, &reference, &kc)?;
    let n = feats.dim(0)?;
    let fid = if cfg.fid_bootstrap >= 20 {
        let mut err = None;
        let est = stats::bootstrap(n, cfg.fid_bootstrap, cfg.bootstrap_seed, fk.fid, |ix| {
            let run = || -> Result<f64> {
                let ids = Tensor::from_vec(
                    ix.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    ix.len(),
                    &Device::Cpu,
                )?;
                let s = acpo_fid::GaussianStats::from_features(&feats.index_select(&ids, 0)?)?;
                Ok(acpo_fid::stats::frechet_distance(
                    &s,
                    &reference.stats,
                    &reference.sqrt_sigma,
                )?)
            };
            run().unwrap_or_else(|e| {
                err = Some(e);
                f64::NAN
            })
        });
        if let Some(e) = err {
            return Err(e);
        }
        est
    } else {
        Estimate {
            mean: fk.fid,
            lo: None,
            hi: None,
            n,
            interval: "bootstrap".into(),
            note: Some(format!(
                "no interval: report.evaluate.fid_bootstrap = {} (< 20)",
                cfg.fid_bootstrap
            )),
        }
    };
    let h = 1.96 * fk.kid_std;
    Ok(FidKidMetrics {
        fid,
        kid: Estimate {
            mean: fk.kid_mean,
            lo: Some(fk.kid_mean - h),
            hi: Some(fk.kid_mean + h),
            n,
            interval: "subset-sd".into(),
            note: Some(format!(
                "{} subsets of {}",
                fk.kid_subsets, fk.kid_subset_size
            )),
        },
        reference: ref_path.display().to_string(),
        n_ref: fk.n_ref,
    })
}

/// The FID Inception of `weights`, its forward in ONNX Runtime when `onnx` is given.
pub(crate) fn load_inception(
    weights: &Path,
    onnx: Option<&Artifact>,
    device: &Device,
) -> Result<acpo_fid::InceptionV3> {
    if let Some(o) = onnx {
        require(o, "the ONNX export of the Inception", false)?;
    }
    Ok(acpo_fid::InceptionV3::open(
        weights,
        onnx.map(|o| o.path.as_path()),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_values_are_binned_by_t_and_paired_with_the_base() {
        let h = Heldout {
            t: vec![10, 50, 150, 999],
            mse: vec![0.5, 0.3, 0.2, 0.1],
            ref_mse: vec![0.4, 0.2, 0.2, 0.1],
            dist: vec![0.01, 0.03, 0.02, 0.0],
        };
        let bins = by_t_bins(&h, &[0, 100, 300, 600, 1000]);
        // [300, 600) has no draw and is left out.
        let spans: Vec<_> = bins.iter().map(|b| (b.t_lo, b.t_hi)).collect();
        assert_eq!(spans, [(0, 100), (100, 300), (600, 1000)]);
        let low = &bins[0];
        assert!((low.heldout_mse.mean - 0.4).abs() < 1e-12);
        assert!((low.heldout_mse_delta.as_ref().unwrap().mean - 0.1).abs() < 1e-12);
        assert!((low.anchor_distance.as_ref().unwrap().mean - 0.02).abs() < 1e-12);
        assert_eq!(low.heldout_mse.n, 2);
        // The base has no reference: no delta, no anchor distance.
        let base = Heldout {
            ref_mse: vec![],
            dist: vec![],
            ..h
        };
        assert!(by_t_bins(&base, &[0, 1000])[0].heldout_mse_delta.is_none());
    }

    #[test]
    fn t_bins_must_increase() {
        let cfg = EvalConfig {
            heldout_t_bins: vec![0, 300, 300],
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("report.evaluate.heldout_t_bins"), "{e}");
    }
}
