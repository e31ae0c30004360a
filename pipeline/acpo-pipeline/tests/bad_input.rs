//! Every bad input gives a clear message naming file and line/column or stage, and the
//! right error kind (the CLI turns kinds into exit codes). Messages pinned with insta.

mod common;

use acpo_pipeline::{ErrorKind, Workspace};
use common::Toy;

fn repro_err(t: &Toy) -> (ErrorKind, String) {
    let e = t.repro().unwrap_err();
    (e.kind(), e.to_string())
}

fn repro_targets_err(t: &Toy, targets: &[&str]) -> (ErrorKind, String) {
    let e = t
        .repro_with(|s| s.targets = targets.iter().map(|s| s.to_string()).collect())
        .unwrap_err();
    (e.kind(), e.to_string())
}

#[test]
fn malformed_yaml() {
    let t = Toy::new("stages:\n  a:\n    cmd: [echo\n    outs: x\n", "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("malformed_yaml", msg);
}

#[test]
fn malformed_params() {
    let t = Toy::new("stages:\n  a:\n    cmd: echo\n", "a: 1\n b: 2\n");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("malformed_params", msg);
}

#[test]
fn unknown_field() {
    let t = Toy::new(
        "stages:\n  a:\n    cmd: echo hi > o.txt\n    outz: [o.txt]\n",
        "",
    );
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("unknown_field", msg);
}

#[test]
fn unknown_resource_field() {
    let t = Toy::new(
        "stages:\n  a:\n    cmd: echo\n    resources:\n      cpu: 2\n",
        "",
    );
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("unknown_resource_field", msg);
}

#[test]
fn dependency_cycle() {
    let p = r#"
stages:
  a:
    cmd: cat c.txt > a.txt
    deps: [c.txt]
    outs: [a.txt]
  b:
    cmd: cat a.txt > b.txt
    deps: [a.txt]
    outs: [b.txt]
  c:
    cmd: cat b.txt > c.txt
    deps: [b.txt]
    outs: [c.txt]
"#;
    let t = Toy::new(p, "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("dependency_cycle", msg);
}

#[test]
fn missing_dep() {
    let p =
        "stages:\n  a:\n    cmd: cat nope.txt > a.txt\n    deps: [nope.txt]\n    outs: [a.txt]\n";
    let t = Toy::new(p, "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("missing_dep", msg);
    assert!(!t.path("pipeline.lock").exists(), "nothing ran");
}

#[test]
fn two_stages_declare_the_same_out() {
    let p = "stages:\n  a:\n    cmd: echo a > o.txt\n    outs: [o.txt]\n  b:\n    cmd: echo b > o.txt\n    outs: [./o.txt]\n";
    let t = Toy::new(p, "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("duplicate_out", msg);
}

#[test]
fn overlapping_outs() {
    let p = "stages:\n  a:\n    cmd: mkdir -p d\n    outs: [d]\n  b:\n    cmd: echo b > d/x\n    outs: [d/x]\n";
    let t = Toy::new(p, "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("overlapping_outs", msg);
}

#[test]
fn undeclared_param_key() {
    let p = "stages:\n  a:\n    cmd: echo > a.txt\n    params: [train.lr]\n    outs: [a.txt]\n";
    let t = Toy::new(p, "train:\n  steps: 1\n");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("undeclared_param", msg);
}

#[test]
fn interpolated_param_missing() {
    let p = "stages:\n  a:\n    cmd: echo ${train.lr} > a.txt\n    outs: [a.txt]\n";
    let t = Toy::new(p, "train:\n  steps: 1\n");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("interpolated_param_missing", msg);
}

#[test]
fn exit_zero_without_declared_out() {
    let p = "stages:\n  a:\n    cmd: echo hi > other.txt\n    outs: [a.txt]\n";
    let t = Toy::new(p, "");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::StageFailed);
    insta::assert_snapshot!("missing_out", msg);
    assert!(!t.path("pipeline.lock").exists(), "never recorded as done");
}

#[test]
fn unknown_stage_name() {
    let p = "stages:\n  a:\n    cmd: echo > a.txt\n    outs: [a.txt]\n  gen:\n    foreach: [x, y]\n    do:\n      cmd: echo > ${item}\n      outs:\n        - ${item}\n";
    let t = Toy::new(p, "");
    let (kind, msg) = repro_targets_err(&t, &["train"]);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("unknown_stage", msg);
    // Base names and full names work.
    assert!(t
        .repro_with(|s| s.targets = vec!["gen".into(), "a".into()])
        .is_ok());
}

#[test]
fn unknown_profile_and_bad_override() {
    let p = "stages:\n  a:\n    cmd: echo > a.txt\n    outs: [a.txt]\n";
    let t = Toy::new(p, "x: 1\n");
    let e = t.repro_with(|s| s.profile = "paper".into()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    insta::assert_snapshot!("unknown_profile", e.to_string());
    let e = t
        .repro_with(|s| s.overrides = vec!["y=2".into()])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    insta::assert_snapshot!("override_unknown_key", e.to_string());
    t.write("profiles/smoke.yaml", "x: 2\nz: 3\n");
    let e = t.repro_with(|s| s.profile = "smoke".into()).unwrap_err();
    insta::assert_snapshot!("profile_adds_key", e.to_string());
}

#[test]
fn foreach_errors_name_the_stage() {
    let p = "stages:\n  a:\n    foreach: ${sets}\n    do:\n      cmd: echo\n";
    let t = Toy::new(p, "other: 1\n");
    let (kind, msg) = repro_err(&t);
    assert_eq!(kind, ErrorKind::BadInput);
    insta::assert_snapshot!("foreach_unknown_param", msg);
    let p = "stages:\n  a:\n    foreach: [1, 2]\n";
    let t = Toy::new(p, "");
    insta::assert_snapshot!("foreach_without_do", repro_err(&t).1);
}

#[test]
fn bad_input_leaves_earlier_results_alone() {
    let p = "stages:\n  a:\n    cmd: echo a > a.txt\n    outs: [a.txt]\n";
    let t = Toy::new(p, "");
    t.repro().unwrap();
    let lock = t.read("pipeline.lock");
    t.write(
        "pipeline.yaml",
        "stages:\n  a:\n    cmd: echo a > a.txt\n    outs: [a.txt\n",
    );
    assert_eq!(repro_err(&t).0, ErrorKind::BadInput);
    assert_eq!(t.read("a.txt"), "a\n");
    assert_eq!(t.read("pipeline.lock"), lock);
    assert!(Workspace::open(t.root(), "cpu", &[]).is_err());
}
