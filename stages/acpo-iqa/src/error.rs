//! Typed errors of the IQA crate. Every variant names the file (and judge) it concerns.

use std::path::PathBuf;

/// Errors of the IQA models, the ONNX export/runtime and the judge registry.
#[derive(Debug, thiserror::Error)]
pub enum IqaError {
    /// An output could not be written (acpo-core's atomic write names the file).
    #[error(transparent)]
    Write(#[from] acpo_core::AtomicError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is missing (run `just setup` to fetch the pinned model files)")]
    MissingModel { path: PathBuf },
    #[error("model file {path} is malformed: {reason}")]
    BadModel { path: PathBuf, reason: String },
    #[error("cannot decode image {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("judge `{judge}` ({path}): {reason}")]
    Judge {
        judge: String,
        path: PathBuf,
        reason: String,
    },
    #[error("image {width}x{height} is smaller than judge `{judge}` accepts ({min_width}x{min_height} at least; model {path})")]
    ImageTooSmall {
        judge: String,
        path: PathBuf,
        width: usize,
        height: usize,
        min_width: usize,
        min_height: usize,
    },
    #[error("judge registry {path}: {reason}")]
    Registry { path: PathBuf, reason: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T, E = IqaError> = std::result::Result<T, E>;

impl IqaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IqaError::Io {
            path: path.into(),
            source,
        }
    }
    /// Reading a model file: a missing file gets the "run `just setup`" hint.
    pub(crate) fn model_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            IqaError::MissingModel { path }
        } else {
            IqaError::Io { path, source }
        }
    }
    pub(crate) fn bad_model(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        IqaError::BadModel {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl acpo_core::BadInput for IqaError {
    /// A model file, image, judge or registry entry that is missing or wrong, or an unusable
    /// argument.
    fn is_bad_input(&self) -> bool {
        match self {
            IqaError::MissingModel { .. }
            | IqaError::BadModel { .. }
            | IqaError::BadImage { .. }
            | IqaError::Judge { .. }
            | IqaError::ImageTooSmall { .. }
            | IqaError::Registry { .. }
            | IqaError::Input(_) => true,
            IqaError::Write(e) => e.is_bad_input(),
            IqaError::Io { .. } | IqaError::Ort(_) | IqaError::Candle(_) => false,
        }
    }
}

#[cfg(test)]
mod exit_tests {
    use super::*;
    use acpo_core::BadInput;

    #[test]
    fn a_missing_model_is_bad_input_a_runtime_error_is_a_failure() {
        assert!(IqaError::MissingModel { path: "m".into() }.is_bad_input());
        assert!(!IqaError::Ort("crash".into()).is_bad_input());
    }
}
