//! `acpo stage finetune`: ACPO fine-tuning and its baselines from a `train-base` model
//! (crate `acpo-finetune`).

use std::path::{Path, PathBuf};

use acpo_core::layout::{Layout, Model};
use acpo_finetune::run::{run_finetune, BaseEval, FinetuneConfig, FinetunePaths, RunOptions};
use acpo_finetune::sd::{run_finetune_sd, SdPaths};
use acpo_finetune::text::TextInputs;
use acpo_finetune::Method;
use acpo_text::PromptTable;
use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::params::stage_param;

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Benchmark: params `finetune.defaults` deep-merged with `finetune.<benchmark>`, base model
    /// in `results/base/<benchmark>/`, data in `data/prepared/<benchmark>/`.
    #[arg(long)]
    benchmark: String,
    /// Override `objective.method` (perceptual-only, data-anchor, acpo, acpo+data).
    #[arg(long)]
    method: Option<String>,
    /// Override `objective.lambda_a` (the anchor-weight sweep).
    #[arg(long)]
    lambda_a: Option<f64>,
    /// Override `seed`, the training draws (the replicates).
    #[arg(long)]
    seed: Option<u64>,
    /// Deep-merge `finetune.variants.<VARIANT>` over the benchmark's params (a variant of the
    /// objective or optimiser, e.g. another timestep weighting).
    #[arg(long)]
    variant: Option<String>,
    /// Output directory (`results/finetune/<benchmark>/<run>`).
    #[arg(long)]
    out: PathBuf,
    /// Base model directory (default `results/base/<benchmark>`).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Prepared data directory (default `data/prepared/<benchmark>`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Judge registry.
    #[arg(long, default_value = "judges.yaml")]
    judges: PathBuf,
    /// CNNIQA weights (default `$ACPO_MIRROR/iqa/CNNIQA-LIVE.safetensors`).
    #[arg(long)]
    guidance: Option<PathBuf>,
    /// Ignore an existing checkpoint in `--out`.
    #[arg(long)]
    fresh: bool,
    /// Also write this invocation's resume point and speed here (JSON). Kept out of `--out`,
    /// which the evaluation depends on.
    #[arg(long)]
    timing: Option<PathBuf>,
    /// A run on prompts: the `embed-prompts` folder (its `train` and `probe` sets), with
    /// `--captions`, for a prompt-conditioned base.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The base's training captions (`embed-captions`, e.g. `data/prepared/cifar10-captions`).
    #[arg(long)]
    captions: Option<PathBuf>,
    /// A linked Stable Diffusion model (`link-sd`) in `--base-dir`, with `--prompts` encoded
    /// by its CLIP (`embed-prompts-sd`).
    #[arg(long)]
    sd: bool,
}

/// The prompt sets and captions of a run on prompts.
fn text_inputs(prompts: &Path, captions: &Path) -> anyhow::Result<TextInputs> {
    let dev = candle_core::Device::Cpu;
    let table = |name: &str| PromptTable::load(&prompts.join(name), &dev);
    let c = acpo_text::CaptionEmbeddings::load(captions, &dev)?;
    Ok(TextInputs {
        train: table("train")?,
        probe: table("probe")?,
        captions: acpo_diffusion::ClassContexts::new(c.tokens.clone(), &c.labels())?,
    })
}

