//! Evaluating `.onnx` models with ONNX Runtime (`ort`, library loaded at run time).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor as OrtTensor;

use crate::error::{IqaError, Result};

static ORT_ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

/// Where the ONNX Runtime shared library is: `$ORT_DYLIB_PATH`, else
/// `$ACPO_ASSETS/onnxruntime/libonnxruntime.so`, else `.cache/assets/onnxruntime/...` under the
/// current directory.
pub fn ort_library_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let assets = std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/assets"));
    assets.join("onnxruntime/libonnxruntime.so")
}

/// Loads ONNX Runtime once per process (later calls reuse it; `dylib` only matters the first time).
pub fn init_ort(dylib: Option<&Path>) -> Result<()> {
    let res = ORT_ENV.get_or_init(|| {
        let path = dylib
            .map(Path::to_path_buf)
            .unwrap_or_else(ort_library_path);
        if !path.is_file() {
            return Err(format!(
                "ONNX Runtime library not found at {} (run `just setup`, or set ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("acpo")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    });
    res.as_ref()
        .map(|_| ())
        .map_err(|e| IqaError::Ort(e.clone()))
}

fn env() -> Result<&'static ort::environment::Environment> {
    init_ort(None)?;
    match ORT_ENV.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => Err(IqaError::Ort(e.clone())),
        None => unreachable!("initialised above"),
    }
}

/// One ONNX model with a single float input and a single float output.
pub struct OnnxModel {
    path: PathBuf,
    session: Mutex<Session>,
    input_name: String,
    output_name: String,
    input_dims: Vec<i64>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("input", &self.input_name)
            .field("input_dims", &self.input_dims)
            .finish()
    }
}

impl OnnxModel {
    /// Loads a model; `threads` is ONNX Runtime's intra-op thread count (0 = its default).
    pub fn load(path: impl AsRef<Path>, threads: usize) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(IqaError::MissingModel {
                path: path.to_path_buf(),
            });
        }
        let env = env()?;
        let bad = |e: &dyn std::fmt::Display| IqaError::bad_model(path, e.to_string());
        let mut builder = Session::builder(env).map_err(|e| bad(&e))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| bad(&e))?;
        }
        let session = builder.commit_from_file(path).map_err(|e| bad(&e))?;
        let (input, output) = match (session.inputs(), session.outputs()) {
            ([i], [o]) => (i, o),
            (i, o) => {
                return Err(bad(&format!(
                    "expected one input and one output, found {} inputs and {} outputs",
                    i.len(),
                    o.len()
                )))
            }
        };
        let input_dims: Vec<i64> = match input.dtype() {
            ort::value::ValueType::Tensor { ty, shape, .. } => {
                if *ty != ort::value::TensorElementType::Float32 {
                    return Err(bad(&format!(
                        "input `{}` is {ty:?}, expected float32",
                        input.name()
                    )));
                }
                shape.iter().copied().collect()
            }
            other => {
                return Err(bad(&format!(
                    "input `{}` is not a tensor: {other:?}",
                    input.name()
                )))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            input_name: input.name().to_string(),
            output_name: output.name().to_string(),
            input_dims,
            session: Mutex::new(session),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The declared input shape (`-1` for dynamic dimensions).
    pub fn input_dims(&self) -> &[i64] {
        &self.input_dims
    }

    /// Runs the model on `input` of `shape` (row-major) and returns the output values, flattened.
    pub fn run(&self, input: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let tensor = OrtTensor::from_array((shape.to_vec(), input))
            .map_err(|e| IqaError::Ort(format!("{}: input: {e}", self.path.display())))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| IqaError::Ort("session mutex poisoned".into()))?;
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| IqaError::Ort(format!("{}: run: {e}", self.path.display())))?;
        let (_, data) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| IqaError::Ort(format!("{}: output: {e}", self.path.display())))?;
        Ok(data.to_vec())
    }
}
