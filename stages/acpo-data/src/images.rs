//! Image sets in memory, reading image tars, and writing the prepared artifacts
//! (`<split>.safetensors` with `images` U8 [N,H,W,3] and `labels` I64 [N], `preview.png`).

use crate::error::{DataError, Result};
use image::{ImageFormat, RgbImage};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// `n` RGB images of one size, NHWC, with one label each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageSet {
    pub height: u32,
    pub width: u32,
    /// `n * height * width * 3` bytes, row-major NHWC, RGB.
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
}

impl ImageSet {
    pub fn new(height: u32, width: u32) -> Self {
        ImageSet {
            height,
            width,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.height as usize * self.width as usize * 3
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let k = self.image_bytes();
        &self.pixels[i * k..(i + 1) * k]
    }

    pub fn push(&mut self, pixels: &[u8], label: i64) {
        debug_assert_eq!(pixels.len(), self.image_bytes());
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut out = ImageSet::new(self.height, self.width);
        out.pixels.reserve(indices.len() * self.image_bytes());
        for &i in indices {
            out.push(self.image(i), self.labels[i]);
        }
        out
    }

    /// The set at half the size: every image through [`box_average_2x2`], labels kept.
    ///
    /// # Panics
    /// When the height or width is odd.
    pub fn box_average_2x2(&self) -> ImageSet {
        let mut out = ImageSet::new(self.height / 2, self.width / 2);
        let k = out.image_bytes();
        out.pixels = vec![0u8; self.len() * k];
        out.pixels
            .par_chunks_mut(k.max(1))
            .zip(self.pixels.par_chunks(self.image_bytes().max(1)))
            .for_each(|(dst, src)| box_average_2x2_into(src, self.width, self.height, dst));
        out.labels = self.labels.clone();
        out
    }

    /// Writes `images` and `labels` as safetensors to `path` (to a temporary name first).
    pub fn write_safetensors(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        let shape = vec![self.len(), self.height as usize, self.width as usize, 3];
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let werr = |m: String| DataError::Write {
            path: path.to_path_buf(),
            message: m,
        };
        let images =
            TensorView::new(Dtype::U8, shape, &self.pixels).map_err(|e| werr(e.to_string()))?;
        let labels = TensorView::new(Dtype::I64, vec![self.len()], &label_bytes)
            .map_err(|e| werr(e.to_string()))?;
        let bytes =
            crate::canonical::serialize([("images", images), ("labels", labels)], Some(metadata))
                .map_err(werr)?;
        acpo_core::write_atomic(path, &bytes).map_err(|e| werr(e.to_string()))
    }

    /// Reads a set written by [`ImageSet::write_safetensors`].
    pub fn read_safetensors(path: &Path) -> Result<ImageSet> {
        use acpo_core::prepared::{read_images, PreparedError};
        let to_data = |e: PreparedError| match e {
            PreparedError::Io { path, source } => DataError::io(path, source),
            PreparedError::Format { path, member, msg } => DataError::Format {
                file: path,
                message: format!("{member}: {msg}"),
            },
        };
        let set = read_images(path)
            .and_then(|s| s.require_rgb(path))
            .map_err(to_data)?;
        let labels = set.labels.ok_or_else(|| DataError::Format {
            file: path.to_path_buf(),
            message: format!("labels: missing (expected I64 [{}])", set.n),
        })?;
        Ok(ImageSet {
            height: set.height as u32,
            width: set.width as u32,
            pixels: set.pixels,
            labels,
        })
    }

    /// A preview grid of the first `count` images, `cols` per row, each tile `tile` px.
    pub fn preview(&self, count: usize, cols: usize, tile: u32) -> RgbImage {
        let n = count.min(self.len()).max(1);
        let cols = cols.min(n).max(1);
        let rows = n.div_ceil(cols);
        let pad = 2u32;
        let mut grid = RgbImage::from_pixel(
            cols as u32 * (tile + pad) + pad,
            rows as u32 * (tile + pad) + pad,
            image::Rgb([255, 255, 255]),
        );
        for i in 0..count.min(self.len()) {
            let img = RgbImage::from_raw(self.width, self.height, self.image(i).to_vec())
                .expect("image size matches");
            let img = if img.width() == tile && img.height() == tile {
                img
            } else {
                image::imageops::resize(&img, tile, tile, image::imageops::FilterType::Triangle)
            };
            let x = pad + (i % cols) as u32 * (tile + pad);
            let y = pad + (i / cols) as u32 * (tile + pad);
            image::imageops::replace(&mut grid, &img, x as i64, y as i64);
        }
        grid
    }
}

/// The rule of [`box_average_2x2`] in words (for manifests).
pub const BOX_AVERAGE_2X2_RULE: &str = "exact 2x2 box average of the u8 RGB values, per channel \
     out = (a + b + c + d + 2) / 4 in integer arithmetic (mean rounded half up), no gamma";

/// Halves an RGB image (`w x h`, row-major, 3 bytes a pixel) by an exact 2x2 box average:
/// each output byte is `(a + b + c + d + 2) / 4` (integer division, i.e. the mean rounded
/// half up) of the four input bytes of its channel. Integer arithmetic only, so the result
/// is byte-reproducible everywhere.
///
/// # Panics
/// When `w` or `h` is odd or `rgb` is not `w * h * 3` bytes.
pub fn box_average_2x2(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0u8; (w / 2) as usize * (h / 2) as usize * 3];
    box_average_2x2_into(rgb, w, h, &mut out);
    out
}

