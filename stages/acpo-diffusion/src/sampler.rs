//! DDPM ancestral and DDIM samplers with classifier-free guidance.
//!
//! [`Ddim`] is the project's one DDIM: the evaluation and the `sample` stage step through it
//! here, and the fine-tuning probe and ReFL path (acpo-finetune) step through it with their own
//! noise predictor. The predicted `x0` is clipped to [-1, 1] and the raw predicted noise gives
//! the direction to `x_prev` (the DDIM paper's update, eq. 12).
//!
//! Reproducibility: image `i` draws its initial noise and every later noise from its own stream
//! `SeededRng::new(seeds[i], &[])`, so an image depends only on its seed (not on the batch it
//! was generated in), and the same seeds give the same images across runs and models.

use std::ops::Range;

use candle_core::{Device, Tensor};

use crate::config::{SamplerKind, Spacing};
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
    /// DDIM timestep spacing (ignored for DDPM).
    pub spacing: Spacing,
}

/// Evenly spaced DDIM timesteps of `[0, timesteps)`, descending, distinct. Leading:
/// `[(S-1) T/S, ..., T/S, 0]`; trailing: `[T-1, ..., T/S - 1]` (`S = steps`).
pub fn ddim_timesteps(timesteps: usize, steps: usize, spacing: Spacing) -> Vec<usize> {
    let mut v: Vec<usize> = match spacing {
        Spacing::Leading => (0..steps).rev().map(|i| i * timesteps / steps).collect(),
        Spacing::Trailing => (0..steps)
            .map(|i| (timesteps * (steps - i) / steps).saturating_sub(1))
            .collect(),
    };
    v.dedup();
    v
}

/// A DDIM trajectory: its timesteps (descending), stochasticity `eta`, and whether the
/// predicted `x0` is clipped to the image range `[-1, 1]` (pixel models; latent models, whose
/// states are not images, turn it off).
#[derive(Debug, Clone, PartialEq)]
pub struct Ddim {
    timesteps: Vec<usize>,
    eta: f64,
    clip_x0: bool,
}

impl Ddim {
    /// `steps` steps over a `num_timesteps`-step schedule. Errors name `steps` when it is not
    /// in `1..=num_timesteps`, and `eta` when it is negative or not finite.
    pub fn new(num_timesteps: usize, steps: usize, spacing: Spacing, eta: f64) -> Result<Self> {
        if steps == 0 || steps > num_timesteps {
            return Err(DiffusionError::config(
                "steps",
                format!("DDIM steps {steps} is not in 1..={num_timesteps}"),
            ));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(DiffusionError::config(
                "eta",
                format!("must be a finite number >= 0, got {eta}"),
            ));
        }
        Ok(Self {
            timesteps: ddim_timesteps(num_timesteps, steps, spacing),
            eta,
            clip_x0: true,
        })
    }

    /// The same trajectory without clipping the predicted `x0` (latent diffusion: Stable
    /// Diffusion's DDIM does not clip).
    pub fn without_x0_clip(self) -> Self {
        Self {
            clip_x0: false,
            ..self
        }
    }

    /// The trajectory's timesteps, descending.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Steps `steps` of the trajectory from `x` at `timesteps[steps.start]`: the state at
    /// `timesteps[steps.end]`, or the clipped clean image when `steps.end` is the trajectory's
    /// length. `eps(x, t)` predicts the noise of the batch at timestep `t`; `noise()` is a
    /// standard normal draw of `x`'s shape, asked for once per stochastic step (`eta > 0`,
    /// not the last step); `on_step` is called after every step. Every state is detached, so no
    /// graph through the trajectory is kept.
    pub fn run(
        &self,
        x: &Tensor,
        steps: Range<usize>,
        alpha_bar: &dyn Fn(usize) -> f64,
        eps: &mut dyn FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
        noise: &mut dyn FnMut() -> candle_core::Result<Tensor>,
        on_step: &mut dyn FnMut(),
    ) -> candle_core::Result<Tensor> {
        if steps.start > steps.end || steps.end > self.timesteps.len() {
            candle_core::bail!(
                "DDIM steps {steps:?} outside the {}-step trajectory",
                self.timesteps.len()
            );
        }
        let mut x = x.detach();
        for i in steps {
            let t = self.timesteps[i];
            let t_prev = self.timesteps.get(i + 1).copied();
            let e = eps(&x, t)?;
            let z = if self.eta > 0.0 && t_prev.is_some() {
                Some(noise()?)
            } else {
                None
            };
            let ab_prev = t_prev.map_or(1.0, alpha_bar);
            x = ddim_update(
                &x,
                &e,
                alpha_bar(t),
                ab_prev,
                self.eta,
                z.as_ref(),
                self.clip_x0,
            )?
            .x_prev
            .detach();
            on_step();
        }
        Ok(x)
    }
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
    /// The predicted clean image (clipped to [-1, 1] unless the step was asked not to).
    pub x0_pred: Tensor,
}

