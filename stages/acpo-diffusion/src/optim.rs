//! AdamW with global-norm gradient clipping, and the EMA of weights.
//!
//! Hand-written rather than `candle_nn::AdamW` because checkpoints must hold the moment
//! estimates and step count, which candle's optimiser does not expose.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW state over a fixed, ordered list of named vars.
pub struct AdamW {
    pub vars: Vec<(String, Var)>,
    /// First moments, one per var.
    pub m: Vec<Tensor>,
    /// Second moments, one per var.
    pub v: Vec<Tensor>,
    /// Steps taken so far.
    pub t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// Fresh state (zero moments).
    pub fn new(
        vars: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
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
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    /// Global L2 norm of the gradients (vars without a gradient count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`, clipping the global gradient norm to `clip`
    /// (`0` disables). Returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let upd = ((&m * (1.0 / bc1))? / ((&v * (1.0 / bc2))?.sqrt()? + self.eps)?)?;
            let theta = var.as_tensor();
            let mut new = (theta - (upd * lr)?)?;
            if self.weight_decay > 0.0 {
                new = (new - (theta * (lr * self.weight_decay))?)?;
            }
            var.set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(norm)
    }
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
