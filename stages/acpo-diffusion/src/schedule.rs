//! Forward-process noise schedules (linear as in DDPM, cosine as in improved DDPM).

use candle_core::{DType, Device, Tensor};

use crate::config::{ScheduleConfig, ScheduleKind};
use crate::error::{DiffusionError, Result};

/// Betas and cumulative alpha products of a `T`-step forward process, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `beta_t`, `t = 0..T`.
    pub betas: Vec<f64>,
    /// `alpha_bar_t = prod_{s<=t} (1 - beta_s)`.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Linear betas from `beta_start` to `beta_end` (inclusive) over `timesteps` steps.
    pub fn linear(timesteps: usize, beta_start: f64, beta_end: f64) -> Self {
        let betas = (0..timesteps)
            .map(|i| {
                if timesteps == 1 {
                    beta_start
                } else {
                    beta_start + (beta_end - beta_start) * i as f64 / (timesteps - 1) as f64
                }
            })
            .collect();
        Self::from_betas(betas)
    }

    /// Cosine schedule: `alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)`, `s = 0.008`, betas
    /// clipped at 0.999 (Nichol & Dhariwal 2021).
    pub fn cosine(timesteps: usize) -> Self {
        let s = 0.008;
        let f = |t: f64| {
            (((t / timesteps as f64 + s) / (1.0 + s)) * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        let betas = (0..timesteps)
            .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999))
            .collect();
        Self::from_betas(betas)
    }

    /// Stable Diffusion's `scaled_linear` schedule: betas linear in their square root,
    /// `beta_t = (sqrt(b0) + t (sqrt(b1) - sqrt(b0)) / (T - 1))^2`.
    pub fn scaled_linear(timesteps: usize, beta_start: f64, beta_end: f64) -> Self {
        let (b0, b1) = (beta_start.sqrt(), beta_end.sqrt());
        let betas = (0..timesteps)
            .map(|i| {
                let b = if timesteps == 1 {
                    b0
                } else {
                    b0 + (b1 - b0) * i as f64 / (timesteps - 1) as f64
                };
                b * b
            })
            .collect();
        Self::from_betas(betas)
    }

    /// From given `alpha_bar_t` values, kept exactly (strictly in `(0, 1]`, non-increasing);
    /// the betas are derived from them.
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self> {
        if alphas_cumprod.is_empty() {
            return Err(DiffusionError::config("alpha_bar", "empty schedule"));
        }
        for (i, a) in alphas_cumprod.iter().enumerate() {
            if !(*a > 0.0 && *a <= 1.0) {
                return Err(DiffusionError::config(
                    "alpha_bar",
                    format!("alpha_bar[{i}] = {a} is not in (0, 1]"),
                ));
            }
            if i > 0 && *a > alphas_cumprod[i - 1] {
                return Err(DiffusionError::config(
                    "alpha_bar",
                    format!("alpha_bar[{i}] = {a} is larger than alpha_bar[{}]", i - 1),
                ));
            }
        }
        let betas = alphas_cumprod
            .iter()
            .enumerate()
            .map(|(i, a)| 1.0 - a / if i == 0 { 1.0 } else { alphas_cumprod[i - 1] })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// From explicit betas.
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self {
            betas,
            alphas_cumprod,
        }
    }

    /// The schedule a config describes.
    pub fn from_config(cfg: &ScheduleConfig) -> Result<Self> {
        if cfg.timesteps == 0 {
            return Err(DiffusionError::config("schedule.timesteps", "must be > 0"));
        }
        Ok(match cfg.kind {
            ScheduleKind::Linear => {
                if !(0.0 < cfg.beta_start && cfg.beta_start <= cfg.beta_end && cfg.beta_end < 1.0) {
                    return Err(DiffusionError::config(
                        "schedule.beta_start/beta_end",
                        "need 0 < beta_start <= beta_end < 1",
                    ));
                }
                Self::linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
            }
            ScheduleKind::Cosine => Self::cosine(cfg.timesteps),
        })
    }

    /// Number of steps T.
    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `alpha_bar_t`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    /// `alpha_bar` of each timestep as a `[B, 1, 1, 1]` f32 tensor (for broadcasting).
    pub fn alpha_bar_tensor(&self, ts: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let v: Vec<f32> = ts.iter().map(|&t| self.alphas_cumprod[t] as f32).collect();
        Tensor::from_vec(v, (ts.len(), 1, 1, 1), device)
    }

    /// Per-image `[B, 1, 1, 1]` tensors of `f(alpha_bar_t)`, computed in f64 and rounded once
    /// to `dtype`.
    pub fn per_image(
        &self,
        ts: &[usize],
        f: impl Fn(f64) -> f64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let v: Vec<f64> = ts.iter().map(|&t| f(self.alphas_cumprod[t])).collect();
        Tensor::from_vec(v, (ts.len(), 1, 1, 1), device)?.to_dtype(dtype)
    }

    /// Forward noising `x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps` for per-image timesteps, in
    /// `x0`'s dtype.
    pub fn q_sample(&self, x0: &Tensor, ts: &[usize], eps: &Tensor) -> candle_core::Result<Tensor> {
        let (dt, dev) = (x0.dtype(), x0.device());
        let a = self.per_image(ts, f64::sqrt, dt, dev)?;
        let s = self.per_image(ts, |ab| (1.0 - ab).sqrt(), dt, dev)?;
        x0.broadcast_mul(&a)?.add(&eps.broadcast_mul(&s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_sample_keeps_the_f32_coefficients_and_runs_in_f64() {
        // The coefficients are the f64 values rounded once to f32, as before q_sample took
        // any dtype: the base models' training draws do not change.
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02);
        let ts = [0usize, 17, 500, 999];
        let dev = Device::Cpu;
        let a = s.per_image(&ts, f64::sqrt, DType::F32, &dev).unwrap();
        let want: Vec<f32> = ts
            .iter()
            .map(|&t| s.alphas_cumprod[t].sqrt() as f32)
            .collect();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let x0 = Tensor::ones((4, 1, 2, 2), DType::F64, &dev).unwrap();
        let x = s.q_sample(&x0, &ts, &x0.zeros_like().unwrap()).unwrap();
        assert_eq!(x.dtype(), DType::F64);
        let got = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(got[4], s.alphas_cumprod[17].sqrt());
    }

    #[test]
    fn scaled_linear_and_given_alpha_bars() {
        // Stable Diffusion's schedule: alpha_bar_999 of about 0.0047.
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012);
        assert!((s.betas[0] - 0.00085).abs() < 1e-12 && (s.betas[999] - 0.012).abs() < 1e-12);
        assert!(
            (s.alpha_bar(999) - 0.00466).abs() < 1e-4,
            "{}",
            s.alpha_bar(999)
        );
        let same = NoiseSchedule::from_alphas_cumprod(s.alphas_cumprod.clone()).unwrap();
        assert_eq!(same.alphas_cumprod, s.alphas_cumprod);
        assert!((same.betas[500] - s.betas[500]).abs() < 1e-12);
        for bad in [vec![], vec![0.5, 0.9], vec![1.5], vec![0.0]] {
            let e = NoiseSchedule::from_alphas_cumprod(bad.clone()).unwrap_err();
            assert!(e.to_string().contains("alpha_bar"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn linear_matches_ddpm_endpoints() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02);
        assert!((s.betas[0] - 1e-4).abs() < 1e-12);
        assert!((s.betas[999] - 0.02).abs() < 1e-12);
        // DDPM's alpha_bar_T is about 4.0e-5.
        assert!(
            s.alpha_bar(999) > 3e-5 && s.alpha_bar(999) < 5e-5,
            "{}",
            s.alpha_bar(999)
        );
    }

    #[test]
    fn cosine_is_monotone_and_bounded() {
        let s = NoiseSchedule::cosine(1000);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert!(s.betas.iter().all(|&b| b > 0.0 && b <= 0.999));
        assert!(s.alpha_bar(0) > 0.999);
    }
}
