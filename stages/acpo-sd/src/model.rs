//! Loading a Stable Diffusion folder: the pinned files, the trainable or frozen UNet, the CLIP
//! prompt encoder and the VAE decoder.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model as clip;
use candle_transformers::models::stable_diffusion as sd;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::config::{alphas_cumprod, Architecture, Prediction, SdConfig, SdVersion, FILE_KEYS};
use crate::error::{Result, SdError};
use crate::unet::SdUNet;

/// A checked Stable Diffusion folder: its config, architecture and noise schedule.
#[derive(Debug, Clone)]
pub struct SdWeights {
    pub config: SdConfig,
    pub arch: Architecture,
    /// `alpha_bar_t`, `t = 0 .. 999` (SD's scaled-linear schedule).
    pub alphas_cumprod: Vec<f64>,
}

impl SdWeights {
    /// Check `config`: the architecture, then every file present and, where `sha256` pins
    /// one, with that digest. Reads no weights.
    pub fn open(config: &SdConfig) -> Result<Self> {
        Ok(Self::check(config, false)?.0)
    }

    /// [`Self::open`], hashing every file (pinned or not) once: the weights and each file's
    /// SHA-256 by key (`link-sd`).
    pub fn open_hashed(config: &SdConfig) -> Result<(Self, BTreeMap<String, String>)> {
        Self::check(config, true)
    }

    fn check(config: &SdConfig, hash_all: bool) -> Result<(Self, BTreeMap<String, String>)> {
        let arch = config.architecture()?;
        for key in config.sha256.keys() {
            if !FILE_KEYS.contains(&key.as_str()) {
                return Err(SdError::config(
                    format!("stable_diffusion.sha256.{key}"),
                    format!("not a file key (one of {})", FILE_KEYS.join(", ")),
                ));
            }
        }
        let mut digests = BTreeMap::new();
        for key in FILE_KEYS {
            let path = config.file(key);
            let pinned = config.sha256.get(key);
            if !path.is_file() {
                return Err(SdError::Missing {
                    path,
                    key: format!("stable_diffusion.files.{key}"),
                    what: format!("the {key} of Stable Diffusion {:?}", config.version),
                    expected: pinned.map(|d| format!(", SHA-256 {d}")).unwrap_or_default(),
                });
            }
            if pinned.is_none() && !hash_all {
                continue;
            }
            let got = acpo_text::files::sha256_file(&path).map_err(|e| SdError::bad(&path, e))?;
            if let Some(expected) = pinned.filter(|e| !got.eq_ignore_ascii_case(e)) {
                return Err(SdError::Checksum {
                    path,
                    key: format!("stable_diffusion.sha256.{key}"),
                    expected: expected.clone(),
                    got,
                });
            }
            digests.insert(key.to_string(), got);
        }
        let weights = Self {
            config: config.clone(),
            arch,
            alphas_cumprod: alphas_cumprod(),
        };
        Ok((weights, digests))
    }

    fn tensors(&self, key: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
        tensors_at(&self.config.file(key), device)
    }

    fn build_unet(&self, map: HashMap<String, Tensor>, device: &Device) -> Result<SdUNet> {
        self.build_unet_from(map, &self.config.file("unet"), device)
    }

    /// A UNet of this architecture from another weight file (a fine-tuned one), frozen.
    pub fn unet_from_file(&self, path: &Path, device: &Device) -> Result<Denoiser> {
        let unet = self.build_unet_from(tensors_at(path, device)?, path, device)?;
        Ok(Denoiser::new(unet, self))
    }

    fn build_unet_from(
        &self,
        map: HashMap<String, Tensor>,
        origin: &Path,
        device: &Device,
    ) -> Result<SdUNet> {
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        SdUNet::new(vb, &self.arch.unet).map_err(|e| {
            SdError::bad(
                origin,
                format!("does not fit the {:?} UNet: {e}", self.config.version),
            )
        })
    }

    /// The frozen UNet (the anchor and the base's samples).
    pub fn unet(&self, device: &Device) -> Result<Denoiser> {
        let unet = self.build_unet(self.tensors("unet", device)?, device)?;
        Ok(Denoiser::new(unet, self))
    }

