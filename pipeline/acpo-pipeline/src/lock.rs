//! `pipeline.lock`: what each stage last produced, from which inputs. JSON (sorted keys),
//! rewritten atomically after every stage, so an interrupted run never leaves a torn lock.

use crate::error::{Error, Result};
use crate::hash::PathHash;
use crate::key::KeyInputs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The lock file next to `pipeline.yaml`.
pub const LOCK_FILE: &str = "pipeline.lock";

/// The lock of a pipeline file: `pipeline.lock` for `pipeline.yaml`, `<stem>.acpo.lock` for
/// any other (`dvc.yaml` -> `dvc.acpo.lock`, so DVC's own `dvc.lock` is never touched).
pub fn lock_name(pipeline_file: &str) -> String {
    if pipeline_file == crate::pipeline::PIPELINE_FILE {
        return LOCK_FILE.to_string();
    }
    let stem = Path::new(pipeline_file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| pipeline_file.to_string());
    format!("{stem}.acpo.lock")
}
/// Version of the lock format.
pub const LOCK_VERSION: u32 = 1;

/// One stage's last successful result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The stage key (hex SHA-256 of `inputs`).
    pub key: String,
    /// Profile the stage ran under.
    pub profile: String,
    /// Every input of the key.
    pub inputs: KeyInputs,
    /// Hashes of the outputs it produced.
    pub outs: BTreeMap<String, PathHash>,
    /// Wall time of the command in seconds (of the original run when restored).
    pub wall_s: f64,
    /// Peak resident memory of the command and its children, MiB (getrusage via wait4).
    pub peak_rss_mib: f64,
    /// Unix time (s) when the result was recorded.
    pub finished_unix: u64,
    /// True when the outputs were restored from the run cache instead of running.
    pub restored: bool,
}

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub stages: BTreeMap<String, LockEntry>,
}

impl Default for Lock {
    fn default() -> Self {
        Lock {
            version: LOCK_VERSION,
            stages: BTreeMap::new(),
        }
    }
}

impl Lock {
    /// Reads the lock file `path` (an absent lock is empty).
    pub fn load(path: &Path) -> Result<Lock> {
        let path = path.to_path_buf();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let lock: Lock = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: format!("line {} column {}: {e}", e.line(), e.column()),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(Error::Corrupt {
                path,
                message: format!(
                    "lock format version {} (this acpo reads {LOCK_VERSION})",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    /// Writes the lock file `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(&path, &bytes)
    }
}
