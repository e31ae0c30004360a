//! SD's conditional UNet, written so that every op has a gradient.
//!
//! candle-transformers' `UNet2DConditionModel` computes the same function, but its transformer
//! blocks use candle-nn's fused `LayerNorm` and (unsliced) `softmax_last_dim`, which are built
//! with `apply_op*_no_bwd`: backpropagation stops there silently (`../shared/STACK.md`), so
//! fine-tuning through it would train with wrong gradients. This module reads the same
//! diffusers weight names and uses only differentiable ops (candle-nn's `Linear`, `Conv2d` and
//! `GroupNorm` are plain tensor ops; layer norm and softmax are written out). The tests check
//! its output against candle-transformers' on one set of weights and its gradient against
//! finite differences.
//!
//! Unlike candle-transformers' `forward`, the timestep is one value per batch item.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

use crate::config::UNetSpec;

/// The noise-prediction network `eps(x_t, t, context)` in latent space.
pub struct SdUNet {
    conv_in: Conv2d,
    time_embedding: (Linear, Linear),
    time_channels: usize,
    down: Vec<DownBlock>,
    mid: (Resnet, Transformer, Resnet),
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

fn conv(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, k, cfg, vb)
}

/// Layer norm over the last dimension with weight and bias, in plain ops.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// ResnetBlock2D: two GroupNorm-SiLU-conv stages, the time embedding added between them.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, s: &UNetSpec, c_in: usize, c_out: usize, t: usize) -> Result<Self> {
        let (g, eps) = (s.norm_groups, s.norm_eps);
        Ok(Self {
            norm1: candle_nn::group_norm(g, c_in, eps, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), c_in, c_out, 3, 1)?,
            time_emb_proj: candle_nn::linear(t, c_out, vb.pp("time_emb_proj"))?,
            norm2: candle_nn::group_norm(g, c_out, eps, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), c_out, c_out, 3, 1)?,
            shortcut: match c_in == c_out {
                true => None,
                false => Some(conv(vb.pp("conv_shortcut"), c_in, c_out, 1, 1)?),
            },
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(c) => c.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Multi-head attention of `x` over `context` (itself when `None`).
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.split(&self.to_q.forward(x)?)?;
        let k = self.split(&self.to_k.forward(ctx)?)?;
        let v = self.split(&self.to_v.forward(ctx)?)?;
        let scale = 1.0 / ((q.dim(D::Minus1)? as f64).sqrt());
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        // the generic softmax: candle-nn's fused `softmax_last_dim` has no gradient
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let (b, h, n, d) = q.dims4()?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h * d))?;
        self.to_out.forward(&out)
    }
}

/// BasicTransformerBlock: self-attention, cross-attention on the prompt, GEGLU feed-forward,
/// each pre-normed and residual.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    gelu_approximate: bool,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, s: &UNetSpec, dim: usize, heads: usize) -> Result<Self> {
        let ff = vb.pp("ff").pp("net");
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim)?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim)?,
            attn2: Attention::new(vb.pp("attn2"), dim, s.cross_attention_dim, heads)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim)?,
            ff_in: candle_nn::linear(dim, dim * 8, ff.pp("0").pp("proj"))?,
            ff_out: candle_nn::linear(dim * 4, dim, ff.pp("2"))?,
            gelu_approximate: s.gelu_approximate,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        let hg = self
            .ff_in
            .forward(&self.norm3.forward(&x)?)?
            .chunk(2, D::Minus1)?;
        let gate = match self.gelu_approximate {
            true => hg[1].gelu()?,
            false => hg[1].gelu_erf()?,
        };
        self.ff_out.forward(&(&hg[0] * gate)?)? + x
    }
}

