//! The `train-base` and `sample` stages.
//!
//! Output layout of `train-base` in `out_dir` (e.g. `results/base/<benchmark>/`):
//! `model.safetensors` (EMA weights, parameter names as in [`UNet::params`]),
//! `checkpoint.safetensors` (`model.*`, `ema.*`, `adam_m.*`, `adam_v.*`, `meta.step`,
//! `meta.seed`, `meta.loss`), `config.json` (the resolved [`BenchmarkParams`]), `loss.csv`
//! (`step,loss,lr,grad_norm`), `metrics.json` ([`TrainOutcome`]).
//!
//! RNG state: every training draw of step `s` comes from streams keyed by `(seed, s)`, so the
//! seed and the step counter are the complete RNG state; resuming from a checkpoint replays
//! exactly the draws an uninterrupted run makes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::conditioning::{ClassContexts, ConditioningCheck};
use crate::config::{BenchmarkParams, LossWeighting, LrSchedule, SamplerKind, TrainConfig};
use crate::data::{to_u8_hwc, ImageSet};
use crate::error::{DiffusionError, Result};
use crate::metrics::{heldout_mse, heldout_mse_per_draw, HeldoutMse};
use crate::optim::{AdamW, AdamWConfig, Ema};
use crate::rng::SeededRng;
use crate::sampler::{sample, SamplerOpts};
use crate::schedule::NoiseSchedule;
use crate::unet::UNet;

const KEY_BATCH: u64 = 1;
const KEY_DROPOUT: u64 = 2;

/// Saves named tensors as safetensors under a temporary name, then renames into place.
pub fn save_tensors_atomic(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    acpo_core::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(map, tmp).map_err(DiffusionError::from)
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    Ok(acpo_core::write_json(path, v)?)
}

use acpo_core::device::default_device;

/// What `train-base` reports in `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Optimiser steps completed.
    pub steps: usize,
    /// Mean training loss of the last (up to) 100 steps.
    pub final_train_loss: f64,
    /// Held-out noise-prediction MSE of the EMA model on the test split.
    pub heldout_mse: HeldoutMse,
    /// Scalar parameters of the UNet.
    pub num_params: usize,
    /// Training images used.
    pub train_images: usize,
    /// Conditional models only: how much the model uses its caption (held-out, paired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditioning: Option<ConditioningCheck>,
    /// This invocation's resume point and speed. Not in `metrics.json`: that file sits in the
    /// model folder every later stage depends on, so it holds only what the same inputs
    /// reproduce byte for byte (an idle re-measurement must not make the stages below stale).
    #[serde(skip)]
    pub invocation: TrainInvocation,
}

/// How one `train-base` invocation went: written by the stage glue to a timing file outside
/// the model folder (`results/timing/`), never into it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainInvocation {
    /// Step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// Optimiser steps done by this invocation.
    pub steps_done: usize,
    /// Wall-clock seconds of this invocation's training steps (checkpoints excluded).
    pub train_seconds: f64,
    /// Training throughput of this invocation (images per second).
    pub images_per_s: f64,
}

/// Fields of the train config that may change between a checkpoint and its resumption.
fn resume_key(p: &BenchmarkParams) -> String {
    let mut p = p.clone();
    // A decaying learning rate is a function of `steps`, so only a constant one may resume
    // under another step count.
    if p.train.lr_schedule == LrSchedule::Constant {
        p.train.steps = 0;
    }
    p.train.checkpoint_every = 0;
    p.train.heldout_images = 0;
    p.train.heldout_seed = 0;
    p.sample = Default::default();
    serde_json::to_string(&p).expect("params serialise")
}

/// The resolved config `train-base` writes as `config.json` (the sample section is not part of
/// a trained model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRecord {
    pub model: crate::config::UNetConfig,
    pub schedule: crate::config::ScheduleConfig,
    pub train: crate::config::TrainConfig,
}

