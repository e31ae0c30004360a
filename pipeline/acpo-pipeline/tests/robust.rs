//! The engine never loses or corrupts data (issue 14): names and outputs stay inside the
//! pipeline directory, the run cache verifies what it restores, special files are refused
//! instead of hashed, one lock covers `repro` and `gc`, and expansion is bounded.

mod common;

use acpo_pipeline::{commands, ErrorKind, Workspace};
use common::Toy;
use std::path::Path;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

/// Names of the entries of a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn foreach_key_with_dotdot_cannot_escape_the_state_directory() {
    // `.acpo/backup/s@../../../../../victim` would resolve to `<parent>/victim` once
    // `s@..` exists; the same for `.acpo/params/...json` and `.acpo/logs/...log`.
    let parent = tempfile::tempdir().unwrap();
    let pipeline = r#"
stages:
  s:
    foreach:
      "../../../../../victim": v
    do:
      cmd: echo ${item} > out.txt && echo "$ACPO_STAGE" > name.txt
      outs: [out.txt, name.txt]
"#;
    let t = Toy::new_in(parent.path(), pipeline, "");
    let victim = parent.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), "keep").unwrap();
    std::fs::write(parent.path().join("victim.json"), "{\"keep\": 1}").unwrap();
    std::fs::write(parent.path().join("victim.log"), "keep").unwrap();
    let before = listing(parent.path());
    let s = t.repro().unwrap();
    assert_eq!(s.ran, ["s@../../../../../victim"]);
    // Again, forced: now the earlier outputs go through `.acpo/backup/<name>`.
    let s = t.repro_with(|s| s.force = true).unwrap();
    assert_eq!(s.ran.len(), 1);
    assert_eq!(t.read("name.txt"), "s@../../../../../victim\n");
    assert_eq!(
        listing(parent.path()),
        before,
        "nothing appeared or vanished"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.txt")).unwrap(),
        "keep"
    );
    assert_eq!(listing(&victim), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(parent.path().join("victim.json")).unwrap(),
        "{\"keep\": 1}"
    );
    assert_eq!(
        std::fs::read_to_string(parent.path().join("victim.log")).unwrap(),
        "keep"
    );
    // The state files exist, each one entry named by the encoded stage name.
    for (dir, ext) in [(".acpo/logs", ".log"), (".acpo/params", ".json")] {
        let names = listing(&t.path(dir));
        assert_eq!(names.len(), 1, "{dir}: {names:?}");
        assert!(
            names[0].ends_with(ext) && !names[0].contains('/'),
            "{dir}: {names:?}"
        );
    }
}

#[test]
fn an_out_reached_through_a_symlink_to_the_root_is_refused() {
    let pipeline = r#"
stages:
  evil:
    cmd: echo overwritten > self/params.yaml
    outs: [self/params.yaml]
"#;
    let t = Toy::new(pipeline, "x: 1\n");
    std::os::unix::fs::symlink(".", t.path("self")).unwrap();
    let e = t.repro().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("self/params.yaml"), "{msg}");
    assert_eq!(t.read("params.yaml"), "x: 1\n");
    assert!(!t.path(".acpo/backup").exists() || listing(&t.path(".acpo/backup")).is_empty());
}

#[test]
fn an_out_made_a_symlink_by_an_upstream_stage_is_refused_before_it_runs() {
    // `link` makes `self -> .` while the pipeline runs; `evil` must not write through it.
    let pipeline = r#"
stages:
  link:
    cmd: ln -s . self && echo > made.txt
    outs: [made.txt]
  evil:
    cmd: echo overwritten > self/pipeline.lock
    deps: [made.txt]
    outs: [self/pipeline.lock]
"#;
    let t = Toy::new(pipeline, "");
    let e = t.repro().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains("self/pipeline.lock"), "{e}");
    let lock = t.read("pipeline.lock");
    assert!(lock.contains("\"link\""), "{lock}");
    assert!(!lock.contains("overwritten"));
}

