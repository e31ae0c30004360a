//! Confinement: every path the engine derives stays inside the pipeline directory.
//!
//! - Stage names (which come from `foreach` keys and items and from matrix values, so may hold
//!   any text) become file names through [`encode_name`], a reversible encoding whose result
//!   is always one safe path component: `.acpo/{backup,partial}/<enc>`,
//!   `.acpo/params/<enc>.json`, `.acpo/logs/<enc>.log`.
//! - An output must be a relative path without `..` that is not one of the engine's own
//!   paths ([`is_reserved`]), and it must still be so with symbolic links followed
//!   ([`resolve_out`]): `self/params.yaml` with `self -> .` is refused.

use std::path::{Path, PathBuf};

/// Whether `b` is kept as it is by [`encode_name`].
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')
}

/// A stage name as one file name: every byte outside `[A-Za-z0-9_.@-]`, and a leading `.`,
/// is written `%XX` (upper-case hex). The result never contains `/`, is never `.` or `..`
/// (nor starts with `.`), and [`decode_name`] gives the name back. Usual names (`train`,
/// `train-base@cifar10`) are unchanged. The empty name is `%`.
pub fn encode_name(name: &str) -> String {
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.as_bytes().iter().enumerate() {
        if is_plain(b) && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stage name of a file name made by [`encode_name`]; `None` for any other file name.
pub fn decode_name(enc: &str) -> Option<String> {
    if enc == "%" {
        return Some(String::new());
    }
    let b = enc.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = enc.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only the canonical spelling decodes, so names and file names pair one to one.
    (encode_name(&name) == enc).then_some(name)
}

/// Paths the engine keeps for itself (relative to the pipeline directory, `/`-separated,
/// normalised): no stage may write them or anything inside them.
pub fn is_reserved(rel: &str) -> bool {
    let inside = |dir: &str| rel == dir || crate::pipeline::is_within(rel, dir);
    inside(".git")
        || inside(crate::workspace::STATE_DIR)
        || inside(crate::runcache::RUNCACHE_DIR)
        || rel == "results"
        || rel == crate::lock::LOCK_FILE
        || rel == crate::pipeline::PIPELINE_FILE
        || rel == crate::params::PARAMS_FILE
        || rel == crate::pipeline::DVC_FILE
        || rel == "dvc.lock"
        || (!rel.contains('/') && rel.ends_with(".acpo.lock"))
}

/// Whether `rel` is a plain relative path: not empty, not absolute, `/`-separated names
/// only (no empty, `.` or `..` component).
pub fn is_plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Where output `rel` of the pipeline directory `root` really is, with symbolic links in its
/// parent directories followed (the output itself may be a link; its target is then checked
/// too). `Err` says why the engine must not touch it: not a plain relative path, outside the
/// pipeline directory, or one of the engine's own paths ([`is_reserved`]).
pub fn resolve_out(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if !is_plain_relative(rel) {
        return Err("must be a relative path inside the pipeline directory".into());
    }
    if is_reserved(rel) {
        return Err("is one of the engine's own paths".into());
    }
    let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let full = root.join(rel);
    let name = full.file_name().ok_or("has no file name")?.to_owned();
    // The deepest existing ancestor, resolved; the rest cannot hold a link yet.
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    let mut dir = full.parent().ok_or("has no parent")?.to_path_buf();
    let base = loop {
        match std::fs::canonicalize(&dir) {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&dir).is_ok() {
                    return Err(format!(
                        "is reached through `{}`, a symbolic link to nothing",
                        dir.strip_prefix(&root).unwrap_or(&dir).display()
                    ));
                }
                missing.push(dir.file_name().ok_or("has no parent")?.to_owned());
                dir = dir.parent().ok_or("has no parent")?.to_path_buf();
            }
            Err(e) => return Err(format!("cannot be resolved: {e}")),
        }
    };
    let mut real = base;
    for m in missing.into_iter().rev() {
        real.push(m);
    }
    real.push(&name);
    check_inside(&root, &real)?;
    // An output that is itself a link: the engine moves and removes only the link, but
    // hashing and the stage's command follow it.
    if std::fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink()) {
        if let Ok(target) = std::fs::canonicalize(&real) {
            check_inside(&root, &target)?;
        }
    }
    Ok(real)
}

