//! A pipeline directory opened for work: params, pipeline, lock, hash cache, run cache,
//! and what makes each stage up to date or not.

use crate::error::{Error, Result};
use crate::hash::{HashCache, PathHash};
use crate::key::KeyInputs;
use crate::lock::{Lock, LockEntry};
use crate::params::Params;
use crate::pipeline::{stage_params, Pipeline};
use crate::runcache::RunCache;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The engine's private state directory (gitignored).
pub const STATE_DIR: &str = ".acpo";

/// An opened pipeline directory.
pub struct Workspace {
    pub root: PathBuf,
    pub params: Params,
    pub pipeline: Pipeline,
    /// The lock file: `pipeline.lock`, or `<stem>.acpo.lock` for another pipeline file.
    pub lock_path: PathBuf,
    pub lock: Lock,
    pub hashes: HashCache,
    pub runcache: RunCache,
    /// Hashed lock parts: (dependency, hash of the lock file) -> its hash.
    lock_part_memo: BTreeMap<(String, String), PathHash>,
    /// The last Cargo.lock parsed, by the hash of its bytes: parsed once per command.
    cargo_lock: Option<(String, crate::crates::CargoLock)>,
}

/// Why a stage is not up to date.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NeverRun,
    Forced,
    /// DVC `always_changed: true`.
    AlwaysChanged,
    /// A dependency that does not exist and that no stage produces (`status` only: `repro`
    /// refuses to start).
    DepMissing {
        path: String,
    },
    Version {
        old: String,
        new: String,
    },
    Cmd {
        old: String,
        new: String,
    },
    Param {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    Dep {
        path: String,
        old: Option<PathHash>,
        new: Option<PathHash>,
    },
    Env {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    Outs {
        old: Vec<String>,
        new: Vec<String>,
    },
    OutMissing {
        path: String,
    },
    OutModified {
        path: String,
    },
    Upstream {
        stage: String,
    },
}

fn short(h: &Option<PathHash>) -> String {
    match h {
        Some(h) => format!("{} {}", h.kind, &h.hash[..h.hash.len().min(12)]),
        None => "missing".into(),
    }
}

/// The most changed leaves of a section param that `status` lists.
const MAX_LEAVES_SHOWN: usize = 6;

fn val(v: &Option<Value>) -> String {
    v.as_ref()
        .map(crate::params::canonical_json)
        .unwrap_or_else(|| "(not declared)".into())
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run (not in pipeline.lock)"),
            Reason::Forced => write!(f, "forced"),
            Reason::AlwaysChanged => write!(f, "always changed (always_changed: true)"),
            Reason::DepMissing { path } => write!(
                f,
                "dep {path}: does not exist and no stage produces it (repro would stop here)"
            ),
            Reason::Version { old, new } => write!(f, "acpo version: {old} -> {new}"),
            Reason::Cmd { old, new } => write!(f, "cmd: `{old}` -> `{new}`"),
            Reason::Param {
                key,
                old: Some(old @ Value::Object(_)),
                new: Some(new @ Value::Object(_)),
            } => {
                // A section param (`finetune.defaults`): only the leaves that changed.
                let changed = crate::params::changed_leaves(old, new);
                let shown: Vec<String> = changed
                    .iter()
                    .take(MAX_LEAVES_SHOWN)
                    .map(|(k, a, b)| format!("{key}.{k}: {} -> {}", val(a), val(b)))
                    .collect();
                write!(f, "param {}", shown.join(", "))?;
                if changed.len() > MAX_LEAVES_SHOWN {
                    write!(f, " (and {} more)", changed.len() - MAX_LEAVES_SHOWN)?;
                }
                Ok(())
            }
            Reason::Param { key, old, new } => {
                write!(f, "param {key}: {} -> {}", val(old), val(new))
            }
            Reason::Dep { path, old, new } => {
                write!(f, "dep {path}: {} -> {}", short(old), short(new))
            }
            Reason::Env { name, old, new } => write!(
                f,
                "env {name}: {} -> {}",
                old.as_deref().unwrap_or("(unset)"),
                new.as_deref().unwrap_or("(unset)")
            ),
            Reason::Outs { old, new } => write!(f, "outs: {old:?} -> {new:?}"),
            Reason::OutMissing { path } => write!(f, "out {path}: missing"),
            Reason::OutModified { path } => write!(f, "out {path}: modified since it was produced"),
            Reason::Upstream { stage } => write!(f, "upstream stage `{stage}` is not up to date"),
        }
    }
}

