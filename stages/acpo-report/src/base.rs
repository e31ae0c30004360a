//! The report's opening: each benchmark's base model against real data, before any
//! fine-tuning result. A fine-tuning gain means something only when the base generates images,
//! so the reader sees first the base's FID and KID beside the real-data floor (real train
//! images against the same test statistics, at the same number of images), its samples beside
//! real test images, and its training curve.
//!
//! Writes `<reports>/<benchmark>/base.md`, `base_samples.png` (the base's first evaluation
//! samples) and `real_test.png` (the first test images); `index.html` shows the same.

use crate::error::{ReportError, Result};
use crate::fsio::write_atomic;
use crate::plots::write_grid_png;
use crate::schema::{EvalMetrics, FidKidMetrics};
use crate::spec::{BenchmarkSpec, ReportSpec};
use crate::tables::{fmt_estimate, fmt_num};
use acpo_core::layout::Model;
use std::path::Path;

/// Images in each of the two grids (8 x 8).
const GRID: usize = 64;
/// Images in one row of the page's side-by-side samples (the same count as each run's row).
pub const STRIP: usize = 8;

/// FID and KID of real train images against the test statistics (`fid-train-vs-test`).
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    pub fid: f64,
    pub kid: f64,
    pub n: usize,
}

/// One benchmark's base model as the report's opening shows it.
#[derive(Debug, Clone)]
pub struct BaseSummary {
    pub benchmark: String,
    /// FID/KID at the larger sample count when the evaluation has it, else the main one.
    pub quality: Option<FidKidMetrics>,
    pub floor: Option<Floor>,
    pub heldout_mse: String,
    /// Training: steps, batch size, images seen, from the base's `metrics.json`.
    pub training: String,
    /// Report-relative paths of the grids and the training curve that exist.
    pub base_grid: Option<String>,
    pub real_grid: Option<String>,
    /// The first 8 test images in one row (`samples_real.png`), for the page's side-by-side
    /// sample rows.
    pub real_strip: Option<String>,
    pub curve: Option<String>,
    pub notes: Vec<String>,
}

/// Reads the floor (`results/fid/train-vs-test/<benchmark>/metrics.json`), if computed.
fn read_floor(path: &Path) -> Result<Option<Floor>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::fsio::read_string(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ReportError::bad(path, format!("line {}", e.line()), e.to_string()))?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| ReportError::bad(path, k, "missing (expected a number)"))
    };
    Ok(Some(Floor {
        fid: num("fid")?,
        kid: num("kid_mean")?,
        n: num("n")? as usize,
    }))
}

/// Steps, batch, images seen and epochs, from the base's `metrics.json` and `config.json`
/// (read loosely: they are the diffusion crate's files).
fn training_of(base_dir: &Path) -> String {
    let json = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(base_dir.join(f)).ok()?).ok()
    };
    let read = || -> Option<String> {
        let m = json("metrics.json")?;
        let steps = m.get("steps")?.as_u64()?;
        let batch = json("config.json")?
            .get("train")?
            .get("batch_size")?
            .as_u64()?;
        let train = m.get("train_images").and_then(|t| t.as_u64()).unwrap_or(0);
        let seen = steps * batch;
        let epochs = if train > 0 {
            format!(", {:.1} epochs of {train}", seen as f64 / train as f64)
        } else {
            String::new()
        };
        Some(format!("{steps} steps x {batch} = {seen} images{epochs}"))
    };
    read().unwrap_or_else(|| format!("unknown (no {}/metrics.json)", base_dir.display()))
}

