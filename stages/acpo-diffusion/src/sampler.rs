//! DDPM ancestral and DDIM samplers with classifier-free guidance.
//!
//! Reproducibility: image `i` draws its initial noise and every later noise from its own stream
//! `SeededRng::new(seeds[i], &[])`, so an image depends only on its seed (not on the batch it
//! was generated in), and the same seeds give the same images across runs and models.

use candle_core::{Device, Tensor};

use crate::config::SamplerKind;
use crate::error::{DiffusionError, Result};
use crate::rng::SeededRng;
use crate::schedule::NoiseSchedule;
use crate::unet::{Cond, UNet};

/// Options of one sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOpts {
    /// DDPM (all T steps) or DDIM.
    pub kind: SamplerKind,
    /// DDIM steps (ignored for DDPM).
    pub steps: usize,
    /// DDIM eta: 0 deterministic, 1 DDPM-like variance.
    pub eta: f64,
    /// Classifier-free guidance scale (1 = plain conditional prediction).
    pub guidance: f64,
}

/// Evenly spaced DDIM timesteps, descending: `[(steps-1)*T/steps, ..., T/steps, 0]`.
pub fn ddim_timesteps(timesteps: usize, steps: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..steps).map(|i| i * timesteps / steps).collect();
    v.dedup();
    v.reverse();
    v
}

/// The noise prediction with classifier-free guidance:
/// `eps_u + w (eps_c - eps_u)`, where `eps_u` uses the null (all-zeros) context. With no
/// condition or `guidance == 1` this is one plain forward pass.
pub fn guided_eps(
    model: &UNet,
    x: &Tensor,
    t: &Tensor,
    cond: Cond,
    guidance: f64,
) -> candle_core::Result<Tensor> {
    match cond {
        Some(ctx) if guidance != 1.0 => {
            let b = x.dim(0)?;
            let xx = Tensor::cat(&[x, x], 0)?;
            let tt = Tensor::cat(&[t, t], 0)?;
            let cc = Tensor::cat(&[ctx, &ctx.zeros_like()?], 0)?;
            let e = model.forward(&xx, &tt, Some(&cc))?;
            let ec = e.narrow(0, 0, b)?;
            let eu = e.narrow(0, b, b)?;
            eu.add(&((ec - &eu)? * guidance)?)
        }
        _ => model.forward(x, t, cond),
    }
}

/// Result of one reverse step `x_t -> x_prev`.
#[derive(Debug, Clone)]
pub struct ReverseStep {
    /// The new sample.
    pub x_prev: Tensor,
    /// Mean of the Gaussian transition `p(x_prev | x_t)`.
    pub mean: Tensor,
    /// Its standard deviation (a scalar shared by all pixels; 0 for deterministic DDIM).
    pub std: f64,
    /// The predicted clean image (clipped to [-1, 1]).
    pub x0_pred: Tensor,
}

/// One DDIM step from timestep `t` to `t_prev` (`None`: to the clean image) given the
/// predicted noise `eps`; `noise` (standard normal, same shape) is used when `std > 0`.
/// The predicted `x0` is clipped to [-1, 1].
pub fn ddim_step(
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: usize,
    t_prev: Option<usize>,
    eta: f64,
    noise: Option<&Tensor>,
) -> candle_core::Result<ReverseStep> {
    let ab = schedule.alpha_bar(t);
    let ab_prev = t_prev.map_or(1.0, |p| schedule.alpha_bar(p));
    let x0 = ((x_t - (eps * (1.0 - ab).sqrt())?)? * (1.0 / ab.sqrt()))?.clamp(-1f32, 1f32)?;
    let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).max(0.0).sqrt();
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    let mean = ((&x0 * ab_prev.sqrt())? + (eps * dir)?)?;
    let x_prev = match noise {
        Some(z) if sigma > 0.0 => (&mean + (z * sigma)?)?,
        _ => mean.clone(),
    };
    Ok(ReverseStep {
        x_prev,
        mean,
        std: sigma,
        x0_pred: x0,
    })
}

/// One DDPM ancestral step `t -> t-1` with the posterior variance
/// `beta~_t = beta_t (1 - ab_{t-1}) / (1 - ab_t)`, through the clipped predicted `x0`.
pub fn ddpm_step(
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: usize,
    noise: Option<&Tensor>,
) -> candle_core::Result<ReverseStep> {
    let ab = schedule.alpha_bar(t);
    let ab_prev = if t == 0 {
        1.0
    } else {
        schedule.alpha_bar(t - 1)
    };
    let beta = schedule.betas[t];
    let x0 = ((x_t - (eps * (1.0 - ab).sqrt())?)? * (1.0 / ab.sqrt()))?.clamp(-1f32, 1f32)?;
    let c0 = ab_prev.sqrt() * beta / (1.0 - ab);
    let ct = (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab);
    let mean = ((&x0 * c0)? + (x_t * ct)?)?;
    let var = beta * (1.0 - ab_prev) / (1.0 - ab);
    let std = if t == 0 { 0.0 } else { var.sqrt() };
    let x_prev = match noise {
        Some(z) if std > 0.0 => (&mean + (z * std)?)?,
        _ => mean.clone(),
    };
    Ok(ReverseStep {
        x_prev,
        mean,
        std,
        x0_pred: x0,
    })
}

