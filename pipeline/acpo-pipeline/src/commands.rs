//! The read-only engine commands (`status`, `dag`, `explain`, `metrics`, `cache verify`)
//! and `gc`.
//! Each returns text for the CLI to print.

use crate::error::{Error, Result};
use crate::params::canonical_json;
use crate::workspace::{Reason, Workspace};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

/// One stage in `acpo status`.
#[derive(Debug, Clone)]
pub struct StageStatus {
    pub name: String,
    /// Empty when up to date.
    pub reasons: Vec<Reason>,
}

/// Status of the selected stages (all when `targets` is empty), in topological order.
pub fn status(ws: &mut Workspace, targets: &[String]) -> Result<Vec<StageStatus>> {
    let sel = ws.pipeline.select(targets, false, false)?;
    for &i in &sel {
        ws.check_deps(i)?;
    }
    let mut stale = vec![false; ws.pipeline.stages.len()];
    let mut out = Vec::new();
    for &i in &sel {
        let mut st = ws.state(i)?;
        for &u in &ws.pipeline.upstream[i] {
            if stale[u] {
                st.reasons.push(Reason::Upstream {
                    stage: ws.pipeline.stages[u].name.clone(),
                });
            }
        }
        stale[i] = !st.reasons.is_empty();
        out.push(StageStatus {
            name: ws.pipeline.stages[i].name.clone(),
            reasons: st.reasons,
        });
    }
    let _ = ws.hashes.save();
    Ok(out)
}

/// Renders `status` for people.
pub fn format_status(stages: &[StageStatus]) -> String {
    let mut s = String::new();
    let changed = stages.iter().filter(|x| !x.reasons.is_empty()).count();
    for st in stages {
        if st.reasons.is_empty() {
            let _ = writeln!(s, "{}: up to date", st.name);
        } else {
            let _ = writeln!(s, "{}: changed", st.name);
            for r in &st.reasons {
                let _ = writeln!(s, "    {r}");
            }
        }
    }
    let _ = writeln!(
        s,
        "{} stage(s): {} up to date, {changed} changed",
        stages.len(),
        stages.len() - changed
    );
    s
}

/// The stage graph as text (`stage <- upstream, ...`) or a Mermaid flowchart.
pub fn dag(ws: &Workspace, mermaid: bool) -> String {
    let p = &ws.pipeline;
    let mut s = String::new();
    if mermaid {
        s.push_str("flowchart TD\n");
        for (i, st) in p.stages.iter().enumerate() {
            let _ = writeln!(s, "    s{i}[\"{}\"]", st.name);
        }
        for i in p.topo_order() {
            for &u in &p.upstream[i] {
                let _ = writeln!(s, "    s{u} --> s{i}");
            }
        }
    } else {
        for i in p.topo_order() {
            let ups: Vec<&str> = p.upstream[i]
                .iter()
                .map(|&u| p.stages[u].name.as_str())
                .collect();
            if ups.is_empty() {
                let _ = writeln!(s, "{}", p.stages[i].name);
            } else {
                let _ = writeln!(s, "{} <- {}", p.stages[i].name, ups.join(", "));
            }
        }
    }
    s
}

