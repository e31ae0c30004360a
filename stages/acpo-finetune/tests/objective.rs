//! The objective's behaviour on tiny models (SPEC section 2; issue tests).

mod common;

use acpo_finetune::objective::perceptual_term;
use acpo_finetune::{
    acpo_loss, data_batch, probe_metrics, train_step, AdamW, AdamWConfig, Method, ObjectiveBatch,
    ObjectiveConfig, ProbeSet, Schedule,
};
use candle_core::{DType, Device, Tensor};
use common::*;

fn schedule() -> Schedule {
    Schedule::linear(T, 1e-3, 0.2).unwrap()
}

fn cfg(method: Method, lp: f64, la: f64, ld: f64) -> ObjectiveConfig {
    ObjectiveConfig {
        method,
        lambda_p: lp,
        lambda_a: la,
        lambda_d: ld,
        t_min: 5,
        t_max: 60,
        ..Default::default()
    }
}

/// Tuned variables, the tuned model, per-step guidance values, the base weights.
type Run = (
    Vec<(String, candle_core::Var)>,
    TinyEps,
    Vec<Option<f64>>,
    std::collections::HashMap<String, Tensor>,
);

/// Fine-tune a trainable copy of the seeded base for `steps` steps; returns the tuned weights'
/// variables, the model and the per-step guidance values.
fn run(obj: &ObjectiveConfig, steps: usize, lr: f64) -> Run {
    let base = base_weights(DType::F32, 1);
    let (_vm, model, vars) = trainable(&base);
    let reference = frozen(&base);
    let iqa = TinyIqa::new(DType::F32);
    let s = schedule();
    let data = images(32, 8, DType::F32, 3);
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr,
            ..Default::default()
        },
    )
    .unwrap();
    let mut q = vec![];
    for step in 0..steps {
        let batch = data_batch(&data, &s, obj, 8, 11, step as u64).unwrap();
        let st = train_step(&model, &reference, &iqa, &s, obj, &batch, &mut opt, 1.0).unwrap();
        q.push(st.quality);
    }
    (vars, model, q, base)
}

#[test]
fn lambda_p_zero_leaves_weights_at_base() {
    // anchor only (the model starts at the anchor, so its gradient is exactly zero)
    let obj = cfg(Method::Acpo, 0.0, 1.0, 0.0);
    let (vars, _m, q, base) = run(&obj, 5, 1e-2);
    assert!(
        q.iter().all(|q| q.is_none()),
        "guidance must not be evaluated"
    );
    for (name, v) in &vars {
        assert_eq!(
            max_abs_diff(v.as_tensor(), &base[name]),
            0.0,
            "{name} moved with lambda_p = 0"
        );
    }
    // whereas with lambda_p > 0 they do move
    let (vars, ..) = run(&cfg(Method::Acpo, 1.0, 1.0, 0.0), 2, 1e-2);
    let moved: f64 = vars
        .iter()
        .map(|(n, v)| max_abs_diff(v.as_tensor(), &base[n]))
        .sum();
    assert!(moved > 1e-3, "weights did not move: {moved}");
}

#[test]
fn strong_anchor_keeps_drift_small_perceptual_only_drifts() {
    let s = schedule();
    let probe = ProbeSet::new(&images(32, 8, DType::F32, 99), &s, 64, 5).unwrap();
    let iqa = TinyIqa::new(DType::F32);
    let measure = |obj: &ObjectiveConfig| {
        let (_v, model, _q, base) = run(obj, 40, 5e-3);
        probe_metrics(&model, &frozen(&base), &iqa, &s, obj, &probe, 32).unwrap()
    };
    let po = measure(&cfg(Method::PerceptualOnly, 1.0, 0.0, 0.0));
    let acpo = measure(&cfg(Method::Acpo, 1.0, 1e4, 0.0));
    let base = {
        let b = base_weights(DType::F32, 1);
        probe_metrics(
            &frozen(&b),
            &frozen(&b),
            &iqa,
            &s,
            &cfg(Method::Acpo, 1.0, 1.0, 0.0),
            &probe,
            32,
        )
        .unwrap()
    };
    assert_eq!(base.anchor_distance.mean, 0.0);
    assert!(
        po.anchor_distance.mean > 1e-3,
        "perceptual-only did not drift: {po:?}"
    );
    assert!(
        acpo.anchor_distance.mean < 0.02 * po.anchor_distance.mean,
        "anchor did not hold: acpo {acpo:?} vs perceptual-only {po:?}"
    );
    // the strongly anchored model's held-out MSE stays near the base's
    assert!(
        (acpo.heldout_mse.mean - base.heldout_mse.mean).abs()
            < 0.1
                * (po.heldout_mse.mean - base.heldout_mse.mean)
                    .abs()
                    .max(1e-6),
        "base {base:?} acpo {acpo:?} po {po:?}"
    );
}

