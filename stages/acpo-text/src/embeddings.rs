//! A whole prompt list encoded, and its file `embeddings.safetensors`.
//!
//! Tensors (all F32 but `lengths`, `truncated`):
//! `tokens` `[N, L, D]` (token states, zero past each prompt's length; `L` = the longest
//! prompt of the list), `mask` `[N, L]`, `pooled` `[N, D]` (sentence embeddings),
//! `lengths` I64 `[N]`, `truncated` U8 `[N]`. Rows follow the prompt list. The file has no
//! metadata, so the same prompts and model give the same bytes.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::encoder::{TextEncoder, TokenizedPrompt};
use crate::error::{Result, TextError};

/// Encoded prompts, padded to the longest of the list.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    pub tokens: Tensor,
    pub mask: Tensor,
    pub pooled: Tensor,
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
}

/// What a list's encoding came to (the stage's metrics).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingSummary {
    pub prompts: usize,
    /// Token count (with `[CLS]`/`[SEP]`): min, mean, max.
    pub tokens_min: usize,
    pub tokens_mean: f64,
    pub tokens_max: usize,
    /// Prompts cut to the encoder's limit.
    pub truncated: usize,
    pub max_tokens: usize,
    pub dim: usize,
}

impl EmbeddingSet {
    /// Encodes every prompt, `batch` at a time (each batch padded to its longest, then all to
    /// the longest of the list), calling `progress(done)` after each batch. An empty prompt is
    /// an error ([`TextError::EmptyPrompt`] with its index in `prompts`).
    pub fn encode<S: AsRef<str>>(
        enc: &TextEncoder,
        prompts: &[S],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Self> {
        let toks = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| enc.tokenize(i, p.as_ref()))
            .collect::<Result<Vec<TokenizedPrompt>>>()?;
        let l = toks.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if l == 0 {
            return Err(TextError::EmptyPrompt { index: 0 });
        }
        let (mut tokens, mut masks, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
        for (k, chunk) in toks.chunks(batch.max(1)).enumerate() {
            let e = enc.encode_tokens(chunk)?;
            let pad = l - e.tokens.dim(1)?;
            tokens.push(e.tokens.pad_with_zeros(1, 0, pad)?);
            masks.push(e.mask.pad_with_zeros(1, 0, pad)?);
            pooled.push(e.pooled);
            progress((k * batch.max(1) + chunk.len()).min(toks.len()));
        }
        Ok(EmbeddingSet {
            tokens: Tensor::cat(&tokens, 0)?,
            mask: Tensor::cat(&masks, 0)?,
            pooled: Tensor::cat(&pooled, 0)?,
            lengths: toks.iter().map(|t| t.ids.len()).collect(),
            truncated: toks.iter().map(|t| t.truncated).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    pub fn summary(&self, enc: &TextEncoder) -> EmbeddingSummary {
        let n = self.lengths.len();
        EmbeddingSummary {
            prompts: n,
            tokens_min: self.lengths.iter().copied().min().unwrap_or(0),
            tokens_mean: self.lengths.iter().sum::<usize>() as f64 / n.max(1) as f64,
            tokens_max: self.lengths.iter().copied().max().unwrap_or(0),
            truncated: self.truncated.iter().filter(|t| **t).count(),
            max_tokens: enc.max_tokens(),
            dim: enc.dim(),
        }
    }

    /// The bytes of `embeddings.safetensors` (see the module docs).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let dev = Device::Cpu;
        let n = self.len();
        let lengths = Tensor::from_vec(
            self.lengths.iter().map(|v| *v as i64).collect::<Vec<_>>(),
            n,
            &dev,
        )?;
        let truncated = Tensor::from_vec(
            self.truncated.iter().map(|v| *v as u8).collect::<Vec<_>>(),
            n,
            &dev,
        )?;
        let cpu = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&dev)?.to_dtype(DType::F32)?) };
        let tensors = [
            ("lengths", lengths),
            ("mask", cpu(&self.mask)?),
            ("pooled", cpu(&self.pooled)?),
            ("tokens", cpu(&self.tokens)?),
            ("truncated", truncated),
        ];
        safetensors::serialize(tensors.iter().map(|(k, t)| (*k, t)), None)
            .map_err(|e| TextError::Candle(candle_core::Error::Msg(e.to_string())))
    }
}

/// A folder of records and their token states, as `embed-prompts` and `embed-captions` write
/// it: `dir/<records>` (a JSON list, row for row) and `dir/embeddings.safetensors` (whose
/// `tokens` `[N, L, D]` has one row per record). Returns the records' path, the records and
/// `tokens`; `what` and `stage` name the records and their maker in errors.
pub(crate) fn load_embedded<R: DeserializeOwned>(
    dir: &Path,
    records: &str,
    what: &str,
    stage: &str,
    device: &Device,
) -> Result<(PathBuf, Vec<R>, Tensor)> {
    let rpath = dir.join(records);
    let text = std::fs::read_to_string(&rpath).map_err(|e| TextError::io(&rpath, e))?;
    let rows: Vec<R> = serde_json::from_str(&text).map_err(|e| {
        TextError::bad(
            &rpath,
            format!(
                "line {}: expected a list of {what} ({stage}): {e}",
                e.line()
            ),
        )
    })?;
    let epath = dir.join("embeddings.safetensors");
    let map = candle_core::safetensors::load(&epath, device)
        .map_err(|e| TextError::bad(&epath, format!("not a readable safetensors file: {e}")))?;
    let tokens = map
        .get("tokens")
        .ok_or_else(|| TextError::bad(&epath, "no `tokens` tensor"))?
        .clone();
    match tokens.dims() {
        [n, _, _] if *n == rows.len() => Ok((rpath, rows, tokens)),
        d => Err(TextError::bad(
            &epath,
            format!(
                "`tokens` has shape {d:?}, expected [{}, L, D] (one row per record of {})",
                rows.len(),
                rpath.display()
            ),
        )),
    }
}
