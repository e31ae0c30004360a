//! CIFAR-10: the mirror's JPEG tars (`train/<class>/NNNN.jpg`) or the official
//! binary release (`cifar-10-binary.tar.gz` holding `cifar-10-batches-bin/`).

use crate::error::{DataError, Result};
use crate::images::{decode_members, read_tar_members, ImageSet, Member};
use crate::output::{write_image_dataset, ImageDatasetOutput, Manifest, SourceRecord};
use crate::sources::{read_verified, Locator, Resolved, Sources};
use crate::split::{stratified, take_pieces};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The CIFAR-10 class names in label order (alphabetical = the standard indices 0..9).
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Mirror path of the JPEG train tar.
pub const JPEG_TRAIN: &str = "cifar10/cifar10-jpeg-train.tar";
/// Mirror path of the JPEG test tar.
pub const JPEG_TEST: &str = "cifar10/cifar10-jpeg-test.tar";
/// Mirror/cache path of the official binary release.
pub const BINARY: &str = "cifar10/cifar-10-binary.tar.gz";

/// Bytes of one record of the binary format: 1 label byte + 3 x 1024 channel-planar pixels.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Which raw format to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CifarFormat {
    /// The mirror's JPEG tars when present, else the official binary release.
    #[default]
    Auto,
    /// The JPEG tars (quality-75 proxy of CIFAR-10).
    Jpeg,
    /// The official lossless binary release.
    Binary,
}

/// Params `data.cifar10`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cifar10Config {
    /// Raw format to read (default `auto`).
    pub format: CifarFormat,
    /// Seed of the split (default 0).
    pub seed: u64,
    /// Training images (default all that is left of the 50,000 after `val_size`).
    pub train_size: Option<usize>,
    /// Validation images carved from the official train set (default 1,000).
    pub val_size: usize,
    /// Test images taken from the official test set (default all 10,000).
    pub test_size: Option<usize>,
    /// Images in preview.png (default 64).
    pub preview_count: usize,
}

impl Default for Cifar10Config {
    fn default() -> Self {
        Cifar10Config {
            format: CifarFormat::Auto,
            seed: 0,
            train_size: None,
            val_size: 1000,
            test_size: None,
            preview_count: 64,
        }
    }
}

/// The label of a JPEG member `<split>/<class>/NNNN.jpg`.
pub fn label_of_member(archive: &Path, split: &str, m: &Member) -> Result<i64> {
    let parts: Vec<&str> = m.name.split('/').collect();
    let bad = |msg: String| DataError::Member {
        archive: archive.to_path_buf(),
        member: m.name.clone(),
        message: msg,
    };
    if parts.len() != 3 || parts[0] != split {
        return Err(bad(format!("expected a path {split}/<class>/<n>.jpg")));
    }
    CLASSES
        .iter()
        .position(|c| *c == parts[1])
        .map(|i| i as i64)
        .ok_or_else(|| {
            bad(format!(
                "unknown class {:?} (expected one of {})",
                parts[1],
                CLASSES.join(", ")
            ))
        })
}

/// Decodes a JPEG tar (bytes already read and verified) into 32x32 images with labels.
pub fn decode_jpeg_tar(bytes: &[u8], archive: &Path, split: &str) -> Result<ImageSet> {
    let members = read_tar_members(bytes, archive)?;
    if members.is_empty() {
        return Err(DataError::Tar {
            archive: archive.to_path_buf(),
            message: "no image members".into(),
        });
    }
    decode_members(archive, &members, (32, 32), |m| {
        label_of_member(archive, split, m)
    })
}

/// Parses records of the canonical `cifar-10-batches-bin` format (`data_batch_N.bin`,
/// `test_batch.bin`): each record is one label byte (0..9) then 1024 red, 1024 green and
/// 1024 blue bytes, row-major. Returned as NHWC.
pub fn parse_binary_batch(bytes: &[u8], file: &Path) -> Result<ImageSet> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::Format {
            file: file.to_path_buf(),
            message: format!(
                "size {} is not a positive multiple of the {RECORD}-byte record",
                bytes.len()
            ),
        });
    }
    let mut set = ImageSet::new(32, 32);
    set.pixels.reserve(bytes.len() / RECORD * 3072);
    let mut hwc = vec![0u8; 3072];
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = rec[0];
        if label > 9 {
            return Err(DataError::Row {
                file: file.to_path_buf(),
                line: i as u64 + 1,
                message: format!(
                    "record {} (byte offset {}): label {label} is not in 0..=9",
                    i + 1,
                    i * RECORD
                ),
            });
        }
        let planes = &rec[1..];
        for p in 0..1024 {
            hwc[p * 3] = planes[p];
            hwc[p * 3 + 1] = planes[1024 + p];
            hwc[p * 3 + 2] = planes[2048 + p];
        }
        set.push(&hwc, label as i64);
    }
    Ok(set)
}

