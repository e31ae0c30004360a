//! The text-to-image report (`text-report@<data>`): the prompt-conditioned base and every
//! run fine-tuned on prompts, from the `evaluate-text` metrics, into
//! `reports/<data>-text/summary.md` (+ `summary.csv`, sample grids).
//!
//! The main table has one row per method and held-out set: each run's relative improvement
//! over the base (guidance and held-out judges), win rate, pixel drift and diversity per prompt,
//! averaged across training seeds with a t-interval over seeds; the fine-tuning probe's drift
//! (anchor distance, held-out MSE change on the base's captioned validation images) beside it.
//! Before it, the verdict: the main report's headline rule (`report.headline`) applied to every
//! method on every held-out set. Then the same per category, the base's own scores, and the
//! paper's numbers with how the protocol differs.

use crate::error::{ReportError, Result};
use crate::experiment::{short, HeadlineConfig, Verdict};
use crate::fsio::write_atomic;
use crate::stats;
use crate::tables::{fmt_estimate, fmt_num, md_table};
use crate::text_eval::{read_text_metrics, TextEvalMetrics};
use acpo_core::layout::{Layout, Model};
use std::path::{Path, PathBuf};

/// Where the report reads and writes.
#[derive(Debug, Clone)]
pub struct TextReportSpec {
    pub data: String,
    /// Where the evaluations (`results/eval-text/<data>/`), the runs
    /// (`results/finetune/<data>-text/`) and the base are.
    pub layout: Layout,
    /// Runs (`<method>-s<seed>`) in the order of the table.
    pub runs: Vec<String>,
    /// `reports/<data>-text/`.
    pub out_dir: PathBuf,
    /// The commit the report is built from.
    pub revision: String,
    /// The headline's rule (`report.headline`): which judges are not held out, the drift
    /// tolerances and the fewest seeds for an interval. Its `method`, `baseline` and `also`
    /// are the unconditional report's; here every method is tested.
    pub headline: HeadlineConfig,
}

/// The paper's text-to-image rows (SPEC section 1): set, metric label, value.
pub const PAPER_ROWS: [(&str, &str, &str); 4] = [
    ("diffusiondb-test", "Improvement", "0.1736"),
    ("drawbench", "Improvement", "47.63"),
    ("partiprompts", "Improvement", "91.31"),
    (
        "visual-genome",
        "IPCE",
        "2.9166 (IPCE: not defined in any public text; not computed)",
    ),
];

/// The fine-tuning probe's drift of one run.
#[derive(Debug, Clone, Copy)]
struct Drift {
    anchor: f64,
    /// Held-out MSE change against the base on the probe's draws.
    mse_delta: f64,
    /// The base's held-out MSE on the same draws (the tolerances' unit).
    base_mse: f64,
}

/// The fine-tuning probe's drift of one run, from its `metrics.json`.
fn probe_drift(run_dir: &Path) -> Result<Drift> {
    let p = run_dir.join("metrics.json");
    let v = crate::evaluate::read_json(&p)?;
    let get = |row: &str, k: &str| {
        v.get(row)
            .and_then(|r| r.get(k))
            .and_then(|s| s.get("mean"))
            .and_then(|m| m.as_f64())
            .ok_or_else(|| ReportError::bad(&p, format!("{row}.{k}"), "missing"))
    };
    let base_mse = get("base", "heldout_mse")?;
    Ok(Drift {
        anchor: get("final", "anchor_distance")?,
        mse_delta: get("final", "heldout_mse")? - base_mse,
        base_mse,
    })
}

/// A run's text metrics and its probe drift.
type Run = (TextEvalMetrics, Drift);

/// What the across-seed interval of one judge's gain says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Raised,
    Lowered,
    /// The interval spans 0, or there are too few seeds for one.
    Neither,
}

fn call(gains: &[f64], min_seeds: usize) -> Call {
    if gains.len() < min_seeds.max(2) {
        return Call::Neither;
    }
    let e = stats::mean_t(gains);
    match (e.lo, e.hi) {
        (Some(lo), _) if lo > 0.0 => Call::Raised,
        (_, Some(hi)) if hi < 0.0 => Call::Lowered,
        _ => Call::Neither,
    }
}

/// The headline's verdict on one set from each held-out judge's call there: quality needs at
/// least one held-out judge, and every one raised.
fn verdict_of(calls: &[Call], drift_ok: bool) -> Verdict {
    let quality_ok = !calls.is_empty() && calls.iter().all(|c| *c == Call::Raised);
    match (quality_ok, drift_ok) {
        (true, true) => Verdict::Holds,
        (false, true) => Verdict::FailsOnQuality,
        (true, false) => Verdict::FailsOnDrift,
        (false, false) => Verdict::FailsOnBoth,
    }
}