impl From<&BenchmarkParams> for TrainRecord {
    fn from(p: &BenchmarkParams) -> Self {
        Self {
            model: p.model.clone(),
            schedule: p.schedule.clone(),
            train: p.train.clone(),
        }
    }
}

/// What the images of a training run are conditioned on (unconditional runs pass `None`).
#[derive(Debug, Clone, Copy)]
pub enum TrainCond<'a> {
    /// A context `[N, L, D]` per training image (row `i` for image `i`).
    PerImage(&'a Tensor),
    /// Captions by class: each step draws one of the image's class captions.
    ByClass(&'a ClassContexts),
}

/// One training step's loss on a batch; draws come from `(seed, step)` streams.
#[allow(clippy::too_many_arguments)]
fn loss_at_step(
    model: &UNet,
    schedule: &NoiseSchedule,
    data: &ImageSet,
    contexts: Option<TrainCond>,
    p: &BenchmarkParams,
    step: usize,
    device: &Device,
) -> Result<Tensor> {
    let tc = &p.train;
    let b = tc.batch_size;
    let mut r = SeededRng::new(tc.seed, &[KEY_BATCH, step as u64]);
    let idx: Vec<usize> = (0..b).map(|_| r.below(data.n)).collect();
    let flip: Vec<bool> = (0..b)
        .map(|_| tc.random_flip && r.uniform() < 0.5)
        .collect();
    let ts: Vec<usize> = (0..b).map(|_| r.below(schedule.timesteps())).collect();
    let x0 = data.batch(&idx, &flip, device)?;
    let eps = r.normal(x0.dims(), device)?;
    let xt = schedule.q_sample(&x0, &ts, &eps)?;
    let tt = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, device)?;
    let ctx = match contexts {
        Some(cond) => {
            let sel = match cond {
                TrainCond::PerImage(c) => {
                    let ids = idx.iter().map(|&i| i as u32).collect::<Vec<_>>();
                    c.index_select(&Tensor::from_vec(ids, b, device)?, 0)?
                }
                TrainCond::ByClass(c) => {
                    let labels: Vec<i64> = idx.iter().map(|&i| data.labels[i]).collect();
                    c.draw(&labels, &mut r, device)?
                }
            };
            // Classifier-free guidance training: drop the condition (zeros) with prob cond_drop.
            let keep: Vec<f32> = (0..b)
                .map(|_| {
                    if (r.uniform() as f64) < tc.cond_drop {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (b, 1, 1), device)?;
            Some(sel.broadcast_mul(&keep)?)
        }
        None => None,
    };
    let mut dr = SeededRng::new(tc.seed, &[KEY_DROPOUT, step as u64]);
    let pred = model.forward_train(&xt, &tt, ctx.as_ref(), Some(&mut dr))?;
    let err = (pred - eps)?.sqr()?;
    match tc.loss_weighting {
        LossWeighting::Uniform => Ok(err.mean_all()?),
        LossWeighting::MinSnr => {
            let w: Vec<f32> = ts
                .iter()
                .map(|&t| loss_weight(tc, schedule, t) as f32)
                .collect();
            let w = Tensor::from_vec(w, b, device)?;
            let per_image = err.flatten_from(1)?.mean(1)?;
            Ok((per_image * w)?.mean_all()?)
        }
    }
}

/// Weight of a training draw at timestep `t` (0-based) under `train.loss_weighting`.
pub fn loss_weight(tc: &TrainConfig, schedule: &NoiseSchedule, t: usize) -> f64 {
    match tc.loss_weighting {
        LossWeighting::Uniform => 1.0,
        LossWeighting::MinSnr => {
            let ab = schedule.alphas_cumprod[t];
            let snr = ab / (1.0 - ab);
            snr.min(tc.min_snr_gamma) / snr
        }
    }
}

/// Learning rate at `step` (0-based): linear warm-up to `lr` over `warmup_steps`, then
/// `train.lr_schedule`: constant (DDPM), or a cosine or linear decay whose progress
/// `(step - warmup) / (steps - warmup)` runs from 0 at the first step after warm-up towards 1
/// at the end, so every step has a learning rate above 0.
pub fn lr_at(p: &BenchmarkParams, step: usize) -> f64 {
    let tc = &p.train;
    let w = tc.warmup_steps;
    if step < w {
        return tc.lr * ((step + 1) as f64 / w as f64);
    }
    let progress = (step - w) as f64 / (tc.steps.saturating_sub(w)).max(1) as f64;
    let progress = progress.min(1.0);
    match tc.lr_schedule {
        LrSchedule::Constant => tc.lr,
        LrSchedule::Cosine => tc.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        LrSchedule::Linear => tc.lr * (1.0 - progress),
    }
}

/// EMA decay used by update `step + 1` (`step` 0-based): `ema_decay`, or with `ema_warmup`
/// `min(ema_decay, (1 + n) / (10 + n))` for the `n = step + 1`-th update.
pub fn ema_decay_at(tc: &TrainConfig, step: usize) -> f64 {
    if tc.ema_warmup {
        let n = (step + 1) as f64;
        tc.ema_decay.min((1.0 + n) / (10.0 + n))
    } else {
        tc.ema_decay
    }
}

/// Trains a base model on `data_dir/train.safetensors` into `out_dir`, resuming from
/// `out_dir/checkpoint.safetensors` when present (unless `fresh`), and evaluates the EMA model
/// on `data_dir/test.safetensors`.
pub fn train_base(
    p: &BenchmarkParams,
    data_dir: &Path,
    out_dir: &Path,
    fresh: bool,
) -> Result<TrainOutcome> {
    train_base_with(p, data_dir, None, out_dir, fresh)
}

/// [`train_base`] for a prompt-conditioned model (`model.context_dim` set): each training image
/// is captioned by one of its class's `contexts`, drawn per step, and dropped to the null
/// condition with probability `train.cond_drop` (classifier-free guidance). The held-out MSE is
/// taken with each test image's first class caption, and `conditioning` says how much worse the
/// null condition and another class's caption do on the same draws.
pub fn train_base_conditional(
    p: &BenchmarkParams,
    data_dir: &Path,
    contexts: &ClassContexts,
    out_dir: &Path,
    fresh: bool,
) -> Result<TrainOutcome> {
    train_base_with(p, data_dir, Some(contexts), out_dir, fresh)
}

fn train_base_with(
    p: &BenchmarkParams,
    data_dir: &Path,
    contexts: Option<&ClassContexts>,
    out_dir: &Path,
    fresh: bool,
) -> Result<TrainOutcome> {
    p.validate()?;
    let mut data = ImageSet::load(&data_dir.join("train.safetensors"))?;
    data.truncate(p.train.train_subset);
    let m = &p.model;
    if data.h != m.image_size || data.w != m.image_size || data.c != m.in_channels {
        return Err(DiffusionError::BadInput {
            path: data_dir.join("train.safetensors"),
            member: "images".into(),
            msg: format!(
                "images are {}x{}x{}, model.image_size/in_channels want {}x{}x{}",
                data.h, data.w, data.c, m.image_size, m.image_size, m.in_channels
            ),
        });
    }
    check_contexts(p, contexts)?;
    std::fs::create_dir_all(out_dir).map_err(|e| DiffusionError::io(out_dir, e))?;
    let device = default_device();
    let test_path = data_dir.join("test.safetensors");
    let mut test = ImageSet::load(&test_path)?;
    test.truncate(p.train.heldout_images);
    if let Some(c) = contexts {
        c.check_covers(&data.labels)?;
        c.check_covers(&test.labels)?;
    }
    let cond = contexts.map(TrainCond::ByClass);
    let (_model, outcome_parts) = train_loop(p, &data, cond, out_dir, fresh, &device)?;
    let ema_model = UNet::load(&p.model, &out_dir.join("model.safetensors"), &device)?;
    let schedule = NoiseSchedule::from_config(&p.schedule)?;
    let images = test.all(&device)?;
    let seed = p.train.heldout_seed;
    let (mse, conditioning) = match contexts {
        None => (
            heldout_mse(&ema_model, &schedule, &images, seed, 1, None)?,
            None,
        ),
        Some(c) => {
            let caption = c.first(&test.labels, &device)?;
            let k = c.classes() as i64;
            let other_labels: Vec<i64> = test.labels.iter().map(|l| (l + 1) % k).collect();
            let other = c.first(&other_labels, &device)?;
            let null = caption.zeros_like()?;
            let draws = |ctx: &Tensor| {
                heldout_mse_per_draw(&ema_model, &schedule, &images, seed, 1, Some(ctx))
            };
            let check =
                ConditioningCheck::from_draws(&draws(&caption)?, &draws(&null)?, &draws(&other)?);
            (check.caption, Some(check))
        }
    };
    let outcome = TrainOutcome {
        heldout_mse: mse,
        train_images: data.n,
        conditioning,
        ..outcome_parts
    };
    write_json(&out_dir.join("metrics.json"), &outcome)?;
    Ok(outcome)
}

/// A conditional model needs contexts of its `context_dim`, an unconditional one none.
fn check_contexts(p: &BenchmarkParams, contexts: Option<&ClassContexts>) -> Result<()> {
    match (p.model.context_dim, contexts) {
        (None, None) => Ok(()),
        (Some(d), Some(c)) if c.context_dim() == d => Ok(()),
        (Some(d), Some(c)) => Err(DiffusionError::config(
            "model.context_dim",
            format!(
                "{d}, but the captions' token states are {} wide",
                c.context_dim()
            ),
        )),
        (Some(_), None) => Err(DiffusionError::config(
            "model.context_dim",
            "a prompt-conditioned model needs captions (train-base/sample --captions)",
        )),
        (None, Some(_)) => Err(DiffusionError::config(
            "model.context_dim",
            "unset (an unconditional model), but captions were given",
        )),
    }
}

/// The training loop behind [`train_base`]: trains (or resumes) and writes `model.safetensors`,
/// `checkpoint.safetensors`, `config.json` and `loss.csv` into `out_dir`. `contexts`
/// (`[N, L, D]`, one per training image) trains a text-conditional model with condition dropout.
/// Returns the trained model (vars at their final values) and the outcome without held-out MSE.
pub fn train_loop(
    p: &BenchmarkParams,
    data: &ImageSet,
    contexts: Option<TrainCond>,
    out_dir: &Path,
    fresh: bool,
    device: &Device,
) -> Result<(UNet, TrainOutcome)> {
    train_loop_until(p, data, contexts, out_dir, fresh, device, p.train.steps)
}

/// [`train_loop`] stopped after step `until` (<= `train.steps`): the checkpoint, the EMA
/// `model.safetensors` and `loss.csv` describe the run at `until`, and the learning-rate
/// schedule is still the one of the whole `train.steps` run, so calling it again with a later
/// `until` continues exactly as an uninterrupted run (the base-training study evaluates its
/// runs this way at several points).
pub fn train_loop_until(
    p: &BenchmarkParams,
    data: &ImageSet,
    contexts: Option<TrainCond>,
    out_dir: &Path,
    fresh: bool,
    device: &Device,
    until: usize,
) -> Result<(UNet, TrainOutcome)> {
    let tc = &p.train;
    if until > tc.steps {
        return Err(DiffusionError::config(
            "train.steps",
            format!("cannot stop at step {until} of a {}-step run", tc.steps),
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DiffusionError::io(out_dir, e))?;
    let schedule = NoiseSchedule::from_config(&p.schedule)?;
    let varmap = VarMap::new();
    let model = UNet::new_trainable(&p.model, &varmap, tc.seed, device)?;
    let vars = model.vars()?;
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: tc.lr,
            beta1: tc.beta1,
            beta2: tc.beta2,
            eps: tc.eps,
            weight_decay: tc.weight_decay,
        },
    )?;
    let mut ema = Ema::new(&vars, tc.ema_decay)?;
    let mut losses: Vec<(f32, f32, f32)> = Vec::new(); // (loss, lr, grad_norm)
    let ckpt_path = out_dir.join("checkpoint.safetensors");
    let mut start = 0usize;
    if !fresh && ckpt_path.exists() {
        start = load_checkpoint(
            &ckpt_path,
            p,
            &vars,
            &mut opt,
            &mut ema,
            &mut losses,
            device,
        )?;
    }
    write_json(&out_dir.join("config.json"), &TrainRecord::from(p))?;

    let pb = acpo_core::progress::bar_with_template(
        until as u64,
        "train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    );
    pb.set_position(start.min(until) as u64);
    let t0 = Instant::now();
    let mut train_secs = 0f64;
    let mut done_here = 0usize;
    for step in start..until {
        let ts = Instant::now();
        let loss = loss_at_step(&model, &schedule, data, contexts, p, step, device)?;
        let grads = loss.backward()?;
        let lr = lr_at(p, step);
        let gn = opt.step(&grads, lr, tc.grad_clip)?;
        ema.decay = ema_decay_at(tc, step);
        ema.update(&vars)?;
        let lv = loss.to_scalar::<f32>()?;
        if !lv.is_finite() {
            return Err(DiffusionError::config(
                "train.lr",
                format!("loss became {lv} at step {step}; lower the learning rate"),
            ));
        }
        losses.push((lv, lr as f32, gn as f32));
        train_secs += ts.elapsed().as_secs_f64();
        done_here += 1;
        let ips = (done_here * tc.batch_size) as f64 / train_secs;
        pb.set_message(format!("loss {lv:.4} {ips:.1} img/s"));
        pb.inc(1);
        let n = step + 1;
        if n.is_multiple_of(tc.checkpoint_every) || n == until {
            save_checkpoint(&ckpt_path, p, n, &vars, &opt, &ema, &losses)?;
            if !std::io::stderr().is_terminal() {
                let k = losses.len().min(tc.checkpoint_every);
                let recent = losses[losses.len() - k..]
                    .iter()
                    .map(|l| l.0 as f64)
                    .sum::<f64>()
                    / k as f64;
                eprintln!(
                    "train-base: step {n}/{until} loss(last {k}) {recent:.4} {ips:.1} img/s, {:.0}s",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    pb.finish_and_clear();
    if start > until {
        return Err(DiffusionError::Resume {
            path: ckpt_path,
            msg: format!("checkpoint is at step {start}, past the requested step {until}"),
        });
    }
    if start == until && !ckpt_path.exists() {
        save_checkpoint(&ckpt_path, p, start, &vars, &opt, &ema, &losses)?;
    }
    // EMA weights as the model file.
    let ema_map: HashMap<String, Tensor> = vars
        .iter()
        .zip(&ema.shadow)
        .map(|((n, _), t)| (n.clone(), t.clone()))
        .collect();
    save_tensors_atomic(&ema_map, &out_dir.join("model.safetensors"))?;
    let mut csv = String::from("step,loss,lr,grad_norm\n");
    for (i, (l, lr, g)) in losses.iter().enumerate() {
        csv.push_str(&format!("{},{l},{lr},{g}\n", i + 1));
    }
    write_atomic(&out_dir.join("loss.csv"), csv.as_bytes())?;
    let k = losses.len().clamp(1, 100);
    let final_loss = losses[losses.len().saturating_sub(k)..]
        .iter()
        .map(|l| l.0 as f64)
        .sum::<f64>()
        / k as f64;
    let outcome = TrainOutcome {
        steps: until,
        final_train_loss: final_loss,
        heldout_mse: HeldoutMse {
            mean: f64::NAN,
            ci95: f64::NAN,
            n: 0,
        },
        num_params: model.num_params(),
        train_images: data.n,
        conditioning: None,
        invocation: TrainInvocation {
            resumed_from: start,
            steps_done: done_here,
            train_seconds: train_secs,
            images_per_s: if train_secs > 0.0 {
                (done_here * tc.batch_size) as f64 / train_secs
            } else {
                0.0
            },
        },
    };
    Ok((model, outcome))
}

fn save_checkpoint(
    path: &Path,
    p: &BenchmarkParams,
    step: usize,
    vars: &[(String, candle_core::Var)],
    opt: &AdamW,
    ema: &Ema,
    losses: &[(f32, f32, f32)],
) -> Result<()> {
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    for (i, (n, v)) in vars.iter().enumerate() {
        map.insert(format!("model.{n}"), v.as_tensor().detach());
        map.insert(format!("ema.{n}"), ema.shadow[i].clone());
    }
    // The optimiser names its own moments: it keeps only the floating-point vars, so its
    // indices need not be `vars`' indices.
    map.extend(opt.state_tensors("adam_"));
    map.insert("meta.step".into(), Tensor::new(&[step as i64], &dev)?);
    map.insert("meta.adam_t".into(), Tensor::new(&[opt.t as i64], &dev)?);
    map.insert(
        "meta.seed".into(),
        Tensor::new(&[p.train.seed as i64], &dev)?,
    );
    let flat: Vec<f32> = losses.iter().flat_map(|&(a, b, c)| [a, b, c]).collect();
    map.insert(
        "meta.loss".into(),
        Tensor::from_vec(flat, (losses.len(), 3), &dev)?,
    );
    let key = resume_key(p).into_bytes();
    let kl = key.len();
    map.insert("meta.resume_key".into(), Tensor::from_vec(key, kl, &dev)?);
    save_tensors_atomic(&map, path)
}

fn load_checkpoint(
    path: &Path,
    p: &BenchmarkParams,
    vars: &[(String, candle_core::Var)],
    opt: &mut AdamW,
    ema: &mut Ema,
    losses: &mut Vec<(f32, f32, f32)>,
    device: &Device,
) -> Result<usize> {
    let map = candle_core::safetensors::load(path, device).map_err(|e| DiffusionError::Resume {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let get = |k: &str| -> Result<&Tensor> {
        map.get(k).ok_or_else(|| DiffusionError::BadInput {
            path: path.to_path_buf(),
            member: k.to_string(),
            msg: "missing".into(),
        })
    };
    let key = String::from_utf8_lossy(&get("meta.resume_key")?.to_vec1::<u8>()?).to_string();
    if key != resume_key(p) {
        return Err(DiffusionError::Resume {
            path: path.to_path_buf(),
            msg: "the checkpoint was made with a different model/schedule/train config \
                  (other than steps); delete it or pass --fresh"
                .into(),
        });
    }
    let step = get("meta.step")?.to_vec1::<i64>()?[0] as usize;
    let adam_t = get("meta.adam_t")?.to_vec1::<i64>()?[0] as usize;
    opt.load_state(&map, "adam_", adam_t)
        .map_err(|e| DiffusionError::Resume {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    for (i, (n, v)) in vars.iter().enumerate() {
        let check = |k: String| -> Result<Tensor> {
            let t = get(&k)?;
            if t.dims() != v.dims() || t.dtype() != DType::F32 {
                return Err(DiffusionError::BadInput {
                    path: path.to_path_buf(),
                    member: k,
                    msg: format!(
                        "shape {:?} {:?}, expected {:?} F32",
                        t.dims(),
                        t.dtype(),
                        v.dims()
                    ),
                });
            }
            Ok(t.clone())
        };
        v.set(&check(format!("model.{n}"))?)?;
        ema.shadow[i] = check(format!("ema.{n}"))?;
    }
    let l = get("meta.loss")?.to_vec2::<f32>()?;
    *losses = l.into_iter().map(|r| (r[0], r[1], r[2])).collect();
    if losses.len() != step {
        return Err(DiffusionError::BadInput {
            path: path.to_path_buf(),
            member: "meta.loss".into(),
            msg: format!("{} rows for step {step}", losses.len()),
        });
    }
    Ok(step)
}

/// What the `sample` stage writes in `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SampleRecord {
    params: BenchmarkParams,
    model_dir: PathBuf,
    seeds: Vec<u64>,
    seconds: f64,
}

/// The `sample` stage: `num_images` images from seeds `seed..seed+num_images` with the EMA
/// weights in `model_dir/model.safetensors`, written to `out_dir/samples.safetensors`
/// (`images` U8 `[N, H, W, 3]`, `labels`, `seeds`) and `out_dir/grid.png`.
pub fn sample_to_dir(p: &BenchmarkParams, model_dir: &Path, out_dir: &Path) -> Result<()> {
    sample_to_dir_with(p, model_dir, None, out_dir)
}

/// [`sample_to_dir`] for a prompt-conditioned model: image `i` is prompted with the first
/// caption of class `i mod classes` (so a grid of `classes` columns shows one class per
/// column) with classifier-free guidance `sample.guidance`; `labels` holds each image's class.
pub fn sample_to_dir_conditional(
    p: &BenchmarkParams,
    model_dir: &Path,
    contexts: &ClassContexts,
    out_dir: &Path,
) -> Result<()> {
    sample_to_dir_with(p, model_dir, Some(contexts), out_dir)
}

fn sample_to_dir_with(
    p: &BenchmarkParams,
    model_dir: &Path,
    contexts: Option<&ClassContexts>,
    out_dir: &Path,
) -> Result<()> {
    p.validate()?;
    check_contexts(p, contexts)?;
    let device = default_device();
    let model = UNet::load(&p.model, &model_dir.join("model.safetensors"), &device)?;
    let schedule = NoiseSchedule::from_config(&p.schedule)?;
    let sc = &p.sample;
    let opts = SamplerOpts {
        kind: sc.sampler,
        steps: sc.steps,
        eta: sc.eta,
        guidance: sc.guidance,
        spacing: sc.spacing,
    };
    let per_batch = match sc.sampler {
        SamplerKind::Ddpm => schedule.timesteps(),
        SamplerKind::Ddim => {
            crate::sampler::ddim_timesteps(schedule.timesteps(), sc.steps, sc.spacing).len()
        }
    };
    let seeds: Vec<u64> = (0..sc.num_images as u64).map(|i| sc.seed + i).collect();
    let nb = seeds.len().div_ceil(sc.batch_size);
    let pb = acpo_core::progress::bar_with_template(
        (nb * per_batch) as u64,
        "sample {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    );
    let t0 = Instant::now();
    let labels: Option<Vec<i64>> =
        contexts.map(|c| (0..seeds.len()).map(|i| (i % c.classes()) as i64).collect());
    let mut pixels = Vec::new();
    for (k, chunk) in seeds.chunks(sc.batch_size).enumerate() {
        let ctx = match (contexts, &labels) {
            (Some(c), Some(l)) => {
                let start = k * sc.batch_size;
                Some(c.first(&l[start..start + chunk.len()], &device)?)
            }
            _ => None,
        };
        let x = sample(
            &model,
            &schedule,
            chunk,
            ctx.as_ref(),
            &opts,
            &device,
            || pb.inc(1),
        )?;
        pixels.extend(to_u8_hwc(&x)?);
    }
    pb.finish_and_clear();
    std::fs::create_dir_all(out_dir).map_err(|e| DiffusionError::io(out_dir, e))?;
    let s = p.model.image_size;
    crate::grid::write_images(
        pixels.clone(),
        seeds.len(),
        s,
        s,
        &seeds,
        labels.as_deref(),
        &out_dir.join("samples.safetensors"),
    )?;
    crate::grid::write_grid(
        &pixels,
        seeds.len(),
        s,
        s,
        sc.grid_cols,
        &out_dir.join("grid.png"),
    )?;
    write_json(
        &out_dir.join("config.json"),
        &SampleRecord {
            params: p.clone(),
            model_dir: model_dir.to_path_buf(),
            seeds,
            seconds: t0.elapsed().as_secs_f64(),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LossWeighting, LrSchedule};

    fn params(schedule: LrSchedule) -> BenchmarkParams {
        let mut p = BenchmarkParams::default();
        p.train.lr = 1e-3;
        p.train.warmup_steps = 10;
        p.train.steps = 110;
        p.train.lr_schedule = schedule;
        p
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    #[test]
    fn learning_rate_schedules_match_hand_values() {
        for s in [LrSchedule::Constant, LrSchedule::Cosine, LrSchedule::Linear] {
            let p = params(s);
            // Warm-up: (step + 1) / 10 of the peak, whatever the schedule.
            assert!(close(lr_at(&p, 0), 1e-4), "{s:?}");
            assert!(close(lr_at(&p, 4), 5e-4), "{s:?}");
            // The first step after warm-up has the peak rate.
            assert!(close(lr_at(&p, 10), 1e-3), "{s:?}");
        }
        // Half-way through the decay (step 60 of 10..110): cos(pi/2) and 1 - 1/2.
        assert!(close(lr_at(&params(LrSchedule::Cosine), 60), 5e-4));
        assert!(close(lr_at(&params(LrSchedule::Linear), 60), 5e-4));
        assert!(close(lr_at(&params(LrSchedule::Constant), 60), 1e-3));
        // Last step: progress 99/100.
        let cos_last = 1e-3 * 0.5 * (1.0 + (0.99 * std::f64::consts::PI).cos());
        assert!(close(lr_at(&params(LrSchedule::Cosine), 109), cos_last));
        assert!(cos_last > 2.46e-7 && cos_last < 2.48e-7);
        assert!(close(lr_at(&params(LrSchedule::Linear), 109), 1e-5));
    }

    #[test]
    fn ema_warmup_ramps_the_decay() {
        let mut tc = TrainConfig {
            ema_decay: 0.999,
            ..Default::default()
        };
        assert_eq!(ema_decay_at(&tc, 0), 0.999);
        tc.ema_warmup = true;
        assert!(close(ema_decay_at(&tc, 0), 2.0 / 11.0));
        assert!(close(ema_decay_at(&tc, 89), 0.91));
        // (1 + n) / (10 + n) reaches 0.999 at n = 8991.
        assert!(ema_decay_at(&tc, 8988) < 0.999);
        assert_eq!(ema_decay_at(&tc, 8990), 0.999);
        assert_eq!(ema_decay_at(&tc, 100_000), 0.999);
    }

    #[test]
    fn min_snr_weights_match_hand_values() {
        let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02);
        let mut tc = TrainConfig::default();
        assert_eq!(loss_weight(&tc, &schedule, 0), 1.0);
        tc.loss_weighting = LossWeighting::MinSnr;
        // t = 0: alpha_bar = 1 - 1e-4, SNR = 9999, weight 5 / 9999.
        assert!(close(loss_weight(&tc, &schedule, 0), 5.0 / 9999.0));
        // Noisy draws (SNR < 5) keep weight 1.
        assert_eq!(loss_weight(&tc, &schedule, 999), 1.0);
        assert_eq!(loss_weight(&tc, &schedule, 500), 1.0);
        // Every weight is in (0, 1] and grows with t.
        let w: Vec<f64> = (0..1000).map(|t| loss_weight(&tc, &schedule, t)).collect();
        assert!(w.windows(2).all(|p| p[0] <= p[1] && p[0] > 0.0));
    }
}
