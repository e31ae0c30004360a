//! Content hashing: files (SHA-256), directories (sorted Merkle trees over walkdir), and a
//! stat cache keyed by (path, size, mtime, inode) so unchanged files are not read twice.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Version tag of the hash cache file (bump when its format changes).
const CACHE_FILE: &str = "hashcache-v1.json";

/// What a dependency or output is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathHash {
    /// `file` or `dir`.
    pub kind: String,
    /// SHA-256 of the file, or the Merkle root of the directory (hex).
    pub hash: String,
    /// Total bytes.
    pub size: u64,
    /// Number of files (1 for a file).
    pub files: u64,
}

/// One file inside a hashed directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the directory, `/`-separated; empty for a single file.
    pub path: String,
    /// `file` or `dir`.
    pub kind: String,
    /// SHA-256 of the file; empty for a directory.
    pub hash: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    stat: Stat,
    hash: String,
}

/// File hashes remembered by stat; stored in `.acpo/hashcache-v1.json`.
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, Cached>,
    dirty: bool,
    /// Bytes read and hashed since load (for benchmarks and reports).
    pub bytes_hashed: u64,
}

impl HashCache {
    /// A cache that is never saved.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// Loads the cache kept under `state_dir` (a missing or unreadable cache is empty).
    pub fn load(state_dir: &Path) -> HashCache {
        let file = state_dir.join(CACHE_FILE);
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<(PathBuf, Cached)>>(&b).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        HashCache {
            file: Some(file),
            entries,
            dirty: false,
            bytes_hashed: 0,
        }
    }

    /// Writes the cache back (atomically) if it changed; entries of vanished files are dropped.
    pub fn save(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        self.entries.retain(|p, _| p.exists());
        let mut v: Vec<(&PathBuf, &Cached)> = self.entries.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        let bytes = serde_json::to_vec(&v).map_err(|e| Error::Corrupt {
            path: file.clone(),
            message: e.to_string(),
        })?;
        crate::fsutil::write_atomic(file, &bytes)?;
        self.dirty = false;
        Ok(())
    }

    /// Hashes a file or directory; `None` when `path` does not exist.
    pub fn hash_path(&mut self, path: &Path) -> Result<Option<PathHash>> {
        Ok(self.tree(path)?.map(|(h, _)| h))
    }

    /// Hashes a file or directory and lists its files; `None` when it does not exist.
    pub fn tree(&mut self, path: &Path) -> Result<Option<(PathHash, Vec<TreeEntry>)>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        if !meta.is_file() && !meta.is_dir() {
            return Err(special_file(path, &meta));
        }
        if meta.is_file() {
            let hash = self
                .hash_files(&[(path.to_path_buf(), Stat::of(&meta))])?
                .remove(0);
            let entry = TreeEntry {
                path: String::new(),
                kind: "file".into(),
                hash: hash.clone(),
                size: meta.len(),
            };
            let h = PathHash {
                kind: "file".into(),
                hash,
                size: meta.len(),
                files: 1,
            };
            return Ok(Some((h, vec![entry])));
        }
        // Directory: sorted walk, then one Merkle root over (kind, path, hash) records.
        let mut entries = Vec::new();
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(path)
            .follow_links(true)
            .sort_by_file_name()
            .min_depth(1)
        {
            let e = e.map_err(|e| {
                let p = e.path().unwrap_or(path).to_path_buf();
                Error::io(p, e.into())
            })?;
            let rel = e
                .path()
                .strip_prefix(path)
                .unwrap_or(e.path())
                .to_str()
                .ok_or_else(|| Error::NonUtf8Name {
                    path: e.path().to_path_buf(),
                })?
                .replace('\\', "/");
            let m = e
                .metadata()
                .map_err(|err| Error::io(e.path(), err.into()))?;
            if !m.is_file() && !m.is_dir() {
                return Err(special_file(e.path(), &m));
            }
            if m.is_dir() {
                entries.push(TreeEntry {
                    path: rel,
                    kind: "dir".into(),
                    hash: String::new(),
                    size: 0,
                });
            } else {
                files.push((e.path().to_path_buf(), Stat::of(&m)));
                entries.push(TreeEntry {
                    path: rel,
                    kind: "file".into(),
                    hash: String::new(),
                    size: m.len(),
                });
            }
        }
        let hashes = self.hash_files(&files)?;
        let mut it = hashes.into_iter();
        for e in entries.iter_mut().filter(|e| e.kind == "file") {
            e.hash = it.next().unwrap_or_default();
        }
        let mut enc = crate::key::Encoder::new("acpo-tree", 1);
        for e in &entries {
            enc.field(&e.kind);
            enc.field(&e.path);
            enc.field(&e.hash);
        }
        let h = PathHash {
            kind: "dir".into(),
            hash: enc.finish(),
            size: entries.iter().map(|e| e.size).sum(),
            files: files.len() as u64,
        };
        Ok(Some((h, entries)))
    }

    /// Hashes files, reading only those whose stat changed; misses are hashed in parallel.
    fn hash_files(&mut self, files: &[(PathBuf, Stat)]) -> Result<Vec<String>> {
        let mut out: Vec<Option<String>> = files
            .iter()
            .map(|(p, st)| {
                self.entries
                    .get(p)
                    .filter(|c| c.stat == *st)
                    .map(|c| c.hash.clone())
            })
            .collect();
        let misses: Vec<usize> = (0..files.len()).filter(|&i| out[i].is_none()).collect();
        if !misses.is_empty() {
            let paths: Vec<&Path> = misses.iter().map(|&i| files[i].0.as_path()).collect();
            let hashed = hash_files_parallel(&paths);
            for (&i, r) in misses.iter().zip(hashed) {
                let h = r?;
                self.bytes_hashed += files[i].1.size;
                self.entries.insert(
                    files[i].0.clone(),
                    Cached {
                        stat: files[i].1,
                        hash: h.clone(),
                    },
                );
                self.dirty = true;
                out[i] = Some(h);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// The error for something that is neither a regular file nor a directory (links followed).
fn special_file(path: &Path, meta: &std::fs::Metadata) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    };
    Error::SpecialFile {
        path: path.to_path_buf(),
        what,
    }
}

/// Opens a file for reading only if it is a regular file. `O_NONBLOCK` makes opening a FIFO
/// (put there after it was listed) return at once; the type is then checked on the open file.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(special_file(path, &meta));
    }
    Ok(f)
}

