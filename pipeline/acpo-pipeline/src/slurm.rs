//! The Slurm executor (`acpo repro --executor slurm`): each stage that is ready is submitted
//! with `sbatch` instead of started here; a poller follows the job (`sacct`, or `scontrol
//! show job` where accounting is off) and its log, and Ctrl-C cancels it (`scancel`). The
//! lock, the run cache, the backups and the hashing of outputs stay on the submitting
//! machine, so the pipeline directory must be on a file system the nodes share.
//!
//! Jobs are submitted when their stage is ready, not chained ahead with `--dependency`: a
//! stage's key includes the hashes of its upstream outputs, which exist only once those jobs
//! have finished, and a stage whose key is in the run cache is restored, not submitted.
//!
//! The executor interface the engine uses is small: [`submit`] (a job id, or sbatch's
//! refusal), [`poll`] (still active, or done with an exit code), [`cancel`], and the job's log
//! file (`.acpo/logs/<stage>.log`, written by Slurm, forwarded line by line).

use crate::error::{Error, Result};
use crate::pipeline::{Resources, Stage};
use std::path::Path;
use std::process::Command;

/// Settings of the Slurm executor.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmSettings {
    /// `--partition` (default: the cluster's default partition).
    pub partition: Option<String>,
    /// `--time` in minutes for a stage that declares no `resources.time_min` (default 24 h).
    pub time_min: u64,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            partition: None,
            time_min: 24 * 60,
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Pending, configuring, running or completing.
    Active,
    /// Finished: Slurm's state name and the exit code and signal.
    Done {
        state: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// The `sbatch` arguments for a stage's resources (whole CPUs and GPUs, memory in MiB).
pub fn resource_args(r: &Resources, settings: &SlurmSettings) -> Vec<String> {
    let mut a = vec![format!("--cpus-per-task={}", r.cpus.ceil().max(1.0) as u64)];
    if r.mem_gb > 0.0 {
        a.push(format!("--mem={}M", (r.mem_gb * 1024.0).ceil() as u64));
    }
    if r.gpus > 0.0 {
        a.push(format!("--gres=gpu:{}", r.gpus.ceil() as u64));
    }
    let minutes = if r.time_min > 0.0 {
        r.time_min.ceil() as u64
    } else {
        settings.time_min
    };
    a.push(format!("--time={minutes}"));
    if let Some(p) = &settings.partition {
        a.push(format!("--partition={p}"));
    }
    a
}

/// Submits `stage`'s command to run in `dir`, its output to `log`, with `env` added to the
/// submitting environment (which sbatch passes on). `Err` holds sbatch's refusal.
pub fn submit(
    stage: &Stage,
    settings: &SlurmSettings,
    dir: &Path,
    log: &Path,
    env: &[(&str, String)],
) -> std::result::Result<String, String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable")
        .arg(format!("--job-name=acpo:{}", stage.name))
        .arg(format!("--chdir={}", dir.display()))
        .arg(format!("--output={}", log.display()))
        .args(resource_args(&stage.resources, settings))
        .arg("--wrap")
        .arg(&stage.cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run sbatch: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if out.status.success() && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(format!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where job `id` is: from `sacct`, or from `scontrol show job` where accounting is off.
pub fn poll(id: &str) -> JobState {
    if let Some(s) = poll_sacct(id) {
        return s;
    }
    poll_scontrol(id)
}

fn poll_sacct(id: &str) -> Option<JobState> {
    let out = Command::new("sacct")
        .args(["-n", "-X", "-P", "-o", "State,ExitCode", "-j", id])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let (state, exit) = line.split_once('|')?;
    Some(parse_state(state.split_whitespace().next()?, exit))
}

fn poll_scontrol(id: &str) -> JobState {
    let Ok(out) = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
    else {
        return JobState::Active;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_string)
    };
    match (field("JobState="), field("ExitCode=")) {
        (Some(state), Some(exit)) => parse_state(&state, &exit),
        // Forgotten by slurmctld (past MinJobAge) or not yet known: keep polling; the engine
        // bounds nothing here, as a pending job may wait for hours.
        _ => JobState::Active,
    }
}

/// `COMPLETED` with `0:0`, `FAILED` with `3:0`, `CANCELLED by 0` with `0:15`, ...
pub fn parse_state(state: &str, exit: &str) -> JobState {
    const ACTIVE: [&str; 8] = [
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "RESIZING",
        "SUSPENDED",
        "STAGE_OUT",
    ];
    let state = state.trim().trim_end_matches('+').to_string();
    if ACTIVE.contains(&state.as_str()) {
        return JobState::Active;
    }
    let (code, signal) = exit.trim().split_once(':').unwrap_or((exit.trim(), "0"));
    let code = code.parse::<i32>().ok();
    let signal = signal.parse::<i32>().ok().filter(|&s| s != 0);
    let code = match state.as_str() {
        "COMPLETED" => code,
        // Anything else failed, whatever the exit code says (a cancelled job reports 0).
        _ => Some(code.filter(|&c| c != 0).unwrap_or(1)),
    };
    JobState::Done {
        state,
        code,
        signal,
    }
}

/// Cancels job `id` (Ctrl-C, or a job a killed engine left behind).
pub fn cancel(id: &str) {
    let _ = Command::new("scancel").arg(id).output();
}

/// Fails (bad input, before anything is submitted) when a stage asks for more than any
/// node of the partition has: CPUs, memory or GPUs (`sinfo`).
pub fn check_resources(stages: &[&Stage], settings: &SlurmSettings) -> Result<()> {
    let mut cmd = Command::new("sinfo");
    cmd.args(["-h", "-N", "-o", "%c|%m|%G"]);
    if let Some(p) = &settings.partition {
        cmd.arg(format!("--partition={p}"));
    }
    let out = cmd.output().map_err(|e| {
        Error::Usage(format!(
            "--executor slurm: cannot run sinfo ({e}); is Slurm installed?"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "--executor slurm: sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let (mut cpus, mut mem_mib, mut gpus) = (0f64, 0f64, 0f64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 3 {
            continue;
        }
        cpus = cpus.max(f[0].trim().parse().unwrap_or(0.0));
        mem_mib = mem_mib.max(f[1].trim().trim_end_matches('+').parse().unwrap_or(0.0));
        // `gpu:2`, `gpu:a100:4(S:0-1)`, or `(null)`.
        let n = f[2]
            .split(',')
            .filter(|g| g.starts_with("gpu"))
            .filter_map(|g| g.split('(').next()?.rsplit(':').next()?.parse::<f64>().ok())
            .sum::<f64>();
        gpus = gpus.max(n);
    }
    if cpus == 0.0 {
        return Err(Error::Usage(format!(
            "--executor slurm: no nodes in {}",
            settings
                .partition
                .as_deref()
                .unwrap_or("the default partition")
        )));
    }
    for s in stages {
        let r = &s.resources;
        let too_big = [
            ("cpus", r.cpus.ceil().max(1.0), cpus),
            ("mem_gb", r.mem_gb, mem_mib / 1024.0),
            ("gpus", r.gpus.ceil(), gpus),
        ];
        for (what, want, have) in too_big {
            if want > have + 1e-9 {
                return Err(Error::Usage(format!(
                    "stage `{}`: resources.{what} = {want} but no node of {} has more than \
                     {have}; nothing was submitted",
                    s.name,
                    settings
                        .partition
                        .as_deref()
                        .unwrap_or("the default partition")
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_exit_codes_read_as_slurm_writes_them() {
        assert_eq!(parse_state("RUNNING", "0:0"), JobState::Active);
        assert_eq!(
            parse_state("COMPLETED", "0:0"),
            JobState::Done {
                state: "COMPLETED".into(),
                code: Some(0),
                signal: None
            }
        );
        assert_eq!(
            parse_state("FAILED", "3:0"),
            JobState::Done {
                state: "FAILED".into(),
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(
            parse_state("CANCELLED+", "0:15"),
            JobState::Done {
                state: "CANCELLED".into(),
                code: Some(1),
                signal: Some(15)
            }
        );
    }

    #[test]
    fn resources_map_to_sbatch_arguments() {
        let r = Resources {
            cpus: 1.5,
            gpus: 1.0,
            mem_gb: 2.0,
            time_min: 0.0,
        };
        let s = SlurmSettings {
            partition: Some("gpu".into()),
            time_min: 90,
        };
        assert_eq!(
            resource_args(&r, &s),
            [
                "--cpus-per-task=2",
                "--mem=2048M",
                "--gres=gpu:1",
                "--time=90",
                "--partition=gpu"
            ]
        );
    }
}
