//! CNNIQA (Kang et al., CVPR 2014) with the LIVE weights of `lidq92/CNNIQA`, in candle.
//!
//! Preprocessing and network follow `../shared/data/iqa/CNNIQA-LIVE.md` exactly:
//! grayscale, 32x32 non-overlapping patches, per-patch 3x3 local contrast normalisation
//! (symmetric padding repeating the edge pixel, C = 1), 7x7 conv without activation, global
//! max + min pooling (maxima first), fc1/ReLU/fc2/ReLU/fc3, mean over patches. The raw score is on
//! a LIVE-DMOS-like scale where **higher means worse**.
//!
//! Two entry points:
//! * [`Cnniqa::score`] is the differentiable path used for ACPO guidance. It takes float RGB in
//!   [0, 1] and converts to gray with the *continuous* BT.601 luma (Pillow's fixed-point weights,
//!   no rounding), because rounding has no useful gradient. Everything after that is made of
//!   generic candle ops (no fused kernels, see STACK.md), so gradients reach the image.
//! * [`Cnniqa::score_rgb8`] is the conformance path: 8-bit RGB, Pillow's rounded (or legacy
//!   truncated) 8-bit gray, then the same network. It reproduces the reference scores.
//!
//! The LCN's `sigma = sqrt(var)` is computed as `sqrt(var + 1e-10)` so that its gradient stays
//! finite on flat 3x3 windows; the value changes by at most 1e-5 (well below the 1e-3 conformance
//! tolerance). The variance is the centred 3x3 mean of `(x - mu)^2`, which is exact in float32
//! where `E[x^2] - mu^2` would cancel.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{IqaError, Result};
use crate::imageio::{gray_to_tensor, GrayRounding, RgbImage, PILLOW_LUMA};

/// Patch side.
pub const PATCH: usize = 32;
/// Constant C of the local contrast normalisation.
pub const LCN_C: f64 = 1.0;
/// Added under the square root of the LCN variance (finite gradients on flat windows).
pub const LCN_EPS: f64 = 1e-10;

/// Which patch grid to use (`SPEC.md` section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchMode {
    /// The original rule: corners `y < H - 32`, `x < W - 32` (no patch at 32x32).
    Strict,
    /// Every full patch: `y <= H - 32`, `x <= W - 32` (one patch at 32x32, four at 64x64).
    #[default]
    Inclusive,
}

impl PatchMode {
    /// Number of patch rows and columns for an `h x w` image.
    pub fn grid(self, h: usize, w: usize) -> (usize, usize) {
        let n = |len: usize| match self {
            // y = 0, 32, ... while y < len - 32
            PatchMode::Strict => {
                if len <= PATCH {
                    0
                } else {
                    (len - PATCH - 1) / PATCH + 1
                }
            }
            // y = 0, 32, ... while y <= len - 32
            PatchMode::Inclusive => len / PATCH,
        };
        (n(h), n(w))
    }
}

/// The eight CNNIQA tensors (PyTorch layouts).
#[derive(Clone, Debug)]
pub struct CnniqaWeights {
    pub conv1_weight: Tensor,
    pub conv1_bias: Tensor,
    pub fc1_weight: Tensor,
    pub fc1_bias: Tensor,
    pub fc2_weight: Tensor,
    pub fc2_bias: Tensor,
    pub fc3_weight: Tensor,
    pub fc3_bias: Tensor,
}

/// CNNIQA, frozen weights, differentiable with respect to its input.
#[derive(Clone, Debug)]
pub struct Cnniqa {
    w: CnniqaWeights,
    device: Device,
}

const SHAPES: [(&str, &[usize]); 8] = [
    ("conv1.weight", &[50, 1, 7, 7]),
    ("conv1.bias", &[50]),
    ("fc1.weight", &[800, 100]),
    ("fc1.bias", &[800]),
    ("fc2.weight", &[800, 800]),
    ("fc2.bias", &[800]),
    ("fc3.weight", &[1, 800]),
    ("fc3.bias", &[1]),
];

