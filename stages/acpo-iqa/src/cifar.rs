//! CIFAR-10 test images for the judge sanity check: the prepared split
//! (`data/prepared/cifar10/test.safetensors`, `images` U8 `[N, 32, 32, 3]`), or, before the data
//! stage has run, the mirror's JPEG tar (`cifar10/cifar10-jpeg-test.tar`).

use std::io::Read;
use std::path::Path;

use crate::error::{IqaError, Result};
use crate::imageio::RgbImage;

/// `count` evenly spaced indices of `0..n` (all of them when `count >= n`).
pub fn spaced_indices(n: usize, count: usize) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    (0..count).map(|i| i * n / count).collect()
}

/// Reads `count` evenly spaced images of a prepared split (`images`: U8 `[N, H, W, 3]`).
pub fn load_prepared(path: &Path, count: usize) -> Result<Vec<RgbImage>> {
    use acpo_core::prepared::{read_images, PreparedError};
    let set = read_images(path)
        .and_then(|s| s.require_rgb(path))
        .map_err(|e| match e {
            PreparedError::Io { path, source } => IqaError::io(path, source),
            e @ PreparedError::Format { .. } => IqaError::BadImage {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        })?;
    let (h, w) = (set.height, set.width);
    spaced_indices(set.n, count)
        .into_iter()
        .map(|i| {
            RgbImage::new(
                w,
                h,
                set.pixels[i * h * w * 3..(i + 1) * h * w * 3].to_vec(),
            )
        })
        .collect()
}

/// Reads `count` evenly spaced JPEGs (by sorted member name) from a CIFAR-10 mirror tar.
pub fn load_tar(path: &Path, count: usize) -> Result<Vec<RgbImage>> {
    let open = || -> Result<tar::Archive<std::fs::File>> {
        let f = std::fs::File::open(path).map_err(|e| IqaError::io(path, e))?;
        Ok(tar::Archive::new(f))
    };
    let bad = |reason: String| IqaError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    // first pass: member names
    let mut names = Vec::new();
    for entry in open()?.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            let p = entry.path().map_err(|e| bad(e.to_string()))?;
            if p.extension().is_some_and(|e| e == "jpg") {
                names.push(p.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    let wanted: std::collections::HashMap<String, usize> = spaced_indices(names.len(), count)
        .into_iter()
        .enumerate()
        .map(|(k, i)| (names[i].clone(), k))
        .collect();
    let mut out: Vec<Option<RgbImage>> = vec![None; wanted.len()];
    for entry in open()?.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if let Some(&k) = wanted.get(&name) {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            let img =
                image::load_from_memory(&buf).map_err(|e| bad(format!("member {name}: {e}")))?;
            out[k] = Some(RgbImage::from_image(img.to_rgb8()));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// CIFAR-10 test images: the prepared split when present, else the mirror's JPEG tar.
/// Returns the images and a description of the source.
pub fn cifar_test_images(
    prepared: &Path,
    mirror: &Path,
    count: usize,
) -> Result<(Vec<RgbImage>, String)> {
    if prepared.is_file() {
        Ok((
            load_prepared(prepared, count)?,
            prepared.display().to_string(),
        ))
    } else {
        let tar = mirror.join("cifar10/cifar10-jpeg-test.tar");
        if !tar.is_file() {
            return Err(IqaError::Input(format!(
                "no CIFAR-10 test images: neither {} (run prepare-cifar10) nor {} exists",
                prepared.display(),
                tar.display()
            )));
        }
        Ok((load_tar(&tar, count)?, tar.display().to_string()))
    }
}
