//! Training throughput of the UNet on random 32x32 images (used by `scripts/bench/diffusion.sh`).
//!
//! Usage: `throughput [MODEL_JSON] [BATCH] [STEPS]`; MODEL_JSON is a `UNetConfig` as JSON
//! (default: `{}` = the defaults). Prints one JSON line with images/s and seconds per step
//! (forward+backward+AdamW), after one untimed warm-up step, and `cores_busy`: the process's
//! CPU seconds over the wall seconds of the timed steps (the JAX peer reports the same).

use std::time::Instant;

use acpo_diffusion::optim::{AdamW, AdamWConfig};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::{NoiseSchedule, UNet, UNetConfig};
use candle_core::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    acpo_diffusion::startup::tune_cpu_process();
    let args: Vec<String> = std::env::args().collect();
    let cfg: UNetConfig = serde_json::from_str(args.get(1).map(String::as_str).unwrap_or("{}"))?;
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let model = UNet::new_trainable(&cfg, &vm, 0, &dev)?;
    let mut opt = AdamW::new(model.vars()?, AdamWConfig::default())?;
    let sched = NoiseSchedule::linear(1000, 1e-4, 0.02);
    let s = cfg.image_size;
    let mut fwd = 0f64;
    let mut bwd = 0f64;
    let mut total = 0f64;
    let mut cpu = 0f64;
    for step in 0..=steps {
        let mut r = SeededRng::new(0, &[step as u64]);
        let x0 = (r.normal(&[batch, cfg.in_channels, s, s], &dev)? * 0.5)?;
        let eps = r.normal(&[batch, cfg.in_channels, s, s], &dev)?;
        let ts: Vec<usize> = (0..batch).map(|_| r.below(1000)).collect();
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let xt = sched.q_sample(&x0, &ts, &eps)?;
        let tt = Tensor::from_vec(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            batch,
            &dev,
        )?;
        let loss = (model.forward(&xt, &tt, None)? - eps)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads, 1e-4, 1.0)?;
        let t3 = Instant::now();
        if step > 0 {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            total += (t3 - t0).as_secs_f64();
            cpu += cpu_seconds() - c0;
        }
    }
    let n = steps as f64;
    println!(
        "{{\"impl\":\"candle\",\"params\":{},\"batch\":{batch},\"steps\":{steps},\"step_s\":{:.4},\"forward_s\":{:.4},\"backward_s\":{:.4},\"images_per_s\":{:.3},\"cores_busy\":{:.2}}}",
        model.num_params(),
        total / n,
        fwd / n,
        bwd / n,
        (batch as f64 * n) / total,
        cpu / total
    );
    Ok(())
}

/// User and system CPU seconds of this process so far, all threads (0 off Unix).
fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the zero-initialised struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
            return 0.0;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        secs(u.ru_utime) + secs(u.ru_stime)
    }
    #[cfg(not(unix))]
    {
        0.0
    }
}
