//! A tiny Stable Diffusion folder with random weights, for tests of every stage that takes
//! SD weights (nothing here is a usable model).
//!
//! [`write_tiny`] builds each network through the same constructors the loader uses (so every
//! weight name and shape is the real layout at a small width), fills every weight with seeded
//! pseudo-random values (norm weights around 1) and saves the diffusers folder layout plus a
//! word-level `tokenizer.json` with CLIP's special tokens.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::text_model as clip;
use candle_transformers::models::stable_diffusion as sd;

use crate::config::{
    Architecture, BlockSpec, ClipSpec, Prediction, SdConfig, SdFiles, SdVersion, UNetSpec, VaeSpec,
};
use crate::error::{Result, SdError};
use crate::unet::SdUNet;

/// The words of the tiny vocabulary (besides CLIP's special tokens and `!`).
pub const WORDS: [&str; 12] = [
    "a", "red", "car", "blue", "sky", "photo", "of", "cat", "dog", "tree", "house", "the",
];

/// The tiny architecture: a two-level UNet (32 and 64 channels, cross-attention on the first level,
/// 1x1-convolution or linear projections), a two-level VAE (16x16 latents) and a
/// one-layer CLIP with a context of 8 tokens; 32 px images (CNNIQA scores 32x32 patches).
pub fn tiny_architecture(linear_projection: bool, prediction: Prediction) -> Architecture {
    Architecture {
        unet: UNetSpec {
            in_channels: 4,
            out_channels: 4,
            blocks: vec![
                BlockSpec {
                    channels: 32,
                    cross_attention: true,
                    heads: 2,
                },
                BlockSpec {
                    channels: 64,
                    cross_attention: false,
                    heads: 2,
                },
            ],
            layers_per_block: 1,
            // candle-transformers' resnets always take 32 groups; the comparison needs the same
            norm_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 16,
            linear_projection,
            gelu_approximate: false,
        },
        vae: VaeSpec {
            block_out_channels: vec![8, 8],
            layers_per_block: 1,
            latent_channels: 4,
            norm_groups: 4,
            scaling_factor: 0.18215,
        },
        text_encoder: ClipSpec {
            vocab_size: WORDS.len() + 4,
            embed_dim: 16,
            intermediate_size: 32,
            max_position_embeddings: 8,
            layers: 1,
            heads: 2,
            pad_with: None,
        },
        image_size: 32,
        prediction,
    }
}

/// Fill every var of `map` with seeded values, so the same seed always writes the same files
/// (candle's initialisers draw from an unseeded generator), at the scale candle-nn initialises
/// them: a var set to a constant (norm weights 1, zero biases) keeps it; a random matrix or
/// kernel is drawn normal with standard deviation `sqrt(2 / fan_in)` (candle-nn's Kaiming
/// default), a random bias uniform in `+-1 / sqrt(fan_in)` of its layer's weight. Then every
/// element moves by `scale * u`, `u` uniform in [-1, 1]. Draws follow the sorted var names.
fn randomise(map: &VarMap, seed: u64, scale: f64) -> candle_core::Result<()> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let data = map.data().lock().expect("var map lock");
    let fan_in = |dims: &[usize]| dims[1..].iter().product::<usize>().max(1) as f64;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let init = var
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let constant = init.windows(2).all(|w| w[0] == w[1]);
        let dims = var.dims().to_vec();
        let bias_bound = name
            .strip_suffix(".bias")
            .and_then(|layer| data.get(&format!("{layer}.weight")))
            .map_or(scale, |w| 1.0 / fan_in(w.dims()).sqrt());
        let mut draw = |v: f64| -> f64 {
            let base = match (constant, dims.len()) {
                (true, _) => v,
                (false, 1) => bias_bound * uniform(),
                (false, _) => {
                    // Box-Muller from two uniforms in (0, 1]
                    let (a, b) = ((uniform() + 1.0) / 2.0, (uniform() + 1.0) / 2.0);
                    let normal = (-2.0 * a.max(f64::MIN_POSITIVE).ln()).sqrt()
                        * (std::f64::consts::TAU * b).cos();
                    normal * (2.0 / fan_in(&dims)).sqrt()
                }
            };
            base + scale * uniform()
        };
        let values: Vec<f64> = init.iter().map(|&v| draw(v)).collect();
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn save(map: &VarMap, path: &Path) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("file in a folder")).map_err(|e| SdError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    map.save(path)?;
    Ok(())
}

