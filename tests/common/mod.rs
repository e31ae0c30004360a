//! Shared by the CLI tests: run `acpo stage ...` as the engine does, with declared params.

use std::process::Command;

/// Runs `acpo stage <args>` in a temporary directory with `params` as its `ACPO_PARAMS` file
/// and `stage` as `ACPO_STAGE`; returns the exit code and stderr.
pub fn run_stage(params: &serde_json::Value, stage: &str, args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("params.json");
    std::fs::write(&p, params.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_acpo"))
        .arg("stage")
        .args(args)
        .current_dir(tmp.path())
        .env("ACPO_PARAMS", &p)
        .env("ACPO_STAGE", stage)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
