//! The `aggregate` stage: every evaluation's `metrics.json` into tables (polars), plots and
//! `reports/index.html`.
//!
//! Outputs in `reports/`: `<benchmark>/summary.csv` and `summary.md` (methods x metrics),
//! `paper_comparison.csv`/`.md` (our numbers beside the paper's, SPEC section 1, with how the
//! protocol differs), `metrics.parquet` (every number in long form), plots
//! (`<benchmark>/*.png` and `.svg`), sample grids and `index.html`; with a sampler-steps study
//! (`report.step_study`) also `<benchmark>/sampler_steps.{csv,md,png,svg}`.

use crate::error::{ReportError, Result};
use crate::evaluate::StepStudy;
use crate::experiment::{
    across_seeds, also_headlines, fmt_across, headline, headline_text, methods_cells,
    methods_compact_cells, pareto_panels, Headline, HeadlineConfig,
};
use crate::fsio::{read_string, write_atomic, write_json};
use crate::plots::{plot, write_grid_png, Panel, Series};
use crate::schema::{read_metrics, EvalMetrics};
use crate::stats::Estimate;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One benchmark of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// Benchmark name (`results/eval/<name>/`).
    pub name: String,
    /// Prepared dataset it uses (`data/prepared/<dataset>/`).
    pub dataset: String,
    /// Fine-tuning runs evaluated (the base is always included).
    pub runs: Vec<String>,
    /// Sampler-steps studies of this benchmark by name (`results/eval-steps/<name>/<run>/`),
    /// shown beside the main evaluation in `<benchmark>/sampler_steps.{csv,md}`.
    #[serde(default)]
    pub step_studies: BTreeMap<String, StepStudy>,
}

/// Provenance shown in `index.html`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Provenance {
    pub git_revision: String,
    pub acpo_version: String,
    pub profile: String,
    /// `pipeline.lock` (read as JSON: stage keys, params, wall time, peak memory).
    pub lock: PathBuf,
    /// The params the aggregate stage itself read.
    pub params: serde_json::Value,
}

/// Everything `aggregate` reads.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    /// Directory the relative paths below are resolved against (the pipeline root).
    pub root: PathBuf,
    /// `reports/`.
    pub out_dir: PathBuf,
    pub benchmarks: Vec<BenchmarkSpec>,
    pub provenance: Provenance,
    /// The TTF for plot text.
    pub font: PathBuf,
    /// Command that regenerates one evaluation: `{benchmark}` and `{run}` are replaced.
    pub fix_eval: String,
    /// What the generated headline tests (params `report.headline`).
    pub headline: HeadlineConfig,
}

impl ReportSpec {
    /// The scores that fine-tuning maximised: the guidance and the judges that run it.
    pub fn optimised(&self) -> Vec<String> {
        std::iter::once("guidance".to_string())
            .chain(self.headline.not_held_out.iter().cloned())
            .collect()
    }
}

/// One number of the long table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub benchmark: String,
    pub run: String,
    pub method: String,
    pub lambda_a: Option<f64>,
    pub metric: String,
    pub estimate: Estimate,
}

/// The row of the scores of real test images (from the base's evaluation): the reference
/// every score is read against.
pub const REAL_TEST_ROW: &str = "real test images";

/// Metrics of one evaluation in long form, in the report's column order (the base's also
/// give the [`REAL_TEST_ROW`] row).
pub fn rows_of(m: &EvalMetrics) -> Vec<Row> {
    let mut out = Vec::new();
    let mut push = |metric: String, e: &Estimate| {
        out.push(Row {
            benchmark: m.benchmark.clone(),
            run: m.run.clone(),
            method: m.info.method.clone(),
            lambda_a: m.info.lambda_a,
            metric,
            estimate: e.clone(),
        })
    };
    for (name, s) in &m.scores {
        push(format!("score.{name}"), &s.value);
    }
    for (name, imp) in &m.improvement {
        push(format!("improvement_rel_pct.{name}"), &imp.relative_pct);
        push(format!("improvement_abs.{name}"), &imp.absolute);
        push(format!("win_rate_pct.{name}"), &imp.win_rate_pct);
    }
    push("heldout_mse".into(), &m.heldout_mse);
    if let Some(d) = &m.heldout_mse_delta {
        push("heldout_mse_delta".into(), d);
    }
    push("anchor_distance".into(), &m.anchor_distance);
    push("pixel_drift".into(), &m.pixel_drift);
    push("diversity_pixel".into(), &m.diversity.pixel);
    if let Some(d) = &m.diversity.inception {
        push("diversity_inception".into(), d);
    }
    if let Some(fk) = &m.base_quality {
        push("base_quality.fid".into(), &fk.fid);
        push("base_quality.kid".into(), &fk.kid);
    }
    if let Some(fk) = &m.fid_kid {
        push("fid".into(), &fk.fid);
        push("kid".into(), &fk.kid);
    }
    for b in &m.by_t {
        let bin = format!("by_t.{}-{}", b.t_lo, b.t_hi);
        push(format!("{bin}.heldout_mse"), &b.heldout_mse);
        if let Some(d) = &b.heldout_mse_delta {
            push(format!("{bin}.heldout_mse_delta"), d);
        }
        if let Some(d) = &b.anchor_distance {
            push(format!("{bin}.anchor_distance"), d);
        }
    }
    if let Some(rt) = &m.real_test {
        for (name, sc) in &rt.scores {
            out.push(Row {
                benchmark: m.benchmark.clone(),
                run: REAL_TEST_ROW.into(),
                method: "real".into(),
                lambda_a: None,
                metric: format!("score.{name}"),
                estimate: sc.value.clone(),
            });
        }
    }
    out
}

