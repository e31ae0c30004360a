//! One fine-tuning step, the data batch of the unconditional path, and the probe metrics.

use crate::draws::{self, Stream};
use crate::objective::{
    acpo_loss_with_data, EpsModel, Guidance, ObjectiveBatch, ObjectiveConfig, Schedule,
};
use crate::{FinetuneError, Result};
use acpo_diffusion::optim::{clip_grad_norm, AdamW};
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
    train_step_with_data(
        model, reference, guidance, schedule, cfg, batch, None, opt, clip,
    )
}

/// As [`train_step`], with the data term on its own batch `data` when given (see
/// [`acpo_loss_with_data`]).
#[allow(clippy::too_many_arguments)]
pub fn train_step_with_data(
    model: &dyn EpsModel,
    reference: &dyn EpsModel,
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch: &ObjectiveBatch,
    data: Option<&ObjectiveBatch>,
    opt: &mut AdamW,
    clip: f64,
) -> Result<StepStats> {
    let out = acpo_loss_with_data(model, reference, guidance, schedule, cfg, batch, data)?;
    let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss.is_finite() {
        return Err(FinetuneError::config(
            "loss",
            format!("non-finite loss {loss} at step {}", opt.step_count() + 1),
        ));
    }
    let mut grads = out.loss.backward()?;
    let vars: Vec<Var> = opt.vars.iter().map(|(_, v)| v.clone()).collect();
    let grad_norm = clip_grad_norm(&mut grads, &vars, clip).map_err(FinetuneError::optim)?;
    // Clipped above (f64 norm); the step's own clipping stays off.
    let lr = opt.cfg.lr;
    opt.step(&grads, lr, 0.0).map_err(FinetuneError::optim)?;
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
    let fetch = |idx: &[usize]| select_rows(images, idx);
    data_batch_from(
        images.dim(0)?,
        &fetch,
        schedule,
        cfg,
        batch_size,
        seed,
        step,
    )
}

/// As [`data_batch`], with the images fetched by index from any store (`fetch` returns
/// `[len, C, H, W]` in `[-1, 1]`), so a large training set can stay in 8-bit host memory.
pub fn data_batch_from(
    n_images: usize,
    fetch: &dyn Fn(&[usize]) -> candle_core::Result<Tensor>,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch_size: usize,
    seed: u64,
    step: u64,
) -> Result<ObjectiveBatch> {
    draw_batch(
        n_images,
        fetch,
        schedule,
        cfg,
        batch_size,
        draws::rng(seed, Stream::Train, step),
    )
}

/// The calibration draws of `normalize: base` (objective.calibration_draws of them, from the
/// training window, `batch` at a time), seeded by `seed` alone so that every training seed of
/// a benchmark gets the same units.
pub fn calibration_batches(
    n_images: usize,
    fetch: &dyn Fn(&[usize]) -> candle_core::Result<Tensor>,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch: usize,
    seed: u64,
) -> Result<Vec<ObjectiveBatch>> {
    calibration_draws(cfg, batch, seed, |len, rng, _| {
        draw_batch(n_images, fetch, schedule, cfg, len, rng)
    })
}

/// The loop of every kind of calibration draws: `cfg.calibration_draws` draws, `batch` at a
/// time; `draw(len, rng, k)` makes batch `k` of `len` draws from `rng`, stream `Calibration`
/// keyed by `seed` and `k`.
pub(crate) fn calibration_draws(
    cfg: &ObjectiveConfig,
    batch: usize,
    seed: u64,
    mut draw: impl FnMut(usize, acpo_diffusion::rng::SeededRng, u64) -> Result<ObjectiveBatch>,
) -> Result<Vec<ObjectiveBatch>> {
    let (total, batch) = (cfg.calibration_draws, batch.max(1));
    (0..total.div_ceil(batch))
        .map(|k| {
            let len = batch.min(total - k * batch);
            draw(
                len,
                draws::rng(seed, Stream::Calibration, k as u64),
                k as u64,
            )
        })
        .collect()
}

/// Rows `idx` of `t` (along its first dimension).
pub(crate) fn select_rows(t: &Tensor, idx: &[usize]) -> candle_core::Result<Tensor> {
    let ids = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        t.device(),
    )?;
    t.index_select(&ids, 0)
}

fn draw_batch(
    n_images: usize,
    fetch: &dyn Fn(&[usize]) -> candle_core::Result<Tensor>,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch_size: usize,
    rng: acpo_diffusion::rng::SeededRng,
) -> Result<ObjectiveBatch> {
    Ok(draw_batch_indexed(n_images, fetch, schedule, cfg, batch_size, rng)?.0)
}

