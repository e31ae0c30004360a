//! Glue between the CLI and the stage crates: each submodule parses its
//! subcommand's arguments, reads its declared params and calls the stage library.

pub mod data;
pub mod diffusion;
pub mod eval;
pub mod fid;
pub mod finetune;
pub mod iqa;
pub mod params;
pub mod report;
pub mod sd;
pub mod text;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Data sources and preparation: fetch, prepare <dataset> (acpo-data).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Image-quality models: CNNIQA ONNX export, judge sanity (acpo-iqa).
    #[command(subcommand)]
    Iqa(iqa::IqaCommand),
    /// Diffusion base models: train-base, sample (acpo-diffusion).
    #[command(subcommand)]
    Diffusion(diffusion::DiffusionCommand),
    /// FID: Inception weights conversion, reference statistics, comparisons (acpo-fid).
    #[command(subcommand)]
    Fid(fid::FidCommand),
    /// ACPO fine-tuning and its baselines from a train-base model (acpo-finetune).
    Finetune(finetune::FinetuneArgs),
    /// Evaluation: evaluate, evaluate-steps, base-study (acpo-report).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Reports from the evaluations: aggregate, study-report (acpo-report).
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// The prompt encoder (all-MiniLM-L6-v2): captions of a dataset, prompt files (acpo-text).
    #[command(subcommand)]
    Text(text::TextCommand),
    /// Stable Diffusion from local weights: link (train-base's stand-in), prompts (acpo-sd).
    #[command(subcommand)]
    Sd(sd::SdCommand),
}

/// The data mirror: `$ACPO_MIRROR` (which `acpo` itself defaults to `<pipeline dir>/../shared/data`
/// before running a stage), else `../shared/data`.
pub(crate) fn mirror() -> std::path::PathBuf {
    std::env::var_os("ACPO_MIRROR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("../shared/data"))
}

/// The installed assets (scripts/setup.sh): `$ACPO_ASSETS` (defaulted by `acpo` like the
/// mirror), else `.cache/assets`.
pub(crate) fn assets() -> std::path::PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(".cache/assets"))
}

pub fn run(cmd: StageCommand) -> anyhow::Result<()> {
    match cmd {
        StageCommand::Data(c) => data::run(c),
        StageCommand::Iqa(c) => iqa::run(c),
        StageCommand::Diffusion(c) => diffusion::run(c),
        StageCommand::Fid(c) => fid::run(c),
        StageCommand::Finetune(a) => finetune::run(a),
        StageCommand::Eval(c) => eval::run(c),
        StageCommand::Report(c) => report::run(c),
        StageCommand::Text(c) => text::run(c),
        StageCommand::Sd(c) => sd::run(c),
    }
}

/// Writes one training invocation's resume point and speed (`--timing`) as JSON, atomically.
/// Such files live under `results/timing/`, outside every folder a later stage depends on, so
/// re-measuring a stage whose outputs come out byte-identical leaves everything below it fresh.
fn write_timing<T: serde::Serialize>(path: &std::path::Path, value: &T) -> anyhow::Result<()> {
    Ok(acpo_core::write_json(path, value)?)
}