/// A number with 4 significant digits (scientific for very small or large values).
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        let digits = if a == 0.0 {
            3
        } else {
            (3 - a.log10().floor() as i32).clamp(0, 6) as usize
        };
        format!("{v:.digits$}")
    }
}

/// `mean [lo, hi] n=N` (the interval omitted when there is none).
pub fn fmt_estimate(e: &Estimate) -> String {
    match (e.lo, e.hi) {
        (Some(lo), Some(hi)) => format!(
            "{} [{}, {}] n={}",
            fmt_num(e.mean),
            fmt_num(lo),
            fmt_num(hi),
            e.n
        ),
        _ => format!("{} n={}", fmt_num(e.mean), e.n),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One run's row of the wide table: (run, method, lambda_a, estimates by metric).
pub type WideRow = (String, String, Option<f64>, BTreeMap<String, Estimate>);

/// The wide table of one benchmark: runs (base first) x metrics.
#[derive(Debug, Clone)]
pub struct Wide {
    pub metrics: Vec<String>,
    /// (run, method, lambda_a, estimates by metric).
    pub runs: Vec<WideRow>,
}

/// The wide table of runs x metrics, held-out judges first: their gains over the base, then
/// their scores, then held-out MSE and drift, then FID/KID and diversity, and last the scores
/// in `optimised` (the guidance and its copies: what fine-tuning maximised). The per-`t`
/// metrics (`by_t.*`) stay in the long table only.
pub fn wide(rows: &[Row], optimised: &[String]) -> Wide {
    let mut metrics: Vec<String> = Vec::new();
    let mut runs: Vec<WideRow> = Vec::new();
    for r in rows.iter().filter(|r| !r.metric.starts_with("by_t.")) {
        if !metrics.contains(&r.metric) {
            metrics.push(r.metric.clone());
        }
        match runs.iter_mut().find(|x| x.0 == r.run) {
            Some(x) => {
                x.3.insert(r.metric.clone(), r.estimate.clone());
            }
            None => runs.push((
                r.run.clone(),
                r.method.clone(),
                r.lambda_a,
                BTreeMap::from([(r.metric.clone(), r.estimate.clone())]),
            )),
        }
    }
    let rank = |m: &str| {
        let (kind, score) = m.split_once('.').unwrap_or((m, ""));
        let judge = !score.is_empty() && !optimised.iter().any(|o| o == score);
        match kind {
            "improvement_rel_pct" if judge => 0,
            "score" if judge => 1,
            "improvement_abs" | "win_rate_pct" if judge => 2,
            "heldout_mse_delta" | "heldout_mse" | "anchor_distance" | "pixel_drift" => 3,
            "improvement_rel_pct" | "score" | "improvement_abs" | "win_rate_pct" => 5,
            _ => 4,
        }
    };
    metrics.sort_by_key(|m| rank(m));
    Wide { metrics, runs }
}

fn summary_csv(w: &Wide) -> String {
    let mut s = String::from("run,method,lambda_a");
    for m in &w.metrics {
        s.push_str(&format!(",{m},{m}_lo,{m}_hi,{m}_n,{m}_interval"));
    }
    s.push('\n');
    for (run, method, la, est) in &w.runs {
        s.push_str(&format!(
            "{},{},{}",
            csv_field(run),
            csv_field(method),
            la.map(|v| v.to_string()).unwrap_or_default()
        ));
        for m in &w.metrics {
            match est.get(m) {
                Some(e) => s.push_str(&format!(
                    ",{},{},{},{},{}",
                    e.mean,
                    e.lo.map(|v| v.to_string()).unwrap_or_default(),
                    e.hi.map(|v| v.to_string()).unwrap_or_default(),
                    e.n,
                    e.interval
                )),
                None => s.push_str(",,,,,"),
            }
        }
        s.push('\n');
    }
    s
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Markdown table; `cells` gives the text per (row, column).
pub(crate) fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        header
            .iter()
            .map(|h| md_escape(h))
            .collect::<Vec<_>>()
            .join(" | "),
        vec!["---"; header.len()].join("|")
    );
    for r in rows {
        s.push_str(&format!(
            "| {} |\n",
            r.iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    s
}

/// Header and cells of a benchmark's summary (shared by Markdown and HTML).
pub fn summary_cells(w: &Wide) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["run".to_string(), "method".into(), "λa".into()];
    header.extend(w.metrics.iter().cloned());
    let rows = w
        .runs
        .iter()
        .map(|(run, method, la, est)| {
            let mut r = vec![
                run.clone(),
                method.clone(),
                la.map(fmt_num).unwrap_or_else(|| "–".into()),
            ];
            r.extend(
                w.metrics
                    .iter()
                    .map(|m| est.get(m).map(fmt_estimate).unwrap_or_else(|| "–".into())),
            );
            r
        })
        .collect();
    (header, rows)
}

/// One row of the paper comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PaperRow {
    pub benchmark: String,
    pub metric: String,
    pub paper: String,
    pub ours: String,
    pub ours_base: String,
    pub protocol_difference: String,
}

/// Our numbers beside the paper's (SPEC section 1).
pub fn paper_comparison(all: &BTreeMap<String, Vec<EvalMetrics>>) -> Vec<PaperRow> {
    let acpo = |bm: &str| -> Option<&EvalMetrics> {
        let v = all.get(bm)?;
        v.iter()
            .find(|m| m.run == "acpo")
            .or_else(|| v.iter().find(|m| m.info.method == "acpo"))
    };
    let base = |bm: &str| all.get(bm).and_then(|v| v.iter().find(|m| m.run == "base"));
    // The acpo replicates across seeds when there are any, else the one acpo run.
    let mse = |bm: &str, m: Option<&EvalMetrics>| -> String {
        let reps: Vec<&EvalMetrics> = all
            .get(bm)
            .map(|v| {
                v.iter()
                    .filter(|m| crate::experiment::group_of(&m.run) == Some("acpo"))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(a) = across_seeds(&reps, |m| Some(m.heldout_mse.clone())) {
            return fmt_across(&a);
        }
        match m {
            Some(m) => fmt_estimate(&m.heldout_mse),
            None if all.contains_key(bm) => "no ACPO run evaluated".into(),
            None => "not run (benchmark not in this profile)".into(),
        }
    };
    let mse_base = |bm: &str| {
        base(bm)
            .map(|m| fmt_estimate(&m.heldout_mse))
            .unwrap_or_else(|| "–".into())
    };
    let note_size = |bm: &str| -> String {
        all.get(bm)
            .and_then(|v| v.first())
            .map(|m| {
                format!(
                    "{} samples per model, {} test draws",
                    m.sampling.samples, m.heldout_mse.n
                )
            })
            .unwrap_or_default()
    };
    let t2i = "evaluated on the prompt-conditioned CIFAR-10 model by the text stages (finetune-text, evaluate-text): \
               see reports/cifar10-text/summary.md (text-report@cifar10); not in this table";
    vec![
        PaperRow {
            benchmark: "CIFAR-10 32×32".into(),
            metric: "MSE".into(),
            paper: "0.0267".into(),
            ours: mse("cifar10", acpo("cifar10")),
            ours_base: mse_base("cifar10"),
            protocol_difference: format!(
                "held-out noise-prediction MSE per pixel-channel on the test split (the paper's definition is not public); \
                 JPEG quality-75 proxy of CIFAR-10; small UNet trained on the CPU from scratch; {}",
                note_size("cifar10")
            ),
        },
        PaperRow {
            benchmark: "Anime-Faces 64×64".into(),
            metric: "MSE".into(),
            paper: "0.0187".into(),
            ours: mse("anime64", acpo("anime64")),
            ours_base: mse_base("anime64"),
            protocol_difference: format!(
                "same MSE reading; 15,000 of 22,969 faces; small UNet on the CPU; {}",
                note_size("anime64")
            ),
        },
        PaperRow {
            benchmark: "LSUN Church 256×256".into(),
            metric: "(not given)".into(),
            paper: "–".into(),
            ours: mse("church256", acpo("church256")),
            ours_base: mse_base("church256"),
            protocol_difference: "LSUN Church is not obtainable: stand-in of 256×256 crops of the 24 Kodak photos; tiny model".into(),
        },
        PaperRow {
            benchmark: "DiffusionDB prompts (unseen)".into(),
            metric: "Improvement".into(),
            paper: "0.1736".into(),
            ours: "–".into(),
            ours_base: "–".into(),
            protocol_difference: format!("{t2i}; read either as relative % or absolute gain of a judge score"),
        },
        PaperRow {
            benchmark: "DrawBench prompts (unseen)".into(),
            metric: "Improvement".into(),
            paper: "47.63".into(),
            ours: "–".into(),
            ours_base: "–".into(),
            protocol_difference: t2i.into(),
        },
        PaperRow {
            benchmark: "PartiPrompts (unseen)".into(),
            metric: "Improvement".into(),
            paper: "91.31".into(),
            ours: "–".into(),
            ours_base: "–".into(),
            protocol_difference: t2i.into(),
        },
        PaperRow {
            benchmark: "Visual Genome".into(),
            metric: "IPCE".into(),
            paper: "2.9166".into(),
            ours: "not defined".into(),
            ours_base: "–".into(),
            protocol_difference: "IPCE is not defined in any public text; not invented here".into(),
        },
    ]
}

pub(crate) fn paper_cells(rows: &[PaperRow]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "benchmark",
        "metric",
        "paper (ACPO)",
        "ours (ACPO)",
        "ours (base)",
        "how the protocol differs",
    ]
    .map(String::from)
    .to_vec();
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.benchmark.clone(),
                r.metric.clone(),
                r.paper.clone(),
                r.ours.clone(),
                r.ours_base.clone(),
                r.protocol_difference.clone(),
            ]
        })
        .collect();
    (header, cells)
}

