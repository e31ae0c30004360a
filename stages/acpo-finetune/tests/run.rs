//! The `finetune` stage end to end on a tiny UNet, tiny data made here, and the real CNNIQA
//! weights from the mirror: exact resume, lambda_p = 0, the drift stop rule, judges.

mod common;

use acpo_core::BadInput;
use acpo_diffusion::UNetConfig;
use acpo_finetune::draws::{self, Stream};
use acpo_finetune::run::{run_finetune, DrawSource, FinetuneConfig, FinetunePaths, RunOptions};
use acpo_finetune::{Method, Normalize};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn write_split(path: &Path, n: usize, seed: u64) {
    let mut rng = draws::rng(seed, Stream::Probe, 3);
    // smooth-ish images: a noisy gradient per image
    let z: Vec<f32> = draws::normal(&mut rng, &[n * 32 * 32 * 3], &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    let px: Vec<u8> = z
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = (i / (32 * 3)) % 32;
            (128.0 + 60.0 * v + 2.0 * y as f32).clamp(0.0, 255.0) as u8
        })
        .collect();
    let mut m = HashMap::new();
    m.insert(
        "images".to_string(),
        Tensor::from_vec(px, (n, 32, 32, 3), &Device::Cpu).unwrap(),
    );
    m.insert(
        "labels".to_string(),
        Tensor::zeros(n, DType::I64, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, path).unwrap();
}

/// A tiny base model and data set in `dir`; returns the paths for a run into `dir/<run>`.
fn setup(dir: &Path, run: &str) -> FinetunePaths {
    let base_dir = dir.join("base");
    let data_dir = dir.join("data");
    if !base_dir.exists() {
        std::fs::create_dir_all(&base_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let model = UNetConfig {
            image_size: 32,
            in_channels: 3,
            channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![],
            num_heads: 1,
            dropout: 0.0,
            norm_groups: 4,
            context_dim: None,
        };
        common::run_fixture::write_base(&base_dir, &model);
        write_split(&data_dir.join("train.safetensors"), 24, 1);
        write_split(&data_dir.join("val.safetensors"), 8, 2);
        common::run_fixture::write_judges(dir);
    }
    FinetunePaths {
        base_dir,
        data_dir,
        out_dir: dir.join(run),
        guidance: common::run_fixture::cnniqa(),
        judges: dir.join("judges.yaml"),
        base_eval: None,
        text: None,
    }
}

fn cfg(method: Method) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        steps: 6,
        batch_size: 4,
        checkpoint_every: 2,
        ..Default::default()
    };
    c.objective.method = method;
    c.objective.t_min = 5;
    c.objective.t_max = 60;
    c.objective.q_scale = 10.0;
    c.optim.lr = 1e-3;
    c.probe.every = 2;
    c.probe.draws = 8;
    c.probe.batch_size = 8;
    c.probe.samples = 4;
    c.probe.sample_steps = 3;
    c.probe.judges = vec!["cnniqa".into()];
    c
}

/// Largest absolute difference of two f32 tensors of one shape.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    // The cpu profile's loss units: measured on the base before the first step.
    let mut c = cfg(Method::Acpo);
    c.objective.normalize = Normalize::Base;
    c.objective.calibration_draws = 8;
    let a = setup(dir.path(), "a");
    let full = run_finetune(&c, &a, &RunOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!((full.steps, full.invocation.resumed_from), (6, 0));
    let cal = full
        .calibration
        .expect("normalize: base records its calibration");
    assert_eq!(cal.draws, 8);
    assert!(cal.q_std > 0.0 && cal.eps_mse > 0.0, "{cal:?}");
    // The resolved config carries the measured units (so a resume compares them too).
    let resolved: serde_json::Value =
        serde_json::from_slice(&read(&a.out_dir.join("config.json"))).unwrap();
    let obj = &resolved["finetune"]["objective"];
    // (serde_json's default parser may miss the last bit of an f64)
    let near = |k: &str, want: f64| {
        let got = obj[k].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "{k}: {got} vs {want}"
        );
    };
    near("eps_scale", cal.eps_mse);
    near("q_scale", cal.q_std);
    near("q_offset", cal.q_mean);

    let b = setup(dir.path(), "b");
    let stopped = run_finetune(
        &c,
        &b,
        &RunOptions {
            fresh: false,
            stop_after: Some(3),
        },
    )
    .unwrap();
    assert!(stopped.is_none());
    assert!(!b.out_dir.join("model.safetensors").exists());
    let resumed = run_finetune(&c, &b, &RunOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!((resumed.steps, resumed.invocation.resumed_from), (6, 3));
    // metrics.json too: the run folder is the evaluation's dependency, so a resumed (or
    // re-measured) run must not change a byte of it (no timing or resume point inside).
    for f in [
        "model.safetensors",
        "loss.csv",
        "curve.csv",
        "config.json",
        "metrics.json",
    ] {
        assert!(
            read(&a.out_dir.join(f)) == read(&b.out_dir.join(f)),
            "{f} differs after resume"
        );
    }
    assert_eq!(full.last, resumed.last);
    assert_eq!(full.base, resumed.base);
    // the curve has step 0 and every 2 steps, with the judge column
    let curve = String::from_utf8(read(&a.out_dir.join("curve.csv"))).unwrap();
    let steps: Vec<&str> = curve
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["0", "2", "4", "6"]);
    assert!(curve
        .lines()
        .next()
        .unwrap()
        .ends_with("judge_cnniqa,judge_cnniqa_ci95"));
    assert_eq!(full.base.anchor_distance.mean, 0.0);
    assert!(full.last.anchor_distance.mean > 0.0);
    assert_eq!(full.last.heldout_mse.n, 8);
    assert_eq!(full.last.guidance_samples.n, 4);
    // a changed config does not resume from the old checkpoint: it starts at step 0 (so it
    // stops after one step, where a resumed run would already be past its end)
    let mut c2 = c.clone();
    c2.seed = 9;
    let other = run_finetune(
        &c2,
        &b,
        &RunOptions {
            fresh: false,
            stop_after: Some(1),
        },
    )
    .unwrap();
    assert!(other.is_none());
}