impl Cnniqa {
    /// Loads `CNNIQA-LIVE.safetensors` (8 F32 tensors, names and shapes checked).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| IqaError::model_io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| IqaError::bad_model(path, format!("not a safetensors file: {e}")))?;
        let mut map = HashMap::new();
        for (name, shape) in SHAPES {
            let view = st
                .tensor(name)
                .map_err(|_| IqaError::bad_model(path, format!("tensor `{name}` is missing")))?;
            if view.shape() != shape {
                return Err(IqaError::bad_model(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        view.shape(),
                        shape
                    ),
                ));
            }
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(IqaError::bad_model(
                    path,
                    format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
                ));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            map.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        let mut take = |n: &str| map.remove(n).expect("checked above");
        Ok(Self {
            w: CnniqaWeights {
                conv1_weight: take("conv1.weight"),
                conv1_bias: take("conv1.bias"),
                fc1_weight: take("fc1.weight"),
                fc1_bias: take("fc1.bias"),
                fc2_weight: take("fc2.weight"),
                fc2_bias: take("fc2.bias"),
                fc3_weight: take("fc3.weight"),
                fc3_bias: take("fc3.bias"),
            },
            device: device.clone(),
        })
    }

    /// Loads the weights onto the CPU.
    pub fn load_cpu(path: impl AsRef<Path>) -> Result<Self> {
        Self::load(path, &Device::Cpu)
    }

    /// The same model with its weights cast to `dtype` (F64 for gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let w = &self.w;
        Ok(Self {
            w: CnniqaWeights {
                conv1_weight: c(&w.conv1_weight)?,
                conv1_bias: c(&w.conv1_bias)?,
                fc1_weight: c(&w.fc1_weight)?,
                fc1_bias: c(&w.fc1_bias)?,
                fc2_weight: c(&w.fc2_weight)?,
                fc2_bias: c(&w.fc2_bias)?,
                fc3_weight: c(&w.fc3_weight)?,
                fc3_bias: c(&w.fc3_bias)?,
            },
            device: self.device.clone(),
        })
    }

    pub fn weights(&self) -> &CnniqaWeights {
        &self.w
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Differentiable score of a batch. `images`: `[N, 3, H, W]` float RGB in [0, 1] (gray by
    /// continuous BT.601 luma) or `[N, 1, H, W]` gray in [0, 1]. Returns `[N]` raw scores,
    /// DMOS-like, **higher = worse**. Errors when the grid has no patch (e.g. strict at 32x32).
    pub fn score(&self, images: &Tensor, mode: PatchMode) -> Result<Tensor> {
        let (_, c, _, _) = images.dims4()?;
        let gray = match c {
            1 => images.clone(),
            3 => luma(images)?,
            _ => {
                return Err(IqaError::Input(format!(
                    "CNNIQA takes [N, 3, H, W] RGB or [N, 1, H, W] gray, got {:?}",
                    images.dims()
                )))
            }
        };
        self.score_gray(&gray, mode)
    }

    /// Score of `[N, 1, H, W]` gray images in [0, 1].
    pub fn score_gray(&self, gray: &Tensor, mode: PatchMode) -> Result<Tensor> {
        let (n, c, h, w) = gray.dims4()?;
        if c != 1 {
            return Err(IqaError::Input(format!(
                "score_gray takes [N, 1, H, W], got {:?}",
                gray.dims()
            )));
        }
        let (ny, nx) = mode.grid(h, w);
        if ny == 0 || nx == 0 {
            return Err(IqaError::Input(format!(
                "a {w}x{h} image has no 32x32 patch in {mode:?} mode (strict needs H, W > 32)"
            )));
        }
        let gray = gray.to_dtype(self.w.conv1_weight.dtype())?;
        let patches = extract_patches(&gray, ny, nx)?; // [N*ny*nx, 1, 32, 32]
        let s = self.patch_scores(&patches)?; // [N*ny*nx]
        Ok(s.reshape((n, ny * nx))?.mean(1)?)
    }

    /// Per-patch scores of `[P, 1, 32, 32]` patches in [0, 1] (LCN applied here).
    pub fn patch_scores(&self, patches: &Tensor) -> Result<Tensor> {
        let x = lcn(patches)?;
        let w = &self.w;
        let y = x
            .conv2d(&w.conv1_weight, 0, 1, 1, 1)?
            .broadcast_add(&w.conv1_bias.reshape((1, 50, 1, 1))?)?;
        let y = y.flatten_from(2)?; // [P, 50, 676]
        let feat = Tensor::cat(&[&y.max(D::Minus1)?, &y.min(D::Minus1)?], 1)?; // [P, 100]
        let h = linear(&feat, &w.fc1_weight, &w.fc1_bias)?.relu()?;
        let h = linear(&h, &w.fc2_weight, &w.fc2_bias)?.relu()?;
        let out = linear(&h, &w.fc3_weight, &w.fc3_bias)?; // [P, 1]
        Ok(out.squeeze(1)?)
    }

    /// Conformance path: 8-bit RGB images, Pillow grayscale with `rounding`, scores as f64.
    /// Images may differ in size (each size is batched separately).
    pub fn score_rgb8(
        &self,
        images: &[RgbImage],
        mode: PatchMode,
        rounding: GrayRounding,
    ) -> Result<Vec<f64>> {
        let mut out = vec![0.0; images.len()];
        let mut by_size: Vec<((usize, usize), Vec<usize>)> = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let key = (img.height, img.width);
            match by_size.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(i),
                None => by_size.push((key, vec![i])),
            }
        }
        for ((h, w), idx) in by_size {
            for chunk in idx.chunks(32) {
                let planes: Vec<Vec<u8>> =
                    chunk.iter().map(|&i| images[i].gray_u8(rounding)).collect();
                let t = gray_to_tensor(&planes, h, w, &self.device)?;
                let s = self
                    .score_gray(&t, mode)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                for (&i, v) in chunk.iter().zip(s) {
                    out[i] = v;
                }
            }
        }
        Ok(out)
    }
}