/// The long table as a polars DataFrame (written as `metrics.parquet`).
pub fn long_frame(rows: &[Row]) -> PolarsResult<DataFrame> {
    let s = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect::<Vec<String>>();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("benchmark".into(), s(&|r| r.benchmark.clone())),
            Column::new("run".into(), s(&|r| r.run.clone())),
            Column::new("method".into(), s(&|r| r.method.clone())),
            Column::new(
                "lambda_a".into(),
                rows.iter()
                    .map(|r| r.lambda_a)
                    .collect::<Vec<Option<f64>>>(),
            ),
            Column::new("metric".into(), s(&|r| r.metric.clone())),
            Column::new(
                "mean".into(),
                rows.iter().map(|r| r.estimate.mean).collect::<Vec<f64>>(),
            ),
            Column::new(
                "lo".into(),
                rows.iter()
                    .map(|r| r.estimate.lo)
                    .collect::<Vec<Option<f64>>>(),
            ),
            Column::new(
                "hi".into(),
                rows.iter()
                    .map(|r| r.estimate.hi)
                    .collect::<Vec<Option<f64>>>(),
            ),
            Column::new(
                "n".into(),
                rows.iter()
                    .map(|r| r.estimate.n as u64)
                    .collect::<Vec<u64>>(),
            ),
            Column::new("interval".into(), s(&|r| r.estimate.interval.clone())),
        ],
    )
}

