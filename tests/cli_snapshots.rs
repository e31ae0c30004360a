//! Whole outputs of the engine commands a researcher reads, pinned with insta
//! (`tests/snapshots/`): `status` before anything is set up, a DVC-format pipeline's graph and
//! what acpo does not act on, `metrics show --md`, `params diff`, the progress lines of a run
//! without a terminal, and `times`. Times, sizes and temporary paths are redacted so a snapshot
//! changes only when what the command says changes. Review a change with `cargo insta review`
//! (or `INSTA_UPDATE=always cargo test --test cli_snapshots` and `git diff`).

mod common;

use common::git;
use regex::Regex;
use std::path::Path;
use std::process::{Command, Output};

const ACPO: &str = env!("CARGO_BIN_EXE_acpo");

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

fn acpo(dir: &Path, args: &[&str]) -> Output {
    Command::new(ACPO)
        .args(args)
        .current_dir(dir)
        .env_remove("ACPO_PROFILE")
        // `just test` exports these; the defaults (inside the project) keep snapshots equal.
        .env_remove("ACPO_ASSETS")
        .env_remove("ACPO_MIRROR")
        .env("ACPO_HEARTBEAT_S", "3600")
        .output()
        .unwrap()
}

/// stdout, then stderr under a marker, with the exit code; durations, memory and the
/// temporary directory replaced by placeholders.
fn shown(dir: &Path, o: &Output) -> String {
    let raw = format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    redact(&raw.replace(&dir.display().to_string(), "<dir>"))
}

fn redact(s: &str) -> String {
    let rules = [
        // Elapsed and estimated times: 0s, 1m02s, 1h03m, 0.01 s, ~3s.
        (r"\b\d+(\.\d+)? ?(ms|s)\b", "<t>"),
        (r"\b\d+h\d+m\b|\b\d+m\d+s\b", "<t>"),
        (r"\d+(\.\d+)? MiB", "<mem> MiB"),
        // Minutes and shares in `times` tables (only the structure is pinned).
        (r"\b\d+\.\d+%", "<pct>"),
        (r"\b\d+\.\d+ h\b", "<h> h"),
        // Column padding follows the redacted widths: keep the columns, not the padding.
        (r" {2,}", "  "),
    ];
    let mut out = s.to_string();
    for (re, with) in rules {
        out = Regex::new(re).unwrap().replace_all(&out, with).into_owned();
    }
    out
}

#[test]
fn redaction_keeps_counters_and_replaces_times() {
    assert_eq!(
        redact("[1/2 1m02s ~0s left +1 untimed] a: done in 0.01 s, peak memory 3.2 MiB"),
        "[1/2 <t> ~<t> left +1 untimed] a: done in <t>, peak memory <mem> MiB"
    );
}

#[test]
fn status_before_setup_reports_what_is_missing() {
    let d = project(&[
        (
            "pipeline.yaml",
            "stages:\n  weights:\n    cmd: cp ${env.ACPO_ASSETS}/fid/w.pt w.pt\n    deps: [${env.ACPO_ASSETS}/fid/w.pt]\n    outs: [w.pt]\n  \
             stats:\n    cmd: cat w.pt > stats.txt\n    deps: [w.pt]\n    outs: [stats.txt]\n",
        ),
        ("params.yaml", "{}\n"),
    ]);
    let o = acpo(d.path(), &["status"]);
    insta::assert_snapshot!("status_before_setup", shown(d.path(), &o));
}

const DVC_YAML: &str = r#"vars:
  - seed: 7
stages:
  prepare:
    wdir: src
    cmd: cat ../data/raw.txt > ../prepared.txt && echo ${seed} >> ../prepared.txt
    deps:
      - ../data/raw.txt
    outs:
      - ../prepared.txt
  train:
    cmd: >-
      cat prepared.txt > model.txt && echo '{"acc": 0.75}' > metrics.json
    deps:
      - prepared.txt
    params:
      - lr
      - train.yaml:
          - epochs
    outs:
      - model.txt:
          cache: false
          remote: myremote
    metrics:
      - metrics.json:
          cache: false
    meta:
      owner: someone
  old:
    cmd: echo old > old.txt
    outs:
      - old.txt
    frozen: true