/// A forward-noised batch drawn from `rng` (indices, timesteps in the window, noise) and the
/// indices of its images.
pub(crate) fn draw_batch_indexed(
    n_images: usize,
    fetch: &dyn Fn(&[usize]) -> candle_core::Result<Tensor>,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch_size: usize,
    mut rng: acpo_diffusion::rng::SeededRng,
) -> Result<(ObjectiveBatch, Vec<usize>)> {
    if n_images == 0 {
        return Err(FinetuneError::config("images", "no training images"));
    }
    let idx = draws::indices(&mut rng, batch_size, n_images);
    let t = draws::timesteps(&mut rng, batch_size, cfg.t_min, cfg.t_max);
    let x0 = fetch(&idx)?;
    let eps = draws::normal(&mut rng, x0.dims(), x0.device())?.to_dtype(x0.dtype())?;
    let x_t = schedule.add_noise(&x0, &eps, &t)?;
    let batch = ObjectiveBatch {
        x_t,
        t,
        eps: Some(eps),
        cond: None,
    };
    Ok((batch, idx))
}

/// A fixed held-out probe set: draws of `(image, t, noise)`, with `t` uniform over the whole
/// schedule `[0, T)` (as in the held-out MSE of SPEC section 5).
#[derive(Clone, Debug)]
pub struct ProbeSet {
    pub x0: Tensor,
    pub eps: Tensor,
    pub t: Vec<usize>,
    pub x_t: Tensor,
    /// Indices of the draws' images in the set they were drawn from.
    pub images: Vec<usize>,
    /// The condition of every draw (`[n, L, D]`; `None` for unconditional models).
    pub cond: Option<Tensor>,
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
        let x0 = select_rows(images, &idx)?;
        let eps = draws::normal(&mut rng, x0.dims(), images.device())?.to_dtype(images.dtype())?;
        let x_t = schedule.add_noise(&x0, &eps, &t)?;
        Ok(Self {
            x0,
            eps,
            t,
            x_t,
            images: idx,
            cond: None,
        })
    }

    /// The same draws with a condition per draw (`cond` `[n, L, D]`).
    pub fn with_cond(self, cond: Tensor) -> Result<Self> {
        if cond.dim(0)? != self.len() {
            return Err(FinetuneError::config(
                "probe",
                format!("{} conditions for {} draws", cond.dim(0)?, self.len()),
            ));
        }
        Ok(Self {
            cond: Some(cond),
            ..self
        })
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

/// A mean with its 95% normal-approximation interval and sample count.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// Half-width `1.96 sd / sqrt(n)` (0 when `n < 2`).
    pub ci95: f64,
    pub n: usize,
}

impl Stat {
    /// Mean and interval of per-sample values.
    pub fn of(v: &[f64]) -> Stat {
        let n = v.len();
        if n == 0 {
            return Stat {
                mean: f64::NAN,
                ci95: f64::NAN,
                n,
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let ci95 = if n < 2 {
            0.0
        } else {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            1.96 * (var / n as f64).sqrt()
        };
        Stat { mean, ci95, n }
    }
}

/// Metrics on the probe set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbeMetrics {
    /// Anchor distance `E (eps_theta - eps_ref)^2` (per element; one value per draw).
    pub anchor_distance: Stat,
    /// Held-out MSE `E (eps - eps_theta)^2` (per element; one value per draw).
    pub heldout_mse: Stat,
    /// Guidance `Q` of `x0_hat` over the probe draws whose `t` lies in the training window
    /// (`n = 0` when none does).
    pub guidance_x0hat: Stat,
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
    let (mut anchor, mut mse, mut qs) = (vec![], vec![], vec![]);
    let dev = probe.x_t.device();
    let mut start = 0;
    while start < n {
        let len = batch.max(1).min(n - start);
        let x_t = probe.x_t.narrow(0, start, len)?;
        let eps = probe.eps.narrow(0, start, len)?;
        let t = &probe.t[start..start + len];
        let t_tensor = Schedule::t_tensor(t, dev)?;
        let cond = match &probe.cond {
            Some(c) => Some(c.narrow(0, start, len)?),
            None => None,
        };
        let e_theta = model.eps(&x_t, &t_tensor, cond.as_ref())?.detach();
        let e_ref = reference.eps(&x_t, &t_tensor, cond.as_ref())?.detach();
        anchor.extend(per_item_mean(&(&e_theta - e_ref)?.sqr()?)?);
        mse.extend(per_item_mean(&(&eps - &e_theta)?.sqr()?)?);
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
            qs.extend(q.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        start += len;
    }
    Ok(ProbeMetrics {
        anchor_distance: Stat::of(&anchor),
        heldout_mse: Stat::of(&mse),
        guidance_x0hat: Stat::of(&qs),
    })
}

/// Mean over all but the first dimension, as `f64` values.
pub fn per_item_mean(t: &Tensor) -> Result<Vec<f64>> {
    let n = t.dim(0)?;
    Ok(t.to_dtype(DType::F64)?
        .reshape((n, ()))?
        .mean(1)?
        .to_vec1::<f64>()?)
}
