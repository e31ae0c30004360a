//! Toy pipelines of shell commands in temporary directories.
#![allow(dead_code)]

use acpo_pipeline::{repro, ReproSettings, ReproSummary, Result};
use std::path::{Path, PathBuf};

pub struct Toy {
    pub dir: tempfile::TempDir,
}

impl Toy {
    pub fn new(pipeline: &str, params: &str) -> Toy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).unwrap();
        std::fs::write(dir.path().join("params.yaml"), params).unwrap();
        Toy { dir }
    }

    /// A toy pipeline in a new directory inside `parent` (so a test can watch what lies
    /// next to the pipeline directory).
    pub fn new_in(parent: &Path, pipeline: &str, params: &str) -> Toy {
        let dir = tempfile::tempdir_in(parent).unwrap();
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).unwrap();
        std::fs::write(dir.path().join("params.yaml"), params).unwrap();
        Toy { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn settings(&self) -> ReproSettings {
        ReproSettings::new(self.root())
    }

    pub fn repro(&self) -> Result<ReproSummary> {
        repro(&self.settings())
    }

    pub fn repro_with(&self, f: impl FnOnce(&mut ReproSettings)) -> Result<ReproSummary> {
        let mut s = self.settings();
        f(&mut s);
        repro(&s)
    }

    /// Number of lines in `runs.log` that a stage command appended `name` to.
    pub fn runs_of(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path("runs.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == name)
            .count()
    }
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
