//! Where the raw files come from (`data/sources.yaml`), checksum verification and
//! the fetch step.
//!
//! A file is looked for, in order: in the read-only mirror (`ACPO_MIRROR`,
//! default `../shared/data`) under its mirror path; in the download cache
//! (default `.cache/data`) under the same path; then, when the source has a
//! public URL and downloads are allowed, it is downloaded into the cache
//! (to a temporary name, verified, then renamed). Otherwise the error says
//! exactly where to put which file.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The parsed `data/sources.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    /// Source name -> source.
    pub sources: BTreeMap<String, Source>,
}

/// One data source: a set of files from one upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// What it is.
    pub description: String,
    /// The licence as stated upstream.
    #[serde(default)]
    pub licence: String,
    /// The canonical public location (repository at a commit, or release page).
    pub upstream: String,
    /// How a user without the mirror obtains the files that have no `url`.
    #[serde(default)]
    pub how: String,
    /// The files.
    pub files: Vec<SourceFile>,
}

/// One file of a source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Path relative to the mirror root (and to the download cache).
    pub path: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// A direct public download URL, when one gives the identical bytes.
    #[serde(default)]
    pub url: Option<String>,
}

/// Where a file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Location {
    Mirror,
    Cache,
    Downloaded,
}

/// A located, verified source file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    pub source: String,
    pub path: String,
    pub file: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub location: Location,
}

/// Where to look for files and whether downloading is allowed.
#[derive(Debug, Clone)]
pub struct Locator {
    pub mirror: PathBuf,
    pub cache: PathBuf,
    pub allow_download: bool,
}

impl Sources {
    /// Reads and checks `sources.yaml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the YAML text of a sources file (`path` is used in errors only).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let s: Sources = serde_saphyr::from_str(text).map_err(|e| DataError::Format {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for (name, src) in &s.sources {
            for f in &src.files {
                if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(DataError::Format {
                        file: path.to_path_buf(),
                        message: format!(
                            "source {name}, file {}: sha256 must be 64 hex digits",
                            f.path
                        ),
                    });
                }
            }
        }
        Ok(s)
    }

    /// Finds the source and file entry for a mirror path.
    pub fn file(&self, path: &str) -> Result<(&str, &Source, &SourceFile)> {
        for (name, src) in &self.sources {
            if let Some(f) = src.files.iter().find(|f| f.path == path) {
                return Ok((name, src, f));
            }
        }
        Err(DataError::Config(format!(
            "no source in sources.yaml lists the file {path}"
        )))
    }

    /// A source by name.
    pub fn source(&self, name: &str) -> Result<&Source> {
        self.sources.get(name).ok_or_else(|| {
            DataError::Config(format!(
                "unknown source {name:?}; sources.yaml has: {}",
                self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

pub use acpo_core::digest::sha256_hex;

/// Hex SHA-256 and length of a file, streamed (acpo-core's, with the file named on error).
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    acpo_core::digest::sha256_file(path).map_err(|e| DataError::io(path, e))
}

/// Checks a digest against the expected one.
pub fn check_digest(path: &Path, expected: &str, actual: &str) -> Result<()> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual: actual.to_string(),
        })
    }
}

impl Locator {
    /// Finds a file, without reading it: mirror, then cache, then download.
    /// Files found in the cache or downloaded are verified here; a mirror file is
    /// verified by the caller while it reads it (one pass, see [`read_verified`]),
    /// or by [`Locator::resolve_verified`].
    pub fn resolve(&self, sources: &Sources, path: &str) -> Result<Resolved> {
        let (name, src, f) = sources.file(path)?;
        let mk = |file: PathBuf, location| Resolved {
            source: name.to_string(),
            path: f.path.clone(),
            file,
            sha256: f.sha256.clone(),
            bytes: f.bytes,
            location,
        };
        let in_mirror = self.mirror.join(&f.path);
        if in_mirror.is_file() {
            return Ok(mk(in_mirror, Location::Mirror));
        }
        let in_cache = self.cache.join(&f.path);
        if in_cache.is_file() {
            let (actual, _) = sha256_file(&in_cache)?;
            check_digest(&in_cache, &f.sha256, &actual)?;
            return Ok(mk(in_cache, Location::Cache));
        }
        let download_err = match (&f.url, self.allow_download) {
            (Some(url), true) => match download(url, &in_cache, &f.sha256) {
                Ok(()) => return Ok(mk(in_cache, Location::Downloaded)),
                Err(e @ DataError::Checksum { .. }) => return Err(e),
                Err(e) => Some(e.to_string()),
            },
            _ => None,
        };
        Err(DataError::Missing(self.where_to_put(
            name,
            src,
            f,
            download_err,
        )))
    }

