//! The `evaluate-text` stage: one prompt-conditioned model (the base or a run fine-tuned on
//! prompts) on every held-out prompt set, per set and per category (issue 20, SPEC section 5).
//!
//! Same prompts, same noise: in every set, image `j` shows prompt row `j / k` (`k` =
//! `images_per_prompt`) and is sampled from seed `seed + j` with classifier-free guidance at
//! `guidance_scale`, in batches of `batch_size`; a batch's contexts are padded to its longest
//! prompt (as `PromptTable::contexts` pads them), so the base and every run see identical
//! inputs and the tuned model's image `j` is compared with the base's image `j`.
//!
//! Per set: guidance and judge scores (t-intervals over images); for a run, improvement over
//! the base (relative with a paired bootstrap, absolute, win rate), pixel drift (per-image MSE
//! of the two images in [0, 1] units); diversity per prompt (mean pairwise Euclidean distance
//! of a prompt's `k` images in [0, 1] pixel space, averaged over prompts); the same scores and
//! improvements per category of the set. Prompt alignment is not measured: no image-text model
//! is available offline (MiniLM embeds text only), and no caption-free proxy was found that
//! measures alignment rather than something else; the metrics say so (`alignment`).
//!
//! A Stable Diffusion model (a base folder with `link-sd`'s `sd.json`) is sampled the same
//! way in latent space (acpo-sd's [`SdSampler`]: image `j` from the latent noise of
//! seed `seed + j`, SD's empty-prompt context as the unconditional one) and decoded by its
//! VAE; everything after the images is the same.
//!
//! Outputs in `out_dir` (`results/eval-text/<data>/<run>/`), written to a temporary sibling and
//! renamed: `metrics.json` ([`TextEvalMetrics`]), `config.json`, and per set
//! `<set>/{scores.csv, samples.safetensors, grid.png, prompts.json}`.

use crate::error::{ReportError, Result};
use crate::evaluate::{read_scores_csv, require, require_path, score_images, write_scores_csv};
use crate::fsio::write_json;
use crate::schema::{RunInfo, Score};
use crate::stats::{self, Estimate, Improvement};
use acpo_core::layout::{Artifact, Layout, Model};
use acpo_diffusion::config::{SamplerKind, Spacing};
use acpo_diffusion::sampler::{sample, SamplerOpts};
use acpo_diffusion::{BenchmarkParams, NoiseSchedule, UNet};
use acpo_iqa::Registry;
use acpo_sd::sampling::{SdSampler, SdSampling};
use acpo_sd::SdLink;
use acpo_text::{PromptRecord, PromptTable};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the text metrics format.
pub const TEXT_SCHEMA: u32 = 1;

/// Params `report.text_evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextEvalConfig {
    /// Held-out prompt sets (folders of `embed-prompts`; default the four of issue 20).
    pub sets: Vec<String>,
    /// Images per prompt (default 2; at least 2 for diversity per prompt).
    pub images_per_prompt: usize,
    /// Image `j` of a set uses seed `seed + j` (default 3000000).
    pub seed: u64,
    /// DDIM steps (default 25) and spacing (default leading).
    pub steps: usize,
    pub spacing: Spacing,
    /// Classifier-free guidance scale (default 3, as `sample-text` and fine-tuning).
    pub guidance_scale: f64,
    /// Images per sampler batch (default 32).
    pub batch_size: usize,
    /// Registry name of the guidance model, reported as `guidance` = Q (default `cnniqa`).
    pub guidance: String,
    /// Judges from the registry (default brisque, niqe, cnniqa-onnx).
    pub judges: Vec<String>,
    /// Bootstrap resamples of the relative improvement (default 2000) and their seed.
    pub bootstrap: usize,
    pub bootstrap_seed: u64,
}

impl Default for TextEvalConfig {
    fn default() -> Self {
        TextEvalConfig {
            sets: [
                "diffusiondb-test",
                "drawbench",
                "partiprompts",
                "visual-genome",
            ]
            .map(String::from)
            .to_vec(),
            images_per_prompt: 2,
            seed: 3_000_000,
            steps: 25,
            spacing: Spacing::Leading,
            guidance_scale: 3.0,
            batch_size: 32,
            guidance: "cnniqa".into(),
            judges: vec!["brisque".into(), "niqe".into(), "cnniqa-onnx".into()],
            bootstrap: 2000,
            bootstrap_seed: 0,
        }
    }
}

