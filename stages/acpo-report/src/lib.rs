//! Evaluation, aggregation and reports (SPEC sections 1 and 5).
//!
//! - [`evaluate`]: the `evaluate` stage, one model of one benchmark on fixed seeds: guidance
//!   and judge scores, improvement over the base (relative, absolute, win rate), held-out MSE,
//!   drift (anchor distance, pixel MSE to the base's sample from the same noise), diversity,
//!   FID and KID, each with its sample count and 95% interval ([`stats`]); written as
//!   `metrics.json` with a `schema` version ([`schema`]).
//! - [`text_eval`]: the `evaluate-text` stage, a prompt-conditioned model on the held-out
//!   prompt sets, per set and category (improvement, drift, diversity per prompt).
//! - [`aggregate`]: the `aggregate` stage over [`spec`]'s benchmarks: tables ([`tables`]:
//!   polars; CSV, Markdown, Parquet), the comparison with the paper ([`paper`]), figures
//!   ([`figures`], drawn by [`plots`]) and `reports/index.html` ([`html`]), which [`browser`]
//!   loads in headless Chromium to check its layout.

pub mod aggregate;
pub mod base;
pub mod browser;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod figures;
pub mod fsio;
pub mod html;
pub mod paper;
pub mod plots;
pub mod schema;
pub mod spec;
pub mod stats;
pub mod study;
pub mod study_report;
pub mod tables;
pub mod text_eval;
pub mod text_report;

pub use aggregate::{aggregate, AggregateOutcome};
pub use error::{ReportError, Result};
pub use evaluate::{evaluate, evaluate_step_study, EvalConfig, EvalPaths, StepStudy};
pub use schema::{read_metrics, EvalMetrics, SCHEMA};
pub use spec::{BenchmarkSpec, Provenance, ReportSpec};
pub use study::{run_study, StudyConfig, StudyMetrics, StudyPaths, StudySettings};
pub use study_report::{study_report, StudyReportSpec};
pub use text_eval::{evaluate_text, TextEvalConfig, TextEvalMetrics, TextEvalPaths};
pub use text_report::{text_report, TextReportSpec};
