//! Engine semantics on toy pipelines of shell commands.

mod common;

use common::{sorted, Toy};

const CHAIN: &str = r#"
stages:
  a:
    cmd: echo a >> runs.log && echo "${p.a}" > a.txt
    outs: [a.txt]
  b:
    cmd: echo b >> runs.log && echo "${p.b}" > b.txt
    outs: [b.txt]
  c:
    cmd: echo c >> runs.log && cat a.txt input.txt > c.txt
    deps: [a.txt, input.txt]
    outs: [c.txt]
"#;

fn chain() -> Toy {
    let t = Toy::new(CHAIN, "p:\n  a: 1\n  b: 2\n");
    t.write("input.txt", "in\n");
    t
}

#[test]
fn second_repro_runs_nothing() {
    let t = chain();
    let s = t.repro().unwrap();
    assert_eq!(sorted(s.ran), ["a", "b", "c"]);
    assert_eq!(t.read("c.txt"), "1\nin\n");
    let lock = t.read("pipeline.lock");
    let s = t.repro().unwrap();
    assert!(s.ran.is_empty() && s.restored.is_empty(), "{s:?}");
    assert_eq!(sorted(s.up_to_date), ["a", "b", "c"]);
    assert_eq!(t.read("runs.log").lines().count(), 3);
    assert_eq!(
        t.read("pipeline.lock"),
        lock,
        "a no-op repro must not rewrite the lock"
    );
}

#[test]
fn changing_one_param_reruns_only_its_dependents() {
    let t = chain();
    t.repro().unwrap();
    let s = t
        .repro_with(|s| s.overrides = vec!["p.a=5".into()])
        .unwrap();
    assert_eq!(sorted(s.ran), ["a", "c"]);
    assert_eq!(s.up_to_date, ["b"]);
    assert_eq!(t.read("c.txt"), "5\nin\n");
    // Changing p.b touches only b.
    let s = t
        .repro_with(|s| s.overrides = vec!["p.a=5".into(), "p.b=7".into()])
        .unwrap();
    assert_eq!(s.ran, ["b"]);
}

