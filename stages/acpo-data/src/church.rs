//! `church256-standin`: LSUN Church cannot be obtained, so this 256x256 benchmark is a
//! stand-in of deterministic crops of the 24 Kodak photographs (`natural/kodak24.tar`,
//! members `kodak/kodimNN.png`, 768x512 or 512x768). Splits are made by photograph, so no
//! photo contributes crops to two splits.

use crate::error::{DataError, Result};
use crate::images::{decode_member, read_tar_members, ImageSet};
use crate::output::{write_image_dataset, ImageDatasetOutput, Manifest, SourceRecord};
use crate::sources::{read_verified, Locator, Sources};
use crate::split::{shuffled, take_pieces};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The dataset's name, as users see it.
pub const NAME: &str = "church256-standin";
/// Mirror path of the tar.
pub const TAR: &str = "natural/kodak24.tar";

/// Params `data.church256-standin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Church256Config {
    /// Seed of the photo-level split (default 0).
    pub seed: u64,
    /// Side of the square crops (default 256).
    pub crop_size: u32,
    /// Step between crop origins, in pixels of the (resized) photo (default 128).
    pub stride: u32,
    /// Resize each photo so its short side has this many pixels before cropping
    /// (default none: crop at the native 768x512 resolution).
    pub resize_short_side: Option<u32>,
    /// Photographs whose crops form the validation split (default 2).
    pub val_photos: usize,
    /// Photographs whose crops form the test split (default 4).
    pub test_photos: usize,
    /// Images in preview.png (default 16).
    pub preview_count: usize,
}

impl Default for Church256Config {
    fn default() -> Self {
        Church256Config {
            seed: 0,
            crop_size: 256,
            stride: 128,
            resize_short_side: None,
            val_photos: 2,
            test_photos: 4,
            preview_count: 16,
        }
    }
}

/// Crop origins along one axis: `0, stride, ...` while the crop fits, plus the last
/// position flush with the edge when the stride does not land on it.
pub fn origins(len: u32, crop: u32, stride: u32) -> Vec<u32> {
    if len < crop {
        return Vec::new();
    }
    let mut v: Vec<u32> = (0..=(len - crop)).step_by(stride.max(1) as usize).collect();
    if *v.last().expect("non-empty") != len - crop {
        v.push(len - crop);
    }
    v
}

/// The deterministic crops of one photo, row by row.
pub fn crops(photo: &RgbImage, cfg: &Church256Config) -> Vec<RgbImage> {
    let photo = match cfg.resize_short_side {
        Some(s) if s != photo.width().min(photo.height()) => {
            let (w, h) = (photo.width() as f64, photo.height() as f64);
            let k = s as f64 / w.min(h);
            let (nw, nh) = ((w * k).round() as u32, (h * k).round() as u32);
            image::imageops::resize(photo, nw, nh, image::imageops::FilterType::Lanczos3)
        }
        _ => photo.clone(),
    };
    let c = cfg.crop_size;
    let mut out = Vec::new();
    for y in origins(photo.height(), c, cfg.stride) {
        for x in origins(photo.width(), c, cfg.stride) {
            out.push(image::imageops::crop_imm(&photo, x, y, c, c).to_image());
        }
    }
    out
}

