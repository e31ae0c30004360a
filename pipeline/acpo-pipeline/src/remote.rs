//! Remotes of the run cache (`acpo push`, `acpo pull`, `acpo repro --pull`): one person's
//! finished stage is another's cache hit.
//!
//! A remote holds what the local run cache holds (module `runcache`): `runs/<key>.json`
//! (the stage, its key, every input and the tree of its outputs) and `objects/ab/cdef..`
//! (file contents by SHA-256). The interface a kind of remote implements is [`Store`]:
//! get, put (atomic publish), has, list. Objects are written before the run entry that names
//! them, each through a temporary name and a rename, so a reader never sees a partial upload;
//! two clients pushing the same key write the same bytes. Every object fetched is hashed
//! before it is placed in the local cache; a mismatch is an error naming the remote object,
//! and nothing unverified is kept.
//!
//! Remotes are named in `.acpo/config.yaml` (per clone, never committed; credentials, for the
//! kinds that need them, come from the environment):
//!
//! ```yaml
//! remotes:
//!   team: /mnt/shared/acpo-cache   # a directory: a shared file system
//!   lab: s3://acpo-cache/runs      # S3-compatible object storage (module `remote_s3`)
//! default: team
//! ```
//!
//! Kinds: a directory (a path, or `file:///path`) and S3-compatible object storage
//! (`s3://bucket[/prefix]`, credentials and endpoint from the `AWS_*` environment).

use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, tmp_name};
use crate::runcache::{is_digest, RunCache, RunEntry};
use crate::workspace::{Workspace, STATE_DIR};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The config file of a pipeline directory's remotes.
pub const CONFIG_FILE: &str = "config.yaml";

/// What a kind of remote does: whole files in and out by name, published atomically.
pub trait Store {
    /// Where the remote is, for messages.
    fn url(&self) -> String;
    /// The bytes of the run entry of `key`, if the remote has it.
    fn get_run(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Publishes the run entry of `key` (after every object it names).
    fn put_run(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Whether the remote has object `hash`.
    fn has_object(&self, hash: &str) -> Result<bool>;
    /// Copies object `hash` to the local file `dst` (not verified here).
    fn get_object(&self, hash: &str, dst: &Path) -> Result<()>;
    /// Stores the local file `src` as object `hash`, atomically.
    fn put_object(&self, hash: &str, src: &Path) -> Result<()>;
    /// The keys of every run entry.
    fn list_runs(&self) -> Result<Vec<String>>;
}

/// A remote that is a directory (a shared file system).
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Never a path outside the remote, whatever a damaged entry names.
    fn object(&self, hash: &str) -> PathBuf {
        if !is_digest(hash) {
            return self.dir.join("objects").join("invalid");
        }
        self.dir.join("objects").join(&hash[..2]).join(&hash[2..])
    }
    fn run(&self, key: &str) -> PathBuf {
        let key = if is_digest(key) { key } else { "invalid" };
        self.dir.join("runs").join(format!("{key}.json"))
    }
}

impl Store for DirStore {
    fn url(&self) -> String {
        self.dir.display().to_string()
    }

    fn get_run(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.run(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.run(key), e)),
        }
    }

    fn put_run(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let dst = self.run(key);
        ensure_parent(&dst)?;
        let tmp = shared_tmp_name(&dst);
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))
    }

    fn has_object(&self, hash: &str) -> Result<bool> {
        Ok(self.object(hash).is_file())
    }

    fn get_object(&self, hash: &str, dst: &Path) -> Result<()> {
        std::fs::copy(self.object(hash), dst)
            .map(|_| ())
            .map_err(|e| Error::io(self.object(hash), e))
    }

    fn put_object(&self, hash: &str, src: &Path) -> Result<()> {
        let obj = self.object(hash);
        ensure_parent(&obj)?;
        let tmp = shared_tmp_name(&obj);
        if let Err(e) = std::fs::copy(src, &tmp) {
            let _ = remove_path(&tmp);
            return Err(Error::io(&tmp, e));
        }
        std::fs::rename(&tmp, &obj).map_err(|e| Error::io(&obj, e))
    }

    fn list_runs(&self) -> Result<Vec<String>> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("runs")) else {
            return Ok(Vec::new());
        };
        Ok(run_keys(rd.flatten().filter_map(|e| {
            e.file_name().to_str().map(str::to_string)
        })))
    }
}

