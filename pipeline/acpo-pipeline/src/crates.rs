//! `crate:<name>` dependencies: the sources of a Cargo workspace crate and of every crate it
//! depends on by path, read from the manifests, so that a stage which runs a crate's code
//! reruns when that code (or code it calls) changes.
//!
//! `crate:acpo-finetune` expands to `<dir>/src` and `<dir>/Cargo.toml` of `acpo-finetune` and of
//! its transitive path dependencies (normal and build dependencies, also per target; dev-
//! dependencies do not run in a stage), plus `Cargo.lock#acpo-finetune`: the part of the
//! workspace's `Cargo.lock` that code reaches, the lock entries (name, version, source,
//! checksum) of those crates' external dependencies and of everything they depend on. A lock
//! change elsewhere (a test-only crate, a dependency of the engine or of another stage's crate)
//! changes no key of this stage.
//!
//! A registry crate replaced by a local copy (`[patch.<registry>] name = { path = ... }` in the
//! root manifest, as `vendor/candle-core`) counts as a workspace crate: a crate that depends on
//! it, directly or through external crates that do (per `Cargo.lock`), runs the copy's code, so
//! its expansion includes the copy's `src` and `Cargo.toml`.
//!
//! The manifests (and, with patches, the lock) are read once per pipeline load; the lock part
//! is hashed with the other dependencies ([`hash_lock_part`]).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A `[dependencies]` entry: a version string, or a table (`path`, `workspace = true`; other
/// keys are irrelevant here).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DepSpec {
    Version(#[allow(dead_code)] String),
    Table(DepTable),
}

#[derive(Debug, Default, Deserialize)]
struct DepTable {
    path: Option<String>,
    #[serde(default)]
    workspace: bool,
    /// The dependency's real name when the key renames it.
    package: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
}

/// `[target.<cfg>]`: dependencies for one platform.
#[derive(Debug, Default, Deserialize)]
struct TargetDeps {
    #[serde(default)]
    dependencies: BTreeMap<String, DepSpec>,
    #[serde(default, rename = "build-dependencies")]
    build_dependencies: BTreeMap<String, DepSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct Workspace {
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    dependencies: BTreeMap<String, DepSpec>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    package: Option<Package>,
    workspace: Option<Workspace>,
    #[serde(default)]
    dependencies: BTreeMap<String, DepSpec>,
    #[serde(default, rename = "build-dependencies")]
    build_dependencies: BTreeMap<String, DepSpec>,
    #[serde(default)]
    target: BTreeMap<String, TargetDeps>,
    /// `[patch.<registry>]`: replacements of registry crates, by registry.
    #[serde(default)]
    patch: BTreeMap<String, BTreeMap<String, DepSpec>>,
}

impl Manifest {
    /// The dependencies that run with the crate's code: normal and build, also per target.
    fn code_deps(&self) -> impl Iterator<Item = (&String, &DepSpec)> {
        self.dependencies
            .iter()
            .chain(&self.build_dependencies)
            .chain(
                self.target
                    .values()
                    .flat_map(|t| t.dependencies.iter().chain(&t.build_dependencies)),
            )
    }
}

/// One workspace crate: its directory (relative to the workspace root, `.` for the root) and
/// the workspace crates it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateInfo {
    pub dir: String,
    pub deps: BTreeSet<String>,
    /// Names (as in `Cargo.lock`) of its external dependencies that run with its code.
    pub externals: BTreeSet<String>,
}

/// What `Cargo.lock#<crate>` stands for: for each workspace crate of the path closure, the
/// names of its external dependencies; [`hash_lock_part`] follows them through the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockPart {
    /// The lock file, relative to the workspace root.
    pub lock: String,
    pub members: BTreeMap<String, BTreeSet<String>>,
}

/// The crates of the Cargo workspace rooted at a pipeline's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateGraph {
    pub crates: BTreeMap<String, CrateInfo>,
    /// `Cargo.lock`, when the workspace has one.
    pub lock: Option<String>,
}

fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `a/b/../c` -> `a/c`, `./x` -> `x`; `.` for the empty path.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn join(dir: &str, rel: &str) -> String {
    if dir == "." {
        clean(rel)
    } else {
        clean(&format!("{dir}/{rel}"))
    }
}

impl CrateGraph {
    /// Reads `root/Cargo.toml` and the manifests of its workspace members.
    pub fn load(root: &Path) -> Result<Self, String> {
        let root_manifest = root.join("Cargo.toml");
        if !root_manifest.is_file() {
            return Err(format!(
                "{} does not exist: `crate:` dependencies need the pipeline in a Cargo workspace root",
                root_manifest.display()
            ));
        }
        let top = read_manifest(&root_manifest)?;
        let ws = top.workspace.unwrap_or_default();
        // Directories of path dependencies declared once for the workspace.
        let ws_paths: BTreeMap<&String, String> = ws
            .dependencies
            .iter()
            .filter_map(|(k, d)| match d {
                DepSpec::Table(DepTable { path: Some(p), .. }) => Some((k, clean(p))),
                _ => None,
            })
            .collect();
        // The real names of workspace dependencies that rename their package.
        let ws_renames: BTreeMap<&String, &String> = ws
            .dependencies
            .iter()
            .filter_map(|(k, d)| match d {
                DepSpec::Table(DepTable {
                    package: Some(p), ..
                }) => Some((k, p)),
                _ => None,
            })
            .collect();
        let mut dirs: Vec<String> = ws.members.iter().map(|m| clean(m)).collect();
        if top.package.is_some() && !dirs.iter().any(|d| d == ".") {
            dirs.push(".".into());
        }
        // Registry crates patched by a local copy: crate name -> the copy's directory. The
        // copies are read like members.
        let patched: BTreeMap<String, String> = top
            .patch
            .values()
            .flatten()
            .filter_map(|(k, d)| match d {
                DepSpec::Table(DepTable {
                    path: Some(p),
                    package,
                    ..
                }) => Some((package.clone().unwrap_or_else(|| k.clone()), clean(p))),
                _ => None,
            })
            .collect();
        for d in patched.values() {
            if !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        let reached = patched_reach(root, &patched)?;
        let mut by_dir: BTreeMap<String, (String, Vec<String>, BTreeSet<String>)> = BTreeMap::new();
        for dir in &dirs {
            if dir.contains('*') {
                return Err(format!(
                    "{}: workspace member `{dir}` is a glob; list members one by one",
                    root_manifest.display()
                ));
            }
            let path = root.join(dir).join("Cargo.toml");
            let m = read_manifest(&path)?;
            let Some(pkg) = m.package.as_ref() else {
                return Err(format!("{}: no [package]", path.display()));
            };
            let mut dep_dirs = Vec::new();
            let mut externals = BTreeSet::new();
            for (key, d) in m.code_deps() {
                let t = match d {
                    DepSpec::Version(_) => {
                        externals.insert(key.clone());
                        continue;
                    }
                    DepSpec::Table(t) => t,
                };
                if let Some(p) = &t.path {
                    dep_dirs.push(join(dir, p));
                } else if let (true, Some(p)) = (t.workspace, ws_paths.get(key)) {
                    dep_dirs.push(p.clone());
                } else {
                    let inherited = t.workspace.then(|| ws_renames.get(key)).flatten();
                    let real = t.package.as_ref().or(inherited.copied()).unwrap_or(key);
                    externals.insert(real.clone());
                }
            }
            // An external dependency that is, or reaches, a patched crate runs the copy.
            for e in &externals {
                let copies = reached
                    .get(e)
                    .into_iter()
                    .flatten()
                    .chain(patched.get_key_value(e).map(|(n, _)| n));
                dep_dirs.extend(copies.map(|n| patched[n].clone()));
            }
            by_dir.insert(dir.clone(), (pkg.name.clone(), dep_dirs, externals));
        }
        let name_of: BTreeMap<&String, &String> =
            by_dir.iter().map(|(d, (n, _, _))| (d, n)).collect();
        let mut crates = BTreeMap::new();
        for (dir, (name, dep_dirs, externals)) in &by_dir {
            let mut deps = BTreeSet::new();
            for dd in dep_dirs {
                // A path dependency outside the workspace's members is not followed.
                if let Some(n) = name_of.get(dd) {
                    deps.insert((*n).clone());
                }
            }
            crates.insert(
                name.clone(),
                CrateInfo {
                    dir: dir.clone(),
                    deps,
                    externals: externals.clone(),
                },
            );
        }
        let lock = root
            .join("Cargo.lock")
            .is_file()
            .then(|| "Cargo.lock".to_string());
        Ok(Self { crates, lock })
    }

    /// The workspace crates `name` runs: itself and its transitive path dependencies (patched
    /// copies of registry crates included).
    fn closure(&self, name: &str) -> Result<BTreeSet<String>, String> {
        if !self.crates.contains_key(name) {
            return Err(format!(
                "no crate `{name}` in the workspace (crates: {})",
                self.crates.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut seen = BTreeSet::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            if seen.insert(n.clone()) {
                stack.extend(self.crates[&n].deps.iter().cloned());
            }
        }
        Ok(seen)
    }

    /// The paths (relative to the workspace root) that `crate:<name>` stands for, sorted.
    pub fn expand(&self, name: &str) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = self
            .closure(name)?
            .iter()
            .flat_map(|n| {
                let d = &self.crates[n].dir;
                [join(d, "src"), join(d, "Cargo.toml")]
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The dependency `<lock>#<name>` that `crate:<name>` also stands for, and what it
    /// covers; `None` when the workspace has no `Cargo.lock`.
    pub fn lock_part(&self, name: &str) -> Result<Option<(String, LockPart)>, String> {
        let members = self
            .closure(name)?
            .into_iter()
            .map(|n| {
                let ext = self.crates[&n].externals.clone();
                (n, ext)
            })
            .collect();
        Ok(self.lock.as_ref().map(|lock| {
            (
                format!("{lock}#{name}"),
                LockPart {
                    lock: lock.clone(),
                    members,
                },
            )
        }))
    }
}

/// For each `Cargo.lock` entry name, the patched crates its dependencies reach (itself
/// excluded); empty without a lock file or patches.
fn patched_reach(
    root: &Path,
    patched: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let path = root.join("Cargo.lock");
    if patched.is_empty() || !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let lock = CargoLock::parse(&text, "Cargo.lock")?;
    let mut out = BTreeMap::new();
    for (name, ix) in &lock.by_name {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = ix.clone();
        let mut hits = BTreeSet::new();
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            for spec in &lock.packages[i].dependencies {
                let dep = spec.split(' ').next().unwrap_or_default();
                if patched.contains_key(dep) {
                    hits.insert(dep.to_string());
                }
                stack.extend(lock.matching(spec));
            }
        }
        hits.remove(name);
        if !hits.is_empty() {
            out.insert(name.clone(), hits);
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct LockFile {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Debug, Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    /// `name`, `name version` or `name version (source)`.
    #[serde(default)]
    dependencies: Vec<String>,
}

/// A parsed `Cargo.lock` with its entries indexed by name: parsed once per lock file (see
/// `workspace`), then asked for the hash of each stage's part.
#[derive(Debug)]
pub struct CargoLock {
    packages: Vec<LockPackage>,
    by_name: std::collections::HashMap<String, Vec<usize>>,
}

impl CargoLock {
    /// Parses the lock file `text`; `file` names it in the error.
    pub fn parse(text: &str, file: &str) -> Result<CargoLock, String> {
        let lock: LockFile = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        let mut by_name: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (i, p) in lock.package.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
        }
        Ok(CargoLock {
            packages: lock.package,
            by_name,
        })
    }

    /// Entries named by `spec` (`name`, `name version` or `name version (source)`): that
    /// version, or every version of the name when the spec has none.
    fn matching(&self, spec: &str) -> Vec<usize> {
        let mut it = spec.split(' ');
        let name = it.next().unwrap_or_default();
        let version = it.next();
        self.by_name
            .get(name)
            .map(|ix| {
                ix.iter()
                    .copied()
                    .filter(|&i| version.is_none_or(|v| self.packages[i].version == v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hashes the entries `part` reaches: each member's external dependencies (the versions
    /// the member's own lock entry names; every version of the name when the lock has no entry
    /// for the member), then everything those depend on. Returns the hash and the number of
    /// entries.
    pub fn part_hash(&self, part: &LockPart) -> (String, u64) {
        let mut stack = Vec::new();
        for (member, externals) in &part.members {
            let own = self
                .packages
                .iter()
                .find(|p| &p.name == member && p.source.is_none());
            match own {
                Some(p) => {
                    for spec in &p.dependencies {
                        let name = spec.split(' ').next().unwrap_or_default();
                        if externals.contains(name) {
                            stack.extend(self.matching(spec));
                        }
                    }
                }
                None => {
                    for name in externals {
                        stack.extend(self.matching(name));
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(i) = stack.pop() {
            if seen.insert(i) {
                for spec in &self.packages[i].dependencies {
                    stack.extend(self.matching(spec));
                }
            }
        }
        let mut entries: Vec<&LockPackage> = seen.iter().map(|&i| &self.packages[i]).collect();
        entries.sort_by(|a, b| {
            (&a.name, &a.version, &a.source).cmp(&(&b.name, &b.version, &b.source))
        });
        let mut enc = crate::key::Encoder::new("acpo-lock-part", 1);
        for p in &entries {
            enc.field(&p.name);
            enc.field(&p.version);
            enc.field(p.source.as_deref().unwrap_or_default());
            enc.field(p.checksum.as_deref().unwrap_or_default());
        }
        (enc.finish(), entries.len() as u64)
    }
}

/// [`CargoLock::parse`] then [`CargoLock::part_hash`]: the hash of the part of the lock file
/// `text` that `part` covers, and its number of entries.
pub fn hash_lock_part(text: &str, part: &LockPart) -> Result<(String, u64), String> {
    Ok(CargoLock::parse(text, &part.lock)?.part_hash(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// root (bin) -> app -> core; app -> ext (version only); lib2 -> core via a relative path.
    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "Cargo.toml",
            "[workspace]\nmembers = [\".\", \"crates/app\", \"crates/core\", \"./crates/lib2\"]\n\
             [workspace.dependencies]\ncore = { path = \"crates/core\" }\nserde = \"1\"\n\
             [package]\nname = \"root\"\n[dependencies]\napp = { path = \"crates/app\" }\n",
        );
        write(
            r,
            "crates/app/Cargo.toml",
            "[package]\nname = \"app\"\n[dependencies]\ncore.workspace = true\nserde.workspace = true\next = \"0.1\"\n\
             [dev-dependencies]\nlib2 = { path = \"../lib2\" }\n",
        );
        write(r, "crates/core/Cargo.toml", "[package]\nname = \"core\"\n");
        write(
            r,
            "crates/lib2/Cargo.toml",
            "[package]\nname = \"lib2\"\n[dependencies]\ncore = { path = \"../core\", features = [\"x\"] }\n",
        );
        write(r, "Cargo.lock", "");
        dir
    }

    #[test]
    fn expands_a_crate_to_its_path_dependency_closure() {
        let dir = workspace();
        let g = CrateGraph::load(dir.path()).unwrap();
        assert_eq!(
            g.expand("app").unwrap(),
            [
                "crates/app/Cargo.toml",
                "crates/app/src",
                "crates/core/Cargo.toml",
                "crates/core/src"
            ]
        );
        assert_eq!(
            g.expand("lib2").unwrap(),
            [
                "crates/core/Cargo.toml",
                "crates/core/src",
                "crates/lib2/Cargo.toml",
                "crates/lib2/src"
            ]
        );
        let root = g.expand("root").unwrap();
        assert!(root.contains(&"Cargo.toml".to_string()) && root.contains(&"src".to_string()));
        assert!(
            !root.iter().any(|p| p.contains("lib2")),
            "dev-dependencies are not followed"
        );
        let e = g.expand("nope").unwrap_err();
        assert!(
            e.contains("no crate `nope`") && e.contains("app, core, lib2, root"),
            "{e}"
        );
    }

    /// A lock for [`workspace`]: app uses serde 1 and ext (which uses itoa) and, for tests
    /// only, proptest; root uses clap; serde 0.9 is another crate's.
    const LOCK: &str = r#"version = 4

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["core", "ext", "proptest", "serde 1.0.1"]

[[package]]
name = "root"
version = "0.1.0"
dependencies = ["app", "clap"]

[[package]]
name = "core"
version = "0.1.0"

[[package]]
name = "ext"
version = "0.1.3"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"
dependencies = ["itoa"]

[[package]]
name = "itoa"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bb"

[[package]]
name = "serde"
version = "1.0.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "cc"

[[package]]
name = "serde"
version = "0.9.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "dd"

[[package]]
name = "proptest"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "ee"

[[package]]
name = "clap"
version = "4.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "ff"
"#;

    fn app_part() -> LockPart {
        let dir = workspace();
        let g = CrateGraph::load(dir.path()).unwrap();
        let (name, part) = g.lock_part("app").unwrap().unwrap();
        assert_eq!(name, "Cargo.lock#app");
        part
    }

    #[test]
    fn the_lock_part_covers_what_the_code_reaches() {
        let part = app_part();
        assert_eq!(
            part.members["app"],
            ["ext", "serde"].map(String::from).into(),
            "dev-dependencies and path dependencies are not external code deps"
        );
        let (h, n) = hash_lock_part(LOCK, &part).unwrap();
        assert_eq!(
            n, 3,
            "ext, itoa (through ext) and serde 1.0.1, not serde 0.9, proptest or clap"
        );
        // What the code does not reach changes nothing.
        for (from, to) in [
            ("checksum = \"ee\"", "checksum = \"e2\""),
            ("version = \"4.0.0\"", "version = \"4.1.0\""),
            ("checksum = \"dd\"", "checksum = \"d2\""),
        ] {
            let other = LOCK.replace(from, to);
            assert_ne!(other, LOCK);
            assert_eq!(hash_lock_part(&other, &part).unwrap().0, h, "{from}");
        }
        // A transitive dependency's version or checksum, or a direct one's, changes the hash.
        for (from, to) in [
            ("checksum = \"bb\"", "checksum = \"b2\""),
            ("version = \"1.0.0\"\nsource", "version = \"1.0.2\"\nsource"),
            ("checksum = \"cc\"", "checksum = \"c2\""),
        ] {
            let other = LOCK.replacen(from, to, 1);
            assert_ne!(other, LOCK);
            assert_ne!(hash_lock_part(&other, &part).unwrap().0, h, "{from}");
        }
    }

    #[test]
    fn a_member_missing_from_the_lock_takes_every_version_of_its_deps() {
        let part = app_part();
        let without_app = LOCK.replace("name = \"app\"", "name = \"app-old\"");
        let (_, n) = hash_lock_part(&without_app, &part).unwrap();
        assert_eq!(n, 4, "ext, itoa and both serde versions");
    }

    #[test]
    fn renamed_and_build_and_target_dependencies_count() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "Cargo.toml",
            "[workspace]\nmembers = [\"a\"]\n[workspace.dependencies]\nrj = { package = \"rust-json\", version = \"1\" }\n",
        );
        write(
            r,
            "a/Cargo.toml",
            "[package]\nname = \"a\"\n[dependencies]\nmyser = { package = \"serde\", version = \"1\" }\nrj.workspace = true\n\
             [build-dependencies]\ncc = \"1\"\n[target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\
             [dev-dependencies]\nproptest = \"1\"\n",
        );
        let g = CrateGraph::load(r).unwrap();
        assert_eq!(
            g.crates["a"].externals,
            ["cc", "libc", "rust-json", "serde"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            g.lock_part("a").unwrap(),
            None,
            "no Cargo.lock, no lock part"
        );
        let e = hash_lock_part("[[package]\n", &app_part()).unwrap_err();
        assert!(e.starts_with("Cargo.lock: "), "{e}");
    }

    /// `[patch.crates-io] ext = { path = "vendor/ext" }`: `app` depends on `ext` directly,
    /// `b` through `wrap` (per the lock), `c` on neither.
    #[test]
    fn a_patched_copy_counts_for_the_crates_that_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "Cargo.toml",
            "[workspace]\nmembers = [\"app\", \"b\", \"c\"]\nexclude = [\"vendor\"]\n\
             [patch.crates-io]\next = { path = \"vendor/ext\" }\n",
        );
        write(
            r,
            "app/Cargo.toml",
            "[package]\nname = \"app\"\n[dependencies]\next = \"1\"\n",
        );
        write(
            r,
            "b/Cargo.toml",
            "[package]\nname = \"b\"\n[dependencies]\nwrap = \"1\"\n",
        );
        write(
            r,
            "c/Cargo.toml",
            "[package]\nname = \"c\"\n[dependencies]\nserde = \"1\"\n",
        );
        write(
            r,
            "vendor/ext/Cargo.toml",
            "[package]\nname = \"ext\"\n[dependencies.itoa]\nversion = \"1\"\n",
        );
        write(
            r,
            "Cargo.lock",
            "[[package]]\nname = \"wrap\"\nversion = \"1.0.0\"\nsource = \"registry+x\"\n\
             dependencies = [\"ext\"]\n\n[[package]]\nname = \"ext\"\nversion = \"1.0.0\"\n\
             dependencies = [\"itoa\"]\n\n[[package]]\nname = \"itoa\"\nversion = \"1.0.0\"\n\
             source = \"registry+x\"\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.0\"\n\
             source = \"registry+x\"\n",
        );
        let g = CrateGraph::load(r).unwrap();
        let copy = ["vendor/ext/Cargo.toml", "vendor/ext/src"].map(String::from);
        for member in ["app", "b"] {
            let paths = g.expand(member).unwrap();
            assert!(
                copy.iter().all(|p| paths.contains(p)),
                "{member}: {paths:?}"
            );
        }
        assert_eq!(g.expand("c").unwrap(), ["c/Cargo.toml", "c/src"]);
        assert_eq!(
            g.crates["ext"].externals,
            ["itoa"].map(String::from).into(),
            "the copy's own dependencies are in the lock part"
        );
        std::fs::remove_file(r.join("vendor/ext/Cargo.toml")).unwrap();
        let e = CrateGraph::load(r).unwrap_err();
        assert!(e.contains("vendor/ext/Cargo.toml"), "{e}");
    }

    #[test]
    fn a_missing_or_broken_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = CrateGraph::load(dir.path()).unwrap_err();
        assert!(e.contains("Cargo.toml does not exist"), "{e}");
        write(dir.path(), "Cargo.toml", "[workspace]\nmembers = [\"a\"]\n");
        write(dir.path(), "a/Cargo.toml", "[package\nname = 1");
        let e = CrateGraph::load(dir.path()).unwrap_err();
        assert!(e.contains("a/Cargo.toml"), "{e}");
    }
}
