//! `metrics show`, `metrics diff` and `params diff`, as DVC has them: tables (see
//! [`crate::table`]) of the declared metrics files' values, or of what changed against a
//! baseline: a git revision (its `pipeline.lock` names each stage's key, whose outputs the
//! run cache still holds; a metrics file committed to git is read from git) or, without a
//! revision, each stage's previous run in the run cache.

use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::params::{canonical_json, changed_leaves, flatten, overlay_path, Params, PARAMS_FILE};
use crate::runcache::RunEntry;
use crate::table::Table;
use crate::workspace::Workspace;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Reads a metrics file (JSON, YAML or CSV/TSV: its last row by column name) into flat
/// `dotted.key -> value` pairs.
pub fn read_metrics(path: &Path) -> Result<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_metrics(path, &text)
}

fn parse_metrics(path: &Path, text: &str) -> Result<BTreeMap<String, Value>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let v: Value = match ext {
        "json" => serde_json::from_str(text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            message: format!("line {} column {}: {e}", e.line(), e.column()),
        })?,
        "csv" | "tsv" => {
            let sep = if ext == "csv" { ',' } else { '\t' };
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let header: Vec<&str> = lines.next().unwrap_or("").split(sep).collect();
            let last: Vec<&str> = lines.next_back().unwrap_or("").split(sep).collect();
            let mut m = serde_json::Map::new();
            for (h, x) in header.iter().zip(last) {
                let x = x.trim();
                let v = x
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(x.to_string()));
                m.insert(h.trim().to_string(), v);
            }
            Value::Object(m)
        }
        _ => crate::yaml::value_from_str(path, text)?,
    };
    let mut flat = flatten(&v);
    flat.remove("");
    Ok(flat)
}

/// A cell for a value: numbers and booleans as JSON writes them, strings bare.
fn cell(v: Option<&Value>) -> String {
    match v {
        None => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => canonical_json(v),
    }
}

/// Whether a metric is shown without `--all`: numbers only (DVC's default), so hashes,
/// paths and notes stay out of the table.
fn shown(v: Option<&Value>, all: bool) -> bool {
    all || matches!(v, Some(Value::Number(_)))
}

/// A change as a number with six significant digits (`+0.0123457`, `-3.2e-9`).
fn change(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor() as i32;
    if (-4..6).contains(&mag) {
        let decimals = (5 - mag).max(0) as usize;
        let s = format!("{x:+.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{x:+.5e}")
    }
}

/// The declared metrics files of every stage, in pipeline order, without duplicates; with
/// `targets`, only files equal to or under one of them.
fn declared(ws: &Workspace, targets: &[String]) -> Vec<(String, String)> {
    let wanted = |m: &str| crate::pipeline::under_targets(m, targets);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for st in &ws.pipeline.stages {
        for m in &st.metrics {
            if wanted(m) && seen.insert(m.clone()) {
                out.push((st.name.clone(), m.clone()));
            }
        }
    }
    // Top-level metrics (DVC): attributed to the stage that writes them, if any.
    for m in &ws.pipeline.metrics {
        if wanted(m) && seen.insert(m.clone()) {
            let by = ws.pipeline.stages.iter().find(|s| {
                s.outs
                    .iter()
                    .any(|o| o == m || crate::pipeline::is_within(m, o))
            });
            out.push((by.map(|s| s.name.clone()).unwrap_or_default(), m.clone()));
        }
    }
    out
}

/// `metrics show`: one row per (file, metric) of the declared metrics files that exist
/// (those under `targets` when given).
pub fn metrics_show(ws: &Workspace, targets: &[String], all: bool) -> Result<Table> {
    let mut t = Table::new(&["path", "metric", "value"]);
    for (_, m) in declared(ws, targets) {
        let path = ws.root.join(&m);
        if !path.exists() {
            continue;
        }
        for (k, v) in read_metrics(&path)? {
            if shown(Some(&v), all) {
                t.push(vec![m.clone(), k, cell(Some(&v))]);
            }
        }
    }
    Ok(t)
}

/// What `metrics diff` compares the workspace with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// Each stage's most recent run in the run cache with another key.
    PreviousRun,
    /// The results recorded in `pipeline.lock` at a git revision.
    Revision(String),
}

