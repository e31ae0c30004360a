//! The `link-sd` record: Stable Diffusion's stand-in for a trained base.
//!
//! `train-base` has nothing to train for SD: linking reads the params entry, checks the
//! folder, hashes every file and writes `sd.json` into the base folder
//! (`results/base/<name>/`). Later stages open the weights through that record, with the
//! digests pinned, so weights replaced after linking are refused instead of silently used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Architecture, SdConfig};
use crate::error::{Result, SdError};
use crate::model::SdWeights;

/// The file a base folder of an SD model holds.
pub const LINK_FILE: &str = "sd.json";

/// `sd.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdLink {
    /// The params entry, with every file's SHA-256 filled in.
    pub stable_diffusion: SdConfig,
    /// The resolved architecture (image size, prediction type, networks).
    pub architecture: Architecture,
}

impl SdLink {
    /// Check the folder of `config` and hash its files (pins in `config` must match).
    pub fn create(config: &SdConfig) -> Result<Self> {
        let (w, digests) = SdWeights::open_hashed(config)?;
        let mut pinned = config.clone();
        pinned.sha256 = digests;
        Ok(Self {
            stable_diffusion: pinned,
            architecture: w.arch,
        })
    }

    /// Write `dir/sd.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(LINK_FILE);
        std::fs::create_dir_all(dir).map_err(|e| SdError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        acpo_core::write_json(&path, self).map_err(|e| SdError::bad(&path, e))
    }

    /// Read `dir/sd.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(LINK_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| SdError::Io {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            SdError::bad(
                &path,
                format!("line {}: not a link-sd record: {e}", e.line()),
            )
        })
    }

    /// Whether `dir` holds a linked SD model.
    pub fn is_linked(dir: &Path) -> bool {
        dir.join(LINK_FILE).is_file()
    }

    /// Open the weights, every file checked against the digest recorded at linking.
    pub fn open(&self) -> Result<SdWeights> {
        SdWeights::open(&self.stable_diffusion)
    }
}
