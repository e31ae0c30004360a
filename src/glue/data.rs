//! `acpo stage data ...`: the data stages (crate `acpo-data`).
//!
//! - `acpo stage data prepare <dataset>` reads params `data.<dataset>` and writes
//!   `data/prepared/<dataset>/` (datasets: cifar10, anime64, anime32, church256-standin,
//!   prompts).
//! - `acpo stage data fetch [<source>...]` verifies every source file's SHA-256 and
//!   downloads the missing ones that have a public URL into the cache.

use acpo_data::{anime, church, cifar, prompts, Dataset, Locator, Sources};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Prepare one dataset into <out>/<dataset> (cifar10, anime64, anime32, church256-standin,
    /// prompts).
    Prepare(PrepareArgs),
    /// Verify all files of the given sources (default: all) and download missing ones.
    Fetch(FetchArgs),
}

/// Where raw files are looked for.
#[derive(Debug, Args)]
pub struct Where {
    /// The read-only data mirror.
    #[arg(long, env = "ACPO_MIRROR", default_value = "../shared/data")]
    mirror: PathBuf,
    /// The download cache (files not in the mirror).
    #[arg(long, default_value = ".cache/data")]
    cache: PathBuf,
    /// The list of sources with checksums and URLs.
    #[arg(long, default_value = "data/sources.yaml")]
    sources: PathBuf,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The dataset.
    dataset: String,
    /// Parent directory of the prepared dataset.
    #[arg(long, default_value = "data/prepared")]
    out: PathBuf,
    /// Download source files missing from the mirror and the cache.
    #[arg(long)]
    download: bool,
    #[command(flatten)]
    place: Where,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Source names of sources.yaml (default: every source).
    sources: Vec<String>,
    /// Only verify; never download.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    place: Where,
}

fn load(place: &Where, allow_download: bool) -> anyhow::Result<(Sources, Locator)> {
    let sources = Sources::load(&place.sources)?;
    Ok((
        sources,
        Locator {
            mirror: place.mirror.clone(),
            cache: place.cache.clone(),
            allow_download,
        },
    ))
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Prepare(a) => prepare(a),
        DataCommand::Fetch(a) => {
            let (sources, locator) = load(&a.place, !a.offline)?;
            let found = acpo_data::sources::fetch(&sources, &a.sources, &locator)?;
            for r in &found {
                println!(
                    "ok  {:<48} {:>11} bytes  sha256 {}  ({:?}: {})",
                    r.path,
                    r.bytes,
                    r.sha256,
                    r.location,
                    r.file.display()
                );
            }
            println!("{} files verified", found.len());
            Ok(())
        }
    }
}

fn prepare(a: PrepareArgs) -> anyhow::Result<()> {
    let dataset = Dataset::from_name(&a.dataset)?;
    let (sources, locator) = load(&a.place, a.download)?;
    let dest = a.out.join(dataset.name());
    let key = format!("data.{}", dataset.name());
    let started = std::time::Instant::now();
    // One line for the log; the full manifest is `<dest>/manifest.json`.
    let work = || -> anyhow::Result<String> {
        let splits = |s: &std::collections::BTreeMap<String, acpo_data::output::SplitStats>| {
            s.iter()
                .map(|(name, st)| format!("{name} {}", st.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(match dataset {
            Dataset::Cifar10 => {
                let cfg: cifar::Cifar10Config = stage_param(&key)?;
                splits(&cifar::prepare(&cfg, &sources, &locator, &dest)?.splits)
            }
            Dataset::Anime64 | Dataset::Anime32 => {
                let side = if dataset == Dataset::Anime64 { 64 } else { 32 };
                let cfg: anime::AnimeConfig = stage_param(&key)?;
                splits(&anime::prepare(&cfg, side, &sources, &locator, &dest)?.splits)
            }
            Dataset::Church256Standin => {
                let cfg: church::Church256Config = stage_param(&key)?;
                splits(&church::prepare(&cfg, &sources, &locator, &dest)?.splits)
            }
            Dataset::Prompts => {
                let cfg: prompts::PromptsConfig = stage_param(&key)?;
                let m = prompts::prepare(&cfg, &sources, &locator, &dest)?;
                let sets: Vec<String> = m
                    .counts
                    .iter()
                    .map(|(set, splits)| {
                        let n: Vec<String> =
                            splits.iter().map(|(sp, n)| format!("{sp} {n}")).collect();
                        format!("{set}: {}", n.join("/"))
                    })
                    .collect();
                format!("{} prompts ({})", m.rows, sets.join("; "))
            }
        })
    };
    let summary = work().with_context(|| format!("preparing {}", dataset.name()))?;
    eprintln!(
        "prepared {} in {:.1} s: {summary} -> {} (manifest.json)",
        dataset.name(),
        started.elapsed().as_secs_f64(),
        dest.display()
    );
    Ok(())
}