/// The `prepare church256-standin` stage.
pub fn prepare(
    cfg: &Church256Config,
    sources: &Sources,
    locator: &Locator,
    dest: &Path,
) -> Result<Manifest> {
    if cfg.crop_size == 0 || cfg.stride == 0 {
        return Err(DataError::Config(format!(
            "data.{NAME}: crop_size and stride must be positive"
        )));
    }
    let r = locator.resolve(sources, TAR)?;
    let bytes = read_verified(&r.file, &r.sha256)?;
    let members = read_tar_members(&bytes[..], &r.file)?;
    if members.is_empty() {
        return Err(DataError::Tar {
            archive: r.file.clone(),
            message: "no image members".into(),
        });
    }
    let photos: Vec<RgbImage> = members
        .par_iter()
        .map(|m| {
            let img = decode_member(&r.file, m, None)?;
            let ok = matches!((img.width(), img.height()), (768, 512) | (512, 768));
            if !ok {
                return Err(DataError::WrongSize {
                    archive: r.file.clone(),
                    member: m.name.clone(),
                    width: img.width(),
                    height: img.height(),
                    expected_width: 768,
                    expected_height: 512,
                });
            }
            Ok(img)
        })
        .collect::<Result<_>>()?;
    let order = shuffled(photos.len(), cfg.seed);
    let p = take_pieces(
        &order,
        &[
            ("test", Some(cfg.test_photos)),
            ("val", Some(cfg.val_photos)),
            ("train", None),
        ],
    )
    .map_err(|e| DataError::Config(format!("data.{NAME}: {e} photographs")))?;
    let c = cfg.crop_size;
    let build = |idx: &[usize]| -> Result<ImageSet> {
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        let mut set = ImageSet::new(c, c);
        for &i in &idx {
            for crop in crops(&photos[i], cfg) {
                set.push(crop.as_raw(), 0);
            }
        }
        if set.is_empty() && !idx.is_empty() {
            return Err(DataError::Config(format!(
                "data.{NAME}: crop_size {c} does not fit in the photographs"
            )));
        }
        Ok(set)
    };
    let (test, val, train) = (build(&p[0])?, build(&p[1])?, build(&p[2])?);
    let names = |idx: &[usize]| -> Vec<String> {
        let mut v: Vec<String> = idx.iter().map(|&i| members[i].name.clone()).collect();
        v.sort();
        v
    };
    let details = serde_json::json!({
        "standin_for": "LSUN Church 256x256 (not obtainable); deterministic crops of the Kodak 24 photographs",
        "photos": { "train": names(&p[2]), "val": names(&p[1]), "test": names(&p[0]) },
        "crops_per_photo": crops(&photos[0], cfg).len(),
        "split_rule": "seeded shuffle of the photographs; all crops of a photo go to one split",
        "seed": cfg.seed,
    });
    write_image_dataset(
        dest,
        ImageDatasetOutput {
            name: NAME,
            description: "256x256 stand-in for LSUN Church: crops of the Kodak 24 photographs (unlabelled; label 0)",
            classes: vec!["photo-crop".to_string()],
            splits: vec![("train", train), ("val", val), ("test", test)],
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

    #[test]
    fn crop_grid() {
        assert_eq!(origins(768, 256, 128), vec![0, 128, 256, 384, 512]);
        assert_eq!(origins(512, 256, 128), vec![0, 128, 256]);
        assert_eq!(origins(700, 256, 256), vec![0, 256, 444]);
        assert!(origins(200, 256, 128).is_empty());
        let photo = pattern(768, 512, 3);
        let c = crops(&photo, &Church256Config::default());
        assert_eq!(c.len(), 15);
        assert_eq!(c[1].get_pixel(0, 0), photo.get_pixel(128, 0));
        let resized = Church256Config {
            resize_short_side: Some(256),
            ..Default::default()
        };
        assert_eq!(
            crops(&photo, &resized).len(),
            2,
            "384x256 -> origins 0 and 128"
        );
    }

    #[test]
    fn splits_by_photo_and_rejects_wrong_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..4)
            .map(|i| {
                let img = if i % 2 == 0 {
                    pattern(768, 512, i)
                } else {
                    pattern(512, 768, i)
                };
                (
                    format!("kodak/kodim{:02}.png", i + 1),
                    encode(&img, ImageFormat::Png),
                )
            })
            .collect();
        let (sources, locator) = mirror(dir.path(), &[(TAR, tar_of(&files))]);
        let cfg = Church256Config {
            val_photos: 1,
            test_photos: 1,
            stride: 256,
            ..Default::default()
        };
        let m = prepare(&cfg, &sources, &locator, &dir.path().join(NAME)).unwrap();
        // 768x512 with stride 256: x in {0, 256, 512}, y in {0, 256} -> 6 crops per photo.
        assert_eq!(
            (
                m.splits["train"].count,
                m.splits["val"].count,
                m.splits["test"].count
            ),
            (12, 6, 6)
        );
        assert_eq!(m.image_size, [256, 256]);
        assert_eq!(m.dataset, "church256-standin");

        let mut bad = files.clone();
        bad[2].1 = encode(&pattern(640, 480, 1), ImageFormat::Png);
        let (sources, locator) = mirror(&dir.path().join("b"), &[(TAR, tar_of(&bad))]);
        let e = prepare(&cfg, &sources, &locator, &dir.path().join("b/out"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kodak/kodim03.png") && e.contains("640x480"),
            "{e}"
        );
        assert!(!dir.path().join("b/out").exists());
    }
}