/// A stage's current inputs and how they compare with the lock.
#[derive(Debug, Clone)]
pub struct StageState {
    pub inputs: KeyInputs,
    pub key: String,
    /// Empty when up to date.
    pub reasons: Vec<Reason>,
}

impl Workspace {
    /// Opens `root` (the directory of `pipeline.yaml`, or of `dvc.yaml` when there is no
    /// `pipeline.yaml`) for `profile` with `-S` overrides.
    pub fn open(root: &Path, profile: &str, overrides: &[String]) -> Result<Workspace> {
        Self::open_file(root, None, profile, overrides)
    }

    /// [`Workspace::open`] with the pipeline file named (`--file`; a file name in `root`).
    pub fn open_file(
        root: &Path,
        file: Option<&str>,
        profile: &str,
        overrides: &[String],
    ) -> Result<Workspace> {
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        let file = crate::pipeline::pipeline_file(&root, file)?;
        let params = Params::load(&root, profile, overrides)?;
        let pipeline = Pipeline::load_file(&root, &file, &params)?;
        let lock_path = root.join(crate::lock::lock_name(&file));
        let lock = Lock::load(&lock_path)?;
        let hashes = HashCache::load(&root.join(STATE_DIR));
        let runcache = RunCache::new(&root);
        Ok(Workspace {
            root,
            params,
            pipeline,
            lock_path,
            lock,
            hashes,
            runcache,
            lock_part_memo: BTreeMap::new(),
            cargo_lock: None,
        })
    }

    /// The engine's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// Takes `.acpo/repro.lock`, the one lock of every command that writes `pipeline.lock` or
    /// the run cache (`repro`, `gc`), and then reads `pipeline.lock` and the hash cache again,
    /// so what the command writes back includes whatever the holder before it recorded.
    /// Held until the guard is dropped.
    pub fn lock_exclusive(&mut self) -> Result<WorkspaceLock> {
        let state = self.state_dir();
        std::fs::create_dir_all(&state).map_err(|e| Error::io(&state, e))?;
        let guard = WorkspaceLock::acquire(&state)?;
        self.lock = Lock::load(&self.lock_path)?;
        self.hashes = HashCache::load(&state);
        Ok(guard)
    }

