//! `acpo stage eval ...`: evaluation of base and fine-tuned models and the base-training
//! study (crate `acpo-report`). The tables and plots built from them are `acpo stage report`,
//! whose glue (src/stages/report.rs) the evaluation stages do not depend on.

use std::path::PathBuf;

use acpo_report::experiment::group_of;
use acpo_report::study::StudyEval;
use acpo_report::{
    evaluate, evaluate_step_study, evaluate_text, run_study, EvalConfig, EvalPaths, StepStudy,
    StudyConfig, StudyPaths, StudySettings, TextEvalConfig, TextEvalPaths,
};
use anyhow::Context;
use clap::Subcommand;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Evaluate one model of a benchmark (params `report.evaluate`) into
    /// `results/eval/<benchmark>/<run>/`: samples from fixed seeds, scores, improvement over
    /// the base, held-out MSE, drift, diversity, FID/KID.
    Evaluate {
        /// Benchmark (= its base model `results/base/<benchmark>/`).
        #[arg(long)]
        benchmark: String,
        /// `base`, or a fine-tuning run in `results/finetune/<benchmark>/<run>/`.
        #[arg(long, default_value = "base")]
        run: String,
        /// Prepared dataset (default: the benchmark's name).
        #[arg(long)]
        dataset: Option<String>,
        /// Judge registry.
        #[arg(long, default_value = "judges.yaml")]
        judges: PathBuf,
        /// Converted Inception weights (FID, KID, Inception diversity); omitted: skipped.
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Reference statistics of the test split (FID, KID); omitted: skipped.
        #[arg(long)]
        fid_ref: Option<PathBuf>,
        /// The Inception's ONNX export (`fid-onnx`): run its forward in ONNX Runtime.
        #[arg(long)]
        inception_onnx: Option<PathBuf>,
        /// Output folder (default `results/eval/<benchmark>/<run>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate one prompt-conditioned model (params `report.text_evaluate`) on the held-out
    /// prompt sets into `results/eval-text/<data>/<run>/`: per set and category, scores,
    /// improvement over the base on the same prompts and noise, pixel drift, diversity per
    /// prompt.
    EvaluateText {
        /// Text dataset (its base is `results/base/<data>-text/`).
        #[arg(long)]
        data: String,
        /// `base`, or a run in `results/finetune/<data>-text/<run>/` (`<method>-s<seed>`).
        #[arg(long, default_value = "base")]
        run: String,
        /// Judge registry.
        #[arg(long, default_value = "judges.yaml")]
        judges: PathBuf,
        /// Prompt sets (`embed-prompts`; with `--sd`, `embed-prompts-sd`'s).
        #[arg(long, default_value = "data/prepared/prompt-embeddings")]
        prompts: PathBuf,
        /// `<data>` is a linked Stable Diffusion model (`results/base/<data>/sd.json`), its
        /// runs in `results/finetune/<data>/`; params `report.sd_evaluate`.
        #[arg(long)]
        sd: bool,
    },
    /// Sampler-steps study `report.step_study.<STUDY>`: its benchmark's base and listed runs
    /// sampled again with the study's DDIM steps (other settings `report.evaluate`, no
    /// FID/KID) into `results/eval-steps/<STUDY>/<run>/`.
    EvaluateSteps {
        /// Key of the study in `report.step_study`.
        #[arg(long)]
        study: String,
        /// Judge registry.
        #[arg(long, default_value = "judges.yaml")]
        judges: PathBuf,
    },
    /// Base-training study configuration `study.configs.<CONFIG>`: its benchmark's
    /// `diffusion.<benchmark>` params with the overrides, trained for `study.budget_tflop` and
    /// scored (FID, KID, held-out MSE) at `study.eval_fractions` into `results/study/<CONFIG>/`.
    BaseStudy {
        /// Key in `study.configs`.
        #[arg(long)]
        config: String,
    },
}

