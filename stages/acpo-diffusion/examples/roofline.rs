//! Roofline of the UNet on this CPU (used by `scripts/bench/roofline.sh`): the fp32 GEMM peak
//! measured through candle's CPU matmul (the `gemm` crate), the analytic FLOPs of one training
//! step and one sampling step (`acpo_diffusion::flops`), their measured times, and so the
//! achieved GFLOP/s and the fraction of the GEMM peak, for the forward pass, the backward pass
//! and the whole sampling step. The optimiser's time is reported beside them (its few
//! operations per parameter are memory-bound and not counted as FLOPs).
//!
//! Per op class (`acpo_ops::timing`: convolution, GroupNorm(+SiLU), attention, each forward
//! and backward) it reports the seconds spent inside the op, its share of the step, and, for
//! the classes that do counted FLOPs (`acpo_diffusion::flops::unet_forward_split`), its
//! GFLOP/s; `rest` is what the step spent outside them (linear layers, additions,
//! concatenations, the time embedding, autograd's bookkeeping).
//!
//! Usage: `roofline [MODEL_JSON] [TRAIN_BATCH] [SAMPLE_BATCH] [STEPS]`; prints one JSON object.
//! Every timing is that of the fastest of `STEPS` repetitions after one untimed warm-up, so a
//! stray background process lowers a measurement less than a mean would.

use std::time::Instant;

use acpo_diffusion::flops::{unet_forward_split, FlopSplit};
use acpo_diffusion::optim::{AdamW, AdamWConfig};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::{NoiseSchedule, UNet, UNetConfig};
use acpo_ops::timing::{self, OpClass, OpTimes};
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

/// The parts of one training step.
struct TrainTimes {
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    /// Time inside the timed ops during the forward and the backward pass.
    ops: OpTimes,
}

impl TrainTimes {
    fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
}

/// The fastest of `steps` training steps of `batch` images, in parts.
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
    let mut best: Option<TrainTimes> = None;
    for step in 0..=steps {
        let mut r = SeededRng::new(0, &[step as u64]);
        let x0 = (r.normal(&[batch, cfg.in_channels, s, s], dev)? * 0.5)?;
        let eps = r.normal(&[batch, cfg.in_channels, s, s], dev)?;
        let ts: Vec<usize> = (0..batch).map(|_| r.below(1000)).collect();
        let xt = sched.q_sample(&x0, &ts, &eps)?;
        let tt = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), batch, dev)?;
        timing::reset();
        let t0 = Instant::now();
        let loss = (model.forward(&xt, &tt, None)? - &eps)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        let ops = timing::snapshot();
        opt.step(&grads, 1e-4, 1.0)?;
        let t3 = Instant::now();
        let this = TrainTimes {
            forward_s: (t1 - t0).as_secs_f64(),
            backward_s: (t2 - t1).as_secs_f64(),
            optimizer_s: (t3 - t2).as_secs_f64(),
            ops,
        };
        if step > 0 && best.as_ref().is_none_or(|b| this.step_s() < b.step_s()) {
            best = Some(this);
        }
    }
    Ok(best.expect("at least one timed step"))
}

/// The fastest of `steps` sampling steps (a forward pass of `batch` images through frozen
/// weights): seconds, and the time inside the timed ops.
fn sample_step_times(
    model: &UNet,
    cfg: &UNetConfig,
    batch: usize,
    steps: usize,
    dev: &Device,
) -> Res<(f64, OpTimes)> {
    let frozen = model.frozen_copy()?;
    let s = cfg.image_size;
    let mut r = SeededRng::new(1, &[]);
    let xt = r.normal(&[batch, cfg.in_channels, s, s], dev)?;
    let tt = Tensor::from_vec(vec![500f32; batch], batch, dev)?;
    let mut best = (f64::INFINITY, OpTimes::default());
    for step in 0..=steps {
        timing::reset();
        let t = Instant::now();
        let e = frozen.forward(&xt, &tt, None)?;
        let _ = e.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        let secs = t.elapsed().as_secs_f64();
        if step > 0 && secs < best.0 {
            best = (secs, timing::snapshot());
        }
    }
    Ok(best)
}

/// One op class as JSON: seconds, share of `whole_s`, and GFLOP/s when it does counted FLOPs.
fn class_json(name: &str, secs: f64, whole_s: f64, flops: Option<f64>) -> String {
    let gflops = match flops {
        Some(f) if secs > 0.0 => format!(",\"gflops\":{:.2}", f / secs / 1e9),
        _ => String::new(),
    };
    format!(
        "\"{name}\":{{\"s\":{secs:.4},\"share\":{:.3}{gflops}}}",
        secs / whole_s
    )
}

