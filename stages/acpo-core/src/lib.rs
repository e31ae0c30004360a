//! The foundation under the stage crates (issue 13): one owner for what each of them used to
//! write for itself.
//!
//! - [`atomic`]: outputs written to a temporary sibling and renamed into place only on success,
//!   so an interrupted or failed stage never leaves a half-written artifact under its real name.
//! - [`digest`]: SHA-256 of files (streamed) and bytes, as hex: the one implementation the
//!   manifests, pins and evaluation records use.
//! - [`device`]: the device every stage computes on (the first CUDA GPU, else the CPU).
//! - [`layout`]: where every artifact lives and which `acpo repro` stage makes it, for the
//!   command glue, the evaluation, the report and their "run this to make it" messages alike.
//! - [`exit`]: which errors are bad input (exit 2) and which failures (exit 1), one rule that
//!   every stage crate's error type implements.
//! - [`prepared`]: the one reader of the prepared image splits (`images`, `labels`).
//! - [`progress`]: progress bars that draw on a terminal and, when stderr is a log (the engine
//!   pipes every stage's output), print one plain line every `ACPO_PROGRESS_SECS` seconds
//!   (default 30) instead of going quiet.
//!
//! It knows nothing of diffusion, images or the engine; stage crates depend on it, it depends
//! on none of them.

pub mod atomic;
pub mod device;
pub mod digest;
pub mod exit;
pub mod layout;
pub mod prepared;
pub mod progress;

pub use atomic::{write_atomic, write_json, AtomicError};
pub use exit::BadInput;