impl TextEvalConfig {
    pub fn validate(&self) -> Result<()> {
        let key = |f: &str| format!("report.text_evaluate.{f}");
        if self.sets.is_empty() {
            return Err(ReportError::config(key("sets"), "no prompt sets"));
        }
        if self.images_per_prompt < 2 {
            return Err(ReportError::config(
                key("images_per_prompt"),
                "must be >= 2 (diversity per prompt)",
            ));
        }
        if self.steps == 0 || self.batch_size == 0 {
            return Err(ReportError::config(key("steps/batch_size"), "must be > 0"));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 1.0) {
            return Err(ReportError::config(
                key("guidance_scale"),
                format!("{} is not a guidance scale >= 1", self.guidance_scale),
            ));
        }
        Ok(())
    }
}

/// Where one text evaluation reads and writes, and the commands that make missing inputs.
#[derive(Debug, Clone)]
pub struct TextEvalPaths {
    /// The text dataset (`cifar10`): the base is `<data>-text`.
    pub data: String,
    /// `base` or a fine-tuning run name.
    pub run: String,
    /// The base model, `results/base/<data>-text/` (or the linked Stable Diffusion model).
    pub base: Artifact,
    /// The fine-tuning run, `results/finetune/<data>-text/<run>/` (None for the base).
    pub tuned: Option<Artifact>,
    /// The base's evaluation, `results/eval-text/<data>/base/` (runs: its scores and samples).
    pub base_eval: Option<Artifact>,
    /// The prompt sets, `data/prepared/prompt-embeddings/` (a Stable Diffusion model's own).
    pub prompts: Artifact,
    pub judges: PathBuf,
    /// `results/eval-text/<data>/<run>/`.
    pub out_dir: PathBuf,
}

impl TextEvalPaths {
    /// The inputs of evaluating `run` (`base` or a fine-tuning run) of `model` (a text
    /// dataset's prompt-conditioned model or a linked Stable Diffusion model) where `layout`
    /// puts them.
    pub fn new(layout: &Layout, model: Model, run: &str, judges: PathBuf) -> TextEvalPaths {
        let is_base = run == "base";
        let (data, prompts) = match model {
            Model::Sd(m) => (m, layout.sd_prompt_embeddings(m)),
            Model::Text(d) | Model::Bench(d) => (d, layout.prompt_embeddings()),
        };
        TextEvalPaths {
            data: data.to_string(),
            run: run.to_string(),
            base: layout.base(model),
            tuned: (!is_base).then(|| layout.finetune(model, run)),
            base_eval: (!is_base).then(|| layout.eval(model, "base")),
            prompts,
            judges,
            out_dir: layout.eval(model, run).path,
        }
    }
}

/// Scores and improvements of one category of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    pub prompts: usize,
    pub images: usize,
    /// Mean score per name (t-interval over images).
    pub scores: BTreeMap<String, Estimate>,
    /// Against the base (runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improvement: Option<BTreeMap<String, Improvement>>,
}

/// One held-out prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSetMetrics {
    /// `<set>/<split>` of prepare-prompts' table.
    pub source: String,
    pub prompts: usize,
    pub images: usize,
    /// Prompts cut to the model's context limit.
    pub truncated: usize,
    pub scores: BTreeMap<String, Score>,
    /// Against the base on the same prompts and seeds (runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improvement: Option<BTreeMap<String, Improvement>>,
    /// Per-image pixel MSE to the base's image (runs only; [0, 1] units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_drift: Option<Estimate>,
    /// Mean pairwise pixel distance of a prompt's images, t-interval over prompts.
    pub diversity_per_prompt: Estimate,
    /// By the set's category (`""` for sets without categories).
    pub categories: BTreeMap<String, CategoryMetrics>,
}

