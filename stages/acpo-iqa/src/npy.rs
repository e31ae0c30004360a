//! Minimal `.npz`/`.npy` reader for float arrays (NIQE's pristine parameters). Hand-written
//! because candle's reader rejects Fortran-ordered arrays, which this file contains.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{IqaError, Result};

/// A float64 array in C (row-major) order.
#[derive(Clone, Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Reads every `<name>.npy` member of an `.npz` file.
pub fn read_npz(path: &Path) -> Result<HashMap<String, Array>> {
    let file = std::fs::File::open(path).map_err(|e| IqaError::model_io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| IqaError::bad_model(path, format!("not an .npz (zip) file: {e}")))?;
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| IqaError::bad_model(path, format!("zip member {i}: {e}")))?;
        let name = member
            .name()
            .map_err(|e| IqaError::bad_model(path, format!("zip member {i}: {e}")))?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| IqaError::bad_model(path, format!("member `{name}`: {e}")))?;
        let arr = parse_npy(&bytes)
            .map_err(|why| IqaError::bad_model(path, format!("member `{name}`: {why}")))?;
        out.insert(name, arr);
    }
    Ok(out)
}

fn parse_npy(b: &[u8]) -> std::result::Result<Array, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err("truncated header".into());
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?)
        .map_err(|_| "header is not UTF-8")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let i = header
            .find(&format!("'{key}'"))
            .ok_or(format!("header lacks `{key}`"))?;
        Ok(header[i + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")?;
    let elem = if descr.starts_with("'<f8'") {
        8
    } else if descr.starts_with("'<f4'") {
        4
    } else {
        return Err(format!(
            "unsupported dtype {}",
            &descr[..descr.len().min(6)]
        ));
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_s = field("shape")?;
    let shape_s = &shape_s[1..shape_s.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| format!("bad shape: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let raw = &b[start + hlen..];
    if raw.len() < n * elem {
        return Err(format!(
            "data holds {} bytes, shape needs {}",
            raw.len(),
            n * elem
        ));
    }
    let vals: Vec<f64> = (0..n)
        .map(|i| {
            let s = &raw[i * elem..(i + 1) * elem];
            if elem == 8 {
                f64::from_le_bytes(s.try_into().expect("8 bytes"))
            } else {
                f32::from_le_bytes(s.try_into().expect("4 bytes")) as f64
            }
        })
        .collect();
    let data = if fortran && shape.len() > 1 {
        // element (i0, i1, ...) is at sum i_k * prod(shape[..k]) in Fortran order
        let mut out = vec![0.0; n];
        let mut idx = vec![0usize; shape.len()];
        for v in out.iter_mut() {
            let mut f = 0;
            let mut stride = 1;
            for (k, &i) in idx.iter().enumerate() {
                f += i * stride;
                stride *= shape[k];
            }
            *v = vals[f];
            for k in (0..shape.len()).rev() {
                idx[k] += 1;
                if idx[k] < shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        out
    } else {
        vals
    };
    Ok(Array { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_transposed() {
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        // column-major data of [[1,2,3],[4,5,6]]
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            b.extend(v.to_le_bytes());
        }
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
