//! The binary maps the data stages' bad-input errors to exit code 2 with a message that says
//! which file is missing and where to put it.

use std::process::Command;

#[test]
fn missing_mirror_is_bad_input_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("no-mirror");
    let out = Command::new(env!("CARGO_BIN_EXE_acpo"))
        .args(["stage", "data", "prepare", "cifar10", "--mirror"])
        .arg(&mirror)
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .arg("--out")
        .arg(tmp.path().join("prepared"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("ACPO_PARAMS")
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("missing source file cifar10/"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&mirror.display().to_string()),
        "stderr: {stderr}"
    );
    assert!(
        !tmp.path().join("prepared/cifar10").exists(),
        "nothing half-written"
    );
}
