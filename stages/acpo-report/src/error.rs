//! Typed errors of evaluation and reporting. Every variant names the file it concerns and,
//! where one exists, the command that fixes it.

use std::path::PathBuf;

/// Errors of the report crate.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An output could not be written (acpo-core's atomic write names the file).
    #[error(transparent)]
    Write(#[from] acpo_core::AtomicError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model that evaluation needs was never trained (or its output was removed).
    #[error("{what} was never trained: {} is missing; run `{fix}`", path.display())]
    NotTrained {
        what: String,
        path: PathBuf,
        fix: String,
    },
    /// An input that another stage writes is missing.
    #[error("{what} is missing: {}; run `{fix}`", path.display())]
    MissingInput {
        what: String,
        path: PathBuf,
        fix: String,
    },
    /// A judge named in the params is not in the registry.
    #[error("judge `{judge}` is not in the registry {} (known: {known}); add an entry for it to that file or remove it from `{param}` in params.yaml", registry.display())]
    UnknownJudge {
        judge: String,
        registry: PathBuf,
        known: String,
        param: String,
    },
    /// A metrics file written by an older (or newer) version of the evaluate stage.
    #[error("{}: metrics schema {found}, this acpo reads schema {expected}; re-run the evaluation with `{fix}`", path.display())]
    Schema {
        path: PathBuf,
        found: String,
        expected: u32,
        fix: String,
    },
    /// A file was read but its content is not what was expected.
    #[error("{}: {field}: {msg}", path.display())]
    BadFile {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A configuration value is out of range.
    #[error("invalid param `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Diffusion(#[from] acpo_diffusion::DiffusionError),
    #[error(transparent)]
    Iqa(#[from] acpo_iqa::IqaError),
    #[error(transparent)]
    Fid(#[from] acpo_fid::FidError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("plot {}: {msg}", path.display())]
    Plot { path: PathBuf, msg: String },
    /// The headless browser that checks a report page is missing or failed.
    #[error("checking {} in a browser: {msg}", page.display())]
    Browser { page: PathBuf, msg: String },
}

/// Result alias of this crate.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn bad(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ReportError::BadFile {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ReportError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

impl acpo_core::BadInput for ReportError {
    /// A missing prerequisite (an untrained model, another stage's output), an unknown judge,
    /// a file of another schema or content, a param out of range; wrapped errors of the
    /// diffusion, IQA and FID crates are whatever those crates say they are.
    fn is_bad_input(&self) -> bool {
        match self {
            ReportError::NotTrained { .. }
            | ReportError::MissingInput { .. }
            | ReportError::UnknownJudge { .. }
            | ReportError::Schema { .. }
            | ReportError::BadFile { .. }
            | ReportError::Config { .. } => true,
            ReportError::Diffusion(e) => e.is_bad_input(),
            ReportError::Iqa(e) => e.is_bad_input(),
            ReportError::Fid(e) => e.is_bad_input(),
            ReportError::Write(e) => e.is_bad_input(),
            ReportError::Io { .. }
            | ReportError::Candle(_)
            | ReportError::Polars(_)
            | ReportError::Plot { .. }
            | ReportError::Browser { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    #[test]
    fn missing_prerequisites_are_bad_input_wrapped_errors_keep_their_class() {
        let missing = ReportError::MissingInput {
            what: "the base".into(),
            path: "results/base/x".into(),
            fix: "acpo repro train-base@x".into(),
        };
        assert!(missing.is_bad_input());
        let iqa = ReportError::Iqa(acpo_iqa::IqaError::MissingModel { path: "m".into() });
        assert!(iqa.is_bad_input());
        let io = ReportError::io("x", std::io::Error::other("disk"));
        assert!(!io.is_bad_input());
        let plot = ReportError::Plot {
            path: "p.png".into(),
            msg: "font".into(),
        };
        assert!(!plot.is_bad_input());
    }
}
