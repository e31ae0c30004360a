//! Kill soak of the engine: a small pipeline whose stages checkpoint and write slowly is
//! interrupted at seeded random moments with SIGINT, SIGTERM, SIGHUP and SIGKILL, resumed,
//! and after every resume checked against an uninterrupted run of the same pipeline: every
//! output byte-equal, the lock valid (`status`: up to date), nothing outside the pipeline
//! directory changed and no stage process left alive.
//!
//! `just test` runs a few trials (seconds); `just soak` runs many (minutes) and prints the count.
//! `ACPO_SOAK_TRIALS` and `ACPO_SOAK_SEED` set the number of trials and the seed; a failure
//! names the seed, trial and signal sequence, so it can be replayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::Rng;

const ACPO: &str = env!("CARGO_BIN_EXE_acpo");

/// A persist stage that checkpoints step by step (resuming from its checkpoints), two slow
/// stages in parallel (`-j 2`) that write their output in three pieces, and a join.
const PIPELINE: &str = r#"
stages:
  train:
    cmd: >-
      mkdir -p ck && i=$(ls ck | wc -l) &&
      while [ "$i" -lt 6 ]; do i=$((i+1)); sleep 0.04; printf 'step%s\n' "$i" > ck/.partial && mv ck/.partial "ck/$i"; done &&
      cat ck/1 ck/2 ck/3 ck/4 ck/5 ck/6 > model.txt
    outs: [ck, model.txt]
    persist: true
  judge:
    foreach: [x, y]
    do:
      cmd: printf 'start|' > ${item}.txt && sleep 0.15 && cat model.txt >> ${item}.txt && sleep 0.1 && printf '|end\n' >> ${item}.txt
      deps: [model.txt]
      outs: [${item}.txt]
  join:
    cmd: cat x.txt y.txt > all.txt && printf '%s\n' "${p.tag}" >> all.txt
    deps: [x.txt, y.txt]
    outs: [all.txt]
"#;

const PARAMS: &str = "p:\n  tag: soak\n";

/// Files checked against the uninterrupted run.
const OUTPUTS: [&str; 10] = [
    "ck/1",
    "ck/2",
    "ck/3",
    "ck/4",
    "ck/5",
    "ck/6",
    "model.txt",
    "x.txt",
    "y.txt",
    "all.txt",
];

/// Signal numbers (Linux) and names, as `kill -s` takes them.
const SIGNALS: [(i32, &str); 4] = [(2, "INT"), (15, "TERM"), (1, "HUP"), (9, "KILL")];
const SIGKILL: i32 = 9;

/// A new pipeline directory inside `parent`, beside a sentinel that must never change.
fn toy_in(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::write(d.join("params.yaml"), PARAMS).unwrap();
    d
}

