//! The FID Inception-v3 in candle (acpo-fid, what the pipeline runs) against the same network
//! exported by this program to ONNX and run by ONNX Runtime (the peer of issue 15), on the same
//! pre-processed input in the same process: images/s of each, best of `REPS` batches after a
//! warm-up, and the largest difference of their 2048-d features.
//!
//! The export is acpo-fid's (`acpo_fid::onnx::export_onnx`, the graph the pipeline's FID stages
//! run since 2026-12-02).
//!
//! Usage: `inception_ort WEIGHTS OUT.onnx [BATCH] [REPS] [THREADS]`; prints one JSON line.

use std::path::Path;
use std::time::Instant;

use acpo_fid::InceptionV3;
use acpo_iqa::onnx::OnnxModel;
use candle_core::{DType, Device, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    // what the `acpo` command sets up first: the candle forward runs as it does there
    acpo_diffusion::startup::tune_cpu_process();
    let args: Vec<String> = std::env::args().collect();
    let weights = Path::new(
        args.get(1)
            .ok_or("usage: inception_ort WEIGHTS OUT.onnx [BATCH] [REPS] [THREADS]")?,
    );
    let out = Path::new(args.get(2).ok_or("OUT.onnx")?);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let reps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let threads: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(2);

    acpo_fid::onnx::export_onnx(weights, out)?;
    acpo_iqa::onnx::init_ort(None)?;
    let ort = OnnxModel::load(out, threads)?;
    let candle = InceptionV3::load(weights, &Device::Cpu)?;

    // CIFAR-sized random images through the candle pre-processing (both get its output).
    let imgs =
        (Tensor::rand(0f32, 1f32, (batch, 3, 32, 32), &Device::Cpu)?).to_dtype(DType::F32)?;
    let x = candle.preprocess(&imgs)?;
    let x_vec: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let shape = [batch, 3, 299, 299];

    let mut best_c = f64::INFINITY;
    let mut best_o = f64::INFINITY;
    let mut feats_c = Vec::new();
    let mut feats_o = Vec::new();
    let mut ratios = Vec::new();
    for i in 0..=reps {
        let t = Instant::now();
        let f = candle.forward_preprocessed(&x)?;
        feats_c = f.flatten_all()?.to_vec1::<f32>()?;
        let dc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        feats_o = ort.run(x_vec.clone(), &shape)?;
        let d_o = t.elapsed().as_secs_f64();
        if i > 0 {
            best_c = best_c.min(dc);
            best_o = best_o.min(d_o);
            ratios.push(d_o / dc);
        }
    }
    let max_abs = feats_c
        .iter()
        .zip(&feats_o)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let max_feat = feats_c.iter().map(|v| v.abs()).fold(0f32, f32::max);
    // each repetition times both back to back: the median of their ratios is the least
    // affected by the machine's speed changing between repetitions
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    println!(
        "{{\"batch\":{batch},\"reps\":{reps},\"threads\":{threads},\"candle_images_per_s\":{:.3},\"ort_images_per_s\":{:.3},\"candle_over_ort\":{:.3},\"candle_over_ort_median_of_reps\":{median:.3},\"max_abs_feature_diff\":{max_abs:.3e},\"max_abs_feature\":{max_feat:.3}}}",
        batch as f64 / best_c,
        batch as f64 / best_o,
        best_o / best_c,
    );
    Ok(())
}
