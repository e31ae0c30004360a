//! `acpo stage report ...`: the aggregated report and the base-study report from the
//! evaluations of `acpo stage eval` (crate `acpo-report`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use acpo_core::layout::Layout;
use acpo_report::experiment::HeadlineConfig;
use acpo_report::{
    aggregate, study_report, text_report, BenchmarkSpec, Provenance, ReportSpec, StepStudy,
    StudyReportSpec, TextReportSpec,
};
use anyhow::Context;
use clap::Subcommand;

use super::params::{stage_param, BadParam};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Tables, plots and `index.html` from every evaluation (params `report.benchmarks`).
    Aggregate {
        /// Output folder.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// Profile name shown in the report (default `ACPO_PROFILE`, else `cpu`).
        #[arg(long, env = "ACPO_PROFILE", default_value = "cpu")]
        profile: String,
    },
    /// The text-to-image rows of one text dataset (params `finetune.text`): its base and runs
    /// from `results/eval-text/<data>/` into `reports/<data>-text/`.
    TextReport {
        #[arg(long)]
        data: String,
        /// Output folder (default `reports/<data>-text`).
        #[arg(long)]
        out: Option<PathBuf>,
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

/// Params `finetune.text-sweep`: the anchor-weight sweep on prompts.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextSweep {
    lambda_a: Vec<serde_json::Value>,
    seeds: Vec<u64>,
}

impl TextSweep {
    /// Run names `sweep-la<lambda_a>-s<seed>`, lambda_a spelt as in the params (as the
    /// pipeline's `${item.lambda_a}` spells it).
    fn runs(&self) -> Vec<String> {
        self.lambda_a
            .iter()
            .flat_map(|la| {
                let la = match la {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                self.seeds.iter().map(move |s| format!("sweep-la{la}-s{s}"))
            })
            .collect()
    }
}

/// Files a run itself rewrites before the report is built: they never make a tree "changed".
const WRITTEN_BY_THE_RUN: [&str; 2] = ["pipeline.lock", "reports/"];

/// The tracked files of `git diff --name-only` output other than those a run writes.
fn changed_files(name_only: &str) -> Vec<String> {
    name_only
        .lines()
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .filter(|f| {
            !WRITTEN_BY_THE_RUN
                .iter()
                .any(|w| *f == *w || (w.ends_with('/') && f.starts_with(w)))
        })
        .map(String::from)
        .collect()
}

/// The revision the report names: the commit, and the tracked files that differ from it
/// (other than what the run writes). A changed tree is refused unless `allow_dirty`, so a
/// committed report can be traced to one commit; when allowed, the report names the files.
fn git_revision(allow_dirty: bool) -> anyhow::Result<String> {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(rev) = out(&["rev-parse", "HEAD"]).map(|r| r.trim().to_string()) else {
        return Ok("unknown (not a git checkout)".into());
    };
    let changed = changed_files(
        &out(&["diff", "--name-only", "--relative", "HEAD", "--"]).unwrap_or_default(),
    );
    if changed.is_empty() {
        return Ok(rev);
    }
    let shown = changed
        .iter()
        .take(8)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = match changed.len() {
        n if n > 8 => format!(" and {} more", n - 8),
        _ => String::new(),
    };
    if !allow_dirty {
        return Err(BadParam(format!(
            "the working tree differs from commit {} in {shown}{more} (tracked files other \
             than pipeline.lock and reports/), so this report could not be traced to a commit; \
             commit the changes and run it again (`just report`), or set \
             report.allow_dirty: true (`-S report.allow_dirty=true`) to build it anyway, naming \
             those files",
            &rev[..rev.len().min(12)]
        ))
        .into());
    }
    Ok(format!("{rev} with uncommitted changes to {shown}{more}"))
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

pub fn run(cmd: ReportCommand) -> anyhow::Result<()> {
    match cmd {
        ReportCommand::StudyReport { benchmark, out } => {
            let spec = StudyReportSpec {
                configs: stage_param("study.configs")?,
                layout: Layout::default(),
                out_dir: out.unwrap_or_else(|| Layout::default().study_report(&benchmark).path),
                font: super::assets().join("fonts/DejaVuSans.ttf"),
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
        ReportCommand::TextReport { data, out } => {
            let methods: Vec<String> = stage_param("finetune.text.methods")?;
            let seeds: Vec<u64> = stage_param("finetune.text.seeds")?;
            let sweep: TextSweep = stage_param("finetune.text-sweep")?;
            let allow_dirty: bool = stage_param("report.allow_dirty")?;
            let headline: HeadlineConfig = stage_param("report.headline")?;
            headline.validate()?;
            let spec = TextReportSpec {
                layout: Layout::default(),
                runs: methods
                    .iter()
                    .flat_map(|m| seeds.iter().map(move |s| format!("{m}-s{s}")))
                    .chain(sweep.runs())
                    .collect(),
                out_dir: out.unwrap_or_else(|| Layout::default().text_report(&data).path),
                revision: git_revision(allow_dirty)?,
                data,
                headline,
            };
            let path = text_report(&spec).context("text-report")?;
            eprintln!(
                "text-report {}: {} runs -> {}",
                spec.data,
                spec.runs.len(),
                path.display()
            );
        }
        ReportCommand::Aggregate { out, profile } => {
            let names: Vec<String> = stage_param("report.benchmarks")?;
            let runs: Vec<String> = stage_param("report.runs")?;
            let studies: BTreeMap<String, StepStudy> = stage_param("report.step_study")?;
            let headline: HeadlineConfig = stage_param("report.headline")?;
            headline.validate()?;
            let allow_dirty: bool = stage_param("report.allow_dirty")?;
            let git_revision = git_revision(allow_dirty)?;
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
                    git_revision,
                    acpo_version: env!("CARGO_PKG_VERSION").to_string(),
                    profile,
                    lock: PathBuf::from("pipeline.lock"),
                    params: serde_json::json!({
                        "report.benchmarks": names,
                        "report.runs": runs,
                        "report.step_study": studies,
                        "report.headline": headline,
                        "report.allow_dirty": allow_dirty,
                    }),
                },
                benchmarks,
                font: super::assets().join("fonts/DejaVuSans.ttf"),
                headline,
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

#[cfg(test)]
mod tests {
    use super::changed_files;

    #[test]
    fn what_a_run_writes_does_not_make_the_tree_changed() {
        let diff = "pipeline.lock\nreports/index.html\nreports/anime32/methods.csv\n\
                    src/main.rs\nreports.md\nparams.yaml\n";
        assert_eq!(
            changed_files(diff),
            ["src/main.rs", "reports.md", "params.yaml"]
        );
        assert!(changed_files("pipeline.lock\nreports/x.png\n").is_empty());
        assert!(changed_files("").is_empty());
    }
}
