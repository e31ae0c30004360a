//! The params entry that points at local Stable Diffusion weights (`stable_diffusion` under a
//! benchmark's params), with the architecture of each release.
//!
//! ```yaml
//! stable_diffusion:
//!   version: v1-5            # v1-5 | v2-1-base | v2-1 | custom
//!   dir: /models/sd-1-5      # a diffusers-layout folder; `files` are relative to it
//!   sha256:                  # optional pins, checked before any weight is read
//!     unet: 19da7aaa...
//! ```
//!
//! `version: custom` takes the architecture from `architecture` (the tests build a tiny random
//! model this way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SdError};

/// Which release the weights are (sets the architecture, image size and prediction type).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdVersion {
    /// runwayml/stable-diffusion-v1-5 (and 1.x checkpoints of the same shape): 512 px, eps.
    #[serde(rename = "v1-5")]
    V1_5,
    /// stabilityai/stable-diffusion-2-1-base: 512 px, eps.
    #[serde(rename = "v2-1-base")]
    V2_1Base,
    /// stabilityai/stable-diffusion-2-1: 768 px, v-prediction.
    #[serde(rename = "v2-1")]
    V2_1,
    /// The architecture in `architecture`.
    #[serde(rename = "custom")]
    Custom,
}

/// What the UNet's output is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise `eps`.
    Epsilon,
    /// `v = sqrt(ab) eps - sqrt(1 - ab) x0` (SD 2.1 at 768 px); converted to `eps` on output.
    VPrediction,
}

/// The weight files, relative to `dir` (defaults: the diffusers layout).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SdFiles {
    pub unet: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    /// A Hugging Face `tokenizer.json` of CLIP's BPE (diffusers folders ship vocab.json and
    /// merges.txt instead: take `tokenizer.json` from openai/clip-vit-large-patch14).
    pub tokenizer: PathBuf,
}

impl Default for SdFiles {
    fn default() -> Self {
        Self {
            unet: "unet/diffusion_pytorch_model.safetensors".into(),
            vae: "vae/diffusion_pytorch_model.safetensors".into(),
            text_encoder: "text_encoder/model.safetensors".into(),
            tokenizer: "tokenizer/tokenizer.json".into(),
        }
    }
}

/// One UNet resolution level.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub channels: usize,
    /// Whether the level has spatial transformers (cross-attention on the prompt).
    pub cross_attention: bool,
    /// Attention heads (diffusers' `attention_head_dim`, which counts heads for SD).
    pub heads: usize,
}

/// The conditional UNet (diffusers' `UNet2DConditionModel` with SD's block types).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UNetSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub blocks: Vec<BlockSpec>,
    pub layers_per_block: usize,
    pub norm_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// Linear (SD 2.x) rather than 1x1-convolution (SD 1.x) projections around transformers.
    pub linear_projection: bool,
    /// The tanh approximation of GELU in the feed-forward (diffusers uses the exact erf form,
    /// the default; candle-transformers the approximation).
    #[serde(default)]
    pub gelu_approximate: bool,
}

/// The autoencoder (diffusers' `AutoencoderKL`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaeSpec {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_groups: usize,
    /// Latents are the encoder's output times this (0.18215 for SD 1.x/2.x).
    pub scaling_factor: f64,
}

/// The CLIP text transformer of a custom architecture (QuickGELU, as SD 1.x's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClipSpec {
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub intermediate_size: usize,
    /// The context length (77 for SD); prompts are cut or padded to it.
    pub max_position_embeddings: usize,
    pub layers: usize,
    pub heads: usize,
    /// The padding token (default: the end-of-text token).
    #[serde(default)]
    pub pad_with: Option<String>,
}

/// A full architecture (`version: custom`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub unet: UNetSpec,
    pub vae: VaeSpec,
    pub text_encoder: ClipSpec,
    pub image_size: usize,
    pub prediction: Prediction,
}

/// The `stable_diffusion` params entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdConfig {
    pub version: SdVersion,
    /// The folder the weight files are in.
    pub dir: PathBuf,
    #[serde(default)]
    pub files: SdFiles,
    /// Optional SHA-256 pins by file key (`unet`, `vae`, `text_encoder`, `tokenizer`).
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// Image side in pixels (default: the release's; must be a multiple of 8 times the UNet's
    /// total downsampling).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// `version: custom` only.
    #[serde(default)]
    pub architecture: Option<Architecture>,
}

/// The file keys, in the order they are checked.
pub const FILE_KEYS: [&str; 4] = ["unet", "vae", "text_encoder", "tokenizer"];