/// `metrics diff`: per (file, metric), the baseline's value, the workspace's and the change;
/// only the metrics that differ unless `all`. Files whose baseline version cannot be found
/// (never run there, or its run cache entry collected) are listed after the table.
pub fn metrics_diff(
    ws: &Workspace,
    baseline: &Baseline,
    targets: &[String],
    all: bool,
) -> Result<(Table, Vec<String>)> {
    let old_lock = match baseline {
        Baseline::PreviousRun => None,
        Baseline::Revision(rev) => Some(lock_at(ws, rev)?),
    };
    let label = match baseline {
        Baseline::PreviousRun => "previous run".to_string(),
        Baseline::Revision(rev) => rev.clone(),
    };
    let mut t = Table::new(&["path", "metric", &label, "workspace", "change"]);
    let mut missing = Vec::new();
    let tmp = scratch_dir(ws)?;
    let entries = ws.runcache.entries();
    for (stage, m) in declared(ws, targets) {
        let path = ws.root.join(&m);
        let new = if path.exists() {
            read_metrics(&path)?
        } else {
            BTreeMap::new()
        };
        let old_run: Option<RunEntry> = match &old_lock {
            None => {
                let cur = ws.lock.stages.get(&stage).map(|e| e.key.clone());
                entries
                    .iter()
                    .rev()
                    .find(|e| e.stage == stage && Some(&e.key) != cur.as_ref())
                    .cloned()
            }
            Some((_, lock)) => lock
                .stages
                .get(&stage)
                .and_then(|e| ws.runcache.get(&e.key)),
        };
        let old = match old_run.and_then(|r| cached_metrics_file(ws, &r, &m, &tmp)) {
            Some(f) => Some(read_metrics(&f)?),
            None => match &old_lock {
                Some((commit, _)) => crate::git::show(&ws.root, commit, &m)?
                    .map(|text| parse_metrics(Path::new(&m), &text))
                    .transpose()?,
                None => None,
            },
        };
        if old.is_none() {
            missing.push(m.clone());
        }
        let old = old.unwrap_or_default();
        let keys: BTreeSet<&String> = new.keys().chain(old.keys()).collect();
        for k in keys {
            let (a, b) = (old.get(k), new.get(k));
            if !(shown(a, all) || shown(b, all)) || (a == b && !all) {
                continue;
            }
            let change = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
                (Some(x), Some(y)) => change(y - x),
                _ => "-".into(),
            };
            t.push(vec![m.clone(), k.clone(), cell(a), cell(b), change]);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok((t, missing))
}

/// `params diff`: the resolved params (profile and `-S` applied) of the workspace against
/// those of a git revision, one row per changed leaf (`all`: every leaf).
pub fn params_diff(ws: &Workspace, rev: &str, all: bool) -> Result<Table> {
    let commit = crate::git::resolve(&ws.root, rev)?;
    let profile = ws.params.profile().to_string();
    let text = crate::git::show(&ws.root, &commit, PARAMS_FILE)?;
    let overlay = crate::git::show(&ws.root, &commit, &overlay_path(&profile).to_string_lossy())?;
    let old =
        Params::from_texts(text.as_deref(), overlay.as_deref(), &profile, &[]).map_err(|e| {
            Error::Usage(format!(
                "params at `{rev}` ({}): {e}",
                &commit[..12.min(commit.len())]
            ))
        })?;
    let mut t = Table::new(&["param", rev, "workspace"]);
    if all {
        let (a, b) = (flatten(old.values()), flatten(ws.params.values()));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            t.push(vec![k.clone(), cell(a.get(k)), cell(b.get(k))]);
        }
    } else {
        for (k, a, b) in changed_leaves(old.values(), ws.params.values()) {
            t.push(vec![k, cell(a.as_ref()), cell(b.as_ref())]);
        }
    }
    Ok(t)
}

/// The commit `rev` names and the `pipeline.lock` it holds (empty when it has none).
fn lock_at(ws: &Workspace, rev: &str) -> Result<(String, Lock)> {
    let commit = crate::git::resolve(&ws.root, rev)?;
    let name = ws
        .lock_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock = match crate::git::show(&ws.root, &commit, &name)? {
        None => Lock::default(),
        Some(text) => serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: PathBuf::from(format!("{rev}:{name}")),
            message: format!("line {} column {}: {e}", e.line(), e.column()),
        })?,
    };
    Ok((commit, lock))
}

fn scratch_dir(ws: &Workspace) -> Result<PathBuf> {
    let d = ws
        .state_dir()
        .join(format!("metrics-diff.{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

/// Copies one metrics file of a cached run into `tmp` (keeping its extension); `None` when
/// the run has no such file or its object is corrupt (no value rather than a wrong one).
fn cached_metrics_file(
    ws: &Workspace,
    run: &RunEntry,
    metric: &str,
    tmp: &Path,
) -> Option<PathBuf> {
    for (out, co) in &run.outs {
        let rel = if out == metric {
            String::new()
        } else if crate::pipeline::is_within(metric, out) {
            metric[out.len() + 1..].to_string()
        } else {
            continue;
        };
        let e = co
            .entries
            .iter()
            .find(|e| e.path == rel && e.kind == "file")?;
        let dst = tmp.join(Path::new(metric).file_name()?);
        return match ws.runcache.copy_verified(&e.hash, &dst) {
            Ok(None) => Some(dst),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_keep_six_significant_digits() {
        assert_eq!(change(-90.779049349), "-90.779");
        assert_eq!(change(3.7127789304866994), "+3.71278");
        assert_eq!(change(-0.00000014806339976303207), "-1.48063e-7");
        assert_eq!(change(0.0123456789), "+0.0123457");
        assert_eq!(change(2.0), "+2");
        assert_eq!(change(1234567.0), "+1.23457e6");
        assert_eq!(change(0.0), "0");
    }

    #[test]
    fn csv_metrics_are_the_last_row() {
        let m = parse_metrics(Path::new("m.csv"), "step,loss,name\n1,0.5,a\n2,0.25,b\n").unwrap();
        assert_eq!(m["loss"], serde_json::json!(0.25));
        assert_eq!(m["name"], serde_json::json!("b"));
    }
}
