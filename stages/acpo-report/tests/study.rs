//! The base-training study end to end on a tiny UNet and tiny data: the budget sets the
//! steps, every evaluation point is scored with the real Inception network (converted from
//! the TorchScript archive that `just setup` installs), a stopped study resumes to the same
//! numbers, and the study report lists the runs beside the floor.

mod common;

use acpo_core::layout::{Artifact, Layout};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::train::train_loop_until;
use acpo_report::study::StudyEval;
use acpo_report::{
    run_study, study_report, StudyConfig, StudyMetrics, StudyPaths, StudyReportSpec, StudySettings,
};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn write_split(path: &Path, n: usize, seed: u64) {
    let mut r = SeededRng::new(seed, &[]);
    let mut px = Vec::with_capacity(n * 8 * 8 * 3);
    for _ in 0..n {
        let base: Vec<f32> = (0..3).map(|_| r.uniform() * 255.0).collect();
        for _ in 0..64 {
            for b in &base {
                px.push((b + 20.0 * (r.uniform() - 0.5)).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut m = HashMap::new();
    m.insert(
        "images".to_string(),
        Tensor::from_vec(px, (n, 8, 8, 3), &Device::Cpu).unwrap(),
    );
    m.insert(
        "labels".to_string(),
        Tensor::zeros(n, candle_core::DType::I64, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, path).unwrap();
}

fn diffusion() -> serde_json::Value {
    serde_json::json!({
        "model": {"image_size": 8, "channels": 8, "channel_mult": [1, 2],
                  "attention_resolutions": [4], "norm_groups": 4},
        "schedule": {"timesteps": 50},
        "sample": {"steps": 5},
        "train": {"batch_size": 4, "warmup_steps": 2, "lr": 1e-3, "checkpoint_every": 3,
                  "lr_schedule": "cosine", "ema_warmup": true, "loss_weighting": "min-snr"}
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    inception: PathBuf,
    fid_ref: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.safetensors"), 16, 1);
    write_split(&data.join("test.safetensors"), 8, 2);
    let (inception, fid_ref) = common::fid_inputs(&root);
    Setup {
        _dir: dir,
        root,
        data,
        inception,
        fid_ref,
    }
}

fn settings() -> StudySettings {
    StudySettings {
        // About 8 steps of this tiny UNet at batch 4.
        budget_tflop: 8.5
            * acpo_diffusion::flops::train_step_flops(
                &serde_json::from_value(diffusion()["model"].clone()).unwrap(),
                4,
            ) as f64
            / 1e12,
        eval_fractions: vec![0.5, 1.0],
        evaluate: StudyEval {
            samples: 6,
            steps: 3,
            batch_size: 4,
            heldout_images: 8,
            kid_subsets: 5,
            kid_subset_size: 4,
            ..Default::default()
        },
    }
}

fn config(set: serde_json::Value) -> StudyConfig {
    StudyConfig {
        benchmark: "tiny".into(),
        description: "a tiny configuration".into(),
        set,
        budget_tflop: None,
        eval_fractions: None,
    }
}

fn paths(s: &Setup, name: &str) -> StudyPaths {
    let l = Layout::new(&s.root);
    StudyPaths {
        data: Artifact {
            path: s.data.clone(),
            ..l.prepared("tiny")
        },
        inception: Artifact {
            path: s.inception.clone(),
            ..l.inception_weights()
        },
        fid_ref: Artifact {
            path: s.fid_ref.clone(),
            ..l.fid_ref("tiny")
        },
        inception_onnx: None,
        out_dir: l.study(name).path,
    }
}

fn scores(m: &StudyMetrics) -> Vec<(usize, usize, f64, f64, f64)> {
    m.points
        .iter()
        .map(|p| (p.step, p.images, p.fid, p.kid, p.heldout_mse))
        .collect()
}

#[test]
fn study_runs_resumes_and_reports() {
    let s = setup();
    let st = settings();
    let cfg = config(serde_json::Value::Null);
    let p = st.resolve("a", &cfg, &diffusion()).unwrap();
    assert_eq!(p.train.steps, 8);
    let full = run_study("a", &cfg, &p, &st, &paths(&s, "a")).unwrap();
    assert_eq!(
        full.points.iter().map(|q| q.step).collect::<Vec<_>>(),
        [4, 8]
    );
    assert!(full
        .points
        .iter()
        .all(|q| q.fid.is_finite() && q.kid.is_finite()));
    assert!(full.points[1].train_cpu_s >= full.points[0].train_cpu_s);
    assert_eq!(full.points[1].n, 6);
    let out = paths(&s, "a").out_dir;
    for f in [
        "metrics.json",
        "config.json",
        "grid.png",
        "run/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // A study stopped after its first point's training (here: trained by hand to step 4)
    // resumes from the checkpoint and scores the same numbers.
    let b = paths(&s, "b");
    let set = acpo_diffusion::data::ImageSet::load(&s.data.join("train.safetensors")).unwrap();
    std::fs::create_dir_all(b.out_dir.join("run")).unwrap();
    train_loop_until(
        &p,
        &set,
        None,
        &b.out_dir.join("run"),
        false,
        &Device::Cpu,
        4,
    )
    .unwrap();
    let resumed = run_study("a", &cfg, &p, &st, &b).unwrap();
    assert_eq!(scores(&resumed), scores(&full));
    // A finished study reads its points instead of recomputing them (the same numbers up to
    // the last bit of a JSON round trip; the CPU times prove nothing was retrained).
    let again = run_study("a", &cfg, &p, &st, &paths(&s, "a")).unwrap();
    assert_eq!(again.points.len(), full.points.len());
    for (x, y) in again.points.iter().zip(&full.points) {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        assert!(close(x.fid, y.fid) && close(x.kid, y.kid), "{x:?} {y:?}");
        assert!(close(x.train_cpu_s, y.train_cpu_s) && close(x.eval_wall_s, y.eval_wall_s));
    }

    // A second configuration with batch 8 gets half the steps; the report ranks both.
    let cfg2 = config(serde_json::json!({"train": {"batch_size": 8}}));
    let p2 = st.resolve("b8", &cfg2, &diffusion()).unwrap();
    assert_eq!(p2.train.steps, 4);
    run_study("b8", &cfg2, &p2, &st, &paths(&s, "b8")).unwrap();
    let layout = Layout::new(&s.root);
    let floor = layout.fid_floor("tiny").file("metrics.json").path;
    std::fs::create_dir_all(floor.parent().unwrap()).unwrap();
    std::fs::write(
        &floor,
        r#"{"fid": 1.5, "kid_mean": 0.001, "kid_std": 0.0, "images_used": 6}"#,
    )
    .unwrap();
    let mut configs = BTreeMap::new();
    configs.insert("a".to_string(), cfg.clone());
    configs.insert("b8".to_string(), cfg2.clone());
    configs.insert(
        "other".to_string(),
        StudyConfig {
            benchmark: "elsewhere".into(),
            ..cfg.clone()
        },
    );
    let spec = StudyReportSpec {
        benchmark: "tiny".into(),
        configs,
        layout,
        out_dir: s.root.join("reports/study/tiny"),
        font: common::assets().join("fonts/DejaVuSans.ttf"),
    };
    let runs = study_report(&spec).unwrap();
    assert_eq!(runs.len(), 2, "only the benchmark's configurations");
    let md = std::fs::read_to_string(spec.out_dir.join("study.md")).unwrap();
    assert!(
        md.contains("[a](a.png)") && md.contains("[b8](b8.png)"),
        "{md}"
    );
    assert!(md.contains("train.batch_size=8"), "{md}");
    assert!(
        md.contains("| real train images (floor) | 6 train vs test images | | | | | | 1.5 |"),
        "{md}"
    );
    let csv = std::fs::read_to_string(spec.out_dir.join("study.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 + 2, "{csv}");
    for f in [
        "quality_vs_cpu.png",
        "quality_vs_cpu.svg",
        "a.png",
        "b8.png",
    ] {
        assert!(spec.out_dir.join(f).is_file(), "{f}");
    }

    // A missing run names the stage that makes it.
    let mut missing = spec.clone();
    missing.configs.insert("c".into(), cfg.clone());
    let e = study_report(&missing).unwrap_err().to_string();
    assert!(e.contains("base-study@c"), "{e}");
}
