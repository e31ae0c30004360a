//! Typed errors of the Stable Diffusion path.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, SdError>;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// A weight file named in the params is absent.
    #[error("{path}: missing ({what}{expected}); point `{key}` at the file")]
    Missing {
        path: PathBuf,
        key: String,
        what: String,
        expected: String,
    },
    /// A weight file has other bytes than the digest the params pin.
    #[error(
        "{path}: SHA-256 {got}, expected {expected} (`{key}`: corrupt, truncated or another \
         release)"
    )]
    Checksum {
        path: PathBuf,
        key: String,
        expected: String,
        got: String,
    },
    /// A file was read but does not hold what the configuration says it should.
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    /// A params field is out of range or inconsistent.
    #[error("params `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl acpo_core::BadInput for SdError {
    /// The caller's input (params, missing or corrupt files) rather than a failure while
    /// running.
    fn is_bad_input(&self) -> bool {
        !matches!(self, SdError::Io { .. } | SdError::Candle(_))
    }
}

impl SdError {
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        SdError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn bad(path: impl Into<PathBuf>, msg: impl ToString) -> Self {
        SdError::BadFile {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