/// The tokenizer of the tiny vocabulary: lower-casing, white-space words, `<|startoftext|>`
/// and `<|endoftext|>` around every prompt.
fn tokenizer_json() -> String {
    let mut vocab = vec![
        ("<|startoftext|>".to_string(), 0),
        ("<|endoftext|>".to_string(), 1),
        ("!".to_string(), 2),
        ("[UNK]".to_string(), 3),
    ];
    vocab.extend(
        WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i + 4)),
    );
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .map(|(w, i)| (w, serde_json::json!(i)))
        .collect();
    let special = |t: &str, id: u32| serde_json::json!({"id": t, "ids": [id], "tokens": [t]});
    let tok = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |s: &str| serde_json::json!({"Sequence": {"id": s, "type_id": 0}});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [tok("<|startoftext|>"), seq("A"), tok("<|endoftext|>")],
            "pair": [tok("<|startoftext|>"), seq("A"), seq("B"), tok("<|endoftext|>")],
            "special_tokens": {
                "<|startoftext|>": special("<|startoftext|>", 0),
                "<|endoftext|>": special("<|endoftext|>", 1)
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// Write a tiny random SD folder into `dir` and return the params entry that points at it.
pub fn write_tiny(dir: &Path, arch: &Architecture, seed: u64) -> Result<SdConfig> {
    let dev = Device::Cpu;
    let files = SdFiles::default();
    let unet = VarMap::new();
    SdUNet::new(VarBuilder::from_varmap(&unet, DType::F32, &dev), &arch.unet)?;
    randomise(&unet, seed, 0.2)?;
    save(&unet, &dir.join(&files.unet))?;

    let vae = VarMap::new();
    let v = &arch.vae;
    sd::vae::AutoEncoderKL::new(
        VarBuilder::from_varmap(&vae, DType::F32, &dev),
        3,
        3,
        sd::vae::AutoEncoderKLConfig {
            block_out_channels: v.block_out_channels.clone(),
            layers_per_block: v.layers_per_block,
            latent_channels: v.latent_channels,
            norm_num_groups: v.norm_groups,
            use_quant_conv: true,
            use_post_quant_conv: true,
        },
    )?;
    randomise(&vae, seed + 1, 0.2)?;
    save(&vae, &dir.join(&files.vae))?;

    let text = VarMap::new();
    let c = &arch.text_encoder;
    clip::ClipTextTransformer::new(
        VarBuilder::from_varmap(&text, DType::F32, &dev).pp("text_model"),
        &clip::ClipTextConfig {
            vocab_size: c.vocab_size,
            embed_dim: c.embed_dim,
            activation: clip::Activation::QuickGelu,
            intermediate_size: c.intermediate_size,
            max_position_embeddings: c.max_position_embeddings,
            pad_with: c.pad_with.clone(),
            num_hidden_layers: c.layers,
            num_attention_heads: c.heads,
            projection_dim: c.embed_dim,
        },
    )?;
    randomise(&text, seed + 2, 0.2)?;
    save(&text, &dir.join(&files.text_encoder))?;

    let tok = dir.join(&files.tokenizer);
    std::fs::create_dir_all(tok.parent().expect("file in a folder")).map_err(|e| SdError::Io {
        path: tok.clone(),
        source: e,
    })?;
    std::fs::write(&tok, tokenizer_json()).map_err(|e| SdError::Io {
        path: tok.clone(),
        source: e,
    })?;
    Ok(SdConfig {
        version: SdVersion::Custom,
        dir: dir.to_path_buf(),
        files,
        sha256: Default::default(),
        image_size: None,
        architecture: Some(arch.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed writes the same bytes (the gradient checks on this model used to draw a
    /// new random network every run and failed on some of them).
    #[test]
    fn the_same_seed_writes_the_same_files() {
        let arch = tiny_architecture(false, Prediction::Epsilon);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_tiny(a.path(), &arch, 7).unwrap();
        write_tiny(b.path(), &arch, 7).unwrap();
        let files = SdFiles::default();
        for f in [&files.unet, &files.vae, &files.text_encoder] {
            let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
            assert!(read(a.path()) == read(b.path()), "{} differs", f.display());
        }
    }
}