fn repro(dir: &Path) -> Command {
    let mut c = Command::new(ACPO);
    c.args(["repro", "-j", "2"])
        .current_dir(dir)
        .env_remove("ACPO_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// The checked outputs' bytes, and (key `ck/`) the names in the checkpoint directory, so a
/// stray partial checkpoint counts as a difference.
/// (The toy's outputs are ASCII, so text shows a difference readably and loses nothing.)
fn outputs(dir: &Path) -> BTreeMap<&'static str, Option<String>> {
    let mut out: BTreeMap<_, _> = OUTPUTS
        .iter()
        .map(|&f| {
            let bytes = std::fs::read(dir.join(f)).ok();
            (f, bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
        })
        .collect();
    let listing = std::fs::read_dir(dir.join("ck")).ok().map(|rd| {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.join(" ")
    });
    out.insert("ck/", listing);
    out
}

/// Every entry under `dir` (path, bytes; `None` for a directory), for the "nothing outside
/// changed" check.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.insert(p.clone(), None);
                todo.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

/// Live processes whose working directory is `dir` (every stage command runs there).
fn processes_in(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.canonicalize().unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|r| r.1.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        if cwd == dir && state != "Z" && state != "X" {
            out.push((pid, stat));
        }
    }
    out
}

/// Waits for `child` at most `limit`; kills it and fails the trial if it takes longer.
fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: acpo did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[derive(Default)]
struct Tally {
    trials: u64,
    sent: BTreeMap<&'static str, u64>,
    finished_first: u64,
}

/// One trial: up to three interruptions at random moments, then a run to the end, checked
/// after every step.
fn trial(
    parent: &Path,
    n: u64,
    rng: &mut Rng,
    reference: &BTreeMap<&'static str, Option<String>>,
    tally: &mut Tally,
    seed: u64,
) {
    let dir = toy_in(parent, &format!("trial-{n}"));
    let sentinel = parent.join("sentinel");
    let before = snapshot(&sentinel);
    let mut history = Vec::new();
    let kills = 1 + rng.below(3);
    // After a SIGKILL the workspace holds what the dead engine left until the next run
    // starts and recovers (stops the orphans, puts back the outputs moved aside); a run
    // interrupted before it gets that far leaves it so. The state after an interruption is
    // checked only while no SIGKILL came before it in the trial.
    let mut killed = false;
    for _ in 0..kills {
        let (sig, name) = SIGNALS[rng.below(SIGNALS.len() as u64) as usize];
        let delay = Duration::from_millis(rng.below(600));
        history.push(format!("{name}@{}ms", delay.as_millis()));
        let ctx = format!("seed {seed}, trial {n}, signals {}", history.join(" "));
        let mut child = repro(&dir).spawn().unwrap();
        std::thread::sleep(delay);
        // Our own child, not yet waited for, so its pid is not reused.
        Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .status()
            .unwrap();
        let st = wait_bounded(&mut child, Duration::from_secs(30), &ctx);
        let err = stderr_of(&mut child);
        use std::os::unix::process::ExitStatusExt;
        match (st.code(), st.signal()) {
            (Some(0), _) => tally.finished_first += 1,
            (Some(130), _) => {}
            // Killed by the signal itself: SIGKILL, or one that arrived before the engine
            // installed its handlers.
            (None, Some(s)) if s == sig => {}
            other => panic!("{ctx}: unexpected exit {other:?}\n{err}"),
        }
        *tally.sent.entry(name).or_default() += 1;
        killed |= sig == SIGKILL;
        if !killed {
            // A stopped run leaves each output as the finished run has it, or absent (never
            // produced, or moved aside): never half-written, since the engine restores the
            // earlier version or nothing, and keeps a persist stage's partial outputs aside.
            for (f, got) in outputs(&dir) {
                let checked = ["x.txt", "y.txt", "all.txt", "model.txt"].contains(&f);
                if let (Some(got), true) = (got, checked) {
                    assert_eq!(
                        Some(&got),
                        reference[f].as_ref(),
                        "{ctx}: {f} after the interruption\n{err}"
                    );
                }
            }
        }
    }
    let ctx = format!(
        "seed {seed}, trial {n}, signals {}, then a full run",
        history.join(" ")
    );
    let mut child = repro(&dir).spawn().unwrap();
    let st = wait_bounded(&mut child, Duration::from_secs(60), &ctx);
    let err = stderr_of(&mut child);
    assert_eq!(st.code(), Some(0), "{ctx}: the resuming run failed\n{err}");
    // Long enough for an orphan's late write to land, had one survived.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        &outputs(&dir),
        reference,
        "{ctx}: outputs differ from the uninterrupted run\n{err}"
    );
    let o = Command::new(ACPO)
        .arg("status")
        .current_dir(&dir)
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && s.contains("4 stage(s): 4 up to date"),
        "{ctx}: status after the resume:\n{s}"
    );
    assert_eq!(
        processes_in(&dir),
        Vec::new(),
        "{ctx}: stage processes left alive"
    );
    assert_eq!(
        snapshot(&sentinel),
        before,
        "{ctx}: a file outside the pipeline changed"
    );
    tally.trials += 1;
}

#[test]
fn interrupted_runs_resume_to_the_uninterrupted_outputs() {
    let trials = Rng::env_u64("ACPO_SOAK_TRIALS", 4);
    let seed = Rng::env_u64("ACPO_SOAK_SEED", 20261201);
    let parent = tempfile::tempdir().unwrap();
    let sentinel = parent.path().join("sentinel");
    std::fs::create_dir_all(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep.json"), "{\"a\": 1}\n").unwrap();
    std::fs::write(sentinel.join("keep.log"), "a line\n").unwrap();

    let clean = toy_in(parent.path(), "clean");
    let o = repro(&clean).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = outputs(&clean);
    assert!(reference.values().all(Option::is_some), "{reference:?}");

    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for n in 0..trials {
        trial(parent.path(), n, &mut rng, &reference, &mut tally, seed);
    }
    let sent: Vec<String> = tally.sent.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "soak: {} trials (seed {seed}), {} interruptions ({}; {} runs finished before their signal), every resume equal to the uninterrupted run",
        tally.trials,
        tally.sent.values().sum::<u64>(),
        sent.join(", "),
        tally.finished_first,
    );
    assert_eq!(tally.trials, trials);
}
