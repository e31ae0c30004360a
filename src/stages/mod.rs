//! Glue between the CLI and the stage crates: each submodule parses its
//! subcommand's arguments, reads its declared params and calls the stage library.

pub mod params;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum StageCommand {}

pub fn run(cmd: StageCommand) -> anyhow::Result<()> {
    match cmd {}
}
