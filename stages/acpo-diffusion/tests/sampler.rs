//! The one DDIM of the project (acpo-diffusion's sampler), checked from outside the crate.
//!
//! The images of the evaluation's sampler (leading spacing, raw eps) are pinned by digest: the
//! values were computed by the sampler before the fine-tuning probe's copy of DDIM was folded
//! into it, so the evaluations of earlier runs and of later ones draw the same images.

mod common;

use acpo_diffusion::config::{SamplerKind, Spacing};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::sampler::{sample, Ddim, SamplerOpts};
use acpo_diffusion::{NoiseSchedule, UNet, UNetConfig};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

fn tiny_config() -> UNetConfig {
    common::tiny_unet(None)
}

/// A tiny UNet whose every weight is a seeded normal draw (a fresh model's zero-initialised
/// output layer would predict eps = 0 and pin nothing).
fn random_model(seed: u64) -> UNet {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = UNet::new_trainable(&tiny_config(), &varmap, 0, &dev).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let mut r = SeededRng::new(seed, &[k as u64]);
        let w = (r.normal(var.dims(), &dev).unwrap() * 0.2).unwrap();
        var.set(&w).unwrap();
    }
    drop(data);
    model
}

/// FNV-1a over the f32 bits: a digest that is the same on every platform and Rust version.
fn digest(x: &Tensor) -> u64 {
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in v {
        for b in f.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn opts(spacing: Spacing, eta: f64) -> SamplerOpts {
    SamplerOpts {
        kind: SamplerKind::Ddim,
        steps: 10,
        eta,
        guidance: 1.0,
        spacing,
    }
}

fn draw(spacing: Spacing, eta: f64) -> Tensor {
    let model = random_model(7);
    let schedule = NoiseSchedule::linear(100, 1e-4, 0.02);
    sample(
        &model,
        &schedule,
        &[3, 11, 12],
        None,
        &opts(spacing, eta),
        &Device::Cpu,
        || {},
    )
    .unwrap()
}

#[test]
fn the_evaluation_sampler_draws_the_pinned_images() {
    // Computed with the sampler of commit 2518315 (leading spacing, its only one), whose ops
    // are `reference_ops` (convolutions through `gemm`, libm's exp in SiLU). The default ops
    // (the panel kernel where the CPU has AVX2, a polynomial exp) round differently: their
    // images agree to float rounding carried through the ten steps, far below one 8-bit level
    // of an image in [-1, 1] (2/255).
    for (eta, pinned) in [(0.0, PINNED_ETA0), (0.5, PINNED_ETA05)] {
        let reference = acpo_diffusion::reference_ops(|| draw(Spacing::Leading, eta));
        assert_eq!(digest(&reference), pinned, "eta {eta}");
        let d = (draw(Spacing::Leading, eta) - reference)
            .unwrap()
            .abs()
            .unwrap();
        let d = d.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "eta {eta}: the default product differs by {d}");
    }
}

#[test]
fn trailing_spacing_draws_other_images_from_the_same_noise() {
    let a = draw(Spacing::Leading, 0.0);
    let b = draw(Spacing::Trailing, 0.0);
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 1e-3);
}

#[test]
fn a_trajectory_run_in_two_parts_equals_one_run() {
    // The fine-tuning's ReFL path stops a trajectory part-way and continues it later.
    let model = random_model(3);
    let schedule = NoiseSchedule::linear(100, 1e-4, 0.02);
    let ddim = Ddim::new(100, 8, Spacing::Trailing, 0.0).unwrap();
    let dev = Device::Cpu;
    let x = SeededRng::new(1, &[]).normal(&[2, 3, 8, 8], &dev).unwrap();
    let ab = |t: usize| schedule.alpha_bar(t);
    let mut eps = |x: &Tensor, t: usize| {
        let tt = Tensor::from_vec(vec![t as f32; 2], 2, &dev)?;
        model.forward(x, &tt, None)
    };
    let mut no_noise = || -> candle_core::Result<Tensor> { unreachable!("eta is 0") };
    let mut steps = 0;
    let mut count = || steps += 1;
    let whole = ddim
        .run(&x, 0..8, &ab, &mut eps, &mut no_noise, &mut count)
        .unwrap();
    let half = ddim
        .run(&x, 0..5, &ab, &mut eps, &mut no_noise, &mut count)
        .unwrap();
    let rest = ddim
        .run(&half, 5..8, &ab, &mut eps, &mut no_noise, &mut count)
        .unwrap();
    assert_eq!(steps, 16);
    let d = (whole - rest).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
}

const PINNED_ETA0: u64 = 0x64af_efb3_d962_5012;
const PINNED_ETA05: u64 = 0xe859_ee5d_614f_de3c;