/// SHA-256 (hex) of everything `reader` (the file at `path`, named in errors) yields, in 1 MiB
/// reads; `each` sees every chunk too (to copy while hashing).
pub(crate) fn sha256_read(
    reader: &mut impl Read,
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        each(&buf[..n])?;
    }
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of one regular file (hex); anything else is an error naming it.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_read(&mut open_regular(path)?, path, |_| Ok(()))
}

/// Hashes files on all cores (or `ACPO_HASH_THREADS`). Hand-written (a scoped-thread work queue) rather than
/// pulling in rayon for this one loop.
pub fn hash_files_parallel(paths: &[&Path]) -> Vec<Result<String>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::env::var("ACPO_HASH_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .min(paths.len().max(1));
    if threads <= 1 {
        return paths.iter().map(|p| sha256_file(p)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<String>>>> =
        paths.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= paths.len() {
                    break;
                }
                let r = sha256_file(paths[i]);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Ok(String::new()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_matches_sha256_and_cache_skips_reads() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.txt");
        std::fs::write(&f, "hello\n").unwrap();
        let mut c = HashCache::in_memory();
        let h = c.hash_path(&f).unwrap().unwrap();
        assert_eq!(
            h.hash,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(c.bytes_hashed, 6);
        c.hash_path(&f).unwrap();
        assert_eq!(
            c.bytes_hashed, 6,
            "second hash must come from the stat cache"
        );
    }

    #[test]
    fn directory_hash_depends_on_names_and_contents_only() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("x"), "1").unwrap();
        std::fs::write(a.join("sub/y"), "2").unwrap();
        let mut c = HashCache::in_memory();
        let h1 = c.hash_path(&a).unwrap().unwrap();
        assert_eq!(h1.files, 2);
        let b = d.path().join("b");
        std::fs::create_dir_all(b.join("sub")).unwrap();
        std::fs::write(b.join("sub/y"), "2").unwrap();
        std::fs::write(b.join("x"), "1").unwrap();
        assert_eq!(c.hash_path(&b).unwrap().unwrap().hash, h1.hash);
        std::fs::write(b.join("x"), "3").unwrap();
        assert_ne!(c.hash_path(&b).unwrap().unwrap().hash, h1.hash);
        assert!(c.hash_path(&d.path().join("none")).unwrap().is_none());
    }

    fn mkfifo(p: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn fifos_devices_and_links_to_them_are_errors_not_hangs() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("x"), "1").unwrap();
        mkfifo(&a.join("pipe"));
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        let b = d.path().join("b");
        std::fs::create_dir_all(&b).unwrap();
        std::os::unix::fs::symlink("/dev/zero", b.join("zero")).unwrap();
        let mut c = HashCache::in_memory();
        let cases = [
            (a.join("pipe"), "FIFO"),
            (a.clone(), "FIFO"),
            (d.path().join("zero"), "character device"),
            (b.clone(), "character device"),
        ];
        for (p, what) in cases {
            let e = c.hash_path(&p).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::BadInput, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(what), "{msg}");
            assert!(msg.contains("pipe") || msg.contains("zero"), "{msg}");
        }
        // The same check on an opened file, for what changes after it was listed.
        assert!(sha256_file(&a.join("pipe")).is_err());
        assert!(sha256_file(&a.join("x")).is_ok());
        // Links to regular files and directories are followed as before.
        std::os::unix::fs::symlink(a.join("x"), b.join("x")).unwrap();
        std::fs::remove_file(b.join("zero")).unwrap();
        assert_eq!(c.hash_path(&b).unwrap().unwrap().files, 1);
    }
}
