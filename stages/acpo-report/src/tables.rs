//! The report's tables: every number in long form ([`Row`], `metrics.parquet`), the wide
//! runs x metrics table ([`Wide`]: `summary.csv`/`.md`), number formatting and the CSV and
//! Markdown writers the other report files share.

use crate::schema::EvalMetrics;
use crate::stats::Estimate;
use polars::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

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

pub(crate) fn csv_field(s: &str) -> String {
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

pub(crate) fn summary_csv(w: &Wide) -> String {
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

pub(crate) fn md_escape(s: &str) -> String {
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

/// A CSV of text cells.
pub(crate) fn cells_csv(header: &[String], rows: &[Vec<String>]) -> String {
    let line = |r: &[String]| r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n";
    std::iter::once(line(header))
        .chain(rows.iter().map(|r| line(r)))
        .collect()
}

/// What the across-seed methods table shows.
pub const METHODS_CAPTION: &str = "One row per method, over its training seeds (runs \
    `<method>-s<seed>`): mean of the runs' means [95% t-interval across seeds] (within ±: the \
    runs' own sampling interval, averaged) seeds=n. Held-out judges first (gain over the base on \
    the same seeds, positive = better); the guidance and its ONNX copy last, as what was \
    optimised. Δ held-out MSE is paired with the base on the same draws.";

/// What the by-timestep table shows.
pub const BY_T_CAPTION: &str = "Per run and timestep bin [t_lo, t_hi) of the held-out draws: \
    the paired change of held-out noise-prediction MSE against the base on the same draws, and \
    the anchor distance (mean [95% interval] n=draws). Drift at small t changes fine detail, at \
    large t the layout.";

/// What a sampler-steps table shows (Markdown and HTML).
pub const STEPS_CAPTION: &str = "The same models on the same seeds, sampled with DDIM at the main \
    evaluation's number of steps and at each study's (`report.step_study`). Every run is compared \
    with the base at the same number of steps (improvement, win rate, pixel drift). \
    Each cell: mean [95% interval] n=samples.";
