//! Writing a prepared dataset directory atomically: everything goes into a
//! temporary sibling directory which replaces the old output only on success.

use crate::error::{DataError, Result};
use crate::images::{write_png, ImageSet};
use crate::sources::Resolved;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Counts of one split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SplitStats {
    pub count: usize,
    /// Class name -> count (classes with zero images included).
    pub per_class: BTreeMap<String, usize>,
}

/// A source file as recorded in a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// `mirror`, `cache` or `downloaded`.
    pub location: String,
    /// How many members/records were read from it.
    pub items: usize,
}

impl SourceRecord {
    pub fn new(r: &Resolved, items: usize) -> Self {
        SourceRecord {
            path: r.path.clone(),
            sha256: r.sha256.clone(),
            bytes: r.bytes,
            location: serde_json::to_value(r.location)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            items,
        }
    }
}

/// `manifest.json` of an image dataset: the stage's metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub dataset: String,
    pub description: String,
    /// `[height, width]`.
    pub image_size: [u32; 2],
    pub channels: u32,
    pub classes: Vec<String>,
    pub splits: BTreeMap<String, SplitStats>,
    pub sources: Vec<SourceRecord>,
    /// Dataset-specific facts (format read, photos per split, ...).
    pub details: serde_json::Value,
}

/// Per-class counts of a set.
pub fn split_stats(set: &ImageSet, classes: &[String]) -> SplitStats {
    let mut per_class: BTreeMap<String, usize> = classes.iter().map(|c| (c.clone(), 0)).collect();
    for &l in &set.labels {
        let name = classes
            .get(l as usize)
            .cloned()
            .unwrap_or_else(|| format!("label {l}"));
        *per_class.entry(name).or_default() += 1;
    }
    SplitStats {
        count: set.len(),
        per_class,
    }
}

/// A directory being written; [`Staging::commit`] moves it into place.
pub struct Staging {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staging {
    /// Starts writing `dest` (removes stale temporaries of this process).
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| DataError::Config(format!("bad output directory {}", dest.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = dest.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(Staging {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// The path of a file inside the staging directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    /// Writes pretty JSON.
    pub fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<()> {
        let p = self.path(file);
        let text = serde_json::to_string_pretty(value).map_err(|e| DataError::Write {
            path: p.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&p, text + "\n").map_err(|e| DataError::io(&p, e))
    }

    /// Replaces `dest` with the staged directory.
    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            std::fs::remove_dir_all(&self.dest).map_err(|e| DataError::io(&self.dest, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| DataError::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Everything an image dataset stage writes.
pub struct ImageDatasetOutput<'a, C: Serialize> {
    pub name: &'a str,
    pub description: &'a str,
    pub classes: Vec<String>,
    /// `(split name, set)`, e.g. train, val, test.
    pub splits: Vec<(&'a str, ImageSet)>,
    pub sources: Vec<SourceRecord>,
    pub details: serde_json::Value,
    pub config: &'a C,
    pub preview_count: usize,
}

/// Writes `<dest>/{<split>.safetensors, manifest.json, config.json, preview.png}` atomically
/// and returns the manifest.
pub fn write_image_dataset<C: Serialize>(
    dest: &Path,
    out: ImageDatasetOutput<'_, C>,
) -> Result<Manifest> {
    let first = out
        .splits
        .first()
        .ok_or_else(|| DataError::Config("no splits to write".into()))?;
    let (h, w) = (first.1.height, first.1.width);
    let staging = Staging::new(dest)?;
    let mut stats = BTreeMap::new();
    for (split, set) in &out.splits {
        let mut meta = HashMap::new();
        meta.insert("dataset".to_string(), out.name.to_string());
        meta.insert("split".to_string(), split.to_string());
        meta.insert("classes".to_string(), out.classes.join(","));
        set.write_safetensors(&staging.path(&format!("{split}.safetensors")), meta)?;
        stats.insert(split.to_string(), split_stats(set, &out.classes));
    }
    let manifest = Manifest {
        dataset: out.name.to_string(),
        description: out.description.to_string(),
        image_size: [h, w],
        channels: 3,
        classes: out.classes.clone(),
        splits: stats,
        sources: out.sources,
        details: out.details,
    };
    staging.write_json("manifest.json", &manifest)?;
    staging.write_json("config.json", out.config)?;
    let tile = h.clamp(32, 96);
    let preview = first.1.preview(out.preview_count, 8, tile);
    write_png(&preview, &staging.path("preview.png"))?;
    staging.commit()?;
    Ok(manifest)
}