/// Every input of one stage's key, and how it compares with the lock.
pub fn explain(ws: &mut Workspace, name: &str) -> Result<String> {
    let idx = ws.pipeline.resolve_names(&[name.to_string()])?;
    let mut s = String::new();
    for i in idx {
        let stage = ws.pipeline.stages[i].clone();
        let st = ws.state(i)?;
        let _ = writeln!(s, "stage {} ({})", stage.name, ws.pipeline.location(i));
        if let Some(d) = &stage.desc {
            let _ = writeln!(s, "  desc: {d}");
        }
        let _ = writeln!(s, "  key: {}", st.key);
        let _ = writeln!(s, "  acpo version: {}", st.inputs.acpo_version);
        let _ = writeln!(s, "  cmd: {}", st.inputs.cmd);
        let _ = writeln!(s, "  params:");
        for (k, v) in &st.inputs.params {
            let _ = writeln!(s, "    {k} = {}", canonical_json(v));
        }
        let _ = writeln!(s, "  deps:");
        for (p, h) in &st.inputs.deps {
            match h {
                Some(h) => {
                    let _ = writeln!(
                        s,
                        "    {p}: {} sha256:{} ({} file(s), {} bytes)",
                        h.kind, h.hash, h.files, h.size
                    );
                }
                None => {
                    let _ = writeln!(s, "    {p}: missing (produced upstream)");
                }
            }
        }
        let _ = writeln!(s, "  env:");
        for (k, v) in &st.inputs.env {
            let _ = writeln!(s, "    {k} = {}", v.as_deref().unwrap_or("(unset)"));
        }
        let _ = writeln!(s, "  outs: {}", st.inputs.outs.join(", "));
        let r = &stage.resources;
        let _ = writeln!(
            s,
            "  resources: cpus {} gpus {} mem_gb {}",
            r.cpus, r.gpus, r.mem_gb
        );
        match ws.lock.stages.get(&stage.name) {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "  lock: key {} ({}), wall {:.2} s, peak memory {:.1} MiB{}",
                    e.key,
                    if e.key == st.key { "same" } else { "different" },
                    e.wall_s,
                    e.peak_rss_mib,
                    if e.restored {
                        ", restored from run cache"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(s, "  lock: never run");
            }
        }
        if st.reasons.is_empty() {
            let _ = writeln!(s, "  status: up to date");
        } else {
            let _ = writeln!(s, "  status: changed");
            for r in &st.reasons {
                let _ = writeln!(s, "    {r}");
            }
        }
        let cached = ws.runcache.get(&st.key).is_some();
        let _ = writeln!(
            s,
            "  run cache: {}",
            if cached { "has this key" } else { "no entry" }
        );
    }
    Ok(s)
}