#[test]
fn an_out_its_own_command_reaches_through_a_link_is_not_recorded_nor_removed() {
    // The command replaces the directory `d` by a link to the parent of the pipeline
    // directory, so its out `d/escaped.txt` lies outside: the stage fails, nothing is
    // recorded, and the engine removes nothing through the link.
    let parent = tempfile::tempdir().unwrap();
    let pipeline = r#"
stages:
  s:
    cmd: rmdir d && ln -s .. d && echo x > d/escaped.txt
    outs: [d/escaped.txt]
"#;
    let t = Toy::new_in(parent.path(), pipeline, "");
    let e = t.repro().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StageFailed, "{e}");
    assert!(e.to_string().contains("d/escaped.txt"), "{e}");
    assert!(!t.path("pipeline.lock").exists());
    assert_eq!(
        std::fs::read_to_string(parent.path().join("escaped.txt")).unwrap(),
        "x\n",
        "what the command wrote outside is not removed by the engine"
    );
}

#[test]
fn git_and_the_engine_files_are_never_outputs() {
    for out in [
        ".git",
        ".git/config",
        "pipeline.lock",
        ".acpo/x",
        "params.yaml",
    ] {
        let pipeline =
            format!("stages:\n  s:\n    cmd: echo > o.txt\n    outs: [\"{out}\", o.txt]\n");
        let t = Toy::new(&pipeline, "");
        let e = t.repro().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadInput, "{out}: {e}");
        assert!(e.to_string().contains(out), "{out}: {e}");
    }
}

/// The run-cache object holding the bytes of `rel` (by its SHA-256).
fn object_of(t: &Toy, rel: &str) -> std::path::PathBuf {
    let h = acpo_pipeline::hash::sha256_file(&t.path(rel)).unwrap();
    t.path(&format!(
        "results/.runcache-v1/objects/{}/{}",
        &h[..2],
        &h[2..]
    ))
}

/// Replaces the first byte of a file (same length).
fn flip_first_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    b[0] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

const CACHED: &str = r#"
stages:
  a:
    cmd: echo a >> runs.log && mkdir -p d && echo "value ${p.v}" > d/v.txt && echo x > d/x.txt
    outs: [d]
"#;

#[test]
fn a_corrupt_cached_object_is_detected_removed_and_recomputed() {
    let t = Toy::new(CACHED, "p:\n  v: 1\n");
    t.repro().unwrap();
    let obj = object_of(&t, "d/v.txt");
    t.repro_with(|s| s.overrides = vec!["p.v=2".into()])
        .unwrap();
    assert_eq!(t.runs_of("a"), 2);
    flip_first_byte(&obj);
    // Back to v=1: the run cache has that key, but one of its objects is corrupt.
    let s = t.repro().unwrap();
    assert_eq!(s.ran, ["a"], "a corrupt object is not restored: {s:?}");
    assert!(s.restored.is_empty(), "{s:?}");
    assert_eq!(t.read("d/v.txt"), "value 1\n");
    assert_eq!(t.runs_of("a"), 3);
    let report = s.corrupt_objects.join("\n");
    assert!(
        report.contains(&obj.file_name().unwrap().to_string_lossy().to_string())
            && report.contains("`a`"),
        "the report names the object and the stage: {report}"
    );
    // The recomputed run stored the object again, intact.
    assert_eq!(
        acpo_pipeline::hash::sha256_file(&obj).unwrap(),
        obj.parent().unwrap().file_name().unwrap().to_string_lossy()
            + &*obj.file_name().unwrap().to_string_lossy()
    );
}

