//! Shared by the CLI tests: run `acpo stage ...` as the engine does, with declared params; a
//! seeded generator for the soak and fuzz tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `acpo stage <args>` in a temporary directory with `params` as its `ACPO_PARAMS` file
/// and `stage` as `ACPO_STAGE`; returns the exit code and stderr.
pub fn run_stage(params: &serde_json::Value, stage: &str, args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    run_stage_in(tmp.path(), params, stage, args)
}

/// [`run_stage`] in `dir` (its `params.json` written there).
pub fn run_stage_in(
    dir: &Path,
    params: &serde_json::Value,
    stage: &str,
    args: &[&str],
) -> (Option<i32>, String) {
    let p = dir.join("params.json");
    std::fs::write(&p, params.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_acpo"))
        .arg("stage")
        .args(args)
        .current_dir(dir)
        .env("ACPO_PARAMS", &p)
        .env("ACPO_STAGE", stage)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `git args` in `dir` with a throwaway identity and no signing; panics with its stderr
/// when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// splitmix64: the seeded generator of the soak's kill schedule and the fuzz's mutations (a
/// test needs no crate for this, and the sequence never changes under a dependency update).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// The whole number in environment variable `name`, else `default`.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number")),
            Err(_) => default,
        }
    }
}

/// Sets `ACPO_MIRROR` and `ACPO_ASSETS` to the locations `just` and `acpo` default to, when
/// unset: pipeline.yaml names the mirror and the assets through `${env.*}`, so a test that
/// loads it in-process needs them (only their names reach the keys; the paths need not exist).
pub fn default_locations() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (var, default) in [
        ("ACPO_MIRROR", "../shared/data"),
        ("ACPO_ASSETS", ".cache/assets"),
    ] {
        if std::env::var_os(var).is_none() {
            // Every test of a binary that calls this writes the same values.
            std::env::set_var(var, root.join(default));
        }
    }
}