/// Reads a CSV of numbers with a header into columns (for `loss.csv` and `curve.csv`).
pub fn read_numeric_csv(path: &Path) -> Result<BTreeMap<String, Vec<f64>>> {
    let text = read_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| ReportError::bad(path, "line 1", "empty file"))?
        .split(',')
        .collect();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); header.len()];
    for (ln, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != header.len() {
            return Err(ReportError::bad(
                path,
                format!("line {}", ln + 2),
                format!("{} fields, header has {}", f.len(), header.len()),
            ));
        }
        for (k, v) in f.iter().enumerate() {
            // Empty fields (values not logged at that step) read as NaN and are not drawn.
            cols[k].push(if v.is_empty() {
                f64::NAN
            } else {
                v.parse().unwrap_or(f64::NAN)
            });
        }
    }
    Ok(header.into_iter().map(str::to_string).zip(cols).collect())
}

fn series(name: &str, x: &[f64], y: &[f64]) -> Series {
    Series {
        name: name.into(),
        points: x.iter().copied().zip(y.iter().copied()).collect(),
        labels: vec![],
        ..Default::default()
    }
}

/// Moving average over `k` points (training losses are noisy per step).
fn smooth(y: &[f64], k: usize) -> Vec<f64> {
    let k = k.max(1);
    (0..y.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let w = &y[lo..=i];
            w.iter().sum::<f64>() / w.len() as f64
        })
        .collect()
}

/// What the report wrote, for the HTML page.
#[derive(Debug, Clone, Default)]
pub struct BenchOutputs {
    pub plots: Vec<(String, String)>,
    pub grids: Vec<(String, String)>,
    pub notes: Vec<String>,
    /// The sampler-steps table, when the benchmark has a study.
    pub steps: Option<Wide>,
    /// The generated headline.
    pub headline: Option<Headline>,
    /// The headlines of `report.headline.also`, after it.
    pub also: Vec<Headline>,
    /// The methods table across seeds (header, cells).
    pub methods: (Vec<String>, Vec<Vec<String>>),
    /// The same, compact: what the page shows first.
    pub methods_compact: (Vec<String>, Vec<Vec<String>>),
}

/// What the Pareto plot shows.
pub const PARETO_CAPTION: &str = "Quality against drift: each held-out judge's gain over the base \
    against the paired change of held-out MSE and against the anchor distance. The line is the \
    anchor-weight sweep (λa = 0 is perceptual-only); the other points are the remaining methods \
    and variants. Error bars: 95% intervals across training seeds, where a point has seeds.";

/// What the across-seed methods table shows.
pub const METHODS_CAPTION: &str = "One row per method, over its training seeds (runs \
    `<method>-s<seed>`): mean of the runs' means [95% t-interval across seeds] (within ±: the \
    runs' own sampling interval, averaged) seeds=n. Held-out judges first (gain over the base on \
    the same seeds, positive = better); the guidance and its ONNX copy last, as what was \
    optimised. Δ held-out MSE is paired with the base on the same draws.";

