//! The stage library on real mirror images: reference statistics written and read
//! back, an image set compared with itself, and bad inputs.
//!
//! Needs `$ACPO_ASSETS/fid/default_1.pt` (scripts/setup.sh) and the mirror (`$ACPO_MIRROR`).

use acpo_fid::io::{read_image_tar, read_prepared};
use acpo_fid::reference::{compare, compute_reference, CompareParams, RefParams, RefStats};
use acpo_fid::{torchscript, FidError, InceptionV3};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join(default))
}

#[test]
fn reference_statistics_round_trip_and_self_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let archive = env_or("ACPO_ASSETS", "../../.cache/assets").join("fid/default_1.pt");
    let weights = dir.path().join("inception-fid.safetensors");
    torchscript::convert(&archive, &weights)
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh first)"));
    let model = InceptionV3::load(&weights, &Device::Cpu).unwrap();

    // Six real CIFAR-10 test images, written as a prepared split.
    let tar = env_or("ACPO_MIRROR", "../../../shared/data").join("cifar10/cifar10-jpeg-test.tar");
    let set = read_image_tar(&tar, "test/airplane/000").unwrap();
    let set = set.select(&[0, 1, 2, 3, 4, 5]).unwrap();
    assert_eq!((set.height, set.width), (32, 32));
    let prepared = dir.path().join("test.safetensors");
    let t = Tensor::from_vec(set.data.clone(), (6, 32, 32, 3), &Device::Cpu).unwrap();
    let mut m = BTreeMap::new();
    m.insert("images".to_string(), t);
    acpo_fid::io::write_safetensors(&prepared, m.iter(), None).unwrap();
    assert_eq!(read_prepared(&prepared).unwrap().data, set.data);

    let params = RefParams {
        samples: 0,
        seed: 0,
        batch_size: 4,
        kid_features: 0,
    };
    let cfg = params.into_config("cifar10", prepared.clone(), weights.clone());
    let (stats, metrics) = compute_reference(&cfg, &model).unwrap();
    assert_eq!(metrics.images_used, 6);
    assert_eq!(stats.kid_features.dims(), &[6, 2048]);
    let out = dir.path().join("ref/cifar10.safetensors");
    stats.save(&out).unwrap();
    let back = RefStats::load(&out).unwrap();
    assert_eq!(back.stats.n, 6);
    assert_eq!(back.stats.mu, stats.stats.mu);
    assert_eq!(back.sqrt_sigma, stats.sqrt_sigma);
    assert_eq!(back.indices, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        back.meta.get("dataset").map(String::as_str),
        Some("cifar10")
    );

    // The same six images against their own statistics: FID ~ 0.
    let cmp = CompareParams {
        samples: 0,
        seed: 1,
        batch_size: 6,
        kid: acpo_fid::KidConfig {
            subsets: 5,
            subset_size: 6,
            seed: 0,
        },
    }
    .into_config(prepared, out, weights);
    let r = compare(&cmp, &model).unwrap();
    let trace = back.stats.sigma.trace();
    assert!(
        r.fid_kid.fid.abs() < 1e-6 * trace,
        "FID of a set with itself {} (trace {trace})",
        r.fid_kid.fid
    );
    assert_eq!((r.fid_kid.n, r.fid_kid.n_ref), (6, 6));
    assert!(r.feature_diversity.mean > 0.0 && r.pixel_diversity.mean > 0.0);
    assert!(r.pixel_diversity.mean < 1.0);
}

#[test]
fn bad_inputs_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // Wrong dtype for `images`.
    let p = dir.path().join("bad.safetensors");
    let mut m = BTreeMap::new();
    m.insert(
        "images".to_string(),
        Tensor::zeros((2, 4, 4, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    acpo_fid::io::write_safetensors(&p, m.iter(), None).unwrap();
    let e = read_prepared(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("expected U8"),
        "{e}"
    );
    // Not a statistics file.
    let e = RefStats::load(&p).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors") && e.contains("format"), "{e}");
    // Weights file that is not the converted network.
    let e = InceptionV3::load(&p, &Device::Cpu).unwrap_err();
    assert!(matches!(e, FidError::Weights { .. }), "{e}");
    // Images with the wrong layout.
    let e = acpo_fid::io::read_images(&dir.path().join("x.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.png"), "{e}");
}
