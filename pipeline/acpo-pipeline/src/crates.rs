//! `crate:<name>` dependencies: the sources of a Cargo workspace crate and of every crate it
//! depends on by path, read from the manifests, so that a stage which runs a crate's code
//! reruns when that code (or code it calls) changes.
//!
//! `crate:acpo-finetune` expands to `<dir>/src` and `<dir>/Cargo.toml` of `acpo-finetune` and of
//! its transitive path dependencies (`[dependencies]` only: dev- and build-dependencies do not
//! run in a stage), plus the workspace's `Cargo.lock` (versions of everything else). The
//! manifests are read once per pipeline load.

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
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
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
}

/// One workspace crate: its directory (relative to the workspace root, `.` for the root) and
/// the workspace crates it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateInfo {
    pub dir: String,
    pub deps: BTreeSet<String>,
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
        let mut dirs: Vec<String> = ws.members.iter().map(|m| clean(m)).collect();
        if top.package.is_some() && !dirs.iter().any(|d| d == ".") {
            dirs.push(".".into());
        }
        let mut by_dir: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for dir in &dirs {
            if dir.contains('*') {
                return Err(format!(
                    "{}: workspace member `{dir}` is a glob; list members one by one",
                    root_manifest.display()
                ));
            }
            let path = root.join(dir).join("Cargo.toml");
            let m = read_manifest(&path)?;
            let Some(pkg) = m.package else {
                return Err(format!("{}: no [package]", path.display()));
            };
            let mut dep_dirs = Vec::new();
            for (key, d) in &m.dependencies {
                let DepSpec::Table(t) = d else { continue };
                if let Some(p) = &t.path {
                    dep_dirs.push(join(dir, p));
                } else if t.workspace {
                    if let Some(p) = ws_paths.get(key) {
                        dep_dirs.push(p.clone());
                    }
                }
            }
            by_dir.insert(dir.clone(), (pkg.name, dep_dirs));
        }
        let name_of: BTreeMap<&String, &String> = by_dir.iter().map(|(d, (n, _))| (d, n)).collect();
        let mut crates = BTreeMap::new();
        for (dir, (name, dep_dirs)) in &by_dir {
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
                },
            );
        }
        let lock = root
            .join("Cargo.lock")
            .is_file()
            .then(|| "Cargo.lock".to_string());
        Ok(Self { crates, lock })
    }

    /// The paths (relative to the workspace root) that `crate:<name>` stands for, sorted.
    pub fn expand(&self, name: &str) -> Result<Vec<String>, String> {
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
        let mut out: Vec<String> = seen
            .iter()
            .flat_map(|n| {
                let d = &self.crates[n].dir;
                [join(d, "src"), join(d, "Cargo.toml")]
            })
            .collect();
        out.extend(self.lock.iter().cloned());
        out.sort();
        Ok(out)
    }
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
                "Cargo.lock",
                "crates/app/Cargo.toml",
                "crates/app/src",
                "crates/core/Cargo.toml",
                "crates/core/src"
            ]
        );
        assert_eq!(
            g.expand("lib2").unwrap(),
            [
                "Cargo.lock",
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
