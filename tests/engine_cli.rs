//! End-to-end tests of the `acpo` binary's engine commands on toy shell pipelines:
//! exit codes (0 ok, 1 stage failed, 2 bad input, 130 interrupted), messages, resume hints.

mod common;

use common::git;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ACPO: &str = env!("CARGO_BIN_EXE_acpo");

fn toy(pipeline: &str, params: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pipeline.yaml"), pipeline).unwrap();
    std::fs::write(d.path().join("params.yaml"), params).unwrap();
    d
}

fn acpo(dir: &Path, args: &[&str]) -> Output {
    Command::new(ACPO)
        .args(args)
        .current_dir(dir)
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const TWO: &str = r#"
stages:
  a:
    cmd: echo "${p.a}" > a.txt
    outs: [a.txt]
  b:
    cmd: cat a.txt > b.txt && test "${p.fail}" = no
    deps: [a.txt]
    outs: [b.txt]
"#;

#[test]
fn repro_status_and_exit_codes() {
    let d = toy(TWO, "p:\n  a: 1\n  fail: no\n");
    let o = acpo(d.path(), &["repro"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 ran, 0 restored"), "{}", text(&o));
    let o = acpo(d.path(), &["status", "-S", "p.a=2"]);
    assert!(o.status.success());
    let s = text(&o);
    assert!(
        s.contains("a: changed") && s.contains("param p.a: 1 -> 2"),
        "{s}"
    );
    assert!(s.contains("upstream stage `a` is not up to date"), "{s}");

    // Stage failure: exit 1, earlier outputs kept, the resume command printed.
    let o = acpo(d.path(), &["repro", "-S", "p.fail=yes", "b"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let s = text(&o);
    assert!(s.contains("stage `b` failed"), "{s}");
    assert!(
        s.contains("to resume, run: ") && s.contains("repro -S p.fail=yes b"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("b.txt")).unwrap(),
        "1\n"
    );

    // Bad input: exit 2 with file and line.
    let o = acpo(d.path(), &["repro", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("unknown stage `nosuch` in pipeline.yaml"),
        "{}",
        text(&o)
    );
    std::fs::write(
        d.path().join("pipeline.yaml"),
        "stages:\n  a:\n    cmd: x\n    oops: 1\n",
    )
    .unwrap();
    let o = acpo(d.path(), &["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("pipeline.yaml:4:5: unknown field `oops`"),
        "{}",
        text(&o)
    );
}

#[test]
fn stage_commands_find_this_acpo_on_path() {
    let p = "stages:\n  v:\n    cmd: acpo --version > v.txt\n    outs: [v.txt]\n";
    let d = toy(p, "");
    let o = Command::new(ACPO)
        .args(["repro"])
        .current_dir(d.path())
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v = std::fs::read_to_string(d.path().join("v.txt")).unwrap();
    assert!(v.starts_with("acpo "), "{v}");
}

#[test]
fn dag_explain_metrics_gc() {
    let p = r#"
stages:
  a:
    cmd: >-
      echo "{\"score\": ${p.a}}" > m.json
    metrics: [m.json]
  b:
    cmd: cat m.json > b.txt
    deps: [m.json]
    outs: [b.txt]
"#;
    let d = toy(p, "p:\n  a: 1\n");
    assert!(acpo(d.path(), &["repro"]).status.success());
    let o = acpo(d.path(), &["dag"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "a\nb <- a\n");
    let o = acpo(d.path(), &["dag", "--mermaid"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("s0 --> s1"));
    let o = acpo(d.path(), &["explain", "a"]);
    let s = text(&o);
    assert!(
        s.contains("p.a = 1") && s.contains("status: up to date"),
        "{s}"
    );
    assert!(acpo(d.path(), &["repro", "-S", "p.a=3"]).status.success());
    let s = text(&acpo(
        d.path(),
        &["metrics", "diff", "-S", "p.a=3", "--csv"],
    ));
    assert_eq!(
        s,
        "path,metric,previous run,workspace,change\nm.json,score,1,3,+2\n"
    );
    let s = text(&acpo(
        d.path(),
        &["metrics", "show", "-S", "p.a=3", "--csv"],
    ));
    assert_eq!(s, "path,metric,value\nm.json,score,3\n");
    let s = text(&acpo(d.path(), &["gc", "-S", "p.a=3"]));
    assert!(s.contains("2 cached run(s)"), "{s}");
    // After gc the old params are no longer in the run cache: they run again.
    let s = text(&acpo(d.path(), &["repro"]));
    assert!(s.contains("2 ran, 0 restored"), "{s}");
}

#[test]
fn sigterm_exits_130_and_keeps_outputs_and_lock() {
    let p = r#"
stages:
  slow:
    cmd: >-
      echo "${p.v}" > out.txt &&
      if [ "${p.v}" = 2 ]; then echo started > started.txt; sleep 30; fi
    outs: [out.txt]
"#;
    let d = toy(p, "p:\n  v: 1\n");
    assert!(acpo(d.path(), &["repro"]).status.success());
    let lock = std::fs::read_to_string(d.path().join("pipeline.lock")).unwrap();
    let child = Command::new(ACPO)
        .args(["repro", "-S", "p.v=2"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !d.path().join("started.txt").exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(text(&o).contains("to resume, run: "), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(d.path().join("out.txt")).unwrap(),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("pipeline.lock")).unwrap(),
        lock
    );
}

/// A missing pipeline file, or a pipeline or params file that is not UTF-8, is bad input
/// (exit 2) named once, with the line and column of the first bad byte. Both exited 1 before,
/// with the reason printed twice.
#[test]
fn missing_or_non_utf8_pipeline_files_are_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let o = acpo(d.path(), &["status"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("pipeline.yaml: not found"), "{s}");
    assert_eq!(s.matches("not found").count(), 1, "{s}");

    std::fs::write(
        d.path().join("pipeline.yaml"),
        b"stages:\n  a:\n    cmd: echo \xff\n",
    )
    .unwrap();
    let o = acpo(d.path(), &["repro"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(
        s.contains("pipeline.yaml:3:15: byte 0xff is not UTF-8"),
        "{s}"
    );

    std::fs::write(
        d.path().join("pipeline.yaml"),
        "stages:\n  a:\n    cmd: echo a\n",
    )
    .unwrap();
    std::fs::write(d.path().join("params.yaml"), b"a: \xc3\n").unwrap();
    let o = acpo(d.path(), &["status"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("params.yaml:1:4: byte 0xc3 is not UTF-8"), "{s}");
}

/// Starts `acpo repro` in `dir`, waits until its stage has written `marker`, and kills the
/// engine with SIGKILL, so it cannot stop its stage.
fn repro_then_kill_9(dir: &Path, marker: &str) {
    let mut engine = Command::new(ACPO)
        .arg("repro")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join(marker).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.kill().unwrap();
    engine.wait().unwrap();
}

/// `kill -9` of the engine leaves its stage running in its own process group. The next
/// `repro` stops that orphan before it restarts the stage, so the output is written by one
/// run only. Before, the orphan kept appending into the restarted stage's output
/// (`start|end|end`), and the result was recorded as valid.
#[test]
fn a_repro_after_kill_9_stops_the_orphaned_stage_first() {
    let d = toy(
        // 8 s: the orphan must still be running when the next repro starts, even on a loaded
        // 2-core machine (with 2 s it sometimes finished first, and there was nothing to stop).
        "stages:\n  slow:\n    cmd: printf start > o.txt && sleep 8 && printf '|end' >> o.txt\n    outs: [o.txt]\n",
        "",
    );
    repro_then_kill_9(d.path(), "o.txt");
    let o = acpo(d.path(), &["repro"]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("slow: stopped") && s.contains("that a killed acpo left running"),
        "{s}"
    );
    // Long enough for an orphan's append to land, had it survived.
    std::thread::sleep(Duration::from_millis(8500));
    assert_eq!(
        std::fs::read_to_string(d.path().join("o.txt")).unwrap(),
        "start|end"
    );
    let o = acpo(d.path(), &["status"]);
    assert!(text(&o).contains("up to date"), "{}", text(&o));
}

/// A `persist` stage killed with its engine keeps its partial outputs (its checkpoint): the
/// next `repro` resumes from them instead of starting from nothing. Before, they were
/// discarded with the rest of the interrupted run's outputs.
#[test]
fn a_persist_stage_resumes_after_kill_9_of_its_engine() {
    let d = toy(
        "stages:\n  train:\n    cmd: if [ -f out/ck ]; then echo resumed > out/r; else mkdir -p out && touch out/ck && sleep 30; fi\n    outs: [out]\n    persist: true\n",
        "",
    );
    repro_then_kill_9(d.path(), "out/ck");
    let t0 = Instant::now();
    let o = acpo(d.path(), &["repro"]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("its partial outputs are kept"), "{s}");
    assert!(
        s.contains("resuming from the outputs its interrupted run left"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/r")).unwrap(),
        "resumed\n"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the orphan's sleep was waited for"
    );
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')').and_then(|r| {
                r.1.split_whitespace()
                    .next()
                    .map(|st| st != "Z" && st != "X")
            })
        })
        .unwrap_or(false)
}

/// A stage command that is one program dies with its engine: `kill -9` of acpo (or an
/// out-of-memory kill) reaches it through the parent-death signal, without waiting for the
/// next `repro`. Before, it ran on until that repro stopped it (or to its end).
#[test]
fn a_stage_dies_with_its_engine_killed_by_sigkill() {
    let d = toy(
        "stages:\n  slow:\n    cmd: echo $$ > p.tmp && mv p.tmp pid.txt && exec sleep 30\n    outs: [o.txt]\n",
        "",
    );
    repro_then_kill_9(d.path(), "pid.txt");
    let pid: i32 = std::fs::read_to_string(d.path().join("pid.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "stage process {pid} outlived its engine"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `metrics show`, `metrics diff` (against a git revision and against the previous run) and
/// `params diff` print tables in each format; `status` names only the leaf of a section param
/// that changed. Before, `metrics show` was a flat `key: value` dump with strings and hashes,
/// `metrics diff` knew only the previous run, there was no `params diff`, and a section
/// param's change printed both whole mappings.
#[test]
fn metrics_and_params_tables_against_a_git_revision() {
    let d = toy(
        "stages:\n  train:\n    cmd: >-\n      printf '{\"loss\": %s, \"acc\": 0.5, \"note\": \"x\"}' ${p.loss} > m.json\n    params: [p]\n    metrics: [m.json]\n",
        "p:\n  loss: 0.5\n  other: [1, 2, 3, 4, 5, 6, 7, 8]\n",
    );
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
        "p:\n  loss: 0.25\n  other: [1, 2, 3, 4, 5, 6, 7, 8]\n",
    )
    .unwrap();
    let s = text(&acpo(dir, &["status"]));
    assert!(s.contains("param p.loss: 0.5 -> 0.25\n"), "{s}");
    assert!(!s.contains("other"), "{s}");
    let s = text(&acpo(dir, &["params", "diff", "--csv"]));
    assert_eq!(s, "param,HEAD,workspace\np.loss,0.5,0.25\n");
    assert!(acpo(dir, &["repro"]).status.success());

    let o = acpo(dir, &["metrics", "show", "--md"]);
    assert_eq!(
        text(&o),
        "| path | metric | value |\n|---|---|---|\n| m.json | acc | 0.5 |\n| m.json | loss | 0.25 |\n"
    );
    let s = text(&acpo(dir, &["metrics", "show", "--all"]));
    assert_eq!(
        s,
        "path    metric  value\nm.json  acc     0.5\nm.json  loss    0.25\nm.json  note    x\n"
    );
    let s = text(&acpo(dir, &["metrics", "diff", "HEAD", "--md"]));
    assert_eq!(
        s,
        "| path | metric | HEAD | workspace | change |\n|---|---|---|---|---|\n| m.json | loss | 0.5 | 0.25 | -0.25 |\n"
    );
    let s = text(&acpo(dir, &["metrics", "diff", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"path": "m.json", "metric": "loss", "previous run": 0.5,
                            "workspace": 0.25, "change": -0.25}])
    );
    let o = acpo(dir, &["metrics", "diff", "no-such-rev"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("git revision `no-such-rev`"),
        "{}",
        text(&o)
    );
}

/// Without a terminal, every stage start and finish line carries a counter, the elapsed time
/// and (from the lock's last wall times) an estimate of what is left, and a stage silent for
/// `ACPO_HEARTBEAT_S` gets a "still running" line. Before, a stage that printed nothing left
/// the log quiet for its whole run (384 s for fid-ref@cifar10), with no count of stages.
#[test]
fn progress_lines_count_stages_estimate_the_rest_and_never_go_quiet() {
    let d = toy(
        "stages:\n  a:\n    cmd: echo ${p.v} > a.txt\n    outs: [a.txt]\n  slow:\n    cmd: sleep 2.5 && cat a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n",
        "p:\n  v: 1\n",
    );
    let run = |v: &str| {
        let o = Command::new(ACPO)
            .args(["repro", "-S", &format!("p.v={v}")])
            .current_dir(d.path())
            .env("ACPO_HEARTBEAT_S", "1")
            .env_remove("ACPO_PROFILE")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let line = |s: &str, what: &str| -> String {
        s.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with `{what}` in:\n{s}"))
            .to_string()
    };
    let s = run("1");
    // First run: nothing timed yet.
    let l = line(&s, "a: running");
    assert!(
        l.starts_with("[0/2 ") && l.contains("+2 untimed] a: running"),
        "{l}"
    );
    let l = line(&s, "a: done in");
    assert!(
        l.starts_with("[1/2 ") && l.contains("+1 untimed] a: done"),
        "{l}"
    );
    let l = line(&s, "[slow] still running (");
    assert!(
        l.ends_with("; no output for 1s)") && !l.contains("last time"),
        "{l}"
    );
    assert!(line(&s, "slow: done in").starts_with("[2/2 "), "{s}");
    // Second run: the lock's wall times give the estimate (slow took about 2.5 s).
    let s = run("2");
    let l = line(&s, "a: running");
    assert!(
        l.starts_with("[0/2 ") && l.contains(" left] a: running"),
        "{l}"
    );
    assert!(!l.contains("untimed") && !l.contains("~0s left"), "{l}");
    let l = line(&s, "[slow] still running (");
    assert!(l.contains("s last time; no output for 1s)"), "{l}");
}

/// A pipeline in DVC 3's `dvc.yaml` format, using the forms its reference documents: `vars`
/// (a file and a mapping), stage `wdir`, `frozen`, `always_changed` and `meta`, params from
/// other files (listed keys, and all keys), outputs, metrics and plots with flags, and the
/// top-level `metrics`, `plots`, `params` and `artifacts`. acpo finds `dvc.yaml` when there is
/// no `pipeline.yaml`, keeps its own lock in `dvc.acpo.lock` (DVC's `dvc.lock` untouched),
/// acts on what it supports and names the rest. Before, the file did not load: no `--file`,
/// and `vars`, `artifacts`, `metrics`, `plots`, `wdir`, `frozen`, `always_changed`, the dict
/// forms and params of other files were unknown fields.
#[test]
fn dvc_yaml_files_load_and_run_as_dvc_documents_them() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("data/raw.txt", "raw\n");
    w("src/.keep", "");
    w("config.yaml", "model:\n  width: 8\n");
    w("params.yaml", "lr: 0.1\n");
    w("train.yaml", "epochs: 3\nbatch: 16\n");
    w("extra.yaml", "tag: a\n");
    w(
        "dvc.yaml",
        r#"vars:
  - config.yaml
  - seed: 7
stages:
  prepare:
    wdir: src
    cmd: cat ../data/raw.txt > ../prepared.txt && echo ${seed} ${model.width} >> ../prepared.txt
    deps:
      - ../data/raw.txt
    outs:
      - ../prepared.txt
  train:
    cmd: >-
      cat prepared.txt > model.txt && cat "$ACPO_PARAMS" > used-params.json &&
      echo '{"acc": 0.75}' > metrics.json && printf 'step,loss\n1,0.5\n' > loss.csv
    deps:
      - prepared.txt
    params:
      - lr
      - train.yaml:
          - epochs
      - extra.yaml:
    outs:
      - model.txt:
          cache: false
          remote: myremote
      - used-params.json
    metrics:
      - metrics.json:
          cache: false
    plots:
      - loss.csv:
          x: step
          y: loss
    meta:
      owner: someone
  report:
    cmd: cat model.txt > report.txt
    deps:
      - model.txt
    outs:
      - report.txt
    always_changed: true
  old:
    cmd: echo old > old.txt
    outs:
      - old.txt
    frozen: true
metrics:
  - metrics.json
plots:
  - loss.csv:
      x: step
artifacts:
  model:
    path: model.txt
    type: model
params:
  - train.yaml
"#,
    );
    w("dvc.lock", "schema: '2.0'\n");
    let o = acpo(dir, &["repro"]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("old: frozen (not checked)"), "{s}");
    assert!(!dir.join("old.txt").exists(), "a frozen stage ran");
    assert_eq!(
        std::fs::read_to_string(dir.join("prepared.txt")).unwrap(),
        "raw\n7 8\n",
        "wdir and vars"
    );
    let used: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("used-params.json")).unwrap()).unwrap();
    assert_eq!(
        used,
        serde_json::json!({"lr": 0.1, "train.yaml:epochs": 3, "extra.yaml:tag": "a"})
    );
    assert!(dir.join("dvc.acpo.lock").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("dvc.lock")).unwrap(),
        "schema: '2.0'\n"
    );

    // always_changed runs every time; the rest is up to date.
    let s = text(&acpo(dir, &["repro"]));
    assert!(
        s.contains("1 ran, 0 restored from the run cache, 3 up to date"),
        "{s}"
    );
    let s = text(&acpo(dir, &["status", "--file", "dvc.yaml"]));
    assert!(s.contains("report: changed\n    always changed"), "{s}");
    assert!(s.contains("old: frozen (not checked)"), "{s}");

    // A param of another file enters the key; `cache: false` keeps train out of the run
    // cache, so going back runs it again instead of restoring it.
    w("train.yaml", "epochs: 5\nbatch: 16\n");
    let s = text(&acpo(dir, &["status"]));
    assert!(s.contains("param train.yaml:epochs: 3 -> 5"), "{s}");
    assert!(acpo(dir, &["repro"]).status.success());
    w("train.yaml", "epochs: 3\nbatch: 16\n");
    let s = text(&acpo(dir, &["repro"]));
    assert!(s.contains("train: running"), "{s}");

    let s = text(&acpo(dir, &["metrics", "show", "--csv"]));
    assert_eq!(s, "path,metric,value\nmetrics.json,acc,0.75\n");
    let o = acpo(dir, &["dag"]);
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "read from dvc.yaml but not acted on:",
        "artifacts: model",
        "plots: 1 top-level plot(s)",
        "params: 1 top-level params file(s)",
        "stage train: outs[model.txt]: remote",
        "stage train: plots[loss.csv]: x, y",
        "stage train: meta",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "prepare\ntrain <- prepare\nreport <- train\nold\n"
    );
}

/// `acpo` alone computes the keys `just` does: with `ACPO_MIRROR` and `ACPO_ASSETS` unset it
/// uses the Justfile's locations (`<dir>/../shared/data`, `<dir>/.cache/assets`), so nothing
/// turns stale. Before, plain `acpo status` called every stage that declares them changed
/// (`env ACPO_MIRROR: ../shared/data -> (unset)`).
#[test]
fn acpo_alone_uses_the_justfile_locations() {
    let parent = tempfile::tempdir().unwrap();
    let proj = parent.path().join("proj");
    std::fs::create_dir_all(parent.path().join("shared/data")).unwrap();
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(parent.path().join("shared/data/x.txt"), "x\n").unwrap();
    std::fs::write(
        proj.join("pipeline.yaml"),
        "stages:\n  a:\n    cmd: cat \"$ACPO_MIRROR/x.txt\" > o.txt\n    env: [ACPO_MIRROR, ACPO_ASSETS]\n    outs: [o.txt]\n",
    )
    .unwrap();
    let with_env = Command::new(ACPO)
        .arg("repro")
        .current_dir(&proj)
        .env("ACPO_MIRROR", proj.join("../shared/data"))
        .env("ACPO_ASSETS", proj.join(".cache/assets"))
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    assert!(with_env.status.success(), "{}", text(&with_env));
    let alone = Command::new(ACPO)
        .arg("status")
        .current_dir(&proj)
        .env_remove("ACPO_MIRROR")
        .env_remove("ACPO_ASSETS")
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    let s = text(&alone);
    assert!(s.contains("1 stage(s): 1 up to date"), "{s}");
    // And the stage itself finds the mirror there.
    std::fs::remove_file(proj.join("o.txt")).unwrap();
    let o = Command::new(ACPO)
        .arg("repro")
        .current_dir(&proj)
        .env_remove("ACPO_MIRROR")
        .env_remove("ACPO_ASSETS")
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(proj.join("o.txt")).unwrap(), "x\n");
}

/// `status` reports a dependency that is missing (before `just setup`, say) as a state of
/// the stage, exit 0; `repro` still refuses to start (exit 2). Before, `status` stopped with
/// exit 2 at the first missing file.
#[test]
fn status_reports_missing_inputs_instead_of_failing() {
    let d = toy(
        "stages:\n  a:\n    cmd: cat in.txt > a.txt\n    deps: [in.txt]\n    outs: [a.txt]\n  b:\n    cmd: echo b > b.txt\n    outs: [b.txt]\n",
        "",
    );
    let o = acpo(d.path(), &["status"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(0), "{s}");
    assert!(
        s.contains("a: changed\n    never run (not in pipeline.lock)\n    dep in.txt: does not exist and no stage produces it"),
        "{s}"
    );
    assert!(s.contains("b: changed"), "{s}");
    let o = acpo(d.path(), &["repro"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `acpo plots` writes the declared plots files to one HTML page: a chart per numeric column
/// of a data file, an image linked relatively. Before, there was no such command.
#[test]
fn plots_writes_the_declared_plots_to_one_page() {
    let d = toy(
        "stages:\n  a:\n    cmd: >-\n      printf 'step,loss,acc\\n0,1,0.5\\n1,0.5,0.75\\n' > curve.csv && cp in.png pic.png\n    deps: [in.png]\n    plots: [curve.csv, pic.png]\n",
        "",
    );
    std::fs::write(d.path().join("in.png"), b"\x89PNG\r\n").unwrap();
    assert!(acpo(d.path(), &["repro"]).status.success());
    let o = acpo(d.path(), &["plots"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 plots file(s) -> "), "{}", text(&o));
    let page = std::fs::read_to_string(d.path().join(".acpo/plots/index.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 2, "{page}");
    assert!(
        page.contains(">loss</text>") && page.contains(">acc</text>"),
        "{page}"
    );
    assert!(page.contains("<img src=\"../../pic.png\""), "{page}");
}

/// A directory remote shared by three clones: `push` copies the runs pipeline.lock records,
/// `status --remote` says which keys the remote has, `pull` then `repro` restores instead of
/// running, `repro --pull` fetches as it goes, and a corrupt remote object is detected and
/// not used (the stage runs). Before, there were no remotes.
#[test]
fn a_directory_remote_shares_runs_between_clones() {
    let parent = tempfile::tempdir().unwrap();
    let remote_dir = parent.path().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();
    let pipeline = "stages:\n  a:\n    cmd: echo ${p.v} > a.txt\n    outs: [a.txt]\n  b:\n    cmd: cat a.txt a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n";
    let clone = |name: &str| {
        let d = parent.path().join(name);
        std::fs::create_dir_all(d.join(".acpo")).unwrap();
        std::fs::write(d.join("pipeline.yaml"), pipeline).unwrap();
        std::fs::write(d.join("params.yaml"), "p:\n  v: 1\n").unwrap();
        std::fs::write(
            d.join(".acpo/config.yaml"),
            format!(
                "remotes:\n  team: {}\ndefault: team\n",
                remote_dir.display()
            ),
        )
        .unwrap();
        d
    };
    let a = clone("a");
    assert!(acpo(&a, &["repro"]).status.success());
    let s = text(&acpo(&a, &["push"]));
    assert!(s.contains("2 run(s) pushed to"), "{s}");

    // b gets a's lock (as `git pull` would bring it), pulls, and repro restores everything.
    let b = clone("b");
    std::fs::copy(a.join("pipeline.lock"), b.join("pipeline.lock")).unwrap();
    let s = text(&acpo(&b, &["status", "--remote"]));
    assert_eq!(s.matches("remote: has this key").count(), 1, "{s}");
    let s = text(&acpo(&b, &["pull"]));
    assert!(s.contains("2 run(s) pulled from"), "{s}");
    let s = text(&acpo(&b, &["repro"]));
    assert!(s.contains("0 ran, 2 restored"), "{s}");
    assert_eq!(std::fs::read_to_string(b.join("b.txt")).unwrap(), "1\n1\n");

    // c has no lock: repro --pull fetches each stage once its key is known.
    let c = clone("c");
    let s = text(&acpo(&c, &["repro", "--pull"]));
    assert!(
        s.contains("a: pulled from") && s.contains("b: pulled from"),
        "{s}"
    );
    assert!(s.contains("0 ran, 2 restored"), "{s}");

    // A corrupt object on the remote is detected and not used: the stage runs instead.
    let objects = remote_dir.join("objects");
    for sub in std::fs::read_dir(&objects).unwrap().flatten() {
        for o in std::fs::read_dir(sub.path()).unwrap().flatten() {
            std::fs::write(o.path(), "tampered\n").unwrap();
        }
    }
    let d = clone("d");
    let s = text(&acpo(&d, &["repro", "--pull"]));
    assert!(
        s.contains("a: remote run not used:") && s.contains("hash to"),
        "{s}"
    );
    assert!(s.contains("2 ran, 0 restored"), "{s}");
    assert_eq!(std::fs::read_to_string(d.join("b.txt")).unwrap(), "1\n1\n");
    let e = clone("e");
    std::fs::copy(a.join("pipeline.lock"), e.join("pipeline.lock")).unwrap();
    let o = acpo(&e, &["pull"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("corrupt run(s) on the remote"),
        "{}",
        text(&o)
    );

    // Two clients pushing the same runs at once: both succeed, and what lands is whole.
    std::fs::remove_dir_all(&remote_dir).unwrap();
    std::fs::create_dir_all(&remote_dir).unwrap();
    let push = |d: &Path| {
        Command::new(ACPO)
            .arg("push")
            .current_dir(d)
            .env_remove("ACPO_PROFILE")
            .spawn()
            .unwrap()
    };
    let (mut p1, mut p2) = (push(&a), push(&b));
    assert!(p1.wait().unwrap().success() && p2.wait().unwrap().success());
    let f = clone("f");
    std::fs::copy(a.join("pipeline.lock"), f.join("pipeline.lock")).unwrap();
    let s = text(&acpo(&f, &["pull"]));
    assert!(s.contains("2 run(s) pulled from"), "{s}");
    let s = text(&acpo(&f, &["repro"]));
    assert!(s.contains("0 ran, 2 restored"), "{s}");

    let o = acpo(&a, &["push", "-r", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unknown remote `nope` (remotes in .acpo/config.yaml: team)"),
        "{}",
        text(&o)
    );
}

/// A stage that declares `gpus: N` gets N whole devices in `CUDA_VISIBLE_DEVICES`, one stage
/// per device under `-j`: with one GPU two GPU stages run one after the other, with two they
/// get different devices. Before, `gpus` only limited how many ran at once and no device
/// was assigned, so parallel stages shared device 0.
#[test]
fn gpu_stages_get_their_own_devices() {
    let stage = |n: &str| {
        format!(
            "  {n}:\n    cmd: >-\n      echo \"$CUDA_VISIBLE_DEVICES $(date +%s%N)\" > {n}.txt && sleep 0.4 && date +%s%N >> {n}.txt\n    outs: [{n}.txt]\n    resources: {{gpus: 1}}\n"
        )
    };
    let pipeline = format!("stages:\n{}{}{}", stage("g1"), stage("g2"), stage("g3"));
    let run = |gpus: &str| {
        let d = toy(&pipeline, "");
        let o = Command::new(ACPO)
            .args(["repro", "-j", "3"])
            .current_dir(d.path())
            .env("ACPO_GPUS", gpus)
            .env_remove("ACPO_PROFILE")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        ["g1", "g2", "g3"].map(|n| {
            let t = std::fs::read_to_string(d.path().join(format!("{n}.txt"))).unwrap();
            let f: Vec<&str> = t.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].parse::<u128>().unwrap(),
                f[2].parse::<u128>().unwrap(),
            )
        })
    };
    let one = run("1");
    assert!(one.iter().all(|(dev, _, _)| dev == "0"), "{one:?}");
    for (i, a) in one.iter().enumerate() {
        for b in &one[i + 1..] {
            assert!(
                a.2 <= b.1 || b.2 <= a.1,
                "two stages shared the one GPU: {one:?}"
            );
        }
    }
    let two = run("2");
    for (i, a) in two.iter().enumerate() {
        assert!(a.0 == "0" || a.0 == "1", "{two:?}");
        for b in &two[i + 1..] {
            let overlap = !(a.2 <= b.1 || b.2 <= a.1);
            assert!(
                !overlap || a.0 != b.0,
                "overlapping stages on one device: {two:?}"
            );
        }
    }
}

/// A dependency written `${env.ACPO_MIRROR}/...` enters the key by that name and by its bytes,
/// not by where the variable points: moving the mirror changes no key, changing a byte does.
/// Before, a location entered keys as a path (`../shared/data/...`), so the override could not
/// work without that folder.
#[test]
fn env_paths_enter_the_key_by_name_and_content() {
    let parent = tempfile::tempdir().unwrap();
    let (m1, m2) = (parent.path().join("m1"), parent.path().join("m2"));
    for m in [&m1, &m2] {
        std::fs::create_dir_all(m).unwrap();
        std::fs::write(m.join("x.txt"), "x\n").unwrap();
    }
    let d = toy(
        "stages:\n  a:\n    cmd: cat ${env.ACPO_MIRROR}/x.txt > a.txt\n    deps: [\"${env.ACPO_MIRROR}/x.txt\"]\n    outs: [a.txt]\n",
        "",
    );
    let run = |mirror: &Path, args: &[&str]| {
        Command::new(ACPO)
            .args(args)
            .current_dir(d.path())
            .env("ACPO_MIRROR", mirror)
            .env_remove("ACPO_PROFILE")
            .output()
            .unwrap()
    };
    assert!(run(&m1, &["repro"]).status.success());
    let s = text(&run(&m2, &["status"]));
    assert!(s.contains("1 stage(s): 1 up to date"), "moved mirror: {s}");
    std::fs::write(m2.join("x.txt"), "y\n").unwrap();
    let s = text(&run(&m2, &["status"]));
    assert!(s.contains("dep ${env.ACPO_MIRROR}/x.txt: file "), "{s}");
    let lock = std::fs::read_to_string(d.path().join("pipeline.lock")).unwrap();
    assert!(
        lock.contains("${env.ACPO_MIRROR}/x.txt") && !lock.contains("m1"),
        "{lock}"
    );
    let o = Command::new(ACPO)
        .arg("status")
        .current_dir(d.path())
        .env_remove("ACPO_MIRROR")
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    // acpo's own default (<dir>/../shared/data) applies; here it does not exist: a state.
    assert!(o.status.success(), "{}", text(&o));
}

/// A stage's `crate:` dependency covers the part of `Cargo.lock` its code reaches: a lock
/// change elsewhere (a dev-dependency, another crate's dependency) reruns nothing, a change of
/// a crate the code runs reruns the stage. Before, the whole lock was a dependency of every
/// stage, so adding a test-only crate made every result of a multi-hour run stale.
#[test]
fn a_lock_change_outside_a_stages_code_reruns_nothing() {
    let d = toy(
        "stages:\n  a:\n    cmd: echo a > a.txt\n    deps: [crate:app]\n    outs: [a.txt]\n",
        "",
    );
    let w = |rel: &str, s: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("Cargo.toml", "[workspace]\nmembers = [\"app\", \"tool\"]\n");
    w(
        "app/Cargo.toml",
        "[package]\nname = \"app\"\n[dependencies]\nfast = \"1\"\n[dev-dependencies]\ncheck = \"1\"\n",
    );
    w("app/src/lib.rs", "");
    w(
        "tool/Cargo.toml",
        "[package]\nname = \"tool\"\n[dependencies]\nnet = \"1\"\n",
    );
    w("tool/src/lib.rs", "");
    let lock = |fast: &str, check: &str, net: &str| {
        let reg = "source = \"registry+https://github.com/rust-lang/crates.io-index\"";
        format!(
            "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"check\", \"fast\"]\n\n\
             [[package]]\nname = \"tool\"\nversion = \"0.1.0\"\ndependencies = [\"net\"]\n\n\
             [[package]]\nname = \"fast\"\nversion = \"{fast}\"\n{reg}\n\n\
             [[package]]\nname = \"check\"\nversion = \"{check}\"\n{reg}\n\n\
             [[package]]\nname = \"net\"\nversion = \"{net}\"\n{reg}\n"
        )
    };
    w("Cargo.lock", &lock("1.0.0", "1.0.0", "1.0.0"));
    let o = acpo(d.path(), &["repro"]);
    assert!(o.status.success(), "{}", text(&o));
    // The test-only crate and the other crate's dependency move: `a` stays up to date.
    w("Cargo.lock", &lock("1.0.0", "1.2.0", "2.0.0"));
    let s = text(&acpo(d.path(), &["status"]));
    assert!(s.contains("1 stage(s): 1 up to date"), "{s}");
    // The crate its code runs moves: `a` is stale, and says why.
    w("Cargo.lock", &lock("1.1.0", "1.2.0", "2.0.0"));
    let s = text(&acpo(d.path(), &["status"]));
    assert!(
        s.contains("a: changed") && s.contains("dep Cargo.lock#app: lock-part"),
        "{s}"
    );
}

/// `acpo times`: recorded wall time per stage group and phase, parts read from a stage's own
/// metrics file; `repro` prints it at its end; `--into` rewrites only the marked block.
#[test]
fn times_reports_recorded_time_per_group_and_phase() {
    let pipeline = r#"
stages:
  train:
    foreach: [x, y]
    do:
      cmd: sleep 0.2 && echo ${item} > t-${item}.txt
      outs: [t-${item}.txt]
      timing: {phase: training}
  eval:
    cmd: >-
      sleep 0.1 && mkdir -p e && cat t-x.txt t-y.txt > e/out.txt && echo '{"seconds": {"fid": 0.05}}' > e/m.json
    deps: [t-x.txt, t-y.txt]
    outs: [e]
    timing: {phase: other, from: e/m.json, phases: {seconds.fid: fid, seconds.gone: judging}}
"#;
    let d = toy(pipeline, "{}\n");
    let o = acpo(d.path(), &["repro"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = text(&o);
    assert!(
        s.contains("stage group  stages  minutes  share  longest (min)") && s.contains("fid "),
        "repro ends with the tables: {s}"
    );

    let o = acpo(d.path(), &["times", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(
        (groups[0]["group"].as_str(), groups[0]["stages"].as_u64()),
        (Some("train"), Some(2))
    );
    let train = groups[0]["wall_s"].as_f64().unwrap();
    assert!(train >= 0.4, "two stages of at least 0.2 s: {train}");
    let phases: std::collections::BTreeMap<String, f64> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(phases["training"], train);
    assert_eq!(phases["fid"], 0.05);
    let total = v["total_s"].as_f64().unwrap();
    assert!((phases.values().sum::<f64>() - total).abs() < 1e-9, "{v}");
    assert_eq!(
        v["notes"][0].as_str(),
        Some("eval: e/m.json has no number of seconds at seconds.gone")
    );

    // Named stages only.
    let o = acpo(d.path(), &["times", "train@x"]);
    let s = text(&o);
    assert!(s.contains("over 1 stage(s)") && !s.contains("eval"), "{s}");

    // Into a document: only between the markers, the rest kept byte for byte.
    let doc = d.path().join("doc.md");
    std::fs::write(
        &doc,
        "# Run\nintro\n<!-- begin: acpo times -->\nold\n<!-- end: acpo times -->\nend\n",
    )
    .unwrap();
    let o = acpo(d.path(), &["times", "--into", "doc.md"]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(
        md.starts_with("# Run\nintro\n<!-- begin: acpo times -->\n"),
        "{md}"
    );
    assert!(
        md.ends_with("<!-- end: acpo times -->\nend\n") && !md.contains("old"),
        "{md}"
    );
    assert!(
        md.contains("| stage group | stages | minutes | share | longest (min) |"),
        "{md}"
    );

    // A document without the markers: exit 2 naming the file and the expected lines, unchanged.
    std::fs::write(&doc, "no markers\n").unwrap();
    let o = acpo(d.path(), &["times", "--into", "doc.md"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("doc.md: expected a line `<!-- begin: acpo times -->`"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&doc).unwrap(), "no markers\n");
}