    /// Fails (bad input, naming the stage and the output) when an output of stage `i` is not
    /// a path the engine may write: outside the pipeline directory or one of the engine's own
    /// paths once symbolic links are followed ([`crate::confine::resolve_out`]).
    pub fn check_outs(&self, i: usize) -> Result<()> {
        let s = &self.pipeline.stages[i];
        for o in &s.outs {
            if let Err(why) = crate::confine::resolve_out(&self.root, o) {
                return Err(self.pipeline.stage_error(
                    i,
                    format!(
                        "stage `{}`: output `{o}` {why}; refusing to touch it",
                        s.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Fails when a dependency of stage `i` neither exists nor is produced by a stage.
    pub fn check_deps(&self, i: usize) -> Result<()> {
        match self.missing_deps(i).first() {
            None => Ok(()),
            Some(d) => Err(self.pipeline.stage_error(
                i,
                format!(
                    "stage `{}`: dependency `{d}` does not exist and no stage produces it",
                    self.pipeline.stages[i].name
                ),
            )),
        }
    }

    /// The dependencies of stage `i` that neither exist nor are produced by a stage.
    pub fn missing_deps(&self, i: usize) -> Vec<String> {
        self.pipeline.stages[i]
            .deps
            .iter()
            .filter(|d| !self.root.join(d).exists() && !self.pipeline.produced_by_upstream(i, d))
            .cloned()
            .collect()
    }

    /// Hashes the current inputs of stage `i`.
    pub fn inputs(&mut self, i: usize) -> Result<KeyInputs> {
        let s = &self.pipeline.stages[i];
        let mut deps = BTreeMap::new();
        for d in &s.deps {
            let name = s.dep_names.get(d).unwrap_or(d).clone();
            deps.insert(name, self.hashes.hash_path(&self.root.join(d))?);
        }
        for (name, part) in &s.lock_parts {
            let h = lock_part_hash(
                &self.root,
                &mut self.hashes,
                &mut self.lock_part_memo,
                &mut self.cargo_lock,
                name,
                part,
            )?;
            deps.insert(name.clone(), h);
        }
        let env = s
            .env
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    std::env::var(n).ok().map(|v| key_env_value(&self.root, &v)),
                )
            })
            .collect();
        Ok(KeyInputs {
            acpo_version: crate::VERSION.to_string(),
            cmd: s.cmd_key.clone().unwrap_or_else(|| s.cmd.clone()),
            params: stage_params(s, &self.params),
            deps,
            env,
            outs: s.outs.clone(),
        })
    }

    /// Compares stage `i`'s current inputs and outputs with its lock entry.
    pub fn state(&mut self, i: usize) -> Result<StageState> {
        let inputs = self.inputs(i)?;
        let key = inputs.key();
        let name = self.pipeline.stages[i].name.clone();
        let mut reasons = match self.lock.stages.get(&name).cloned() {
            None => vec![Reason::NeverRun],
            Some(entry) => {
                let mut r = if entry.key == key {
                    Vec::new()
                } else {
                    diff_inputs(&entry.inputs, &inputs)
                };
                r.extend(self.out_reasons(&entry)?);
                r
            }
        };
        if self.pipeline.stages[i].always_changed {
            reasons.push(Reason::AlwaysChanged);
        }
        Ok(StageState {
            inputs,
            key,
            reasons,
        })
    }

    fn out_reasons(&mut self, entry: &LockEntry) -> Result<Vec<Reason>> {
        let mut r = Vec::new();
        for (path, old) in &entry.outs {
            match self.hashes.hash_path(&self.root.join(path))? {
                None => r.push(Reason::OutMissing { path: path.clone() }),
                Some(h) if h.hash != old.hash || h.kind != old.kind => {
                    r.push(Reason::OutModified { path: path.clone() })
                }
                Some(_) => {}
            }
        }
        Ok(r)
    }
}

/// The hash of the part of a lock file that `part` covers (`Cargo.lock#<crate>`); `None`
/// when the lock file does not exist. Memoized by the lock file's own hash, which also keys
/// the parsed lock (`parsed`), so the file is read and parsed once however many parts.
fn lock_part_hash(
    root: &Path,
    hashes: &mut HashCache,
    memo: &mut BTreeMap<(String, String), PathHash>,
    parsed: &mut Option<(String, crate::crates::CargoLock)>,
    name: &str,
    part: &crate::crates::LockPart,
) -> Result<Option<PathHash>> {
    let path = root.join(&part.lock);
    let Some(file) = hashes.hash_path(&path)? else {
        return Ok(None);
    };
    let memo_key = (name.to_string(), file.hash.clone());
    if let Some(h) = memo.get(&memo_key) {
        return Ok(Some(h.clone()));
    }
    if parsed.as_ref().is_none_or(|(h, _)| *h != file.hash) {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let lock = crate::crates::CargoLock::parse(&text, &part.lock).map_err(|message| {
            Error::Corrupt {
                path: path.clone(),
                message,
            }
        })?;
        *parsed = Some((file.hash.clone(), lock));
    }
    let (hash, entries) = parsed
        .as_ref()
        .map(|(_, l)| l.part_hash(part))
        .unwrap_or_default();
    let h = PathHash {
        kind: "lock-part".into(),
        hash,
        size: 0,
        files: entries,
    };
    memo.insert(memo_key, h.clone());
    Ok(Some(h))
}

/// Holds `.acpo/repro.lock` (flock) so two commands that write the lock or the run cache
/// never run in one directory at once (see [`Workspace::lock_exclusive`]).
pub struct WorkspaceLock {
    _file: std::fs::File,
}

impl WorkspaceLock {
    fn acquire(state: &Path) -> Result<WorkspaceLock> {
        use std::os::unix::io::AsRawFd;
        let path = state.join("repro.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A process forked by another thread of this program (between fork and exec)
        // may briefly hold a copy of a released lock's descriptor: retry for a moment.
        let mut r = -1;
        for _ in 0..100 {
            // SAFETY: flock on a file descriptor we own.
            r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if r != 0 {
            return Err(Error::Usage(format!(
                "another `acpo repro` or `acpo gc` is running in this directory ({} is locked)",
                path.display()
            )));
        }
        Ok(WorkspaceLock { _file: file })
    }
}

/// The differences between the inputs recorded in the lock and the current ones.
pub fn diff_inputs(old: &KeyInputs, new: &KeyInputs) -> Vec<Reason> {
    let mut r = Vec::new();
    if old.acpo_version != new.acpo_version {
        r.push(Reason::Version {
            old: old.acpo_version.clone(),
            new: new.acpo_version.clone(),
        });
    }
    if old.cmd != new.cmd {
        r.push(Reason::Cmd {
            old: old.cmd.clone(),
            new: new.cmd.clone(),
        });
    }
    for key in union(old.params.keys(), new.params.keys()) {
        let (a, b) = (old.params.get(&key), new.params.get(&key));
        if a != b {
            r.push(Reason::Param {
                key,
                old: a.cloned(),
                new: b.cloned(),
            });
        }
    }
    for path in union(old.deps.keys(), new.deps.keys()) {
        let (a, b) = (
            old.deps.get(&path).cloned().flatten(),
            new.deps.get(&path).cloned().flatten(),
        );
        if a != b || old.deps.contains_key(&path) != new.deps.contains_key(&path) {
            r.push(Reason::Dep {
                path,
                old: a,
                new: b,
            });
        }
    }
    for name in union(old.env.keys(), new.env.keys()) {
        let (a, b) = (
            old.env.get(&name).cloned().flatten(),
            new.env.get(&name).cloned().flatten(),
        );
        if a != b || old.env.contains_key(&name) != new.env.contains_key(&name) {
            r.push(Reason::Env {
                name,
                old: a,
                new: b,
            });
        }
    }
    let (mut a, mut b) = (old.outs.clone(), new.outs.clone());
    a.sort();
    b.sort();
    if a != b {
        r.push(Reason::Outs { old: a, new: b });
    }
    r
}

fn union<'a>(
    a: impl Iterator<Item = &'a String>,
    b: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let mut v: Vec<String> = a.chain(b).cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// An environment value as it enters a stage key. An absolute path is written relative to the
/// workspace root (lexically: `.` and `..` resolved without the file system), so one layout
/// gives one key in every checkout: `/home/a/acpo/../mirror` and `/ci/acpo/../mirror` are both
/// `../mirror` for roots `/home/a/acpo` and `/ci/acpo`. Other values are kept as they are.
pub fn key_env_value(root: &Path, value: &str) -> String {
    use std::path::Component;
    let p = Path::new(value);
    if !p.is_absolute() {
        return value.to_string();
    }
    fn lexical(p: &Path) -> Vec<Component<'_>> {
        let mut out: Vec<Component> = Vec::new();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    if matches!(out.last(), Some(Component::Normal(_))) {
                        out.pop();
                    }
                }
                c => out.push(c),
            }
        }
        out
    }
    let (v, r) = (lexical(p), lexical(root));
    let common = v.iter().zip(&r).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..r.len() {
        rel.push("..");
    }
    for c in &v[common..] {
        rel.push(c.as_os_str());
    }
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_paths_enter_keys_relative_to_the_root() {
        let k = |root: &str, v: &str| key_env_value(Path::new(root), v);
        assert_eq!(
            k("/home/a/acpo", "/home/a/acpo/../shared/data"),
            "../shared/data"
        );
        assert_eq!(k("/ci/acpo", "/ci/acpo/../shared/data"), "../shared/data");
        assert_eq!(k("/ci/acpo", "/ci/acpo/.cache/./assets"), ".cache/assets");
        assert_eq!(k("/ci/acpo", "/ci/acpo"), ".");
        assert_eq!(k("/ci/acpo", "/opt/mirror"), "../../opt/mirror");
        assert_eq!(k("/ci/acpo", "relative/x"), "relative/x");
        assert_eq!(k("/ci/acpo", "1"), "1");
    }
}
