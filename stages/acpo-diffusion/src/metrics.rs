//! The held-out noise-prediction MSE (`SPEC.md` section 5).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rng::SeededRng;
use crate::schedule::NoiseSchedule;
use crate::unet::{Cond, UNet};

/// Mean of per-draw MSEs with its 95% normal-approximation interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeldoutMse {
    /// `E ||eps - eps_theta(x_t, t)||^2 / D` (per pixel-channel).
    pub mean: f64,
    /// Half-width of the 95% interval: `1.96 sd / sqrt(n)`.
    pub ci95: f64,
    /// Number of `(x0, t, eps)` draws.
    pub n: usize,
}

/// Held-out noise-prediction MSE of `model` on `images` (`[N, C, H, W]` in [-1, 1]).
///
/// Draw `j` of image `i` takes `t` uniform in `0..T` and `eps ~ N(0, I)` from the stream
/// `SeededRng::new(seed, &[i, j])`: the draws depend only on `(seed, i, j)` and the image, so
/// every model evaluated with the same seed sees the same `(x0, t, eps)` triples, whatever the
/// batch size. `cond`, when given, is the per-image context `[N, L, D]`.
pub fn heldout_mse(
    model: &UNet,
    schedule: &NoiseSchedule,
    images: &Tensor,
    seed: u64,
    n_draws: usize,
    cond: Cond,
) -> Result<HeldoutMse> {
    let vals = heldout_mse_per_draw(model, schedule, images, seed, n_draws, cond)?;
    Ok(HeldoutMse::from_values(&vals))
}

impl HeldoutMse {
    /// Mean and 95% normal-approximation half-width of `vals` (e.g. per-draw MSEs, or paired
    /// differences of two models' per-draw MSEs).
    pub fn from_values(vals: &[f64]) -> Self {
        let m = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / m;
        let var = if vals.len() > 1 {
            vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0)
        } else {
            0.0
        };
        HeldoutMse {
            mean,
            ci95: 1.96 * (var / m).sqrt(),
            n: vals.len(),
        }
    }
}

/// The per-draw values behind [`heldout_mse`], draw-major (`j * N + i`): two models (or two
/// conditions) evaluated with the same seed can be compared draw by draw.
pub fn heldout_mse_per_draw(
    model: &UNet,
    schedule: &NoiseSchedule,
    images: &Tensor,
    seed: u64,
    n_draws: usize,
    cond: Cond,
) -> Result<Vec<f64>> {
    let (n, c, h, w) = images.dims4()?;
    let device: Device = images.device().clone();
    let d = c * h * w;
    let t_max = schedule.timesteps();
    let batch = 64;
    let mut vals = Vec::with_capacity(n * n_draws);
    for j in 0..n_draws {
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            let mut ts = Vec::with_capacity(b);
            let mut eps = Vec::with_capacity(b * d);
            for i in start..start + b {
                let mut r = SeededRng::new(seed, &[i as u64, j as u64]);
                ts.push(r.below(t_max));
                eps.extend(r.normal_vec(d));
            }
            let eps = Tensor::from_vec(eps, (b, c, h, w), &device)?;
            let x0 = images.narrow(0, start, b)?;
            let xt = schedule.q_sample(&x0, &ts, &eps)?;
            let tt =
                Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, &device)?;
            let ctx = match cond {
                Some(cx) => Some(cx.narrow(0, start, b)?),
                None => None,
            };
            let pred = model.forward(&xt, &tt, ctx.as_ref())?;
            let per = (pred - eps)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?
                .to_vec1::<f32>()?;
            vals.extend(per.into_iter().map(|v| v as f64));
            start += b;
        }
    }
    Ok(vals)
}
