//! The ACPO experiment as the evaluations answer it: replicate groups, their means and
//! intervals across training seeds, the generated headline and the Pareto plot.
//!
//! A run named `<method>-s<seed>` (the finetune stages' replicates) belongs to the group
//! `<method>`. Across seeds, a metric's estimate is the mean of the runs' means with a Student-t
//! 95% interval over seeds (n = seeds); beside it, the mean half-width of the runs' own
//! (within-run, sampling-only) intervals. The headline reads only these numbers, so no
//! sentence of the report can disagree with its tables.

use crate::error::{ReportError, Result};
use crate::plots::{Panel, Series};
use crate::schema::EvalMetrics;
use crate::stats::{self, Estimate};
use crate::tables::fmt_num;
use acpo_core::layout::{replicate_group, Layout, Model};
use serde::{Deserialize, Serialize};

/// What the headline tests (params `report.headline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadlineConfig {
    /// The replicate group whose claim is tested (default `acpo`).
    pub method: String,
    /// The group it is compared with on drift (default `perceptual-only`).
    pub baseline: String,
    /// Judges that run the guidance network itself (default `[cnniqa-onnx]`): reported with
    /// the guidance as what was optimised, never as held-out judges.
    pub not_held_out: Vec<String>,
    /// Largest paired held-out MSE increase over the base, in % of the base's MSE, that still
    /// counts as "no drift" (upper end of the across-seed interval; default 5).
    pub mse_tolerance_pct: f64,
    /// Largest anchor distance, as a fraction of the base's held-out MSE, that still counts as
    /// "no drift" (upper end of the across-seed interval; default 0.1).
    pub anchor_tolerance: f64,
    /// Fewest seeds a group needs for intervals across seeds (default 2; at least 2).
    pub min_seeds: usize,
    /// Further replicate groups tested with the same criteria, each with its own sentence after
    /// the main one (default none; cpu: the sweep's `sweep-la<x>` groups).
    pub also: Vec<String>,
}

impl Default for HeadlineConfig {
    fn default() -> Self {
        Self {
            method: "acpo".into(),
            baseline: "perceptual-only".into(),
            not_held_out: vec!["cnniqa-onnx".into()],
            mse_tolerance_pct: 5.0,
            anchor_tolerance: 0.1,
            min_seeds: 2,
            also: vec![],
        }
    }
}

impl HeadlineConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.min_seeds < 2 {
            return Err(ReportError::config(
                "report.headline.min_seeds",
                format!(
                    "{}: intervals across seeds need at least 2 seeds",
                    self.min_seeds
                ),
            ));
        }
        for (k, v) in [
            ("mse_tolerance_pct", self.mse_tolerance_pct),
            ("anchor_tolerance", self.anchor_tolerance),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ReportError::config(
                    format!("report.headline.{k}"),
                    format!("{v} is not a finite number >= 0"),
                ));
            }
        }
        Ok(())
    }

    /// Whether score `name` is a held-out judge (not the guidance, not its ONNX copy).
    pub fn is_held_out(&self, m: &EvalMetrics, name: &str) -> bool {
        m.scores.get(name).is_some_and(|s| s.role != "guidance")
            && !self.not_held_out.iter().any(|n| n == name)
    }

    /// The held-out judges of `m`'s scores (or, with `held_out` false, the rest: the guidance
    /// and the judges that run the guidance network), in the scores' order.
    pub fn judges(&self, m: &EvalMetrics, held_out: bool) -> Vec<String> {
        m.scores
            .keys()
            .filter(|n| self.is_held_out(m, n) == held_out)
            .cloned()
            .collect()
    }
}

/// The runs of each replicate group, in the order the groups first appear.
pub fn groups(evals: &[EvalMetrics]) -> Vec<(String, Vec<&EvalMetrics>)> {
    let mut out: Vec<(String, Vec<&EvalMetrics>)> = Vec::new();
    for m in evals {
        if let Some(g) = replicate_group(&m.run) {
            match out.iter_mut().find(|(n, _)| n == g) {
                Some((_, v)) => v.push(m),
                None => out.push((g.to_string(), vec![m])),
            }
        }
    }
    out
}

