//! The `study-report` stage of one benchmark: its base-training study runs
//! (`results/study/<config>/`) into `reports/study/<benchmark>/`: `study.csv` (every
//! evaluated point), `study.md` (each configuration at its full budget, best FID first,
//! beside the real-data floor), `quality_vs_cpu.png`/`.svg` (FID and KID against training
//! CPU-minutes, one line per configuration) and `<config>.png` (the sample grid at the full
//! budget).

use crate::error::{ReportError, Result};
use crate::fsio::{read_string, write_atomic};
use crate::plots::{plot, register_font, Panel, Series};
use crate::study::{StudyConfig, StudyMetrics};
use acpo_core::layout::Layout;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What `study-report` reads.
#[derive(Debug, Clone)]
pub struct StudyReportSpec {
    pub benchmark: String,
    /// `study.configs` (those of other benchmarks are skipped).
    pub configs: BTreeMap<String, StudyConfig>,
    /// Where the configurations' runs (`results/study/<config>/`) and the floor are: real
    /// train images against the test statistics (`results/fid/train-vs-test/<benchmark>/`),
    /// the floor a generator can reach.
    pub layout: Layout,
    /// `reports/study/<benchmark>/`.
    pub out_dir: PathBuf,
    /// The TTF for plot text.
    pub font: PathBuf,
}

/// FID and KID of real train images against the test statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    pub fid: f64,
    pub kid: f64,
    pub n: usize,
}

fn read_floor(path: &Path) -> Result<Floor> {
    let v: serde_json::Value = serde_json::from_str(&read_string(path)?)
        .map_err(|e| ReportError::bad(path, "json", e.to_string()))?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| ReportError::bad(path, k, "missing or not a number"))
    };
    Ok(Floor {
        fid: num("fid")?,
        kid: num("kid_mean")?,
        n: num("images_used")? as usize,
    })
}

fn read_run(layout: &Layout, name: &str) -> Result<StudyMetrics> {
    let a = layout.study(name).file("metrics.json");
    crate::evaluate::require(&a, &format!("study run `{name}`"), false)?;
    let path = a.path;
    serde_json::from_str(&read_string(&path)?)
        .map_err(|e| ReportError::bad(&path, "metrics", e.to_string()))
}

/// The overrides of a configuration in one line (`train.lr=0.001, model.channels=48`).
fn describe_set(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                describe_set(x, &key, out);
            }
        }
        serde_json::Value::Null => {}
        x => out.push(format!("{prefix}={x}")),
    }
}

fn csv(runs: &[StudyMetrics]) -> String {
    let mut s = String::from(
        "benchmark,config,steps,batch_size,num_params,forward_gflop,step,images,train_tflop,\
         train_cpu_min,train_wall_min,fid,kid,kid_ci95,heldout_mse,n,n_ref\n",
    );
    for r in runs {
        for p in &r.points {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.4},{},{},{:.3},{:.2},{:.2},{:.3},{:.5},{:.5},{:.5},{},{}",
                r.benchmark,
                r.config,
                r.steps,
                r.batch_size,
                r.num_params,
                r.forward_gflop,
                p.step,
                p.images,
                p.train_tflop,
                p.train_cpu_s / 60.0,
                p.train_wall_s / 60.0,
                p.fid,
                p.kid,
                p.kid_ci95,
                p.heldout_mse,
                p.n,
                p.n_ref
            );
        }
    }
    s
}

