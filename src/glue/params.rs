//! How a stage command reads its parameters.
//!
//! Contract with the engine: before running a stage's `cmd`, `acpo repro`
//! writes the values of exactly the params the stage declares into a JSON
//! object `{ "<dotted.key>": <value>, ... }` and points the environment
//! variable `ACPO_PARAMS` at that file (and `ACPO_STAGE` at the stage name).
//! A stage reads only those keys, so its cache key covers everything it
//! depends on.
//!
//! Run by hand (no `ACPO_PARAMS`), a stage reads `params.yaml` in the current
//! directory with the profile named by `ACPO_PROFILE` (default `cpu`).

use acpo_pipeline::params::{Params, DEFAULT_PROFILE};
use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Where a stage's params come from.
enum Source {
    /// The engine's `ACPO_PARAMS` file: exactly the declared keys.
    Declared {
        path: String,
        stage: String,
        values: Map<String, Value>,
    },
    /// `params.yaml` (+ `ACPO_PROFILE` overlay), for stages run by hand.
    File(Params),
}

static SOURCE: OnceLock<Result<Source, String>> = OnceLock::new();

fn load_source() -> Result<Source, String> {
    if let Some(path) = std::env::var_os("ACPO_PARAMS") {
        let path = path.to_string_lossy().into_owned();
        let stage = std::env::var("ACPO_STAGE").unwrap_or_else(|_| "<unknown>".into());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("ACPO_PARAMS={path}: cannot read: {e}"))?;
        let values: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| format!("ACPO_PARAMS={path}: not a JSON object: {e}"))?;
        Ok(Source::Declared {
            path,
            stage,
            values,
        })
    } else {
        let profile = std::env::var("ACPO_PROFILE").unwrap_or_else(|_| DEFAULT_PROFILE.into());
        let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        Params::load(&cwd, &profile, &[])
            .map(Source::File)
            .map_err(|e| e.to_string())
    }
}

/// `key` itself, or a key inside a declared section (`data.cifar10.seed` when the stage
/// declares `data.cifar10`).
fn declared_lookup<'a>(values: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(v) = values.get(key) {
        return Some(v);
    }
    values.iter().find_map(|(declared, v)| {
        let rest = key.strip_prefix(declared.as_str())?.strip_prefix('.')?;
        acpo_pipeline::params::lookup(v, rest)
    })
}

/// The value of the param `key` (a dotted key of `params.yaml`, e.g. `train.lr`).
///
/// Under `acpo repro` this reads the stage's `ACPO_PARAMS` file and fails when the
/// stage did not declare `key` in its `params:` list in `pipeline.yaml` (so the
/// stage key always covers what the stage reads). Without `ACPO_PARAMS` it reads
/// `params.yaml` from the current directory (profile `ACPO_PROFILE`, default `cpu`).
pub fn stage_param<T: DeserializeOwned>(key: &str) -> anyhow::Result<T> {
    read_param(key).map_err(|e| BadParam(format!("{e:#}")).into())
}

/// A param that is missing, undeclared or of the wrong type: bad input (exit code 2).
#[derive(Debug)]
pub struct BadParam(pub String);

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadParam {}

fn read_param<T: DeserializeOwned>(key: &str) -> anyhow::Result<T> {
    let source = SOURCE
        .get_or_init(load_source)
        .as_ref()
        .map_err(|e| anyhow!("{e}"))?;
    let (value, origin) = match source {
        Source::Declared {
            path,
            stage,
            values,
        } => {
            let v = declared_lookup(values, key).ok_or_else(|| {
                anyhow!(
                    "stage `{stage}` reads param `{key}` but does not declare it \
                     (add `{key}` to the stage's `params:` in pipeline.yaml; ACPO_PARAMS={path})"
                )
            })?;
            (v, format!("stage `{stage}`"))
        }
        Source::File(params) => {
            let v = params.require(key).map_err(|e| anyhow!("{e}"))?;
            (v, format!("params.yaml (profile `{}`)", params.profile()))
        }
    };
    serde_json::from_value(value.clone())
        .with_context(|| format!("param `{key}` of {origin} has the wrong type (value {value})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declared_params_and_names_missing_ones() {
        // One process-wide source: set the env once, before the first read.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"train.lr": 0.5, "data.names": ["a", "b"], "model": {"ch": {"base": 64}}}"#,
        )
        .unwrap();
        std::env::set_var("ACPO_PARAMS", &f);
        std::env::set_var("ACPO_STAGE", "train@x");
        let lr: f64 = stage_param("train.lr").unwrap();
        assert_eq!(lr, 0.5);
        let names: Vec<String> = stage_param("data.names").unwrap();
        assert_eq!(names, ["a", "b"]);
        let base: u32 = stage_param("model.ch.base").unwrap();
        assert_eq!(base, 64);
        let e = stage_param::<u32>("train.steps").unwrap_err().to_string();
        assert!(e.contains("train@x") && e.contains("train.steps"), "{e}");
        let e = stage_param::<u32>("train.lr").unwrap_err().to_string();
        assert!(e.contains("wrong type"), "{e}");
    }
}