#[test]
fn guidance_score_rises_over_steps() {
    let obj = cfg(Method::PerceptualOnly, 1.0, 0.0, 0.0);
    let s = schedule();
    let probe = ProbeSet::new(&images(32, 8, DType::F32, 99), &s, 64, 5).unwrap();
    let iqa = TinyIqa::new(DType::F32);
    let base = base_weights(DType::F32, 1);
    let before = probe_metrics(&frozen(&base), &frozen(&base), &iqa, &s, &obj, &probe, 64).unwrap();
    let (_v, model, q, base) = run(&obj, 30, 5e-3);
    let after = probe_metrics(&model, &frozen(&base), &iqa, &s, &obj, &probe, 64).unwrap();
    let (b, a) = (before.guidance_x0hat.mean, after.guidance_x0hat.mean);
    assert!(before.guidance_x0hat.n > 10);
    assert!(a > b + 0.05, "held-out guidance did not rise: {b} -> {a}");
    // and the training batches' guidance rises too (first 5 vs last 5 steps)
    let q: Vec<f64> = q.into_iter().map(Option::unwrap).collect();
    let first: f64 = q[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = q[q.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        last > first,
        "training guidance did not rise: {first} -> {last}"
    );
}

/// Finite differences (f64) against the autograd gradient of `L_perc` with respect to weights
/// of both layers of the noise predictor: the perceptual gradient flows through the guidance
/// model and `x0_hat` into the model's weights.
#[test]
fn perceptual_gradient_reaches_weights_finite_difference() {
    let base = base_weights(DType::F64, 2);
    let (_vm, model, vars) = trainable(&base);
    let iqa = TinyIqa::new(DType::F64);
    let s = schedule();
    let obj = cfg(Method::PerceptualOnly, 1.0, 0.0, 0.0);
    let data = images(8, 6, DType::F64, 4);
    let batch = data_batch(&data, &s, &obj, 4, 3, 0).unwrap();
    let loss = |m: &TinyEps| -> Tensor {
        let t = Schedule::t_tensor(&batch.t, &Device::Cpu).unwrap();
        let e = acpo_finetune::EpsModel::eps(m, &batch.x_t, &t, None).unwrap();
        perceptual_term(&iqa, &s, &obj, &batch.x_t, &e, &batch.t)
            .unwrap()
            .0
    };
    let grads = loss(&model).backward().unwrap();
    let mut checked = 0;
    for (name, var) in &vars {
        if !(name == "c1.weight" || name == "c2.weight" || name == "temb.weight") {
            continue;
        }
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w0: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for &i in &[0usize, 3, 7] {
            let h = 1e-6;
            let eval = |delta: f64| {
                let mut w = w0.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let v = loss(&model).to_scalar::<f64>().unwrap();
                var.set(&Tensor::from_vec(w0.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                v
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-6);
            assert!(
                err < 1e-4,
                "{name}[{i}]: autograd {} vs finite difference {fd}",
                g[i]
            );
            assert!(g[i].abs() > 1e-8, "{name}[{i}]: gradient is zero");
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn terms_follow_the_method_and_anchor_is_zero_at_base() {
    let base = base_weights(DType::F32, 1);
    let (_vm, model, _vars) = trainable(&base);
    let reference = frozen(&base);
    let iqa = TinyIqa::new(DType::F32);
    let s = schedule();
    let data = images(16, 8, DType::F32, 3);
    for m in Method::ALL {
        let obj = cfg(m, 1.0, 2.0, 3.0);
        let batch = data_batch(&data, &s, &obj, 4, 1, 0).unwrap();
        let out = acpo_loss(&model, &reference, &iqa, &s, &obj, &batch).unwrap();
        assert!(out.perceptual.is_some());
        assert_eq!(out.anchor.is_some(), m.uses_anchor(), "{m}");
        assert_eq!(out.simple.is_some(), m.uses_data(), "{m}");
        if let Some(a) = out.anchor {
            assert_eq!(a, 0.0);
        }
        let total = out.loss.to_scalar::<f32>().unwrap() as f64;
        let expect = out.perceptual.unwrap() + 3.0 * out.simple.unwrap_or(0.0);
        assert!((total - expect).abs() < 1e-5, "{m}: {total} vs {expect}");
    }
    // the data term without data noise is a clear error
    let batch = data_batch(&data, &s, &cfg(Method::AcpoData, 1.0, 1.0, 1.0), 4, 1, 0).unwrap();
    let no_eps = ObjectiveBatch { eps: None, ..batch };
    let err = acpo_loss(
        &model,
        &reference,
        &iqa,
        &s,
        &cfg(Method::AcpoData, 1.0, 1.0, 1.0),
        &no_eps,
    )
    .unwrap_err();
    assert!(err.to_string().contains("lambda_d"), "{err}");
}
