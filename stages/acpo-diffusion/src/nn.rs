//! Building blocks of the UNet, written with candle's generic tensor ops only.
//!
//! Why hand-written rather than `candle_nn` layers: candle 0.11's fused kernels
//! (`softmax_last_dim`, `layer_norm`, `rms_norm`) return no gradient, and `upsample_nearest2d`
//! returns a wrong gradient when its input is used elsewhere (see `STACK.md` and the regression
//! tests in `tests/gradcheck.rs`). Every block here is finite-difference checked.

use std::collections::HashMap;

pub use acpo_ops::attention::{attention, attention_generic, softmax_last};
/// Nearest-neighbour 2x upsampling of `[B, C, H, W]`: one op on the CPU (acpo-ops), a broadcast
/// elsewhere. Replaces `Tensor::upsample_nearest2d`, whose gradient in candle 0.11 is wrong when
/// its input also feeds another op (`tests/gradcheck.rs` has the regression test).
pub use acpo_ops::resample::{upsample_nearest2x, upsample_nearest2x_generic};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{DiffusionError, Result};
use crate::rng::SeededRng;

/// How a parameter is initialised when it is created fresh.
#[derive(Debug, Clone, Copy)]
pub enum ParamInit {
    /// All zeros (biases, zero-initialised output layers).
    Zeros,
    /// All ones (norm scales).
    Ones,
    /// Uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` (PyTorch's default for conv/linear).
    FanIn(usize),
}

/// Where a model's parameters come from.
pub trait ParamSource {
    /// The tensor for `name` with `shape`, created or looked up.
    fn get(&mut self, name: &str, shape: &[usize], init: ParamInit) -> Result<Tensor>;
}

/// Creates trainable [`Var`]s in a [`VarMap`], initialised from a seeded stream in creation
/// order (so the same config and seed give the same weights).
pub struct VarInit<'a> {
    varmap: &'a VarMap,
    rng: SeededRng,
    device: Device,
}

impl<'a> VarInit<'a> {
    /// Parameters go into `varmap`; `seed` fixes their initial values.
    pub fn new(varmap: &'a VarMap, seed: u64, device: &Device) -> Self {
        Self {
            varmap,
            rng: SeededRng::new(seed, &[0x1A17]),
            device: device.clone(),
        }
    }
}

impl ParamSource for VarInit<'_> {
    fn get(&mut self, name: &str, shape: &[usize], init: ParamInit) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            ParamInit::Zeros => vec![0.0; n],
            ParamInit::Ones => vec![1.0; n],
            ParamInit::FanIn(fan_in) => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n)
                    .map(|_| (2.0 * self.rng.uniform() - 1.0) * bound)
                    .collect()
            }
        };
        let t = Tensor::from_vec(values, shape, &self.device)?;
        let mut data = self.varmap.data().lock().expect("varmap lock poisoned");
        if data.contains_key(name) {
            return Err(DiffusionError::config(
                "model",
                format!("parameter `{name}` created twice"),
            ));
        }
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }
}

/// Looks parameters up in a map of plain tensors (frozen models, loaded weights).
pub struct TensorSource {
    tensors: HashMap<String, Tensor>,
    origin: std::path::PathBuf,
}

impl TensorSource {
    /// `origin` names where the tensors came from, for error messages.
    pub fn new(tensors: HashMap<String, Tensor>, origin: impl Into<std::path::PathBuf>) -> Self {
        Self {
            tensors,
            origin: origin.into(),
        }
    }
}

impl ParamSource for TensorSource {
    fn get(&mut self, name: &str, shape: &[usize], _init: ParamInit) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| DiffusionError::BadInput {
                path: self.origin.clone(),
                member: name.to_string(),
                msg: "missing".into(),
            })?;
        if t.dims() != shape {
            return Err(DiffusionError::BadInput {
                path: self.origin.clone(),
                member: name.to_string(),
                msg: format!("shape {:?}, expected {shape:?}", t.dims()),
            });
        }
        // F32 and F64 are kept (F64 for gradient checks); other dtypes are widened to F32.
        match t.dtype() {
            DType::F32 | DType::F64 => Ok(t.clone()),
            _ => Ok(t.to_dtype(DType::F32)?),
        }
    }
}

