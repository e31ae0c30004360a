//! Sample outputs: a PNG grid and a safetensors image file in the prepared-dataset format.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{DiffusionError, Result};

/// Writes `n` images (u8 `[n, h, w, 3]`) as a grid PNG with `cols` columns and a 2-pixel gap,
/// to a temporary name renamed into place.
pub fn write_grid(
    pixels: &[u8],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    path: &Path,
) -> Result<()> {
    let cols = if n == 0 { 1 } else { cols.clamp(1, n) };
    let rows = n.div_ceil(cols);
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for y in 0..h {
            for x in 0..w {
                let o = ((i * h + y) * w + x) * 3;
                img.put_pixel(
                    (gap + c * (w + gap) + x) as u32,
                    (gap + r * (h + gap) + y) as u32,
                    image::Rgb([pixels[o], pixels[o + 1], pixels[o + 2]]),
                );
            }
        }
    }
    acpo_core::atomic::write_with(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|source| DiffusionError::Image {
                path: tmp.to_path_buf(),
                source,
            })
    })
}

/// Writes images as safetensors with `images` U8 `[n, h, w, 3]`, `labels` I64 (zeros, or
/// the class each image was prompted with) and the per-image `seeds` I64 (atomically).
pub fn write_images(
    pixels: Vec<u8>,
    n: usize,
    h: usize,
    w: usize,
    seeds: &[u64],
    labels: Option<&[i64]>,
    path: &Path,
) -> Result<()> {
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    map.insert(
        "images".to_string(),
        Tensor::from_vec(pixels, (n, h, w, 3), &dev)?,
    );
    let labels = match labels {
        Some(l) => Tensor::from_vec(l.to_vec(), n, &dev)?,
        None => Tensor::zeros(n, candle_core::DType::I64, &dev)?,
    };
    map.insert("labels".to_string(), labels);
    let s: Vec<i64> = seeds.iter().map(|&s| s as i64).collect();
    map.insert("seeds".to_string(), Tensor::from_vec(s, n, &dev)?);
    crate::train::save_tensors_atomic(&map, path)
}