/// Each paragraph of `text` in bold, markdown-escaped.
fn bold_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| format!("**{}**", md_escape(p)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The per-benchmark files of the experiment: `headline.json`, `methods.{csv,md}`,
/// `drift_by_t.{csv,md}` and `pareto.{png,svg}`.
fn experiment_files(
    spec: &ReportSpec,
    dir: &Path,
    (hl, also): (&Headline, &[Headline]),
    list: &[EvalMetrics],
    (h, c): &(Vec<String>, Vec<Vec<String>>),
) -> Result<Vec<PathBuf>> {
    write_json(&dir.join("headline.json"), hl)?;
    write_json(&dir.join("headline_also.json"), &also)?;
    write_atomic(&dir.join("methods.csv"), cells_csv(h, c).as_bytes())?;
    let md = format!(
        "# {}: methods across training seeds\n\n{}\n\n{METHODS_CAPTION}\n\n{}",
        hl.benchmark,
        bold_paragraphs(&headline_text(hl, also)),
        md_table(h, c)
    );
    write_atomic(&dir.join("methods.md"), md.as_bytes())?;
    let (h, c) = by_t_cells(list);
    write_atomic(&dir.join("drift_by_t.csv"), cells_csv(&h, &c).as_bytes())?;
    let md = format!(
        "# {}: held-out MSE change and anchor distance by timestep\n\n{BY_T_CAPTION}\n\n{}",
        hl.benchmark,
        md_table(&h, &c)
    );
    write_atomic(&dir.join("drift_by_t.md"), md.as_bytes())?;
    plot(
        &dir.join("pareto"),
        &pareto_panels(&spec.headline, &hl.benchmark, list),
    )?;
    Ok([
        "headline.json",
        "headline_also.json",
        "methods.csv",
        "methods.md",
        "drift_by_t.csv",
        "drift_by_t.md",
        "pareto.png",
        "pareto.svg",
    ]
    .map(|f| dir.join(f))
    .to_vec())
}

/// What the by-timestep table shows.
pub const BY_T_CAPTION: &str = "Per run and timestep bin [t_lo, t_hi) of the held-out draws: \
    the paired change of held-out noise-prediction MSE against the base on the same draws, and \
    the anchor distance (mean [95% interval] n=draws). Drift at small t changes fine detail, at \
    large t the layout.";

/// Runs x timestep bins: `Δ MSE` and anchor distance per bin.
fn by_t_cells(list: &[EvalMetrics]) -> (Vec<String>, Vec<Vec<String>>) {
    let bins: Vec<(usize, usize)> = list
        .iter()
        .flat_map(|m| m.by_t.iter().map(|b| (b.t_lo, b.t_hi)))
        .fold(Vec::new(), |mut v, b| {
            if !v.contains(&b) {
                v.push(b);
            }
            v
        });
    let mut header = vec!["run".to_string()];
    for (lo, hi) in &bins {
        header.push(format!("Δ MSE t∈[{lo},{hi})"));
        header.push(format!("anchor t∈[{lo},{hi})"));
    }
    let rows = list
        .iter()
        .filter(|m| m.run != "base")
        .map(|m| {
            let mut r = vec![m.run.clone()];
            for (lo, hi) in &bins {
                let b = m.by_t.iter().find(|b| (b.t_lo, b.t_hi) == (*lo, *hi));
                let cell = |e: Option<&Estimate>| e.map(fmt_estimate).unwrap_or_else(|| "–".into());
                r.push(cell(b.and_then(|b| b.heldout_mse_delta.as_ref())));
                r.push(cell(b.and_then(|b| b.anchor_distance.as_ref())));
            }
            r
        })
        .collect();
    (header, rows)
}

/// A CSV of text cells.
fn cells_csv(header: &[String], rows: &[Vec<String>]) -> String {
    let line = |r: &[String]| r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n";
    std::iter::once(line(header))
        .chain(rows.iter().map(|r| line(r)))
        .collect()
}

/// What a sampler-steps table shows (Markdown and HTML).
pub const STEPS_CAPTION: &str = "The same models on the same seeds, sampled with DDIM at the main \
    evaluation's number of steps and at each study's (`report.step_study`). Every run is compared \
    with the base at the same number of steps (improvement, win rate, pixel drift). \
    Each cell: mean [95% interval] n=samples.";

fn plots_for(spec: &ReportSpec, bm: &BenchmarkSpec, evals: &[EvalMetrics]) -> Result<BenchOutputs> {
    let mut out = BenchOutputs::default();
    let dir = spec.out_dir.join(&bm.name);
    let rel = |stem: &str| format!("{}/{stem}", bm.name);
    // Training curve of the base.
    let base_loss = spec
        .root
        .join("results/base")
        .join(&bm.name)
        .join("loss.csv");
    if base_loss.exists() {
        let c = read_numeric_csv(&base_loss)?;
        if let (Some(x), Some(y)) = (c.get("step"), c.get("loss")) {
            let k = (y.len() / 50).max(1);
            plot(
                &dir.join("train_base"),
                &[Panel {
                    title: format!("{}: base training loss", bm.name),
                    x_label: "step".into(),
                    y_label: format!("loss (moving average of {k})"),
                    series: vec![series("base", x, &smooth(y, k))],
                }],
            )?;
        }
    } else {
        out.notes
            .push(format!("no base training log at {}", base_loss.display()));
    }
    // Fine-tuning curves.
    let mut loss_series = Vec::new();
    let mut curves: Vec<(String, BTreeMap<String, Vec<f64>>)> = Vec::new();
    for run in &bm.runs {
        let d = spec.root.join("results/finetune").join(&bm.name).join(run);
        if let Ok(c) = read_numeric_csv(&d.join("loss.csv")) {
            if let (Some(x), Some(y)) = (c.get("step"), c.get("loss")) {
                let k = (y.len() / 50).max(1);
                loss_series.push(series(run, x, &smooth(y, k)));
            }
        }
        if let Ok(c) = read_numeric_csv(&d.join("curve.csv")) {
            curves.push((run.clone(), c));
        }
    }
    if !loss_series.is_empty() {
        plot(
            &dir.join("finetune_loss"),
            &[Panel {
                title: format!("{}: fine-tuning loss", bm.name),
                x_label: "step".into(),
                y_label: "loss (moving average)".into(),
                series: loss_series,
            }],
        )?;
        out.plots
            .push((rel("finetune_loss"), "Fine-tuning loss per run".into()));
    }
    if !curves.is_empty() {
        let panel = |col: &str, title: &str| Panel {
            title: format!("{}: {title}", bm.name),
            x_label: "fine-tuning step".into(),
            y_label: col.into(),
            series: curves
                .iter()
                .filter_map(|(run, c)| Some(series(run, c.get("step")?, c.get(col)?)))
                .collect(),
        };
        plot(
            &dir.join("finetune_drift"),
            &[
                panel("anchor_distance", "anchor distance on the probe set"),
                panel("heldout_mse", "held-out MSE on the probe set"),
            ],
        )?;
        out.plots.push((
            rel("finetune_drift"),
            "Stability: anchor distance and held-out MSE over fine-tuning".into(),
        ));
        // Guidance vs each judge over steps.
        let mut panels = vec![panel(
            "guidance_samples",
            "guidance Q (= -CNNIQA) of probe samples",
        )];
        let judges: Vec<String> = curves[0]
            .1
            .keys()
            .filter(|k| k.starts_with("judge_") && !k.ends_with("_ci95"))
            .cloned()
            .collect();
        for j in &judges {
            panels.push(panel(
                j,
                &format!("{} of probe samples", j.trim_start_matches("judge_")),
            ));
        }
        plot(&dir.join("guidance_vs_judges"), &panels)?;
        out.plots.push((rel("guidance_vs_judges"), "Guidance score and each judge over fine-tuning steps (reward hacking shows as the guidance rising while judges do not improve)".into()));
    }
    // Quality vs drift across lambda_a.
    let mut sweep: Vec<&EvalMetrics> = evals
        .iter()
        .filter(|m| m.info.lambda_a.is_some() && m.run != "base")
        .collect();
    sweep.sort_by(|a, b| {
        a.info
            .lambda_a
            .partial_cmp(&b.info.lambda_a)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if !sweep.is_empty() {
        let names: Vec<String> = sweep[0].improvement.keys().cloned().collect();
        let mut panels = Vec::new();
        for name in names {
            let mut by_method: BTreeMap<String, Series> = BTreeMap::new();
            for m in &sweep {
                if let Some(imp) = m.improvement.get(&name) {
                    let s = by_method
                        .entry(m.info.method.clone())
                        .or_insert_with(|| Series {
                            name: m.info.method.clone(),
                            points: vec![],
                            labels: vec![],
                            ..Default::default()
                        });
                    s.points.push((m.pixel_drift.mean, imp.relative_pct.mean));
                    s.labels.push(format!(
                        " λa={}",
                        fmt_num(m.info.lambda_a.unwrap_or(f64::NAN))
                    ));
                }
            }
            panels.push(Panel {
                title: format!("{}: {name} improvement vs drift", bm.name),
                x_label: "pixel drift to the base (MSE, same noise)".into(),
                y_label: "improvement over base (%)".into(),
                series: by_method.into_values().collect(),
            });
        }
        plot(&dir.join("quality_vs_drift"), &panels)?;
        out.plots.push((
            rel("quality_vs_drift"),
            "Quality versus drift across the anchor weight λa".into(),
        ));
    }
    // Sample grids on the same seeds, side by side.
    for m in evals {
        let p = spec
            .root
            .join("results/eval")
            .join(&bm.name)
            .join(&m.run)
            .join("samples.safetensors");
        let (n, h, w, px) = crate::evaluate::load_sample_pixels(&p)?;
        let k = n.min(crate::base::STRIP);
        let name = format!("samples_{}", m.run);
        write_grid_png(
            &px[..k * h * w * 3],
            k,
            h,
            w,
            k,
            &dir.join(format!("{name}.png")),
        )?;
        out.grids.push((rel(&name), m.run.clone()));
    }
    Ok(out)
}

/// What [`aggregate`] produced.
#[derive(Debug, Clone)]
pub struct AggregateOutcome {
    pub rows: Vec<Row>,
    pub evals: BTreeMap<String, Vec<EvalMetrics>>,
    pub files: Vec<PathBuf>,
}

/// The metrics a sampler-steps table shows: scores, the guidance gain and win rate, and drift.
fn in_steps_table(metric: &str) -> bool {
    metric.starts_with("score.")
        || matches!(
            metric,
            "improvement_rel_pct.guidance" | "win_rate_pct.guidance" | "pixel_drift"
        )
}

/// The evaluations behind a benchmark's sampler-steps table, in table order: for each study and
/// each of its runs (base first), the run at the main evaluation's steps (`main`) and then at the
/// study's. Empty when the benchmark has no study.
fn steps_metrics(
    spec: &ReportSpec,
    bm: &BenchmarkSpec,
    main: &[EvalMetrics],
) -> Result<Vec<EvalMetrics>> {
    let mut out = Vec::new();
    for (name, study) in &bm.step_studies {
        for run in std::iter::once("base").chain(study.runs.iter().map(String::as_str)) {
            let p = spec
                .root
                .join("results/eval-steps")
                .join(name)
                .join(run)
                .join("metrics.json");
            let m = read_metrics(&p, &format!("acpo repro evaluate-steps@{name}"))?;
            if m.benchmark != bm.name || m.run != run || m.sampling.steps != study.steps {
                return Err(ReportError::bad(
                    &p,
                    "benchmark/run/sampling.steps",
                    format!(
                        "says {}/{} at {} steps, expected {}/{run} at {} (study `{name}`)",
                        m.benchmark, m.run, m.sampling.steps, bm.name, study.steps
                    ),
                ));
            }
            if let Some(main_m) = main.iter().find(|x| x.run == run) {
                out.push(main_m.clone());
            }
            out.push(m);
        }
    }
    Ok(out)
}

/// The sampler-steps table's rows: run names suffixed with their steps. The real test images
/// are no samples: their row appears once, unsuffixed, from the first evaluation that has it
/// (the main one, with the most images).
fn steps_rows(ms: &[EvalMetrics]) -> Vec<Row> {
    let mut real_seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for m in ms {
        for mut r in rows_of(m).into_iter().filter(|r| in_steps_table(&r.metric)) {
            if r.run == REAL_TEST_ROW {
                if !real_seen.insert(r.metric.clone()) {
                    continue;
                }
            } else {
                r.run = format!("{} @{} steps", r.run, m.sampling.steps);
            }
            out.push(r);
        }
    }
    out
}

/// One panel per score (guidance, then the judges): the score's mean against the number of
/// DDIM steps, one line per run.
fn steps_panels(ms: &[EvalMetrics]) -> Vec<Panel> {
    let mut scores: Vec<&String> = ms.iter().flat_map(|m| m.scores.keys()).collect();
    scores.sort_by_key(|s| (s.as_str() != "guidance", s.as_str()));
    scores.dedup();
    scores
        .into_iter()
        .map(|score| {
            let mut by_run: BTreeMap<(usize, &str), BTreeMap<usize, f64>> = BTreeMap::new();
            for (i, m) in ms.iter().enumerate() {
                if let Some(s) = m.scores.get(score) {
                    let first = ms.iter().position(|x| x.run == m.run).unwrap_or(i);
                    by_run
                        .entry((first, m.run.as_str()))
                        .or_default()
                        .insert(m.sampling.steps, s.value.mean);
                }
            }
            let direction = match ms.iter().find_map(|m| m.scores.get(score)) {
                Some(s) if s.higher_is_better => "higher is better",
                _ => "lower is better",
            };
            Panel {
                title: format!("{score} against sampler steps"),
                x_label: "DDIM steps".into(),
                y_label: format!("{score} ({direction})"),
                series: by_run
                    .into_iter()
                    .map(|((_, run), pts)| Series {
                        name: run.to_string(),
                        points: pts.into_iter().map(|(k, v)| (k as f64, v)).collect(),
                        labels: vec![],
                        ..Default::default()
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Runs the whole aggregation and writes the report into `spec.out_dir`.
pub fn aggregate(spec: &ReportSpec) -> Result<AggregateOutcome> {
    crate::plots::register_font(&spec.font)?;
    let mut evals: BTreeMap<String, Vec<EvalMetrics>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut files = Vec::new();
    let mut bench_out = BTreeMap::new();
    let mut bases = Vec::new();
    for bm in &spec.benchmarks {
        let mut list = Vec::new();
        for run in std::iter::once("base").chain(bm.runs.iter().map(String::as_str)) {
            let p = spec
                .root
                .join("results/eval")
                .join(&bm.name)
                .join(run)
                .join("metrics.json");
            let fix = spec
                .fix_eval
                .replace("{benchmark}", &bm.name)
                .replace("{run}", run);
            let m = read_metrics(&p, &fix)?;
            if m.benchmark != bm.name || m.run != run {
                return Err(ReportError::bad(
                    &p,
                    "benchmark/run",
                    format!("says {}/{}, expected {}/{run}", m.benchmark, m.run, bm.name),
                ));
            }
            rows.extend(rows_of(&m));
            list.push(m);
        }
        let bm_rows: Vec<Row> = rows
            .iter()
            .filter(|r| r.benchmark == bm.name)
            .cloned()
            .collect();
        let w = wide(&bm_rows, &spec.optimised());
        let dir = spec.out_dir.join(&bm.name);
        let hl = headline(&spec.headline, &bm.name, &list)?;
        let also = also_headlines(&spec.headline, &bm.name, &list)?;
        let methods = methods_cells(&spec.headline, &list);
        files.extend(experiment_files(spec, &dir, (&hl, &also), &list, &methods)?);
        write_atomic(&dir.join("summary.csv"), summary_csv(&w).as_bytes())?;
        let (h, c) = summary_cells(&w);
        let md = format!(
            "# {}: methods x metrics\n\n{}\n\nAcross seeds: [methods.md](methods.md); by timestep: [drift_by_t.md](drift_by_t.md).\n\nEach cell: mean [95% interval] n=samples. Intervals: t (means), bootstrap (relative improvement, FID), \
             wilson (win rates), u-statistic (diversity), subset-sd (KID), exact (zero by construction). \
             Improvements are oriented so that positive = better than the base on the same seeds. \
             `cnniqa-onnx` is the guidance network through ONNX Runtime (a consistency check, not an independent judge). \
             The base against real data: [base.md](base.md).\n\n{}",
            bm.name,
            bold_paragraphs(&headline_text(&hl, &also)),
            md_table(&h, &c)
        );
        write_atomic(&dir.join("summary.md"), md.as_bytes())?;
        files.extend([dir.join("summary.csv"), dir.join("summary.md")]);
        let mut outs = plots_for(spec, bm, &list)?;
        bases.push(crate::base::base_summary(spec, bm, &list[0])?);
        files.extend(
            [
                "base.md",
                "base_samples.png",
                "real_test.png",
                "samples_real.png",
            ]
            .map(|f| dir.join(f))
            .into_iter()
            .filter(|p| p.exists()),
        );
        let sms = steps_metrics(spec, bm, &list)?;
        if !sms.is_empty() {
            let w = wide(&steps_rows(&sms), &spec.optimised());
            write_atomic(&dir.join("sampler_steps.csv"), summary_csv(&w).as_bytes())?;
            let (h, c) = summary_cells(&w);
            let md = format!(
                "# {}: scores against the number of DDIM sampling steps\n\n{STEPS_CAPTION}\n\n{}",
                bm.name,
                md_table(&h, &c)
            );
            write_atomic(&dir.join("sampler_steps.md"), md.as_bytes())?;
            files.extend(
                ["csv", "md", "png", "svg"].map(|e| dir.join(format!("sampler_steps.{e}"))),
            );
            outs.steps = Some(w);
            plot(&dir.join("sampler_steps"), &steps_panels(&sms))?;
            outs.plots.push((
                format!("{}/sampler_steps", bm.name),
                "Scores against the number of DDIM sampling steps (same seeds; one line per model)"
                    .into(),
            ));
        }
        outs.plots
            .insert(0, (format!("{}/pareto", bm.name), PARETO_CAPTION.into()));
        outs.methods_compact = methods_compact_cells(&spec.headline, &list);
        outs.methods = methods;
        outs.headline = Some(hl);
        outs.also = also;
        bench_out.insert(bm.name.clone(), outs);
        evals.insert(bm.name.clone(), list);
    }
    let paper = paper_comparison(&evals);
    let (ph, pc) = paper_cells(&paper);
    write_atomic(
        &spec.out_dir.join("paper_comparison.md"),
        format!(
            "# Our numbers beside the paper's (SPEC section 1)\n\n{}",
            md_table(&ph, &pc)
        )
        .as_bytes(),
    )?;
    write_atomic(
        &spec.out_dir.join("paper_comparison.csv"),
        cells_csv(&ph, &pc).as_bytes(),
    )?;
    let mut df = long_frame(&rows)?;
    let pq = spec.out_dir.join("metrics.parquet");
    crate::fsio::with_tmp_file(&pq, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| ReportError::io(tmp, e))?;
        ParquetWriter::new(f).finish(&mut df)?;
        Ok(())
    })?;
    let html = crate::html::index_html(spec, &bases, &evals, &paper, &bench_out)?;
    write_atomic(&spec.out_dir.join("index.html"), html.as_bytes())?;
    write_json(
        &spec.out_dir.join("config.json"),
        &serde_json::json!({ "benchmarks": spec.benchmarks, "provenance": spec.provenance }),
    )?;
    files.extend([
        spec.out_dir.join("paper_comparison.md"),
        spec.out_dir.join("paper_comparison.csv"),
        pq,
        spec.out_dir.join("index.html"),
    ]);
    Ok(AggregateOutcome { rows, evals, files })
}