/// Linear (SD 2.x) or 1x1-convolution (SD 1.x) projection into and out of a transformer.
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// Transformer2DModel: GroupNorm, projection to tokens, transformer blocks, projection back,
/// residual.
struct Transformer {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer {
    fn new(vb: VarBuilder, s: &UNetSpec, c: usize, heads: usize) -> Result<Self> {
        let proj = |name: &str| -> Result<Proj> {
            Ok(match s.linear_projection {
                true => Proj::Linear(candle_nn::linear(c, c, vb.pp(name))?),
                false => Proj::Conv(conv(vb.pp(name), c, c, 1, 1)?),
            })
        };
        Ok(Self {
            norm: candle_nn::group_norm(s.norm_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks: vec![TransformerBlock::new(
                vb.pp("transformer_blocks").pp("0"),
                s,
                c,
                heads,
            )?],
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let to_map = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let n = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Proj::Conv(p) => to_tokens(&p.forward(&n)?)?,
            Proj::Linear(p) => p.forward(&to_tokens(&n)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&to_map(&t)?)?,
            Proj::Linear(p) => to_map(&p.forward(&t)?)?,
        };
        out + x
    }
}

/// One down level: resnets (each followed by a transformer on cross-attention levels), then a
/// stride-2 convolution except on the last level. Every intermediate output is a skip.
struct DownBlock {
    layers: Vec<(Resnet, Option<Transformer>)>,
    downsample: Option<Conv2d>,
}

/// One up level: resnets on the concatenation with a skip (each followed by a transformer on
/// cross-attention levels), then nearest upsampling and a convolution except on the last.
struct UpBlock {
    layers: Vec<(Resnet, Option<Transformer>)>,
    upsample: Option<Conv2d>,
}

fn layer(
    vb: &VarBuilder,
    s: &UNetSpec,
    i: usize,
    (c_in, c_out, t): (usize, usize, usize),
    heads: Option<usize>,
) -> Result<(Resnet, Option<Transformer>)> {
    let resnet = Resnet::new(vb.pp("resnets").pp(i), s, c_in, c_out, t)?;
    let attn = match heads {
        Some(h) => Some(Transformer::new(vb.pp("attentions").pp(i), s, c_out, h)?),
        None => None,
    };
    Ok((resnet, attn))
}

impl SdUNet {
    /// Build from `vb` (diffusers names: `conv_in`, `time_embedding`, `down_blocks`,
    /// `mid_block`, `up_blocks`, `conv_norm_out`, `conv_out`).
    pub fn new(vb: VarBuilder, s: &UNetSpec) -> Result<Self> {
        let n = s.blocks.len();
        let c0 = s.blocks[0].channels;
        let t = 4 * c0;
        let heads = |i: usize| s.blocks[i].cross_attention.then_some(s.blocks[i].heads);
        let mut down = vec![];
        let mut c_prev = c0;
        for (i, b) in s.blocks.iter().enumerate() {
            let vbd = vb.pp("down_blocks").pp(i);
            let layers = (0..s.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { c_prev } else { b.channels };
                    layer(&vbd, s, j, (c_in, b.channels, t), heads(i))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = match i + 1 < n {
                true => Some(conv(
                    vbd.pp("downsamplers").pp("0").pp("conv"),
                    b.channels,
                    b.channels,
                    3,
                    2,
                )?),
                false => None,
            };
            down.push(DownBlock { layers, downsample });
            c_prev = b.channels;
        }
        let last = &s.blocks[n - 1];
        let vbm = vb.pp("mid_block");
        let cl = last.channels;
        let mid = (
            Resnet::new(vbm.pp("resnets").pp("0"), s, cl, cl, t)?,
            Transformer::new(vbm.pp("attentions").pp("0"), s, cl, last.heads)?,
            Resnet::new(vbm.pp("resnets").pp("1"), s, cl, cl, t)?,
        );
        let mut up = vec![];
        let mut c_prev = cl;
        for i in 0..n {
            let level = n - 1 - i;
            let c_out = s.blocks[level].channels;
            // the skip of the level's first layer comes from the level below (or conv_in)
            let c_skip_last = s.blocks[level.saturating_sub(1)].channels;
            let vbu = vb.pp("up_blocks").pp(i);
            let layers = (0..=s.layers_per_block)
                .map(|j| {
                    let skip = if j == s.layers_per_block {
                        c_skip_last
                    } else {
                        c_out
                    };
                    let c_in = if j == 0 { c_prev } else { c_out };
                    layer(&vbu, s, j, (c_in + skip, c_out, t), heads(level))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = match i + 1 < n {
                true => Some(conv(
                    vbu.pp("upsamplers").pp("0").pp("conv"),
                    c_out,
                    c_out,
                    3,
                    1,
                )?),
                false => None,
            };
            up.push(UpBlock { layers, upsample });
            c_prev = c_out;
        }
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), s.in_channels, c0, 3, 1)?,
            time_embedding: (
                candle_nn::linear(c0, t, vb.pp("time_embedding").pp("linear_1"))?,
                candle_nn::linear(t, t, vb.pp("time_embedding").pp("linear_2"))?,
            ),
            time_channels: c0,
            down,
            mid,
            up,
            norm_out: candle_nn::group_norm(s.norm_groups, c0, s.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), c0, s.out_channels, 3, 1)?,
        })
    }

    /// Sinusoidal timestep features `[cos, sin]` of `t` (`[N]`), as diffusers' `Timesteps`
    /// with `flip_sin_to_cos` and no frequency shift.
    fn time_features(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let half = self.time_channels / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(dtype)?;
        let args = t.to_dtype(dtype)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
        Tensor::cat(&[args.cos()?, args.sin()?], 1)
    }

    /// Predict the model's output for latents `x` (`[N, C, h, w]`) at timesteps `t` (`[N]`)
    /// with prompt token states `context` (`[N, L, D]`).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (l1, l2) = &self.time_embedding;
        let temb = l2.forward(&l1.forward(&self.time_features(t, x.dtype())?)?.silu()?)?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (resnet, attn) in &block.layers {
                h = resnet.forward(&h, &temb)?;
                if let Some(a) = attn {
                    h = a.forward(&h, context)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &block.downsample {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }
        let (r1, a, r2) = &self.mid;
        h = r2.forward(&a.forward(&r1.forward(&h, &temb)?, context)?, &temb)?;
        for block in &self.up {
            for (resnet, attn) in &block.layers {
                let skip = skips.pop().expect("one skip per up layer");
                h = resnet.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb)?;
                if let Some(a) = attn {
                    h = a.forward(&h, context)?;
                }
            }
            if let Some(u) = &block.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                // copied first: upsample_nearest2d's gradient is wrong when its input also
                // feeds another op (../shared/STACK.md)
                h = u.forward(&h.copy()?.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}
