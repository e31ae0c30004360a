//! `train-base` end to end on a tiny model and dataset: exact resume, outputs, sampling.

mod common;

use std::collections::HashMap;
use std::path::Path;

use acpo_diffusion::config::{BenchmarkParams, SamplerKind};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::{sample_to_dir, train_base, UNetConfig};
use candle_core::{Device, Tensor};
use common::bytes;

fn write_split(path: &Path, n: usize, seed: u64) {
    let mut r = SeededRng::new(seed, &[]);
    // Smooth-ish images: a per-image colour plus noise, so the loss can fall.
    let mut px = Vec::with_capacity(n * 8 * 8 * 3);
    for _ in 0..n {
        let base: Vec<f32> = (0..3).map(|_| r.uniform() * 255.0).collect();
        for _ in 0..64 {
            for b in &base {
                px.push((b + 20.0 * (r.uniform() - 0.5)).clamp(0.0, 255.0) as u8);
            }
        }
    }
    common::save_split(path, px, vec![0; n]);
}

fn tiny_params(steps: usize) -> BenchmarkParams {
    let mut p = BenchmarkParams {
        model: UNetConfig {
            dropout: 0.1,
            ..common::tiny_unet(None)
        },
        ..Default::default()
    };
    p.schedule.timesteps = 50;
    p.train.steps = steps;
    p.train.batch_size = 4;
    p.train.warmup_steps = 3;
    p.train.lr = 1e-3;
    p.train.checkpoint_every = 3;
    p.train.heldout_images = 8;
    p.sample.num_images = 6;
    p.sample.steps = 5;
    p.sample.batch_size = 4;
    p.sample.grid_cols = 3;
    p
}

