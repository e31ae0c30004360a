//! Anime faces: `anime_faces/anime-faces-64.tar`, members `faces/<h>.jpg` where `<h>` is
//! the first 12 hex digits of the file's git blob id.
//!
//! Two datasets come from the tar through one code path ([`prepare`] with a side length):
//! `anime64` (the 64x64 faces) and `anime32` (each 64x64 face halved by an exact 2x2 box
//! average, [`crate::images::box_average_2x2`]). Both use the same seeded split of the same
//! member order, so with equal params a split holds the same faces in both.

use crate::error::{DataError, Result};
use crate::images::{decode_members, read_tar_members, Member, BOX_AVERAGE_2X2_RULE};
use crate::output::{write_image_dataset, ImageDatasetOutput, Manifest, SourceRecord};
use crate::sources::{read_verified, Locator, Sources};
use crate::split::{shuffled, take_pieces};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::path::Path;

/// Mirror path of the tar.
pub const TAR: &str = "anime_faces/anime-faces-64.tar";

/// Side length of the decoded faces (the tar's size).
pub const SOURCE_SIDE: u32 = 64;

/// The side lengths [`prepare`] writes: 64 (`anime64`) and 32 (`anime32`).
pub const SIDES: [u32; 2] = [64, 32];

/// The dataset name of a side length (`anime64`, `anime32`).
pub fn name(side: u32) -> Result<&'static str> {
    match side {
        64 => Ok("anime64"),
        32 => Ok("anime32"),
        _ => Err(DataError::Config(format!(
            "anime faces: unsupported side length {side}; expected one of {SIDES:?}"
        ))),
    }
}

/// Params `data.anime64` and `data.anime32` (one type; see [`Anime64Config`], [`Anime32Config`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnimeConfig {
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

/// Params `data.anime64`.
pub type Anime64Config = AnimeConfig;
/// Params `data.anime32` (the same fields and defaults as `data.anime64`).
pub type Anime32Config = AnimeConfig;

impl Default for AnimeConfig {
    fn default() -> Self {
        AnimeConfig {
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

/// The `prepare anime64` (`side` 64) and `prepare anime32` (`side` 32) stages.
///
/// Faces are decoded at 64x64 and split (seeded shuffle: test, val, train) identically for
/// both sides; for 32 every face is then halved by an exact 2x2 box average.
pub fn prepare(
    cfg: &AnimeConfig,
    side: u32,
    sources: &Sources,
    locator: &Locator,
    dest: &Path,
) -> Result<Manifest> {
    let name = name(side)?;
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
    let all = decode_members(&r.file, &members, (SOURCE_SIDE, SOURCE_SIDE), |m| {
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
    .map_err(|e| DataError::Config(format!("data.{name}: {e}")))?;
    let mut details = serde_json::json!({
        "raw_count": all.len(),
        "split_rule": "seeded shuffle of all faces; test, then val, then train",
        "seed": cfg.seed,
        "blob_ids_checked": check,
        "caveat": "15,000 of the 22,969 distinct faces of the upstream repository (mirror size budget); \
                   FIDs are not comparable to the full set's",
    });
    let (all, description) = if side == SOURCE_SIDE {
        (all, "anime faces 64x64 (unlabelled; label 0)")
    } else {
        details["downscale"] = serde_json::json!(format!(
            "{SOURCE_SIDE}x{SOURCE_SIDE} -> {side}x{side}: {BOX_AVERAGE_2X2_RULE}; \
             same split as anime64 with the same seed and sizes"
        ));
        (
            all.box_average_2x2(),
            "anime faces 32x32 (2x2 box average of the 64x64 faces)",
        )
    };
    write_image_dataset(
        dest,
        ImageDatasetOutput {
            name,
            description,
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
        let m = prepare(&cfg, 64, &sources, &locator, &dir.path().join("anime64")).unwrap();
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
        let e = prepare(&cfg, 64, &sources, &locator, &dir.path().join("b/out"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad[4].0) && e.contains("git blob id"), "{e}");
        assert!(!dir.path().join("b/out").exists());
    }

    #[test]
    fn anime32_has_the_anime64_split_at_half_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<(String, Vec<u8>)> = (0..20).map(face).collect();
        files.sort();
        let (sources, locator) = mirror(dir.path(), &[(TAR, tar_of(&files))]);
        let cfg = Anime32Config {
            seed: 7,
            val_size: 3,
            test_size: 5,
            train_size: None,
            ..Default::default()
        };
        let (d64, d32) = (dir.path().join("anime64"), dir.path().join("anime32"));
        let m64 = prepare(&cfg, 64, &sources, &locator, &d64).unwrap();
        let m32 = prepare(&cfg, 32, &sources, &locator, &d32).unwrap();
        assert_eq!(
            (m32.dataset.as_str(), m32.image_size),
            ("anime32", [32, 32])
        );
        assert_eq!(m32.splits, m64.splits);
        assert_eq!(m32.details["raw_count"], 20);
        assert!(m32.details["downscale"]
            .as_str()
            .unwrap()
            .contains("(a + b + c + d + 2) / 4"));
        assert!(m64.details.get("downscale").is_none());

        let mut distinct = std::collections::HashSet::new();
        for split in ["train", "val", "test"] {
            let a = crate::load_split(dir.path(), "anime64", split).unwrap();
            let b = crate::load_split(dir.path(), "anime32", split).unwrap();
            assert_eq!((b.height, b.width, b.len()), (32, 32, a.len()), "{split}");
            assert_eq!(b.labels, a.labels);
            // The same faces in the same order (the synthetic faces all differ), each exactly
            // the box average of its 64x64 face.
            assert_eq!(b, a.box_average_2x2(), "{split}");
            distinct.extend((0..b.len()).map(|i| b.image(i).to_vec()));
            // One pixel by hand: output (x, y) = (5, 3) of the first image, green channel.
            let px = |img: &[u8], w: usize, x: usize, y: usize, c: usize| {
                img[(y * w + x) * 3 + c] as u32
            };
            let (x, y) = (5, 3);
            let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(dx, dy)| px(a.image(0), 64, 2 * x + dx, 2 * y + dy, 1))
                .sum();
            assert_eq!(px(b.image(0), 32, x, y, 1), (sum + 2) / 4, "{split}");
        }
        assert_eq!(
            distinct.len(),
            20,
            "every 32x32 face differs, so equal sets mean equal faces"
        );

        // A bad config keeps its clear error, naming anime32's params.
        let too_many = Anime32Config {
            test_size: 30,
            ..cfg.clone()
        };
        let e = prepare(&too_many, 32, &sources, &locator, &dir.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.anime32") && e.contains("split test"),
            "{e}"
        );
        let e = prepare(&cfg, 48, &sources, &locator, &dir.path().join("y"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("48"), "{e}");
    }
}
