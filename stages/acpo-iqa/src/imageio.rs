//! 8-bit RGB images, the grayscale conversions the IQA models were trained with, and
//! conversion to candle tensors.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{IqaError, Result};

/// Pillow's fixed-point BT.601 luma weights (`convert('L')`): `19595/65536`, `38470/65536`,
/// `7471/65536`. The differentiable CNNIQA path uses these same weights without rounding.
pub const PILLOW_LUMA: [f64; 3] = [19595.0 / 65536.0, 38470.0 / 65536.0, 7471.0 / 65536.0];

/// How 8-bit grayscale is rounded (CNNIQA's conformance preprocessing, `CNNIQA-LIVE.md` 2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrayRounding {
    /// Pillow >= 7: `(19595 R + 38470 G + 7471 B + 32768) >> 16` (round to nearest).
    #[default]
    Round,
    /// Pillow < 7 (what existed when the CNNIQA weights were trained): the same without `+ 32768`.
    Truncate,
}

/// An 8-bit RGB image, row-major `[height, width, 3]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps raw `[height, width, 3]` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(IqaError::Input(format!(
                "RGB image {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Decodes an image file (BMP, PNG, JPEG) to 8-bit RGB.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| IqaError::io(path, e))?;
        let img = image::load_from_memory(&bytes).map_err(|e| IqaError::BadImage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_image(img.to_rgb8()))
    }

    pub fn from_image(img: image::RgbImage) -> Self {
        let (w, h) = img.dimensions();
        Self {
            width: w as usize,
            height: h as usize,
            data: img.into_raw(),
        }
    }

    pub fn to_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.width as u32, self.height as u32, self.data.clone())
            .expect("RgbImage invariant: data.len() == w*h*3")
    }

    /// Pillow `convert('L')` with the chosen rounding.
    pub fn gray_u8(&self, rounding: GrayRounding) -> Vec<u8> {
        let add = match rounding {
            GrayRounding::Round => 32768u32,
            GrayRounding::Truncate => 0,
        };
        self.data
            .chunks_exact(3)
            .map(|p| {
                ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + add) >> 16) as u8
            })
            .collect()
    }

    /// Weighted luma of the 8-bit values scaled to [0, 1], in float64, no rounding.
    pub fn luma_f64(&self, weights: [f64; 3]) -> Vec<f64> {
        self.data
            .chunks_exact(3)
            .map(|p| {
                (weights[0] * p[0] as f64 + weights[1] * p[1] as f64 + weights[2] * p[2] as f64)
                    / 255.0
            })
            .collect()
    }

    /// Resizes with the given filter (used by judges whose registry entry asks for a fixed size).
    pub fn resize(&self, width: usize, height: usize, filter: image::imageops::FilterType) -> Self {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let out = image::imageops::resize(&self.to_image(), width as u32, height as u32, filter);
        Self::from_image(out)
    }
}

/// Stacks equally sized images into an `[N, 3, H, W]` F32 tensor with values in [0, 1].
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| IqaError::Input("no images to stack".into()))?;
    let (w, h) = (first.width, first.height);
    let mut buf = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        if img.width != w || img.height != h {
            return Err(IqaError::Input(format!(
                "images differ in size: {}x{} and {}x{}",
                w, h, img.width, img.height
            )));
        }
        for c in 0..3 {
            buf.extend(img.data[c..].iter().step_by(3).map(|&v| v as f32 / 255.0));
        }
    }
    Ok(Tensor::from_vec(buf, (images.len(), 3, h, w), device)?)
}

/// Stacks 8-bit gray planes (all `h x w`) into an `[N, 1, H, W]` F32 tensor in [0, 1].
pub fn gray_to_tensor(planes: &[Vec<u8>], h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let buf: Vec<f32> = planes
        .iter()
        .flat_map(|p| p.iter().map(|&v| v as f32 / 255.0))
        .collect();
    Ok(Tensor::from_vec(buf, (planes.len(), 1, h, w), device)?.to_dtype(DType::F32)?)
}
