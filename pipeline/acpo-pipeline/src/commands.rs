//! The read-only engine commands (`status`, `dag`, `explain`, `cache verify`) and `gc`;
//! `metrics` and `params diff` are [`crate::metrics`].
//! Each returns text for the CLI to print.

use crate::error::Result;
use crate::params::canonical_json;
use crate::workspace::{Reason, Workspace};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

/// One stage in `acpo status`.
#[derive(Debug, Clone)]
pub struct StageStatus {
    pub name: String,
    /// Empty when up to date.
    pub reasons: Vec<Reason>,
    /// DVC `frozen: true`: not checked.
    pub frozen: bool,
    /// Whether the remote asked about has this stage's current key (`None`: none asked).
    pub on_remote: Option<bool>,
}

/// Status of the selected stages (all when `targets` is empty), in topological order; with
/// a `remote`, also whether it has each stage's current key.
pub fn status(
    ws: &mut Workspace,
    targets: &[String],
    remote: Option<&dyn crate::remote::Store>,
) -> Result<Vec<StageStatus>> {
    let on_remote: Option<BTreeSet<String>> = match remote {
        None => None,
        Some(r) => Some(r.list_runs()?.into_iter().collect()),
    };
    let sel = ws.pipeline.select(targets, false, false)?;
    let mut stale = vec![false; ws.pipeline.stages.len()];
    let mut out = Vec::new();
    for &i in &sel {
        if ws.pipeline.stages[i].frozen {
            out.push(StageStatus {
                name: ws.pipeline.stages[i].name.clone(),
                reasons: Vec::new(),
                frozen: true,
                on_remote: None,
            });
            continue;
        }
        let mut st = ws.state(i)?;
        // A missing input is a state to report (before `just setup`, say), not an error.
        let missing = ws.missing_deps(i).into_iter();
        st.reasons
            .extend(missing.map(|path| Reason::DepMissing { path }));
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
            frozen: false,
            on_remote: on_remote.as_ref().map(|keys| keys.contains(&st.key)),
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
        if st.frozen {
            let _ = writeln!(s, "{}: frozen (not checked)", st.name);
        } else if st.reasons.is_empty() {
            let _ = writeln!(s, "{}: up to date", st.name);
        } else {
            let _ = writeln!(s, "{}: changed", st.name);
            for r in &st.reasons {
                let _ = writeln!(s, "    {r}");
            }
        }
        match st.on_remote {
            Some(true) => {
                let _ = writeln!(s, "    remote: has this key");
            }
            Some(false) => {
                let _ = writeln!(s, "    remote: does not have this key");
            }
            None => {}
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

/// What the pipeline file sets that acpo reads but does not act on (DVC fields), one line
/// each; empty when nothing is.
pub fn ignored(ws: &Workspace) -> String {
    let p = &ws.pipeline;
    let mut lines: Vec<String> = p.ignored.clone();
    for st in &p.stages {
        lines.extend(st.ignored.iter().map(|x| format!("stage {}: {x}", st.name)));
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "read from {} but not acted on:\n",
        p.file
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    for l in lines {
        let _ = writeln!(s, "    {l}");
    }
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
                Some(h) if h.kind == "lock-part" => {
                    let _ = writeln!(
                        s,
                        "    {p}: {} sha256:{} ({} lock entries)",
                        h.kind, h.hash, h.files
                    );
                }
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