fn box_average_2x2_into(rgb: &[u8], w: u32, h: u32, out: &mut [u8]) {
    assert!(
        w.is_multiple_of(2) && h.is_multiple_of(2),
        "2x2 box average needs an even size, got {w}x{h}"
    );
    let (w, h) = (w as usize, h as usize);
    assert_eq!(rgb.len(), w * h * 3, "image bytes for {w}x{h} RGB");
    let (ow, oh) = (w / 2, h / 2);
    assert_eq!(out.len(), ow * oh * 3, "output bytes for {ow}x{oh} RGB");
    for y in 0..oh {
        let r0 = &rgb[(2 * y) * w * 3..(2 * y + 1) * w * 3];
        let r1 = &rgb[(2 * y + 1) * w * 3..(2 * y + 2) * w * 3];
        for x in 0..ow {
            for c in 0..3 {
                let i = 2 * x * 3 + c;
                let sum = r0[i] as u16 + r0[i + 3] as u16 + r1[i] as u16 + r1[i + 3] as u16;
                out[(y * ow + x) * 3 + c] = ((sum + 2) / 4) as u8;
            }
        }
    }
}

/// Writes a PNG atomically (encoded in memory, then acpo-core's write-then-rename).
pub fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let werr = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, ImageFormat::Png)
        .map_err(|e| werr(e.to_string()))?;
    acpo_core::write_atomic(path, png.get_ref()).map_err(|e| werr(e.to_string()))
}

/// One regular-file member of a tar archive.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub data: Vec<u8>,
}

/// Reads every regular-file member of an (uncompressed or already decompressed) tar
/// stream; other entry types (directories, links) are skipped.
pub fn read_tar_members<R: Read>(reader: R, archive: &Path) -> Result<Vec<Member>> {
    let terr = |e: std::io::Error| DataError::Tar {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    };
    let mut ar = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in ar.entries().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(terr)?.to_string_lossy().into_owned();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| DataError::Member {
                archive: archive.to_path_buf(),
                member: name.clone(),
                message: format!("truncated member: {e}"),
            })?;
        out.push(Member { name, data });
    }
    Ok(out)
}

/// Decodes one image member to RGB and checks its size when `expect` is given.
pub fn decode_member(
    archive: &Path,
    member: &Member,
    expect: Option<(u32, u32)>,
) -> Result<RgbImage> {
    let format = ImageFormat::from_path(&member.name).map_err(|_| DataError::Member {
        archive: archive.to_path_buf(),
        member: member.name.clone(),
        message: "not an image file name (expected .jpg, .jpeg, .png or .bmp)".into(),
    })?;
    let img = image::load_from_memory_with_format(&member.data, format).map_err(|e| {
        DataError::Member {
            archive: archive.to_path_buf(),
            member: member.name.clone(),
            message: format!("cannot decode {format:?} image: {e}"),
        }
    })?;
    let img = img.into_rgb8();
    if let Some((w, h)) = expect {
        if img.width() != w || img.height() != h {
            return Err(DataError::WrongSize {
                archive: archive.to_path_buf(),
                member: member.name.clone(),
                width: img.width(),
                height: img.height(),
                expected_width: w,
                expected_height: h,
            });
        }
    }
    Ok(img)
}

