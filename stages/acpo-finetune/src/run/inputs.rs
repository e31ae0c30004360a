//! What a run reads: its paths, the base's parameters and the base-quality gate.

use super::config::FinetuneConfig;
use super::files::io_err;
use crate::text::TextInputs;
use crate::{FinetuneError, Result};
use acpo_core::layout::{Artifact, Layout, Model};
use acpo_diffusion::BenchmarkParams;
use std::path::{Path, PathBuf};

/// Where a run reads and writes.
#[derive(Clone, Debug)]
pub struct FinetunePaths {
    /// `results/base/<benchmark>/`.
    pub base_dir: PathBuf,
    /// `data/prepared/<benchmark>/`.
    pub data_dir: PathBuf,
    /// `results/finetune/<benchmark>/<run>/`.
    pub out_dir: PathBuf,
    /// `CNNIQA-LIVE.safetensors`.
    pub guidance: PathBuf,
    /// `judges.yaml` (needed when `probe.samples > 0` and `probe.judges` is not empty).
    pub judges: PathBuf,
    /// The base's evaluation, read only when `base_max_kid` is set.
    pub base_eval: Option<BaseEval>,
    /// A run on prompts: the prompt sets and the base's captions (see [`crate::text`]).
    pub text: Option<TextInputs>,
}

/// Where the base-quality gate reads the base's KID; its errors name the stages that make
/// the two.
#[derive(Clone, Debug)]
pub struct BaseEval {
    /// `results/eval/<benchmark>/base/quality.json` (FID/KID of the base's evaluation).
    pub quality: Artifact,
    /// The base model, `results/base/<benchmark>/` (retrained when its KID is too high).
    pub base: Artifact,
}

impl BaseEval {
    /// The gate's inputs for the base of `benchmark` where `layout` puts them.
    pub fn new(layout: &Layout, benchmark: &str) -> BaseEval {
        let model = Model::Bench(benchmark);
        BaseEval {
            quality: layout.eval(model, "base").file("quality.json"),
            base: layout.base(model),
        }
    }
}

/// Run controls that are not part of the result.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Ignore an existing checkpoint.
    pub fresh: bool,
    /// Stop (with a checkpoint, without final outputs) once this many steps are done: for
    /// time-sliced runs and the resume test.
    pub stop_after: Option<usize>,
}

pub(crate) fn diffusion_err(e: acpo_diffusion::DiffusionError) -> FinetuneError {
    FinetuneError::config("base model / data", e.to_string())
}

/// Read `base_dir/config.json` (acpo-diffusion's `BenchmarkParams`).
pub fn load_base_params(base_dir: &Path) -> Result<BenchmarkParams> {
    let path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| FinetuneError::BadFile {
        path: path.clone(),
        msg: format!("not a train-base config.json: {e}"),
    })
}

/// The base-quality gate: with `base_max_kid` set, the base's KID (its `base_quality` at the
/// larger sample count when the evaluation has one, else `fid_kid`) must be at most the limit.
pub fn check_base_quality(cfg: &FinetuneConfig, paths: &FinetunePaths) -> Result<()> {
    let Some(limit) = cfg.base_max_kid else {
        return Ok(());
    };
    let base_dir = paths.base_dir.display().to_string();
    let refuse = |what: String, fix: &str| FinetuneError::BaseQuality {
        base: base_dir.clone(),
        what,
        limit,
        fix: fix.to_string(),
    };
    let Some(BaseEval { quality, base }) = &paths.base_eval else {
        return Err(refuse(
            "has no evaluation to read its KID from".into(),
            "give the stage the base's evaluation",
        ));
    };
    let (path, fix) = (&quality.path, &quality.fix());
    let text = std::fs::read_to_string(path).map_err(|e| {
        refuse(
            format!("has no readable evaluation ({}: {e})", path.display()),
            fix,
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| FinetuneError::BadFile {
        path: path.clone(),
        msg: format!("line {}: {e}", e.line()),
    })?;
    let (kid, n) = ["base_quality", "fid_kid"]
        .iter()
        .find_map(|k| {
            let kid = v.get(k)?.get("kid")?;
            Some((
                kid.get("mean")?.as_f64()?,
                kid.get("n")?.as_u64().unwrap_or(0),
            ))
        })
        .ok_or_else(|| {
            refuse(
                format!(
                    "has no KID in {} (evaluated without Inception?)",
                    path.display()
                ),
                fix,
            )
        })?;
    if kid.is_nan() || kid > limit {
        return Err(refuse(
            format!("has KID {kid:.4} on {n} samples, above the limit"),
            &format!("{} (with more training steps), then {fix}", base.fix()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    fn paths(dir: &Path, metrics: Option<&str>) -> FinetunePaths {
        let gate = BaseEval::new(&Layout::new(dir), "anime32");
        if let Some(text) = metrics {
            std::fs::create_dir_all(gate.quality.path.parent().unwrap()).unwrap();
            std::fs::write(&gate.quality.path, text).unwrap();
        }
        FinetunePaths {
            base_dir: PathBuf::from("results/base/anime32"),
            data_dir: dir.to_path_buf(),
            out_dir: dir.join("out"),
            guidance: dir.join("g"),
            judges: dir.join("j"),
            base_eval: Some(gate),
            text: None,
        }
    }

    fn gated(limit: Option<f64>) -> FinetuneConfig {
        FinetuneConfig {
            base_max_kid: limit,
            ..FinetuneConfig::default()
        }
    }

    const EVAL: &str = r#"{"fid_kid": {"kid": {"mean": 0.30, "n": 256}},
                          "base_quality": {"kid": {"mean": 0.08, "n": 1000}}}"#;

    #[test]
    fn the_gate_is_off_by_default_and_reads_nothing() {
        let d = tempfile::tempdir().unwrap();
        check_base_quality(&gated(None), &paths(d.path(), None)).unwrap();
    }

    #[test]
    fn the_gate_uses_the_larger_sample_kid_when_there_is_one() {
        let d = tempfile::tempdir().unwrap();
        check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some(EVAL))).unwrap();
        let only_small = r#"{"fid_kid": {"kid": {"mean": 0.30, "n": 256}}}"#;
        let e = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some(only_small)));
        assert!(matches!(e, Err(FinetuneError::BaseQuality { .. })), "{e:?}");
    }

    #[test]
    fn a_poor_base_is_refused_naming_base_kid_limit_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let e = check_base_quality(&gated(Some(0.05)), &paths(d.path(), Some(EVAL))).unwrap_err();
        assert!(e.is_bad_input());
        assert_eq!(
            e.to_string(),
            "base `results/base/anime32` has KID 0.0800 on 1000 samples, above the limit \
             (finetune.base_max_kid = 0.05): fine-tuning a base that does not generate images \
             tests nothing; retrain or re-evaluate it: acpo repro train-base@anime32 (with more \
             training steps), then acpo repro evaluate-base@anime32"
        );
    }

    #[test]
    fn a_missing_evaluation_names_the_command_that_makes_it() {
        let d = tempfile::tempdir().unwrap();
        let e = check_base_quality(&gated(Some(0.1)), &paths(d.path(), None)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no readable evaluation"), "{msg}");
        assert!(msg.ends_with("acpo repro evaluate-base@anime32"), "{msg}");
        let no_kid = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some("{}")));
        assert!(no_kid.unwrap_err().to_string().contains("has no KID"));
        let bad = check_base_quality(&gated(Some(0.1)), &paths(d.path(), Some("{")));
        assert!(matches!(bad, Err(FinetuneError::BadFile { .. })));
    }
}
