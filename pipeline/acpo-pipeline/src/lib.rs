//! Generic content-hashed pipeline engine (DVC-style YAML stages); knows nothing about diffusion.
//!
//! - [`params`]: `params.yaml`, profiles (`profiles/<name>.yaml` overlays), `-S` overrides.
//! - [`pipeline`]: `pipeline.yaml` stages, `foreach`/`matrix` expansion, the stage graph.
//! - [`confine`]: stage names as file names, outputs kept inside the pipeline directory.
//! - [`hash`], [`key`]: content hashes (with a stat cache) and the stage key.
//! - [`lock`], [`runcache`]: `pipeline.lock` and the content-addressed run cache.
//! - [`workspace`]: what is up to date and why; [`repro`]: the executor;
//!   [`commands`]: `status`, `dag`, `explain`, `gc`; [`metrics`]: `metrics show/diff`,
//!   `params diff` (against a git revision through [`git`]), printed as [`table`]s;
//!   [`plots`]: the declared plots files on one HTML page; [`timing`]: `acpo times`, where
//!   the recorded run time went per stage group and phase.

pub mod commands;
pub mod confine;
pub mod crates;
pub mod dvc;
pub mod error;
pub mod fsutil;
pub mod git;
pub mod hash;
pub mod key;
pub mod lock;
pub mod metrics;
pub mod params;
pub mod pipeline;
pub mod plots;
pub mod progress;
pub mod remote;
pub mod remote_s3;
pub mod repro;
pub mod runcache;
pub mod running;
pub mod slurm;
pub mod table;
pub mod timing;
pub mod workspace;
pub mod yaml;

pub use error::{Error, ErrorKind, Result};
pub use params::Params;
pub use pipeline::{Pipeline, Stage};
pub use repro::{repro, ReproSettings, ReproSummary};
pub use workspace::Workspace;

/// The version of the engine, part of every stage key.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