/// One metric across the seeds of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcrossSeeds {
    /// Mean of the runs' means, Student-t interval over seeds (`n` = seeds).
    pub across: Estimate,
    /// Mean half-width of the runs' own intervals (sampling noise only), when they have one.
    pub within_half: Option<f64>,
}

/// `metric` of every run of a group (runs without it are skipped).
pub fn across_seeds(
    runs: &[&EvalMetrics],
    metric: impl Fn(&EvalMetrics) -> Option<Estimate>,
) -> Option<AcrossSeeds> {
    let es: Vec<Estimate> = runs.iter().filter_map(|m| metric(m)).collect();
    if es.is_empty() {
        return None;
    }
    let means: Vec<f64> = es.iter().map(|e| e.mean).collect();
    let halves: Vec<f64> = es.iter().filter_map(Estimate::half_width).collect();
    Some(AcrossSeeds {
        across: stats::mean_t(&means),
        within_half: (!halves.is_empty()).then(|| halves.iter().sum::<f64>() / halves.len() as f64),
    })
}

/// `mean [lo, hi] (within ±h) seeds=n`.
pub fn fmt_across(a: &AcrossSeeds) -> String {
    let e = &a.across;
    let mut s = match (e.lo, e.hi) {
        (Some(lo), Some(hi)) => format!("{} [{}, {}]", fmt_num(e.mean), fmt_num(lo), fmt_num(hi)),
        _ => fmt_num(e.mean),
    };
    if let Some(h) = a.within_half {
        s.push_str(&format!(" (within ±{})", fmt_num(h)));
    }
    s.push_str(&format!(" seeds={}", e.n));
    s
}

/// `mean [lo, hi]` with three significant digits: the compact cell of the page's main tables
/// (the seed count is its own column there, the sampling interval in the full table).
pub fn fmt_across_short(a: &AcrossSeeds) -> String {
    let e = &a.across;
    match (e.lo, e.hi) {
        (Some(lo), Some(hi)) => format!("{} [{}, {}]", short(e.mean), short(lo), short(hi)),
        _ => short(e.mean),
    }
}

/// A number with three significant digits (scientific below 1e-3 and from 1e5).
pub fn short(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        // also -0.0, which a gain of exactly nothing can be
        return "0.0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let digits = (2 - a.log10().floor() as i32).clamp(0, 5) as usize;
    format!("{v:.digits$}")
}

/// The metrics of a group row, held-out judges first: (column, value of one run).
type Column = (String, Box<dyn Fn(&EvalMetrics) -> Option<Estimate>>);

fn columns(cfg: &HeadlineConfig, sample: &EvalMetrics) -> Vec<Column> {
    let mut cols: Vec<Column> = Vec::new();
    for j in cfg.judges(sample, true) {
        let k = j.clone();
        cols.push((
            format!("{j} gain %"),
            Box::new(move |m| m.improvement.get(&k).map(|i| i.relative_pct.clone())),
        ));
    }
    cols.push((
        "Δ held-out MSE".into(),
        Box::new(|m| m.heldout_mse_delta.clone()),
    ));
    cols.push((
        "anchor distance".into(),
        Box::new(|m| Some(m.anchor_distance.clone())),
    ));
    cols.push((
        "pixel drift".into(),
        Box::new(|m| Some(m.pixel_drift.clone())),
    ));
    cols.push((
        "FID".into(),
        Box::new(|m| m.fid_kid.as_ref().map(|f| f.fid.clone())),
    ));
    cols.push((
        "KID".into(),
        Box::new(|m| m.fid_kid.as_ref().map(|f| f.kid.clone())),
    ));
    for g in cfg.judges(sample, false) {
        let k = g.clone();
        cols.push((
            format!("{g} gain % (optimised)"),
            Box::new(move |m| m.improvement.get(&k).map(|i| i.relative_pct.clone())),
        ));
    }
    cols
}

/// The columns the compact methods table leaves to the full one.
const NOT_COMPACT: [&str; 2] = ["FID", "KID"];

/// The methods table: one row per replicate group, cells across seeds, held-out judges first.
pub fn methods_cells(
    cfg: &HeadlineConfig,
    evals: &[EvalMetrics],
) -> (Vec<String>, Vec<Vec<String>>) {
    group_table(cfg, evals, false)
}