artifacts:
  model:
    path: model.txt
    type: model
"#;

#[test]
fn a_dvc_pipeline_graph_and_what_is_not_acted_on() {
    let d = project(&[
        ("dvc.yaml", DVC_YAML),
        ("data/raw.txt", "raw\n"),
        ("src/.keep", ""),
        ("params.yaml", "lr: 0.1\n"),
        ("train.yaml", "epochs: 3\n"),
    ]);
    let dag = acpo(d.path(), &["dag"]);
    let run = acpo(d.path(), &["repro"]);
    let status = acpo(d.path(), &["status"]);
    insta::assert_snapshot!(
        "dvc_pipeline",
        format!(
            "$ acpo dag\n{}\n$ acpo repro\n{}\n$ acpo status\n{}",
            shown(d.path(), &dag),
            shown(d.path(), &run),
            shown(d.path(), &status)
        )
    );
}

#[test]
fn metrics_and_params_tables() {
    let d = project(&[
        (
            "pipeline.yaml",
            "stages:\n  train:\n    cmd: >-\n      printf '{\"loss\": %s, \"acc\": 0.5, \"run\": {\"note\": \"x\", \"steps\": 80}}' ${p.loss} > m.json\n    params: [p]\n    metrics: [m.json]\n",
        ),
        ("params.yaml", "p:\n  loss: 0.5\n  lr: 1e-4\n  other: [1, 2, 3]\n"),
    ]);
    let dir = d.path();
    assert!(acpo(dir, &["repro"]).status.success());
    git(dir, &["init", "-q"]);
    git(
        dir,
        &["add", "pipeline.yaml", "params.yaml", "pipeline.lock"],
    );
    git(dir, &["commit", "-q", "-m", "first"]);
    std::fs::write(
        dir.join("params.yaml"),
        "p:\n  loss: 0.25\n  lr: 3e-5\n  other: [1, 2, 3]\n",
    )
    .unwrap();
    let params_diff = acpo(dir, &["params", "diff", "--md"]);
    assert!(acpo(dir, &["repro"]).status.success());
    let show = acpo(dir, &["metrics", "show", "--md"]);
    let diff = acpo(dir, &["metrics", "diff", "HEAD", "--md"]);
    insta::assert_snapshot!(
        "metrics_and_params",
        format!(
            "$ acpo params diff --md\n{}\n$ acpo metrics show --md\n{}\n$ acpo metrics diff HEAD --md\n{}",
            shown(dir, &params_diff),
            shown(dir, &show),
            shown(dir, &diff)
        )
    );
}

#[test]
fn progress_lines_and_times_without_a_terminal() {
    let d = project(&[
        (
            "pipeline.yaml",
            "stages:\n  prep:\n    cmd: echo prepared 3 files && echo ${p.v} > a.txt\n    outs: [a.txt]\n    timing: {phase: data}\n  \
             train:\n    foreach: [x, y]\n    do:\n      cmd: sleep 0.3 && cat a.txt > m-${item}.txt\n      deps: [a.txt]\n      outs: [m-${item}.txt]\n      timing: {phase: training}\n",
        ),
        ("params.yaml", "p:\n  v: 1\n"),
    ]);
    let first = acpo(d.path(), &["repro"]);
    let second = acpo(d.path(), &["repro", "-S", "p.v=2"]);
    let times = acpo(d.path(), &["times", "--md"]);
    insta::assert_snapshot!(
        "progress_and_times",
        format!(
            "$ acpo repro\n{}\n$ acpo repro -S p.v=2\n{}\n$ acpo times --md\n{}",
            shown(d.path(), &first),
            shown(d.path(), &second),
            shown(d.path(), &times)
        )
    );
}