#[test]
fn lambda_p_zero_keeps_the_base_and_drift_stop_fires() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(Method::Acpo);
    c.objective.lambda_p = 0.0;
    c.steps = 3;
    c.probe.samples = 0;
    let p = setup(dir.path(), "zero");
    let out = run_finetune(&c, &p, &RunOptions::default())
        .unwrap()
        .unwrap();
    let base =
        candle_core::safetensors::load(p.base_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let tuned =
        candle_core::safetensors::load(p.out_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(base.len(), tuned.len());
    for (k, v) in &base {
        assert_eq!(max_diff(v, &tuned[k]), 0.0, "{k} moved");
    }
    assert_eq!(out.last.anchor_distance.mean, 0.0);

    // perceptual-only with a tiny drift threshold stops at the first probe
    let mut c = cfg(Method::PerceptualOnly);
    c.drift_stop = Some(1e-12);
    c.probe.samples = 0;
    let p = setup(dir.path(), "stop");
    let out = run_finetune(&c, &p, &RunOptions::default())
        .unwrap()
        .unwrap();
    let d = out.drift_stop.clone().expect("drift stop did not fire");
    assert_eq!((d.step, out.steps), (2, 2));
    let m: serde_json::Value =
        serde_json::from_slice(&read(&p.out_dir.join("metrics.json"))).unwrap();
    assert_eq!(m["drift_stop"]["step"], 2);
    // running it again keeps it stopped
    let again = run_finetune(&c, &p, &RunOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!((again.steps, again.drift_stop.unwrap().step), (2, 2));
}

/// `draws: on-policy` trains on the model's own DDIM trajectory (ReFL) instead of forward-noised
/// training images; the config records it; methods with a data term refuse it, naming `draws`.
#[test]
fn on_policy_draws_train_on_the_models_own_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(Method::Acpo);
    c.steps = 3;
    c.probe.samples = 0;
    c.draws = DrawSource::OnPolicy;
    c.on_policy.sample_steps = 10;
    let on = setup(dir.path(), "on");
    let out = run_finetune(&c, &on, &RunOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(out.steps, 3);
    let resolved: serde_json::Value =
        serde_json::from_slice(&read(&on.out_dir.join("config.json"))).unwrap();
    assert_eq!(resolved["finetune"]["draws"], "on-policy");
    assert_eq!(resolved["finetune"]["on_policy"]["sample_steps"], 10);

    let mut f = c.clone();
    f.draws = DrawSource::Forward;
    let fwd = setup(dir.path(), "fwd");
    run_finetune(&f, &fwd, &RunOptions::default())
        .unwrap()
        .unwrap();
    let load = |p: &FinetunePaths| {
        candle_core::safetensors::load(p.out_dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (load(&on), load(&fwd));
    let moved_apart = a.iter().any(|(k, v)| max_diff(v, &b[k]) > 0.0);
    assert!(
        moved_apart,
        "on-policy and forward draws gave the same model"
    );

    for method in [Method::DataAnchor, Method::AcpoData] {
        let mut d = cfg(method);
        d.draws = DrawSource::OnPolicy;
        let p = setup(dir.path(), &format!("bad-{method}"));
        let err = run_finetune(&d, &p, &RunOptions::default()).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert!(err.to_string().contains("draws"), "{err}");
    }
}
