//! Throughput of the FID feature extractor and cost of the FID linear algebra.
//!
//! `cargo run --release -p acpo-fid --example fid_speed -- <inception-fid.safetensors | default_1.pt> [images] [batch]`
//! Images are CIFAR-10-sized (32x32) pseudo-random u8 images; prints images/s and the
//! seconds of covariance, matrix square root and FID at 2048 dimensions.

use acpo_fid::stats::{frechet_distance, sqrt_psd, GaussianStats};
use acpo_fid::InceptionV3;
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let weights = args
        .get(1)
        .ok_or("usage: fid_speed <weights> [images] [batch]")?;
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let mut weights = std::path::PathBuf::from(weights);
    if weights.extension().is_some_and(|e| e == "pt") {
        // The TorchScript archive itself: convert it first.
        let out = std::env::temp_dir().join("acpo-fid-speed.safetensors");
        acpo_fid::torchscript::convert(&weights, &out)?;
        weights = out;
    }
    let model = InceptionV3::load(&weights, &Device::Cpu)?;
    let mut state = 12345u64;
    let pix: Vec<u8> = (0..n * 3 * 32 * 32)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    let images = Tensor::from_vec(pix, (n, 3, 32, 32), &Device::Cpu)?;
    // Warm-up.
    model.features(&images.narrow(0, 0, 1)?)?;
    let t0 = Instant::now();
    let mut feats = Vec::new();
    for s in (0..n).step_by(batch) {
        let len = batch.min(n - s);
        feats.push(model.features(&images.narrow(0, s, len)?)?);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "features: {n} images (32x32 -> 299x299), batch {batch}: {secs:.1} s, {:.2} images/s",
        n as f64 / secs
    );

    // Linear algebra at full size on synthetic features (2000 x 2048).
    let rows = 2000;
    let f = Tensor::randn(0f32, 1f32, (rows, 2048), &Device::Cpu)?.relu()?;
    let g = Tensor::randn(0.1f32, 1f32, (rows, 2048), &Device::Cpu)?.relu()?;
    let t = Instant::now();
    let sa = GaussianStats::from_features(&f)?;
    let t_cov = t.elapsed().as_secs_f64();
    let sb = GaussianStats::from_features(&g)?;
    let t = Instant::now();
    let r = sqrt_psd(&sb.sigma)?;
    let t_sqrt = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fid = frechet_distance(&sa, &sb, &r)?;
    let t_fid = t.elapsed().as_secs_f64();
    println!(
        "linear algebra ({rows} x 2048): covariance {t_cov:.2} s, sqrt of a covariance {t_sqrt:.2} s, FID given the sqrt {t_fid:.2} s (FID {fid:.3})"
    );
    Ok(())
}
