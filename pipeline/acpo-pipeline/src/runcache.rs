//! The run cache: stage key -> outputs, content-addressed under `results/.runcache-v1/`.
//!
//! `objects/ab/cdef...` holds file contents by SHA-256 (shared between runs);
//! `runs/<key>.json` lists a run's outputs as trees of (path, hash). Restoring a run copies
//! objects back into place (copies, not hard links, so a stage that later rewrites a file
//! in place cannot corrupt the cache).

use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, tmp_name, write_atomic};
use crate::hash::{HashCache, PathHash, TreeEntry};
use crate::key::KeyInputs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The run cache directory, relative to the pipeline directory (versioned name).
pub const RUNCACHE_DIR: &str = "results/.runcache-v1";

/// One output of a cached run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedOut {
    pub hash: PathHash,
    pub entries: Vec<TreeEntry>,
}

/// A cached run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunEntry {
    pub stage: String,
    pub key: String,
    pub profile: String,
    pub inputs: KeyInputs,
    pub outs: BTreeMap<String, CachedOut>,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    pub created_unix: u64,
}

/// Handle on the run cache of one pipeline directory.
#[derive(Debug, Clone)]
pub struct RunCache {
    dir: PathBuf,
}

impl RunCache {
    pub fn new(root: &Path) -> RunCache {
        RunCache {
            dir: root.join(RUNCACHE_DIR),
        }
    }

    fn run_path(&self, key: &str) -> PathBuf {
        self.dir.join("runs").join(format!("{key}.json"))
    }

    fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.dir.join("objects").join(a).join(b)
    }

    /// The cached run of `key`, if every object it needs is present.
    pub fn get(&self, key: &str) -> Option<RunEntry> {
        let bytes = std::fs::read(self.run_path(key)).ok()?;
        let entry: RunEntry = serde_json::from_slice(&bytes).ok()?;
        let complete = entry.outs.values().all(|o| {
            o.entries
                .iter()
                .filter(|e| e.kind == "file")
                .all(|e| self.object_path(&e.hash).is_file())
        });
        complete.then_some(entry)
    }

    /// Stores the outputs of a finished run (copying new objects in).
    pub fn put(&self, root: &Path, entry: &RunEntry) -> Result<()> {
        for (out, co) in &entry.outs {
            for e in co.entries.iter().filter(|e| e.kind == "file") {
                let obj = self.object_path(&e.hash);
                if obj.is_file() {
                    continue;
                }
                let src = if e.path.is_empty() {
                    root.join(out)
                } else {
                    root.join(out).join(&e.path)
                };
                ensure_parent(&obj)?;
                let tmp = tmp_name(&obj);
                std::fs::copy(&src, &tmp).map_err(|err| Error::io(&src, err))?;
                std::fs::rename(&tmp, &obj).map_err(|err| Error::io(&obj, err))?;
            }
        }
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Error::Corrupt {
            path: self.run_path(&entry.key),
            message: e.to_string(),
        })?;
        write_atomic(&self.run_path(&entry.key), &bytes)
    }

    /// Puts the outputs of `entry` back into the workspace (each built aside, then renamed).
    pub fn restore(&self, root: &Path, entry: &RunEntry, hashes: &mut HashCache) -> Result<()> {
        for (out, co) in &entry.outs {
            let dst = root.join(out);
            let tmp = tmp_name(&dst);
            remove_path(&tmp)?;
            ensure_parent(&dst)?;
            if co.hash.kind == "file" {
                let e = &co.entries[0];
                std::fs::copy(self.object_path(&e.hash), &tmp)
                    .map_err(|err| Error::io(&tmp, err))?;
            } else {
                std::fs::create_dir_all(&tmp).map_err(|err| Error::io(&tmp, err))?;
                for e in &co.entries {
                    let p = tmp.join(&e.path);
                    if e.kind == "dir" {
                        std::fs::create_dir_all(&p).map_err(|err| Error::io(&p, err))?;
                    } else {
                        ensure_parent(&p)?;
                        std::fs::copy(self.object_path(&e.hash), &p)
                            .map_err(|err| Error::io(&p, err))?;
                    }
                }
            }
            remove_path(&dst)?;
            std::fs::rename(&tmp, &dst).map_err(|err| Error::io(&dst, err))?;
            // Fill the stat cache so the next status need not re-read what we just wrote.
            hashes.hash_path(&dst)?;
        }
        Ok(())
    }

    /// All cached runs (unreadable entries are skipped).
    pub fn entries(&self) -> Vec<RunEntry> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("runs")) else {
            return Vec::new();
        };
        let mut v: Vec<RunEntry> = rd
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by(|a: &RunEntry, b| (a.created_unix, &a.key).cmp(&(b.created_unix, &b.key)));
        v
    }

    /// Removes runs whose key is not in `keep`, then objects no remaining run uses.
    /// Returns (runs removed, objects removed, bytes freed).
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<(usize, usize, u64)> {
        let mut used = BTreeSet::new();
        let mut runs_removed = 0;
        for e in self.entries() {
            if keep.contains(&e.key) {
                for co in e.outs.values() {
                    used.extend(co.entries.iter().map(|t| t.hash.clone()));
                }
            } else {
                runs_removed += 1;
                if !dry_run {
                    remove_path(&self.run_path(&e.key))?;
                }
            }
        }
        let (mut objects, mut bytes) = (0usize, 0u64);
        for d in walkdir::WalkDir::new(self.dir.join("objects"))
            .min_depth(2)
            .max_depth(2)
            .into_iter()
            .flatten()
        {
            let name = format!(
                "{}{}",
                d.path()
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                d.file_name().to_string_lossy()
            );
            if !used.contains(&name) {
                objects += 1;
                bytes += d.metadata().map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    remove_path(d.path())?;
                }
            }
        }
        Ok((runs_removed, objects, bytes))
    }
}