fn markdown(spec: &StudyReportSpec, runs: &[StudyMetrics], floor: &Floor) -> String {
    let b = &spec.benchmark;
    let mut s = format!("# Base-training study: {b}\n\n");
    s.push_str(
        "Each configuration is the benchmark's `diffusion.<benchmark>` params with the \
         overrides listed, trained for the same analytic compute (`study.budget_tflop`; a \
         wider model or a larger batch gets fewer steps) and scored with its EMA weights: \
         FID and KID of DDIM samples from fixed seeds against the test split's statistics, \
         and the held-out noise-prediction MSE. CPU-minutes are measured (user + system time \
         of the training, both cores). `study.csv` has every evaluated point; \
         [quality_vs_cpu.png](quality_vs_cpu.png) shows quality against CPU-minutes.\n\n",
    );
    if let Some(first) = runs.first() {
        let _ = writeln!(
            s,
            "Budget {} TFLOP per configuration unless its row says otherwise; FID/KID on {} \
             samples against {} test images (FID is biased upwards at small n, KID is not; \
             compare rows, not other tables).\n",
            first.budget_tflop,
            first.last().map(|p| p.n).unwrap_or(0),
            first.last().map(|p| p.n_ref).unwrap_or(0),
        );
    }
    s.push_str(
        "| configuration | overrides | params | TFLOP | steps x batch | images | CPU-min | FID | KID (95%) | held-out MSE |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut order: Vec<&StudyMetrics> = runs.iter().collect();
    order.sort_by(|a, b| {
        let f = |m: &StudyMetrics| m.last().map(|p| p.fid).unwrap_or(f64::INFINITY);
        f(a).total_cmp(&f(b))
    });
    for r in order {
        let Some(p) = r.last() else { continue };
        let mut set = Vec::new();
        if let Some(c) = spec.configs.get(&r.config) {
            describe_set(&c.set, "", &mut set);
        }
        let _ = writeln!(
            s,
            "| [{}]({}.png): {} | {} | {:.2} M | {:.0} | {} x {} | {} | {:.1} | {:.1} | {:.4} ± {:.4} | {:.4} |",
            r.config,
            r.config,
            r.description,
            if set.is_empty() { "none".into() } else { set.join(", ") },
            r.num_params as f64 / 1e6,
            p.train_tflop,
            r.steps,
            r.batch_size,
            p.images,
            p.train_cpu_s / 60.0,
            p.fid,
            p.kid,
            p.kid_ci95,
            p.heldout_mse
        );
    }
    let _ = writeln!(
        s,
        "| real train images (floor) | {} train vs test images | | | | | | {:.1} | {:.4} | |",
        floor.n, floor.fid, floor.kid
    );
    s
}

fn panels(b: &str, runs: &[StudyMetrics]) -> Vec<Panel> {
    let series = |f: &dyn Fn(&crate::study::StudyPoint) -> f64| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                name: r.config.clone(),
                points: r
                    .points
                    .iter()
                    .map(|p| (p.train_cpu_s / 60.0, f(p)))
                    .collect(),
                labels: vec![],
                ..Default::default()
            })
            .collect()
    };
    vec![
        Panel {
            title: format!("{b}: FID against training compute"),
            x_label: "training CPU-minutes (2 cores)".into(),
            y_label: "FID (lower is better)".into(),
            series: series(&|p| p.fid),
        },
        Panel {
            title: format!("{b}: KID against training compute"),
            x_label: "training CPU-minutes (2 cores)".into(),
            y_label: "KID (lower is better)".into(),
            series: series(&|p| p.kid),
        },
    ]
}

/// Writes the study report of `spec.benchmark`; returns the runs it read.
pub fn study_report(spec: &StudyReportSpec) -> Result<Vec<StudyMetrics>> {
    let names: Vec<&String> = spec
        .configs
        .iter()
        .filter(|(_, c)| c.benchmark == spec.benchmark)
        .map(|(k, _)| k)
        .collect();
    if names.is_empty() {
        return Err(ReportError::config(
            "study.configs",
            format!("no configuration of benchmark `{}`", spec.benchmark),
        ));
    }
    let runs = names
        .iter()
        .map(|n| read_run(&spec.layout, n))
        .collect::<Result<Vec<_>>>()?;
    let floor = read_floor(
        &spec
            .layout
            .fid_floor(&spec.benchmark)
            .path
            .join("metrics.json"),
    )?;
    std::fs::create_dir_all(&spec.out_dir).map_err(|e| ReportError::io(&spec.out_dir, e))?;
    write_atomic(&spec.out_dir.join("study.csv"), csv(&runs).as_bytes())?;
    write_atomic(
        &spec.out_dir.join("study.md"),
        markdown(spec, &runs, &floor).as_bytes(),
    )?;
    register_font(&spec.font)?;
    plot(
        &spec.out_dir.join("quality_vs_cpu"),
        &panels(&spec.benchmark, &runs),
    )?;
    for name in names {
        let src = spec.layout.study(name).path.join("grid.png");
        let dst = spec.out_dir.join(format!("{name}.png"));
        let bytes = std::fs::read(&src).map_err(|e| ReportError::io(&src, e))?;
        write_atomic(&dst, &bytes)?;
    }
    Ok(runs)
}
