//! DDIM sampling over any [`EpsModel`] through acpo-diffusion's one DDIM
//! ([`acpo_diffusion::sampler::Ddim`]), and the ReFL-style on-policy path: sample from noise
//! with the current model, without gradient, down to a random step `t` in a window; the
//! objective then takes one differentiable step from that `x_t` to `x0_hat`, and the anchor
//! uses the same `x_t`. It serves text-to-image (no data images) and the `draws: on-policy`
//! runs of the unconditional benchmarks.
//!
//! candle has no global no-gradient mode: every sampling step's output is detached, so no graph
//! through the trajectory is kept.

use crate::draws::{self, Stream};
use crate::objective::{EpsModel, ObjectiveBatch, Schedule};
use crate::{FinetuneError, Result};
use acpo_diffusion::config::Spacing;
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::sampler::Ddim;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Parameters of the partial sampling path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PartialSamplingConfig {
    /// DDIM steps of the full trajectory (default 40, as in ReFL).
    pub sample_steps: usize,
    /// DDIM timestep spacing (default `leading`, the evaluation's).
    pub spacing: Spacing,
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
            spacing: Spacing::Leading,
            stop_t_min: 0,
            stop_t_max: 249,
            eta: 0.0,
        }
    }
}

/// The DDIM trajectory of `steps` steps over a `num_timesteps`-step schedule (errors name
/// `key`).
pub fn trajectory(
    num_timesteps: usize,
    steps: usize,
    spacing: Spacing,
    eta: f64,
    key: &str,
) -> Result<Ddim> {
    Ddim::new(num_timesteps, steps, spacing, eta)
        .map_err(|e| FinetuneError::config(key, e.to_string()))
}

/// The DDIM trajectory of `steps` steps over `schedule`, clipping its predicted `x0` to the
/// image range only when the schedule clamps `x0_hat` (pixel models; not latent ones).
pub fn trajectory_for(
    schedule: &Schedule,
    steps: usize,
    spacing: Spacing,
    eta: f64,
    key: &str,
) -> Result<Ddim> {
    let ddim = trajectory(schedule.num_steps(), steps, spacing, eta, key)?;
    Ok(match schedule.clamps_x0() {
        true => ddim,
        false => ddim.without_x0_clip(),
    })
}

/// Run `ddim` from `x_start` (at its first timestep) for `n_steps` steps without gradient.
/// Returns the state at `ddim.timesteps()[n_steps]`, or the final `x0` when `n_steps` is the
/// trajectory's length (more is an error of [`Ddim::run`]). Noise for `eta > 0` comes from
/// `rng`.
pub fn ddim_sample(
    model: &dyn EpsModel,
    schedule: &Schedule,
    ddim: &Ddim,
    x_start: &Tensor,
    cond: Option<&Tensor>,
    n_steps: usize,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let n = x_start.dim(0)?;
    let dev = x_start.device().clone();
    let dims = x_start.dims().to_vec();
    Ok(ddim.run(
        x_start,
        0..n_steps,
        &|t| schedule.alpha_bar(t),
        &mut |x, t| {
            let t_tensor = Schedule::t_tensor(&vec![t; n], &dev)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(model.eps(x, &t_tensor, cond)?.detach())
        },
        &mut || draws::normal(rng, &dims, &dev).map_err(|e| candle_core::Error::Msg(e.to_string())),
        &mut || {},
    )?)
}

/// Full DDIM sampling from Gaussian noise drawn with `rng`: images in `[-1, 1]`.
#[allow(clippy::too_many_arguments)] // sampling inputs, each needed
pub fn sample(
    model: &dyn EpsModel,
    schedule: &Schedule,
    dims: &[usize],
    cond: Option<&Tensor>,
    steps: usize,
    spacing: Spacing,
    eta: f64,
    rng: &mut SeededRng,
    device: &Device,
) -> Result<Tensor> {
    let ddim = trajectory_for(schedule, steps, spacing, eta, "sample_steps")?;
    let x_t = draws::normal(rng, dims, device)?;
    let len = ddim.timesteps().len();
    ddim_sample(model, schedule, &ddim, &x_t, cond, len, rng)
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
    let ddim = trajectory_for(
        schedule,
        cfg.sample_steps,
        cfg.spacing,
        cfg.eta,
        "sample_steps",
    )?;
    let ts = ddim.timesteps();
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
    let k = eligible[rng.below(eligible.len())];
    let x_start = draws::normal(&mut rng, dims, device)?;
    let x_t = ddim_sample(model, schedule, &ddim, &x_start, cond.as_ref(), k, &mut rng)?;
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

    /// With the exact noise of a known x0, DDIM (eta = 0) lands on x0, for both spacings.
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
        for spacing in [Spacing::Leading, Spacing::Trailing] {
            let mut rng = draws::rng(0, Stream::Probe, 0);
            let dims = [1, 1, 2, 2];
            let out = sample(&oracle, &s, &dims, None, 20, spacing, 0.0, &mut rng, &dev).unwrap();
            let d = (out - &x0).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4, "{spacing:?}");
        }
    }

    #[test]
    fn a_bad_step_count_names_the_key() {
        let e = trajectory(10, 11, Spacing::Leading, 0.0, "probe.sample_steps").unwrap_err();
        assert!(e.to_string().contains("probe.sample_steps"), "{e}");
    }
}
