//! `params.yaml`, profiles and `-S key=value` overrides.
//!
//! `params.yaml` holds the default (`cpu`) profile. `--profile P` deep-merges
//! `profiles/P.yaml` on top (an empty or comment-only overlay is valid); every key an
//! overlay sets must already exist in `params.yaml`, so a typo cannot silently add a
//! param nobody reads. `-S dotted.key=value` then replaces one existing key, the value
//! parsed as YAML (`-S train.lr=1e-4`, `-S data.names=[a,b]`).

use crate::error::{Error, Result};
use crate::yaml;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The name of the default profile (`params.yaml` alone).
pub const DEFAULT_PROFILE: &str = "cpu";
/// The params file next to `pipeline.yaml`.
pub const PARAMS_FILE: &str = "params.yaml";
/// The directory of profile overlays.
pub const PROFILES_DIR: &str = "profiles";

/// Resolved params: `params.yaml` + profile overlay + overrides.
#[derive(Debug, Clone)]
pub struct Params {
    values: Value,
    profile: String,
    file: PathBuf,
}

impl Params {
    /// Resolves the params of `root` for `profile` with `overrides` (`key=value` strings).
    pub fn load(root: &Path, profile: &str, overrides: &[String]) -> Result<Params> {
        let file = root.join(PARAMS_FILE);
        let text = if file.exists() {
            Some(yaml::read_text(&file, Path::new(PARAMS_FILE))?)
        } else {
            None
        };
        let rel = overlay_path(profile);
        let overlay = root.join(&rel);
        let overlay = if overlay.exists() {
            Some(yaml::read_text(&overlay, &rel)?)
        } else {
            None
        };
        Self::from_texts(text.as_deref(), overlay.as_deref(), profile, overrides)
    }

    /// [`Params::load`] from the texts of `params.yaml` and of the profile's overlay (`None`:
    /// the file does not exist), e.g. as a git revision has them.
    pub fn from_texts(
        params: Option<&str>,
        overlay: Option<&str>,
        profile: &str,
        overrides: &[String],
    ) -> Result<Params> {
        let mut values = match params {
            Some(text) => yaml::value_from_str(Path::new(PARAMS_FILE), text)?,
            None => Value::Null,
        };
        if values.is_null() {
            values = Value::Object(Map::new());
        }
        if !values.is_object() {
            return Err(Error::Params {
                file: PathBuf::from(PARAMS_FILE),
                message: "expected a mapping of params at the top level".into(),
            });
        }
        let rel = overlay_path(profile);
        if let Some(text) = overlay {
            let over = yaml::value_from_str(&rel, text)?;
            match over {
                Value::Null => {}
                Value::Object(_) => merge(&mut values, over, "", &rel)?,
                _ => {
                    return Err(Error::Params {
                        file: rel,
                        message: "expected a mapping of params at the top level".into(),
                    })
                }
            }
        } else if profile != DEFAULT_PROFILE {
            return Err(Error::Usage(format!(
                "unknown profile `{profile}`: {} does not exist",
                rel.display()
            )));
        }
        let mut params = Params {
            values,
            profile: profile.to_string(),
            file: PathBuf::from(PARAMS_FILE),
        };
        for o in overrides {
            params.set_override(o)?;
        }
        Ok(params)
    }

    /// Builds params directly from a value (tests, stage-side fallbacks).
    pub fn from_value(values: Value, profile: &str) -> Params {
        Params {
            values,
            profile: profile.to_string(),
            file: PathBuf::from(PARAMS_FILE),
        }
    }

    /// The profile these params were resolved for.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// The whole resolved tree.
    pub fn values(&self) -> &Value {
        &self.values
    }

    /// Looks up a dotted key (`train.lr`); `None` when any part is missing.
    pub fn get(&self, dotted: &str) -> Option<&Value> {
        lookup(&self.values, dotted)
    }

    /// Looks up a dotted key, or an error naming the key, the file and the profile.
    pub fn require(&self, dotted: &str) -> Result<&Value> {
        self.get(dotted).ok_or_else(|| Error::Params {
            file: self.file.clone(),
            message: format!(
                "param `{dotted}` is not defined (profile `{}`)",
                self.profile
            ),
        })
    }

    fn set_override(&mut self, spec: &str) -> Result<()> {
        let (key, raw) = spec
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("-S `{spec}`: expected `dotted.key=value`")))?;
        let key = key.trim();
        let value = if raw.trim().is_empty() {
            Value::String(String::new())
        } else {
            yaml::value_from_str(Path::new("-S"), raw)
                .map_err(|e| Error::Usage(format!("-S `{spec}`: value is not YAML: {e}")))?
        };
        let slot = lookup_mut(&mut self.values, key).ok_or_else(|| {
            Error::Usage(format!(
                "-S `{spec}`: param `{key}` is not defined in {} (profile `{}`)",
                self.file.display(),
                self.profile
            ))
        })?;
        *slot = value;
        Ok(())
    }
}

