//! The one error type of the data stages. Every variant names the file (and the
//! tar member, line or field) and what was expected.

use std::path::PathBuf;
use thiserror::Error;

/// Errors of the data stages.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    /// A file's SHA-256 is not the one recorded in `data/sources.yaml`.
    #[error("checksum mismatch for {path}: expected sha256 {expected}, actual {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A source file is in neither the mirror nor the download cache and could not be downloaded.
    #[error("{0}")]
    Missing(String),
    /// A download failed.
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    /// The tar archive itself is broken.
    #[error("{archive}: not a readable tar archive: {message}")]
    Tar { archive: PathBuf, message: String },
    /// A tar member is missing, unexpected or cannot be decoded.
    #[error("{archive}: member {member}: {message}")]
    Member {
        archive: PathBuf,
        member: String,
        message: String,
    },
    /// An image has the wrong size.
    #[error("{archive}: member {member}: image is {width}x{height}, expected {expected_width}x{expected_height}")]
    WrongSize {
        archive: PathBuf,
        member: String,
        width: u32,
        height: u32,
        expected_width: u32,
        expected_height: u32,
    },
    /// A malformed table row (prompt files, CIFAR binary batches, sources.yaml).
    #[error("{file}:{line}: {message}")]
    Row {
        file: PathBuf,
        line: u64,
        message: String,
    },
    /// A malformed whole file (JSON, YAML).
    #[error("{file}: {message}")]
    Format { file: PathBuf, message: String },
    /// Invalid configuration (params).
    #[error("invalid config: {0}")]
    Config(String),
    /// Writing an output failed (safetensors, parquet, PNG).
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            err,
        }
    }
}

impl acpo_core::BadInput for DataError {
    /// The input (data, config) rather than the work itself: everything but I/O and writing.
    fn is_bad_input(&self) -> bool {
        !matches!(self, DataError::Io { .. } | DataError::Write { .. })
    }
}

/// Result alias of the data stages.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    #[test]
    fn data_and_config_are_bad_input_io_is_a_failure() {
        assert!(DataError::Config("no benchmarks".into()).is_bad_input());
        assert!(DataError::Missing("cifar-10-python.tar.gz".into()).is_bad_input());
        assert!(!DataError::io("x", std::io::Error::other("disk")).is_bad_input());
    }
}