    /// Like [`Locator::resolve`], and also verifies a mirror file's checksum.
    pub fn resolve_verified(&self, sources: &Sources, path: &str) -> Result<Resolved> {
        let r = self.resolve(sources, path)?;
        if r.location == Location::Mirror {
            let (actual, _) = sha256_file(&r.file)?;
            check_digest(&r.file, &r.sha256, &actual)?;
        }
        Ok(r)
    }

    fn where_to_put(
        &self,
        name: &str,
        src: &Source,
        f: &SourceFile,
        download_err: Option<String>,
    ) -> String {
        let mut m = format!(
            "missing source file {path} (source {name}: {desc}; sha256 {sha}, {bytes} bytes).\n\
             Put it at {mirror} (the mirror, ACPO_MIRROR or --mirror) or at {cache} (the download cache).",
            path = f.path,
            desc = src.description,
            sha = f.sha256,
            bytes = f.bytes,
            mirror = self.mirror.join(&f.path).display(),
            cache = self.cache.join(&f.path).display(),
        );
        if !self.mirror.is_dir() {
            m.push_str(&format!(
                "\nThe mirror directory {} does not exist.",
                self.mirror.display()
            ));
        }
        match (&f.url, download_err) {
            (Some(_), Some(e)) => m.push_str(&format!("\nDownloading it failed: {e}")),
            (Some(url), None) => m.push_str(&format!(
                "\nIt can be downloaded from {url} (downloads are off: run `acpo stage data fetch`)."
            )),
            (None, _) => m.push_str(&format!(
                "\nIt has no direct download; upstream: {}.",
                src.upstream
            )),
        }
        if !src.how.is_empty() {
            m.push_str(&format!("\nHow it was made: {}", src.how.trim()));
        }
        m
    }
}

/// Reads a whole file into memory and verifies its SHA-256 in the same pass.
pub fn read_verified(path: &Path, expected_sha256: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    check_digest(path, expected_sha256, &sha256_hex(&bytes))?;
    Ok(bytes)
}

