//! Typed errors of the diffusion crate.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// An output could not be written (acpo-core's atomic write names the file).
    #[error(transparent)]
    Write(#[from] acpo_core::AtomicError),
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config value is invalid.
    #[error("invalid config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// An input file has the wrong content (missing member, wrong dtype or shape).
    #[error("{path}: member `{member}`: {msg}")]
    BadInput {
        path: PathBuf,
        member: String,
        msg: String,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Writing a PNG failed.
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A checkpoint does not match the run that tries to resume from it.
    #[error("{path}: cannot resume: {msg}")]
    Resume { path: PathBuf, msg: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;

impl DiffusionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(field: &str, msg: impl Into<String>) -> Self {
        Self::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