impl SdConfig {
    /// The architecture of `version` (or `architecture` for `custom`), with `image_size`
    /// applied.
    pub fn architecture(&self) -> Result<Architecture> {
        let mut arch = match (self.version, &self.architecture) {
            (SdVersion::Custom, Some(a)) => a.clone(),
            (SdVersion::Custom, None) => {
                return Err(SdError::config(
                    "stable_diffusion.architecture",
                    "version `custom` needs an architecture (unet, vae, text_encoder, \
                     image_size, prediction)",
                ))
            }
            (_, Some(_)) => {
                return Err(SdError::config(
                    "stable_diffusion.architecture",
                    format!(
                        "only version `custom` takes an architecture; {:?} has its own",
                        self.version
                    ),
                ))
            }
            (v, None) => preset(v),
        };
        if let Some(s) = self.image_size {
            arch.image_size = s;
        }
        arch.validate()?;
        Ok(arch)
    }

    /// The path of file `key` (one of [`FILE_KEYS`]).
    pub fn file(&self, key: &str) -> PathBuf {
        let rel: &Path = match key {
            "unet" => &self.files.unet,
            "vae" => &self.files.vae,
            "text_encoder" => &self.files.text_encoder,
            _ => &self.files.tokenizer,
        };
        self.dir.join(rel)
    }
}

impl Architecture {
    /// The latent side: the image side over the VAE's downsampling.
    pub fn latent_size(&self) -> usize {
        self.image_size / self.vae_factor()
    }

    fn vae_factor(&self) -> usize {
        1 << (self.vae.block_out_channels.len().saturating_sub(1))
    }

    fn validate(&self) -> Result<()> {
        let u = &self.unet;
        let bad = |f: &str, m: String| Err(SdError::config(format!("stable_diffusion.{f}"), m));
        if u.blocks.is_empty() || self.vae.block_out_channels.is_empty() {
            return bad(
                "architecture",
                "the UNet and the VAE need at least one block".into(),
            );
        }
        for (i, b) in u.blocks.iter().enumerate() {
            if b.heads == 0 || b.channels % b.heads != 0 || b.channels % u.norm_groups != 0 {
                return bad(
                    &format!("architecture.unet.blocks[{i}]"),
                    format!(
                        "{} channels must divide by its {} heads and by norm_groups {}",
                        b.channels, b.heads, u.norm_groups
                    ),
                );
            }
        }
        if u.out_channels != u.in_channels || u.in_channels != self.vae.latent_channels {
            return bad(
                "architecture",
                format!(
                    "the UNet maps {} to {} channels, the VAE's latents have {}",
                    u.in_channels, u.out_channels, self.vae.latent_channels
                ),
            );
        }
        let unet_factor = 1usize << (u.blocks.len() - 1);
        let step = self.vae_factor() * unet_factor;
        if self.image_size == 0 || !self.image_size.is_multiple_of(step) {
            return bad(
                "image_size",
                format!("{} is not a positive multiple of {step}", self.image_size),
            );
        }
        Ok(())
    }
}

/// The architectures of the releases (from their diffusers config.json files).
fn preset(v: SdVersion) -> Architecture {
    let block = |channels, cross_attention, heads| BlockSpec {
        channels,
        cross_attention,
        heads,
    };
    let (heads, context, linear, clip_width, clip_layers, clip_heads) = match v {
        SdVersion::V1_5 => ([8, 8, 8, 8], 768, false, 768, 12, 12),
        _ => ([5, 10, 20, 20], 1024, true, 1024, 23, 16),
    };
    let (image_size, prediction) = match v {
        SdVersion::V2_1 => (768, Prediction::VPrediction),
        _ => (512, Prediction::Epsilon),
    };
    Architecture {
        unet: UNetSpec {
            in_channels: 4,
            out_channels: 4,
            blocks: vec![
                block(320, true, heads[0]),
                block(640, true, heads[1]),
                block(1280, true, heads[2]),
                block(1280, false, heads[3]),
            ],
            layers_per_block: 2,
            norm_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: context,
            linear_projection: linear,
            gelu_approximate: false,
        },
        vae: VaeSpec {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_groups: 32,
            scaling_factor: 0.18215,
        },
        text_encoder: ClipSpec {
            vocab_size: 49408,
            embed_dim: clip_width,
            intermediate_size: clip_width * 4,
            max_position_embeddings: 77,
            layers: clip_layers,
            heads: clip_heads,
            pad_with: (v != SdVersion::V1_5).then(|| "!".to_string()),
        },
        image_size,
        prediction,
    }
}

/// SD's noise schedule as `alpha_bar_t`: acpo-diffusion's `scaled_linear` betas from 0.00085
/// to 0.012 over 1000 steps.
pub fn alphas_cumprod() -> Vec<f64> {
    acpo_diffusion::NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).alphas_cumprod
}