/// Continuous BT.601 luma of `[N, 3, H, W]` -> `[N, 1, H, W]` (Pillow's weights, no rounding).
pub fn luma(rgb: &Tensor) -> Result<Tensor> {
    let wts = Tensor::from_vec(
        PILLOW_LUMA.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        (1, 3, 1, 1),
        rgb.device(),
    )?
    .to_dtype(rgb.dtype())?;
    Ok(rgb.broadcast_mul(&wts)?.sum_keepdim(1)?)
}

/// `[N, 1, H, W]` -> `[N*ny*nx, 1, 32, 32]`, rows outer, columns inner, top-left aligned.
fn extract_patches(gray: &Tensor, ny: usize, nx: usize) -> Result<Tensor> {
    let n = gray.dim(0)?;
    let crop = gray
        .narrow(2, 0, ny * PATCH)?
        .narrow(3, 0, nx * PATCH)?
        .contiguous()?;
    Ok(crop
        .reshape((n, ny, PATCH, nx, PATCH))?
        .permute((0, 1, 3, 2, 4))?
        .contiguous()?
        .reshape((n * ny * nx, 1, PATCH, PATCH))?)
}

/// Pads dims 2 and 3 by one pixel repeating the edge (NumPy `pad(mode='symmetric')` for width 1).
fn pad_edge1(x: &Tensor) -> Result<Tensor> {
    let h = x.dim(2)?;
    let x = Tensor::cat(&[&x.narrow(2, 0, 1)?, x, &x.narrow(2, h - 1, 1)?], 2)?;
    let w = x.dim(3)?;
    Ok(Tensor::cat(
        &[&x.narrow(3, 0, 1)?, &x, &x.narrow(3, w - 1, 1)?],
        3,
    )?)
}

/// Per-patch local contrast normalisation: `(x - mu) / (sigma + C)` over 3x3 windows.
pub fn lcn(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let xp = pad_edge1(x)?;
    let shifts: Vec<Tensor> = (0..3)
        .flat_map(|dy| (0..3).map(move |dx| (dy, dx)))
        .map(|(dy, dx)| Ok(xp.narrow(2, dy, h)?.narrow(3, dx, w)?))
        .collect::<Result<_>>()?;
    let mut sum = shifts[0].clone();
    for s in &shifts[1..] {
        sum = (sum + s)?;
    }
    let mu = (sum / 9.0)?;
    let mut var = shifts[0].broadcast_sub(&mu)?.sqr()?;
    for s in &shifts[1..] {
        var = (var + s.broadcast_sub(&mu)?.sqr()?)?;
    }
    let sigma = ((var / 9.0)? + LCN_EPS)?.sqrt()?;
    Ok(((x - &mu)? / (sigma + LCN_C)?)?)
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_grids() {
        assert_eq!(PatchMode::Strict.grid(384, 512), (11, 15));
        assert_eq!(PatchMode::Inclusive.grid(384, 512), (12, 16));
        assert_eq!(PatchMode::Strict.grid(32, 32), (0, 0));
        assert_eq!(PatchMode::Strict.grid(33, 64), (1, 1));
        assert_eq!(PatchMode::Inclusive.grid(32, 32), (1, 1));
        assert_eq!(PatchMode::Inclusive.grid(64, 64), (2, 2));
        assert_eq!(PatchMode::Inclusive.grid(31, 64), (0, 2));
    }

    #[test]
    fn lcn_matches_direct_formula() -> Result<()> {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..32 * 32)
            .map(|i| ((i * 37 % 101) as f32) / 100.0)
            .collect();
        let x = Tensor::from_vec(vals.clone(), (1, 1, 32, 32), &dev)?;
        let y = lcn(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let at = |r: isize, c: isize| {
            let r = r.clamp(0, 31) as usize;
            let c = c.clamp(0, 31) as usize;
            vals[r * 32 + c] as f64
        };
        for (r, c) in [(0, 0), (5, 31), (31, 31), (12, 7)] {
            let mut m = 0.0;
            let mut s2 = 0.0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let v = at(r + dy, c + dx);
                    m += v / 9.0;
                    s2 += v * v / 9.0;
                }
            }
            let sigma = (s2 - m * m).max(0.0).sqrt();
            let want = (at(r, c) - m) / (sigma + 1.0);
            let got = y[(r * 32 + c) as usize] as f64;
            assert!((want - got).abs() < 1e-5, "({r},{c}): {want} vs {got}");
        }
        Ok(())
    }
}