/// `profiles/<profile>.yaml`, relative to the pipeline directory.
pub fn overlay_path(profile: &str) -> PathBuf {
    PathBuf::from(PROFILES_DIR).join(format!("{profile}.yaml"))
}

/// A tree flattened to its leaves: `dotted.key -> value` (list elements stay one value, as
/// a param or metric that is a list is one thing to compare).
pub fn flatten(v: &Value) -> std::collections::BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() || prefix.is_empty() => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// The leaves (dotted keys under the compared values) whose values differ between `old` and
/// `new`, each with its old and new value (`None`: absent on that side).
pub fn changed_leaves(old: &Value, new: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let (a, b) = (flatten(old), flatten(new));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned()))
        .collect()
}

/// [`lookup`] in a mapping (the first part of `dotted` is a key of `map`).
pub fn lookup_map<'a>(map: &'a Map<String, Value>, dotted: &str) -> Option<&'a Value> {
    let (head, tail) = match dotted.split_once('.') {
        Some((h, t)) => (h, Some(t)),
        None => (dotted, None),
    };
    let v = map.get(head)?;
    match tail {
        None => Some(v),
        Some(t) => lookup(v, t),
    }
}

/// Looks up a dotted key in a JSON tree.
pub fn lookup<'a>(root: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = root;
    for part in dotted.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn lookup_mut<'a>(root: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    let mut cur = root;
    for part in dotted.split('.') {
        cur = match cur {
            Value::Object(m) => m.get_mut(part)?,
            Value::Array(a) => a.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Deep merge of an overlay: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value, prefix: &str, file: &Path) -> Result<()> {
    match over {
        Value::Object(om) => {
            let Value::Object(bm) = base else {
                *base = Value::Object(om);
                return Ok(());
            };
            for (k, v) in om {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match bm.get_mut(&k) {
                    Some(slot) => merge(slot, v, &path, file)?,
                    None => {
                        return Err(Error::Params {
                            file: file.to_path_buf(),
                            message: format!(
                                "sets `{path}`, which is not defined in {PARAMS_FILE} \
                                 (a profile may only change existing params)"
                            ),
                        })
                    }
                }
            }
            Ok(())
        }
        other => {
            *base = other;
            Ok(())
        }
    }
}

/// Canonical JSON: keys sorted, no whitespace, regardless of serde_json's `preserve_order`.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn profile_overlay_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "params.yaml",
            "train:\n  lr: 0.1\n  steps: 10\nname: x\n",
        );
        write(d.path(), "profiles/cpu.yaml", "# empty\n");
        write(d.path(), "profiles/smoke.yaml", "train:\n  steps: 2\n");
        let p = Params::load(d.path(), "cpu", &[]).unwrap();
        assert_eq!(p.get("train.steps"), Some(&json!(10)));
        let p = Params::load(d.path(), "smoke", &["train.lr=1e-3".into()]).unwrap();
        assert_eq!(p.get("train.steps"), Some(&json!(2)));
        assert_eq!(p.get("train.lr"), Some(&json!(0.001)));
        assert_eq!(p.get("name"), Some(&json!("x")));
        let e = Params::load(d.path(), "cpu", &["train.nope=1".into()]).unwrap_err();
        assert!(e.to_string().contains("train.nope"), "{e}");
        let e = Params::load(d.path(), "paper", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown profile `paper`"), "{e}");
    }

    #[test]
    fn overlay_may_not_add_keys() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "params.yaml", "a: 1\n");
        write(d.path(), "profiles/smoke.yaml", "b: 2\n");
        let e = Params::load(d.path(), "smoke", &[]).unwrap_err();
        assert!(e.to_string().contains("sets `b`"), "{e}");
    }

    #[test]
    fn changed_leaves_name_only_what_changed() {
        let old = json!({"a": {"lr": 1, "steps": 2, "names": [1, 2]}, "b": 1});
        let new = json!({"a": {"lr": 3, "steps": 2, "names": [1]}, "c": 1});
        assert_eq!(
            changed_leaves(&old, &new),
            vec![
                ("a.lr".to_string(), Some(json!(1)), Some(json!(3))),
                ("a.names".to_string(), Some(json!([1, 2])), Some(json!([1]))),
                ("b".to_string(), Some(json!(1)), None),
                ("c".to_string(), None, Some(json!(1))),
            ]
        );
    }

    #[test]
    fn from_texts_matches_load() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "params.yaml", "a:\n  b: 1\n");
        write(d.path(), "profiles/smoke.yaml", "a:\n  b: 2\n");
        let on_disk = Params::load(d.path(), "smoke", &[]).unwrap();
        let texts =
            Params::from_texts(Some("a:\n  b: 1\n"), Some("a:\n  b: 2\n"), "smoke", &[]).unwrap();
        assert_eq!(on_disk.values(), texts.values());
        assert!(Params::from_texts(None, None, "smoke", &[]).is_err());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v = json!({"b": 1, "a": [1, {"d": 2, "c": "x"}]});
        assert_eq!(canonical_json(&v), r#"{"a":[1,{"c":"x","d":2}],"b":1}"#);
    }
}
