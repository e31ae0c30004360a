//! Forward-process noise schedules (linear as in DDPM, cosine as in improved DDPM).

use candle_core::{Device, Tensor};

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

    /// Forward noising `x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps` for per-image timesteps.
    pub fn q_sample(&self, x0: &Tensor, ts: &[usize], eps: &Tensor) -> candle_core::Result<Tensor> {
        let a: Vec<f32> = ts
            .iter()
            .map(|&t| self.alphas_cumprod[t].sqrt() as f32)
            .collect();
        let s: Vec<f32> = ts
            .iter()
            .map(|&t| (1.0 - self.alphas_cumprod[t]).sqrt() as f32)
            .collect();
        let dev = x0.device();
        let a = Tensor::from_vec(a, (ts.len(), 1, 1, 1), dev)?;
        let s = Tensor::from_vec(s, (ts.len(), 1, 1, 1), dev)?;
        x0.broadcast_mul(&a)?.add(&eps.broadcast_mul(&s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
