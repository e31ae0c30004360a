//! What the report stages read: the benchmarks, their runs and the provenance shown with them.

use crate::evaluate::StepStudy;
use crate::experiment::HeadlineConfig;
use acpo_core::layout::Layout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One benchmark of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// Benchmark name (`results/eval/<name>/`).
    pub name: String,
    /// Prepared dataset it uses (`data/prepared/<dataset>/`).
    pub dataset: String,
    /// Fine-tuning runs evaluated (the base is always included).
    pub runs: Vec<String>,
    /// Sampler-steps studies of this benchmark by name (`results/eval-steps/<name>/<run>/`),
    /// shown beside the main evaluation in `<benchmark>/sampler_steps.{csv,md}`.
    #[serde(default)]
    pub step_studies: BTreeMap<String, StepStudy>,
}

/// Provenance shown in `index.html`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Provenance {
    pub git_revision: String,
    pub acpo_version: String,
    pub profile: String,
    /// `pipeline.lock` (read as JSON: stage keys, params, wall time, peak memory).
    pub lock: PathBuf,
    /// The params the aggregate stage itself read.
    pub params: serde_json::Value,
}

/// Everything `aggregate` reads.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    /// Directory the relative paths below are resolved against (the pipeline root).
    pub root: PathBuf,
    /// `reports/`.
    pub out_dir: PathBuf,
    pub benchmarks: Vec<BenchmarkSpec>,
    pub provenance: Provenance,
    /// The TTF for plot text.
    pub font: PathBuf,
    /// What the generated headline tests (params `report.headline`).
    pub headline: HeadlineConfig,
}

impl ReportSpec {
    /// Where the report finds its inputs: the artifact layout under `root`.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.root)
    }

    /// The scores that fine-tuning maximised: the guidance and the judges that run it.
    pub fn optimised(&self) -> Vec<String> {
        std::iter::once("guidance".to_string())
            .chain(self.headline.not_held_out.iter().cloned())
            .collect()
    }
}