/// Decodes all members in parallel (rayon, all cores) into one set of `w x h` images,
/// keeping the members' order. `label_of` gives each member's label. The first error
/// in member order is returned.
pub fn decode_members<F>(
    archive: &Path,
    members: &[Member],
    size: (u32, u32),
    label_of: F,
) -> Result<ImageSet>
where
    F: Fn(&Member) -> Result<i64> + Sync,
{
    let (w, h) = size;
    let mut set = ImageSet::new(h, w);
    let k = set.image_bytes();
    set.pixels = vec![0u8; members.len() * k];
    let bar = acpo_core::progress::bar(members.len() as u64, "decoding");
    let labels: Vec<Result<i64>> = set
        .pixels
        .par_chunks_mut(k)
        .zip(members.par_iter())
        .map(|(dst, m)| {
            let label = label_of(m)?;
            let img = decode_member(archive, m, Some(size))?;
            dst.copy_from_slice(img.as_raw());
            bar.inc(1);
            Ok(label)
        })
        .collect();
    bar.finish_and_clear();
    set.labels = labels.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode, pattern, tar_of};

    fn members(list: &[(&str, Vec<u8>)]) -> Vec<Member> {
        let tar = tar_of(
            &list
                .iter()
                .map(|(n, d)| (n.to_string(), d.clone()))
                .collect::<Vec<_>>(),
        );
        read_tar_members(&tar[..], Path::new("t.tar")).unwrap()
    }

    #[test]
    fn decodes_members_in_order_and_skips_directories() {
        let a = pattern(8, 6, 1);
        let b = pattern(8, 6, 2);
        let ms = members(&[
            ("x/a.png", encode(&a, ImageFormat::Png)),
            ("x/b.png", encode(&b, ImageFormat::Png)),
        ]);
        assert_eq!(ms.len(), 2, "the directory entry is skipped");
        let set = decode_members(Path::new("t.tar"), &ms, (8, 6), |m| {
            Ok(if m.name.ends_with("a.png") { 3 } else { 4 })
        })
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.image(0), a.as_raw().as_slice());
        assert_eq!(set.image(1), b.as_raw().as_slice());
        assert_eq!(set.labels, vec![3, 4]);
    }

    #[test]
    fn corrupt_member_is_named() {
        let good = encode(&pattern(8, 8, 1), ImageFormat::Jpeg);
        let mut bad = good.clone();
        bad.truncate(20);
        let ms = members(&[("ok/0.jpg", good), ("bad/1.jpg", bad)]);
        let e = decode_members(Path::new("t.tar"), &ms, (8, 8), |_| Ok(0)).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, DataError::Member { .. }), "{s}");
        assert!(
            s.contains("t.tar") && s.contains("bad/1.jpg") && s.contains("decode"),
            "{s}"
        );
    }

    #[test]
    fn wrong_size_member_is_named() {
        let ms = members(&[("a/0.png", encode(&pattern(9, 8, 1), ImageFormat::Png))]);
        let e = decode_members(Path::new("t.tar"), &ms, (8, 8), |_| Ok(0)).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, DataError::WrongSize { .. }), "{s}");
        assert!(
            s.contains("a/0.png") && s.contains("9x8") && s.contains("8x8"),
            "{s}"
        );
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let tar = tar_of(&[("a.png".into(), encode(&pattern(8, 8, 1), ImageFormat::Png))]);
        let cut = &tar[..512 + 100];
        let e = read_tar_members(cut, Path::new("cut.tar"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.tar"), "{e}");
    }

    #[test]
    fn box_average_2x2_by_hand() {
        // A 4x2 image: two output pixels, each the rounded mean of a 2x2 block per channel.
        #[rustfmt::skip]
        let rgb: Vec<u8> = vec![
            // row 0: (0,0)          (1,0)            (2,0)          (3,0)
            0, 10, 255,      1, 20, 255,      100, 0, 7,     101, 0, 8,
            // row 1: (0,1)          (1,1)            (2,1)          (3,1)
            2, 30, 254,      2, 41, 255,      102, 0, 9,     104, 1, 8,
        ];
        let out = box_average_2x2(&rgb, 4, 2);
        // R (0+1+2+2+2)/4=1, G (10+20+30+41+2)/4=25 (101/4=25.25), B (255+255+254+255+2)/4=255;
        // R (100+101+102+104+2)/4=102 (407/4=101.75), G (0+0+0+1+2)/4=0, B (7+8+9+8+2)/4=8.
        assert_eq!(out, vec![1, 25, 255, 102, 0, 8]);
        // Ties round half up: 1+1+2+2 = 6 -> 1.5 -> 2; 0+0+0+2 = 2 -> 0.5 -> 1; 1+0+0+0 -> 0.
        let out = box_average_2x2(&[1, 0, 1, 1, 0, 0, 2, 2, 0, 2, 0, 0], 2, 2);
        assert_eq!(out, vec![2, 1, 0]);

        let mut set = ImageSet::new(2, 4);
        set.push(&rgb, 7);
        set.push(&[200u8; 24], 3);
        let half = set.box_average_2x2();
        assert_eq!((half.height, half.width, half.len()), (1, 2, 2));
        assert_eq!(half.image(0), &[1, 25, 255, 102, 0, 8]);
        assert_eq!(half.image(1), &[200u8; 6]);
        assert_eq!(half.labels, vec![7, 3]);
    }

    #[test]
    fn safetensors_roundtrip_and_preview() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = ImageSet::new(4, 5);
        set.push(&[7u8; 60], 2);
        set.push(&[9u8; 60], -1);
        let p = dir.path().join("s.safetensors");
        set.write_safetensors(&p, HashMap::new()).unwrap();
        let back = ImageSet::read_safetensors(&p).unwrap();
        assert_eq!(back, set);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let pre = set.preview(64, 8, 16);
        assert_eq!((pre.width(), pre.height()), (2 + 2 * 18, 2 + 18));
    }
}
