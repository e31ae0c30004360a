//! The figures of one benchmark: training and fine-tuning curves, quality against drift, the
//! sampler-steps panels and the sample grids (drawn by [`crate::plots`]).

use crate::error::Result;
use crate::fsio::read_csv;
use crate::html::BenchOutputs;
use crate::plots::{plot, write_grid_png, Panel, Series};
use crate::schema::EvalMetrics;
use crate::spec::{BenchmarkSpec, ReportSpec};
use crate::tables::fmt_num;
use acpo_core::layout::Model;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a CSV of numbers with a header into columns (for `loss.csv` and `curve.csv`).
/// Empty or unreadable fields (values not logged at that step) read as NaN and are not drawn.
pub fn read_numeric_csv(path: &Path) -> Result<BTreeMap<String, Vec<f64>>> {
    let csv = read_csv(path)?;
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); csv.header.len()];
    for (_, fields) in &csv.rows {
        for (col, v) in cols.iter_mut().zip(fields) {
            col.push(v.parse().unwrap_or(f64::NAN));
        }
    }
    Ok(csv.header.into_iter().zip(cols).collect())
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

pub(crate) fn plots_for(
    spec: &ReportSpec,
    bm: &BenchmarkSpec,
    evals: &[EvalMetrics],
) -> Result<BenchOutputs> {
    let mut out = BenchOutputs::default();
    let dir = spec.out_dir.join(&bm.name);
    let rel = |stem: &str| format!("{}/{stem}", bm.name);
    // Training curve of the base.
    let layout = spec.layout();
    let model = Model::Bench(&bm.name);
    let base_loss = layout.base(model).path.join("loss.csv");
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
        let d = layout.finetune(model, run).path;
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
        let p = layout.eval(model, &m.run).path.join("samples.safetensors");
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

/// One panel per score (guidance, then the judges): the score's mean against the number of
/// DDIM steps, one line per run.
pub(crate) fn steps_panels(ms: &[EvalMetrics]) -> Vec<Panel> {
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

/// What the Pareto plot shows.
pub const PARETO_CAPTION: &str = "Quality against drift: each held-out judge's gain over the base \
    against the paired change of held-out MSE and against the anchor distance. The line is the \
    anchor-weight sweep (λa = 0 is perceptual-only); the other points are the remaining methods \
    and variants. Error bars: 95% intervals across training seeds, where a point has seeds.";
