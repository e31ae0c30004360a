//! The Slurm executor against a real single-node Slurm cluster (slurmctld, slurmd and munge
//! started by scripts/slurm-local.sh on 127.0.0.1, with ports picked free here, stopped at the
//! end): a chain of stages, a failing stage (its log shown, nothing downstream runs), a
//! cancelled one (Ctrl-C cancels its job) that resumes from its checkpoint when submitted
//! again, and resources no node has (bad input, nothing submitted).
//! Needs root and Debian's slurm-wlm and munge, which `just test` installs (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ACPO: &str = env!("CARGO_BIN_EXE_acpo");

/// A running test cluster; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (a, mut b) = (free(), free());
        while b == a {
            b = free();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let o = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .args([a.to_string(), b.to_string()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "could not start the test Slurm cluster: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Cluster { dir }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn squeue(&self) -> String {
        let o = Command::new("squeue")
            .args(["-h", "-o", "%i %T"])
            .env("SLURM_CONF", self.conf())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn toy(pipeline: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pipeline.yaml"), pipeline).unwrap();
    std::fs::write(d.path().join("params.yaml"), "").unwrap();
    d
}

fn acpo(c: &Cluster, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ACPO);
    cmd.args(args)
        .current_dir(dir)
        .env("SLURM_CONF", c.conf())
        .env_remove("ACPO_PROFILE");
    cmd
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn stages_run_as_slurm_jobs() {
    let c = Cluster::start();

    // A chain: each stage a job, submitted once its upstream finished; its output forwarded.
    let d = toy("stages:\n  a:\n    cmd: echo hello from $SLURM_JOB_ID > a.txt && echo working\n    outs: [a.txt]\n  b:\n    cmd: cat a.txt a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n    resources: {cpus: 1, mem_gb: 0.1, time_min: 5}\n");
    let o = acpo(&c, d.path(), &["repro", "--executor", "slurm"])
        .output()
        .unwrap();
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("a: submitted as Slurm job") && s.contains("b: submitted as Slurm job"),
        "{s}"
    );
    assert!(s.contains("[a] working"), "the job's log is forwarded: {s}");
    let a = std::fs::read_to_string(d.path().join("a.txt")).unwrap();
    assert!(
        a.starts_with("hello from ") && a.trim().len() > "hello from ".len(),
        "{a}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("b.txt")).unwrap(),
        a.repeat(2)
    );
    let s = text(&acpo(&c, d.path(), &["status"]).output().unwrap());
    assert!(s.contains("2 stage(s): 2 up to date"), "{s}");

    // A failing stage: its log is shown, Slurm's state named, nothing downstream runs.
    let d = toy("stages:\n  bad:\n    cmd: echo about to fail && exit 3\n    outs: [bad.txt]\n  after:\n    cmd: cp bad.txt after.txt\n    deps: [bad.txt]\n    outs: [after.txt]\n");
    let o = acpo(&c, d.path(), &["repro", "--executor", "slurm"])
        .output()
        .unwrap();
    let s = text(&o);
    assert_eq!(o.status.code(), Some(1), "{s}");
    assert!(s.contains("[bad] about to fail"), "{s}");
    assert!(s.contains("exit status 3") && s.contains("FAILED"), "{s}");
    assert!(
        !s.contains("after: submitted") && !s.contains("after: running"),
        "{s}"
    );
    assert!(!d.path().join("after.txt").exists());

    // Ctrl-C cancels the job; the persist stage's checkpoint is kept, and the next
    // submission resumes from it.
    let d = toy("stages:\n  train:\n    cmd: >-\n      mkdir -p ck && if [ -f ck/1 ]; then echo resumed > out.txt; else touch ck/1 && sleep 60; fi\n    outs: [ck, out.txt]\n    persist: true\n");
    let mut engine = acpo(&c, d.path(), &["repro", "--executor", "slurm"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !d.path().join("ck/1").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.squeue().contains("RUNNING"), "{}", c.squeue());
    Command::new("kill")
        .args(["-INT", &engine.id().to_string()])
        .status()
        .unwrap();
    let st = engine.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    let t1 = Instant::now();
    while !c.squeue().trim().is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(20),
            "job not cancelled: {}",
            c.squeue()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = acpo(&c, d.path(), &["repro", "--executor", "slurm"])
        .output()
        .unwrap();
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("resuming from the outputs its interrupted run left"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("out.txt")).unwrap(),
        "resumed\n"
    );

    // A stage's own `executor:` field: this one goes to Slurm without --executor, the
    // other stays here even with it.
    let d = toy("stages:\n  remote:\n    cmd: echo r > r.txt\n    outs: [r.txt]\n    executor: slurm\n  here:\n    cmd: cat r.txt > h.txt\n    deps: [r.txt]\n    outs: [h.txt]\n    executor: local\n");
    let o = acpo(&c, d.path(), &["repro"]).output().unwrap();
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("remote: submitted as Slurm job"), "{s}");
    assert!(!s.contains("here: submitted"), "{s}");
    assert_eq!(
        std::fs::read_to_string(d.path().join("h.txt")).unwrap(),
        "r\n"
    );
    let d = toy("stages:\n  x:\n    cmd: echo\n    executor: k8s\n");
    let o = acpo(&c, d.path(), &["repro"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("executor `k8s`"), "{}", text(&o));

    // Resources no node has: bad input, and nothing is submitted.
    let d = toy(
        "stages:\n  huge:\n    cmd: echo > h.txt\n    outs: [h.txt]\n    resources: {cpus: 999}\n",
    );
    let o = acpo(&c, d.path(), &["repro", "--executor", "slurm"])
        .output()
        .unwrap();
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(
        s.contains("stage `huge`: resources.cpus = 999 but no node"),
        "{s}"
    );
    assert!(c.squeue().trim().is_empty(), "{}", c.squeue());
    let o = acpo(
        &c,
        d.path(),
        &["repro", "--executor", "slurm", "--partition", "nope"],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = acpo(&c, d.path(), &["repro", "--executor", "pbs"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--executor `pbs`"), "{}", text(&o));
}