/// `Ok` when `real` lies strictly inside `root` and is not reserved.
fn check_inside(root: &Path, real: &Path) -> Result<(), String> {
    let inner = real
        .strip_prefix(root)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .map(|r| r.to_string_lossy().replace('\\', "/"));
    match inner {
        None if real == root => {
            Err("resolves to the pipeline directory itself (through a symbolic link)".into())
        }
        None => Err(format!(
            "resolves to `{}` (through a symbolic link), outside the pipeline directory",
            real.display()
        )),
        Some(r) if is_reserved(&r) => Err(format!(
            "resolves to `{r}` (through a symbolic link), one of the engine's own paths"
        )),
        Some(r) if is_reserved_prefix(&r) => Err(format!(
            "resolves to `{r}` (through a symbolic link), which holds the engine's own paths"
        )),
        Some(_) => Ok(()),
    }
}

/// Whether the engine's own paths lie inside `rel`.
fn is_reserved_prefix(rel: &str) -> bool {
    [
        ".git",
        crate::workspace::STATE_DIR,
        crate::runcache::RUNCACHE_DIR,
        crate::lock::LOCK_FILE,
        crate::pipeline::PIPELINE_FILE,
        crate::params::PARAMS_FILE,
        crate::pipeline::DVC_FILE,
        "dvc.lock",
    ]
    .iter()
    .any(|p| crate::pipeline::is_within(p, rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_to_one_safe_component_and_back() {
        let names = [
            "train",
            "train-base@cifar10",
            "finetune@cifar10-acpo",
            "s@../../../../victim",
            "..",
            ".",
            ".hidden",
            "a/b",
            "100%",
            "%41",
            "sp ace\ttab\nnl",
            "ünï©ødé",
            "",
            "@",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let e = encode_name(n);
            assert!(
                !e.is_empty() && !e.contains('/') && !e.starts_with('.'),
                "{n:?} -> {e}"
            );
            assert!(e.bytes().all(|b| is_plain(b) || b == b'%'), "{n:?} -> {e}");
            assert_eq!(decode_name(&e).as_deref(), Some(n), "{n:?} -> {e}");
            assert!(seen.insert(e), "two names, one file name: {n:?}");
        }
        assert_eq!(encode_name("train-base@cifar10"), "train-base@cifar10");
        assert_eq!(encode_name("s@../x"), "s@..%2Fx");
        assert_eq!(encode_name(".."), "%2E.");
        // Not canonical, or not an encoding at all.
        for bad in ["%2e.", "%4", "%zz", "%41", "a%2", ".x", "a/b"] {
            assert_eq!(decode_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn outputs_resolve_inside_the_directory_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("p");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("params.yaml"), "").unwrap();
        std::os::unix::fs::symlink(".", root.join("self")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink("params.yaml", root.join("link-to-params")).unwrap();
        let ok = |rel: &str| resolve_out(&root, rel);
        assert!(ok("out.txt").is_ok());
        assert!(ok("new/dir/out.txt").is_ok());
        assert!(ok("self").is_err(), "a link to the root itself");
        assert!(ok("self/x.txt").is_ok(), "root/x.txt is fine");
        for bad in [
            "self/params.yaml",
            "self/.git/config",
            "self/.acpo",
            "up/other",
            "dangling/x",
            "link-to-params",
            ".git",
            "../x",
            "/etc/passwd",
            "a/../b",
            "./a",
            "",
        ] {
            let e = ok(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        let canon = std::fs::canonicalize(&root).unwrap();
        assert_eq!(ok("alias/y").unwrap(), canon.join("sub/y"));
    }
}
