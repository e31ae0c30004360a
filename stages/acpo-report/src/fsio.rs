//! Atomic writes: every output goes to a temporary sibling and is renamed into place.

use crate::error::{ReportError, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary sibling (parents are created; acpo-core).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

/// Pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(acpo_core::write_json(path, value)?)
}

/// Runs `f` on a temporary path and renames its result to `path` when it succeeds
/// (for writers that want a file name, such as plotters' backends; the temporary keeps the
/// extension, from which image encoders pick the format).
pub fn with_tmp_file(path: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    acpo_core::atomic::write_with(path, f)
}

/// Reads a file to a string, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))
}