#[test]
fn resume_is_bit_identical_and_outputs_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.safetensors"), 16, 1);
    write_split(&data.join("test.safetensors"), 8, 2);

    let full = dir.path().join("full");
    let split = dir.path().join("split");
    let a = train_base(&tiny_params(8), &data, &full, false).unwrap();
    // Stop at step 5 (not a checkpoint multiple: the final checkpoint is written at the end),
    // then resume to 8.
    let h = train_base(&tiny_params(5), &data, &split, false).unwrap();
    assert_eq!(h.steps, 5);
    let b = train_base(&tiny_params(8), &data, &split, false).unwrap();
    assert_eq!(b.invocation.resumed_from, 5);

    // metrics.json too: the model folder is every later stage's dependency, so a resumed
    // (or re-measured) run must not change a byte of it (no timing or resume point inside).
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "loss.csv",
        "metrics.json",
    ] {
        assert!(
            bytes(&full.join(f)) == bytes(&split.join(f)),
            "{f} differs after resume"
        );
    }
    assert_eq!(a.heldout_mse, b.heldout_mse);
    let csv = String::from_utf8(bytes(&full.join("loss.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(csv.starts_with("step,loss,lr,grad_norm\n1,"));
    let cfg: acpo_diffusion::train::TrainRecord =
        serde_json::from_slice(&bytes(&full.join("config.json"))).unwrap();
    assert_eq!(cfg, (&tiny_params(8)).into());
    let metrics: serde_json::Value =
        serde_json::from_slice(&bytes(&full.join("metrics.json"))).unwrap();
    assert_eq!(metrics["steps"], 8);
    assert!(metrics["heldout_mse"]["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics["heldout_mse"]["n"], 8);

    // A fresh run (not resumed) also matches: resuming is not a no-op that hides drift.
    let fresh = dir.path().join("fresh");
    train_base(&tiny_params(8), &data, &fresh, false).unwrap();
    assert!(bytes(&full.join("model.safetensors")) == bytes(&fresh.join("model.safetensors")));

    // A changed config must refuse to resume from the checkpoint.
    let mut other = tiny_params(10);
    other.train.lr = 5e-4;
    let err = train_base(&other, &data, &split, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot resume"), "{err}");

    // Sampling: reproducible from seeds, independent of batch size.
    let s1 = dir.path().join("s1");
    let s2 = dir.path().join("s2");
    let p = tiny_params(8);
    sample_to_dir(&p, &full, &s1).unwrap();
    let mut p2 = p.clone();
    p2.sample.batch_size = 6;
    sample_to_dir(&p2, &full, &s2).unwrap();
    assert!(bytes(&s1.join("samples.safetensors")) == bytes(&s2.join("samples.safetensors")));
    let imgs =
        candle_core::safetensors::load(s1.join("samples.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(imgs["images"].dims(), &[6, 8, 8, 3]);
    assert_eq!(imgs["images"].dtype(), candle_core::DType::U8);
    let png = image::open(s1.join("grid.png")).unwrap();
    assert_eq!((png.width(), png.height()), (3 * 10 + 2, 2 * 10 + 2));
    let mut p3 = p.clone();
    p3.sample.sampler = SamplerKind::Ddpm;
    p3.sample.num_images = 2;
    sample_to_dir(&p3, &full, &dir.path().join("s3")).unwrap();
}

/// The recipe's levers (cosine decay, EMA warm-up, min-SNR weighting, weight decay) still
/// resume bit-exactly, also when the run is stopped with `train_loop_until`, and a decaying
/// schedule refuses to resume under another step count.
#[test]
fn recipe_run_resumes_bit_exactly_from_an_intermediate_stop() {
    use acpo_diffusion::config::{LossWeighting, LrSchedule};
    use acpo_diffusion::data::ImageSet;
    use acpo_diffusion::train::train_loop_until;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.safetensors"), 16, 1);
    write_split(&data.join("test.safetensors"), 8, 2);
    let mut p = tiny_params(8);
    p.train.lr_schedule = LrSchedule::Cosine;
    p.train.ema_warmup = true;
    p.train.loss_weighting = LossWeighting::MinSnr;
    p.train.weight_decay = 0.01;
    p.schedule.kind = acpo_diffusion::ScheduleKind::Cosine;

    let full = dir.path().join("full");
    train_base(&p, &data, &full, false).unwrap();
    let set = ImageSet::load(&data.join("train.safetensors")).unwrap();
    let split = dir.path().join("split");
    let (_, o) = train_loop_until(&p, &set, None, &split, false, &Device::Cpu, 5).unwrap();
    assert_eq!(o.steps, 5);
    let csv = String::from_utf8(bytes(&split.join("loss.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let b = train_base(&p, &data, &split, false).unwrap();
    assert_eq!(b.invocation.resumed_from, 5);
    for f in ["model.safetensors", "checkpoint.safetensors", "loss.csv"] {
        assert!(
            bytes(&full.join(f)) == bytes(&split.join(f)),
            "{f} differs after resume"
        );
    }
    // The learning rate decays towards 0 and the last step's is the smallest after warm-up.
    let csv = String::from_utf8(bytes(&full.join("loss.csv"))).unwrap();
    let lrs: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(lrs[7] < lrs[3] && lrs[7] > 0.0, "{lrs:?}");

    // Stopping past the run's steps is refused, and so is a cosine run under other steps.
    let err = train_loop_until(&p, &set, None, &split, false, &Device::Cpu, 9)
        .unwrap_err()
        .to_string();
    assert!(err.contains("step 9"), "{err}");
    let mut longer = p.clone();
    longer.train.steps = 12;
    let err = train_base(&longer, &data, &split, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot resume"), "{err}");
}

#[test]
fn training_reduces_loss_on_tiny_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.safetensors"), 16, 1);
    write_split(&data.join("test.safetensors"), 8, 2);
    let mut p = tiny_params(60);
    p.train.checkpoint_every = 1000;
    p.train.batch_size = 8;
    train_base(&p, &data, &dir.path().join("out"), false).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("out/loss.csv")).unwrap();
    let losses: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[50..].iter().sum::<f64>() / 10.0;
    assert!(
        last < 0.7 * first,
        "loss did not fall: first {first}, last {last}"
    );
}

#[test]
fn bad_dataset_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = HashMap::new();
    m.insert(
        "pixels".to_string(),
        Tensor::zeros((2, 8, 8, 3), candle_core::DType::U8, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, dir.path().join("train.safetensors")).unwrap();
    let err = train_base(&tiny_params(2), dir.path(), &dir.path().join("o"), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.safetensors") && err.contains("images") && err.contains("missing"),
        "{err}"
    );
}