/// Writes the grids and `base.md` of one benchmark and returns what the page shows.
pub fn base_summary(
    spec: &ReportSpec,
    bm: &BenchmarkSpec,
    base: &EvalMetrics,
) -> Result<BaseSummary> {
    let dir = spec.out_dir.join(&bm.name);
    let rel = |f: &str| format!("{}/{f}", bm.name);
    let mut notes = Vec::new();

    let layout = spec.layout();
    let samples = layout
        .eval(Model::Bench(&bm.name), "base")
        .path
        .join("samples.safetensors");
    let (n, h, w, px) = crate::evaluate::load_sample_pixels(&samples)?;
    let k = n.min(GRID);
    write_grid_png(
        &px[..k * h * w * 3],
        k,
        h,
        w,
        8,
        &dir.join("base_samples.png"),
    )?;

    let test = layout.split(&bm.dataset, "test").path;
    let real_grid = if test.exists() {
        let mut set = acpo_diffusion::data::ImageSet::load(&test)?;
        set.truncate(GRID);
        if set.c != 3 {
            return Err(ReportError::bad(
                &test,
                "images",
                "expected RGB (3 channels)",
            ));
        }
        write_grid_png(
            &set.pixels,
            set.n,
            set.h,
            set.w,
            8,
            &dir.join("real_test.png"),
        )?;
        let k = set.n.min(STRIP);
        write_grid_png(
            &set.pixels[..k * set.h * set.w * 3],
            k,
            set.h,
            set.w,
            k,
            &dir.join("samples_real.png"),
        )?;
        Some(rel("real_test.png"))
    } else {
        notes.push(format!(
            "no test split at {}: no real-image grid",
            test.display()
        ));
        None
    };

    let floor_file = layout.fid_floor(&bm.dataset).file("metrics.json");
    let floor = read_floor(&floor_file.path)?;
    if floor.is_none() {
        notes.push(format!(
            "no real-data floor ({} writes {})",
            floor_file.fix(),
            floor_file.path.display()
        ));
    }
    let quality = base.base_quality.clone().or_else(|| base.fid_kid.clone());
    if let (Some(q), Some(f)) = (&quality, &floor) {
        if q.fid.n != f.n {
            notes.push(format!(
                "the base's FID is on {} images and the floor's on {}: FID is biased by n, compare KID",
                q.fid.n, f.n
            ));
        }
    }
    let curve = dir
        .join("train_base.png")
        .exists()
        .then(|| rel("train_base.png"));
    let s = BaseSummary {
        benchmark: bm.name.clone(),
        quality,
        floor,
        heldout_mse: fmt_estimate(&base.heldout_mse),
        training: training_of(&layout.base(Model::Bench(&bm.name)).path),
        base_grid: Some(rel("base_samples.png")),
        real_strip: real_grid.as_ref().map(|_| rel("samples_real.png")),
        real_grid,
        curve,
        notes,
    };
    write_atomic(&dir.join("base.md"), base_markdown(&s).as_bytes())?;
    Ok(s)
}

/// Header and cells of the base table (one row per benchmark).
pub fn base_table(list: &[BaseSummary]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "benchmark",
        "base FID",
        "real-data floor FID",
        "base KID",
        "floor KID",
        "held-out MSE",
        "training",
    ]
    .map(String::from)
    .to_vec();
    let rows = list
        .iter()
        .map(|s| {
            let (fid, kid) = match &s.quality {
                Some(q) => (fmt_estimate(&q.fid), fmt_estimate(&q.kid)),
                None => ("not computed".into(), "not computed".into()),
            };
            let (ffid, fkid) = match &s.floor {
                Some(f) => (
                    format!("{} n={}", fmt_num(f.fid), f.n),
                    format!("{} n={}", fmt_num(f.kid), f.n),
                ),
                None => ("not computed".into(), "not computed".into()),
            };
            vec![
                s.benchmark.clone(),
                fid,
                ffid,
                kid,
                fkid,
                s.heldout_mse.clone(),
                s.training.clone(),
            ]
        })
        .collect();
    (header, rows)
}

/// What a reader needs to judge the base before reading any fine-tuning result.
pub const BASE_CAPTION: &str = "Each base model against real data, before any fine-tuning: FID \
    and KID of its DDIM samples against the test split's statistics, beside real train images \
    against the same statistics (the floor a perfect generator reaches at that n). FID is biased \
    upwards at small n; KID is not. Fine-tuning results below are only as meaningful as this \
    base.";

