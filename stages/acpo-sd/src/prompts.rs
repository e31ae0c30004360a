//! Prompt sets encoded with SD's CLIP, in the layout the fine-tuning and evaluation stages
//! read ([`acpo_text::PromptTable`]: `prompts.json` + `embeddings.safetensors` per set).
//!
//! The prompts are those `embed-prompts` chose (its folder's `prompts.json` of each set), so
//! SD and the small prompt-conditioned model are evaluated on the same prompts. Every record's
//! `tokens` is the whole context `L`: SD attends to the padding too. The encoded empty
//! prompt, SD's unconditional context, goes to `null.safetensors` (tensor `context`,
//! `[1, L, D]`).

use std::collections::HashMap;
use std::path::Path;

use acpo_text::{PromptRecord, PromptTable};
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{Result, SdError};
use crate::model::TextEncoder;

/// What encoding one set did.
#[derive(Debug, Clone, Serialize)]
pub struct SetSummary {
    pub prompts: usize,
    /// Prompts longer than the context, cut (ending in end-of-text).
    pub truncated: usize,
    pub context: usize,
}

/// Encode the records of `from/prompts.json` into the set folder `to`, `batch` at a time.
pub fn encode_set(
    enc: &TextEncoder,
    from: &Path,
    to: &Path,
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<SetSummary> {
    let path = from.join("prompts.json");
    let text = std::fs::read_to_string(&path).map_err(|e| SdError::Io {
        path: path.clone(),
        source: e,
    })?;
    let mut records: Vec<PromptRecord> = serde_json::from_str(&text).map_err(|e| {
        SdError::bad(
            &path,
            format!(
                "line {}: expected embed-prompts' prompt records: {e}",
                e.line()
            ),
        )
    })?;
    if records.is_empty() {
        return Err(SdError::bad(&path, "no prompts"));
    }
    let (mut parts, mut done) = (vec![], 0);
    for chunk in records.chunks_mut(batch.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|r| r.prompt.as_str()).collect();
        let e = enc.encode(&texts, device)?;
        for (r, cut) in chunk.iter_mut().zip(&e.truncated) {
            r.tokens = enc.max_len();
            r.truncated = *cut;
        }
        parts.push(e.states.to_device(&Device::Cpu)?);
        done += chunk.len();
        progress(done);
    }
    let summary = SetSummary {
        prompts: records.len(),
        truncated: records.iter().filter(|r| r.truncated).count(),
        context: enc.max_len(),
    };
    let table = PromptTable {
        records,
        tokens: Tensor::cat(&parts, 0)?,
    };
    table.save(to).map_err(|e| SdError::bad(to, e))?;
    Ok(summary)
}

/// Write SD's unconditional context, the encoded empty prompt, to `dir/null.safetensors`.
pub fn write_null_context(enc: &TextEncoder, dir: &Path, device: &Device) -> Result<()> {
    let ctx = enc.encode(&[""], device)?.states.to_device(&Device::Cpu)?;
    let path = dir.join("null.safetensors");
    candle_core::safetensors::save(&HashMap::from([("context".to_string(), ctx)]), &path)?;
    Ok(())
}
