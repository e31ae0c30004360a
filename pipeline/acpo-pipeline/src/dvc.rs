//! The forms of DVC 3's `dvc.yaml` beyond plain paths and dotted param keys: outputs as
//! `- path: {flags}`, params from other files (`- other.yaml: [a, b]`), `vars` (files or
//! mappings of values for `${...}`), and the fields acpo reads but does not act on, which it
//! names (`acpo dag`) instead of dropping them in silence.
//!
//! What acts: an output's `cache: false` (the stage is neither stored in nor restored from
//! the run cache), params from other files (their values enter the stage key as
//! `file:key`), `vars`. What is kept and listed as not acted on: the other output flags
//! (`persist`, `checkpoint`, `remote`, `push`, `desc`, `type`, `labels`, `meta`, the plot
//! options), a stage's `meta`, and the top-level `artifacts`, `plots` and `params`.

use crate::error::Result;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// An output (or metrics or plots file) as written: a path, or a one-key mapping from the
/// path to its flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawOut {
    Path(String),
    Flags(BTreeMap<String, Option<OutFlags>>),
}

/// DVC's output flags (and the plot options, which share the form).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutFlags {
    pub cache: Option<bool>,
    pub persist: Option<Value>,
    pub checkpoint: Option<Value>,
    pub desc: Option<Value>,
    #[serde(rename = "type")]
    pub type_: Option<Value>,
    pub labels: Option<Value>,
    pub meta: Option<Value>,
    pub remote: Option<Value>,
    pub push: Option<Value>,
    pub x: Option<Value>,
    pub y: Option<Value>,
    pub x_label: Option<Value>,
    pub y_label: Option<Value>,
    pub title: Option<Value>,
    pub header: Option<Value>,
    pub template: Option<Value>,
}