/// One sentence on how far the base is from real data: its FID and KID as multiples of the
/// floor real images reach, or that they were not computed.
pub fn base_sentence(s: &BaseSummary) -> String {
    match (&s.quality, &s.floor) {
        (Some(q), Some(f)) => {
            // KID is unbiased, so the floor's can be at or below 0 at small n: no ratio then.
            let kid = if f.kid > 0.0 {
                format!(
                    "{}, {:.0}x theirs ({})",
                    fmt_num(q.kid.mean),
                    q.kid.mean / f.kid,
                    fmt_num(f.kid)
                )
            } else {
                format!(
                    "{} (theirs, {}, is not above 0 at this n: no ratio)",
                    fmt_num(q.kid.mean),
                    fmt_num(f.kid)
                )
            };
            format!(
                "{}: the base's FID is {} on {} samples, {:.1}x the {} that real train images \
                 reach against the same test statistics; its KID is {kid}. The closer both ratios \
                 are to 1, the more the fine-tuning results below say about a model that \
                 generates realistic images.",
                s.benchmark,
                fmt_num(q.fid.mean),
                q.fid.n,
                q.fid.mean / f.fid,
                fmt_num(f.fid),
            )
        }
        (Some(q), None) => format!(
            "{}: the base's FID is {} on {} samples; the real-data floor was not computed, so \
             judge it by its samples beside real test images.",
            s.benchmark,
            fmt_num(q.fid.mean),
            q.fid.n
        ),
        (None, _) => format!(
            "{}: the base's FID was not computed; judge it by its samples beside real test \
             images.",
            s.benchmark
        ),
    }
}

fn base_markdown(s: &BaseSummary) -> String {
    let (h, rows) = base_table(std::slice::from_ref(s));
    let mut md = format!(
        "# {}: the base model\n\n{BASE_CAPTION}\n\n{}\n\n| {} |\n|{}\n| {} |\n",
        s.benchmark,
        base_sentence(s),
        h.join(" | "),
        "---|".repeat(h.len()),
        rows[0].join(" | ")
    );
    md.push_str("\nBase samples (first 64 evaluation seeds) | Real test images\n---|---\n");
    md.push_str(&format!(
        "![base samples](base_samples.png) | {}\n",
        if s.real_grid.is_some() {
            "![real test images](real_test.png)"
        } else {
            "not available"
        }
    ));
    if s.curve.is_some() {
        md.push_str("\n![base training loss](train_base.png)\n");
    }
    for n in &s.notes {
        md.push_str(&format!("\n- {n}"));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_sentence_gives_the_distance_to_the_floor() {
        let e = |mean: f64, n: usize| crate::stats::Estimate {
            mean,
            lo: None,
            hi: None,
            n,
            interval: "exact".into(),
            note: None,
        };
        let mut s = BaseSummary {
            benchmark: "cifar10".into(),
            quality: Some(FidKidMetrics {
                fid: e(111.2, 1000),
                kid: e(0.04776, 1000),
                reference: "ref".into(),
                n_ref: 1000,
            }),
            floor: Some(Floor {
                fid: 46.94,
                kid: 3.159e-4,
                n: 1000,
            }),
            heldout_mse: String::new(),
            training: String::new(),
            base_grid: None,
            real_grid: None,
            real_strip: None,
            curve: None,
            notes: vec![],
        };
        let t = base_sentence(&s);
        assert!(
            t.starts_with("cifar10: the base's FID is 111.2 on 1000 samples, 2.4x the 46.94")
                && t.contains("its KID is 0.04776, 151x theirs"),
            "{t}"
        );
        // A floor KID at or below 0 (small n) gives no ratio.
        s.floor.as_mut().unwrap().kid = -0.001068;
        let t = base_sentence(&s);
        assert!(
            t.contains(
                "its KID is 0.04776 (theirs, -0.001068, is not above 0 at this n: no ratio)"
            ),
            "{t}"
        );
        s.floor = None;
        assert!(base_sentence(&s).contains("floor was not computed"));
        s.quality = None;
        assert!(base_sentence(&s).contains("FID was not computed"));
    }

    #[test]
    fn the_floor_is_read_and_a_broken_one_names_its_field() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.json");
        assert_eq!(read_floor(&p).unwrap(), None);
        std::fs::write(&p, r#"{"fid": 62.1, "kid_mean": 0.0001, "n": 250}"#).unwrap();
        assert_eq!(
            read_floor(&p).unwrap(),
            Some(Floor {
                fid: 62.1,
                kid: 0.0001,
                n: 250
            })
        );
        std::fs::write(&p, r#"{"fid": 62.1, "n": 250}"#).unwrap();
        let e = read_floor(&p).unwrap_err().to_string();
        assert!(e.contains("kid_mean"), "{e}");
    }
}
