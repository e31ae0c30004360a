//! The DDPM UNet (Ho et al. 2020), with the improved-DDPM options (multi-head attention,
//! dropout, cosine schedule elsewhere) and optional cross-attention on text embeddings.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;

use crate::config::UNetConfig;
use crate::error::{DiffusionError, Result};
use crate::nn::{
    attention, dropout, timestep_embedding, upsample_nearest2x, Conv2d, GroupNorm, Linear,
    ParamSource, TensorSource, VarInit,
};
use crate::rng::SeededRng;

/// Conditioning of one forward pass: a text-embedding context `[B, L, context_dim]` for
/// cross-attention, or none (unconditional models; the null condition of classifier-free
/// guidance is an all-zeros context of the same shape).
pub type Cond<'a> = Option<&'a Tensor>;

#[derive(Debug, Clone)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    temb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
    dropout: f32,
}

impl ResBlock {
    fn new(
        src: &mut dyn ParamSource,
        name: &str,
        cin: usize,
        cout: usize,
        temb_dim: usize,
        cfg: &UNetConfig,
    ) -> Result<Self> {
        let g = cfg.norm_groups;
        Ok(Self {
            norm1: GroupNorm::new(src, &format!("{name}.norm1"), cin, g)?,
            conv1: Conv2d::new(src, &format!("{name}.conv1"), cin, cout, 3, 1, 1, false)?,
            temb: Linear::new(src, &format!("{name}.temb"), temb_dim, cout, false)?,
            norm2: GroupNorm::new(src, &format!("{name}.norm2"), cout, g)?,
            conv2: Conv2d::new(src, &format!("{name}.conv2"), cout, cout, 3, 1, 1, true)?,
            skip: if cin != cout {
                Some(Conv2d::new(
                    src,
                    &format!("{name}.skip"),
                    cin,
                    cout,
                    1,
                    1,
                    0,
                    false,
                )?)
            } else {
                None
            },
            dropout: cfg.dropout,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        rng: Option<&mut SeededRng>,
    ) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let t = self
            .temb
            .forward(&temb.silu()?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.norm2.forward_silu(&h)?;
        let h = dropout(&h, self.dropout, rng)?;
        let h = self.conv2.forward(&h)?;
        let s = match &self.skip {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        s + h
    }
}

#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
    cross: Option<CrossAttn>,
}

#[derive(Debug, Clone)]
struct CrossAttn {
    norm: GroupNorm,
    q: Linear,
    kv: Linear,
    proj: Linear,
}

impl AttnBlock {
    fn new(src: &mut dyn ParamSource, name: &str, c: usize, cfg: &UNetConfig) -> Result<Self> {
        let g = cfg.norm_groups;
        let cross = match cfg.context_dim {
            Some(dctx) => Some(CrossAttn {
                norm: GroupNorm::new(src, &format!("{name}.xnorm"), c, g)?,
                q: Linear::new(src, &format!("{name}.xq"), c, c, false)?,
                kv: Linear::new(src, &format!("{name}.xkv"), dctx, 2 * c, false)?,
                proj: Linear::new(src, &format!("{name}.xproj"), c, c, true)?,
            }),
            None => None,
        };
        Ok(Self {
            norm: GroupNorm::new(src, &format!("{name}.norm"), c, g)?,
            qkv: Linear::new(src, &format!("{name}.qkv"), c, 3 * c, false)?,
            proj: Linear::new(src, &format!("{name}.proj"), c, c, true)?,
            heads: cfg.num_heads,
            cross,
        })
    }

    /// `[B, C, H, W]` -> tokens `[B, HW, C]`.
    fn tokens(x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
    }

    fn untokens(t: &Tensor, shape: (usize, usize, usize, usize)) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = shape;
        t.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
    }

    fn forward(&self, x: &Tensor, cond: Cond) -> candle_core::Result<Tensor> {
        let shape = x.dims4()?;
        let c = shape.1;
        let tok = Self::tokens(&self.norm.forward(x)?)?;
        let qkv = self.qkv.forward(&tok)?;
        let q = qkv.narrow(2, 0, c)?;
        let k = qkv.narrow(2, c, c)?;
        let v = qkv.narrow(2, 2 * c, c)?;
        let a = self.proj.forward(&attention(&q, &k, &v, self.heads)?)?;
        let mut x = (x + Self::untokens(&a, shape)?)?;
        if let (Some(cr), Some(ctx)) = (&self.cross, cond) {
            let tok = Self::tokens(&cr.norm.forward(&x)?)?;
            let q = cr.q.forward(&tok)?;
            let kv = cr.kv.forward(ctx)?;
            let k = kv.narrow(2, 0, c)?;
            let v = kv.narrow(2, c, c)?;
            let a = cr.proj.forward(&attention(&q, &k, &v, self.heads)?)?;
            x = (x + Self::untokens(&a, shape)?)?;
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Res(ResBlock),
    Attn(AttnBlock),
    Down(Conv2d),
    Up(Conv2d),
}

/// The noise-prediction network `eps_theta(x_t, t, cond)`.
///
/// Its parameters are plain tensors; for a trainable model they are the tensors of
/// [`candle_core::Var`]s in the [`VarMap`] it was built into, so gradients of a loss reach them
/// and an optimiser updating the vars updates the model in place.
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    temb1: Linear,
    temb2: Linear,
    conv_in: Conv2d,
    /// Down path; `true` marks layers whose output is kept for a skip connection.
    down: Vec<(Layer, bool)>,
    mid: Vec<Layer>,
    /// Up path; `true` marks residual blocks that first concatenate a skip connection.
    up: Vec<(Layer, bool)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    params: Vec<(String, Tensor)>,
}

/// Records every parameter a source hands out, in creation order.
struct Recording<'a> {
    inner: &'a mut dyn ParamSource,
    seen: Vec<(String, Tensor)>,
}

impl ParamSource for Recording<'_> {
    fn get(&mut self, name: &str, shape: &[usize], init: crate::nn::ParamInit) -> Result<Tensor> {
        let t = self.inner.get(name, shape, init)?;
        self.seen.push((name.to_string(), t.clone()));
        Ok(t)
    }
}

