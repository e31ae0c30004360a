//! Fixtures shared by the integration tests of this crate.

use acpo_diffusion::rng::SeededRng;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `$ACPO_ASSETS`, or the repository's `.cache/assets` (what `just setup` fills).
pub fn assets() -> PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"))
}

/// The converted Inception weights and reference statistics of random features, in `root`:
/// FID/KID against them are numbers to compare, not meaningful.
pub fn fid_inputs(root: &Path) -> (PathBuf, PathBuf) {
    let archive = assets().join("fid/default_1.pt");
    assert!(archive.is_file(), "{}: run `just setup`", archive.display());
    let inception = root.join("inception.safetensors");
    acpo_fid::torchscript::convert(&archive, &inception).unwrap();
    let mut r = SeededRng::new(7, &[]);
    let feats = Tensor::from_vec(r.normal_vec(12 * 2048), (12, 2048), &Device::Cpu).unwrap();
    let fid_ref = root.join("ref.safetensors");
    acpo_fid::RefStats::from_features(&feats, (0..12).collect(), 0, 0, HashMap::new())
        .unwrap()
        .save(&fid_ref)
        .unwrap();
    (inception, fid_ref)
}