    /// The UNet with every weight a [`Var`] (the tuned copy), and those vars by name.
    pub fn unet_trainable(&self, device: &Device) -> Result<(Denoiser, Vec<(String, Var)>)> {
        let mut vars: Vec<(String, Var)> = self
            .tensors("unet", device)?
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
            .collect::<Result<_>>()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let map = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let unet = self.build_unet(map, device)?;
        Ok((Denoiser::new(unet, self), vars))
    }

    /// The prompt encoder.
    pub fn text_encoder(&self, device: &Device) -> Result<TextEncoder> {
        TextEncoder::load(self, device)
    }

    /// The VAE decoder.
    pub fn vae(&self, device: &Device) -> Result<Vae> {
        let path = self.config.file("vae");
        let v = &self.arch.vae;
        let cfg = sd::vae::AutoEncoderKLConfig {
            block_out_channels: v.block_out_channels.clone(),
            layers_per_block: v.layers_per_block,
            latent_channels: v.latent_channels,
            norm_num_groups: v.norm_groups,
            use_quant_conv: true,
            use_post_quant_conv: true,
        };
        let vb = VarBuilder::from_tensors(self.tensors("vae", device)?, DType::F32, device);
        let model = sd::vae::AutoEncoderKL::new(vb, 3, 3, cfg)
            .map_err(|e| SdError::bad(&path, format!("does not fit the VAE: {e}")))?;
        Ok(Vae {
            model,
            scaling_factor: v.scaling_factor,
        })
    }
}

/// Every tensor of a safetensors file, as F32.
fn tensors_at(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device)
        .map_err(|e| SdError::bad(path, format!("not a safetensors file: {e}")))?;
    map.into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect()
}

/// The UNet as a noise predictor: v-prediction outputs are converted to `eps`.
pub struct Denoiser {
    unet: SdUNet,
    prediction: Prediction,
    /// `(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))` per timestep (v-prediction only).
    coefs: Vec<(f32, f32)>,
}

impl Denoiser {
    fn new(unet: SdUNet, w: &SdWeights) -> Self {
        let coefs = w
            .alphas_cumprod
            .iter()
            .map(|ab| (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32))
            .collect();
        Self {
            unet,
            prediction: w.arch.prediction,
            coefs,
        }
    }

    /// `eps(x_t, t, context)`: `x_t` latents `[N, 4, h, w]`, `t` integer timesteps `[N]`,
    /// `context` CLIP token states `[N, 77, D]`.
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.unet.forward(x_t, t, context)?;
        match self.prediction {
            Prediction::Epsilon => Ok(out),
            Prediction::VPrediction => {
                // eps = sqrt(ab) v + sqrt(1 - ab) x_t
                let idx: Vec<i64> = t.to_dtype(DType::I64)?.to_vec1()?;
                let (a, s): (Vec<f32>, Vec<f32>) = idx
                    .iter()
                    .map(|&i| self.coefs[i.clamp(0, 999) as usize])
                    .unzip();
                let n = a.len();
                let a = Tensor::from_vec(a, (n, 1, 1, 1), x_t.device())?;
                let s = Tensor::from_vec(s, (n, 1, 1, 1), x_t.device())?;
                out.broadcast_mul(&a)? + x_t.broadcast_mul(&s)?
            }
        }
    }

    /// The underlying network (its raw output is the release's prediction type).
    pub fn unet(&self) -> &SdUNet {
        &self.unet
    }
}

/// The VAE: latents to images.
pub struct Vae {
    model: sd::vae::AutoEncoderKL,
    scaling_factor: f64,
}

impl Vae {
    /// Decode SD latents `[N, 4, h, w]` to images `[N, 3, 8h, 8w]` in `[-1, 1]` (not clamped,
    /// so that gradients pass everywhere).
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        self.model.decode(&(latents / self.scaling_factor)?)
    }
}

enum Clip {
    Release(sd::clip::ClipTextTransformer),
    Custom(clip::ClipTextTransformer),
}

