//! Shared by the integration tests: the tiny UNet they train, sample and differentiate, the
//! prepared split they train it on, and a file reader that names the file it fails on.
#![allow(dead_code)]

use std::path::Path;

use std::collections::HashMap;

use acpo_diffusion::UNetConfig;
use candle_core::{Device, Tensor};

/// An 8x8 RGB UNet of width 8 (mults 1, 2; attention at 4x4; 2 heads), with cross-attention
/// on `context_dim`-wide token states when given.
pub fn tiny_unet(context_dim: Option<usize>) -> UNetConfig {
    UNetConfig {
        image_size: 8,
        in_channels: 3,
        channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![4],
        num_heads: 2,
        dropout: 0.0,
        norm_groups: 4,
        context_dim,
    }
}

pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Writes a prepared split of `labels.len()` 8x8 RGB images (`pixels` `[N, 8, 8, 3]` u8) as the
/// prepare stages do: `images` U8 and `labels` I64.
pub fn save_split(path: &Path, pixels: Vec<u8>, labels: Vec<i64>) {
    let n = labels.len();
    let m = HashMap::from([
        (
            "images".to_string(),
            Tensor::from_vec(pixels, (n, 8, 8, 3), &Device::Cpu).unwrap(),
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels, n, &Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&m, path).unwrap();
}
