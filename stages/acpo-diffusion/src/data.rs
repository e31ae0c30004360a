//! Prepared image datasets (`images` U8 `[N, H, W, 3]`, `labels` I64 `[N]`) held on the host,
//! and batches of them as model inputs in [-1, 1].

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{DiffusionError, Result};

/// An image set in host memory, `[N, H, W, C]` u8, row-major.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Class of each image (`labels`; all 0 when the split has none).
    pub labels: Vec<i64>,
}

impl ImageSet {
    /// Reads `images` from a prepared safetensors split, checking dtype and shape.
    pub fn load(path: &Path) -> Result<Self> {
        use acpo_core::prepared::{read_images, PreparedError};
        let set = read_images(path).map_err(|e| match e {
            PreparedError::Io { path, source } => DiffusionError::io(path, source),
            PreparedError::Format { path, member, msg } => {
                DiffusionError::BadInput { path, member, msg }
            }
        })?;
        Ok(Self {
            labels: set.labels.unwrap_or_else(|| vec![0; set.n]),
            pixels: set.pixels,
            n: set.n,
            h: set.height,
            w: set.width,
            c: set.channels,
        })
    }

    /// Keeps the first `k` images (`0` or `k >= n` keeps all).
    pub fn truncate(&mut self, k: usize) {
        if k > 0 && k < self.n {
            self.n = k;
            self.pixels.truncate(k * self.h * self.w * self.c);
            self.labels.truncate(k);
        }
    }

    /// Images `idx` as `[B, C, H, W]` f32 in [-1, 1]; `flip[i]` mirrors image `i` horizontally.
    pub fn batch(
        &self,
        idx: &[usize],
        flip: &[bool],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (h, w, c) = (self.h, self.w, self.c);
        let per = h * w * c;
        let mut out = vec![0f32; idx.len() * per];
        for (b, &i) in idx.iter().enumerate() {
            let src = &self.pixels[i * per..(i + 1) * per];
            let dst = &mut out[b * per..(b + 1) * per];
            let fl = flip.get(b).copied().unwrap_or(false);
            for y in 0..h {
                for x in 0..w {
                    let sx = if fl { w - 1 - x } else { x };
                    for ch in 0..c {
                        dst[ch * h * w + y * w + x] =
                            src[(y * w + sx) * c + ch] as f32 / 127.5 - 1.0;
                    }
                }
            }
        }
        Tensor::from_vec(out, (idx.len(), c, h, w), device)
    }

    /// All images (in order) as `[N, C, H, W]` in [-1, 1].
    pub fn all(&self, device: &Device) -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (0..self.n).collect();
        self.batch(&idx, &[], device)
    }
}

/// Converts model outputs `[B, C, H, W]` in [-1, 1] to u8 `[B, H, W, C]` (rounded, clamped).
pub fn to_u8_hwc(x: &Tensor) -> candle_core::Result<Vec<u8>> {
    let x = ((x.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    Ok(x.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_and_flip() {
        let set = ImageSet {
            pixels: (0..2 * 2 * 3 * 3).map(|v| (v * 7) as u8).collect(),
            n: 2,
            h: 2,
            w: 3,
            c: 3,
            labels: vec![0, 1],
        };
        let t = set.batch(&[1, 0], &[false, false], &Device::Cpu).unwrap();
        let back = to_u8_hwc(&t).unwrap();
        let per = 2 * 3 * 3;
        assert_eq!(&back[..per], &set.pixels[per..]);
        assert_eq!(&back[per..], &set.pixels[..per]);
        let f = set.batch(&[0], &[true], &Device::Cpu).unwrap();
        let ff = to_u8_hwc(&f).unwrap();
        // pixel (0,0) of the flipped image is pixel (0,2) of the original
        assert_eq!(&ff[..3], &set.pixels[6..9]);
    }
}
