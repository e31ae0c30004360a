//! End to end: the real `acpo` binary runs `repro --profile smoke` on a copy of the pipeline
//! in a temporary directory (reading the real mirror), then every report file must exist, the
//! numbers in the reports must be the ones this run's `metrics.json` files hold, and headless
//! Chromium must load `reports/index.html` with no broken image, no empty table, no broken
//! link in its contents and no table wider than the window.
//!
//! Needs the mirror (`ACPO_MIRROR`, default `../shared/data`), the assets of `just setup`
//! (`ACPO_ASSETS`, default `.cache/assets`) and `chromium` (installed by `just setup`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn abs_env(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    std::fs::canonicalize(&p).unwrap_or_else(|e| {
        panic!(
            "{var}={}: {e} (run `just setup`; the mirror is ../shared/data)",
            p.display()
        )
    })
}

/// Copies the pipeline (sources, configs; no build outputs, results or caches).
fn copy_tree(src: &Path, dst: &Path) {
    const SKIP: [&str; 8] = [
        "target",
        ".git",
        "results",
        "reports",
        ".cache",
        ".acpo",
        "pipeline.lock",
        "prepared",
    ];
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if SKIP.contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&e.path(), &dst.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Columns of a CSV by header name (values as strings), one map per row.
fn csv_rows(p: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = read(p);
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[test]
fn smoke_pipeline_produces_a_report_from_this_run() {
    let mirror = abs_env("ACPO_MIRROR", "../shared/data");
    let assets = abs_env("ACPO_ASSETS", ".cache/assets");
    let tmp = tempfile::tempdir().unwrap();
    // The pipeline names the mirror as ../shared/data relative to itself: mirror that layout.
    let work = tmp.path().join("main");
    copy_tree(&root(), &work);
    std::fs::create_dir_all(tmp.path().join("shared")).unwrap();
    std::os::unix::fs::symlink(&mirror, tmp.path().join("shared/data")).unwrap();
    // Stages that read setup's files name them as .cache/assets/... relative to the pipeline.
    std::fs::create_dir_all(work.join(".cache")).unwrap();
    std::os::unix::fs::symlink(&assets, work.join(".cache/assets")).unwrap();

    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_acpo"))
        .args(["repro", "--profile", "smoke"])
        .current_dir(&work)
        .env("ACPO_MIRROR", &mirror)
        .env("ACPO_ASSETS", &assets)
        .env(
            "ORT_DYLIB_PATH",
            assets.join("onnxruntime/libonnxruntime.so"),
        )
        .env_remove("ACPO_PARAMS")
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("acpo repro --profile smoke: {secs:.0} s");
    assert!(
        out.status.success(),
        "acpo repro --profile smoke failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Every report file exists.
    let reports = work.join("reports");
    let params: serde_json::Value = {
        // The benchmarks of the smoke run, from the report's own config.
        json(&reports.join("config.json"))
    };
    let benchmarks: Vec<(String, Vec<String>)> = params["benchmarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert!(!benchmarks.is_empty());
    for f in [
        "index.html",
        "paper_comparison.md",
        "paper_comparison.csv",
        "metrics.parquet",
    ] {
        assert!(reports.join(f).is_file(), "missing reports/{f}");
    }
    let html = read(&reports.join("index.html"));
    let lock = json(&work.join("pipeline.lock"));
    for (bm, runs) in &benchmarks {
        let d = reports.join(bm);
        for f in [
            "summary.csv",
            "summary.md",
            "train_base.png",
            "train_base.svg",
            "samples_base.png",
            "base.md",
            "base_samples.png",
            "real_test.png",
        ] {
            assert!(d.join(f).is_file(), "missing reports/{bm}/{f}");
        }
        // The page opens with the base: its FID/KID at base_fid_samples beside the floor.
        let base_m = json(&work.join("results/eval").join(bm).join("base/metrics.json"));
        let q = &base_m["base_quality"];
        assert!(
            q["kid"]["n"].as_u64().is_some(),
            "{bm}: no base_quality in the base evaluation"
        );
        let shown = acpo_report::tables::fmt_num(q["fid"]["mean"].as_f64().unwrap());
        let base_md = read(&d.join("base.md"));
        assert!(
            base_md.contains(&shown),
            "reports/{bm}/base.md lacks the base FID {shown}"
        );
        assert!(
            html.find("id=\"base\"").unwrap() < html.find("<h2 id=\"paper\">").unwrap(),
            "index.html does not open with the base models"
        );
        // The numbers come from this run: summary.csv and index.html carry the values of the
        // metrics.json files the evaluate stages wrote.
        let rows = csv_rows(&d.join("summary.csv"));
        // base, the real test images (scored by the base's evaluation), every run
        assert_eq!(rows.len(), 2 + runs.len(), "reports/{bm}/summary.csv rows");
        let real = rows
            .iter()
            .find(|r| r["run"] == acpo_report::tables::REAL_TEST_ROW)
            .unwrap_or_else(|| panic!("{bm}: no real-test-images row"));
        let want = base_m["real_test"]["scores"]["guidance"]["value"]["mean"]
            .as_f64()
            .unwrap();
        assert_eq!(real["score.guidance"].parse::<f64>().unwrap(), want);
        // The experiment: a generated headline over the replicates, the methods across seeds,
        // the Pareto plot and drift by timestep.
        for f in [
            "headline.json",
            "methods.md",
            "methods.csv",
            "pareto.png",
            "pareto.svg",
            "drift_by_t.md",
        ] {
            assert!(d.join(f).is_file(), "missing reports/{bm}/{f}");
        }
        // the smoke profile tests no further groups (report.headline.also: [])
        assert_eq!(json(&d.join("headline_also.json")), serde_json::json!([]));
        let hl = json(&d.join("headline.json"));
        let text = hl["text"].as_str().unwrap();
        assert!(
            read(&d.join("summary.md")).contains(text),
            "{bm}: summary.md lacks the headline"
        );
        assert!(html.find("id=\"headline\"").unwrap() < html.find("id=\"base\"").unwrap());
        for run in std::iter::once("base".to_string()).chain(runs.iter().cloned()) {
            let m = json(
                &work
                    .join("results/eval")
                    .join(bm)
                    .join(&run)
                    .join("metrics.json"),
            );
            assert_eq!(m["schema"], 1);
            let row = rows
                .iter()
                .find(|r| r["run"] == run)
                .unwrap_or_else(|| panic!("{bm}: no row {run}"));
            for metric in ["heldout_mse", "score.guidance", "diversity_pixel"] {
                let want = match metric {
                    "heldout_mse" => m["heldout_mse"]["mean"].as_f64().unwrap(),
                    "score.guidance" => m["scores"]["guidance"]["value"]["mean"].as_f64().unwrap(),
                    _ => m["diversity"]["pixel"]["mean"].as_f64().unwrap(),
                };
                let got: f64 = row[metric].parse().unwrap();
                assert_eq!(
                    got, want,
                    "{bm}/{run} {metric}: summary.csv vs metrics.json"
                );
                let n = match metric {
                    "heldout_mse" => &m["heldout_mse"]["n"],
                    "score.guidance" => &m["scores"]["guidance"]["value"]["n"],
                    _ => &m["diversity"]["pixel"]["n"],
                };
                assert_eq!(row[&format!("{metric}_n")], n.to_string());
            }
            let mse = m["heldout_mse"]["mean"].as_f64().unwrap();
            let shown = acpo_report::tables::fmt_num(mse);
            assert!(
                html.contains(&shown),
                "index.html does not show {bm}/{run} held-out MSE {shown}"
            );
        }
        // The sampler-steps studies of this benchmark: one row per run and steps, the numbers
        // of the evaluate-steps stages' metrics files.
        let studies = params["benchmarks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == bm.as_str())
            .and_then(|b| b["step_studies"].as_object().cloned())
            .unwrap_or_default();
        if !studies.is_empty() {
            let rows = csv_rows(&d.join("sampler_steps.csv"));
            for (key, st) in &studies {
                let steps = st["steps"].as_u64().unwrap();
                let study_runs = st["runs"].as_array().unwrap().iter();
                for run in std::iter::once("base").chain(study_runs.map(|r| r.as_str().unwrap())) {
                    let m = json(
                        &work
                            .join("results/eval-steps")
                            .join(key)
                            .join(run)
                            .join("metrics.json"),
                    );
                    assert_eq!(m["sampling"]["steps"].as_u64(), Some(steps), "{key}/{run}");
                    let name = format!("{run} @{steps} steps");
                    let row = rows
                        .iter()
                        .find(|r| r["run"] == name)
                        .unwrap_or_else(|| panic!("reports/{bm}/sampler_steps.csv: no row {name}"));
                    let want = m["scores"]["guidance"]["value"]["mean"].as_f64().unwrap();
                    let got: f64 = row["score.guidance"].parse().unwrap();
                    assert_eq!(
                        got, want,
                        "{bm}/{name} guidance: sampler_steps.csv vs metrics.json"
                    );
                }
            }
        }
        // Provenance: this run's stage keys, wall times and memory are in the page.
        let key = lock["stages"][format!("evaluate-base@{bm}")]["key"]
            .as_str()
            .unwrap();
        assert!(
            html.contains(&key[..16]),
            "index.html lacks the key of evaluate-base@{bm}"
        );
    }
    assert!(
        html.contains("peak memory"),
        "no per-stage memory in index.html"
    );

    // A real browser loads the page at a laptop's width: every image loads, no table is
    // empty, the contents' links resolve and no rendered table is wider than the window.
    let scratch = tmp.path().join("browser");
    std::fs::create_dir_all(&scratch).unwrap();
    let check = acpo_report::browser::check_page(&reports.join("index.html"), 1280, &scratch)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        check.problems().is_empty(),
        "reports/index.html in Chromium: {:?}",
        check.problems()
    );
    let png = std::fs::read(&check.screenshot).expect("chromium wrote no screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "screenshot is empty"
    );
}
