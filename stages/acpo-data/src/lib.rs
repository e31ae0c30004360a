//! Data stages: fetch/verify sources, prepare CIFAR-10, Anime-Faces (64x64 and 32x32), the
//! 256x256 stand-in (`church256-standin`) and the prompt sets.
//!
//! Raw files are read in place from the mirror (`ACPO_MIRROR`, default `../shared/data`)
//! and verified against `data/sources.yaml`; prepared datasets go to
//! `data/prepared/<dataset>/`:
//! - image sets: `{train,val,test}.safetensors` (`images` U8 `[N,H,W,3]` RGB,
//!   `labels` I64 `[N]`, 0 when unlabelled), `manifest.json`, `config.json`, `preview.png`;
//! - prompts: `prompts.parquet` (`set, split, id, prompt, category`), `manifest.json`,
//!   `config.json`.

pub mod anime;
pub mod canonical;
pub mod church;
pub mod cifar;
pub mod error;
pub mod images;
pub mod output;
pub mod prompts;
pub mod sources;
pub mod split;
#[cfg(test)]
pub(crate) mod testutil;

pub use error::{DataError, Result};
pub use images::ImageSet;
pub use sources::{Locator, Sources};

/// The datasets the prepare stages produce, by the names users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Cifar10,
    Anime64,
    /// The anime64 faces (same split) halved by a 2x2 box average.
    Anime32,
    Church256Standin,
    Prompts,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 5] = [
        Dataset::Cifar10,
        Dataset::Anime64,
        Dataset::Anime32,
        Dataset::Church256Standin,
        Dataset::Prompts,
    ];

    /// The dataset's name (directory under `data/prepared/`, params key `data.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::Anime64 => "anime64",
            Dataset::Anime32 => "anime32",
            Dataset::Church256Standin => church::NAME,
            Dataset::Prompts => "prompts",
        }
    }

    /// Parses a dataset name.
    pub fn from_name(name: &str) -> Result<Dataset> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                DataError::Config(format!(
                    "unknown dataset {name:?}; expected one of {}",
                    Dataset::ALL.map(|d| d.name()).join(", ")
                ))
            })
    }
}

/// Reads a prepared image split, e.g. `data/prepared/cifar10/train.safetensors`.
pub fn load_split(prepared: &std::path::Path, dataset: &str, split: &str) -> Result<ImageSet> {
    ImageSet::read_safetensors(&prepared.join(dataset).join(format!("{split}.safetensors")))
}