/// The methods table as the page shows it first: the same rows, without FID and KID (from a
/// few hundred samples, next to meaningless per run), cells as `mean [lo, hi]` with three
/// significant digits ([`fmt_across_short`]).
pub fn methods_compact_cells(
    cfg: &HeadlineConfig,
    evals: &[EvalMetrics],
) -> (Vec<String>, Vec<Vec<String>>) {
    group_table(cfg, evals, true)
}

fn group_table(
    cfg: &HeadlineConfig,
    evals: &[EvalMetrics],
    compact: bool,
) -> (Vec<String>, Vec<Vec<String>>) {
    let gs = groups(evals);
    let Some(sample) = gs.first().map(|(_, v)| v[0]) else {
        return (vec![], vec![]);
    };
    let mut cols = columns(cfg, sample);
    if compact {
        cols.retain(|(n, _)| !NOT_COMPACT.contains(&n.as_str()));
    }
    let cell = if compact {
        fmt_across_short
    } else {
        fmt_across
    };
    let mut header = vec!["method".to_string(), "seeds".into()];
    header.extend(cols.iter().map(|(n, _)| n.clone()));
    let rows = gs
        .iter()
        .map(|(g, runs)| {
            let mut r = vec![g.clone(), runs.len().to_string()];
            r.extend(cols.iter().map(|(_, f)| {
                across_seeds(runs, f)
                    .map(|a| cell(&a))
                    .unwrap_or_else(|| "–".into())
            }));
            r
        })
        .collect();
    (header, rows)
}

/// What the headline says for one benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every held-out judge improved and MSE and drift stayed within tolerance.
    Holds,
    /// Drift within tolerance, but not every held-out judge improved.
    FailsOnQuality,
    /// Every held-out judge improved, but MSE or drift left the tolerance.
    FailsOnDrift,
    FailsOnBoth,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Holds => "the claim holds",
            Verdict::FailsOnQuality => "the claim fails on quality",
            Verdict::FailsOnDrift => "the claim fails on drift",
            Verdict::FailsOnBoth => "the claim fails on quality and on drift",
        }
    }
}

/// The generated headline of one benchmark, with the numbers it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    pub benchmark: String,
    pub method: String,
    pub seeds: usize,
    pub verdict: Verdict,
    /// Held-out judge -> relative gain (%) across seeds.
    pub judges: Vec<(String, AcrossSeeds)>,
    pub mse_delta: AcrossSeeds,
    pub anchor_distance: AcrossSeeds,
    pub base_mse: f64,
    /// The tolerances in the units of the numbers above.
    pub mse_limit: f64,
    pub anchor_limit: f64,
    /// Whether the baseline group drifted more (anchor distance, intervals apart); `None`
    /// when its interval overlaps the method's or it was not run.
    pub baseline_drifted_more: Option<bool>,
    pub baseline_anchor: Option<AcrossSeeds>,
    /// The sentence, built from the fields above.
    pub text: String,
}

/// The headlines of `cfg.also`: each group tested as `cfg.method` is, in the order given.
pub fn also_headlines(
    cfg: &HeadlineConfig,
    benchmark: &str,
    evals: &[EvalMetrics],
) -> Result<Vec<Headline>> {
    cfg.also
        .iter()
        .map(|g| {
            let c = HeadlineConfig {
                method: g.clone(),
                ..cfg.clone()
            };
            headline(&c, benchmark, evals)
        })
        .collect()
}

