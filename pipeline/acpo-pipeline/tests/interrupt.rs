//! SIGINT while a stage runs: the stage is stopped, earlier outputs and the lock stay, and
//! the error says interrupted. Its own test binary, since the signal goes to the process.

mod common;

use common::Toy;

#[test]
fn sigint_stops_the_stage_and_keeps_outputs_and_lock() {
    let pipeline = r#"
stages:
  slow:
    cmd: >-
      echo "${p.v}" > out.txt &&
      if [ "${p.v}" = 2 ] && [ ! -f allow ]; then echo $$ > pid.txt; sleep 30; fi
    outs: [out.txt]
"#;
    let t = Toy::new(pipeline, "p:\n  v: 1\n");
    t.repro().unwrap();
    let lock = t.read("pipeline.lock");
    let root = t.root().to_path_buf();
    let h = std::thread::spawn(move || {
        let mut s = acpo_pipeline::ReproSettings::new(root);
        s.overrides = vec!["p.v=2".into()];
        acpo_pipeline::repro(&s)
    });
    let mut pid = None;
    for _ in 0..1500 {
        if let Ok(s) = std::fs::read_to_string(t.path("pid.txt")) {
            if let Ok(p) = s.trim().parse::<i32>() {
                pid = Some(p);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = pid.expect("stage started");
    let started = std::time::Instant::now();
    // SAFETY: plain kill(2) of our own process (the engine's handler catches it).
    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
    let e = h.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), acpo_pipeline::ErrorKind::Interrupted, "{e}");
    assert!(
        started.elapsed().as_secs() < 10,
        "the stage must be stopped, not waited for"
    );
    // The stage's process group is gone (zombies awaiting their reaper do not count).
    assert_eq!(
        live_members_of_group(pid),
        Vec::<i32>::new(),
        "stage processes still alive"
    );
    assert_eq!(t.read("out.txt"), "1\n");
    assert_eq!(t.read("pipeline.lock"), lock);
    t.write("allow", "");
    let mut s = t.settings();
    s.overrides = vec!["p.v=2".into()];
    let s = acpo_pipeline::repro(&s).unwrap();
    assert_eq!(s.ran, ["slow"]);
}

/// Processes of process group `pgid` that are not zombies (from /proc).
fn live_members_of_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2].parse::<i32>() == Ok(pgid) && f[0] != "Z" && f[0] != "X" {
            out.push(pid);
        }
    }
    out
}