impl OutFlags {
    /// The flags that are set but not acted on, by name.
    fn ignored(&self) -> Vec<&'static str> {
        let all: [(&'static str, bool); 15] = [
            ("persist", self.persist.is_some()),
            ("checkpoint", self.checkpoint.is_some()),
            ("desc", self.desc.is_some()),
            ("type", self.type_.is_some()),
            ("labels", self.labels.is_some()),
            ("meta", self.meta.is_some()),
            ("remote", self.remote.is_some()),
            ("push", self.push.is_some()),
            ("x", self.x.is_some()),
            ("y", self.y.is_some()),
            ("x_label", self.x_label.is_some()),
            ("y_label", self.y_label.is_some()),
            ("title", self.title.is_some()),
            ("header", self.header.is_some()),
            ("template", self.template.is_some()),
        ];
        all.iter()
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// A list of outputs split into plain paths, the paths marked `cache: false`, and a note for
/// every flag not acted on (`outs[model.pkl]: remote, push`).
#[derive(Debug)]
pub struct Outs {
    pub paths: Vec<String>,
    pub uncached: Vec<String>,
    pub ignored: Vec<String>,
}

/// Splits `list` (the stage field `what`) into paths and flags; a mapping entry must have
/// exactly one key.
pub fn outs(list: &[RawOut], what: &str) -> std::result::Result<Outs, String> {
    let mut o = Outs {
        paths: Vec::new(),
        uncached: Vec::new(),
        ignored: Vec::new(),
    };
    for entry in list {
        match entry {
            RawOut::Path(p) => o.paths.push(p.clone()),
            RawOut::Flags(m) => {
                if m.len() != 1 {
                    return Err(format!(
                        "an entry of `{what}` must be a path or one `path: {{flags}}` mapping, \
                         not {} keys",
                        m.len()
                    ));
                }
                let (path, flags) = m.iter().next().expect("one entry");
                o.paths.push(path.clone());
                let flags = flags.clone().unwrap_or_default();
                if flags.cache == Some(false) {
                    o.uncached.push(path.clone());
                }
                let ignored = flags.ignored();
                if !ignored.is_empty() {
                    o.ignored
                        .push(format!("{what}[{path}]: {}", ignored.join(", ")));
                }
            }
        }
    }
    Ok(o)
}

/// A param entry as written: a dotted key of `params.yaml`, or a one-key mapping from another
/// params file to its keys (null: every top-level key of the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawParam {
    Key(String),
    File(BTreeMap<String, Option<Vec<String>>>),
}

/// Reads a YAML or JSON file of values (`vars` and params files), relative to `dir`.
pub fn read_values(root: &Path, rel: &str) -> Result<Value> {
    let path = root.join(rel);
    let text = crate::yaml::read_text(&path, Path::new(rel))?;
    crate::yaml::value_from_str(Path::new(rel), &text)
}

/// The values of the listed `keys` (dotted) of params file `rel`, or of all its top-level
/// keys, named `rel:key` as they enter the stage key.
pub fn file_params(
    root: &Path,
    rel: &str,
    keys: Option<&[String]>,
) -> std::result::Result<BTreeMap<String, Value>, String> {
    let v = read_values(root, rel).map_err(|e| format!("params file: {e}"))?;
    let mut out = BTreeMap::new();
    match keys {
        None => {
            let Value::Object(m) = v else {
                return Err(format!("params file `{rel}` is not a mapping"));
            };
            for (k, x) in m {
                out.insert(format!("{rel}:{k}"), x);
            }
        }
        Some(keys) => {
            for k in keys {
                let x = crate::params::lookup(&v, k)
                    .ok_or_else(|| format!("param `{k}` is not defined in `{rel}`"))?;
                out.insert(format!("{rel}:{k}"), x.clone());
            }
        }
    }
    Ok(out)
}

/// The values of a `vars` list: each entry a mapping of values, or a file (`file.yaml`, or
/// `file.yaml:a,b` for some of its top-level keys), merged in order. A key given twice, or
/// one that `params.yaml` already has (`taken`), is an error, as in DVC.
pub fn vars(
    root: &Path,
    entries: &[Value],
    taken: &dyn Fn(&str) -> bool,
) -> std::result::Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for e in entries {
        let values: Map<String, Value> = match e {
            Value::Object(m) => m.clone(),
            Value::String(spec) => {
                let (file, keys) = match spec.split_once(':') {
                    Some((f, k)) => (f, Some(k)),
                    None => (spec.as_str(), None),
                };
                let v = read_values(root, file).map_err(|e| format!("vars file: {e}"))?;
                let Value::Object(m) = v else {
                    return Err(format!("vars file `{file}` is not a mapping"));
                };
                match keys {
                    None => m,
                    Some(keys) => {
                        let mut picked = Map::new();
                        for k in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                            let x = m
                                .get(k)
                                .ok_or_else(|| format!("vars: `{k}` is not defined in `{file}`"))?;
                            picked.insert(k.to_string(), x.clone());
                        }
                        picked
                    }
                }
            }
            other => {
                return Err(format!(
                    "vars entries must be a file name or a mapping, not `{other}`"
                ))
            }
        };
        for (k, v) in values {
            if taken(&k) {
                return Err(format!(
                    "vars: `{k}` is also a param of params.yaml; a name may come from one place only"
                ));
            }
            if out.insert(k.clone(), v).is_some() {
                return Err(format!("vars: `{k}` is given twice"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn out_flags_split_into_paths_uncached_and_ignored() {
        let list: Vec<RawOut> = serde_json::from_value(json!([
            "a.txt",
            {"model.pkl": {"cache": false, "remote": "s3", "push": false}},
            {"m.json": null}
        ]))
        .unwrap();
        let o = outs(&list, "outs").unwrap();
        assert_eq!(o.paths, ["a.txt", "model.pkl", "m.json"]);
        assert_eq!(o.uncached, ["model.pkl"]);
        assert_eq!(o.ignored, ["outs[model.pkl]: remote, push"]);
        let two: Vec<RawOut> = serde_json::from_value(json!([{"a": null, "b": null}])).unwrap();
        assert!(outs(&two, "outs").unwrap_err().contains("not 2 keys"));
        let bad: std::result::Result<Vec<RawOut>, _> =
            serde_json::from_value(json!([{"a": {"cahce": false}}]));
        assert!(bad.is_err(), "an unknown flag is refused");
    }

    #[test]
    fn vars_merge_files_and_mappings_and_refuse_clashes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("v.yaml"), "a: 1\nb: {c: 2}\nz: 9\n").unwrap();
        let none = |_: &str| false;
        let m = vars(d.path(), &[json!("v.yaml:a,b"), json!({"d": "x"})], &none).unwrap();
        assert_eq!(Value::Object(m), json!({"a": 1, "b": {"c": 2}, "d": "x"}));
        let e = vars(d.path(), &[json!("v.yaml"), json!({"a": 2})], &none).unwrap_err();
        assert!(e.contains("`a` is given twice"), "{e}");
        let e = vars(d.path(), &[json!({"lr": 1})], &|k| k == "lr").unwrap_err();
        assert!(e.contains("also a param of params.yaml"), "{e}");
        let e = vars(d.path(), &[json!("nope.yaml")], &none).unwrap_err();
        assert!(e.contains("nope.yaml"), "{e}");
    }

    #[test]
    fn file_params_are_named_by_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("p2.yaml"), "x: 1\ny: {z: 2}\n").unwrap();
        let some = file_params(d.path(), "p2.yaml", Some(&["y.z".to_string()])).unwrap();
        assert_eq!(
            some,
            BTreeMap::from([("p2.yaml:y.z".to_string(), json!(2))])
        );
        let all = file_params(d.path(), "p2.yaml", None).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["p2.yaml:x", "p2.yaml:y"]);
        let e = file_params(d.path(), "p2.yaml", Some(&["q".to_string()])).unwrap_err();
        assert!(e.contains("`q` is not defined in `p2.yaml`"), "{e}");
    }
}
