//! `acpo stage report ...`: evaluation of base and fine-tuned models, and the aggregated
//! report (crate `acpo-report`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use acpo_report::study::StudyEval;
use acpo_report::{
    aggregate, evaluate, evaluate_step_study, run_study, study_report, BenchmarkSpec, EvalConfig,
    EvalPaths, Provenance, ReportSpec, StepStudy, StudyConfig, StudyPaths, StudyReportSpec,
    StudySettings,
};
use anyhow::Context;
use clap::Subcommand;

use super::params::{stage_param, BadParam};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
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
        /// Output folder (default `results/eval/<benchmark>/<run>`).
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Tables, plots and `index.html` from every evaluation (params `report.benchmarks`).
    Aggregate {
        /// Output folder.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// Profile name shown in the report (default `ACPO_PROFILE`, else `cpu`).
        #[arg(long, env = "ACPO_PROFILE", default_value = "cpu")]
        profile: String,
    },
    /// Base-training study configuration `study.configs.<CONFIG>`: its benchmark's
    /// `diffusion.<benchmark>` params with the overrides, trained for `study.budget_tflop` and
    /// scored (FID, KID, held-out MSE) at `study.eval_fractions` into `results/study/<CONFIG>/`.
    BaseStudy {
        /// Key in `study.configs`.
        #[arg(long)]
        config: String,
    },
    /// The `study.configs` runs of one benchmark into `reports/study/<benchmark>/` (table,
    /// plot, sample grids), beside real train images (`results/fid/train-vs-test/<benchmark>`).
    StudyReport {
        #[arg(long)]
        benchmark: String,
        /// Output folder (default `reports/study/<benchmark>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn git_revision() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{rev} (with uncommitted changes)")
            } else {
                rev
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

fn assets() -> PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/assets"))
}

/// Fails naming `param.<key>` when an entry's benchmark is not in `report.benchmarks`.
fn known_benchmarks<T>(
    param: &str,
    entries: &BTreeMap<String, T>,
    benchmark: impl Fn(&T) -> &String,
    names: &[String],
) -> anyhow::Result<()> {
    match entries.iter().find(|(_, e)| !names.contains(benchmark(e))) {
        Some((k, e)) => Err(BadParam(format!(
            "param {param}.{k}: benchmark `{}` is not in report.benchmarks {names:?}",
            benchmark(e)
        ))
        .into()),
        None => Ok(()),
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
        fid_ref: None,
        out_dir: PathBuf::from("results/eval").join(benchmark).join(run),
        fix_base: format!("acpo repro train-base@{benchmark}"),
        fix_run: match run.strip_prefix("sweep-la") {
            Some(la) => format!("acpo repro finetune-sweep@{benchmark}-{la}"),
            None => format!("acpo repro finetune@{benchmark}-{run}"),
        },
        fix_base_eval: format!("acpo repro evaluate-base@{benchmark}"),
        benchmark: benchmark.to_string(),
        run: run.to_string(),
    }
}

pub fn run(cmd: ReportCommand) -> anyhow::Result<()> {
    match cmd {
        ReportCommand::Evaluate {
            benchmark,
            run,
            dataset,
            judges,
            inception,
            fid_ref,
            out,
        } => {
            let cfg: EvalConfig = stage_param("report.evaluate")?;
            let mut paths = eval_paths(&benchmark, dataset.as_deref(), &run, judges);
            paths.inception = inception;
            paths.fid_ref = fid_ref;
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
        ReportCommand::EvaluateSteps { study, judges } => {
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
        ReportCommand::BaseStudy { config } => {
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
        ReportCommand::StudyReport { benchmark, out } => {
            let spec = StudyReportSpec {
                configs: stage_param("study.configs")?,
                results_dir: PathBuf::from("results/study"),
                floor: PathBuf::from("results/fid/train-vs-test")
                    .join(&benchmark)
                    .join("metrics.json"),
                out_dir: out.unwrap_or_else(|| PathBuf::from("reports/study").join(&benchmark)),
                font: assets().join("fonts/DejaVuSans.ttf"),
                benchmark,
            };
            let runs = study_report(&spec).context("study-report")?;
            eprintln!(
                "study-report {}: {} configuration(s) -> {}",
                spec.benchmark,
                runs.len(),
                spec.out_dir.join("study.md").display()
            );
        }
        ReportCommand::Aggregate { out, profile } => {
            let names: Vec<String> = stage_param("report.benchmarks")?;
            let runs: Vec<String> = stage_param("report.runs")?;
            let studies: BTreeMap<String, StepStudy> = stage_param("report.step_study")?;
            known_benchmarks("report.step_study", &studies, |st| &st.benchmark, &names)?;
            // A benchmark's prepared dataset has the benchmark's name (as in train-base).
            let benchmarks: Vec<BenchmarkSpec> = names
                .iter()
                .map(|n| BenchmarkSpec {
                    step_studies: studies
                        .iter()
                        .filter(|(_, st)| &st.benchmark == n)
                        .map(|(k, st)| (k.clone(), st.clone()))
                        .collect(),
                    name: n.clone(),
                    dataset: n.clone(),
                    runs: runs.clone(),
                })
                .collect();
            let spec = ReportSpec {
                root: PathBuf::from("."),
                out_dir: out,
                provenance: Provenance {
                    git_revision: git_revision(),
                    acpo_version: env!("CARGO_PKG_VERSION").to_string(),
                    profile,
                    lock: PathBuf::from("pipeline.lock"),
                    params: serde_json::json!({
                        "report.benchmarks": names,
                        "report.runs": runs,
                        "report.step_study": studies,
                    }),
                },
                benchmarks,
                font: assets().join("fonts/DejaVuSans.ttf"),
                fix_eval: "acpo repro evaluate@{benchmark}-{run} (or evaluate-base@{benchmark} for the base)".into(),
            };
            let o = aggregate(&spec).context("aggregate")?;
            eprintln!(
                "aggregate: {} numbers from {} benchmark(s) -> {}",
                o.rows.len(),
                o.evals.len(),
                Path::new(&spec.out_dir).join("index.html").display()
            );
        }
    }
    Ok(())
}
