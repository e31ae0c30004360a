//! `acpo stage eval ...`: evaluation of base and fine-tuned models and the base-training
//! study (crate `acpo-report`). The tables and plots built from them are `acpo stage report`,
//! whose glue (src/glue/report.rs) the evaluation stages do not depend on.

use std::path::PathBuf;

use acpo_core::layout::{Artifact, Layout, Model};
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
        /// Prompt sets (default: `embed-prompts`'s `data/prepared/prompt-embeddings`; with
        /// `--sd`, `embed-prompts-sd`'s `data/prepared/prompt-embeddings-<data>`).
        #[arg(long)]
        prompts: Option<PathBuf>,
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
            let l = Layout::default();
            let mut paths = EvalPaths::new(&l, &benchmark, dataset.as_deref(), &run, judges);
            // Given paths keep the stage that makes the layout's file as their fix-it.
            let given = |path: Option<PathBuf>, made_by: Artifact| {
                path.map(|path| Artifact { path, ..made_by })
            };
            paths.inception = given(inception, l.inception_weights());
            paths.inception_onnx = given(inception_onnx, l.inception_onnx());
            paths.fid_ref = given(fid_ref, l.fid_ref(dataset.as_deref().unwrap_or(&benchmark)));
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
            let model = if sd {
                Model::Sd(&data)
            } else {
                Model::Text(&data)
            };
            let mut paths = TextEvalPaths::new(&Layout::default(), model, &run, judges);
            if let Some(p) = prompts {
                paths.prompts.path = p;
            }
            evaluate_text(&cfg, &paths).with_context(|| format!("evaluate-text {data}/{run}"))?;
        }
        EvalCommand::EvaluateSteps { study, judges } => {
            let cfg: EvalConfig = stage_param("report.evaluate")?;
            let st: StepStudy = stage_param(&format!("report.step_study.{study}"))?;
            let l = Layout::default();
            let paths_for =
                |run: &str| EvalPaths::new(&l, &st.benchmark, None, run, judges.clone());
            let out = l.step_eval(&study);
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
            let paths = StudyPaths::new(&Layout::default(), &cfg.benchmark, &config);
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