/// Reads a metrics file (JSON, YAML or CSV) into flat `dotted.key -> value` pairs.
/// CSV: the last row, by column name.
pub fn read_metrics(path: &Path) -> Result<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let v: Value = match ext {
        "json" => serde_json::from_str(&text).map_err(|e| Error::Corrupt {
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
        _ => crate::yaml::value_from_str(path, &text)?,
    };
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// `metrics show`: every declared metrics file that exists, flattened.
pub fn metrics_show(ws: &Workspace) -> Result<String> {
    let mut s = String::new();
    for st in &ws.pipeline.stages {
        for m in &st.metrics {
            let path = ws.root.join(m);
            if !path.exists() {
                continue;
            }
            let _ = writeln!(s, "{m} ({})", st.name);
            for (k, v) in read_metrics(&path)? {
                let _ = writeln!(s, "    {k}: {}", canonical_json(&v));
            }
        }
    }
    if s.is_empty() {
        s.push_str("no metrics files yet\n");
    }
    Ok(s)
}

/// `metrics diff`: the workspace's metrics against the previous run of the same stage in
/// the run cache (the most recent cached run with a different key), with deltas.
pub fn metrics_diff(ws: &Workspace) -> Result<String> {
    let entries = ws.runcache.entries();
    let tmp = tempdir_in(&ws.state_dir())?;
    let mut s = String::new();
    for st in &ws.pipeline.stages {
        if st.metrics.is_empty() {
            continue;
        }
        let Some(cur) = ws.lock.stages.get(&st.name) else {
            continue;
        };
        let prev = entries
            .iter()
            .rev()
            .find(|e| e.stage == st.name && e.key != cur.key);
        for m in &st.metrics {
            let path = ws.root.join(m);
            if !path.exists() {
                continue;
            }
            let new = read_metrics(&path)?;
            let old = match prev.and_then(|p| old_metrics_file(ws, p, m, &tmp)) {
                Some(f) => read_metrics(&f)?,
                None => BTreeMap::new(),
            };
            let _ = writeln!(
                s,
                "{m} ({}): previous run {}",
                st.name,
                prev.map(|p| &p.key[..12]).unwrap_or("(none)")
            );
            let keys: BTreeSet<&String> = new.keys().chain(old.keys()).collect();
            for k in keys {
                let (a, b) = (old.get(k), new.get(k));
                let delta = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
                    (Some(x), Some(y)) => format!("  ({:+.6})", y - x),
                    _ => String::new(),
                };
                let show = |v: Option<&Value>| v.map(canonical_json).unwrap_or_else(|| "-".into());
                let _ = writeln!(s, "    {k}: {} -> {}{delta}", show(a), show(b));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if s.is_empty() {
        s.push_str("no metrics to compare\n");
    }
    Ok(s)
}

fn tempdir_in(state: &Path) -> Result<std::path::PathBuf> {
    let d = state.join(format!("metrics-diff.{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

/// Copies one metrics file of a cached run into `tmp` (keeping its extension).
fn old_metrics_file(
    ws: &Workspace,
    run: &crate::runcache::RunEntry,
    metric: &str,
    tmp: &Path,
) -> Option<std::path::PathBuf> {
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
        let name = Path::new(metric).file_name()?;
        let dst = tmp.join(name);
        // A corrupt object gives no previous value rather than a wrong one.
        return match ws.runcache.copy_verified(&e.hash, &dst) {
            Ok(None) => Some(dst),
            _ => None,
        };
    }
    None
}

/// `gc`: keeps the run-cache entries of the current lock, removes the rest and every
/// object no kept entry uses; clears per-run scratch files. Holds the same lock as `repro`
/// (and reads `pipeline.lock` under it), so it never removes what a running stage uses.
pub fn gc(ws: &mut Workspace, dry_run: bool) -> Result<String> {
    let _guard = ws.lock_exclusive()?;
    let keep: BTreeSet<String> = ws.lock.stages.values().map(|e| e.key.clone()).collect();
    let (runs, objects, bytes) = ws.runcache.gc(&keep, dry_run)?;
    if !dry_run {
        let _ = std::fs::remove_dir_all(ws.state_dir().join("params"));
        let _ = std::fs::remove_dir_all(ws.state_dir().join("logs"));
        let _ = ws.hashes.save();
    }
    Ok(format!(
        "{}{runs} cached run(s) and {objects} object(s) ({:.1} MiB) {}; kept {} run(s) of pipeline.lock\n",
        if dry_run { "dry run: " } else { "" },
        bytes as f64 / 1048576.0,
        if dry_run { "would be removed" } else { "removed" },
        keep.len()
    ))
}

/// `cache verify`: hashes every run-cache object of the pipeline directory `root` and
/// compares it with its name. Read-only; needs no valid pipeline.
pub fn cache_verify(root: &Path) -> Result<crate::runcache::VerifyReport> {
    crate::runcache::RunCache::new(root).verify()
}

/// Renders a `cache verify` report: one line per corrupt object, then a summary.
pub fn format_cache_verify(r: &crate::runcache::VerifyReport) -> String {
    let mut s = String::new();
    for c in &r.corrupt {
        let _ = writeln!(s, "corrupt: {c}");
    }
    let _ = writeln!(
        s,
        "{} object(s) ({:.1} MiB) checked, {} corrupt",
        r.checked,
        r.bytes as f64 / 1048576.0,
        r.corrupt.len()
    );
    if !r.corrupt.is_empty() {
        let _ = writeln!(
            s,
            "a restore that meets a corrupt object removes it and runs the stage instead; \
             `acpo repro --force STAGE` stores a good copy now"
        );
    }
    s
}

impl Workspace {
    /// Path of a run-cache object.
    pub fn runcache_object(&self, hash: &str) -> std::path::PathBuf {
        self.runcache.object_path(hash)
    }
}
