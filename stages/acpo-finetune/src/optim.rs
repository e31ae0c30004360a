//! AdamW with serialisable state, and global gradient-norm clipping.
//!
//! Hand-written because candle-nn 0.11's `AdamW` keeps its moment estimates private, so a run
//! could not be resumed exactly from a checkpoint. The update is the same as candle-nn's
//! (checked by a unit test against it).

use crate::{FinetuneError, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// AdamW hyper-parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-5).
    pub lr: f64,
    /// First-moment decay (default 0.9).
    pub beta1: f64,
    /// Second-moment decay (default 0.999).
    pub beta2: f64,
    /// Denominator epsilon (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 0: decay pulls weights to zero, not to the base model,
    /// so fine-tuning leaves it off and relies on the anchor as its trust region).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
}

impl AdamW {
    /// Optimise `vars` (only floating-point ones are kept).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let vars: Vec<_> = vars
            .into_iter()
            .filter(|(_, v)| v.dtype().is_float())
            .collect();
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            cfg,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// Number of updates done so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The variables being optimised.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.vars.iter().map(|(_, v)| v)
    }

    /// One update. Variables without a gradient in `grads` are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let (b1, b2) = (c.beta1, c.beta2);
        let scale_m = 1.0 / (1.0 - b1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - b2.powi(self.step as i32));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&m * scale_m)?;
            let v_hat = (&v * scale_v)?;
            let decayed = (var.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            var.set(&(decayed - (adjusted * c.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moment estimates as named tensors `adam.m.<name>`, `adam.v.<name>`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restore the state written by [`AdamW::state_tensors`] after `step` updates.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    FinetuneError::config("checkpoint", format!("missing optimizer tensor `{key}`"))
                })?;
                if t.dims() != var.dims() {
                    return Err(FinetuneError::config(
                        "checkpoint",
                        format!(
                            "optimizer tensor `{key}` has shape {:?}, variable has {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
                *slot = t.to_dtype(var.dtype())?.to_device(var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scale all gradients of `vars` so that their global L2 norm is at most `max_norm`; returns the
/// norm before clipping. A `max_norm` of 0 or less only measures.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        let scale = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    fn quad_loss(w: &Var, target: &Tensor) -> Tensor {
        (w.as_tensor() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    }

    #[test]
    fn matches_candle_adamw() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &dev).unwrap();
        let target = Tensor::new(&[0.0f32, 1.0, -1.0, 2.0], &dev).unwrap();
        let cfg = AdamWConfig {
            lr: 0.05,
            weight_decay: 0.01,
            ..Default::default()
        };
        let a = Var::from_tensor(&init).unwrap();
        let b = Var::from_tensor(&init).unwrap();
        let mut ours = AdamW::new(vec![("w".into(), a.clone())], cfg.clone()).unwrap();
        let mut theirs = candle_nn::AdamW::new(
            vec![b.clone()],
            candle_nn::ParamsAdamW {
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            },
        )
        .unwrap();
        for _ in 0..20 {
            ours.step(&quad_loss(&a, &target).backward().unwrap())
                .unwrap();
            theirs
                .step(&quad_loss(&b, &target).backward().unwrap())
                .unwrap();
        }
        let d = (a.as_tensor() - b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "difference {d}");
        // and it moved towards the target
        let l = quad_loss(&a, &target).to_scalar::<f32>().unwrap();
        assert!(
            l < quad_loss(&Var::from_tensor(&init).unwrap(), &target)
                .to_scalar::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn state_round_trip_gives_identical_updates() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let target = Tensor::new(&[0.0f32, 1.0, -1.0], &dev).unwrap();
        let cfg = AdamWConfig {
            lr: 0.1,
            ..Default::default()
        };
        let a = Var::from_tensor(&init).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), a.clone())], cfg.clone()).unwrap();
        for _ in 0..3 {
            opt.step(&quad_loss(&a, &target).backward().unwrap())
                .unwrap();
        }
        let b = Var::from_tensor(a.as_tensor()).unwrap();
        let mut opt2 = AdamW::new(vec![("w".into(), b.clone())], cfg).unwrap();
        opt2.load_state(&opt.state_tensors(), opt.step_count())
            .unwrap();
        for _ in 0..3 {
            opt.step(&quad_loss(&a, &target).backward().unwrap())
                .unwrap();
            opt2.step(&quad_loss(&b, &target).backward().unwrap())
                .unwrap();
        }
        let va: Vec<f32> = a.as_tensor().to_vec1().unwrap();
        let vb: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert_eq!(va, vb);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &dev).unwrap()).unwrap();
        // d/dw sum(w^2)/2 = w -> norm 5
        let loss = (a.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let mut grads = loss.backward().unwrap();
        let n = clip_grad_norm(&mut grads, std::slice::from_ref(&a), 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-5);
        let g: Vec<f32> = grads.get(a.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
            "{g:?}"
        );
        let n2 = clip_grad_norm(&mut grads, std::slice::from_ref(&a), 0.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5);
    }
}
