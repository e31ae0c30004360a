//! Typed errors of the FID crate.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Errors that concern a file name it.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// An output could not be written (acpo-core's atomic write names the file).
    #[error(transparent)]
    Write(#[from] acpo_core::AtomicError),
    /// Exporting or running the ONNX graph failed (acpo-iqa's writer and ONNX Runtime).
    #[error(transparent)]
    Onnx(#[from] acpo_iqa::IqaError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TorchScript archive could not be read or is not the expected network.
    #[error("{path}: TorchScript archive: {msg}")]
    TorchScript { path: PathBuf, msg: String },
    /// The converted weights file is missing a tensor, has a wrong shape, etc.
    #[error("{path}: Inception weights: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// A dataset or statistics file has the wrong content.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// A caller passed an unusable argument (shape, dtype, sample count ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A numerical step failed (e.g. a non-finite covariance).
    #[error("numerical error: {0}")]
    Numerical(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, FidError>;

impl FidError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FidError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        FidError::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

impl acpo_core::BadInput for FidError {
    /// A weights, archive or data file with the wrong content, or an unusable argument; an
    /// ONNX error is whatever acpo-iqa says it is.
    fn is_bad_input(&self) -> bool {
        match self {
            FidError::TorchScript { .. }
            | FidError::Weights { .. }
            | FidError::Data { .. }
            | FidError::Input(_) => true,
            FidError::Onnx(e) => e.is_bad_input(),
            FidError::Write(e) => e.is_bad_input(),
            FidError::Io { .. } | FidError::Numerical(_) | FidError::Candle(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    #[test]
    fn wrong_files_are_bad_input_numerics_are_a_failure() {
        let w = FidError::Weights {
            path: "w".into(),
            msg: "no tensor".into(),
        };
        assert!(w.is_bad_input());
        assert!(
            FidError::Onnx(acpo_iqa::IqaError::MissingModel { path: "m".into() }).is_bad_input()
        );
        assert!(!FidError::Onnx(acpo_iqa::IqaError::Ort("crash".into())).is_bad_input());
        assert!(!FidError::Numerical("non-finite".into()).is_bad_input());
    }
}
