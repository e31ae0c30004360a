//! The run cache: stage key -> outputs, content-addressed under `results/.runcache-v1/`.
//!
//! `objects/ab/cdef...` holds file contents by SHA-256 (shared between runs);
//! `runs/<key>.json` lists a run's outputs as trees of (path, hash). Restoring a run copies
//! objects back into place (copies, not hard links, so a stage that later rewrites a file
//! in place cannot corrupt the cache).
//!
//! The cache verifies itself: a restore hashes every object while copying it and places
//! nothing when one does not match its name (the corrupt object is removed, so the stage
//! runs again and stores it anew); `put` rewrites an existing object whose bytes do not
//! match its name; [`RunCache::verify`] checks every object.

use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, tmp_name, write_atomic};
use crate::hash::{HashCache, PathHash, TreeEntry};
use crate::key::KeyInputs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
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

impl RunEntry {
    /// Whether the entry can be restored safely: its key and object names are SHA-256
    /// digests, its outputs are plain relative paths that are not the engine's own, and
    /// the files of a directory output are plain relative paths inside it.
    pub fn is_well_formed(&self) -> bool {
        is_digest(&self.key)
            && self.outs.iter().all(|(out, co)| {
                let entries_ok = co.entries.iter().all(|e| match e.kind.as_str() {
                    "file" => is_digest(&e.hash),
                    "dir" => true,
                    _ => false,
                });
                let shape_ok = match co.hash.kind.as_str() {
                    "file" => {
                        co.entries.len() == 1
                            && co.entries[0].kind == "file"
                            && co.entries[0].path.is_empty()
                    }
                    "dir" => co
                        .entries
                        .iter()
                        .all(|e| crate::confine::is_plain_relative(&e.path)),
                    _ => false,
                };
                crate::confine::is_plain_relative(out)
                    && !crate::confine::is_reserved(out)
                    && entries_ok
                    && shape_ok
            })
    }
}

/// Whether `s` is a SHA-256 digest as the cache names objects: 64 lower-case hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A run-cache object whose bytes do not hash to its name (or that is missing or not a
/// regular file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptObject {
    pub path: PathBuf,
    /// The SHA-256 its name promises (its name, for a file that is no object name).
    pub expected: String,
    /// The SHA-256 of its bytes; `None` when it is missing or not a regular file.
    pub found: Option<String>,
    /// Stages whose cached runs use it, sorted.
    pub used_by: Vec<String>,
}

impl fmt::Display for CorruptObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            _ if !is_digest(&self.expected) => {
                write!(f, "{}: not a run-cache object name", self.path.display())
            }
            Some(h) => write!(
                f,
                "{}: its bytes hash to {h}, not to its name",
                self.path.display()
            ),
            None => write!(f, "{}: missing or not a regular file", self.path.display()),
        }?;
        if !self.used_by.is_empty() {
            write!(f, " (used by stage {})", self.used_by.join(", "))?;
        }
        Ok(())
    }
}

/// What [`RunCache::restore`] did.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Every output is in place.
    Done,
    /// Nothing was placed: these objects were corrupt (and have been removed from the
    /// cache), so the stage must run again.
    Corrupt(Vec<CorruptObject>),
}

/// What [`RunCache::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects hashed.
    pub checked: usize,
    /// Their bytes in total.
    pub bytes: u64,
    /// Objects that do not match their names (and stray files that are no objects).
    pub corrupt: Vec<CorruptObject>,
}

/// Handle on the run cache of one pipeline directory.
#[derive(Debug, Clone)]
pub struct RunCache {
    dir: PathBuf,
}