/// CLIP's tokenizer and text transformer: prompts to the UNet's context `[N, L, D]`.
pub struct TextEncoder {
    tokenizer: tokenizers::Tokenizer,
    clip: Clip,
    max_len: usize,
    pad_id: u32,
    eos_id: u32,
}

/// Encoded prompts.
pub struct Encoded {
    /// `[N, L, D]` token states after the final layer norm.
    pub states: Tensor,
    /// Per prompt: whether it was longer than the context and cut.
    pub truncated: Vec<bool>,
}

impl TextEncoder {
    fn load(w: &SdWeights, device: &Device) -> Result<Self> {
        let tok_path = w.config.file("tokenizer");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| SdError::bad(&tok_path, format!("not a tokenizer.json: {e}")))?;
        let spec = &w.arch.text_encoder;
        let id = |tok: &str| {
            tokenizer.token_to_id(tok).ok_or_else(|| {
                SdError::bad(&tok_path, format!("has no token `{tok}` in its vocabulary"))
            })
        };
        let eos_id = id("<|endoftext|>")?;
        let pad_id = match &spec.pad_with {
            Some(p) => id(p)?,
            None => eos_id,
        };
        let path = w.config.file("text_encoder");
        let vb = VarBuilder::from_tensors(w.tensors("text_encoder", device)?, DType::F32, device);
        let fit = |e: candle_core::Error| SdError::bad(&path, format!("does not fit CLIP: {e}"));
        let clip = match w.config.version {
            SdVersion::Custom => Clip::Custom(
                clip::ClipTextTransformer::new(
                    vb.pp("text_model"),
                    &clip::ClipTextConfig {
                        vocab_size: spec.vocab_size,
                        embed_dim: spec.embed_dim,
                        activation: clip::Activation::QuickGelu,
                        intermediate_size: spec.intermediate_size,
                        max_position_embeddings: spec.max_position_embeddings,
                        pad_with: spec.pad_with.clone(),
                        num_hidden_layers: spec.layers,
                        num_attention_heads: spec.heads,
                        projection_dim: spec.embed_dim,
                    },
                )
                .map_err(fit)?,
            ),
            SdVersion::V1_5 => Clip::Release(
                sd::clip::ClipTextTransformer::new(vb, &sd::clip::Config::v1_5()).map_err(fit)?,
            ),
            _ => Clip::Release(
                sd::clip::ClipTextTransformer::new(vb, &sd::clip::Config::v2_1()).map_err(fit)?,
            ),
        };
        Ok(Self {
            tokenizer,
            clip,
            max_len: spec.max_position_embeddings,
            pad_id,
            eos_id,
        })
    }

    /// The context length `L` every prompt is cut or padded to.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of `prompt`, cut to the context (ending in end-of-text) or padded to it.
    pub fn ids(&self, prompt: &str) -> Result<(Vec<u32>, bool)> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| SdError::config("prompt", format!("tokenizing {prompt:?}: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > self.max_len;
        if truncated {
            ids.truncate(self.max_len);
            ids[self.max_len - 1] = self.eos_id;
        }
        ids.resize(self.max_len, self.pad_id);
        Ok((ids, truncated))
    }

    /// Encode `prompts` (the empty prompt is SD's unconditional context).
    pub fn encode(&self, prompts: &[&str], device: &Device) -> Result<Encoded> {
        let mut all = Vec::with_capacity(prompts.len() * self.max_len);
        let mut truncated = vec![];
        for p in prompts {
            let (ids, cut) = self.ids(p)?;
            all.extend(ids);
            truncated.push(cut);
        }
        let ids = Tensor::from_vec(all, (prompts.len(), self.max_len), device)?;
        let states = match &self.clip {
            Clip::Release(m) => m.forward_with_mask(&ids, usize::MAX)?,
            Clip::Custom(m) => m.forward_with_mask(&ids, usize::MAX)?,
        };
        Ok(Encoded { states, truncated })
    }
}

/// Where a folder's files are, for messages.
pub fn describe(config: &SdConfig) -> String {
    FILE_KEYS
        .iter()
        .map(|k| format!("{k}: {}", config.file(k).display()))
        .collect::<Vec<_>>()
        .join(", ")
}
