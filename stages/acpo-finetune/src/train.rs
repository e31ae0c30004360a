//! One fine-tuning step, the data batch of the unconditional path, and the probe metrics.

use crate::draws::{self, Stream};
use crate::objective::{acpo_loss, EpsModel, Guidance, ObjectiveBatch, ObjectiveConfig, Schedule};
use crate::optim::{clip_grad_norm, AdamW};
use crate::{FinetuneError, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// What one step measured (terms with a zero lambda are `None`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Step number after the update (1-based).
    pub step: usize,
    pub loss: f64,
    pub perceptual: Option<f64>,
    /// Mean raw guidance score of the batch's `x0_hat` (higher = better).
    pub quality: Option<f64>,
    pub anchor: Option<f64>,
    pub simple: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Compute the loss on `batch`, back-propagate, clip the global gradient norm to `clip`
/// (0 = no clipping) and update with `opt`.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &dyn EpsModel,
    reference: &dyn EpsModel,
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch: &ObjectiveBatch,
    opt: &mut AdamW,
    clip: f64,
) -> Result<StepStats> {
    let out = acpo_loss(model, reference, guidance, schedule, cfg, batch)?;
    let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss.is_finite() {
        return Err(FinetuneError::config(
            "loss",
            format!("non-finite loss {loss} at step {}", opt.step_count() + 1),
        ));
    }
    let mut grads = out.loss.backward()?;
    let vars: Vec<Var> = opt.vars().cloned().collect();
    let grad_norm = clip_grad_norm(&mut grads, &vars, clip)?;
    opt.step(&grads)?;
    Ok(StepStats {
        step: opt.step_count(),
        loss,
        perceptual: out.perceptual,
        quality: out.quality,
        anchor: out.anchor,
        simple: out.simple,
        grad_norm,
    })
}

/// A training batch from data images `[N, C, H, W]` in `[-1, 1]`: indices, timesteps in
/// `[t_min, t_max]` and noise drawn from `(seed, step)` alone, `x_t` by forward noising.
pub fn data_batch(
    images: &Tensor,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch_size: usize,
    seed: u64,
    step: u64,
) -> Result<ObjectiveBatch> {
    let n = images.dim(0)?;
    if n == 0 {
        return Err(FinetuneError::config("images", "no training images"));
    }
    let mut rng = draws::rng(seed, Stream::Train, step);
    let idx = draws::indices(&mut rng, batch_size, n);
    let t = draws::timesteps(&mut rng, batch_size, cfg.t_min, cfg.t_max);
    let idx_t = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        batch_size,
        images.device(),
    )?;
    let x0 = images.index_select(&idx_t, 0)?;
    let mut dims = x0.dims().to_vec();
    dims[0] = batch_size;
    let eps = draws::normal(&mut rng, &dims, images.device())?.to_dtype(images.dtype())?;
    let x_t = schedule.add_noise(&x0, &eps, &t)?;
    Ok(ObjectiveBatch {
        x_t,
        t,
        eps: Some(eps),
        cond: None,
    })
}

/// A fixed held-out probe set: draws of `(image, t, noise)`, with `t` uniform over the whole
/// schedule `[0, T)` (as in the held-out MSE of SPEC section 5).
#[derive(Clone, Debug)]
pub struct ProbeSet {
    pub x0: Tensor,
    pub eps: Tensor,
    pub t: Vec<usize>,
    pub x_t: Tensor,
}

impl ProbeSet {
    /// `n` draws from `images` (`[M, C, H, W]` in `[-1, 1]`) with the given seed.
    pub fn new(images: &Tensor, schedule: &Schedule, n: usize, seed: u64) -> Result<Self> {
        let m = images.dim(0)?;
        if m == 0 || n == 0 {
            return Err(FinetuneError::config(
                "probe",
                format!("need images and draws, got {m} images and {n} draws"),
            ));
        }
        let mut rng = draws::rng(seed, Stream::Probe, 0);
        let idx = draws::indices(&mut rng, n, m);
        let t = draws::timesteps(&mut rng, n, 0, schedule.num_steps() - 1);
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            n,
            images.device(),
        )?;
        let x0 = images.index_select(&idx_t, 0)?;
        let eps = draws::normal(&mut rng, x0.dims(), images.device())?.to_dtype(images.dtype())?;
        let x_t = schedule.add_noise(&x0, &eps, &t)?;
        Ok(Self { x0, eps, t, x_t })
    }

    /// Number of draws.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Whether the set is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }
}

/// Metrics on the probe set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbeMetrics {
    /// `E (eps_theta - eps_ref)^2` (per element).
    pub anchor_distance: f64,
    /// `E (eps - eps_theta)^2` (per element).
    pub heldout_mse: f64,
    /// Mean guidance `Q` of `x0_hat` over the probe draws whose `t` lies in the training window
    /// (`None` when none does).
    pub guidance_x0hat: Option<f64>,
    /// Number of probe draws used for `guidance_x0hat`.
    pub guidance_x0hat_n: usize,
}

/// Evaluate the probe metrics without gradient, `batch` draws at a time.
pub fn probe_metrics(
    model: &dyn EpsModel,
    reference: &dyn EpsModel,
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    probe: &ProbeSet,
    batch: usize,
) -> Result<ProbeMetrics> {
    let n = probe.len();
    let per_item = probe.x_t.elem_count() / n;
    let (mut anchor, mut mse, mut q_sum, mut q_n) = (0.0, 0.0, 0.0, 0usize);
    let dev = probe.x_t.device();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let x_t = probe.x_t.narrow(0, start, len)?;
        let eps = probe.eps.narrow(0, start, len)?;
        let t = &probe.t[start..start + len];
        let t_tensor = Schedule::t_tensor(t, dev)?;
        let e_theta = model.eps(&x_t, &t_tensor, None)?.detach();
        let e_ref = reference.eps(&x_t, &t_tensor, None)?.detach();
        anchor += sum_f64(&(&e_theta - e_ref)?.sqr()?)?;
        mse += sum_f64(&(&eps - &e_theta)?.sqr()?)?;
        let win: Vec<usize> = (0..len)
            .filter(|&i| t[i] >= cfg.t_min && t[i] <= cfg.t_max)
            .collect();
        if !win.is_empty() {
            let w = Tensor::from_vec(
                win.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                win.len(),
                dev,
            )?;
            let tw: Vec<usize> = win.iter().map(|&i| t[i]).collect();
            let x0 = schedule.x0_hat(
                &x_t.index_select(&w, 0)?,
                &e_theta.index_select(&w, 0)?,
                &tw,
                true,
            )?;
            let q = guidance.quality(&((x0 + 1.0)? * 0.5)?)?.detach();
            q_sum += sum_f64(&q)?;
            q_n += win.len();
        }
        start += len;
    }
    let denom = (n * per_item) as f64;
    Ok(ProbeMetrics {
        anchor_distance: anchor / denom,
        heldout_mse: mse / denom,
        guidance_x0hat: (q_n > 0).then(|| q_sum / q_n as f64),
        guidance_x0hat_n: q_n,
    })
}

fn sum_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}
