//! Seeded random draws.
//!
//! Every training step draws from its own generator, seeded from `(seed, stream, step)`, so a
//! run resumed at step `k` draws exactly what an uninterrupted run draws at step `k`, with no
//! generator state to save. Noise is drawn on the host (candle's CPU `randn` uses a thread-local
//! generator that cannot be seeded).

use crate::Result;
use acpo_diffusion::rng::SeededRng;
use candle_core::{Device, Tensor};

/// Named streams, so that different uses of one seed never share draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Training batch: image indices, timesteps, noise.
    Train = 1,
    /// The fixed held-out probe set.
    Probe = 2,
    /// Initial noise of the probe samples.
    ProbeSamples = 3,
    /// ReFL partial sampling.
    Refl = 4,
    /// The calibration draws of `normalize: base`.
    Calibration = 5,
    /// The prompts of a step (runs on prompts).
    Prompts = 6,
    /// The captions of a step's data images (runs on prompts).
    Captions = 7,
}

/// The generator of one step of one stream: acpo-diffusion's [`SeededRng`] (the project's one
/// seeded generator, ChaCha12) keyed by `(seed, stream, step)`.
pub fn rng(seed: u64, stream: Stream, step: u64) -> SeededRng {
    SeededRng::new(seed, &[stream as u64, step])
}

/// Standard normal `f32` tensor of the given shape.
pub fn normal(rng: &mut SeededRng, dims: &[usize], device: &Device) -> Result<Tensor> {
    Ok(rng.normal(dims, device)?)
}

/// `n` timesteps uniform in `[t_min, t_max]` (inclusive).
pub fn timesteps(rng: &mut SeededRng, n: usize, t_min: usize, t_max: usize) -> Vec<usize> {
    (0..n)
        .map(|_| t_min + rng.below(t_max - t_min + 1))
        .collect()
}

/// `n` indices uniform in `0..len`, with replacement.
pub fn indices(rng: &mut SeededRng, n: usize, len: usize) -> Vec<usize> {
    (0..n).map(|_| rng.below(len)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_steps_differ_and_repeat() {
        let a: Vec<usize> = timesteps(&mut rng(7, Stream::Train, 3), 8, 0, 999);
        let b: Vec<usize> = timesteps(&mut rng(7, Stream::Train, 3), 8, 0, 999);
        let c: Vec<usize> = timesteps(&mut rng(7, Stream::Train, 4), 8, 0, 999);
        let d: Vec<usize> = timesteps(&mut rng(7, Stream::Probe, 3), 8, 0, 999);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.iter().all(|&t| t <= 999));
        let z = normal(&mut rng(1, Stream::Train, 0), &[4000], &Device::Cpu).unwrap();
        let mean = z.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let var = z
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }
}
