//! Typed errors of the engine. The binary maps [`Error::kind`] to exit codes.

use std::path::PathBuf;

/// What class of failure an [`Error`] is; the CLI turns this into an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pipeline, params or command line are wrong (exit 2).
    BadInput,
    /// A stage command failed or misbehaved (exit 1).
    StageFailed,
    /// The run was interrupted by SIGINT/SIGTERM (exit 130).
    Interrupted,
    /// Reading or writing the workspace failed (exit 1).
    Io,
}

/// Every error the engine returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}:{column}: {message}")]
    Yaml {
        file: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{file}: {message}")]
    Params { file: PathBuf, message: String },
    #[error("{file}: {message}")]
    Pipeline { file: PathBuf, message: String },
    #[error("dependency cycle in {file}: {cycle}")]
    Cycle { file: PathBuf, cycle: String },
    #[error("{0}")]
    Usage(String),
    #[error("stage `{stage}` failed: {message}")]
    StageFailed { stage: String, message: String },
    #[error("{failed} stage(s) failed: {stages}")]
    StagesFailed { failed: usize, stages: String },
    #[error("interrupted while running: {stages}")]
    Interrupted { stages: String },
    /// The reason is part of the message and deliberately not the error's `source`, so a
    /// printed chain (`{:#}`) does not say it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A FIFO, socket or device where a dependency or output is hashed: reading it could
    /// block forever or never end, so it is refused (exit 2).
    #[error(
        "{path}: is a {what}; dependencies and outputs may hold only regular files, \
         directories and symbolic links to them"
    )]
    SpecialFile { path: PathBuf, what: &'static str },
    /// A file name that is not UTF-8 inside a dependency or output: the tree hash and the run
    /// cache record names as text, where two such names could not be told apart (exit 2).
    #[error(
        "{}: the file name is not UTF-8; dependencies and outputs may hold only UTF-8 names \
         (rename it)",
        path.display()
    )]
    NonUtf8Name { path: PathBuf },
    /// A request to a remote failed (unreachable, refused, timed out); exit 1.
    #[error("remote {url}: {message}")]
    Remote { url: String, message: String },
}

impl Error {
    /// The class of this error (for exit codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Yaml { .. }
            | Error::Params { .. }
            | Error::Pipeline { .. }
            | Error::Cycle { .. }
            | Error::Usage(_)
            | Error::SpecialFile { .. }
            | Error::NonUtf8Name { .. } => ErrorKind::BadInput,
            Error::StageFailed { .. } | Error::StagesFailed { .. } => ErrorKind::StageFailed,
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            Error::Io { .. } | Error::Corrupt { .. } | Error::Remote { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
