//! Atomic writes: every output goes to a temporary sibling and is renamed into place.

use crate::error::{ReportError, Result};
use std::path::{Path, PathBuf};

fn tmp_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}

/// Writes `bytes` to `path` through a temporary sibling (parents are created).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    }
    let tmp = tmp_of(path);
    std::fs::write(&tmp, bytes).map_err(|e| ReportError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ReportError::io(path, e))
}

/// Pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)
        .map_err(|e| ReportError::bad(path, "json", e.to_string()))?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Runs `f` on a temporary path and renames its result to `path` when it succeeds
/// (for writers that want a file name, such as plotters' backends).
pub fn with_tmp_file(path: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    }
    // Keep the extension: image encoders pick the format from it.
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_extension(format!("tmp{}.{ext}", std::process::id()));
    match f(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| ReportError::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads a file to a string, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))
}