#[test]
fn touching_a_dep_without_changing_it_reruns_nothing() {
    let t = chain();
    t.repro().unwrap();
    // Rewrite with the same content and move the mtime.
    t.write("input.txt", "in\n");
    let f = std::fs::File::options()
        .write(true)
        .open(t.path("input.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    let s = t.repro().unwrap();
    assert!(s.ran.is_empty(), "{s:?}");
}

#[test]
fn changing_dep_content_reruns_dependents() {
    let t = chain();
    t.repro().unwrap();
    t.write("input.txt", "other\n");
    let s = t.repro().unwrap();
    assert_eq!(s.ran, ["c"]);
    assert_eq!(t.read("c.txt"), "1\nother\n");
}

#[test]
fn reverting_a_param_restores_from_the_run_cache() {
    let t = chain();
    t.repro().unwrap();
    t.repro_with(|s| s.overrides = vec!["p.a=9".into()])
        .unwrap();
    assert_eq!(t.read("c.txt"), "9\nin\n");
    assert_eq!((t.runs_of("a"), t.runs_of("c")), (2, 2));
    let s = t.repro().unwrap();
    assert!(s.ran.is_empty(), "{s:?}");
    assert_eq!(sorted(s.restored), ["a", "c"]);
    assert_eq!((t.runs_of("a"), t.runs_of("c")), (2, 2), "nothing may run");
    assert_eq!(t.read("a.txt"), "1\n");
    assert_eq!(t.read("c.txt"), "1\nin\n");
    // And the restored state is up to date.
    let s = t.repro().unwrap();
    assert_eq!(s.up_to_date.len(), 3);
}

#[test]
fn deleted_or_modified_output_is_restored_without_running() {
    let t = chain();
    t.repro().unwrap();
    std::fs::remove_file(t.path("a.txt")).unwrap();
    t.write("c.txt", "tampered\n");
    let s = t.repro().unwrap();
    assert!(s.ran.is_empty(), "{s:?}");
    assert_eq!(sorted(s.restored), ["a", "c"]);
    assert_eq!(t.read("c.txt"), "1\nin\n");
}

#[test]
fn force_single_downstream_and_dry_run() {
    let t = chain();
    t.repro().unwrap();
    let s = t
        .repro_with(|s| {
            s.targets = vec!["c".into()];
            s.force = true;
            s.single = true;
        })
        .unwrap();
    assert_eq!(s.ran, ["c"]);
    let s = t
        .repro_with(|s| {
            s.targets = vec!["a".into()];
            s.force = true;
            s.downstream = true;
        })
        .unwrap();
    assert_eq!(sorted(s.ran), ["a", "c"]);
    t.write("input.txt", "x\n");
    let before = t.read("runs.log");
    let s = t.repro_with(|s| s.dry_run = true).unwrap();
    assert_eq!(s.would_run, ["c"]);
    assert_eq!(t.read("runs.log"), before, "a dry run runs nothing");
}

#[test]
fn failing_stage_keeps_outputs_and_lock_and_keep_going_runs_the_rest() {
    let pipeline = r#"
stages:
  bad:
    cmd: echo partial > bad.txt && test "${p.ok}" = true
    outs: [bad.txt]
  good:
    cmd: echo good > good.txt
    outs: [good.txt]
  after:
    cmd: cat bad.txt > after.txt
    deps: [bad.txt]
    outs: [after.txt]
"#;
    let t = Toy::new(pipeline, "p:\n  ok: true\n");
    t.repro().unwrap();
    let lock = t.read("pipeline.lock");
    let e = t
        .repro_with(|s| {
            s.overrides = vec!["p.ok=false".into()];
            s.keep_going = true;
            s.force = true;
        })
        .unwrap_err();
    assert_eq!(e.kind(), acpo_pipeline::ErrorKind::StageFailed);
    assert!(e.to_string().contains("stage `bad` failed"), "{e}");
    assert_eq!(t.read("bad.txt"), "partial\n", "earlier output restored");
    let now: serde_json::Value = serde_json::from_str(&t.read("pipeline.lock")).unwrap();
    let old: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(
        now["stages"]["bad"], old["stages"]["bad"],
        "failure never recorded"
    );
    assert_eq!(now["stages"]["after"], old["stages"]["after"]);
    assert!(!t.path(".acpo/backup/bad").exists());
}

/// A "training" stage that needs two attempts: each attempt appends to its own checkpoint in
/// `ck/` and fails until the checkpoint holds two lines (like a run stopped half-way).
const RESUMABLE: &str = r#"
stages:
  train:
    cmd: mkdir -p ck && echo "${p.lr}" >> ck/steps && test "$(wc -l < ck/steps)" -ge 2
    params: [p.lr]
    outs: [ck]
    persist: PERSIST
"#;

#[test]
fn persist_stage_resumes_from_its_partial_outputs_with_the_same_key_only() {
    let t = Toy::new(
        &RESUMABLE.replace("PERSIST", "true"),
        "p:
  lr: 1
",
    );
    let e = t.repro().unwrap_err();
    assert_eq!(e.kind(), acpo_pipeline::ErrorKind::StageFailed);
    assert!(e.to_string().contains(".acpo/partial/train"), "{e}");
    assert!(
        !t.path("ck").exists(),
        "partial outputs are not left as if finished"
    );
    assert_eq!(t.read(".acpo/partial/train/0/steps"), "1\n");
    // Same key: the partial checkpoint is put back and the second attempt completes it.
    let s = t.repro().unwrap();
    assert_eq!(s.ran, ["train"]);
    assert_eq!(t.read("ck/steps"), "1\n1\n");
    assert!(!t.path(".acpo/partial/train").exists());

    // A changed param is another key: that run starts from nothing (and fails once again).
    let e = t.repro_with(|s| s.overrides = vec!["p.lr=2".into()]);
    assert!(e.is_err());
    assert_eq!(
        t.read("ck/steps"),
        "1\n1\n",
        "the finished outputs are restored"
    );
    assert_eq!(t.read(".acpo/partial/train/0/steps"), "2\n");
    // ... and its partial outputs are dropped when yet another key runs.
    let e = t.repro_with(|s| s.overrides = vec!["p.lr=3".into()]);
    assert!(e.is_err());
    assert_eq!(t.read(".acpo/partial/train/0/steps"), "3\n");
}

#[test]
fn without_persist_a_failed_run_leaves_nothing_to_resume() {
    let t = Toy::new(
        &RESUMABLE.replace("PERSIST", "false"),
        "p:
  lr: 1
",
    );
    assert!(t.repro().is_err());
    assert!(!t.path(".acpo/partial").exists());
    assert!(t.repro().is_err(), "each attempt starts from nothing");
    assert!(!t.path("ck").exists());
}

#[test]
fn two_independent_stages_overlap_with_j2() {
    let pipeline = r#"
stages:
  x:
    cmd: date +%s%N > x.start && sleep 0.6 && date +%s%N > x.end
    outs: [x.start, x.end]
  y:
    cmd: date +%s%N > y.start && sleep 0.6 && date +%s%N > y.end
    outs: [y.start, y.end]
"#;
    let t = Toy::new(pipeline, "");
    let ns = |f: &str| t.read(f).trim().parse::<u128>().unwrap();
    t.repro_with(|s| s.jobs = 2).unwrap();
    let (xs, xe, ys, ye) = (ns("x.start"), ns("x.end"), ns("y.start"), ns("y.end"));
    assert!(
        xs < ye && ys < xe,
        "with -j 2 the stages must overlap: x {xs}..{xe}, y {ys}..{ye}"
    );
    // Control: -j 1 runs them one after the other.
    t.repro_with(|s| {
        s.jobs = 1;
        s.force = true;
    })
    .unwrap();
    let (xs, xe, ys, ye) = (ns("x.start"), ns("x.end"), ns("y.start"), ns("y.end"));
    assert!(
        xe <= ys || ye <= xs,
        "with -j 1 the stages must not overlap"
    );
}

#[test]
fn declared_resources_limit_parallelism() {
    // Each stage claims every core, so the two may not run together even with -j 2.
    let n = std::thread::available_parallelism().unwrap().get();
    let pipeline = format!(
        r#"
stages:
  x:
    cmd: date +%s%N > x.start && sleep 0.3 && date +%s%N > x.end
    outs: [x.start, x.end]
    resources: {{cpus: {n}}}
  y:
    cmd: date +%s%N > y.start && sleep 0.3 && date +%s%N > y.end
    outs: [y.start, y.end]
    resources: {{cpus: {n}}}
"#
    );
    let t = Toy::new(&pipeline, "");
    t.repro_with(|s| s.jobs = 2).unwrap();
    let ns = |f: &str| t.read(f).trim().parse::<u128>().unwrap();
    let (xs, xe, ys, ye) = (ns("x.start"), ns("x.end"), ns("y.start"), ns("y.end"));
    assert!(
        xe <= ys || ye <= xs,
        "stages claiming all cores must not overlap"
    );
}

#[test]
fn stages_get_exactly_their_declared_params() {
    let pipeline = r#"
stages:
  s:
    cmd: cat "$ACPO_PARAMS" > p.json && echo "$ACPO_STAGE" > name.txt
    params: [train, data.n]
    outs: [p.json, name.txt]
"#;
    let t = Toy::new(
        pipeline,
        "train:\n  lr: 0.1\n  steps: 3\ndata:\n  n: 5\n  other: 1\n",
    );
    t.repro().unwrap();
    let v: serde_json::Value = serde_json::from_str(&t.read("p.json")).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"train": {"lr": 0.1, "steps": 3}, "data.n": 5})
    );
    assert_eq!(t.read("name.txt"), "s\n");
    // A param the stage does not declare does not affect it.
    let s = t
        .repro_with(|s| s.overrides = vec!["data.other=2".into()])
        .unwrap();
    assert!(s.ran.is_empty());
}