/// Copies an open regular file to `dst` (created, with `src`'s permissions) and returns the
/// SHA-256 of the bytes copied.
fn copy_hashing(mut src: std::fs::File, src_path: &Path, dst: &Path) -> Result<String> {
    let perms = src
        .metadata()
        .map_err(|e| Error::io(src_path, e))?
        .permissions();
    let mut out = std::fs::File::create(dst).map_err(|e| Error::io(dst, e))?;
    let sha = crate::hash::sha256_read(&mut src, src_path, |chunk| {
        out.write_all(chunk).map_err(|e| Error::io(dst, e))
    })?;
    drop(out);
    std::fs::set_permissions(dst, perms).map_err(|e| Error::io(dst, e))?;
    Ok(sha)
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

    /// The bytes of the run entry of `key` as stored.
    pub fn run_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.run_path(key);
        std::fs::read(&p).map_err(|e| Error::io(&p, e))
    }

    /// Stores the bytes of a run entry for `key` (atomically), after its objects.
    pub fn write_run(&self, key: &str, bytes: &[u8]) -> Result<()> {
        if !is_digest(key) {
            return Err(Error::Corrupt {
                path: self.run_path("invalid"),
                message: format!("`{key}` is not a stage key"),
            });
        }
        write_atomic(&self.run_path(key), bytes)
    }

    /// Where the object of SHA-256 `hash` is kept (`objects/ab/cdef...`).
    pub fn object_path(&self, hash: &str) -> PathBuf {
        let objects = self.dir.join("objects");
        match (hash.get(..2), hash.get(2..)) {
            (Some(a), Some(b)) if is_digest(hash) => objects.join(a).join(b),
            // Never a path outside `objects/`, whatever a damaged run entry says.
            _ => objects.join("invalid"),
        }
    }

    /// The cached run of `key`, if it is well formed and every object it needs is present.
    pub fn get(&self, key: &str) -> Option<RunEntry> {
        if !is_digest(key) {
            return None;
        }
        let bytes = std::fs::read(self.run_path(key)).ok()?;
        let entry: RunEntry = serde_json::from_slice(&bytes).ok()?;
        if entry.key != key || !entry.is_well_formed() {
            return None;
        }
        let complete = entry.outs.values().all(|o| {
            o.entries
                .iter()
                .filter(|e| e.kind == "file")
                .all(|e| self.object_path(&e.hash).is_file())
        });
        complete.then_some(entry)
    }

    /// Copies object `hash` to `dst`, hashing the bytes on the way. `Some` (and no `dst`)
    /// when the object is missing, not a regular file, or its bytes do not match its name.
    pub fn copy_verified(&self, hash: &str, dst: &Path) -> Result<Option<CorruptObject>> {
        let obj = self.object_path(hash);
        let bad = |found: Option<String>| CorruptObject {
            path: obj.clone(),
            expected: hash.to_string(),
            found,
            used_by: Vec::new(),
        };
        if !is_digest(hash) {
            return Ok(Some(bad(None)));
        }
        let src = match crate::hash::open_regular(&obj) {
            Ok(f) => f,
            Err(Error::SpecialFile { .. }) => return Ok(Some(bad(None))),
            Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(bad(None)))
            }
            Err(e) => return Err(e),
        };
        let found = match copy_hashing(src, &obj, dst) {
            Ok(h) => h,
            Err(e) => {
                let _ = remove_path(dst);
                return Err(e);
            }
        };
        if found != hash {
            let _ = remove_path(dst);
            return Ok(Some(bad(Some(found))));
        }
        Ok(None)
    }

    /// Stores the outputs of a finished run. An object already present is kept only when its
    /// bytes match its name; otherwise (missing or corrupt) it is written from the output,
    /// and the copy must hash to the name the output was hashed to.
    pub fn put(&self, root: &Path, entry: &RunEntry) -> Result<()> {
        for (out, co) in &entry.outs {
            for e in co.entries.iter().filter(|e| e.kind == "file") {
                if !is_digest(&e.hash) {
                    return Err(Error::Corrupt {
                        path: root.join(out),
                        message: format!("`{}` is not a SHA-256 digest", e.hash),
                    });
                }
                let obj = self.object_path(&e.hash);
                if std::fs::symlink_metadata(&obj).is_ok_and(|m| m.is_file())
                    && crate::hash::sha256_file(&obj).is_ok_and(|h| h == e.hash)
                {
                    continue;
                }
                let src = if e.path.is_empty() {
                    root.join(out)
                } else {
                    root.join(out).join(&e.path)
                };
                ensure_parent(&obj)?;
                let tmp = tmp_name(&obj);
                let copied =
                    crate::hash::open_regular(&src).and_then(|f| copy_hashing(f, &src, &tmp));
                match copied {
                    Ok(h) if h == e.hash => {}
                    Ok(h) => {
                        let _ = remove_path(&tmp);
                        return Err(Error::Corrupt {
                            path: src,
                            message: format!(
                                "changed while it was stored in the run cache (sha256 {} \
                                 when hashed, {h} when copied)",
                                e.hash
                            ),
                        });
                    }
                    Err(err) => {
                        let _ = remove_path(&tmp);
                        return Err(err);
                    }
                }
                if std::fs::symlink_metadata(&obj).is_ok_and(|m| !m.is_file()) {
                    remove_path(&obj)?;
                }
                std::fs::rename(&tmp, &obj).map_err(|err| Error::io(&obj, err))?;
            }
        }
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Error::Corrupt {
            path: self.run_path(&entry.key),
            message: e.to_string(),
        })?;
        write_atomic(&self.run_path(&entry.key), &bytes)
    }

    /// Puts the outputs of `entry` back into the workspace. Every output is first built
    /// aside from verified copies of its objects; only when all are intact are they renamed
    /// into place. A corrupt object is removed from the cache and reported, and nothing is
    /// placed ([`Restore::Corrupt`]). Outputs must resolve inside `root`
    /// ([`crate::confine::resolve_out`]).
    pub fn restore(
        &self,
        root: &Path,
        entry: &RunEntry,
        hashes: &mut HashCache,
    ) -> Result<Restore> {
        if !entry.is_well_formed() {
            return Err(Error::Corrupt {
                path: self.run_path(&entry.key),
                message: "malformed run-cache entry".into(),
            });
        }
        let mut built: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut corrupt: Vec<CorruptObject> = Vec::new();
        let r = (|| -> Result<()> {
            for (out, co) in &entry.outs {
                let dst = crate::confine::resolve_out(root, out).map_err(|m| Error::Corrupt {
                    path: root.join(out),
                    message: format!("not restored from the run cache: output `{out}` {m}"),
                })?;
                let tmp = tmp_name(&dst);
                remove_path(&tmp)?;
                ensure_parent(&dst)?;
                built.push((tmp.clone(), dst));
                if co.hash.kind == "file" {
                    corrupt.extend(self.copy_verified(&co.entries[0].hash, &tmp)?);
                    continue;
                }
                std::fs::create_dir_all(&tmp).map_err(|err| Error::io(&tmp, err))?;
                for e in &co.entries {
                    let p = tmp.join(&e.path);
                    if e.kind == "dir" {
                        std::fs::create_dir_all(&p).map_err(|err| Error::io(&p, err))?;
                    } else {
                        ensure_parent(&p)?;
                        corrupt.extend(self.copy_verified(&e.hash, &p)?);
                    }
                }
            }
            Ok(())
        })();
        if r.is_err() || !corrupt.is_empty() {
            for (tmp, _) in &built {
                let _ = remove_path(tmp);
            }
        }
        r?;
        if !corrupt.is_empty() {
            corrupt.sort_by(|a, b| a.path.cmp(&b.path));
            corrupt.dedup_by(|a, b| a.path == b.path);
            for c in &mut corrupt {
                c.used_by = vec![entry.stage.clone()];
                // Gone from the cache: this run is no longer complete, and the stage's next
                // successful run stores the object anew.
                let _ = remove_path(&c.path);
            }
            return Ok(Restore::Corrupt(corrupt));
        }
        for (tmp, dst) in built {
            remove_path(&dst)?;
            std::fs::rename(&tmp, &dst).map_err(|err| Error::io(&dst, err))?;
            // Fill the stat cache so the next status need not re-read what we just wrote.
            hashes.hash_path(&dst)?;
        }
        Ok(Restore::Done)
    }

    /// Hashes every object and compares it with its name (read-only: nothing is removed).
    /// Unfinished copies (`.name.pid.tmp`, which `gc` removes) are skipped; any other file
    /// whose name is not an object name is reported as corrupt.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut used_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in self.entries() {
            for co in e.outs.values() {
                for t in co.entries.iter().filter(|t| t.kind == "file") {
                    used_by
                        .entry(t.hash.clone())
                        .or_default()
                        .insert(e.stage.clone());
                }
            }
        }
        let users = |h: &str| -> Vec<String> {
            used_by
                .get(h)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut report = VerifyReport::default();
        let objects_dir = self.dir.join("objects");
        if !objects_dir.exists() {
            return Ok(report);
        }
        let mut objects: Vec<(PathBuf, String, u64)> = Vec::new();
        for d in walkdir::WalkDir::new(&objects_dir)
            .min_depth(1)
            .max_depth(2)
            .sort_by_file_name()
        {
            let d = d.map_err(|e| {
                let p = e.path().unwrap_or(&objects_dir).to_path_buf();
                Error::io(p, e.into())
            })?;
            let file = d.file_name().to_string_lossy().into_owned();
            let dir = d
                .path()
                .parent()
                .and_then(|p| p.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if d.depth() == 1 {
                if !d.file_type().is_dir() {
                    report.corrupt.push(CorruptObject {
                        path: d.path().to_path_buf(),
                        expected: file,
                        found: None,
                        used_by: Vec::new(),
                    });
                }
                continue;
            }
            if file.starts_with('.') && file.ends_with(".tmp") {
                continue;
            }
            let name = format!("{dir}{file}");
            if !is_digest(&name) || !d.file_type().is_file() {
                report.corrupt.push(CorruptObject {
                    path: d.path().to_path_buf(),
                    used_by: users(&name),
                    expected: name,
                    found: None,
                });
                continue;
            }
            let size = d.metadata().map(|m| m.len()).unwrap_or(0);
            objects.push((d.path().to_path_buf(), name, size));
        }
        let paths: Vec<&Path> = objects.iter().map(|(p, _, _)| p.as_path()).collect();
        let hashes = crate::hash::hash_files_parallel(&paths);
        for ((path, name, size), h) in objects.iter().zip(hashes) {
            report.checked += 1;
            report.bytes += size;
            let found = h.ok();
            if found.as_deref() != Some(name.as_str()) {
                report.corrupt.push(CorruptObject {
                    path: path.clone(),
                    expected: name.clone(),
                    found,
                    used_by: users(name),
                });
            }
        }
        report.corrupt.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(report)
    }

    /// All cached runs (unreadable and malformed entries are skipped).
    pub fn entries(&self) -> Vec<RunEntry> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("runs")) else {
            return Vec::new();
        };
        let mut v: Vec<RunEntry> = rd
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<RunEntry>(&b).ok())
            .filter(RunEntry::is_well_formed)
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
