//! Byte-reproducible safetensors files.
//!
//! The `safetensors` crate keeps a file's `__metadata__` in a `HashMap`, so a file with more
//! than one metadata entry was written with its entries in a different order by every process:
//! the same data gave different bytes, hence a different content hash, and the pipeline reran
//! every stage downstream of an unchanged dataset. [`serialize`] writes the header with its
//! keys sorted (tensors and metadata alike); the tensor data and offsets are unchanged.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::View;

/// `safetensors::serialize` with a canonical header (sorted keys). Errors are the crate's, as
/// text.
pub fn serialize<S, V, I>(
    data: I,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, String>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: View,
    I: IntoIterator<Item = (S, V)>,
{
    let bytes = safetensors::serialize(data, metadata).map_err(|e| e.to_string())?;
    canonical_header(&bytes)
}

/// Rewrites a serialized safetensors file's JSON header with sorted keys, padded with spaces to
/// the 8-byte alignment the format uses.
pub fn canonical_header(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("safetensors: shorter than its 8-byte header length")?;
    let header = bytes
        .get(8..8 + n)
        .ok_or("safetensors: header length past the end of the file")?;
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("safetensors header: {e}"))?;
    let sorted: BTreeMap<String, serde_json::Value> = parsed
        .into_iter()
        .map(|(k, v)| (k, sort_object(v)))
        .collect();
    let mut json = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Objects re-collected into `BTreeMap`s (sorted whatever serde_json's map type is).
fn sort_object(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, sort_object(v))).collect();
            serde_json::to_value(sorted).expect("a map of JSON values serializes")
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn write(meta: &[(&str, &str)]) -> Vec<u8> {
        let data = [1u8, 2, 3, 4];
        let t = TensorView::new(Dtype::U8, vec![4], &data).unwrap();
        let m: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serialize([("x", t)], Some(m)).unwrap()
    }

    #[test]
    fn same_metadata_gives_same_bytes_and_reads_back() {
        let meta: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let fwd: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let rev: Vec<(&str, &str)> = fwd.iter().rev().copied().collect();
        let a = write(&fwd);
        assert_eq!(a, write(&rev));
        assert_eq!((u64::from_le_bytes(a[..8].try_into().unwrap()) % 8), 0);
        let (_, md) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap().get("k7").unwrap(), "v7");
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("x").unwrap().data(), &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(canonical_header(&[1, 0]).is_err());
        assert!(canonical_header(&[100, 0, 0, 0, 0, 0, 0, 0, b'{']).is_err());
    }
}
