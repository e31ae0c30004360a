//! AdamW with global-norm gradient clipping, and the EMA of weights: the one optimiser of the
//! workspace (base training and fine-tuning both step it).
//!
//! Hand-written rather than `candle_nn::AdamW` because checkpoints must hold the moment
//! estimates and step count, which candle's optimiser does not expose. The update is
//! candle-nn's (a unit test checks it against `candle_nn::AdamW`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};

/// AdamW hyper-parameters (fine-tuning's `optim` params; base training takes the same fields
/// from its `train` params).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-5). [`AdamW::step`] takes the rate of each step, so a caller
    /// with a warm-up or decay passes its own; this is the constant one.
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

/// AdamW state over a fixed, ordered list of named vars.
pub struct AdamW {
    pub vars: Vec<(String, Var)>,
    /// First moments, one per var.
    pub m: Vec<Tensor>,
    /// Second moments, one per var.
    pub v: Vec<Tensor>,
    /// Steps taken so far.
    pub t: u64,
    pub cfg: AdamWConfig,
}

impl AdamW {
    /// Fresh state (zero moments) over the floating-point vars of `vars`.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let vars: Vec<_> = vars
            .into_iter()
            .filter(|(_, v)| v.dtype().is_float())
            .collect();
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            cfg,
        })
    }

    /// Number of updates done so far.
    pub fn step_count(&self) -> usize {
        self.t as usize
    }

    /// Global L2 norm of the gradients (vars without a gradient count as zero), summed in f32.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`, clipping the global gradient norm
    /// ([`Self::grad_norm`]) to `clip` (`0` disables). Returns the norm before clipping.
    /// Variables without a gradient in `grads` are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (beta1, beta2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let upd = ((&m * (1.0 / bc1))? / ((&v * (1.0 / bc2))?.sqrt()? + self.cfg.eps)?)?;
            let theta = var.as_tensor();
            let mut new = (theta - (upd * lr)?)?;
            if self.cfg.weight_decay > 0.0 {
                new = (new - (theta * (lr * self.cfg.weight_decay))?)?;
            }
            var.set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(norm)
    }

    /// The moment estimates as named tensors `<prefix>m.<var>`, `<prefix>v.<var>` (a
    /// checkpoint's members; the step count is the caller's to store).
    pub fn state_tensors(&self, prefix: &str) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{prefix}m.{name}"), self.m[i].clone());
            out.insert(format!("{prefix}v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores the state [`Self::state_tensors`] wrote with the same `prefix`, after `step`
    /// updates. A missing tensor, or one whose shape is not its var's, is an error naming it.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        step: usize,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    DiffusionError::config(
                        "checkpoint",
                        format!("missing optimizer tensor `{key}`"),
                    )
                })?;
                if t.dims() != var.dims() {
                    return Err(DiffusionError::config(
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
        self.t = step as u64;
        Ok(())
    }
}

/// Scales all gradients of `vars` so that their global L2 norm, summed in f64, is at most
/// `max_norm`; returns the norm before clipping (`max_norm <= 0` only measures). Fine-tuning
/// clips with this before [`AdamW::step`] (with `clip` 0); base training clips inside the step
/// with an f32 sum and `+1e-6` in the scale. The two differ in the last bits of the norm and
/// are kept apart so that neither kind of run changes its numbers.
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

/// Exponential moving average of a model's parameters.
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts at a copy of the current values.
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy().map(|t| t.detach()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { decay, shadow })
    }

    /// `shadow = decay * shadow + (1 - decay) * current`.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        for (s, (_, v)) in self.shadow.iter_mut().zip(vars) {
            *s = ((&*s * self.decay)? + (v.as_tensor().detach() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }
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
            ours.step(&quad_loss(&a, &target).backward().unwrap(), cfg.lr, 0.0)
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
            opt.step(&quad_loss(&a, &target).backward().unwrap(), 0.1, 0.0)
                .unwrap();
        }
        let b = Var::from_tensor(a.as_tensor()).unwrap();
        let mut opt2 = AdamW::new(vec![("w".into(), b.clone())], cfg).unwrap();
        opt2.load_state(&opt.state_tensors("adam."), "adam.", opt.step_count())
            .unwrap();
        let e = opt2
            .load_state(&opt.state_tensors("adam."), "adam_", 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing optimizer tensor `adam_m.w`"), "{e}");
        for _ in 0..3 {
            opt.step(&quad_loss(&a, &target).backward().unwrap(), 0.1, 0.0)
                .unwrap();
            opt2.step(&quad_loss(&b, &target).backward().unwrap(), 0.1, 0.0)
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

    /// The update fine-tuning made with its own AdamW before the two were merged (moments,
    /// bias correction, then `theta * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)`),
    /// written out: with weight decay 0 the merged optimiser gives the same bits.
    #[test]
    fn the_merged_step_is_the_old_fine_tuning_step_bit_for_bit() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, -0.25], &dev).unwrap();
        let target = Tensor::new(&[0.0f32, 1.0, -1.0, 2.0, 0.7], &dev).unwrap();
        let (lr, b1, b2, eps) = (1e-4, 0.9, 0.999, 1e-8);
        let a = Var::from_tensor(&init).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), a.clone())],
            AdamWConfig {
                lr,
                ..Default::default()
            },
        )
        .unwrap();
        let w = Var::from_tensor(&init).unwrap();
        let (mut m, mut v) = (init.zeros_like().unwrap(), init.zeros_like().unwrap());
        for step in 1..=5 {
            let mut grads = quad_loss(&a, &target).backward().unwrap();
            clip_grad_norm(&mut grads, std::slice::from_ref(&a), 1.0).unwrap();
            opt.step(&grads, opt.cfg.lr, 0.0).unwrap();

            let mut grads = quad_loss(&w, &target).backward().unwrap();
            clip_grad_norm(&mut grads, std::slice::from_ref(&w), 1.0).unwrap();
            let g = grads.get(w.as_tensor()).unwrap();
            m = ((&m * b1).unwrap() + (g * (1.0 - b1)).unwrap()).unwrap();
            v = ((&v * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let m_hat = (&m * (1.0 / (1.0 - b1.powi(step)))).unwrap();
            let v_hat = (&v * (1.0 / (1.0 - b2.powi(step)))).unwrap();
            let decayed = (w.as_tensor() * (1.0 - lr * 0.0)).unwrap();
            let adjusted = (m_hat / (v_hat.sqrt().unwrap() + eps).unwrap()).unwrap();
            w.set(&(decayed - (adjusted * lr).unwrap()).unwrap())
                .unwrap();
        }
        let got: Vec<f32> = a.as_tensor().to_vec1().unwrap();
        let want: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}