/// `metrics.json` of `evaluate-text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEvalMetrics {
    pub schema: u32,
    pub data: String,
    pub run: String,
    pub info: RunInfo,
    pub images_per_prompt: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    /// Why no prompt-alignment score is given.
    pub alignment: String,
    pub sets: BTreeMap<String, TextSetMetrics>,
}

/// What `alignment` says.
pub const NO_ALIGNMENT: &str = "not measured: no image-text model is available offline \
    (all-MiniLM-L6-v2 embeds text only) and no caption-free proxy measures prompt alignment";

/// A set's samples: u8 HWC pixels of every image.
struct SetSamples {
    n: usize,
    h: usize,
    w: usize,
    pixels: Vec<u8>,
}

impl SetSamples {
    fn save(&self, path: &Path, rows: &[usize], seeds: &[u64]) -> Result<()> {
        let dev = Device::Cpu;
        let n = self.n;
        let map = std::collections::HashMap::from([
            (
                "images".to_string(),
                Tensor::from_vec(self.pixels.clone(), (n, self.h, self.w, 3), &dev)?,
            ),
            (
                "prompt_rows".to_string(),
                Tensor::from_vec(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), n, &dev)?,
            ),
            (
                "seeds".to_string(),
                Tensor::from_vec(seeds.iter().map(|&s| s as i64).collect::<Vec<_>>(), n, &dev)?,
            ),
        ]);
        crate::fsio::with_tmp_file(path, |tmp| {
            candle_core::safetensors::save(&map, tmp).map_err(ReportError::from)
        })
    }

    fn load(path: &Path) -> Result<Self> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)?;
        let images = map
            .get("images")
            .ok_or_else(|| ReportError::bad(path, "images", "tensor missing"))?;
        let (n, h, w, _) = images.dims4()?;
        Ok(SetSamples {
            n,
            h,
            w,
            pixels: images.flatten_all()?.to_vec1::<u8>()?,
        })
    }

    fn image01(&self, i: usize) -> impl Iterator<Item = f64> + '_ {
        let len = self.h * self.w * 3;
        self.pixels[i * len..(i + 1) * len]
            .iter()
            .map(|&p| p as f64 / 255.0)
    }
}

/// Mean pairwise Euclidean distance (pixels in [0, 1]) among the images of each prompt.
fn diversity_per_prompt(s: &SetSamples, k: usize) -> Vec<f64> {
    (0..s.n / k)
        .map(|p| {
            let (mut sum, mut pairs) = (0.0, 0usize);
            for a in 0..k {
                for b in a + 1..k {
                    let d: f64 = s
                        .image01(p * k + a)
                        .zip(s.image01(p * k + b))
                        .map(|(x, y)| (x - y).powi(2))
                        .sum();
                    sum += d.sqrt();
                    pairs += 1;
                }
            }
            sum / pairs as f64
        })
        .collect()
}

/// Per-image pixel MSE between two sample sets (same size, [0, 1] units).
fn pixel_drift(a: &SetSamples, b: &SetSamples) -> Vec<f64> {
    let len = (a.h * a.w * 3) as f64;
    (0..a.n)
        .map(|i| {
            a.image01(i)
                .zip(b.image01(i))
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                / len
        })
        .collect()
}

/// The model an evaluation samples: a small prompt-conditioned UNet in pixel space, or a
/// linked Stable Diffusion model.
#[allow(clippy::large_enum_variant)] // one per evaluation
enum TextModel {
    Pixel {
        model: UNet,
        schedule: NoiseSchedule,
    },
    Sd(Box<SdSampler>),
}