#[test]
fn put_replaces_a_corrupt_object_and_verify_finds_it() {
    let t = Toy::new(CACHED, "p:\n  v: 1\n");
    t.repro().unwrap();
    let obj = object_of(&t, "d/v.txt");
    flip_first_byte(&obj);
    let report = commands::cache_verify(t.root()).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert_eq!(report.corrupt[0].path, obj);
    assert_eq!(report.corrupt[0].used_by, ["a"]);
    assert!(commands::format_cache_verify(&report).contains(&obj.display().to_string()));
    // A forced run stores its outputs again: the corrupt object is replaced.
    t.repro_with(|s| s.force = true).unwrap();
    assert!(commands::cache_verify(t.root()).unwrap().corrupt.is_empty());
    // And a restore gives the right bytes.
    std::fs::remove_dir_all(t.path("d")).unwrap();
    let s = t.repro().unwrap();
    assert_eq!(s.restored, ["a"]);
    assert_eq!(t.read("d/v.txt"), "value 1\n");
}

#[test]
fn a_tampered_run_cache_entry_cannot_write_outside() {
    let parent = tempfile::tempdir().unwrap();
    let t = Toy::new_in(parent.path(), CACHED, "p:\n  v: 1\n");
    t.repro().unwrap();
    let runs = t.path("results/.runcache-v1/runs");
    let run = runs.join(&listing(&runs)[0]);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    for e in v["outs"]["d"]["entries"].as_array_mut().unwrap() {
        if e["path"] == "x.txt" {
            e["path"] = "../../escape.txt".into();
        }
    }
    std::fs::write(&run, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::remove_dir_all(t.path("d")).unwrap();
    let s = t.repro().unwrap();
    assert_eq!(s.ran, ["a"], "a malformed entry is not used: {s:?}");
    assert!(!parent.path().join("escape.txt").exists());
    assert_eq!(listing(&t.path("d")), ["v.txt", "x.txt"]);
}

#[test]
fn a_tampered_backup_manifest_cannot_write_outside() {
    let parent = tempfile::tempdir().unwrap();
    let pipeline = "stages:\n  s:\n    cmd: echo 1 > out.txt\n    outs: [out.txt]\n";
    let t = Toy::new_in(parent.path(), pipeline, "");
    t.repro().unwrap();
    t.write(".acpo/backup/s/0", "from the backup\n");
    t.write(
        ".acpo/backup/s/manifest.json",
        r#"[["../outside.txt","0"]]"#,
    );
    let e = t.repro().unwrap_err();
    assert!(e.to_string().contains("../outside.txt"), "{e}");
    assert!(!parent.path().join("outside.txt").exists());
    assert_eq!(t.read(".acpo/backup/s/0"), "from the backup\n", "kept");
}

/// Runs `f` on another thread; fails the test if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("still blocked after {secs} s"))
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn a_fifo_inside_a_dep_is_an_error_naming_it() {
    let pipeline =
        "stages:\n  s:\n    cmd: cat data/a.txt > o.txt\n    deps: [data]\n    outs: [o.txt]\n";
    let t = Toy::new(pipeline, "");
    t.write("data/a.txt", "a\n");
    mkfifo(&t.path("data/pipe"));
    let root = t.root().to_path_buf();
    let r = within(30, move || {
        let mut ws = Workspace::open(&root, "cpu", &[]).unwrap();
        commands::status(&mut ws, &[], None).map(|_| ())
    });
    let e = r.unwrap_err();
    assert!(e.to_string().contains("data/pipe"), "{e}");
    assert!(e.to_string().contains("FIFO"), "{e}");
    let root = t.root().to_path_buf();
    let e = within(30, move || {
        acpo_pipeline::repro(&acpo_pipeline::ReproSettings::new(root))
    })
    .unwrap_err();
    assert!(e.to_string().contains("data/pipe"), "{e}");
}

#[test]
fn a_fifo_inside_an_out_fails_the_stage_naming_it() {
    let pipeline =
        "stages:\n  s:\n    cmd: mkdir -p d && echo > d/a && mkfifo d/pipe\n    outs: [d]\n";
    let t = Toy::new(pipeline, "");
    let root = t.root().to_path_buf();
    let e = within(30, move || {
        acpo_pipeline::repro(&acpo_pipeline::ReproSettings::new(root))
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StageFailed, "{e}");
    assert!(e.to_string().contains("d/pipe"), "{e}");
    assert!(!t.path("pipeline.lock").exists());
}

/// Takes `.acpo/repro.lock` the way the engine does (flock); released on drop.
fn hold_engine_lock(t: &Toy) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(t.path(".acpo")).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(t.path(".acpo/repro.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

const TWO: &str = r#"
stages:
  a:
    cmd: echo ${p.a} > a.txt
    outs: [a.txt]
  b:
    cmd: echo ${p.b} > b.txt
    outs: [b.txt]
"#;

#[test]
fn gc_takes_the_same_lock_as_repro() {
    let t = Toy::new(TWO, "p:\n  a: 1\n  b: 1\n");
    t.repro().unwrap();
    t.repro_with(|s| s.overrides = vec!["p.a=2".into()])
        .unwrap();
    let held = hold_engine_lock(&t);
    let mut ws = Workspace::open(t.root(), "cpu", &[]).unwrap();
    let e = commands::gc(&mut ws, false).unwrap_err();
    assert!(e.to_string().contains("repro.lock"), "{e}");
    drop(held);
    let mut ws = Workspace::open(t.root(), "cpu", &[]).unwrap();
    let out = commands::gc(&mut ws, false).unwrap();
    assert!(out.contains("1 cached run(s)"), "{out}");
}

#[test]
fn a_repro_that_waited_for_the_lock_keeps_the_other_runs_update() {
    let t = Toy::new(TWO, "p:\n  a: 1\n  b: 1\n");
    // What another repro of `a` records while the second one waits.
    t.repro_with(|s| s.targets = vec!["a".into()]).unwrap();
    let lock_with_a = t.read("pipeline.lock");
    std::fs::remove_file(t.path("pipeline.lock")).unwrap();
    let held = hold_engine_lock(&t);
    let root = t.root().to_path_buf();
    let second = std::thread::spawn(move || {
        let mut s = acpo_pipeline::ReproSettings::new(root);
        s.targets = vec!["b".into()];
        acpo_pipeline::repro(&s)
    });
    // Let the second repro load the workspace and start waiting, then "finish" the first.
    std::thread::sleep(Duration::from_millis(300));
    t.write("pipeline.lock", &lock_with_a);
    drop(held);
    let s = second.join().unwrap().unwrap();
    assert_eq!(s.ran, ["b"]);
    let lock: serde_json::Value = serde_json::from_str(&t.read("pipeline.lock")).unwrap();
    let stages: Vec<&String> = lock["stages"].as_object().unwrap().keys().collect();
    assert_eq!(stages, ["a", "b"], "the first run's update is kept");
}

#[test]
fn a_matrix_over_the_stage_limit_fails_fast_naming_the_stage() {
    let axis = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
    let pipeline = format!(
        "stages:\n  big:\n    matrix:\n      a: {axis}\n      b: {axis}\n      c: {axis}\n      d: {axis}\n      e: {axis}\n    cmd: echo ${{item.a}}\n"
    );
    let t = Toy::new(&pipeline, "");
    // Loading alone must fail (a regression would otherwise run 100 000 stages).
    let started = Instant::now();
    let e = Workspace::open(t.root(), "cpu", &[])
        .err()
        .expect("over the limit");
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`big`") && msg.contains("100000") && msg.contains("10000"),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Two files whose names differ only in bytes that are not UTF-8 were hashed (and cached)
/// under the same lossy name, so the run cache could restore one as the other. Such a name is
/// now bad input naming the file; the stage's output is not recorded.
#[test]
fn a_non_utf8_file_name_inside_an_out_is_refused() {
    let pipeline = "stages:\n  s:\n    cmd: mkdir -p d && printf a > \"d/$(printf 'x\\377')\" && printf b > \"d/$(printf 'x\\376')\"\n    outs: [d]\n";
    let t = Toy::new(pipeline, "");
    let root = t.root().to_path_buf();
    let e = within(30, move || {
        acpo_pipeline::repro(&acpo_pipeline::ReproSettings::new(root))
    })
    .unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    assert!(!t.path("pipeline.lock").exists());
}
