//! Paths shared by the integration tests: the real-data mirror and the setup assets.
#![allow(dead_code)]

use std::path::PathBuf;

/// Workspace root (two levels above this crate).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$ACPO_MIRROR` or `<workspace>/../shared/data`.
pub fn mirror() -> PathBuf {
    let p = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"));
    assert!(
        p.join("iqa/CNNIQA-LIVE.safetensors").is_file(),
        "real-data mirror not found at {} (set ACPO_MIRROR)",
        p.display()
    );
    p
}

/// `$ACPO_ASSETS` or `<workspace>/.cache/assets`; fails with a clear message when setup has not run.
pub fn assets() -> PathBuf {
    let p = std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/assets"));
    assert!(
        p.join("brisque/brisque_svm.txt").is_file(),
        "setup assets not found in {}: run `just setup`",
        p.display()
    );
    p
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, else `<assets>/onnxruntime/libonnxruntime.so`.
pub fn ort_dylib() -> PathBuf {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("onnxruntime/libonnxruntime.so"));
    assert!(
        p.is_file(),
        "ONNX Runtime library not found at {}: run `just setup`",
        p.display()
    );
    p
}

pub const CALIB: [&str; 5] = ["I03", "I04", "I06", "I08", "I19"];

/// Reference row of `calibration_summary.csv` as `[I03, I04, I06, I08, I19]`.
pub fn calibration_row(method: &str) -> [f64; 5] {
    let csv = std::fs::read_to_string(mirror().join("iqa/calibration/calibration_summary.csv"))
        .expect("calibration_summary.csv");
    for line in csv.lines().skip(1) {
        let mut cells = line.split(',');
        if cells.next() == Some(method) {
            let v: Vec<f64> = cells.map(|c| c.trim().parse().expect("number")).collect();
            return [v[0], v[1], v[2], v[3], v[4]];
        }
    }
    panic!("method {method} not in calibration_summary.csv")
}