/// The stage that writes `results/finetune/<benchmark>/<run>` (see pipeline.yaml):
/// `variant-<name>`, or a replicate `<group>-s<seed>` (the report's [`group_of`] rule) of the
/// sweep (`sweep-la<x>`) or of the finetune matrix (`<method>`).
fn finetune_stage(benchmark: &str, run: &str) -> String {
    if let Some(v) = run.strip_prefix("variant-") {
        return format!("finetune-variant@{benchmark}-{v}");
    }
    let Some(group) = group_of(run) else {
        return format!("finetune@{benchmark}-{run}");
    };
    let seed = &run[group.len() + 2..];
    match group.strip_prefix("sweep-la") {
        Some(la) => format!("finetune-sweep@{benchmark}-{la}-{seed}"),
        None => format!("finetune@{benchmark}-{group}-{seed}"),
    }
}

/// The inputs and default output of evaluating `run` of `benchmark` (see `EvalPaths`).
fn eval_paths(benchmark: &str, dataset: Option<&str>, run: &str, judges: PathBuf) -> EvalPaths {
    let is_base = run == "base";
    EvalPaths {
        base_dir: PathBuf::from("results/base").join(benchmark),
        run_dir: (!is_base).then(|| PathBuf::from("results/finetune").join(benchmark).join(run)),
        base_eval_dir: (!is_base)
            .then(|| PathBuf::from("results/eval").join(benchmark).join("base")),
        data_dir: PathBuf::from("data/prepared").join(dataset.unwrap_or(benchmark)),
        judges,
        inception: None,
        inception_onnx: None,
        fid_ref: None,
        out_dir: PathBuf::from("results/eval").join(benchmark).join(run),
        fix_base: format!("acpo repro train-base@{benchmark}"),
        fix_run: format!("acpo repro {}", finetune_stage(benchmark, run)),
        fix_base_eval: format!("acpo repro evaluate-base@{benchmark}"),
        benchmark: benchmark.to_string(),
        run: run.to_string(),
    }
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Evaluate {
            benchmark,
            run,
            dataset,
            judges,
            inception,
            fid_ref,
            inception_onnx,
            out,
        } => {
            let cfg: EvalConfig = stage_param("report.evaluate")?;
            let mut paths = eval_paths(&benchmark, dataset.as_deref(), &run, judges);
            paths.inception = inception;
            paths.fid_ref = fid_ref;
            paths.inception_onnx = inception_onnx;
            if let Some(out) = out {
                paths.out_dir = out;
            }
            let m =
                evaluate(&cfg, &paths).with_context(|| format!("evaluate {benchmark}/{run}"))?;
            eprintln!(
                "evaluate {benchmark}/{run}: guidance {:.4}, held-out MSE {:.5}, pixel drift {:.5}{}",
                m.scores["guidance"].value.mean,
                m.heldout_mse.mean,
                m.pixel_drift.mean,
                m.fid_kid.as_ref().map(|f| format!(", FID {:.2}", f.fid.mean)).unwrap_or_default()
            );
        }
        EvalCommand::EvaluateText {
            data,
            run,
            judges,
            prompts,
            sd,
        } => {
            let cfg: TextEvalConfig = stage_param(if sd {
                "report.sd_evaluate"
            } else {
                "report.text_evaluate"
            })?;
            let is_base = run == "base";
            let (model, finetune, link, prompts_stage) = match sd {
                true => (
                    data.clone(),
                    "finetune-sd",
                    format!("link-sd@{data}"),
                    format!("embed-prompts-sd@{data}"),
                ),
                false => (
                    format!("{data}-text"),
                    "finetune-text",
                    format!("train-base-text@{data}"),
                    "embed-prompts".into(),
                ),
            };
            let fix_run = match group_of(&run) {
                Some(g) => {
                    let seed = &run[g.len() + 2..];
                    match g.strip_prefix("sweep-la") {
                        Some(la) => format!("acpo repro {finetune}-sweep@{data}-{la}-{seed}"),
                        None => format!("acpo repro {finetune}@{data}-{g}-{seed}"),
                    }
                }
                None => format!("acpo repro {finetune}@{data}-{run}"),
            };
            let paths = TextEvalPaths {
                base_dir: PathBuf::from("results/base").join(&model),
                run_dir: (!is_base)
                    .then(|| PathBuf::from("results/finetune").join(&model).join(&run)),
                base_eval_dir: (!is_base)
                    .then(|| PathBuf::from("results/eval-text").join(&data).join("base")),
                prompts_dir: prompts,
                judges,
                out_dir: PathBuf::from("results/eval-text").join(&data).join(&run),
                fix_base: format!("acpo repro {link}"),
                fix_run,
                fix_base_eval: format!(
                    "acpo repro {}-base@{data}",
                    if sd { "evaluate-sd" } else { "evaluate-text" }
                ),
                fix_prompts: format!("acpo repro {prompts_stage}"),
                data: data.clone(),
                run: run.clone(),
            };
            evaluate_text(&cfg, &paths).with_context(|| format!("evaluate-text {data}/{run}"))?;
        }
        EvalCommand::EvaluateSteps { study, judges } => {
            let cfg: EvalConfig = stage_param("report.evaluate")?;
            let st: StepStudy = stage_param(&format!("report.step_study.{study}"))?;
            let out = PathBuf::from("results/eval-steps").join(&study);
            let paths_for = |run: &str| eval_paths(&st.benchmark, None, run, judges.clone());
            let ms = evaluate_step_study(&cfg, &st, &out, &paths_for).with_context(|| {
                format!("evaluate-steps {study} (param report.step_study.{study})")
            })?;
            for m in ms {
                eprintln!(
                    "evaluate-steps {study}: {}/{} at {} steps: guidance {:.4}, pixel drift {:.5}",
                    m.benchmark,
                    m.run,
                    m.sampling.steps,
                    m.scores["guidance"].value.mean,
                    m.pixel_drift.mean
                );
            }
        }
        EvalCommand::BaseStudy { config } => {
            let cfg: StudyConfig = stage_param(&format!("study.configs.{config}"))?;
            let settings = StudySettings {
                budget_tflop: stage_param("study.budget_tflop")?,
                eval_fractions: stage_param("study.eval_fractions")?,
                evaluate: stage_param::<StudyEval>("study.evaluate")?,
            }
            .for_config(&config, &cfg)?;
            let diffusion: serde_json::Value =
                stage_param(&format!("diffusion.{}", cfg.benchmark))?;
            let p = settings.resolve(&config, &cfg, &diffusion)?;
            let b = &cfg.benchmark;
            let paths = StudyPaths {
                data_dir: PathBuf::from("data/prepared").join(b),
                inception: PathBuf::from("results/fid/inception-fid.safetensors"),
                inception_onnx: Some(PathBuf::from("results/fid/inception-fid.onnx")),
                fid_ref: PathBuf::from("results/fid/ref").join(format!("{b}.safetensors")),
                out_dir: PathBuf::from("results/study").join(&config),
            };
            let m = run_study(&config, &cfg, &p, &settings, &paths)
                .with_context(|| format!("base-study {config} (param study.configs.{config})"))?;
            if let Some(last) = m.last() {
                eprintln!(
                    "base-study {config}: {} steps x {}: FID {:.2}, KID {:.4} after {:.1} CPU-min",
                    m.steps,
                    m.batch_size,
                    last.fid,
                    last.kid,
                    last.train_cpu_s / 60.0
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::finetune_stage;

    #[test]
    fn every_run_name_points_at_the_stage_that_writes_it() {
        assert_eq!(
            finetune_stage("c", "acpo-data-s2"),
            "finetune@c-acpo-data-2"
        );
        // the sweep's replicates (finetune.sweep.seeds)
        assert_eq!(
            finetune_stage("c", "sweep-la0.1-s2"),
            "finetune-sweep@c-0.1-2"
        );
        assert_eq!(
            finetune_stage("c", "variant-t300"),
            "finetune-variant@c-t300"
        );
        assert_eq!(
            finetune_stage("c", "perceptual-only"),
            "finetune@c-perceptual-only"
        );
    }
}