pub fn run(a: FinetuneArgs) -> anyhow::Result<()> {
    let defaults: Value = stage_param("finetune.defaults")?;
    let bench: Value = stage_param(&format!("finetune.{}", a.benchmark))?;
    let mut layers = vec![defaults, bench];
    let mut what = format!("params finetune.defaults + finetune.{}", a.benchmark);
    if let Some(v) = &a.variant {
        layers.push(stage_param(&format!("finetune.variants.{v}"))?);
        what.push_str(&format!(" + finetune.variants.{v}"));
    }
    let mut cfg = FinetuneConfig::from_layers(&layers, &what)?;
    if let Some(m) = &a.method {
        cfg.objective.method = m.parse::<Method>()?;
    }
    if let Some(la) = a.lambda_a {
        cfg.objective.lambda_a = la;
    }
    if let Some(seed) = a.seed {
        cfg.seed = seed;
    }
    let opts = RunOptions {
        fresh: a.fresh,
        stop_after: None,
    };
    if a.sd {
        let paths = SdPaths {
            base_dir: a
                .base_dir
                .context("--sd needs --base-dir (the link-sd folder)")?,
            prompts_dir: a
                .prompts
                .context("--sd needs --prompts (the embed-prompts-sd folder)")?,
            out_dir: a.out.clone(),
            guidance: a
                .guidance
                .unwrap_or_else(|| super::mirror().join("iqa/CNNIQA-LIVE.safetensors")),
            judges: a.judges,
        };
        let outcome = run_finetune_sd(&cfg, &paths, &opts)
            .with_context(|| format!("finetune (SD) {} -> {}", a.benchmark, a.out.display()))?
            .context("the run stopped before its last step")?;
        return report(&a.benchmark, a.timing.as_deref(), &outcome);
    }
    let l = Layout::default();
    let paths = FinetunePaths {
        base_dir: a
            .base_dir
            .unwrap_or_else(|| l.base(Model::Bench(&a.benchmark)).path),
        data_dir: a.data_dir.unwrap_or_else(|| l.prepared(&a.benchmark).path),
        out_dir: a.out.clone(),
        guidance: a
            .guidance
            .unwrap_or_else(|| super::mirror().join("iqa/CNNIQA-LIVE.safetensors")),
        judges: a.judges,
        base_eval: Some(BaseEval::new(&l, &a.benchmark)),
        text: match (&a.prompts, &a.captions) {
            (None, None) => None,
            (Some(p), Some(c)) => Some(text_inputs(p, c)?),
            _ => anyhow::bail!(acpo_finetune::FinetuneError::Config {
                field: "--prompts/--captions".into(),
                msg: "a run on prompts needs both (the prompt sets and the base's captions)".into(),
            }),
        },
    };
    let outcome = run_finetune(&cfg, &paths, &opts)
        .with_context(|| format!("finetune {} -> {}", a.benchmark, a.out.display()))?
        .context("the run stopped before its last step")?;
    report(&a.benchmark, a.timing.as_deref(), &outcome)
}

/// Write the timing file and print the run's one-line summary.
fn report(
    benchmark: &str,
    timing: Option<&Path>,
    outcome: &acpo_finetune::run::FinetuneOutcome,
) -> anyhow::Result<()> {
    if let Some(path) = timing {
        super::write_timing(path, &outcome.invocation)?;
    }
    let judges: Vec<String> = outcome
        .last
        .judges
        .iter()
        .map(|(n, s)| {
            format!(
                "{n} {:.3}->{:.3}",
                outcome
                    .base
                    .judges
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, b)| b.mean)
                    .unwrap_or(f64::NAN),
                s.mean
            )
        })
        .collect();
    eprintln!(
        "finetune {} ({}, lambda_a {}): {} steps at {:.2} steps/s; anchor distance {:.3e}, held-out MSE {:.4} -> {:.4}, guidance(samples) {:.3} -> {:.3}; {}{}",
        benchmark,
        outcome.method,
        outcome.lambda_a,
        outcome.steps,
        outcome.invocation.steps_per_s,
        outcome.last.anchor_distance.mean,
        outcome.base.heldout_mse.mean,
        outcome.last.heldout_mse.mean,
        outcome.base.guidance_samples.mean,
        outcome.last.guidance_samples.mean,
        judges.join(", "),
        outcome
            .drift_stop
            .as_ref()
            .map(|d| format!("; drift stop at step {} ({:.3e} > {:.3e})", d.step, d.anchor_distance, d.threshold))
            .unwrap_or_default()
    );
    Ok(())
}
