//! NR-IQA models for ACPO: CNNIQA (candle, differentiable guidance), BRISQUE and NIQE (classical
//! judges), ONNX export of CNNIQA and ONNX Runtime evaluation of any `.onnx` IQA model, the judge
//! registry (`judges.yaml`) and the judge sanity check.

pub mod brisque;
pub mod cifar;
pub mod cnniqa;
pub mod error;
pub mod export;
pub mod imageio;
pub mod niqe;
mod npy;
pub mod onnx;
pub mod registry;
pub mod sanity;
pub mod stats;

pub use brisque::Brisque;
pub use cnniqa::{Cnniqa, PatchMode};
pub use error::{IqaError, Result};
pub use imageio::{GrayRounding, RgbImage};
pub use niqe::Niqe;
pub use registry::{judge_images, Judge, JudgeSpec, Registry};
