//! Roofline of the UNet on this CPU (used by `scripts/bench/roofline.sh`): the fp32 GEMM peak
//! measured through candle's CPU matmul (the `gemm` crate), the analytic FLOPs of one training
//! step and one sampling step (`acpo_diffusion::flops`), their measured times, and so the
//! achieved GFLOP/s and the fraction of the GEMM peak, for the forward pass, the backward pass
//! and the whole sampling step. The optimiser's time is reported beside them (its few
//! operations per parameter are memory-bound and not counted as FLOPs).
//!
//! Usage: `roofline [MODEL_JSON] [TRAIN_BATCH] [SAMPLE_BATCH] [STEPS]`; prints one JSON object.
//! Every timing is the best of `STEPS` repetitions after one untimed warm-up, so a stray
//! background process lowers a measurement less than a mean would.

use std::time::Instant;

use acpo_diffusion::flops::unet_forward_flops;
use acpo_diffusion::optim::{AdamW, AdamWConfig};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::{NoiseSchedule, UNet, UNetConfig};
use candle_core::{Device, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Best seconds of `reps` calls of `f` after one warm-up call.
fn best_of(reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// GFLOP/s of an `n` x `n` by `n` x `n` f32 matmul (2 n^3 FLOPs), best of `reps`.
fn gemm_gflops(n: usize, reps: usize, dev: &Device) -> Res<f64> {
    let mut r = SeededRng::new(0, &[n as u64]);
    let a = r.normal(&[n, n], dev)?;
    let b = r.normal(&[n, n], dev)?;
    let s = best_of(reps, || {
        let c = a.matmul(&b)?;
        // Force the result, as a later use would.
        let _ = c.get(0)?.get(0)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s / 1e9)
}

struct TrainTimes {
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
}

/// Best forward, backward and optimiser seconds of one training step of `batch` images.
fn train_step_times(
    model: &UNet,
    cfg: &UNetConfig,
    batch: usize,
    steps: usize,
    dev: &Device,
) -> Res<TrainTimes> {
    let mut opt = AdamW::new(model.vars()?, AdamWConfig::default())?;
    let sched = NoiseSchedule::linear(1000, 1e-4, 0.02);
    let s = cfg.image_size;
    let mut best = TrainTimes {
        forward_s: f64::INFINITY,
        backward_s: f64::INFINITY,
        optimizer_s: f64::INFINITY,
    };
    for step in 0..=steps {
        let mut r = SeededRng::new(0, &[step as u64]);
        let x0 = (r.normal(&[batch, cfg.in_channels, s, s], dev)? * 0.5)?;
        let eps = r.normal(&[batch, cfg.in_channels, s, s], dev)?;
        let ts: Vec<usize> = (0..batch).map(|_| r.below(1000)).collect();
        let xt = sched.q_sample(&x0, &ts, &eps)?;
        let tt = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), batch, dev)?;
        let t0 = Instant::now();
        let loss = (model.forward(&xt, &tt, None)? - &eps)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads, 1e-4, 1.0)?;
        let t3 = Instant::now();
        if step > 0 {
            best.forward_s = best.forward_s.min((t1 - t0).as_secs_f64());
            best.backward_s = best.backward_s.min((t2 - t1).as_secs_f64());
            best.optimizer_s = best.optimizer_s.min((t3 - t2).as_secs_f64());
        }
    }
    Ok(best)
}

/// Best seconds of one sampling step: a forward pass of `batch` images through frozen weights.
fn sample_step_s(
    model: &UNet,
    cfg: &UNetConfig,
    batch: usize,
    steps: usize,
    dev: &Device,
) -> Res<f64> {
    let frozen = model.frozen_copy()?;
    let s = cfg.image_size;
    let mut r = SeededRng::new(1, &[]);
    let xt = r.normal(&[batch, cfg.in_channels, s, s], dev)?;
    let tt = Tensor::from_vec(vec![500f32; batch], batch, dev)?;
    best_of(steps, || {
        let e = frozen.forward(&xt, &tt, None)?;
        let _ = e.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        Ok(())
    })
}

fn main() -> Res<()> {
    acpo_diffusion::malloc::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let cfg: UNetConfig = serde_json::from_str(args.get(1).map(String::as_str).unwrap_or("{}"))?;
    let train_batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let sample_batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;

    let mut gemm = Vec::new();
    for n in [256usize, 512, 1024, 2048] {
        gemm.push((n, gemm_gflops(n, 3, &dev)?));
    }
    let peak = gemm.iter().map(|g| g.1).fold(0.0, f64::max);

    let vm = candle_nn::VarMap::new();
    let model = UNet::new_trainable(&cfg, &vm, 0, &dev)?;
    let fwd_flops = unet_forward_flops(&cfg) as f64;
    let t = train_step_times(&model, &cfg, train_batch, steps, &dev)?;
    let sample_s = sample_step_s(&model, &cfg, sample_batch, steps, &dev)?;

    let gf = |flops: f64, s: f64| flops / s / 1e9;
    let fwd = gf(fwd_flops * train_batch as f64, t.forward_s);
    let bwd = gf(2.0 * fwd_flops * train_batch as f64, t.backward_s);
    let step_s = t.forward_s + t.backward_s + t.optimizer_s;
    let train = gf(3.0 * fwd_flops * train_batch as f64, step_s);
    let sample = gf(fwd_flops * sample_batch as f64, sample_s);
    let gemm_json: Vec<String> = gemm
        .iter()
        .map(|(n, g)| format!("{{\"n\":{n},\"gflops\":{g:.2}}}"))
        .collect();
    println!(
        "{{\"params\":{},\"forward_gflop_per_image\":{:.4},\"gemm\":[{}],\"gemm_peak_gflops\":{peak:.2},\
         \"train\":{{\"batch\":{train_batch},\"forward_s\":{:.4},\"backward_s\":{:.4},\"optimizer_s\":{:.4},\
         \"forward_gflops\":{fwd:.2},\"backward_gflops\":{bwd:.2},\"step_gflops\":{train:.2},\
         \"images_per_s\":{:.2},\"fraction_of_peak\":{:.3}}},\
         \"sample\":{{\"batch\":{sample_batch},\"step_s\":{sample_s:.4},\"gflops\":{sample:.2},\
         \"fraction_of_peak\":{:.3}}}}}",
        model.num_params(),
        fwd_flops / 1e9,
        gemm_json.join(","),
        t.forward_s,
        t.backward_s,
        t.optimizer_s,
        train_batch as f64 / step_s,
        train / peak,
        sample / peak,
    );
    Ok(())
}