/// The DDIM update from `x_t` (cumulative alpha `ab`) to the state at cumulative alpha
/// `ab_prev` (1 for the clean image), given the predicted noise `eps`; the predicted `x0` is
/// clipped to `[-1, 1]` when `clip_x0` is set.
pub fn ddim_update(
    x_t: &Tensor,
    eps: &Tensor,
    ab: f64,
    ab_prev: f64,
    eta: f64,
    noise: Option<&Tensor>,
    clip_x0: bool,
) -> candle_core::Result<ReverseStep> {
    let x0 = ((x_t - (eps * (1.0 - ab).sqrt())?)? * (1.0 / ab.sqrt()))?;
    let x0 = if clip_x0 { x0.clamp(-1f32, 1f32)? } else { x0 };
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
            let ddim = Ddim::new(schedule.timesteps(), opts.steps, opts.spacing, opts.eta)?;
            x = ddim.run(
                &x,
                0..ddim.timesteps().len(),
                &|t| schedule.alpha_bar(t),
                &mut |x, t| guided_eps(model, x, &tvec(t)?, cond, opts.guidance),
                &mut || batch_noise(&mut rngs, chw, device),
                &mut on_step,
            )?;
        }
    }
    Ok(x.clamp(-1f32, 1f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_timesteps_descend_to_zero() {
        let l = Spacing::Leading;
        assert_eq!(ddim_timesteps(1000, 4, l), vec![750, 500, 250, 0]);
        assert_eq!(ddim_timesteps(10, 10, l), (0..10).rev().collect::<Vec<_>>());
        assert_eq!(ddim_timesteps(1000, 3, l), vec![666, 333, 0]);
    }

    #[test]
    fn trailing_timesteps_start_at_pure_noise() {
        let tr = Spacing::Trailing;
        assert_eq!(ddim_timesteps(1000, 4, tr), vec![999, 749, 499, 249]);
        let ts = ddim_timesteps(1000, 40, tr);
        assert_eq!((ts.len(), ts[0], ts[1], ts[39]), (40, 999, 974, 24));
        assert_eq!(
            ddim_timesteps(10, 10, tr),
            (0..10).rev().collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_steps_and_eta_are_named() {
        let msg = |e: DiffusionError| e.to_string();
        assert!(msg(Ddim::new(10, 0, Spacing::Leading, 0.0).unwrap_err()).contains("steps"));
        assert!(msg(Ddim::new(10, 11, Spacing::Leading, 0.0).unwrap_err()).contains("1..=10"));
        assert!(msg(Ddim::new(10, 5, Spacing::Leading, -1.0).unwrap_err()).contains("eta"));
    }

    #[test]
    fn the_spacing_names_parse_and_others_do_not() {
        let s: Spacing = serde_json::from_str("\"trailing\"").unwrap();
        assert_eq!((s, s.name()), (Spacing::Trailing, "trailing"));
        assert_eq!(Spacing::default().name(), "leading");
        assert!(serde_json::from_str::<Spacing>("\"middle\"").is_err());
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
        let st = ddim_update(&xt, &eps, s.alpha_bar(40), 1.0, 0.0, None, true).unwrap();
        let d = (st.x_prev - x0).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn an_unclipped_trajectory_keeps_states_beyond_the_image_range() {
        // Latents are not images: with the exact eps, the unclipped DDIM returns an x0 of
        // std 3; the clipped one (pixel models) cuts it to [-1, 1].
        let dev = Device::Cpu;
        let s = NoiseSchedule::linear(100, 1e-4, 0.02);
        let mut r = SeededRng::new(1, &[]);
        let x0 = (r.normal(&[2, 4, 4, 4], &dev).unwrap() * 3.0).unwrap();
        let eps = r.normal(&[2, 4, 4, 4], &dev).unwrap();
        let ddim = Ddim::new(100, 5, Spacing::Leading, 0.0).unwrap();
        let t0 = ddim.timesteps()[0];
        let xt = s.q_sample(&x0, &[t0, t0], &eps).unwrap();
        let run = |d: &Ddim| {
            let mut eps_of = |x: &Tensor, t: usize| {
                // the exact noise of x at t for this x0
                (x - (&x0 * s.alpha_bar(t).sqrt())?)? * (1.0 / (1.0 - s.alpha_bar(t)).sqrt())
            };
            d.run(
                &xt,
                0..d.timesteps().len(),
                &|t| s.alpha_bar(t),
                &mut eps_of,
                &mut || unreachable!("eta 0 draws no noise"),
                &mut || {},
            )
            .unwrap()
        };
        let err = |x: Tensor| {
            (x - &x0)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(err(run(&ddim.clone().without_x0_clip())) < 1e-3);
        let clipped = run(&ddim);
        assert!(
            clipped
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                <= 1.0
        );
        assert!(err(clipped) > 1.0);
    }
}
