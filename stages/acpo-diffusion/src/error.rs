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

impl acpo_core::BadInput for DiffusionError {
    /// A config field, an input file's content or a checkpoint of another run.
    fn is_bad_input(&self) -> bool {
        match self {
            DiffusionError::Config { .. }
            | DiffusionError::BadInput { .. }
            | DiffusionError::Json { .. }
            | DiffusionError::Resume { .. } => true,
            DiffusionError::Write(e) => e.is_bad_input(),
            DiffusionError::Candle(_)
            | DiffusionError::Io { .. }
            | DiffusionError::Image { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    #[test]
    fn config_and_file_content_are_bad_input_io_is_a_failure() {
        assert!(DiffusionError::config("train.steps", "must be positive").is_bad_input());
        let resume = DiffusionError::Resume {
            path: "ckpt".into(),
            msg: "other run".into(),
        };
        assert!(resume.is_bad_input());
        let io = DiffusionError::io("x", std::io::Error::other("disk"));
        assert!(!io.is_bad_input());
    }
}
