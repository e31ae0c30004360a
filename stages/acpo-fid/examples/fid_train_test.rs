//! FID, KID and diversity between two image sets, through the same library calls as
//! the `fid-ref` and `fid-compare` stages: reference statistics of `reference`
//! (a prepared `.safetensors` split or an image `.tar`), then `images` against them.
//!
//! `cargo run --release -p acpo-fid --example fid_train_test -- <weights> <reference> <images> <n> <out-dir>`
//!
//! Used for the CIFAR-10 train-vs-test measurement in the README:
//! reference = `$ACPO_MIRROR/cifar10/cifar10-jpeg-test.tar`,
//! images = `$ACPO_MIRROR/cifar10/cifar10-jpeg-train.tar`.

use acpo_fid::reference::{compare, compute_reference, CompareConfig, RefConfig, SampleConfig};
use acpo_fid::InceptionV3;
use candle_core::Device;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        return Err("usage: fid_train_test <weights> <reference> <images> <n> <out-dir>".into());
    }
    let (weights, reference, images) = (
        PathBuf::from(&a[1]),
        PathBuf::from(&a[2]),
        PathBuf::from(&a[3]),
    );
    let n: usize = a[4].parse()?;
    let out = PathBuf::from(&a[5]);
    std::fs::create_dir_all(&out)?;
    let model = InceptionV3::load(&weights, &Device::Cpu)?;
    let sample = SampleConfig {
        samples: n,
        seed: 0,
        batch_size: 16,
    };
    let ref_cfg = RefConfig {
        dataset: "reference".into(),
        images: reference,
        weights: weights.clone(),
        sample: sample.clone(),
        kid_features: 0,
    };
    let (stats, ref_metrics) = compute_reference(&ref_cfg, &model)?;
    let ref_path = out.join("reference.safetensors");
    stats.save(&ref_path)?;
    acpo_fid::io::write_json(&out.join("reference.metrics.json"), &ref_metrics)?;
    eprintln!("reference: {}", serde_json::to_string(&ref_metrics)?);
    let cmp_cfg = CompareConfig {
        images,
        reference: ref_path,
        weights,
        sample: SampleConfig { seed: 1, ..sample },
        kid: Default::default(),
    };
    let m = compare(&cmp_cfg, &model)?;
    acpo_fid::io::write_json(&out.join("metrics.json"), &m)?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}
