//! Helpers for unit tests: tiny tars, images and mirrors made on the fly.

use crate::sources::{sha256_hex, Locator, Sources};
use image::{ImageFormat, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// A deterministic test image.
pub fn pattern(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(7).wrapping_add(seed),
            (y as u8).wrapping_mul(5),
            seed.wrapping_mul(31),
        ])
    })
}

/// Encodes an image in a format.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format).unwrap();
    c.into_inner()
}

/// A ustar archive of (name, bytes) regular files, plus a directory entry first.
pub fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    dir.set_cksum();
    b.append_data(&mut dir, "somedir/", std::io::empty())
        .unwrap();
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes files into a temporary mirror and a sources.yaml listing them (one source per file).
pub fn mirror(dir: &Path, files: &[(&str, Vec<u8>)]) -> (Sources, Locator) {
    let mut yaml = String::from("sources:\n");
    for (i, (path, data)) in files.iter().enumerate() {
        let p = dir.join("mirror").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        yaml.push_str(&format!(
            "  s{i}:\n    description: test file {i}\n    upstream: nowhere\n    files:\n      - path: {path}\n        sha256: {}\n        bytes: {}\n",
            sha256_hex(data),
            data.len()
        ));
    }
    let sources = Sources::parse(&yaml, Path::new("test-sources.yaml")).unwrap();
    let locator = Locator {
        mirror: dir.join("mirror"),
        cache: dir.join("cache"),
        allow_download: false,
    };
    (sources, locator)
}
