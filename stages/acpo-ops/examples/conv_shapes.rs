//! Single-thread GFLOP/s of the convolution op (`acpo_ops::conv::conv2d_bias`), forward and
//! forward+backward, at the cpu-profile UNet's shapes; `ACPO_CONV_KERNEL=gemm` selects the
//! `gemm` path, so two runs compare the tile kernels.
//!
//! Usage: `RAYON_NUM_THREADS=1 cargo run --release -p acpo-ops --example conv_shapes [SHAPE]`.

use acpo_ops::conv::conv2d_bias;
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // (what, input channels, output channels, size, stride, kernel size): the 3x3 kernels and
    // the residual blocks' pointwise skip kernels
    let shapes = [
        ("32x32, 32 -> 32", 32, 32, 32, 1, 3),
        ("32x32, 64 -> 32", 64, 32, 32, 1, 3),
        ("16x16, 64 -> 64", 64, 64, 16, 1, 3),
        ("8x8, 64 -> 64", 64, 64, 8, 1, 3),
        ("32x32 -> 16x16, 32", 32, 32, 32, 2, 3),
        ("1x1 32x32, 96 -> 32", 96, 32, 32, 1, 1),
        ("1x1 16x16, 128 -> 64", 128, 64, 16, 1, 1),
        ("1x1 8x8, 128 -> 64", 128, 64, 8, 1, 1),
    ];
    let batch = 4;
    // an optional argument: the name's start, to time one shape (e.g. under `perf`)
    let only = std::env::args().nth(1).unwrap_or_default();
    for (name, c, co, hw, stride, k) in shapes.into_iter().filter(|s| s.0.starts_with(&only)) {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, c, hw, hw), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (co, c, k, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(co, candle_core::DType::F32, &dev)?)?;
        let out = hw / stride;
        let flops = (2 * co * c * k * k * out * out * batch) as f64;
        let pad = k / 2;
        let time = |f: &mut dyn FnMut() -> candle_core::Result<()>| -> candle_core::Result<f64> {
            f()?;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..5 {
                    f()?;
                }
                best = best.min(t.elapsed().as_secs_f64() / 5.0);
            }
            Ok(best)
        };
        let fwd = time(&mut || conv2d_bias(&x, &w, &b, pad, stride).map(|_| ()))?;
        let both = time(&mut || {
            conv2d_bias(&x, &w, &b, pad, stride)?
                .sum_all()?
                .backward()?;
            Ok(())
        })?;
        println!(
            "{name}: forward {:.1} GFLOP/s, backward {:.1} GFLOP/s",
            flops / fwd / 1e9,
            2.0 * flops / (both - fwd) / 1e9
        );
    }
    Ok(())
}