fn sample_set(
    text_model: &TextModel,
    table: &PromptTable,
    cfg: &TextEvalConfig,
    name: &str,
    device: &Device,
) -> Result<(SetSamples, Vec<usize>, Vec<u64>)> {
    let k = cfg.images_per_prompt;
    let n = table.len() * k;
    let rows: Vec<usize> = (0..n).map(|j| j / k).collect();
    let seeds: Vec<u64> = (0..n as u64).map(|j| cfg.seed + j).collect();
    let opts = SamplerOpts {
        kind: SamplerKind::Ddim,
        steps: cfg.steps,
        eta: 0.0,
        guidance: cfg.guidance_scale,
        spacing: cfg.spacing,
    };
    let pb = acpo_core::progress::bar(
        (n.div_ceil(cfg.batch_size) * cfg.steps) as u64,
        &format!("sample {name}"),
    );
    let mut pixels = Vec::new();
    let (mut h, mut w) = (0, 0);
    for (r, s) in rows
        .chunks(cfg.batch_size)
        .zip(seeds.chunks(cfg.batch_size))
    {
        let ctx = table
            .contexts(r, device)
            .map_err(|e| ReportError::config("prompts", e.to_string()))?;
        let x = match text_model {
            TextModel::Pixel { model, schedule } => {
                sample(model, schedule, s, Some(&ctx), &opts, device, || pb.inc(1))?
            }
            TextModel::Sd(sd) => {
                let sampling = SdSampling {
                    steps: cfg.steps,
                    spacing: cfg.spacing,
                    scale: cfg.guidance_scale,
                    batch: cfg.batch_size,
                };
                let x = sd
                    .sample(s, &ctx, sampling)
                    .map_err(|e| ReportError::config("stable diffusion", e.to_string()))?;
                pb.inc(cfg.steps as u64);
                x
            }
        };
        (h, w) = (x.dim(2)?, x.dim(3)?);
        pixels.extend(acpo_diffusion::data::to_u8_hwc(&x)?);
    }
    pb.finish_and_clear();
    Ok((SetSamples { n, h, w, pixels }, rows, seeds))
}