/// Per-image noise streams and the initial `x_T` for images of shape `[c, h, w]`.
pub fn initial_noise(
    seeds: &[u64],
    chw: [usize; 3],
    device: &Device,
) -> candle_core::Result<(Tensor, Vec<SeededRng>)> {
    let mut rngs: Vec<SeededRng> = seeds.iter().map(|&s| SeededRng::new(s, &[])).collect();
    let x = batch_noise(&mut rngs, chw, device)?;
    Ok((x, rngs))
}

/// The next standard-normal draw of every image's stream, stacked into `[B, c, h, w]`.
pub fn batch_noise(
    rngs: &mut [SeededRng],
    chw: [usize; 3],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = chw.iter().product();
    let mut v = Vec::with_capacity(n * rngs.len());
    for r in rngs.iter_mut() {
        v.extend(r.normal_vec(n));
    }
    Tensor::from_vec(v, (rngs.len(), chw[0], chw[1], chw[2]), device)
}

/// Generates one image per seed (all in one batch; callers chunk large sets). Returns `x_0`
/// in [-1, 1], `[B, C, H, W]`. `on_step` is called after every reverse step.
pub fn sample(
    model: &UNet,
    schedule: &NoiseSchedule,
    seeds: &[u64],
    cond: Cond,
    opts: &SamplerOpts,
    device: &Device,
    mut on_step: impl FnMut(),
) -> Result<Tensor> {
    let cfg = model.config();
    let chw = [cfg.in_channels, cfg.image_size, cfg.image_size];
    if let Some(c) = cond {
        if c.dim(0)? != seeds.len() {
            return Err(DiffusionError::config(
                "cond",
                format!("{} contexts for {} seeds", c.dim(0)?, seeds.len()),
            ));
        }
    }
    let (mut x, mut rngs) = initial_noise(seeds, chw, device)?;
    let b = seeds.len();
    let tvec = |t: usize| Tensor::from_vec(vec![t as f32; b], b, device);
    match opts.kind {
        SamplerKind::Ddpm => {
            for t in (0..schedule.timesteps()).rev() {
                let eps = guided_eps(model, &x, &tvec(t)?, cond, opts.guidance)?;
                let z = if t > 0 {
                    Some(batch_noise(&mut rngs, chw, device)?)
                } else {
                    None
                };
                x = ddpm_step(schedule, &x, &eps, t, z.as_ref())?.x_prev;
                on_step();
            }
        }
        SamplerKind::Ddim => {
            if opts.steps == 0 || opts.steps > schedule.timesteps() {
                return Err(DiffusionError::config(
                    "sample.steps",
                    format!("must be in 1..={}", schedule.timesteps()),
                ));
            }
            let ts = ddim_timesteps(schedule.timesteps(), opts.steps);
            for (i, &t) in ts.iter().enumerate() {
                let t_prev = ts.get(i + 1).copied();
                let eps = guided_eps(model, &x, &tvec(t)?, cond, opts.guidance)?;
                let z = if opts.eta > 0.0 && t_prev.is_some() {
                    Some(batch_noise(&mut rngs, chw, device)?)
                } else {
                    None
                };
                x = ddim_step(schedule, &x, &eps, t, t_prev, opts.eta, z.as_ref())?.x_prev;
                on_step();
            }
        }
    }
    Ok(x.clamp(-1f32, 1f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_timesteps_descend_to_zero() {
        assert_eq!(ddim_timesteps(1000, 4), vec![750, 500, 250, 0]);
        assert_eq!(ddim_timesteps(10, 10), (0..10).rev().collect::<Vec<_>>());
    }

    #[test]
    fn ddim_with_true_noise_recovers_x0() {
        // With the exact eps, a deterministic DDIM step to t_prev=None returns x0.
        let dev = Device::Cpu;
        let s = NoiseSchedule::linear(100, 1e-4, 0.02);
        let mut r = SeededRng::new(0, &[]);
        let x0 = (r.normal(&[2, 3, 4, 4], &dev).unwrap() * 0.3).unwrap();
        let eps = r.normal(&[2, 3, 4, 4], &dev).unwrap();
        let xt = s.q_sample(&x0, &[40, 40], &eps).unwrap();
        let st = ddim_step(&s, &xt, &eps, 40, None, 0.0, None).unwrap();
        let d = (st.x_prev - x0).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }
}