/// The per-class split of a pass over `images` images: `forward` picks the forward classes
/// (the backward ones otherwise, which do twice the forward's counted FLOPs); `rest` is the
/// pass's time outside them.
fn pass_json(
    ops: &OpTimes,
    forward: bool,
    pass_s: f64,
    whole_s: f64,
    split: &FlopSplit,
    images: f64,
) -> String {
    let (classes, mult) = if forward {
        (
            [
                OpClass::ConvForward,
                OpClass::NormForward,
                OpClass::AttentionForward,
            ],
            1.0,
        )
    } else {
        (
            [
                OpClass::ConvBackward,
                OpClass::NormBackward,
                OpClass::AttentionBackward,
            ],
            2.0,
        )
    };
    let flops = |c: OpClass| match c {
        OpClass::ConvForward | OpClass::ConvBackward => Some(split.conv as f64 * mult * images),
        OpClass::AttentionForward | OpClass::AttentionBackward => {
            Some(split.attention as f64 * mult * images)
        }
        OpClass::NormForward | OpClass::NormBackward => None,
    };
    let mut parts: Vec<String> = classes
        .iter()
        .map(|&c| class_json(c.name(), ops.get(c).seconds, whole_s, flops(c)))
        .collect();
    let inside: f64 = classes.iter().map(|&c| ops.get(c).seconds).sum();
    let rest = if forward {
        "rest_forward"
    } else {
        "rest_backward"
    };
    parts.push(class_json(rest, (pass_s - inside).max(0.0), whole_s, None));
    parts.join(",")
}

fn main() -> Res<()> {
    acpo_diffusion::startup::tune_cpu_process();
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
    let split = unet_forward_split(&cfg);
    let fwd_flops = split.total() as f64;
    timing::enable(true);
    let t = train_step_times(&model, &cfg, train_batch, steps, &dev)?;
    let (sample_s, sample_ops) = sample_step_times(&model, &cfg, sample_batch, steps, &dev)?;
    timing::enable(false);

    let gf = |flops: f64, s: f64| flops / s / 1e9;
    let tb = train_batch as f64;
    let fwd = gf(fwd_flops * tb, t.forward_s);
    let bwd = gf(2.0 * fwd_flops * tb, t.backward_s);
    let step_s = t.step_s();
    let train = gf(3.0 * fwd_flops * tb, step_s);
    let sample = gf(fwd_flops * sample_batch as f64, sample_s);
    let train_ops = [
        pass_json(&t.ops, true, t.forward_s, step_s, &split, tb),
        pass_json(&t.ops, false, t.backward_s, step_s, &split, tb),
        class_json("optimizer", t.optimizer_s, step_s, None),
    ]
    .join(",");
    let sample_ops = pass_json(
        &sample_ops,
        true,
        sample_s,
        sample_s,
        &split,
        sample_batch as f64,
    );
    let gemm_json: Vec<String> = gemm
        .iter()
        .map(|(n, g)| format!("{{\"n\":{n},\"gflops\":{g:.2}}}"))
        .collect();
    println!(
        "{{\"params\":{},\"forward_gflop_per_image\":{:.4},\"forward_gflop_split\":{{\"conv\":{:.4},\"attention\":{:.4},\"linear\":{:.4}}},\
         \"gemm\":[{}],\"gemm_peak_gflops\":{peak:.2},\
         \"train\":{{\"batch\":{train_batch},\"forward_s\":{:.4},\"backward_s\":{:.4},\"optimizer_s\":{:.4},\
         \"forward_gflops\":{fwd:.2},\"backward_gflops\":{bwd:.2},\"step_gflops\":{train:.2},\
         \"images_per_s\":{:.2},\"fraction_of_peak\":{:.3},\"ops\":{{{train_ops}}}}},\
         \"sample\":{{\"batch\":{sample_batch},\"step_s\":{sample_s:.4},\"gflops\":{sample:.2},\
         \"fraction_of_peak\":{:.3},\"ops\":{{{sample_ops}}}}}}}",
        model.num_params(),
        fwd_flops / 1e9,
        split.conv as f64 / 1e9,
        split.attention as f64 / 1e9,
        split.linear as f64 / 1e9,
        gemm_json.join(","),
        t.forward_s,
        t.backward_s,
        t.optimizer_s,
        tb / step_s,
        train / peak,
        sample / peak,
    );
    Ok(())
}
