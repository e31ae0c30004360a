//! The ReFL-style partial sampling path on tiny models.

mod common;

use acpo_diffusion::config::Spacing;
use acpo_diffusion::sampler::ddim_timesteps;
use acpo_finetune::refl::{partial_sample_batch, PartialSamplingConfig};
use acpo_finetune::{
    acpo_loss, train_step, AdamW, AdamWConfig, Method, ObjectiveBatch, ObjectiveConfig, Schedule,
};
use candle_core::{DType, Device, Tensor};
use common::*;

/// Base weights whose noise prediction has a gain below 1: DDIM's update uses the raw
/// predicted noise (the evaluation's sampler), so a model that amplifies its input (sd 0.3
/// here) makes the trajectory diverge.
fn refl_base() -> std::collections::HashMap<String, Tensor> {
    base_weights_sd(DType::F32, 1, 0.1)
}

fn setup() -> (Schedule, PartialSamplingConfig) {
    let s = Schedule::linear(T, 1e-3, 0.2).unwrap();
    let cfg = PartialSamplingConfig {
        sample_steps: 20,
        stop_t_min: 0,
        stop_t_max: 30,
        ..Default::default()
    };
    (s, cfg)
}

fn obj(method: Method, lp: f64, la: f64, ld: f64) -> ObjectiveConfig {
    ObjectiveConfig {
        method,
        lambda_p: lp,
        lambda_a: la,
        lambda_d: ld,
        t_min: 0,
        t_max: T - 1,
        ..Default::default()
    }
}

#[test]
fn partial_sampling_is_seeded_and_stops_in_the_late_window() {
    let base = refl_base();
    let model = frozen(&base);
    let (s, cfg) = setup();
    let dev = Device::Cpu;
    let traj = ddim_timesteps(T, cfg.sample_steps, Spacing::Leading);
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..12 {
        let a = partial_sample_batch(&model, &s, &cfg, &[3, 3, 8, 8], None, 5, step, &dev).unwrap();
        let b = partial_sample_batch(&model, &s, &cfg, &[3, 3, 8, 8], None, 5, step, &dev).unwrap();
        assert_eq!(max_abs_diff(&a.x_t, &b.x_t), 0.0);
        assert_eq!(a.t, b.t);
        let t = a.t[0];
        assert!(a.t.iter().all(|&x| x == t));
        assert!(t <= cfg.stop_t_max && traj.contains(&t), "t = {t}");
        assert!(a.eps.is_none());
        seen.insert(t);
    }
    assert!(seen.len() > 1, "the stop step is not random: {seen:?}");
    let bad = PartialSamplingConfig {
        stop_t_min: 1,
        stop_t_max: 3,
        ..cfg
    };
    let err = partial_sample_batch(&model, &s, &bad, &[1, 3, 8, 8], None, 0, 0, &dev).unwrap_err();
    assert!(err.to_string().contains("stop_t"), "{err}");
}

/// The gradient comes from the last, differentiable step only: it equals the gradient computed
/// on a fresh copy of `x_t` with no history; the anchor is 0 at the base; the data term errors.
#[test]
fn one_differentiable_step_and_same_x_t_for_the_anchor() {
    let base = refl_base();
    let (_vm, model, vars) = trainable(&base);
    let reference = frozen(&base);
    let iqa = TinyIqa::new(DType::F32);
    let (s, cfg) = setup();
    let dev = Device::Cpu;
    let batch = partial_sample_batch(&model, &s, &cfg, &[4, 3, 8, 8], None, 9, 0, &dev).unwrap();
    let o = obj(Method::Acpo, 1.0, 1.0, 0.0);
    let out = acpo_loss(&model, &reference, &iqa, &s, &o, &batch).unwrap();
    assert_eq!(out.anchor, Some(0.0));
    let g1 = out.loss.backward().unwrap();
    let fresh = ObjectiveBatch {
        x_t: Tensor::from_vec(
            batch.x_t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            batch.x_t.dims(),
            &dev,
        )
        .unwrap(),
        ..batch.clone()
    };
    let g2 = acpo_loss(&model, &reference, &iqa, &s, &o, &fresh)
        .unwrap()
        .loss
        .backward()
        .unwrap();
    let mut total = 0.0;
    for (name, v) in &vars {
        let a = g1.get(v.as_tensor()).unwrap();
        let b = g2.get(v.as_tensor()).unwrap();
        assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
        total += a
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    }
    assert!(total > 0.0, "no gradient reached the model");
    let err = acpo_loss(
        &model,
        &reference,
        &iqa,
        &s,
        &obj(Method::AcpoData, 1.0, 1.0, 1.0),
        &batch,
    )
    .unwrap_err();
    assert!(err.to_string().contains("lambda_d"), "{err}");
}

/// The perceptual gradient through the partial-sampling path points uphill: one small
/// optimiser step on a batch raises the guidance score of that same batch, on every batch
/// tried. (A first-order property, so it holds whatever the draws; how far many steps carry
/// a tiny model is not: on this toy, 25-40 steps at a learning rate of 2e-3 or more overshoot
/// and collapse the score for most training seeds, which says nothing about the gradient.)
#[test]
fn guidance_rises_on_the_refl_path() {
    let base = refl_base();
    let (_vm, model, vars) = trainable(&base);
    let reference = frozen(&base);
    let iqa = TinyIqa::new(DType::F32);
    let (s, cfg) = setup();
    let dev = Device::Cpu;
    let o = obj(Method::PerceptualOnly, 1.0, 0.0, 0.0);
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )
    .unwrap();
    let quality = |m: &TinyEps, b: &acpo_finetune::ObjectiveBatch| {
        acpo_loss(m, &reference, &iqa, &s, &o, b)
            .unwrap()
            .quality
            .unwrap()
    };
    for step in 0..5 {
        let b = partial_sample_batch(&model, &s, &cfg, &[8, 3, 8, 8], None, 3, step, &dev).unwrap();
        let before = quality(&model, &b);
        train_step(&model, &reference, &iqa, &s, &o, &b, &mut opt, 1.0).unwrap();
        let after = quality(&model, &b);
        assert!(after > before, "step {step}: guidance {before} -> {after}");
    }
}
