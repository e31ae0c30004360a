//! Anime faces 64x64: `anime_faces/anime-faces-64.tar`, members `faces/<h>.jpg`
//! where `<h>` is the first 12 hex digits of the file's git blob id.

use crate::error::{DataError, Result};
use crate::images::{decode_members, read_tar_members, Member};
use crate::output::{write_image_dataset, ImageDatasetOutput, Manifest, SourceRecord};
use crate::sources::{read_verified, Locator, Sources};
use crate::split::{shuffled, take_pieces};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::path::Path;

/// Mirror path of the tar.
pub const TAR: &str = "anime_faces/anime-faces-64.tar";

/// Params `data.anime64`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Anime64Config {
    /// Seed of the split (default 0).
    pub seed: u64,
    /// Training images (default all that is left after test and val).
    pub train_size: Option<usize>,
    /// Validation images (default 500).
    pub val_size: usize,
    /// Test images (default 1,000).
    pub test_size: usize,
    /// Check each member's name against its git blob id (default true).
    pub check_blob_ids: bool,
    /// Images in preview.png (default 64).
    pub preview_count: usize,
}

impl Default for Anime64Config {
    fn default() -> Self {
        Anime64Config {
            seed: 0,
            train_size: None,
            val_size: 500,
            test_size: 1000,
            check_blob_ids: true,
            preview_count: 64,
        }
    }
}

/// Checks that a `faces/<h>.jpg` member's git blob id starts with `<h>`.
pub fn check_blob_id(archive: &Path, m: &Member) -> Result<()> {
    let bad = |msg: String| DataError::Member {
        archive: archive.to_path_buf(),
        member: m.name.clone(),
        message: msg,
    };
    let stem = m
        .name
        .strip_prefix("faces/")
        .and_then(|s| s.strip_suffix(".jpg"))
        .ok_or_else(|| bad("expected a path faces/<12 hex digits>.jpg".into()))?;
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", m.data.len()).as_bytes());
    h.update(&m.data);
    let id = hex::encode(h.finalize());
    if !id.starts_with(stem) || stem.len() != 12 {
        return Err(bad(format!(
            "content does not match its name: git blob id is {id}, the name says {stem}…"
        )));
    }
    Ok(())
}

/// The `prepare anime64` stage.
pub fn prepare(
    cfg: &Anime64Config,
    sources: &Sources,
    locator: &Locator,
    dest: &Path,
) -> Result<Manifest> {
    let r = locator.resolve(sources, TAR)?;
    let bytes = read_verified(&r.file, &r.sha256)?;
    let members = read_tar_members(&bytes[..], &r.file)?;
    if members.is_empty() {
        return Err(DataError::Tar {
            archive: r.file.clone(),
            message: "no image members".into(),
        });
    }
    let check = cfg.check_blob_ids;
    let all = decode_members(&r.file, &members, (64, 64), |m| {
        if check {
            check_blob_id(&r.file, m)?;
        }
        Ok(0)
    })?;
    let order = shuffled(all.len(), cfg.seed);
    let p = take_pieces(
        &order,
        &[
            ("test", Some(cfg.test_size)),
            ("val", Some(cfg.val_size)),
            ("train", cfg.train_size),
        ],
    )
    .map_err(|e| DataError::Config(format!("data.anime64: {e}")))?;
    let details = serde_json::json!({
        "raw_count": all.len(),
        "split_rule": "seeded shuffle of all faces; test, then val, then train",
        "seed": cfg.seed,
        "blob_ids_checked": check,
        "caveat": "15,000 of the 22,969 distinct faces of the upstream repository (mirror size budget); \
                   FIDs are not comparable to the full set's",
    });
    write_image_dataset(
        dest,
        ImageDatasetOutput {
            name: "anime64",
            description: "anime faces 64x64 (unlabelled; label 0)",
            classes: vec!["face".to_string()],
            splits: vec![
                ("train", all.select(&p[2])),
                ("val", all.select(&p[1])),
                ("test", all.select(&p[0])),
            ],
            sources: vec![SourceRecord::new(&r, members.len())],
            details,
            config: cfg,
            preview_count: cfg.preview_count,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode, mirror, pattern, tar_of};
    use image::ImageFormat;

    fn face(seed: u8) -> (String, Vec<u8>) {
        let data = encode(&pattern(64, 64, seed), ImageFormat::Jpeg);
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", data.len()).as_bytes());
        h.update(&data);
        (
            format!("faces/{}.jpg", &hex::encode(h.finalize())[..12]),
            data,
        )
    }

    #[test]
    fn prepares_and_checks_blob_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<(String, Vec<u8>)> = (0..20).map(face).collect();
        files.sort();
        let (sources, locator) = mirror(dir.path(), &[(TAR, tar_of(&files))]);
        let cfg = Anime64Config {
            val_size: 3,
            test_size: 5,
            train_size: Some(10),
            ..Default::default()
        };
        let m = prepare(&cfg, &sources, &locator, &dir.path().join("anime64")).unwrap();
        assert_eq!(
            (
                m.splits["train"].count,
                m.splits["val"].count,
                m.splits["test"].count
            ),
            (10, 3, 5)
        );
        assert_eq!(m.image_size, [64, 64]);

        // A member whose bytes do not match its name is named.
        let mut bad = files.clone();
        bad[4].1 = face(99).1;
        let (sources, locator) = mirror(&dir.path().join("b"), &[(TAR, tar_of(&bad))]);
        let e = prepare(&cfg, &sources, &locator, &dir.path().join("b/out"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad[4].0) && e.contains("git blob id"), "{e}");
        assert!(!dir.path().join("b/out").exists());
    }
}