/// The sorted keys of the run entries among file names (`<key>.json`, `key` a digest); every
/// other name is ignored. Shared by every kind of remote.
pub(crate) fn run_keys(names: impl Iterator<Item = impl AsRef<str>>) -> Vec<String> {
    let mut keys: Vec<String> = names
        .filter_map(|n| {
            n.as_ref()
                .strip_suffix(".json")
                .filter(|k| is_digest(k))
                .map(str::to_string)
        })
        .collect();
    keys.sort();
    keys
}

/// A temporary name next to `path` that no other writer of a shared file system uses: the
/// host name, the process id and the time, since two machines can run the same pid.
fn shared_tmp_name(path: &Path) -> PathBuf {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{}.{nanos}.tmp",
        host.trim(),
        std::process::id()
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    remotes: BTreeMap<String, String>,
    default: Option<String>,
}

/// The remote `name` (or the config's `default`) of the pipeline directory `root`.
pub fn open(root: &Path, name: Option<&str>) -> Result<Box<dyn Store>> {
    let file = root.join(STATE_DIR).join(CONFIG_FILE);
    let shown = PathBuf::from(STATE_DIR).join(CONFIG_FILE);
    let config: Config = if file.exists() {
        crate::yaml::read(&file)?
    } else {
        Config::default()
    };
    let name = match name.or(config.default.as_deref()) {
        Some(n) => n.to_string(),
        None => {
            return Err(Error::Usage(format!(
                "no remote named and no `default:` in {}; add `remotes: {{NAME: /shared/dir}}` \
                 and `default: NAME` there",
                shown.display()
            )))
        }
    };
    let url = config.remotes.get(&name).ok_or_else(|| {
        let known: Vec<&str> = config.remotes.keys().map(String::as_str).collect();
        Error::Usage(format!(
            "unknown remote `{name}` (remotes in {}: {})",
            shown.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })?;
    store_for(root, &name, url)
}

fn store_for(root: &Path, name: &str, url: &str) -> Result<Box<dyn Store>> {
    if url.starts_with("s3://") {
        return Ok(Box::new(crate::remote_s3::S3Store::open(name, url)?));
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if url.contains("://") => {
            return Err(Error::Usage(format!(
                "remote `{name}`: `{url}`: expected a directory (a path or file://) or \
                 s3://BUCKET[/PREFIX]"
            )))
        }
        None => root.join(url),
    };
    if !path.is_dir() {
        return Err(Error::Usage(format!(
            "remote `{name}`: directory {} does not exist (create it, or fix the path in {}/{})",
            path.display(),
            STATE_DIR,
            CONFIG_FILE
        )));
    }
    Ok(Box::new(DirStore { dir: path }))
}

/// What a push or pull moved.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Transfer {
    /// Stages whose run was copied.
    pub runs: Vec<String>,
    /// Objects copied, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Stages skipped: (stage, why).
    pub skipped: Vec<(String, String)>,
    /// Stages whose remote run was corrupt (not used): (stage, what).
    pub corrupt: Vec<(String, String)>,
}

/// The selected stages (all when `targets` is empty) with the key `pipeline.lock` records.
fn locked(ws: &Workspace, targets: &[String]) -> Result<Vec<(String, String)>> {
    let sel = if targets.is_empty() {
        (0..ws.pipeline.stages.len()).collect()
    } else {
        ws.pipeline.resolve_names(targets)?
    };
    Ok(sel
        .into_iter()
        .map(|i| {
            let name = ws.pipeline.stages[i].name.clone();
            let key = ws.lock.stages.get(&name).map(|e| e.key.clone());
            (name, key.unwrap_or_default())
        })
        .collect())
}

/// `acpo push`: copies the run of each selected stage that `pipeline.lock` records (its
/// entry and every object it names) from the local run cache to the remote.
pub fn push(ws: &Workspace, store: &dyn Store, targets: &[String]) -> Result<Transfer> {
    let mut t = Transfer::default();
    for (stage, key) in locked(ws, targets)? {
        if key.is_empty() {
            t.skipped.push((stage, "never run here".into()));
            continue;
        }
        let Some(entry) = ws.runcache.get(&key) else {
            t.skipped.push((stage, "not in the local run cache".into()));
            continue;
        };
        for e in files(&entry) {
            if store.has_object(&e)? {
                continue;
            }
            let src = ws.runcache.object_path(&e);
            store.put_object(&e, &src)?;
            t.objects += 1;
            t.bytes += std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
        }
        let bytes = ws.runcache.run_bytes(&key)?;
        store.put_run(&key, &bytes)?;
        t.runs.push(stage);
    }
    Ok(t)
}

/// `acpo pull`: fetches into the local run cache the run of each selected stage that
/// `pipeline.lock` records, so `acpo repro` restores it instead of running it.
pub fn pull(ws: &Workspace, store: &dyn Store, targets: &[String]) -> Result<Transfer> {
    let mut t = Transfer::default();
    for (stage, key) in locked(ws, targets)? {
        if key.is_empty() {
            t.skipped.push((stage, "not in pipeline.lock".into()));
            continue;
        }
        if ws.runcache.get(&key).is_some() {
            t.skipped
                .push((stage, "already in the local run cache".into()));
            continue;
        }
        match fetch(&ws.runcache, store, &key) {
            Ok(Some((n, b))) => {
                t.objects += n;
                t.bytes += b;
                t.runs.push(stage);
            }
            Ok(None) => t.skipped.push((stage, "not on the remote".into())),
            Err(e @ Error::Corrupt { .. }) => t.corrupt.push((stage, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(t)
}

/// The file objects a run names.
fn files(entry: &RunEntry) -> Vec<String> {
    let mut v: Vec<String> = entry
        .outs
        .values()
        .flat_map(|o| o.entries.iter().filter(|e| e.kind == "file"))
        .map(|e| e.hash.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Copies the run of `key` from `store` into the local run cache: every missing object
/// fetched to a temporary name, hashed and renamed into place only when its bytes match its
/// name, then the entry. `None` when the remote does not have the run. Returns the objects
/// fetched and their bytes.
pub fn fetch(cache: &RunCache, store: &dyn Store, key: &str) -> Result<Option<(usize, u64)>> {
    let Some(bytes) = store.get_run(key)? else {
        return Ok(None);
    };
    let where_ = format!("{}/runs/{key}.json", store.url());
    let entry: RunEntry = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: PathBuf::from(&where_),
        message: format!("not a run entry: {e}"),
    })?;
    if entry.key != key || !entry.is_well_formed() {
        return Err(Error::Corrupt {
            path: PathBuf::from(&where_),
            message: format!("malformed run entry, or one for another key than {key}"),
        });
    }
    let (mut n, mut total) = (0, 0);
    for h in files(&entry) {
        let obj = cache.object_path(&h);
        if obj.is_file() && crate::hash::sha256_file(&obj).is_ok_and(|x| x == h) {
            continue;
        }
        ensure_parent(&obj)?;
        let tmp = tmp_name(&obj);
        store.get_object(&h, &tmp).inspect_err(|_| {
            let _ = remove_path(&tmp);
        })?;
        let found = crate::hash::sha256_file(&tmp)?;
        if found != h {
            let _ = remove_path(&tmp);
            return Err(Error::Corrupt {
                path: PathBuf::from(format!("{}/objects/{}/{}", store.url(), &h[..2], &h[2..])),
                message: format!(
                    "its bytes hash to {found}, not to its name; nothing of run {key} was used"
                ),
            });
        }
        total += std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&tmp, &obj).map_err(|e| Error::io(&obj, e))?;
        n += 1;
    }
    cache.write_run(key, &bytes)?;
    Ok(Some((n, total)))
}