#[test]
fn foreach_stages_run_by_base_name_and_profiles_apply() {
    let pipeline = r#"
stages:
  gen:
    foreach: ${sets}
    do:
      cmd: echo ${item} ${scale} > gen-${item}.txt
      outs:
        - gen-${item}.txt
"#;
    let t = Toy::new(pipeline, "sets: [a, b]\nscale: 1\n");
    t.write("profiles/smoke.yaml", "scale: 2\n");
    let s = t.repro_with(|s| s.targets = vec!["gen".into()]).unwrap();
    assert_eq!(sorted(s.ran), ["gen@a", "gen@b"]);
    let s = t.repro_with(|s| s.profile = "smoke".into()).unwrap();
    assert_eq!(sorted(s.ran), ["gen@a", "gen@b"]);
    assert_eq!(t.read("gen-b.txt"), "b 2\n");
}

/// Waits for a file a stage writes, then returns its content.
fn wait_for(t: &Toy, rel: &str) -> String {
    for _ in 0..1500 {
        if let Ok(s) = std::fs::read_to_string(t.path(rel)) {
            if s.ends_with('\n') {
                return s;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{rel} never appeared");
}

const SLOW: &str = r#"
stages:
  slow:
    cmd: >-
      echo "${p.v}" > out.txt &&
      if [ "${p.v}" = 2 ] && [ ! -f allow ]; then echo $$ > pid.txt; sleep 30; fi
    outs: [out.txt]
  next:
    cmd: cat out.txt > next.txt
    deps: [out.txt]
    outs: [next.txt]
"#;

#[test]
fn killing_a_stage_keeps_outputs_and_lock_and_next_repro_finishes() {
    let t = Toy::new(SLOW, "p:\n  v: 1\n");
    t.repro().unwrap();
    assert_eq!(t.read("next.txt"), "1\n");
    let lock = t.read("pipeline.lock");
    let root = t.root().to_path_buf();
    let h = std::thread::spawn(move || {
        let mut s = acpo_pipeline::ReproSettings::new(root);
        s.overrides = vec!["p.v=2".into()];
        acpo_pipeline::repro(&s)
    });
    let pid: i32 = wait_for(&t, "pid.txt").trim().parse().unwrap();
    // Kill the stage's whole process group (sh and its sleep), as `kill -9 -PGID` would.
    // SAFETY: plain kill(2).
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let e = h.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), acpo_pipeline::ErrorKind::StageFailed, "{e}");
    assert!(e.to_string().contains("killed by signal 9"), "{e}");
    assert_eq!(
        t.read("out.txt"),
        "1\n",
        "the earlier output is back in place"
    );
    assert_eq!(t.read("next.txt"), "1\n");
    assert_eq!(t.read("pipeline.lock"), lock, "the lock is untouched");
    // The next repro finishes the work.
    t.write("allow", "");
    let s = t
        .repro_with(|s| s.overrides = vec!["p.v=2".into()])
        .unwrap();
    assert_eq!(sorted(s.ran), ["next", "slow"]);
    assert_eq!(t.read("next.txt"), "2\n");
}

#[test]
fn outputs_left_aside_by_a_killed_engine_are_put_back() {
    // Simulates `kill -9` of acpo itself while a stage ran: a backup with a manifest.
    let t = Toy::new(SLOW, "p:\n  v: 1\n");
    t.repro().unwrap();
    std::fs::create_dir_all(t.path(".acpo/backup/slow")).unwrap();
    std::fs::rename(t.path("out.txt"), t.path(".acpo/backup/slow/0")).unwrap();
    t.write(".acpo/backup/slow/manifest.json", r#"[["out.txt","0"]]"#);
    t.write("out.txt", "partial");
    let s = t.repro().unwrap();
    assert!(s.ran.is_empty(), "{s:?}");
    assert_eq!(t.read("out.txt"), "1\n");
    assert!(!t.path(".acpo/backup/slow").exists());
}
