//! Write-then-rename: the one way stage outputs reach their names.

use std::path::{Path, PathBuf};

/// A failed atomic write, naming the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot serialise as JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl AtomicError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            AtomicError::Io { path, .. } | AtomicError::Json { path, .. } => path,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        AtomicError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The temporary sibling of `path` this process writes before renaming:
/// `<stem>.tmp<pid>.<ext>` (`<name>.tmp<pid>` without an extension), in the same directory (so
/// the rename is atomic), unique per process (so two processes writing the same output cannot
/// interleave), and with the extension kept (encoders such as image writers pick the format
/// from it).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let pid = std::process::id();
    match path.extension() {
        Some(ext) => path.with_extension(format!("tmp{pid}.{}", ext.to_string_lossy())),
        None => {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".tmp{pid}"));
            PathBuf::from(s)
        }
    }
}

/// Runs `write` on the temporary sibling of `path` (parents created), then renames it to
/// `path`; on failure the temporary is removed and `path` keeps its old content.
pub fn write_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<AtomicError>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AtomicError::io(dir, e))?;
    }
    let tmp = tmp_sibling(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        AtomicError::io(path, e).into()
    })
}

/// Writes `bytes` to `path` atomically (parents created).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| AtomicError::io(tmp, e))
    })
}

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), AtomicError> {
    let mut s = serde_json::to_string_pretty(value).map_err(|source| AtomicError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/out.json");
        write_json(&p, &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\n  \"x\": 1\n}\n");
        // A failing writer leaves the old file and no temporary behind.
        let r: Result<(), AtomicError> = write_with(&p, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            Err(AtomicError::io(tmp, std::io::Error::other("disk full")))
        });
        assert!(r.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\n  \"x\": 1\n}\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn the_temporary_keeps_the_extension() {
        let pid = std::process::id();
        assert_eq!(
            tmp_sibling(Path::new("a/grid.png")),
            PathBuf::from(format!("a/grid.tmp{pid}.png"))
        );
        assert_eq!(
            tmp_sibling(Path::new("a/LOCK")),
            PathBuf::from(format!("a/LOCK.tmp{pid}"))
        );
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        // a directory where the file's parent should be
        std::fs::write(d.path().join("f"), b"").unwrap();
        let e = write_atomic(&d.path().join("f/x.json"), b"{}").unwrap_err();
        assert!(e.path().ends_with("f"), "{e}");
        assert!(e
            .to_string()
            .contains(&d.path().join("f").display().to_string()));
    }
}