/// Reads the official release (`cifar-10-binary.tar.gz`, bytes already verified):
/// returns (train = data_batch_1..5, test = test_batch).
pub fn read_binary_release(gz_bytes: &[u8], archive: &Path) -> Result<(ImageSet, ImageSet)> {
    let members = read_tar_members(flate2::read::GzDecoder::new(gz_bytes), archive)?;
    let find = |name: &str| -> Result<&Member> {
        members
            .iter()
            .find(|m| m.name == format!("cifar-10-batches-bin/{name}"))
            .ok_or_else(|| DataError::Member {
                archive: archive.to_path_buf(),
                member: format!("cifar-10-batches-bin/{name}"),
                message: "missing from the archive".into(),
            })
    };
    if let Ok(meta) = find("batches.meta.txt") {
        let names: Vec<&str> = std::str::from_utf8(&meta.data)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if names != CLASSES {
            return Err(DataError::Member {
                archive: archive.to_path_buf(),
                member: meta.name.clone(),
                message: format!("class names {names:?} differ from {CLASSES:?}"),
            });
        }
    }
    let member_path = |m: &Member| archive.join(&m.name);
    let mut train = ImageSet::new(32, 32);
    for b in 1..=5 {
        let m = find(&format!("data_batch_{b}.bin"))?;
        let s = parse_binary_batch(&m.data, &member_path(m))?;
        train.pixels.extend_from_slice(&s.pixels);
        train.labels.extend_from_slice(&s.labels);
    }
    let m = find("test_batch.bin")?;
    let test = parse_binary_batch(&m.data, &member_path(m))?;
    Ok((train, test))
}

/// Loads the raw train and test sets, from the format the config asks for.
/// Returns (train, test, source records, format used).
pub fn load_raw(
    cfg: &Cifar10Config,
    sources: &Sources,
    locator: &Locator,
) -> Result<(ImageSet, ImageSet, Vec<SourceRecord>, CifarFormat)> {
    let format = match cfg.format {
        CifarFormat::Auto => {
            let jpeg_local = locator.mirror.join(JPEG_TRAIN).is_file()
                || locator.cache.join(JPEG_TRAIN).is_file();
            if jpeg_local {
                CifarFormat::Jpeg
            } else {
                CifarFormat::Binary
            }
        }
        f => f,
    };
    match format {
        CifarFormat::Binary => {
            let r = locator
                .resolve(sources, BINARY)
                .map_err(|e| match (e, cfg.format) {
                    (DataError::Missing(m), CifarFormat::Auto) => DataError::Missing(format!(
                        "{m}\nOr put the JPEG tars {JPEG_TRAIN} and {JPEG_TEST} in the mirror {}.",
                        locator.mirror.display()
                    )),
                    (e, _) => e,
                })?;
            let bytes = read_verified(&r.file, &r.sha256)?;
            let (train, test) = read_binary_release(&bytes, &r.file)?;
            let n = train.len() + test.len();
            Ok((train, test, vec![SourceRecord::new(&r, n)], format))
        }
        _ => {
            let load = |path: &str, split: &str| -> Result<(ImageSet, Resolved)> {
                let r = locator.resolve(sources, path)?;
                let bytes = read_verified(&r.file, &r.sha256)?;
                Ok((decode_jpeg_tar(&bytes, &r.file, split)?, r))
            };
            let (train, rtr) = load(JPEG_TRAIN, "train")?;
            let (test, rte) = load(JPEG_TEST, "test")?;
            let recs = vec![
                SourceRecord::new(&rtr, train.len()),
                SourceRecord::new(&rte, test.len()),
            ];
            Ok((train, test, recs, CifarFormat::Jpeg))
        }
    }
}

