//! The `aggregate` stage: every evaluation's `metrics.json` into tables (polars), plots and
//! `reports/index.html`.
//!
//! Outputs in `reports/`: `<benchmark>/summary.csv` and `summary.md` (methods x metrics),
//! `paper_comparison.csv`/`.md` (our numbers beside the paper's, SPEC section 1, with how the
//! protocol differs), `metrics.parquet` (every number in long form), plots
//! (`<benchmark>/*.png` and `.svg`), sample grids and `index.html`; with a sampler-steps study
//! (`report.step_study`) also `<benchmark>/sampler_steps.{csv,md,png,svg}`.

use crate::error::{ReportError, Result};
use crate::experiment::{
    also_headlines, headline, headline_text, methods_cells, methods_compact_cells, pareto_panels,
    Headline,
};
use crate::figures::{plots_for, steps_panels, PARETO_CAPTION};
use crate::fsio::{write_atomic, write_json};
use crate::paper::{paper_cells, paper_comparison};
use crate::plots::plot;
use crate::schema::{read_metrics, EvalMetrics};
use crate::spec::{BenchmarkSpec, ReportSpec};
use crate::stats::Estimate;
use crate::tables::{
    cells_csv, fmt_estimate, long_frame, md_escape, md_table, rows_of, summary_cells, summary_csv,
    wide, Row, BY_T_CAPTION, METHODS_CAPTION, REAL_TEST_ROW, STEPS_CAPTION,
};
use acpo_core::layout::Model;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
            let a = spec.layout().step_eval(name).file(run).file("metrics.json");
            let m = read_metrics(&a.path, &a.fix())?;
            let p = a.path;
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
            let a = spec
                .layout()
                .eval(Model::Bench(&bm.name), run)
                .file("metrics.json");
            let m = read_metrics(&a.path, &a.fix())?;
            let p = a.path;
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
