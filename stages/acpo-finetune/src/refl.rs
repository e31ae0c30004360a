//! DDIM sampling over any [`EpsModel`], and the ReFL-style partial sampling path used when
//! there are no data images (text-to-image): sample from noise with the current model, without
//! gradient, down to a random step `t` in a late window; the objective then takes one
//! differentiable step from that `x_t` to `x0_hat`, and the anchor uses the same `x_t`.
//!
//! candle has no global no-gradient mode: every sampling step's output is detached, so no graph
//! through the trajectory is kept.

use crate::draws::{self, Stream};
use crate::objective::{EpsModel, ObjectiveBatch, Schedule};
use crate::{FinetuneError, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Parameters of the partial sampling path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PartialSamplingConfig {
    /// DDIM steps of the full trajectory (default 40, as in ReFL).
    pub sample_steps: usize,
    /// The stop timestep is drawn uniformly among the trajectory's timesteps in
    /// `[stop_t_min, stop_t_max]` (default `[0, 249]`: the last quarter of the trajectory).
    pub stop_t_min: usize,
    /// See `stop_t_min` (default 249).
    pub stop_t_max: usize,
    /// DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like (default 0).
    pub eta: f64,
}

impl Default for PartialSamplingConfig {
    fn default() -> Self {
        Self {
            sample_steps: 40,
            stop_t_min: 0,
            stop_t_max: 249,
            eta: 0.0,
        }
    }
}

/// The DDIM trajectory's timesteps, descending and evenly spaced ("trailing"): for `T = 1000`
/// and 40 steps, `999, 974, ..., 24`.
pub fn ddim_timesteps(num_train_steps: usize, steps: usize) -> Result<Vec<usize>> {
    if steps == 0 || steps > num_train_steps {
        return Err(FinetuneError::config(
            "sample_steps",
            format!("{steps} is not in 1..={num_train_steps}"),
        ));
    }
    Ok((0..steps)
        .map(|i| num_train_steps * (steps - i) / steps - 1)
        .collect())
}

/// One DDIM step from `x_t` at timestep `t` to timestep `t_prev` (`None` = to `x0`). `x0` is
/// predicted, clamped to `[-1, 1]`, and the noise direction recomputed from the clamped `x0`.
/// `noise` is needed when `eta > 0`.
pub fn ddim_step(
    schedule: &Schedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: usize,
    t_prev: Option<usize>,
    eta: f64,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let n = x_t.dim(0)?;
    let x0 = schedule.x0_hat(x_t, eps, &vec![t; n], true)?;
    let Some(tp) = t_prev else {
        return Ok(x0);
    };
    let ab = schedule.alpha_bar(t);
    let ab_prev = schedule.alpha_bar(tp);
    // eps consistent with the clamped x0
    let eps = ((x_t - (&x0 * ab.sqrt())?)? / (1.0 - ab).sqrt())?;
    let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    let mut x = ((x0 * ab_prev.sqrt())? + (eps * dir)?)?;
    if sigma > 0.0 {
        let z = noise.ok_or_else(|| FinetuneError::config("eta", "eta > 0 needs noise"))?;
        x = (x + (z * sigma)?)?;
    }
    Ok(x)
}

/// Run DDIM from `x_start` (at `timesteps[0]`) for `n_steps` steps without gradient. Returns the
/// state at `timesteps[n_steps]`, or the final `x0` when `n_steps == timesteps.len()`.
#[allow(clippy::too_many_arguments)] // sampling inputs, each needed
pub fn ddim_sample(
    model: &dyn EpsModel,
    schedule: &Schedule,
    x_start: &Tensor,
    cond: Option<&Tensor>,
    timesteps: &[usize],
    n_steps: usize,
    eta: f64,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    if n_steps > timesteps.len() {
        return Err(FinetuneError::config(
            "n_steps",
            format!("{n_steps} > trajectory length {}", timesteps.len()),
        ));
    }
    let n = x_start.dim(0)?;
    let dev = x_start.device().clone();
    let mut x = x_start.detach();
    for i in 0..n_steps {
        let t = timesteps[i];
        let t_prev = timesteps.get(i + 1).copied();
        let t_tensor = Schedule::t_tensor(&vec![t; n], &dev)?;
        let eps = model.eps(&x, &t_tensor, cond)?.detach();
        let noise = if eta > 0.0 && t_prev.is_some() {
            Some(draws::normal(rng, x.dims(), &dev)?)
        } else {
            None
        };
        x = ddim_step(schedule, &x, &eps, t, t_prev, eta, noise.as_ref())?.detach();
    }
    Ok(x)
}

/// Full DDIM sampling from Gaussian noise drawn with `rng`: images in `[-1, 1]`.
#[allow(clippy::too_many_arguments)] // sampling inputs, each needed
pub fn sample(
    model: &dyn EpsModel,
    schedule: &Schedule,
    dims: &[usize],
    cond: Option<&Tensor>,
    steps: usize,
    eta: f64,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Tensor> {
    let ts = ddim_timesteps(schedule.num_steps(), steps)?;
    let x_t = draws::normal(rng, dims, device)?;
    ddim_sample(model, schedule, &x_t, cond, &ts, ts.len(), eta, rng)
}

/// One ReFL-style training batch: `x_t` sampled (without gradient) with `model` from noise down
/// to a late timestep `t` drawn from the window, for every sample of the batch at the same `t`.
/// Draws come from `(seed, step)` alone. The returned batch has no data noise (`eps: None`), so
/// `lambda_d` must be 0 with it.
#[allow(clippy::too_many_arguments)] // sampling inputs, each needed
pub fn partial_sample_batch(
    model: &dyn EpsModel,
    schedule: &Schedule,
    cfg: &PartialSamplingConfig,
    dims: &[usize],
    cond: Option<Tensor>,
    seed: u64,
    step: u64,
    device: &Device,
) -> Result<ObjectiveBatch> {
    let ts = ddim_timesteps(schedule.num_steps(), cfg.sample_steps)?;
    let eligible: Vec<usize> = (0..ts.len())
        .filter(|&i| ts[i] >= cfg.stop_t_min && ts[i] <= cfg.stop_t_max)
        .collect();
    if eligible.is_empty() {
        return Err(FinetuneError::config(
            "stop_t_min/stop_t_max",
            format!(
                "no timestep of the {}-step trajectory lies in [{}, {}]",
                cfg.sample_steps, cfg.stop_t_min, cfg.stop_t_max
            ),
        ));
    }
    let mut rng = draws::rng(seed, Stream::Refl, step);
    let k = eligible[rng.random_range(0..eligible.len())];
    let x_start = draws::normal(&mut rng, dims, device)?;
    let x_t = ddim_sample(
        model,
        schedule,
        &x_start,
        cond.as_ref(),
        &ts,
        k,
        cfg.eta,
        &mut rng,
    )?;
    Ok(ObjectiveBatch {
        x_t,
        t: vec![ts[k]; dims[0]],
        eps: None,
        cond,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_timesteps() {
        let ts = ddim_timesteps(1000, 40).unwrap();
        assert_eq!(ts.len(), 40);
        assert_eq!((ts[0], ts[1], ts[39]), (999, 974, 24));
        assert_eq!(
            ddim_timesteps(10, 10).unwrap(),
            (0..10).rev().collect::<Vec<_>>()
        );
        assert!(ddim_timesteps(10, 11).is_err());
    }

    /// With the exact noise of a known x0, DDIM (eta = 0) lands on x0.
    #[test]
    fn ddim_with_oracle_eps_recovers_x0() {
        let dev = Device::Cpu;
        let s = Schedule::linear(1000, 1e-4, 0.02).unwrap();
        let x0 = Tensor::new(&[[[[0.3f32, -0.6], [0.9, 0.0]]]], &dev).unwrap();
        let x0c = x0.clone();
        let sc = s.clone();
        // oracle: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
        let oracle = move |x: &Tensor, t: &Tensor, _c: Option<&Tensor>| {
            let t = t.to_vec1::<u32>()?[0] as usize;
            let ab = sc.alpha_bar(t);
            (x - (&x0c * ab.sqrt())?)? / (1.0 - ab).sqrt()
        };
        let mut rng = draws::rng(0, Stream::Probe, 0);
        let out = sample(&oracle, &s, &[1, 1, 2, 2], None, 20, 0.0, &mut rng, &dev).unwrap();
        let d = (out - x0).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }
}