/// The `prepare cifar10` stage: reads, splits and writes `dest`.
pub fn prepare(
    cfg: &Cifar10Config,
    sources: &Sources,
    locator: &Locator,
    dest: &Path,
) -> Result<Manifest> {
    let (train_all, test_all, recs, format) = load_raw(cfg, sources, locator)?;
    let (train, val, test) = split(cfg, &train_all, &test_all)?;
    let classes: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let details = serde_json::json!({
        "format": format,
        "raw_counts": { "train": train_all.len(), "test": test_all.len() },
        "split_rule": "val and train from the official train set, test from the official test set; \
                       seeded class-interleaved order (every prefix is class-balanced)",
        "seed": cfg.seed,
        "caveat": if format == CifarFormat::Jpeg {
            "JPEG proxy (libjpeg quality 75, 4:2:0) of CIFAR-10, not the original lossless pixels"
        } else {
            "official lossless binary release"
        },
    });
    write_image_dataset(
        dest,
        ImageDatasetOutput {
            name: "cifar10",
            description: "CIFAR-10 32x32, 10 classes",
            classes,
            splits: vec![("train", train), ("val", val), ("test", test)],
            sources: recs,
            details,
            config: cfg,
            preview_count: cfg.preview_count,
        },
    )
}

/// Splits the raw sets: val and train from the official train set, test from the test set.
pub fn split(
    cfg: &Cifar10Config,
    train_all: &ImageSet,
    test_all: &ImageSet,
) -> Result<(ImageSet, ImageSet, ImageSet)> {
    let order = stratified(&train_all.labels, cfg.seed);
    let p = take_pieces(
        &order,
        &[("val", Some(cfg.val_size)), ("train", cfg.train_size)],
    )
    .map_err(|e| DataError::Config(format!("data.cifar10: {e}")))?;
    let torder = stratified(&test_all.labels, cfg.seed.wrapping_add(1));
    let t = take_pieces(&torder, &[("test", cfg.test_size)])
        .map_err(|e| DataError::Config(format!("data.cifar10: {e}")))?;
    Ok((
        train_all.select(&p[1]),
        train_all.select(&p[0]),
        test_all.select(&t[0]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode, mirror, pattern, tar_of};
    use image::ImageFormat;
    use std::io::Write;

    /// Records of the canonical format: label, then R, G, B planes.
    fn batch(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            v.push(l);
            for c in 0..3u8 {
                for p in 0..1024u32 {
                    v.push((p as u8).wrapping_add(c * 80).wrapping_add(i as u8));
                }
            }
        }
        v
    }

    #[test]
    fn parses_the_canonical_binary_format() {
        let b = batch(&[3, 9]);
        let s = parse_binary_batch(&b, Path::new("data_batch_1.bin")).unwrap();
        assert_eq!(s.labels, vec![3, 9]);
        // pixel (y=1, x=2) of image 1: planar index 34
        let px = &s.image(1)[(32 + 2) * 3..(32 + 2) * 3 + 3];
        assert_eq!(px, &[34 + 1, 34 + 80 + 1, 34 + 160 + 1]);
    }

    #[test]
    fn binary_format_errors_name_file_and_record() {
        let mut b = batch(&[1, 2, 3]);
        b[2 * RECORD] = 10;
        let e = parse_binary_batch(&b, Path::new("test_batch.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test_batch.bin:3") && e.contains("label 10"),
            "{e}"
        );
        let e = parse_binary_batch(&b[..100], Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.bin") && e.contains("3073"), "{e}");
    }

    fn release_tar_gz() -> Vec<u8> {
        let mut files: Vec<(String, Vec<u8>)> = (1..=5)
            .map(|i| {
                (
                    format!("cifar-10-batches-bin/data_batch_{i}.bin"),
                    batch(&[i as u8, 0, 9]),
                )
            })
            .collect();
        files.push(("cifar-10-batches-bin/test_batch.bin".into(), batch(&[4, 5])));
        files.push((
            "cifar-10-batches-bin/batches.meta.txt".into(),
            (CLASSES.join("\n") + "\n\n").into_bytes(),
        ));
        let tar = tar_of(&files);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn reads_the_official_release_archive() {
        let (train, test) = read_binary_release(&release_tar_gz(), Path::new("r.tar.gz")).unwrap();
        assert_eq!(train.len(), 15);
        assert_eq!(&train.labels[..3], &[1, 0, 9]);
        assert_eq!(test.labels, vec![4, 5]);
    }

    fn jpeg_tar(split: &str, per_class: usize) -> Vec<u8> {
        let mut files = Vec::new();
        for (c, name) in CLASSES.iter().enumerate() {
            for i in 0..per_class {
                let img = pattern(32, 32, (c * 10 + i) as u8);
                files.push((
                    format!("{split}/{name}/{i:04}.jpg"),
                    encode(&img, ImageFormat::Jpeg),
                ));
            }
        }
        tar_of(&files)
    }

    #[test]
    fn prepares_from_jpeg_tars_and_from_the_binary_release() {
        let dir = tempfile::tempdir().unwrap();
        let (sources, locator) = mirror(
            dir.path(),
            &[
                (JPEG_TRAIN, jpeg_tar("train", 4)),
                (JPEG_TEST, jpeg_tar("test", 2)),
                (BINARY, release_tar_gz()),
            ],
        );
        let cfg = Cifar10Config {
            val_size: 10,
            train_size: Some(20),
            test_size: Some(10),
            ..Default::default()
        };
        let dest = dir.path().join("out/cifar10");
        let m = prepare(&cfg, &sources, &locator, &dest).unwrap();
        assert_eq!(m.details["format"], "jpeg");
        assert_eq!(m.splits["train"].count, 20);
        assert_eq!(m.splits["val"].count, 10);
        assert_eq!(m.splits["test"].count, 10);
        assert!(
            m.splits["val"].per_class.values().all(|&n| n == 1),
            "stratified: {:?}",
            m.splits["val"]
        );
        for f in [
            "train.safetensors",
            "val.safetensors",
            "test.safetensors",
            "manifest.json",
            "config.json",
            "preview.png",
        ] {
            assert!(dest.join(f).is_file(), "{f}");
        }
        let train = ImageSet::read_safetensors(&dest.join("train.safetensors")).unwrap();
        assert_eq!((train.len(), train.height, train.width), (20, 32, 32));
        // Same seed, same split.
        let again = prepare(&cfg, &sources, &locator, &dest).unwrap();
        assert_eq!(again.splits, m.splits);
        assert_eq!(
            ImageSet::read_safetensors(&dest.join("train.safetensors")).unwrap(),
            train
        );

        let bin = Cifar10Config {
            format: CifarFormat::Binary,
            val_size: 3,
            test_size: None,
            train_size: None,
            ..Default::default()
        };
        let m = prepare(&bin, &sources, &locator, &dest).unwrap();
        assert_eq!(m.details["format"], "binary");
        assert_eq!(
            (
                m.splits["train"].count,
                m.splits["val"].count,
                m.splits["test"].count
            ),
            (12, 3, 2)
        );

        let too_many = Cifar10Config {
            val_size: 41,
            ..Default::default()
        };
        let e = prepare(&too_many, &sources, &locator, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("val") && e.contains("41"), "{e}");
        // The failed run left the previous output in place and no temporaries.
        assert!(dest.join("manifest.json").is_file());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn bad_member_path_or_checksum_is_reported_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[(
            "train/lion/0000.jpg".into(),
            encode(&pattern(32, 32, 1), ImageFormat::Jpeg),
        )]);
        let (sources, locator) = mirror(
            dir.path(),
            &[(JPEG_TRAIN, tar), (JPEG_TEST, jpeg_tar("test", 1))],
        );
        let dest = dir.path().join("out/cifar10");
        let e = prepare(&Cifar10Config::default(), &sources, &locator, &dest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train/lion/0000.jpg") && e.contains("unknown class"),
            "{e}"
        );
        assert!(!dest.exists());
        // Corrupt the mirror file after its checksum was recorded.
        std::fs::write(locator.mirror.join(JPEG_TRAIN), b"garbage").unwrap();
        let e = load_raw(&Cifar10Config::default(), &sources, &locator)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains("cifar10-jpeg"),
            "{e}"
        );
    }
}