/// Evaluate one model on every set of `cfg.sets`. See the module docs.
pub fn evaluate_text(cfg: &TextEvalConfig, paths: &TextEvalPaths) -> Result<TextEvalMetrics> {
    cfg.validate()?;
    let sd = SdLink::is_linked(&paths.base.path);
    // SD's UNet is sampled on the first CUDA device when there is one; the small models on
    // the CPU
    let device = match sd {
        true => acpo_core::device::default_device(),
        false => Device::Cpu,
    };
    let base_model = paths
        .base
        .file(if sd { "sd.json" } else { "model.safetensors" });
    require(&base_model, "the prompt-conditioned base model", false)?;
    let (model_path, info) = crate::evaluate::model_under_test(
        &base_model.path,
        paths.tuned.as_ref(),
        &format!("fine-tuning run `{}`", paths.run),
        false,
    )?;
    let base_eval = match (&paths.tuned, &paths.base_eval) {
        (None, _) => None,
        (Some(_), Some(d)) => Some(d.clone()),
        (Some(_), None) => {
            return Err(ReportError::config(
                "base_eval",
                "a fine-tuned run needs the base's text evaluation",
            ))
        }
    };
    let registry = Registry::load(&paths.judges)?;
    let (text_model, base_params) = if sd {
        let tuned = paths.tuned.as_ref().map(|_| model_path.as_path());
        let s = SdSampler::load(&paths.base.path, &paths.prompts.path, tuned, &device)
            .map_err(|e| ReportError::config("stable diffusion", e.to_string()))?;
        let link = serde_json::to_value(&s.link).expect("link records serialise");
        (TextModel::Sd(Box::new(s)), link)
    } else {
        let config = paths.base.path.join("config.json");
        let bp: BenchmarkParams = serde_json::from_value(crate::evaluate::read_json(&config)?)
            .map_err(|e| ReportError::bad(&config, "", e.to_string()))?;
        let schedule = NoiseSchedule::from_config(&bp.schedule)?;
        let model = UNet::load(&bp.model, &model_path, &device)?;
        let bp = serde_json::to_value(&bp).expect("base params serialise");
        (TextModel::Pixel { model, schedule }, bp)
    };

    // every prompt set is read before any sampling, so a missing one costs nothing
    let tables = cfg
        .sets
        .iter()
        .map(|name| {
            let set = paths.prompts.file(name);
            require(
                &set.file("prompts.json"),
                &format!("prompt set `{name}`"),
                false,
            )?;
            let dir = set.path;
            PromptTable::load(&dir, &device)
                .map_err(|e| ReportError::config(format!("prompt set `{name}`"), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let staging = acpo_data::output::Staging::new(&paths.out_dir)
        .map_err(|e| ReportError::config("out_dir", e.to_string()))?;
    let mut sets = BTreeMap::new();
    for (name, table) in cfg.sets.iter().zip(&tables) {
        let (samples, rows, seeds) = sample_set(&text_model, table, cfg, name, &device)?;
        let images = rgb(&samples)?;
        let (scores, cols) = score_images(&registry, &cfg.guidance, &cfg.judges, &images)?;
        let base = match &base_eval {
            None => None,
            Some(d) => {
                let scores = d.file(name).file("scores.csv");
                require(&scores, "the base's text evaluation", false)?;
                let scores_path = scores.path;
                let (base_seeds, base_cols) = read_scores_csv(&scores_path)?;
                if base_seeds != seeds {
                    return Err(ReportError::bad(
                        &scores_path,
                        "seed",
                        format!(
                            "the base was evaluated on other seeds ({} images); re-run `{}`",
                            base_seeds.len(),
                            d.fix()
                        ),
                    ));
                }
                let base_samples =
                    SetSamples::load(&d.path.join(name).join("samples.safetensors"))?;
                Some((base_cols, base_samples))
            }
        };
        let m = set_metrics(cfg, &table.records, &scores, &cols, &samples, base.as_ref())?;
        let sub = staging.path(name);
        std::fs::create_dir_all(&sub).map_err(|e| ReportError::io(&sub, e))?;
        write_scores_csv(&sub.join("scores.csv"), &seeds, &cols)?;
        samples.save(&sub.join("samples.safetensors"), &rows, &seeds)?;
        crate::plots::write_grid_png(
            &samples.pixels,
            samples.n.min(32),
            samples.h,
            samples.w,
            2 * cfg.images_per_prompt,
            &sub.join("grid.png"),
        )?;
        write_json(&sub.join("prompts.json"), &table.records)?;
        eprintln!(
            "evaluate-text {} {name}: {} prompts x {}, guidance {:.3}{}",
            paths.run,
            m.prompts,
            cfg.images_per_prompt,
            m.scores["guidance"].value.mean,
            m.improvement
                .as_ref()
                .map(|i| format!(
                    " ({:+.2}% vs base, win rate {:.0}%)",
                    i["guidance"].relative_pct.mean, i["guidance"].win_rate_pct.mean
                ))
                .unwrap_or_default()
        );
        sets.insert(name.to_string(), m);
    }
    let metrics = TextEvalMetrics {
        schema: TEXT_SCHEMA,
        data: paths.data.clone(),
        run: paths.run.clone(),
        info,
        images_per_prompt: cfg.images_per_prompt,
        steps: cfg.steps,
        guidance_scale: cfg.guidance_scale,
        alignment: NO_ALIGNMENT.into(),
        sets,
    };
    write_json(&staging.path("metrics.json"), &metrics)?;
    write_json(
        &staging.path("config.json"),
        &serde_json::json!({ "text_evaluate": cfg, "data": paths.data, "run": paths.run,
            "base_params": base_params, "model": model_path, "prompts": paths.prompts.path }),
    )?;
    staging
        .commit()
        .map_err(|e| ReportError::config("out_dir", e.to_string()))?;
    Ok(metrics)
}

fn rgb(s: &SetSamples) -> Result<Vec<acpo_iqa::RgbImage>> {
    let len = s.h * s.w * 3;
    (0..s.n)
        .map(|i| {
            Ok(acpo_iqa::RgbImage::new(
                s.w,
                s.h,
                s.pixels[i * len..(i + 1) * len].to_vec(),
            )?)
        })
        .collect()
}

type Columns = Vec<(String, Vec<f64>)>;

/// The metrics of one set from its per-image columns (and the base's, for a run).
fn set_metrics(
    cfg: &TextEvalConfig,
    records: &[PromptRecord],
    scores: &BTreeMap<String, Score>,
    cols: &Columns,
    samples: &SetSamples,
    base: Option<&(crate::evaluate::ScoreColumns, SetSamples)>,
) -> Result<TextSetMetrics> {
    if let Some((bc, bs)) = base {
        if bs.n != samples.n || cols.iter().any(|(n, _)| !bc.contains_key(n)) {
            return Err(ReportError::config(
                "base evaluation",
                "the base was evaluated with other judges or image counts; re-run it",
            ));
        }
    }
    let k = cfg.images_per_prompt;
    let direction = |name: &str| scores.get(name).map(|s| s.higher_is_better).unwrap_or(true);
    let improve = |idx: &[usize]| -> Option<BTreeMap<String, Improvement>> {
        let (bc, _) = base?;
        Some(
            cols.iter()
                .filter_map(|(name, v)| {
                    let b = bc.get(name)?;
                    let pick = |x: &[f64]| idx.iter().map(|&i| x[i]).collect::<Vec<_>>();
                    Some((
                        name.clone(),
                        stats::improvement(
                            &pick(b),
                            &pick(v),
                            direction(name),
                            cfg.bootstrap,
                            cfg.bootstrap_seed,
                        ),
                    ))
                })
                .collect(),
        )
    };
    let all: Vec<usize> = (0..samples.n).collect();
    let mut categories = BTreeMap::new();
    let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (p, r) in records.iter().enumerate() {
        by_cat.entry(r.category.as_str()).or_default().push(p);
    }
    for (cat, prompts) in by_cat {
        let idx: Vec<usize> = prompts
            .iter()
            .flat_map(|&p| (p * k..(p + 1) * k).collect::<Vec<_>>())
            .collect();
        let cat_scores = cols
            .iter()
            .map(|(n, v)| {
                let x: Vec<f64> = idx.iter().map(|&i| v[i]).collect();
                (n.clone(), stats::mean_t(&x))
            })
            .collect();
        categories.insert(
            cat.to_string(),
            CategoryMetrics {
                prompts: prompts.len(),
                images: idx.len(),
                scores: cat_scores,
                improvement: improve(&idx),
            },
        );
    }
    let first = records.first();
    Ok(TextSetMetrics {
        source: first
            .map(|r| format!("{}/{}", r.set, r.split))
            .unwrap_or_default(),
        prompts: records.len(),
        images: samples.n,
        truncated: records.iter().filter(|r| r.truncated).count(),
        scores: scores.clone(),
        improvement: improve(&all),
        pixel_drift: base.map(|(_, bs)| stats::mean_t(&pixel_drift(samples, bs))),
        diversity_per_prompt: stats::mean_t(&diversity_per_prompt(samples, k)),
        categories,
    })
}

/// Reads a `metrics.json` written by [`evaluate_text`]; a missing one is an error naming
/// `fix`, the command that writes it.
pub fn read_text_metrics(path: &Path, fix: &str) -> Result<TextEvalMetrics> {
    require_path(path, "the text evaluation", fix, false)?;
    let v = crate::evaluate::read_json(path)?;
    let found = v.get("schema").and_then(|s| s.as_u64());
    if found != Some(TEXT_SCHEMA as u64) {
        return Err(ReportError::Schema {
            path: path.to_path_buf(),
            found: found.map_or("none".into(), |f| f.to_string()),
            expected: TEXT_SCHEMA,
            fix: fix.into(),
        });
    }
    serde_json::from_value(v).map_err(|e| ReportError::bad(path, "", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pixels: Vec<u8>, n: usize) -> SetSamples {
        SetSamples {
            n,
            h: 1,
            w: 1,
            pixels,
        }
    }

    #[test]
    fn diversity_is_per_prompt_and_drift_per_image() {
        // 2 prompts x 2 images, 1x1 RGB: prompt 0's images identical, prompt 1's differ by 255
        // in one channel (distance 1 in [0, 1] units)
        let a = set(vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0], 4);
        assert_eq!(diversity_per_prompt(&a, 2), vec![0.0, 1.0]);
        let b = set(vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4);
        let d = pixel_drift(&a, &b);
        assert_eq!(d, vec![0.0, 0.0, 0.0, 1.0 / 3.0]);
    }

    #[test]
    fn bad_params_name_the_key() {
        let c = TextEvalConfig {
            images_per_prompt: 1,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("images_per_prompt"));
        let c = TextEvalConfig {
            guidance_scale: 0.5,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("guidance_scale"));
    }
}
