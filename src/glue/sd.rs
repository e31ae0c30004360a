//! `acpo stage sd ...`: Stable Diffusion from a user's weights (crate `acpo-sd`): the link
//! that stands in for `train-base`, and the prompt sets encoded with the model's CLIP.

use std::path::PathBuf;

use acpo_core::layout::{Layout, Model};
use acpo_data::output::Staging;
use acpo_sd::{SdConfig, SdLink};
use anyhow::Context;
use clap::Subcommand;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum SdCommand {
    /// `link-sd@<NAME>`: check the folder of params `stable_diffusion.models.<NAME>`, hash
    /// its files and record them in `results/base/<NAME>/sd.json` (there is nothing to
    /// train; later stages refuse weights that changed since).
    Link {
        name: String,
        /// Output folder (default `results/base/<NAME>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// `embed-prompts-sd@<NAME>`: every prompt set of `embed-prompts` encoded with the
    /// model's CLIP into `data/prepared/prompt-embeddings-<NAME>/`, plus the empty prompt's
    /// context (`null.safetensors`, SD's unconditional one).
    Prompts {
        name: String,
        /// The linked model (default `results/base/<NAME>`).
        #[arg(long)]
        base_dir: Option<PathBuf>,
        /// `embed-prompts`' folder, whose sets are re-encoded (default
        /// `data/prepared/prompt-embeddings`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Output folder (default `data/prepared/prompt-embeddings-<NAME>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Prompts per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
}

pub fn run(cmd: SdCommand) -> anyhow::Result<()> {
    match cmd {
        SdCommand::Link { name, out } => {
            let cfg: SdConfig = stage_param(&format!("stable_diffusion.models.{name}"))?;
            let out = out.unwrap_or_else(|| Layout::default().base(Model::Sd(&name)).path);
            let link = SdLink::create(&cfg)
                .with_context(|| format!("link-sd {name} ({})", acpo_sd::model::describe(&cfg)))?;
            link.write(&out)?;
            eprintln!(
                "link-sd {name}: Stable Diffusion {:?}, {} px, {:?}; {} -> {}",
                cfg.version,
                link.architecture.image_size,
                link.architecture.prediction,
                acpo_sd::model::describe(&cfg),
                out.join(acpo_sd::link::LINK_FILE).display()
            );
            Ok(())
        }
        SdCommand::Prompts {
            name,
            base_dir,
            from,
            out,
            batch,
        } => {
            let l = Layout::default();
            let base_dir = base_dir.unwrap_or_else(|| l.base(Model::Sd(&name)).path);
            let out = out.unwrap_or_else(|| l.sd_prompt_embeddings(&name).path);
            let from = from.unwrap_or_else(|| l.prompt_embeddings().path);
            let fix_from = l.prompt_embeddings().fix();
            let link = SdLink::read(&base_dir)?;
            let dev = acpo_core::device::default_device();
            let enc = link.open()?.text_encoder(&dev)?;
            let mut sets: Vec<String> = std::fs::read_dir(&from)
                .with_context(|| format!("reading {} (run `{fix_from}`)", from.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("prompts.json").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            sets.sort();
            anyhow::ensure!(
                !sets.is_empty(),
                "{}: no prompt sets (folders with prompts.json); run `{fix_from}`",
                from.display()
            );
            let staging = Staging::new(&out)?;
            let mut manifest = std::collections::BTreeMap::new();
            let bar = acpo_core::progress::bar(sets.len() as u64, "encode prompt sets");
            for set in &sets {
                let s = acpo_sd::prompts::encode_set(
                    &enc,
                    &from.join(set),
                    &staging.path(set),
                    batch,
                    &dev,
                    |_| {},
                )?;
                bar.inc(1);
                eprintln!(
                    "embed-prompts-sd {name} {set}: {} prompts, {} cut to the {}-token context",
                    s.prompts, s.truncated, s.context
                );
                manifest.insert(set.clone(), s);
            }
            bar.finish_and_clear();
            acpo_sd::prompts::write_null_context(&enc, &staging.path(""), &dev)?;
            staging.write_json(
                "manifest.json",
                &serde_json::json!({
                    "encoder": format!("CLIP of Stable Diffusion {:?}", link.stable_diffusion.version),
                    "text_encoder_sha256": link.stable_diffusion.sha256.get("text_encoder"),
                    "source": from,
                    "sets": manifest,
                }),
            )?;
            staging.commit()?;
            Ok(())
        }
    }
}