/// 2-D convolution with bias, weights `[out, in, k, k]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// `zero_init` zeroes the weights (DDPM's last conv of each residual branch and output).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &mut dyn ParamSource,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        zero_init: bool,
    ) -> Result<Self> {
        let fan_in = cin * k * k;
        let winit = if zero_init {
            ParamInit::Zeros
        } else {
            ParamInit::FanIn(fan_in)
        };
        let weight = src.get(&format!("{name}.weight"), &[cout, cin, k, k], winit)?;
        let bias = src.get(&format!("{name}.bias"), &[cout], ParamInit::Zeros)?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::conv::conv2d_bias(x, &self.weight, &self.bias, self.padding, self.stride)
    }
}

/// Fully connected layer, weights `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(
        src: &mut dyn ParamSource,
        name: &str,
        din: usize,
        dout: usize,
        zero_init: bool,
    ) -> Result<Self> {
        let init = if zero_init {
            ParamInit::Zeros
        } else {
            ParamInit::FanIn(din)
        };
        let weight = src.get(&format!("{name}.weight"), &[dout, din], init)?;
        let bias = src.get(&format!("{name}.bias"), &[dout], ParamInit::Zeros)?;
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    /// `x`: `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = *dims.last().expect("linear input has no dims");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x
            .reshape((rows, din))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// Group normalisation over `[B, C, H, W]` with a per-channel affine transform.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(
        src: &mut dyn ParamSource,
        name: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: src.get(&format!("{name}.weight"), &[channels], ParamInit::Ones)?,
            bias: src.get(&format!("{name}.bias"), &[channels], ParamInit::Zeros)?,
            groups,
            eps: 1e-5,
        })
    }
}

impl GroupNorm {
    /// `silu(group_norm(x))`, the pre-activation of every residual branch, as one op.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::norm::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    /// One fused op on the CPU (`norm.rs`), candle's generic ops elsewhere.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::norm::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}

/// Sinusoidal embedding of (possibly fractional) timesteps `t: [B]` into `[B, dim]`
/// (`dim` even): `[sin(t f_0..f_{d/2}), cos(t f_0..f_{d/2})]`, `f_i = 10000^(-i/(d/2-1))`
/// as in DDPM's reference code.
pub fn timestep_embedding(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let denom = (half.max(2) - 1) as f64;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / denom).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .reshape(((), 1))?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

/// Optional host-side dropout: masks come from a seeded stream so training is reproducible.
pub fn dropout(x: &Tensor, p: f32, rng: Option<&mut SeededRng>) -> candle_core::Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => {
            let mask = rng.dropout_mask(x.dims(), p, x.device())?;
            x.mul(&mask)
        }
        _ => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_matches_candle_forward() {
        let dev = Device::Cpu;
        let x = SeededRng::new(3, &[]).normal(&[2, 3, 4, 5], &dev).unwrap();
        let a = upsample_nearest2x(&x).unwrap();
        let b = x.upsample_nearest2d(8, 10).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn group_norm_normalises() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let mut src = VarInit::new(&vm, 0, &dev);
        let gn = GroupNorm::new(&mut src, "gn", 8, 4).unwrap();
        let x = ((SeededRng::new(3, &[]).normal(&[2, 8, 4, 4], &dev).unwrap() * 3.0).unwrap()
            + 1.0)
            .unwrap();
        let y = gn.forward(&x).unwrap().reshape((2, 4, 32)).unwrap();
        let m = y.mean_keepdim(2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(m.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn softmax_matches_fused() {
        let dev = Device::Cpu;
        let x = SeededRng::new(5, &[]).normal(&[3, 7], &dev).unwrap();
        let a = softmax_last(&x).unwrap();
        let b = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
