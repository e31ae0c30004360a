//! The `acpo` command: pipeline engine commands (`repro`, `status`, ...) and
//! the `stage` subcommands that `pipeline.yaml` commands call.
//!
//! This is the only place that uses `anyhow` and maps errors to exit codes.

mod stages;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "acpo", version, about = "Reproducible ACPO research pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the work of one stage directly (this is what `pipeline.yaml` commands call).
    #[command(subcommand)]
    Stage(stages::StageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stage(cmd) => stages::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// One place that maps error types to exit codes.
/// 1: failure in the work itself; 2: bad input (config, data, usage).
fn exit_code(_err: &anyhow::Error) -> u8 {
    1
}