/// Downloads `url` to `dest`: streams into `dest.<pid>.tmp` while hashing, checks the
/// SHA-256, then renames into place. Nothing is left behind on failure.
pub fn download(url: &str, dest: &Path, expected_sha256: &str) -> Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let tmp = tmp_name(dest);
    let result = (|| {
        let resp = ureq::get(url).call().map_err(|e| DataError::Download {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let mut reader = resp.into_body().into_reader();
        let mut out = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = reader.read(&mut buf).map_err(|e| DataError::Download {
                url: url.to_string(),
                message: e.to_string(),
            })?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|e| DataError::io(&tmp, e))?;
        }
        out.sync_all().map_err(|e| DataError::io(&tmp, e))?;
        let actual = hex::encode(h.finalize());
        check_digest(dest, expected_sha256, &actual)?;
        std::fs::rename(&tmp, dest).map_err(|e| DataError::io(dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary sibling name for atomic writes.
pub(crate) fn tmp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    dest.with_file_name(name)
}

/// Resolves (and, with downloads allowed, fetches) every file of the named sources,
/// verifying every checksum. Returns what was found where.
pub fn fetch(sources: &Sources, names: &[String], locator: &Locator) -> Result<Vec<Resolved>> {
    let names: Vec<String> = if names.is_empty() {
        sources.sources.keys().cloned().collect()
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for n in &names {
        let src = sources.source(n)?;
        for f in &src.files {
            out.push(locator.resolve_verified(sources, &f.path)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mirror;

    #[test]
    fn mirror_file_is_verified_and_mismatch_names_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (sources, locator) = mirror(dir.path(), &[("a/b.bin", b"hello".to_vec())]);
        let r = locator.resolve_verified(&sources, "a/b.bin").unwrap();
        assert_eq!(r.location, Location::Mirror);
        std::fs::write(locator.mirror.join("a/b.bin"), b"hellO").unwrap();
        let e = locator
            .resolve_verified(&sources, "a/b.bin")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/b.bin"), "{e}");
        assert!(
            e.contains(&format!("expected sha256 {}", sha256_hex(b"hello"))),
            "{e}"
        );
        assert!(
            e.contains(&format!("actual {}", sha256_hex(b"hellO"))),
            "{e}"
        );
    }

    #[test]
    fn missing_mirror_says_where_to_put_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let (sources, mut locator) = mirror(dir.path(), &[("x/y.tar", b"data".to_vec())]);
        locator.mirror = dir.path().join("no-such-mirror");
        let e = locator.resolve(&sources, "x/y.tar").unwrap_err();
        assert!(matches!(e, DataError::Missing(_)));
        let s = e.to_string();
        assert!(
            s.contains(
                &dir.path()
                    .join("no-such-mirror/x/y.tar")
                    .display()
                    .to_string()
            ),
            "{s}"
        );
        assert!(
            s.contains(&dir.path().join("cache/x/y.tar").display().to_string()),
            "{s}"
        );
        assert!(
            s.contains(&sha256_hex(b"data")) && s.contains("does not exist"),
            "{s}"
        );
        // A verified copy in the cache is used instead.
        std::fs::create_dir_all(dir.path().join("cache/x")).unwrap();
        std::fs::write(dir.path().join("cache/x/y.tar"), b"data").unwrap();
        assert_eq!(
            locator.resolve(&sources, "x/y.tar").unwrap().location,
            Location::Cache
        );
        std::fs::write(dir.path().join("cache/x/y.tar"), b"dat").unwrap();
        let e = locator
            .resolve(&sources, "x/y.tar")
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn failed_download_leaves_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        // Port 9 (discard) on loopback: the connection is refused at once.
        let yaml = format!(
            "sources:\n  s:\n    description: d\n    upstream: u\n    files:\n      - path: f.bin\n        sha256: {}\n        bytes: 4\n        url: http://127.0.0.1:9/f.bin\n",
            sha256_hex(b"data")
        );
        let sources = Sources::parse(&yaml, Path::new("s.yaml")).unwrap();
        let locator = Locator {
            mirror: dir.path().join("m"),
            cache: dir.path().join("c"),
            allow_download: true,
        };
        let e = locator.resolve(&sources, "f.bin").unwrap_err().to_string();
        assert!(
            e.contains("Downloading it failed") && e.contains("http://127.0.0.1:9/f.bin"),
            "{e}"
        );
        let left: Vec<_> = walk(&dir.path().join("c"));
        assert!(left.is_empty(), "{left:?}");
        let offline = Locator {
            allow_download: false,
            ..locator
        };
        let e = offline.resolve(&sources, "f.bin").unwrap_err().to_string();
        assert!(e.contains("acpo stage data fetch"), "{e}");
    }

    fn walk(d: &Path) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(d) else {
            return Vec::new();
        };
        rd.flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
    }

    #[test]
    fn bad_sources_yaml_is_rejected() {
        let e = Sources::parse("sources:\n  s:\n    description: d\n    upstream: u\n    files:\n      - path: f\n        sha256: abc\n        bytes: 1\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.yaml") && e.contains("64 hex"), "{e}");
        let e = Sources::parse("sources:\n  s:\n    descripton: d\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.yaml"), "{e}");
    }

    #[test]
    fn the_project_sources_file_parses_and_lists_every_mirror_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sources.yaml");
        let s = Sources::load(&p).unwrap();
        for f in [
            "cifar10/cifar10-jpeg-train.tar",
            "cifar10/cifar-10-binary.tar.gz",
            "natural/kodak24.tar",
            "prompts/drawbench.csv",
        ] {
            s.file(f).unwrap();
        }
        let (_, _, bin) = s.file("cifar10/cifar-10-binary.tar.gz").unwrap();
        assert_eq!(
            bin.url.as_deref(),
            Some("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz")
        );
    }
}
