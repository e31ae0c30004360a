//! The record of running stages, `.acpo/running/<stage>`: while a stage command runs, its
//! process group and stage key. An engine that dies without stopping its stages (`kill -9`,
//! an out-of-memory kill) leaves the record behind, and the next `repro` (under the same
//! lock) first stops every process that run left in that group, so no orphan keeps writing
//! into outputs the new run has restored or restarted, and then keeps a `persist` stage's
//! partial outputs (its checkpoints) for the same key instead of discarding them.
//!
//! A process is stopped only when it is in the recorded process group *and* its environment
//! carries `ACPO_STAGE=<stage>` (the engine sets it for every stage command, and children
//! inherit it), so a reused process-group id never reaches an unrelated process.

use crate::confine::encode_name;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One running stage as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub stage: String,
    /// Process group of the stage command (the pid of its `sh`).
    pub pgid: i32,
    /// Stage key of the run (its partial outputs are kept for this key).
    pub key: String,
    /// The Slurm job, for a stage submitted with `--executor slurm` (cancelled, not
    /// signalled, when a killed engine left it behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

fn dir(state: &Path) -> PathBuf {
    state.join("running")
}

fn path(state: &Path, stage: &str) -> PathBuf {
    dir(state).join(encode_name(stage))
}

/// Records a stage that has just started.
pub fn write(state: &Path, rec: &RunRecord) -> Result<()> {
    let p = path(state, &rec.stage);
    let bytes = serde_json::to_vec(rec).map_err(|e| Error::Corrupt {
        path: p.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&p, &bytes)
}

/// Forgets a stage whose command has exited (or was stopped).
pub fn remove(state: &Path, stage: &str) {
    let _ = std::fs::remove_file(path(state, stage));
}

/// Every record left behind (by an engine that did not remove them), unreadable ones skipped
/// and removed.
pub fn left_behind(state: &Path) -> Vec<RunRecord> {
    let Ok(rd) = std::fs::read_dir(dir(state)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        match std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok())
        {
            Some(r) => out.push(r),
            None => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    out.sort_by(|a, b| a.stage.cmp(&b.stage));
    out
}

/// The process group of `pid`, from `/proc/<pid>/stat` (the field after state and ppid).
fn pgrp_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

fn has_stage_env(pid: i32, stage: &str) -> bool {
    let want = format!("ACPO_STAGE={stage}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        .unwrap_or(false)
}

/// Live processes of the recorded stage: in its process group, with its `ACPO_STAGE`.
pub fn processes(rec: &RunRecord) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pgrp_of(pid) == Some(rec.pgid) && has_stage_env(pid, &rec.stage))
        .collect()
}

fn signal(pids: &[i32], sig: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid just checked to be one of the stage's processes.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Stops what is left of the recorded stage: SIGTERM, then SIGKILL after `grace`, until none
/// is left (or 10 s more). Returns how many processes were found.
pub fn stop(rec: &RunRecord, grace: Duration) -> usize {
    if let Some(job) = &rec.job {
        crate::slurm::cancel(job);
        return 1;
    }
    let found = processes(rec);
    if found.is_empty() {
        return 0;
    }
    signal(&found, libc::SIGTERM);
    let start = Instant::now();
    let mut killed = false;
    loop {
        let left = processes(rec);
        if left.is_empty() || start.elapsed() > grace + Duration::from_secs(10) {
            break;
        }
        if !killed && start.elapsed() > grace {
            signal(&left, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_broken_ones_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let rec = RunRecord {
            stage: "train@a/b".into(),
            pgid: 4242,
            key: "k".into(),
            job: None,
        };
        write(d.path(), &rec).unwrap();
        std::fs::write(dir(d.path()).join("junk"), b"{").unwrap();
        assert_eq!(left_behind(d.path()), vec![rec.clone()]);
        assert!(!dir(d.path()).join("junk").exists());
        remove(d.path(), &rec.stage);
        assert!(left_behind(d.path()).is_empty());
    }

    #[test]
    fn only_the_stages_own_processes_are_stopped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("ACPO_STAGE", "s")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let other = RunRecord {
            stage: "other".into(),
            pgid,
            key: String::new(),
            job: None,
        };
        assert!(
            processes(&other).is_empty(),
            "another stage's name matches nothing"
        );
        let rec = RunRecord {
            stage: "s".into(),
            pgid,
            key: String::new(),
            job: None,
        };
        assert_eq!(processes(&rec), vec![pgid]);
        assert_eq!(stop(&rec, Duration::from_secs(2)), 1);
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(processes(&rec).is_empty());
    }
}