impl UNet {
    /// Builds the network, taking its parameters from `src`.
    pub fn build(cfg: &UNetConfig, src: &mut dyn ParamSource) -> Result<Self> {
        cfg.validate()?;
        let mut rec = Recording {
            inner: src,
            seen: Vec::new(),
        };
        let src: &mut dyn ParamSource = &mut rec;
        let ch = cfg.channels;
        let temb_dim = 4 * ch;
        let temb1 = Linear::new(src, "temb.0", ch, temb_dim, false)?;
        let temb2 = Linear::new(src, "temb.1", temb_dim, temb_dim, false)?;
        let conv_in = Conv2d::new(src, "conv_in", cfg.in_channels, ch, 3, 1, 1, false)?;

        let mut down = Vec::new();
        let mut skip_ch = vec![ch];
        let mut cur = ch;
        let mut res = cfg.image_size;
        let levels = cfg.channel_mult.len();
        for (i, &m) in cfg.channel_mult.iter().enumerate() {
            let cout = ch * m;
            for j in 0..cfg.num_res_blocks {
                let name = format!("down.{i}.{j}");
                down.push((
                    Layer::Res(ResBlock::new(
                        src,
                        &format!("{name}.res"),
                        cur,
                        cout,
                        temb_dim,
                        cfg,
                    )?),
                    !cfg.attention_resolutions.contains(&res),
                ));
                cur = cout;
                if cfg.attention_resolutions.contains(&res) {
                    down.push((
                        Layer::Attn(AttnBlock::new(src, &format!("{name}.attn"), cur, cfg)?),
                        true,
                    ));
                }
                skip_ch.push(cur);
            }
            if i + 1 < levels {
                down.push((
                    Layer::Down(Conv2d::new(
                        src,
                        &format!("down.{i}.downsample"),
                        cur,
                        cur,
                        3,
                        2,
                        1,
                        false,
                    )?),
                    true,
                ));
                skip_ch.push(cur);
                res /= 2;
            }
        }
        let mid = vec![
            Layer::Res(ResBlock::new(src, "mid.res1", cur, cur, temb_dim, cfg)?),
            Layer::Attn(AttnBlock::new(src, "mid.attn", cur, cfg)?),
            Layer::Res(ResBlock::new(src, "mid.res2", cur, cur, temb_dim, cfg)?),
        ];
        let mut up = Vec::new();
        for (i, &m) in cfg.channel_mult.iter().enumerate().rev() {
            let cout = ch * m;
            for j in 0..=cfg.num_res_blocks {
                let name = format!("up.{i}.{j}");
                let sc = skip_ch.pop().expect("skip channel bookkeeping");
                up.push((
                    Layer::Res(ResBlock::new(
                        src,
                        &format!("{name}.res"),
                        cur + sc,
                        cout,
                        temb_dim,
                        cfg,
                    )?),
                    true,
                ));
                cur = cout;
                if cfg.attention_resolutions.contains(&res) {
                    up.push((
                        Layer::Attn(AttnBlock::new(src, &format!("{name}.attn"), cur, cfg)?),
                        false,
                    ));
                }
            }
            if i > 0 {
                up.push((
                    Layer::Up(Conv2d::new(
                        src,
                        &format!("up.{i}.upsample"),
                        cur,
                        cur,
                        3,
                        1,
                        1,
                        false,
                    )?),
                    false,
                ));
                res *= 2;
            }
        }
        let norm_out = GroupNorm::new(src, "norm_out", cur, cfg.norm_groups)?;
        let conv_out = Conv2d::new(src, "conv_out", cur, cfg.in_channels, 3, 1, 1, true)?;
        let params = rec.seen;
        Ok(Self {
            cfg: cfg.clone(),
            temb1,
            temb2,
            conv_in,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            params,
        })
    }

    /// A trainable model: parameters are created as vars in `varmap`, initialised from `seed`.
    pub fn new_trainable(
        cfg: &UNetConfig,
        varmap: &VarMap,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Self::build(cfg, &mut VarInit::new(varmap, seed, device))
    }

