//! Shared by the integration tests: the tiny UNet they train, sample and differentiate, and a
//! file reader that names the file it fails on.
#![allow(dead_code)]

use std::path::Path;

use acpo_diffusion::UNetConfig;

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