/// The main headline's sentence followed by those of the `also` groups (one paragraph each).
pub fn headline_text(main: &Headline, also: &[Headline]) -> String {
    std::iter::once(main)
        .chain(also)
        .map(|h| h.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The headline of one benchmark from its evaluations (`evals[0]` may be the base; the base
/// is found by run name).
pub fn headline(cfg: &HeadlineConfig, benchmark: &str, evals: &[EvalMetrics]) -> Result<Headline> {
    cfg.validate()?;
    let base = evals.iter().find(|m| m.run == "base").ok_or_else(|| {
        ReportError::config(
            "report.runs",
            format!("{benchmark}: the headline needs the base's evaluation"),
        )
    })?;
    let gs = groups(evals);
    let runs = gs
        .iter()
        .find(|(g, _)| *g == cfg.method)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    if runs.len() < cfg.min_seeds {
        return Err(ReportError::config(
            "report.runs",
            format!(
                "{benchmark}: the headline (report.headline.method `{}`) needs at least {} seeds (`{}-s<seed>` runs) for intervals across seeds, report.runs has {}",
                cfg.method,
                cfg.min_seeds,
                cfg.method,
                runs.len()
            ),
        ));
    }
    let need = |what: &str, a: Option<AcrossSeeds>| {
        a.ok_or_else(|| {
            ReportError::bad(
                Layout::default()
                    .eval(Model::Bench(benchmark), &format!("{}-s*", cfg.method))
                    .path
                    .join("metrics.json"),
                what,
                "missing from the evaluations (re-run them with this acpo)",
            )
        })
    };
    let judges = cfg
        .judges(runs[0], true)
        .iter()
        .map(|j| {
            let a = across_seeds(&runs, |m| {
                m.improvement.get(j).map(|i| i.relative_pct.clone())
            });
            Ok((j.clone(), need(&format!("improvement.{j}"), a)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mse_delta = need(
        "heldout_mse_delta",
        across_seeds(&runs, |m| m.heldout_mse_delta.clone()),
    )?;
    let anchor_distance = need(
        "anchor_distance",
        across_seeds(&runs, |m| Some(m.anchor_distance.clone())),
    )?;
    let base_mse = base.heldout_mse.mean;
    let mse_limit = cfg.mse_tolerance_pct / 100.0 * base_mse;
    let anchor_limit = cfg.anchor_tolerance * base_mse;
    let lo = |a: &AcrossSeeds| a.across.lo.unwrap_or(a.across.mean);
    let hi = |a: &AcrossSeeds| a.across.hi.unwrap_or(a.across.mean);
    let quality_ok = !judges.is_empty() && judges.iter().all(|(_, a)| lo(a) > 0.0);
    let drift_ok = hi(&mse_delta) <= mse_limit && hi(&anchor_distance) <= anchor_limit;
    let verdict = match (quality_ok, drift_ok) {
        (true, true) => Verdict::Holds,
        (false, true) => Verdict::FailsOnQuality,
        (true, false) => Verdict::FailsOnDrift,
        (false, false) => Verdict::FailsOnBoth,
    };
    let baseline_anchor = gs
        .iter()
        .find(|(g, _)| *g == cfg.baseline)
        .and_then(|(_, r)| across_seeds(r, |m| Some(m.anchor_distance.clone())));
    let baseline_drifted_more = baseline_anchor.as_ref().and_then(|b| {
        if lo(b) > hi(&anchor_distance) {
            Some(true)
        } else if hi(b) < lo(&anchor_distance) {
            Some(false)
        } else {
            None
        }
    });
    let mut h = Headline {
        benchmark: benchmark.to_string(),
        method: cfg.method.clone(),
        seeds: runs.len(),
        verdict,
        judges,
        mse_delta,
        anchor_distance,
        base_mse,
        mse_limit,
        anchor_limit,
        baseline_drifted_more,
        baseline_anchor,
        text: String::new(),
    };
    h.text = sentence(cfg, &h);
    Ok(h)
}

fn sentence(cfg: &HeadlineConfig, h: &Headline) -> String {
    let judges = h
        .judges
        .iter()
        .map(|(j, a)| format!("{j} gain (%) {}", fmt_across(a)))
        .collect::<Vec<_>>()
        .join("; ");
    let rose = |a: &AcrossSeeds| a.across.lo.is_some_and(|lo| lo > 0.0);
    let quality = if h.judges.iter().all(|(_, a)| rose(a)) {
        "raised every held-out judge".to_string()
    } else {
        let not: Vec<&str> = h
            .judges
            .iter()
            .filter(|(_, a)| !rose(a))
            .map(|(j, _)| j.as_str())
            .collect();
        format!("did not raise {} (interval not above 0)", not.join(", "))
    };
    let within = |a: &AcrossSeeds, lim: f64| a.across.hi.unwrap_or(a.across.mean) <= lim;
    let drift = format!(
        "held-out MSE changed by {} against the base's {} ({} the tolerance of +{}, {}% of it), anchor distance {} ({} the tolerance of {}, {}x the base's MSE)",
        fmt_across(&h.mse_delta),
        fmt_num(h.base_mse),
        if within(&h.mse_delta, h.mse_limit) { "within" } else { "beyond" },
        fmt_num(h.mse_limit),
        fmt_num(cfg.mse_tolerance_pct),
        fmt_across(&h.anchor_distance),
        if within(&h.anchor_distance, h.anchor_limit) { "within" } else { "beyond" },
        fmt_num(h.anchor_limit),
        fmt_num(cfg.anchor_tolerance),
    );
    let baseline = match (&h.baseline_anchor, h.baseline_drifted_more) {
        (None, _) => format!("{} was not run", cfg.baseline),
        (Some(b), Some(true)) => format!(
            "{} drifted more (anchor distance {})",
            cfg.baseline,
            fmt_across(b)
        ),
        (Some(b), Some(false)) => format!(
            "{} drifted less (anchor distance {})",
            cfg.baseline,
            fmt_across(b)
        ),
        (Some(b), None) => format!(
            "{} did not drift clearly more or less (anchor distance {}, intervals overlap)",
            cfg.baseline,
            fmt_across(b)
        ),
    };
    format!(
        "{}: {} — {} ({} seeds) {quality} ({judges}); {drift}; {baseline}.",
        h.benchmark,
        h.verdict.text(),
        h.method,
        h.seeds
    )
}

/// A point and its error-bar half-widths.
type ErrPoint = ((f64, f64), (f64, f64));

/// One point of the Pareto plot: x, y and their across-seed half-widths (0 for single runs).
fn point(
    runs: &[&EvalMetrics],
    x: &dyn Fn(&EvalMetrics) -> Option<Estimate>,
    y: &dyn Fn(&EvalMetrics) -> Option<Estimate>,
) -> Option<ErrPoint> {
    let ax = across_seeds(runs, x)?;
    let ay = across_seeds(runs, y)?;
    let half = |a: &AcrossSeeds| a.across.half_width().unwrap_or(0.0);
    Some(((ax.across.mean, ay.across.mean), (half(&ax), half(&ay))))
}

/// The Pareto panels of one benchmark: each held-out judge's gain against the paired Δ
/// held-out MSE and against the anchor distance. The anchor sweep (every run with a λa of
/// `cfg.method`'s kind, replicate groups averaged) is one line; every other replicate group
/// and run is its own point. Error bars: 95% intervals across seeds, where there are seeds.
pub fn pareto_panels(cfg: &HeadlineConfig, benchmark: &str, evals: &[EvalMetrics]) -> Vec<Panel> {
    let tuned: Vec<&EvalMetrics> = evals.iter().filter(|m| m.run != "base").collect();
    let Some(sample) = tuned.first() else {
        return vec![];
    };
    // Units: a group (replicates) or a single run, with its λa when it is on the sweep line.
    let mut units: Vec<(String, Vec<&EvalMetrics>)> = Vec::new();
    for m in &tuned {
        let name = replicate_group(&m.run).unwrap_or(&m.run).to_string();
        match units.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(m),
            None => units.push((name, vec![m])),
        }
    }
    let on_sweep = |runs: &[&EvalMetrics]| {
        let m = runs[0];
        let variant = m.run.starts_with("variant-");
        let kind = m.info.method == cfg.method || m.info.method == cfg.baseline;
        (!variant && kind).then_some(m.info.lambda_a).flatten()
    };
    let held = cfg.judges(sample, true);
    type Getter = Box<dyn Fn(&EvalMetrics) -> Option<Estimate>>;
    let xs: [(&str, Getter); 2] = [
        (
            "paired Δ held-out MSE vs base",
            Box::new(|m| m.heldout_mse_delta.clone()),
        ),
        (
            "anchor distance to the base",
            Box::new(|m| Some(m.anchor_distance.clone())),
        ),
    ];
    let mut panels = Vec::new();
    for j in &held {
        for (x_label, x) in &xs {
            let jj = j.clone();
            let y = move |m: &EvalMetrics| m.improvement.get(&jj).map(|i| i.relative_pct.clone());
            let mut line = Series {
                name: format!("{} sweep over λa", cfg.method),
                ..Default::default()
            };
            let mut sweep: Vec<(f64, ErrPoint)> = units
                .iter()
                .filter_map(|(_, r)| Some((on_sweep(r)?, point(r, x.as_ref(), &y)?)))
                .collect();
            sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (la, (p, e)) in sweep {
                line.points.push(p);
                line.err.push(e);
                line.labels.push(format!(" λa={}", fmt_num(la)));
            }
            let mut series = vec![line];
            for (name, r) in &units {
                if let Some((p, e)) = point(r, x.as_ref(), &y) {
                    if on_sweep(r).is_some() && replicate_group(&r[0].run).is_none() {
                        continue; // a single sweep run is a point of the line only
                    }
                    series.push(Series {
                        name: if r.len() > 1 {
                            format!("{name} ({} seeds)", r.len())
                        } else {
                            name.clone()
                        },
                        points: vec![p],
                        err: vec![e],
                        labels: vec![],
                        points_only: true,
                    });
                }
            }
            panels.push(Panel {
                title: format!("{benchmark}: {j} gain against {x_label}"),
                x_label: x_label.to_string(),
                y_label: format!("{j} gain over base (%)"),
                series,
            });
        }
    }
    panels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{DiversityMetrics, RunInfo, SamplingInfo, Score};
    use crate::stats::Improvement;
    use std::collections::BTreeMap;

    fn est(mean: f64, half: f64, n: usize) -> Estimate {
        Estimate {
            mean,
            lo: Some(mean - half),
            hi: Some(mean + half),
            n,
            interval: "t".into(),
            note: None,
        }
    }

    #[test]
    fn compact_cells_have_three_significant_digits_and_no_seed_count() {
        assert_eq!(short(5.9612), "5.96");
        assert_eq!(short(-36.54), "-36.5");
        assert_eq!(short(142.4), "142");
        assert_eq!(short(0.013836), "0.0138");
        assert_eq!(short(0.0), "0.0");
        assert_eq!(short(-0.0), "0.0");
        assert_eq!(short(8.882e-4), "8.88e-4");
        assert_eq!(short(f64::NAN), "n/a");
        let a = AcrossSeeds {
            across: est(5.9612, 42.5, 3),
            within_half: Some(6.356),
        };
        assert_eq!(fmt_across_short(&a), "5.96 [-36.5, 48.5]");
        assert_eq!(
            fmt_across(&a),
            "5.961 [-36.54, 48.46] (within ±6.356) seeds=3"
        );
    }

    /// A made-up evaluation: `gains` per held-out judge (%), paired Δ MSE and anchor distance.
    fn eval(
        run: &str,
        method: &str,
        la: f64,
        gains: [f64; 2],
        mse_delta: f64,
        anchor: f64,
    ) -> EvalMetrics {
        let mut scores = BTreeMap::new();
        let mut improvement = BTreeMap::new();
        for (name, role, g) in [
            ("brisque", "judge", gains[0]),
            ("niqe", "judge", gains[1]),
            ("guidance", "guidance", 50.0),
            ("cnniqa-onnx", "judge", 40.0),
        ] {
            scores.insert(
                name.to_string(),
                Score {
                    role: role.into(),
                    higher_is_better: false,
                    value: est(30.0, 1.0, 256),
                },
            );
            improvement.insert(
                name.to_string(),
                Improvement {
                    relative_pct: est(g, 1.0, 256),
                    absolute: est(g / 10.0, 0.1, 256),
                    win_rate_pct: est(60.0, 5.0, 256),
                },
            );
        }
        EvalMetrics {
            schema: crate::schema::SCHEMA,
            benchmark: "b".into(),
            run: run.into(),
            info: RunInfo {
                method: method.into(),
                lambda_a: Some(la),
                ..Default::default()
            },
            sampling: SamplingInfo {
                seed: 0,
                samples: 256,
                sampler: "ddim".into(),
                steps: 25,
                eta: 0.0,
                spacing: "leading".into(),
            },
            scores,
            improvement,
            real_test: None,
            heldout_mse: est(0.05 + mse_delta, 0.001, 500),
            heldout_mse_delta: Some(est(mse_delta, 0.0005, 500)),
            by_t: vec![],
            anchor_distance: est(anchor, 0.0002, 500),
            pixel_drift: est(0.01, 0.001, 256),
            diversity: DiversityMetrics {
                pixel: est(0.3, 0.01, 256),
                inception: None,
            },
            fid_kid: None,
            base_quality: None,
            notes: vec![],
            seconds: BTreeMap::new(),
        }
    }

    fn base() -> EvalMetrics {
        let mut b = eval("base", "base", 0.0, [0.0, 0.0], 0.0, 0.0);
        b.heldout_mse = est(0.05, 0.001, 500);
        b.heldout_mse_delta = None;
        b.improvement.clear();
        b
    }

    /// Three acpo seeds with the given gains and drift, and three perceptual-only seeds that
    /// drift by 0.02 (far beyond the acpo runs here).
    fn world(gains: [f64; 2], mse_delta: f64, anchor: f64) -> Vec<EvalMetrics> {
        let mut v = vec![base()];
        for s in 0..3 {
            let jitter = s as f64 * 0.1;
            v.push(eval(
                &format!("acpo-s{s}"),
                "acpo",
                1.0,
                [gains[0] + jitter, gains[1] + jitter],
                mse_delta,
                anchor,
            ));
            v.push(eval(
                &format!("perceptual-only-s{s}"),
                "perceptual-only",
                0.0,
                [20.0, 5.0],
                0.02,
                0.02 + jitter / 100.0,
            ));
        }
        v.push(eval("sweep-la10", "acpo", 10.0, [1.0, 0.5], 0.0001, 0.0001));
        v
    }

    #[test]
    fn run_names_group_by_their_seed_suffix() {
        assert_eq!(replicate_group("acpo-data-s12"), Some("acpo-data"));
        assert_eq!(replicate_group("acpo"), None);
        assert_eq!(replicate_group("sweep-la0.1"), None);
        assert_eq!(replicate_group("variant-s"), None);
    }

    #[test]
    fn across_seeds_is_a_t_interval_over_run_means() {
        let runs = [
            eval("a-s0", "acpo", 1.0, [1.0, 0.0], 0.0, 0.0),
            eval("a-s1", "acpo", 1.0, [3.0, 0.0], 0.0, 0.0),
        ];
        let refs: Vec<&EvalMetrics> = runs.iter().collect();
        let a = across_seeds(&refs, |m| {
            Some(m.improvement["brisque"].relative_pct.clone())
        })
        .unwrap();
        // mean 2, sd sqrt(2), t(0.975, 1) = 12.706: half-width 12.706 * sqrt(2) / sqrt(2).
        assert_eq!(a.across.n, 2);
        assert!((a.across.mean - 2.0).abs() < 1e-12);
        assert!(
            (a.across.hi.unwrap() - (2.0 + 12.706)).abs() < 1e-2,
            "{a:?}"
        );
        assert_eq!(a.within_half, Some(1.0));
    }

    #[test]
    fn the_headline_holds_when_judges_rise_and_drift_stays_small() {
        let cfg = HeadlineConfig::default();
        let h = headline(&cfg, "b", &world([10.0, 4.0], 0.0005, 0.001)).unwrap();
        assert_eq!(h.verdict, Verdict::Holds, "{}", h.text);
        // cnniqa-onnx is the guidance network: never a held-out judge.
        let names: Vec<&str> = h.judges.iter().map(|(j, _)| j.as_str()).collect();
        assert_eq!(names, ["brisque", "niqe"]);
        assert_eq!(h.baseline_drifted_more, Some(true));
        assert!(
            h.text
                .starts_with("b: the claim holds — acpo (3 seeds) raised every held-out judge"),
            "{}",
            h.text
        );
        assert!(
            h.text.contains("perceptual-only drifted more"),
            "{}",
            h.text
        );
    }

    /// `also` groups (the sweep's replicates) get their own verdicts, after the main one; a group
    /// with too few seeds is an error naming the key.
    #[test]
    fn also_groups_are_tested_like_the_method() {
        let mut v = world([10.0, 4.0], 0.0005, 0.001);
        for s in 0..2 {
            let g = [-1.0 - s as f64, 2.0];
            v.push(eval(
                &format!("sweep-la10-s{s}"),
                "acpo",
                10.0,
                g,
                0.0001,
                0.0001,
            ));
        }
        let cfg = HeadlineConfig {
            also: vec!["sweep-la10".into()],
            ..Default::default()
        };
        let main = headline(&cfg, "b", &v).unwrap();
        let also = also_headlines(&cfg, "b", &v).unwrap();
        assert_eq!(main.verdict, Verdict::Holds);
        assert_eq!(also.len(), 1);
        assert_eq!((also[0].method.as_str(), also[0].seeds), ("sweep-la10", 2));
        assert_eq!(also[0].verdict, Verdict::FailsOnQuality, "{}", also[0].text);
        let text = headline_text(&main, &also);
        assert!(text.starts_with(&main.text) && text.ends_with(&also[0].text));
        assert!(text.contains("\n\nb: the claim fails on quality — sweep-la10 (2 seeds)"));
        let few = HeadlineConfig {
            also: vec!["sweep-la30".into()],
            ..Default::default()
        };
        let e = also_headlines(&few, "b", &v).unwrap_err().to_string();
        assert!(e.contains("report.runs") && e.contains("sweep-la30"), "{e}");
    }

    #[test]
    fn the_headline_fails_on_quality_when_a_judge_does_not_rise() {
        let h = headline(
            &HeadlineConfig::default(),
            "b",
            &world([10.0, -0.5], 0.0005, 0.001),
        )
        .unwrap();
        assert_eq!(h.verdict, Verdict::FailsOnQuality, "{}", h.text);
        assert!(h.text.contains("did not raise niqe"), "{}", h.text);
    }

    #[test]
    fn the_headline_fails_on_drift_when_mse_leaves_the_tolerance() {
        // 5% of the base's 0.05 is 0.0025; 0.004 is beyond it.
        let h = headline(
            &HeadlineConfig::default(),
            "b",
            &world([10.0, 4.0], 0.004, 0.001),
        )
        .unwrap();
        assert_eq!(h.verdict, Verdict::FailsOnDrift, "{}", h.text);
        assert!(
            h.text.contains("beyond the tolerance of +0.00250"),
            "{}",
            h.text
        );
        let both = headline(
            &HeadlineConfig::default(),
            "b",
            &world([-3.0, 4.0], 0.0005, 0.02),
        )
        .unwrap();
        assert_eq!(both.verdict, Verdict::FailsOnBoth, "{}", both.text);
        assert_eq!(both.baseline_drifted_more, None, "{}", both.text);
    }

    #[test]
    fn fewer_seeds_than_asked_is_an_error_naming_the_key() {
        let mut w = world([10.0, 4.0], 0.0005, 0.001);
        w.retain(|m| m.run != "acpo-s1" && m.run != "acpo-s2");
        let e = headline(&HeadlineConfig::default(), "b", &w).unwrap_err();
        assert!(matches!(e, ReportError::Config { .. }), "{e}");
        assert!(
            e.to_string().contains("report.runs") && e.to_string().contains("at least 2 seeds"),
            "{e}"
        );
        let bad = HeadlineConfig {
            min_seeds: 1,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("report.headline.min_seeds"));
    }

    #[test]
    fn the_methods_table_leads_with_held_out_judges() {
        let (h, rows) = methods_cells(
            &HeadlineConfig::default(),
            &world([10.0, 4.0], 0.0005, 0.001),
        );
        assert_eq!(
            &h[..4],
            ["method", "seeds", "brisque gain %", "niqe gain %"]
        );
        assert!(h.last().unwrap().contains("(optimised)"));
        assert_eq!(rows.len(), 2);
        assert!(rows[0][2].contains("seeds=3"), "{:?}", rows[0]);
    }

    #[test]
    fn the_pareto_plot_has_the_sweep_line_and_the_groups() {
        let panels = pareto_panels(
            &HeadlineConfig::default(),
            "b",
            &world([10.0, 4.0], 0.0005, 0.001),
        );
        // two held-out judges x two drift axes
        assert_eq!(panels.len(), 4);
        let line = &panels[0].series[0];
        // perceptual-only (λa 0), acpo (1), sweep-la10 (10)
        assert_eq!(line.labels, [" λa=0.000", " λa=1.000", " λa=10.00"]);
        assert!(line.err[1].1 > 0.0, "acpo has seeds: an error bar");
        assert_eq!(line.err[2], (0.0, 0.0));
        let names: Vec<&str> = panels[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "acpo sweep over λa",
                "acpo (3 seeds)",
                "perceptual-only (3 seeds)"
            ]
        );
    }
}
