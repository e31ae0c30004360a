//! The prepared image splits every stage reads (`data/prepared/<dataset>/<split>.safetensors`,
//! written by acpo-data): `images` U8 `[N, H, W, C]` (RGB rows, `C` = 3 for every dataset so
//! far) and, optionally, `labels` I64 `[N]`. One reader, so every stage checks the same things
//! and names the file and member in the same words; each crate maps [`PreparedError`] into its
//! own error type.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// A prepared split as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImages {
    /// `n * height * width * channels` bytes, row-major NHWC.
    pub pixels: Vec<u8>,
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// The class of each image, when the split has `labels`.
    pub labels: Option<Vec<i64>>,
}

/// Why a prepared split could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PreparedError {
    /// The file could not be read (a missing split: run the data stage that makes it).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a prepared split: `member` is `*` for the file as a whole.
    #[error("{}: member `{member}`: {msg}", path.display())]
    Format {
        path: PathBuf,
        member: String,
        msg: String,
    },
}

impl crate::BadInput for PreparedError {
    /// Every reason: the split is the input, and a missing one is made by a stage first.
    fn is_bad_input(&self) -> bool {
        true
    }
}

/// Reads a prepared split, checking `images` (U8, four dimensions, none empty) and, when
/// present, `labels` (I64 `[N]`).
pub fn read_images(path: &Path) -> Result<PreparedImages, PreparedError> {
    let bytes = std::fs::read(path).map_err(|source| PreparedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |member: &str, msg: String| PreparedError::Format {
        path: path.to_path_buf(),
        member: member.into(),
        msg,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad("*", format!("not a safetensors file: {e}")))?;
    let images = st
        .tensor("images")
        .map_err(|_| bad("images", "missing (expected U8 [N, H, W, C])".into()))?;
    let (n, height, width, channels) = match (images.dtype(), images.shape()) {
        (Dtype::U8, &[n, h, w, c]) if n > 0 && h > 0 && w > 0 && c > 0 => (n, h, w, c),
        (dtype, shape) => {
            return Err(bad(
                "images",
                format!("{dtype:?} {shape:?}, expected U8 [N, H, W, C] with none empty"),
            ))
        }
    };
    let labels = match st.tensor("labels") {
        Err(_) => None,
        Ok(l) if l.dtype() == Dtype::I64 && l.shape() == [n] => Some(
            l.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        Ok(l) => {
            return Err(bad(
                "labels",
                format!("{:?} {:?}, expected I64 [{n}]", l.dtype(), l.shape()),
            ))
        }
    };
    Ok(PreparedImages {
        pixels: images.data().to_vec(),
        n,
        height,
        width,
        channels,
        labels,
    })
}

impl PreparedImages {
    /// An error unless the images are RGB (`C` = 3), for readers that need three channels.
    pub fn require_rgb(self, path: &Path) -> Result<Self, PreparedError> {
        if self.channels == 3 {
            return Ok(self);
        }
        Err(PreparedError::Format {
            path: path.to_path_buf(),
            member: "images".into(),
            msg: format!("{} channels, expected 3 (RGB)", self.channels),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (*name, TensorView::new(*dtype, shape.clone(), data).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn reads_images_and_labels_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.safetensors");
        let labels: Vec<u8> = [3i64, 7].iter().flat_map(|l| l.to_le_bytes()).collect();
        write(
            &p,
            &[
                ("images", Dtype::U8, vec![2, 1, 2, 3], (0..12).collect()),
                ("labels", Dtype::I64, vec![2], labels),
            ],
        );
        let s = read_images(&p).unwrap();
        assert_eq!((s.n, s.height, s.width, s.channels), (2, 1, 2, 3));
        assert_eq!(s.labels, Some(vec![3, 7]));
        assert_eq!(s.pixels[11], 11);

        write(&p, &[("images", Dtype::U8, vec![2, 2, 1], vec![0; 4])]);
        let e = read_images(&p).unwrap_err().to_string();
        assert!(
            e.contains("train.safetensors") && e.contains("member `images`"),
            "{e}"
        );

        write(&p, &[("images", Dtype::U8, vec![1, 1, 1, 1], vec![9])]);
        let s = read_images(&p).unwrap();
        assert_eq!(s.labels, None);
        let e = s.require_rgb(&p).unwrap_err().to_string();
        assert!(e.contains("1 channels, expected 3"), "{e}");

        let missing = read_images(&dir.path().join("nope.safetensors")).unwrap_err();
        assert!(matches!(missing, PreparedError::Io { .. }));
    }
}