/// The upper end of the across-seed interval (the mean with one seed).
fn upper(values: &[f64]) -> f64 {
    let e = stats::mean_t(values);
    e.hi.unwrap_or(e.mean)
}

/// The headline's rule applied to every method on prompts: per held-out set, whether every
/// held-out judge rose (interval above 0) and the probe's drift stayed within the tolerances.
fn verdict_section(
    cfg: &HeadlineConfig,
    groups: &[(String, Vec<&Run>)],
    sets: &[String],
    score_names: &[String],
) -> String {
    let held: Vec<&String> = score_names
        .iter()
        .filter(|n| n.as_str() != "guidance" && !cfg.not_held_out.contains(n))
        .collect();
    let mut header = vec!["method".to_string(), "seeds".into(), "verdict".into()];
    header.extend(held.iter().map(|j| format!("{j} (held out)")));
    header.extend(
        [
            "probe Δ held-out MSE (limit)",
            "probe anchor distance (limit)",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for (g, members) in groups {
        let drift: Vec<Drift> = members.iter().map(|(_, d)| *d).collect();
        let base_mse = drift.iter().map(|d| d.base_mse).sum::<f64>() / drift.len() as f64;
        let mse: Vec<f64> = drift.iter().map(|d| d.mse_delta).collect();
        let anchor: Vec<f64> = drift.iter().map(|d| d.anchor).collect();
        let mse_limit = cfg.mse_tolerance_pct / 100.0 * base_mse;
        let anchor_limit = cfg.anchor_tolerance * base_mse;
        let drift_ok = upper(&mse) <= mse_limit && upper(&anchor) <= anchor_limit;
        let calls: Vec<Vec<Call>> = held
            .iter()
            .map(|j| {
                sets.iter()
                    .map(|set| {
                        let gains: Vec<f64> = members
                            .iter()
                            .filter_map(|(m, _)| {
                                Some(
                                    m.sets
                                        .get(set)?
                                        .improvement
                                        .as_ref()?
                                        .get(*j)?
                                        .relative_pct
                                        .mean,
                                )
                            })
                            .collect();
                        call(&gains, cfg.min_seeds)
                    })
                    .collect()
            })
            .collect();
        let verdicts: Vec<Verdict> = (0..sets.len())
            .map(|k| {
                let on_set: Vec<Call> = calls.iter().map(|c| c[k]).collect();
                verdict_of(&on_set, drift_ok)
            })
            .collect();
        let verdict = if verdicts.iter().all(|v| *v == verdicts[0]) {
            format!("{} (all {} sets)", verdicts[0].text(), sets.len())
        } else {
            sets.iter()
                .zip(&verdicts)
                .map(|(s, v)| format!("{s}: {}", v.text()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut row = vec![g.clone(), members.len().to_string(), verdict];
        for c in &calls {
            let count = |want: Call| c.iter().filter(|x| **x == want).count();
            let parts: Vec<String> = [
                (Call::Raised, "raised"),
                (Call::Lowered, "lowered"),
                (Call::Neither, "neither"),
            ]
            .into_iter()
            .filter(|(w, _)| count(*w) > 0)
            .map(|(w, name)| format!("{name} on {} of {}", count(w), sets.len()))
            .collect();
            row.push(parts.join(", "));
        }
        row.push(format!("{} ({})", across(&mse), short(mse_limit)));
        row.push(format!("{} ({})", across(&anchor), short(anchor_limit)));
        rows.push(row);
    }
    let mut md = String::from(
        "<a id=\"verdict\"></a>\n## Does ACPO raise quality without drift, on prompts?\n\n",
    );
    md.push_str(&format!(
        "The main report's rule (`report.headline`), applied to every method: on a held-out set a \
         method holds when every held-out judge ({}) rises, its 95% t-interval across training \
         seeds above 0 (at least {} seeds), and the probe's drift stays within the tolerances: \
         the upper end of the held-out MSE change at most {}% of the base's held-out MSE on the \
         probe's draws, and of the anchor distance at most {}x it. A judge is \"raised\" or \
         \"lowered\" on a set when its interval is above or below 0, \"neither\" when it spans \
         0. The guidance (CNNIQA) is what was optimised and is not a judge here.\n\n",
        if held.is_empty() {
            "none among this evaluation's scores, so no method can hold".to_string()
        } else {
            held.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
        cfg.min_seeds.max(2),
        cfg.mse_tolerance_pct,
        cfg.anchor_tolerance,
    ));
    md.push_str(&md_table(&header, &rows));
    md.push('\n');
    md
}

fn across(values: &[f64]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let e = stats::mean_t(values);
    match (e.lo, e.hi) {
        (Some(lo), Some(hi)) => format!("{} [{}, {}]", fmt_num(e.mean), fmt_num(lo), fmt_num(hi)),
        _ => fmt_num(e.mean),
    }
}

/// Build the report. Returns the path of `summary.md`.
pub fn text_report(spec: &TextReportSpec) -> Result<PathBuf> {
    let model = Model::Text(&spec.data);
    let metrics = |run: &str| {
        let a = spec.layout.eval(model, run).file("metrics.json");
        read_text_metrics(&a.path, &a.fix())
    };
    let base = metrics("base")?;
    let mut runs: Vec<Run> = Vec::new();
    for r in &spec.runs {
        let m = metrics(r)?;
        let drift = probe_drift(&spec.layout.finetune(model, r).path)?;
        runs.push((m, drift));
    }
    let score_names: Vec<String> = base
        .sets
        .values()
        .next()
        .map(|s| s.scores.keys().cloned().collect())
        .unwrap_or_default();
    let mut md = format!(
        "# {data}-text: ACPO on prompts\n\nBuilt from commit `{rev}`. The prompt-conditioned base \
         (`results/base/{data}-text`, cross-attention on all-MiniLM-L6-v2 token states) fine-tuned \
         on DiffusionDB training prompts, then sampled on held-out prompt sets with the same \
         prompts and noise as the base ({k} images per prompt, {steps} DDIM steps, guidance \
         scale {g}). Prompt alignment: {align}.\n\n",
        data = spec.data,
        rev = spec.revision,
        k = base.images_per_prompt,
        steps = base.steps,
        g = base.guidance_scale,
        align = base.alignment,
    );
    md.push_str("## Contents\n\n1. [Does ACPO raise quality without drift, on prompts?](#verdict)\n2. [Improvement over the base, by method and set](#improvement)\n3. [The paper's rows](#paper)\n4. [By category](#categories)\n5. [The base](#base)\n6. [Every run](#runs)\n\n");

    // main table: method x set, across seeds
    let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
    for r in &runs {
        let g = acpo_core::layout::replicate_group(&r.0.run)
            .unwrap_or(&r.0.run)
            .to_string();
        match groups.iter_mut().find(|(n, _)| *n == g) {
            Some((_, v)) => v.push(r),
            None => groups.push((g, vec![r])),
        }
    }
    let mut header = vec!["method".to_string(), "set".into(), "seeds".into()];
    header.extend(score_names.iter().map(|n| format!("Δ {n} %")));
    header.extend(
        [
            "win rate guidance %",
            "pixel drift",
            "diversity/prompt",
            "probe anchor dist.",
            "probe Δ held-out MSE",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    let mut csv = String::from("run,method,set,score,relative_pct,absolute,win_rate_pct\n");
    for (g, members) in &groups {
        for set in base.sets.keys() {
            let mut row = vec![g.clone(), set.clone(), members.len().to_string()];
            for n in &score_names {
                let v: Vec<f64> = members
                    .iter()
                    .filter_map(|(m, _)| m.sets.get(set)?.improvement.as_ref()?.get(n))
                    .map(|i| i.relative_pct.mean)
                    .collect();
                row.push(across(&v));
            }
            let pick = |f: &dyn Fn(&TextEvalMetrics) -> Option<f64>| -> Vec<f64> {
                members.iter().filter_map(|(m, _)| f(m)).collect()
            };
            row.push(across(&pick(&|m| {
                Some(
                    m.sets
                        .get(set)?
                        .improvement
                        .as_ref()?
                        .get("guidance")?
                        .win_rate_pct
                        .mean,
                )
            })));
            row.push(across(&pick(&|m| {
                Some(m.sets.get(set)?.pixel_drift.as_ref()?.mean)
            })));
            row.push(across(&pick(&|m| {
                Some(m.sets.get(set)?.diversity_per_prompt.mean)
            })));
            let anchors: Vec<f64> = members.iter().map(|(_, d)| d.anchor).collect();
            let mses: Vec<f64> = members.iter().map(|(_, d)| d.mse_delta).collect();
            row.push(across(&anchors));
            row.push(across(&mses));
            rows.push(row);
        }
        for (m, _) in members {
            for (set, s) in &m.sets {
                for (n, i) in s.improvement.iter().flatten() {
                    csv.push_str(&format!(
                        "{},{},{},{},{},{},{}\n",
                        m.run, g, set, n, i.relative_pct.mean, i.absolute.mean, i.win_rate_pct.mean
                    ));
                }
            }
        }
    }
    let set_names: Vec<String> = base.sets.keys().cloned().collect();
    md.push_str(&verdict_section(
        &spec.headline,
        &groups,
        &set_names,
        &score_names,
    ));
    md.push_str(
        "\n<a id=\"improvement\"></a>\n## Improvement over the base, by method and set\n\n",
    );
    md.push_str(
        "Each cell: the mean over training seeds of the run's relative improvement (positive = \
         better in the judge's own direction), with a t-interval over seeds when there are at \
         least two. `guidance` is CNNIQA, the model that was optimised; the other columns are \
         held-out judges. Pixel drift: per-image MSE to the base's image from the same prompt \
         and noise ([0, 1] units). The probe columns are the fine-tuning probe's last row: \
         anchor distance and held-out MSE change on the base's captioned validation images.\n\n",
    );
    md.push_str(&md_table(&header, &rows));

    // paper rows
    md.push_str("\n<a id=\"paper\"></a>\n## The paper's rows\n\n");
    md.push_str(
        "The paper fine-tunes Stable Diffusion; here a 1.3M-parameter CIFAR-10 model whose only \
         training text is class captions is prompted with open-domain prompts, so the scale of \
         its numbers is not comparable; the sign and the interval are the reproducible part. \
         \"Improvement\" in both readings SPEC allows (relative %, absolute), for `acpo`.\n\n",
    );
    let acpo = groups.iter().find(|(g, _)| g == "acpo");
    let mut prow = Vec::new();
    for (set, label, value) in PAPER_ROWS {
        let (mut rel, mut abs) = ("not run".to_string(), "not run".to_string());
        if let Some((_, members)) = acpo {
            let imp = |f: &dyn Fn(&crate::stats::Improvement) -> f64| -> Vec<f64> {
                members
                    .iter()
                    .filter_map(|(m, _)| {
                        Some(f(m.sets.get(set)?.improvement.as_ref()?.get("guidance")?))
                    })
                    .collect()
            };
            rel = across(&imp(&|i| i.relative_pct.mean));
            abs = across(&imp(&|i| i.absolute.mean));
        }
        prow.push(vec![
            set.to_string(),
            label.to_string(),
            value.to_string(),
            rel,
            abs,
        ]);
    }
    md.push_str(&md_table(
        &[
            "set",
            "paper metric",
            "paper value",
            "ours: Δ guidance %",
            "ours: Δ guidance (absolute)",
        ]
        .map(String::from),
        &prow,
    ));

    // categories
    md.push_str("\n<a id=\"categories\"></a>\n## By category\n\nRelative improvement of the guidance and of each held-out judge per category, mean over the seeds of each method.\n\n");
    for set in base.sets.keys() {
        let cats: Vec<&String> = base.sets[set]
            .categories
            .keys()
            .filter(|c| !c.is_empty())
            .collect();
        if cats.is_empty() {
            continue;
        }
        md.push_str(&format!("### {set}\n\n"));
        let mut h = vec!["method".to_string(), "category".into(), "prompts".into()];
        h.extend(score_names.iter().map(|n| format!("Δ {n} %")));
        let mut crow = Vec::new();
        for (g, members) in &groups {
            for c in &cats {
                let mut row = vec![
                    g.clone(),
                    c.to_string(),
                    base.sets[set].categories[*c].prompts.to_string(),
                ];
                for n in &score_names {
                    let v: Vec<f64> = members
                        .iter()
                        .filter_map(|(m, _)| {
                            Some(
                                m.sets
                                    .get(set)?
                                    .categories
                                    .get(*c)?
                                    .improvement
                                    .as_ref()?
                                    .get(n)?
                                    .relative_pct
                                    .mean,
                            )
                        })
                        .collect();
                    row.push(across(&v));
                }
                crow.push(row);
            }
        }
        md.push_str(&md_table(&h, &crow));
        md.push('\n');
    }

    // base
    md.push_str("<a id=\"base\"></a>\n## The base\n\n");
    let base_metrics = spec
        .layout
        .base(Model::Text(&spec.data))
        .path
        .join("metrics.json");
    if let Ok(text) = std::fs::read_to_string(base_metrics) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let c = &v["conditioning"];
            let f = |k: &str| {
                c[k]["mean"]
                    .as_f64()
                    .map(fmt_num)
                    .unwrap_or_else(|| "n/a".into())
            };
            md.push_str(&format!(
                "Held-out MSE with the class caption {} (increase with the null condition {}, with another class's caption {}): positive increases mean the model uses its prompt.\n\n",
                f("caption"), f("null_minus_caption"), f("other_class_minus_caption")
            ));
        }
    }
    let mut h = vec!["set".to_string(), "prompts".into(), "truncated".into()];
    h.extend(score_names.iter().cloned());
    h.push("diversity/prompt".into());
    let brow: Vec<Vec<String>> = base
        .sets
        .iter()
        .map(|(set, s)| {
            let mut r = vec![set.clone(), s.prompts.to_string(), s.truncated.to_string()];
            r.extend(score_names.iter().map(|n| fmt_estimate(&s.scores[n].value)));
            r.push(fmt_estimate(&s.diversity_per_prompt));
            r
        })
        .collect();
    md.push_str(&md_table(&h, &brow));
    md.push_str("\nSample grids (two images per prompt, prompts in row order of the set's `prompts.json`):\n\n");
    let eval_of = |run: &str| spec.layout.eval(Model::Text(&spec.data), run).path;
    for set in base.sets.keys() {
        let mut shown = vec![(
            "base".to_string(),
            eval_of("base").join(set).join("grid.png"),
        )];
        if let Some((_, members)) = acpo {
            if let Some((m, _)) = members.first() {
                shown.push((m.run.clone(), eval_of(&m.run).join(set).join("grid.png")));
            }
        }
        for (who, src) in shown {
            let name = format!("{set}-{who}.png");
            let bytes = std::fs::read(&src).map_err(|e| ReportError::io(&src, e))?;
            write_atomic(&spec.out_dir.join(&name), &bytes)?;
            md.push_str(&format!("- {set}, {who}: ![{set} {who}]({name})\n"));
        }
    }

    // every run
    md.push_str(
        "\n<a id=\"runs\"></a>\n## Every run\n\n<details><summary>per run and set</summary>\n\n",
    );
    let mut h = vec!["run".to_string(), "set".into()];
    h.extend(score_names.iter().map(|n| format!("Δ {n} % [95%]")));
    let rrows: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|(m, _)| {
            m.sets.iter().map(|(set, s)| {
                let mut r = vec![m.run.clone(), set.clone()];
                r.extend(score_names.iter().map(|n| {
                    s.improvement
                        .as_ref()
                        .and_then(|i| i.get(n))
                        .map(|i| fmt_estimate(&i.relative_pct))
                        .unwrap_or_else(|| "n/a".into())
                }));
                r
            })
        })
        .collect();
    md.push_str(&md_table(&h, &rrows));
    md.push_str("\n</details>\n");

    let path = spec.out_dir.join("summary.md");
    write_atomic(&path, md.as_bytes())?;
    write_atomic(&spec.out_dir.join("summary.csv"), csv.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_is_raised_or_lowered_only_when_its_interval_clears_zero() {
        assert_eq!(call(&[3.4, 3.6, 3.2], 2), Call::Raised);
        assert_eq!(call(&[-20.0, -18.0, -22.0], 2), Call::Lowered);
        // seeds that disagree: the interval spans 0
        assert_eq!(call(&[12.7, -24.6, 19.8], 2), Call::Neither);
        // one seed has no interval; min_seeds above the count
        assert_eq!(call(&[5.0], 2), Call::Neither);
        assert_eq!(call(&[3.4, 3.6], 3), Call::Neither);
        assert_eq!(upper(&[0.5]), 0.5);
        use Call::*;
        assert_eq!(verdict_of(&[Raised, Raised], true), Verdict::Holds);
        // NIQE up, BRISQUE split by seed: not confirmed
        assert_eq!(
            verdict_of(&[Neither, Raised], true),
            Verdict::FailsOnQuality
        );
        assert_eq!(verdict_of(&[Raised, Raised], false), Verdict::FailsOnDrift);
        assert_eq!(verdict_of(&[Lowered, Raised], false), Verdict::FailsOnBoth);
        // no held-out judge: nothing confirms quality
        assert_eq!(verdict_of(&[], true), Verdict::FailsOnQuality);
        assert!(upper(&[1.0, 2.0, 3.0]) > 3.0);
    }
}
