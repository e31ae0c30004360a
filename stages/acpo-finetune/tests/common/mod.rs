//! Tiny models for the tests: a two-layer conv noise predictor with a time embedding, and a
//! frozen, differentiable conv "quality" model. Weights come from seeded draws.
#![allow(dead_code)]

pub mod run_fixture;

use acpo_finetune::draws::{self, Stream};
use acpo_finetune::{EpsModel, Guidance};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use std::collections::HashMap;

pub const T: usize = 100;

pub struct TinyEps {
    c1: Conv2d,
    c2: Conv2d,
    temb: Linear,
}

impl TinyEps {
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            c1: candle_nn::conv2d(3, 8, 3, cfg, vb.pp("c1"))?,
            c2: candle_nn::conv2d(8, 3, 3, cfg, vb.pp("c2"))?,
            temb: candle_nn::linear(1, 8, vb.pp("temb"))?,
        })
    }
}

impl EpsModel for TinyEps {
    fn eps(&self, x: &Tensor, t: &Tensor, _c: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let tf = (t.to_dtype(x.dtype())? / T as f64)?.unsqueeze(1)?;
        let e = self.temb.forward(&tf)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = self.c1.forward(x)?.broadcast_add(&e)?.silu()?;
        self.c2.forward(&h)
    }
}

/// Seeded base weights of [`TinyEps`] (normal, sd 0.3).
pub fn base_weights(dtype: DType, seed: u64) -> HashMap<String, Tensor> {
    base_weights_sd(dtype, seed, 0.3)
}

/// Seeded base weights of [`TinyEps`] with standard deviation `sd`.
pub fn base_weights_sd(dtype: DType, seed: u64, sd: f64) -> HashMap<String, Tensor> {
    let vm = VarMap::new();
    TinyEps::new(VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    let mut rng = draws::rng(seed, Stream::Train, 999);
    names
        .into_iter()
        .map(|(k, dims)| {
            let t = (draws::normal(&mut rng, &dims, &Device::Cpu).unwrap() * sd)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            (k, t)
        })
        .collect()
}

/// A trainable copy of `base`: its `VarMap`, the model, and the named variables.
pub fn trainable(base: &HashMap<String, Tensor>) -> (VarMap, TinyEps, Vec<(String, Var)>) {
    let dtype = base.values().next().unwrap().dtype();
    let vm = VarMap::new();
    let model = TinyEps::new(VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in &vars {
        v.set(&base[k]).unwrap();
    }
    (vm, model, vars)
}

/// A frozen copy of `base` (plain tensors, no variables).
pub fn frozen(base: &HashMap<String, Tensor>) -> TinyEps {
    let dtype = base.values().next().unwrap().dtype();
    TinyEps::new(VarBuilder::from_tensors(base.clone(), dtype, &Device::Cpu)).unwrap()
}

/// Frozen smooth "quality" model: `mean(tanh(conv(img))) + mean(img)`, per image.
pub struct TinyIqa {
    w: Tensor,
}

impl TinyIqa {
    pub fn new(dtype: DType) -> Self {
        let mut rng = draws::rng(42, Stream::Probe, 7);
        let w = draws::normal(&mut rng, &[4, 3, 3, 3], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        Self { w }
    }
}

impl Guidance for TinyIqa {
    fn quality(&self, img: &Tensor) -> candle_core::Result<Tensor> {
        let h = img.conv2d(&self.w, 0, 1, 1, 1)?.tanh()?;
        h.mean((1, 2, 3))? + img.mean((1, 2, 3))?
    }
}

/// Seeded "data" images in [-1, 1], `[n, 3, s, s]`.
pub fn images(n: usize, s: usize, dtype: DType, seed: u64) -> Tensor {
    let mut rng = draws::rng(seed, Stream::Probe, 1);
    (draws::normal(&mut rng, &[n, 3, s, s], &Device::Cpu).unwrap() * 0.4)
        .unwrap()
        .clamp(-1.0, 1.0)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
