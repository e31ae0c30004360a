//! AdamW with global-norm gradient clipping, and the EMA of weights: the one optimiser of the
//! workspace (base training and fine-tuning both step it).
//!
//! Hand-written rather than `candle_nn::AdamW` because checkpoints must hold the moment
//! estimates and step count, which candle's optimiser does not expose. The update is
//! candle-nn's (a unit test checks it against `candle_nn::AdamW`). On the CPU in f32 the update
//! and the EMA step each run as one pass per variable on the host, in parallel over the
//! variables, with the same f32 operations as their candle-op definitions (unit tests compare
//! the bits): as candle ops they were about 14 and 3 passes and allocations per variable, on one
//! thread.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
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
    /// Variables without a gradient in `grads` are left alone. The variables are updated in
    /// parallel, each by [`Update::apply`].
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (beta1, beta2) = (self.cfg.beta1, self.cfg.beta2);
        let update = Update {
            scale,
            beta1,
            beta2,
            inv_bc1: 1.0 / (1.0 - beta1.powi(self.t as i32)),
            inv_bc2: 1.0 / (1.0 - beta2.powi(self.t as i32)),
            eps: self.cfg.eps,
            lr,
            lr_wd: (self.cfg.weight_decay > 0.0).then_some(lr * self.cfg.weight_decay),
        };
        let new: Vec<Option<[Tensor; 3]>> = (0..self.vars.len())
            .into_par_iter()
            .map(|i| {
                let theta = self.vars[i].1.as_tensor();
                grads
                    .get(theta)
                    .map(|g| update.apply(theta, g, &self.m[i], &self.v[i]))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        for (i, new) in new.into_iter().enumerate() {
            if let Some([theta, m, v]) = new {
                self.vars[i].1.set(&theta)?;
                self.m[i] = m;
                self.v[i] = v;
            }
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

/// The constants of one [`AdamW::step`]: the clipping scale, the betas, the bias corrections'
/// reciprocals, and the learning rate (times the weight decay, when there is one).
#[derive(Debug, Clone, Copy)]
struct Update {
    scale: f64,
    beta1: f64,
    beta2: f64,
    inv_bc1: f64,
    inv_bc2: f64,
    eps: f64,
    lr: f64,
    lr_wd: Option<f64>,
}

impl Update {
    /// The new `[theta, m, v]` of one variable from its gradient `g`: on the host for
    /// contiguous f32 CPU tensors ([`Update::host`]), else as candle ops ([`Update::ops`]).
    fn apply(
        &self,
        theta: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<[Tensor; 3]> {
        if !f32_on_cpu(&[theta, g, m, v]) {
            return self.ops(theta, g, m, v);
        }
        let (nt, nm, nv) = acpo_ops::on_host([theta, g, m, v], |[theta, g, m, v]| {
            self.host(theta, g, m, v)
        })?;
        let shape = theta.shape();
        Ok([
            Tensor::from_vec(nt, shape, theta.device())?,
            Tensor::from_vec(nm, shape, theta.device())?,
            Tensor::from_vec(nv, shape, theta.device())?,
        ])
    }

    /// The update as candle ops (other devices and dtypes; and the definition [`Update::host`]
    /// is tested against).
    fn ops(
        &self,
        theta: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<[Tensor; 3]> {
        let g = (g * self.scale)?;
        let m = ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let upd = ((&m * self.inv_bc1)? / ((&v * self.inv_bc2)?.sqrt()? + self.eps)?)?;
        let mut new = (theta - (upd * self.lr)?)?;
        if let Some(lr_wd) = self.lr_wd {
            new = (new - (theta * lr_wd)?)?;
        }
        Ok([new, m, v])
    }

    /// [`Update::ops`] element by element, in one pass instead of about 14 (each a sweep over
    /// the variable and an allocation, on one thread): the same f32 operations in the same
    /// order, with each `tensor * s` computed as candle's affine op computes it (`x * s + 0`,
    /// the constant rounded to f32) and `tensor + s` as `x * 1 + s`, so the bits are the same.
    fn host(
        &self,
        theta: &[f32],
        g: &[f32],
        m: &[f32],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let f = |x: f64| x as f32;
        let (scale, b1, c1) = (f(self.scale), f(self.beta1), f(1.0 - self.beta1));
        let (b2, c2) = (f(self.beta2), f(1.0 - self.beta2));
        let (i1, i2, eps, lr) = (f(self.inv_bc1), f(self.inv_bc2), f(self.eps), f(self.lr));
        let n = theta.len();
        let (mut nt, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let outs = nt.iter_mut().zip(nm.iter_mut()).zip(nv.iter_mut());
        let ins = theta.iter().zip(g).zip(m.iter().zip(v));
        for (((ot, om), ov), ((&th, &g), (&m, &v))) in outs.zip(ins) {
            let g = g * scale + 0.0;
            let m = (m * b1 + 0.0) + (g * c1 + 0.0);
            let v = (v * b2 + 0.0) + ((g * g) * c2 + 0.0);
            let den = (v * i2 + 0.0).sqrt() * 1.0 + eps;
            let upd = (m * i1 + 0.0) / den;
            let mut new = th - (upd * lr + 0.0);
            if let Some(lr_wd) = self.lr_wd {
                new -= th * f(lr_wd) + 0.0;
            }
            (*ot, *om, *ov) = (new, m, v);
        }
        (nt, nm, nv)
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

    /// `shadow = decay * shadow + (1 - decay) * current`, the variables in parallel.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let decay = self.decay;
        self.shadow = self
            .shadow
            .par_iter()
            .zip(vars)
            .map(|(s, (_, v))| ema_step(s, &v.as_tensor().detach(), decay))
            .collect::<candle_core::Result<_>>()?;
        Ok(())
    }
}

/// One shadow tensor's EMA step: on the host for f32 CPU tensors, in one pass, with candle's
/// affine ops' arithmetic (`x * s + 0`, the constant rounded to f32), so the bits are those of
/// [`ema_step_ops`], which other devices and dtypes run.
fn ema_step(shadow: &Tensor, current: &Tensor, decay: f64) -> candle_core::Result<Tensor> {
    if !f32_on_cpu(&[shadow, current]) {
        return ema_step_ops(shadow, current, decay);
    }
    let (d, c) = (decay as f32, (1.0 - decay) as f32);
    let new = acpo_ops::on_host([shadow, current], |[s, x]: [&[f32]; 2]| {
        s.iter()
            .zip(x)
            .map(|(&s, &x)| (s * d + 0.0) + (x * c + 0.0))
            .collect::<Vec<f32>>()
    })?;
    Tensor::from_vec(new, shadow.shape(), shadow.device())
}

/// Whether every tensor is f32 on the CPU: what the host versions of [`Update::apply`] and
/// [`ema_step`] need.
fn f32_on_cpu(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// [`ema_step`] as candle ops.
fn ema_step_ops(shadow: &Tensor, current: &Tensor, decay: f64) -> candle_core::Result<Tensor> {
    (shadow * decay)? + (current * (1.0 - decay))?
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

    /// The bits of a rank-1 f32 tensor's elements.
    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The host update gives the candle ops' bits: weight decay on and off, a clipping scale,
    /// an odd size, moments from earlier steps.
    #[test]
    fn the_host_update_is_the_candle_op_update_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SeededRng::new(7, &[]);
        for (wd, scale) in [(0.0, 1.0), (0.01, 0.37)] {
            let mut theta = rng.normal(&[37], &dev).unwrap();
            let (mut m, mut v) = (theta.zeros_like().unwrap(), theta.zeros_like().unwrap());
            for t in 1..=4 {
                let g = (rng.normal(&[37], &dev).unwrap() * 0.1).unwrap();
                let update = Update {
                    scale,
                    beta1: 0.9,
                    beta2: 0.999,
                    inv_bc1: 1.0 / (1.0 - 0.9f64.powi(t)),
                    inv_bc2: 1.0 / (1.0 - 0.999f64.powi(t)),
                    eps: 1e-8,
                    lr: 1e-3,
                    lr_wd: (wd > 0.0).then_some(1e-3 * wd),
                };
                let host = update.apply(&theta, &g, &m, &v).unwrap();
                let ops = update.ops(&theta, &g, &m, &v).unwrap();
                for (what, (h, o)) in ["theta", "m", "v"].iter().zip(host.iter().zip(&ops)) {
                    assert_eq!(bits(h), bits(o), "{what}, wd {wd}, step {t}");
                }
                [theta, m, v] = host;
            }
        }
    }

    #[test]
    fn the_host_ema_step_is_the_candle_op_step_bit_for_bit() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SeededRng::new(8, &[]);
        let mut shadow = rng.normal(&[41], &dev).unwrap();
        for decay in [0.0, 0.9999, 0.5] {
            let current = rng.normal(&[41], &dev).unwrap();
            let host = ema_step(&shadow, &current, decay).unwrap();
            let ops = ema_step_ops(&shadow, &current, decay).unwrap();
            assert_eq!(bits(&host), bits(&ops), "decay {decay}");
            shadow = host;
        }
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
        assert_eq!(bits(a.as_tensor()), bits(w.as_tensor()));
    }
}