    /// A frozen model from named tensors (e.g. a `model.safetensors` file's contents).
    pub fn from_tensors(cfg: &UNetConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        Self::build(cfg, &mut TensorSource::new(tensors, "<tensors>"))
    }

    /// A frozen model from a safetensors file written by [`UNet::save`].
    pub fn load(cfg: &UNetConfig, path: &Path, device: &Device) -> Result<Self> {
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|e| DiffusionError::BadInput {
                path: path.to_path_buf(),
                member: "*".into(),
                msg: e.to_string(),
            })?;
        Self::build(cfg, &mut TensorSource::new(tensors, path))
    }

    /// A trainable model whose vars (in `varmap`) start from the weights in `path`.
    pub fn load_trainable(
        cfg: &UNetConfig,
        path: &Path,
        varmap: &VarMap,
        device: &Device,
    ) -> Result<Self> {
        let model = Self::new_trainable(cfg, varmap, 0, device)?;
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|e| DiffusionError::BadInput {
                path: path.to_path_buf(),
                member: "*".into(),
                msg: e.to_string(),
            })?;
        model.set_params(&tensors, path)?;
        Ok(model)
    }

    /// Overwrites this model's parameters in place (they must be vars, or the model must not be
    /// shared) from named tensors; every parameter must be present with its shape.
    pub fn set_params(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        let vars = self.vars()?;
        for (name, var) in &vars {
            let t = tensors.get(name).ok_or_else(|| DiffusionError::BadInput {
                path: origin.to_path_buf(),
                member: name.clone(),
                msg: "missing".into(),
            })?;
            if t.dims() != var.dims() {
                return Err(DiffusionError::BadInput {
                    path: origin.to_path_buf(),
                    member: name.clone(),
                    msg: format!("shape {:?}, expected {:?}", t.dims(), var.dims()),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// A deep copy whose parameters are plain (non-var) tensors with their own storage: later
    /// optimiser steps on `self` do not change it, and no gradient flows into it (the frozen
    /// reference model of ACPO fine-tuning).
    pub fn frozen_copy(&self) -> Result<Self> {
        let mut map = HashMap::new();
        for (n, t) in &self.params {
            map.insert(n.clone(), t.copy()?.detach());
        }
        Self::from_tensors(&self.cfg, map)
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Named parameters in creation order.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Named vars (errors when the model is frozen).
    pub fn vars(&self) -> Result<Vec<(String, candle_core::Var)>> {
        self.params
            .iter()
            .map(|(n, t)| {
                if !t.is_variable() {
                    return Err(DiffusionError::config(
                        "model",
                        format!("parameter `{n}` is frozen, not a var"),
                    ));
                }
                // `Var::from_tensor` of a variable tensor returns a handle sharing its storage.
                Ok((n.clone(), candle_core::Var::from_tensor(t)?))
            })
            .collect()
    }

    /// Saves the parameters as safetensors (written to a temporary name, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self.params.iter().cloned().collect();
        crate::train::save_tensors_atomic(&map, path)
    }

    /// Predicts the noise: `x_t: [B, C, H, W]` (in [-1, 1] scale), `t: [B]` timesteps (any
    /// dtype; fractional values allowed), `cond`: text context or `None`. Evaluation mode (no
    /// dropout).
    pub fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Cond) -> candle_core::Result<Tensor> {
        self.forward_train(x_t, t, cond, None)
    }

    /// As [`UNet::forward`], with dropout masks drawn from `rng` when given (training mode).
    pub fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Cond,
        mut rng: Option<&mut SeededRng>,
    ) -> candle_core::Result<Tensor> {
        let temb = timestep_embedding(t, self.cfg.channels)?.to_dtype(x_t.dtype())?;
        let temb = self.temb2.forward(&self.temb1.forward(&temb)?.silu()?)?;
        let mut h = self.conv_in.forward(x_t)?;
        let mut hs = vec![h.clone()];
        for (layer, keep) in &self.down {
            h = self.apply(layer, &h, &temb, cond, rng.as_deref_mut())?;
            if *keep {
                hs.push(h.clone());
            }
        }
        for layer in &self.mid {
            h = self.apply(layer, &h, &temb, cond, rng.as_deref_mut())?;
        }
        for (layer, cat) in &self.up {
            if *cat {
                let s = hs.pop().expect("skip connection bookkeeping");
                h = Tensor::cat(&[&h, &s], 1)?;
            }
            h = self.apply(layer, &h, &temb, cond, rng.as_deref_mut())?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }

    fn apply(
        &self,
        layer: &Layer,
        h: &Tensor,
        temb: &Tensor,
        cond: Cond,
        rng: Option<&mut SeededRng>,
    ) -> candle_core::Result<Tensor> {
        match layer {
            Layer::Res(r) => r.forward(h, temb, rng),
            Layer::Attn(a) => a.forward(h, cond),
            Layer::Down(c) => c.forward(h),
            Layer::Up(c) => c.forward(&upsample_nearest2x(h)?),
        }
    }
}
