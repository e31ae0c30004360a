//! File input and output: atomic writes, prepared image sets, image tars.

use crate::error::{FidError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Write `bytes` to `path` through a temporary file renamed into place (acpo-core).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

/// Write a value as pretty JSON, atomically (acpo-core).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(acpo_core::write_json(path, value)?)
}

/// Write tensors (and optional string metadata) as safetensors, atomically.
pub fn write_safetensors<'a, I>(
    path: &Path,
    tensors: I,
    metadata: Option<HashMap<String, String>>,
) -> Result<()>
where
    I: IntoIterator<Item = (&'a String, &'a Tensor)>,
{
    // safetensors needs contiguous CPU data.
    let cpu: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    // Sorted header keys: the same tensors and metadata give the same bytes (acpo_data::canonical).
    let bytes = acpo_data::canonical::serialize(cpu.iter().map(|(k, t)| (k, t)), metadata)
        .map_err(|e| FidError::data(path, format!("writing safetensors failed: {e}")))?;
    write_atomic(path, &bytes)
}

/// A set of 8-bit RGB images, all of one size, stored `[N, H, W, 3]`.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub data: Vec<u8>,
    pub n: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    pub fn image_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// The images at `indices`, as a U8 tensor `[k, 3, H, W]` (the layout
    /// [`crate::inception::InceptionV3::features`] takes).
    pub fn nchw(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let len = self.image_len();
        let mut buf = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            if i >= self.n {
                return Err(FidError::Input(format!(
                    "image index {i} out of range for a set of {}",
                    self.n
                )));
            }
            buf.extend_from_slice(&self.data[i * len..(i + 1) * len]);
        }
        let t = Tensor::from_vec(buf, (indices.len(), self.height, self.width, 3), device)?;
        Ok(t.permute((0, 3, 1, 2))?.contiguous()?)
    }

    /// A subset (copy) of the images at `indices`.
    pub fn select(&self, indices: &[usize]) -> Result<ImageSet> {
        let len = self.image_len();
        let mut data = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            if i >= self.n {
                return Err(FidError::Input(format!(
                    "image index {i} out of range for a set of {}",
                    self.n
                )));
            }
            data.extend_from_slice(&self.data[i * len..(i + 1) * len]);
        }
        Ok(ImageSet {
            data,
            n: indices.len(),
            height: self.height,
            width: self.width,
        })
    }
}

/// Read the `images` tensor (U8 `[N, H, W, 3]`, RGB) of a prepared dataset split
/// (`data/prepared/<dataset>/<split>.safetensors`).
pub fn read_prepared(path: &Path) -> Result<ImageSet> {
    use acpo_core::prepared::{read_images, PreparedError};
    let set = read_images(path)
        .and_then(|s| s.require_rgb(path))
        .map_err(|e| match e {
            PreparedError::Io { path, source } => FidError::io(path, source),
            PreparedError::Format { path, member, msg } => {
                FidError::data(path, format!("tensor `{member}`: {msg}"))
            }
        })?;
    Ok(ImageSet {
        data: set.pixels,
        n: set.n,
        height: set.height,
        width: set.width,
    })
}

/// Decode every image (JPEG, PNG or BMP) in an uncompressed tar whose member path
/// starts with `prefix`, in archive order; all must have one size. Non-regular
/// members are skipped. This reads the mirror's archives directly
/// (`cifar10/cifar10-jpeg-test.tar` etc.), e.g. for tests and for measurements
/// that must not wait for the data stages.
pub fn read_image_tar(path: &Path, prefix: &str) -> Result<ImageSet> {
    let file = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut data = Vec::new();
    let mut size: Option<(usize, usize)> = None;
    let mut n = 0;
    let entries = archive.entries().map_err(|e| FidError::io(path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| FidError::io(path, e))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| FidError::io(path, e))?
            .to_string_lossy()
            .into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| FidError::data(path, format!("member {name}: {e}")))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| FidError::data(path, format!("member {name}: cannot decode: {e}")))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        match size {
            None => size = Some((h, w)),
            Some(s) if s != (h, w) => {
                return Err(FidError::data(
                    path,
                    format!(
                        "member {name} is {w}x{h}, the previous images are {}x{}",
                        s.1, s.0
                    ),
                ))
            }
            _ => {}
        }
        data.extend_from_slice(img.as_raw());
        n += 1;
    }
    let (height, width) =
        size.ok_or_else(|| FidError::data(path, format!("no image member under `{prefix}`")))?;
    Ok(ImageSet {
        data,
        n,
        height,
        width,
    })
}

/// Read an image set from a prepared `.safetensors` file or an image `.tar`
/// (all members), by extension.
pub fn read_images(path: &Path) -> Result<ImageSet> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => read_prepared(path),
        Some("tar") => read_image_tar(path, ""),
        _ => Err(FidError::data(
            path,
            "expected a prepared `.safetensors` image set or an image `.tar`",
        )),
    }
}

/// Read one tensor of a safetensors file as a candle tensor with the expected dtype.
pub(crate) fn get_tensor(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    name: &str,
    dtype: DType,
) -> Result<Tensor> {
    let t = tensors
        .get(name)
        .ok_or_else(|| FidError::data(path, format!("no tensor `{name}`")))?;
    if t.dtype() != dtype {
        return Err(FidError::data(
            path,
            format!(
                "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                t.dtype()
            ),
        ));
    }
    Ok(t.clone())
}
