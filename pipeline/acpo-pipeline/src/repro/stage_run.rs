//! Starting one stage (locally or as a Slurm job), recording what it produced when it
//! exits, and stopping every running stage on an interrupt.

use super::process::{die_with_this_thread, follow_job, spawn_reader, wait_pid, Event, ExitInfo};
use super::staging::*;
use super::{devices_needed, reasons_text, unix_now, Executor, Running, St};
use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, write_atomic};
use crate::pipeline::Stage;
use crate::runcache::{CachedOut, RunEntry};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

impl Executor<'_> {
    pub(super) fn start(&mut self, i: usize, tx: &Sender<Event>) -> Result<()> {
        let (inputs, key, reasons) = self.prepared.remove(&i).expect("prepared before start");
        let stage = self.ws.pipeline.stages[i].clone();
        let root = self.ws.root.clone();
        let state = self.ws.state_dir();
        move_outs_aside(&root, &state, &stage)?;
        let resumed = stage.persist && take_partial(&root, &state, &stage, &key)?;
        let params_file = params_file(&state, &stage);
        let bytes = serde_json::to_vec_pretty(&inputs.params).map_err(|e| Error::Corrupt {
            path: params_file.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&params_file, &bytes)?;
        let log_path = log_file(&state, &stage);
        ensure_parent(&log_path)?;
        let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let log = Arc::new(Mutex::new(log));
        self.progress.started(
            &stage.name,
            &format!(
                "{}: running ({}){}: {}",
                stage.name,
                reasons_text(&reasons),
                if resumed {
                    ", resuming from the outputs its interrupted run left"
                } else {
                    ""
                },
                stage.cmd
            ),
        );
        let dir = match &stage.wdir {
            Some(w) => root.join(w),
            None => root.clone(),
        };
        let (pid, job, devices) = match super::slurm_for(self.settings, &stage) {
            Some(slurm) => {
                drop(log); // Slurm writes the log; the poller forwards it
                let env = [
                    ("ACPO_PARAMS", params_file.display().to_string()),
                    ("ACPO_STAGE", stage.name.clone()),
                    ("ACPO_PROFILE", self.settings.profile.clone()),
                ];
                match crate::slurm::submit(&stage, &slurm, &dir, &log_path, &env) {
                    Ok(id) => {
                        self.progress
                            .line(&format!("{}: submitted as Slurm job {id}", stage.name));
                        self.record_running(&stage, 0, Some(id.clone()), &key);
                        let (txp, logp) = (tx.clone(), log_path.clone());
                        let idp = id.clone();
                        std::thread::spawn(move || follow_job(i, &idp, &logp, &txp));
                        (0, Some(id), Vec::new())
                    }
                    Err(refusal) => {
                        let _ = tx.send(Event::Exit(
                            i,
                            ExitInfo {
                                code: None,
                                signal: None,
                                maxrss_kib: 0,
                                note: Some(refusal),
                            },
                        ));
                        (0, None, Vec::new())
                    }
                }
            }
            None => self.spawn_local(i, &stage, &key, log, tx)?,
        };
        self.status.insert(i, St::Running);
        self.running.insert(
            i,
            Running {
                pid,
                job,
                started: Instant::now(),
                inputs,
                key,
                devices,
            },
        );
        Ok(())
    }

    /// Records a started stage (`.acpo/running/<stage>`) for the recovery after `kill -9`.
    pub(super) fn record_running(&self, stage: &Stage, pgid: i32, job: Option<String>, key: &str) {
        let record = crate::running::RunRecord {
            stage: stage.name.clone(),
            pgid,
            key: key.to_string(),
            job,
        };
        if let Err(e) = crate::running::write(&self.ws.state_dir(), &record) {
            // The stage runs anyway; only a later recovery from `kill -9` loses its record.
            self.progress.line(&format!(
                "{}: could not record the running stage: {e}",
                stage.name
            ));
        }
    }

    /// Starts a stage's command here: `sh -c` in its own process group, output piped to the
    /// log and the terminal, a waiter thread that reports its exit. Returns (pid, no job,
    /// the GPU devices it was given).
    pub(super) fn spawn_local(
        &mut self,
        i: usize,
        stage: &Stage,
        key: &str,
        log: Arc<Mutex<std::fs::File>>,
        tx: &Sender<Event>,
    ) -> Result<(i32, Option<String>, Vec<usize>)> {
        let root = self.ws.root.clone();
        let state = self.ws.state_dir();
        let params_file = params_file(&state, stage);
        let dir = match &stage.wdir {
            Some(w) => root.join(w),
            None => root.clone(),
        };
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&stage.cmd)
            .current_dir(&dir)
            .env("ACPO_PARAMS", &params_file)
            .env("ACPO_STAGE", &stage.name)
            .env("ACPO_PROFILE", &self.settings.profile)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Own process group: Ctrl-C reaches acpo only, which then stops the whole
            // stage (sh and everything it started) and restores the outputs.
            .process_group(0);
        die_with_this_thread(&mut cmd);
        // Whole devices for a GPU stage; one that needs more than the machine has (and so
        // runs alone) gets them all.
        let want = devices_needed(&stage.resources).min(self.free_devices.len());
        let devices: Vec<usize> = self.free_devices.drain(..want).collect();
        if devices_needed(&stage.resources) > 0 {
            let ids: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", ids.join(","));
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.release(devices);
                restore_backup(&root, &state, stage)?;
                return Err(Error::io(PathBuf::from("sh"), e));
            }
        };
        let pid = child.id() as i32;
        self.record_running(stage, pid, None, key);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(i, out, tx.clone(), log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(i, err, tx.clone(), log));
        }
        drop(child); // not waited through std: the waiter thread reaps it with wait4
        let txw = tx.clone();
        std::thread::spawn(move || {
            let info = wait_pid(pid);
            // Let the readers drain the pipes (bounded: a daemonised grandchild may keep
            // them open).
            let deadline = Instant::now() + Duration::from_secs(2);
            for r in readers {
                while !r.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let _ = txw.send(Event::Exit(i, info));
        });
        Ok((pid, None, devices))
    }

    /// Settles a stage whose command exited. `Err` is the failure message.
    pub(super) fn finish(&mut self, i: usize, info: ExitInfo) -> std::result::Result<(), String> {
        let run = self.running.remove(&i).expect("running stage");
        self.release(run.devices.clone());
        let stage = self.ws.pipeline.stages[i].clone();
        let wall_s = run.started.elapsed().as_secs_f64();
        let root = self.ws.root.clone();
        let state = self.ws.state_dir();
        crate::running::remove(&state, &stage.name);
        let fail = |msg: String| -> std::result::Result<(), String> {
            let msg = settle_partial(&root, &state, &stage, &run.key, msg);
            match restore_backup(&root, &state, &stage) {
                Ok(()) => Err(msg),
                Err(e) => Err(format!("{msg}; restoring the earlier outputs failed: {e}")),
            }
        };
        if info.code != Some(0) {
            let how = match (info.code, info.signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(c), None) => format!("exit status {c}"),
                (None, None) => "unknown exit".into(),
            };
            let note = info.note.map(|n| format!("; {n}")).unwrap_or_default();
            return fail(format!(
                "command failed ({how}{note}); log: {}",
                log_file(&state, &stage).display()
            ));
        }
        if let Err(e) = self.ws.check_outs(i) {
            // The command made a link on the way to an out: nothing of it is recorded.
            return fail(e.to_string());
        }
        for o in &stage.outs {
            if std::fs::symlink_metadata(root.join(o)).is_err() {
                return fail(format!(
                    "{}: command exited 0 but did not produce its declared output `{o}`",
                    self.ws.pipeline.location(i)
                ));
            }
        }
        let done = (|| -> Result<()> {
            let mut outs = BTreeMap::new();
            let mut cached = BTreeMap::new();
            for o in &stage.outs {
                let (h, entries) =
                    self.ws.hashes.tree(&root.join(o))?.ok_or_else(|| {
                        Error::io(root.join(o), std::io::ErrorKind::NotFound.into())
                    })?;
                outs.insert(o.clone(), h.clone());
                cached.insert(o.clone(), CachedOut { hash: h, entries });
            }
            let peak = info.maxrss_kib as f64 / 1024.0;
            // An output marked `cache: false` keeps the whole run out of the run cache.
            if stage.uncached.is_empty() {
                self.ws.runcache.put(
                    &root,
                    &RunEntry {
                        stage: stage.name.clone(),
                        key: run.key.clone(),
                        profile: self.settings.profile.clone(),
                        inputs: run.inputs.clone(),
                        outs: cached,
                        wall_s,
                        peak_rss_mib: peak,
                        created_unix: unix_now(),
                    },
                )?;
            }
            self.record(
                &stage,
                &run.key,
                run.inputs.clone(),
                outs,
                wall_s,
                peak,
                false,
            )?;
            Ok(())
        })();
        if let Err(e) = done {
            return fail(format!("recording its outputs failed: {e}"));
        }
        discard_backup(&state, &stage);
        let _ = remove_path(&partial_dir(&state, &stage));
        self.status.insert(i, St::Done);
        self.summary.ran.push(stage.name.clone());
        self.progress.settled(
            &stage.name,
            Some(&format!(
                "{}: done in {wall_s:.2} s, peak memory {:.1} MiB",
                stage.name,
                info.maxrss_kib as f64 / 1024.0
            )),
        );
        Ok(())
    }

    /// Stops every running stage, restores its earlier outputs, and returns the error.
    pub(super) fn interrupt(&mut self, rx: &Receiver<Event>) -> Error {
        self.progress.line("interrupted: stopping running stages");
        for r in self.running.values() {
            match &r.job {
                Some(job) => crate::slurm::cancel(job),
                // SAFETY: kill(2) on the stage's own process group; no memory is involved.
                None => unsafe {
                    libc::kill(-r.pid, libc::SIGTERM);
                },
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut killed = false;
        let mut stopped = Vec::new();
        while !self.running.is_empty() {
            if Instant::now() > deadline && !killed {
                for r in self.running.values().filter(|r| r.job.is_none()) {
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(-r.pid, libc::SIGKILL);
                    }
                }
                killed = true;
            }
            if let Ok(Event::Exit(i, _)) = rx.recv_timeout(Duration::from_millis(100)) {
                let run = self.running.remove(&i).expect("running stage");
                self.release(run.devices.clone());
                let stage = self.ws.pipeline.stages[i].clone();
                let state = self.ws.state_dir();
                crate::running::remove(&state, &stage.name);
                let msg = settle_partial(&self.ws.root, &state, &stage, &run.key, String::new());
                if !msg.is_empty() {
                    self.progress.line(&format!(
                        "{}: {}",
                        stage.name,
                        msg.trim_start_matches("; ")
                    ));
                }
                if let Err(e) = restore_backup(&self.ws.root, &state, &stage) {
                    self.progress.line(&format!(
                        "{}: restoring earlier outputs failed: {e}",
                        stage.name
                    ));
                }
                stopped.push(stage.name);
            }
        }
        let _ = self.ws.hashes.save();
        self.print_resume();
        Error::Interrupted {
            stages: if stopped.is_empty() {
                "(between stages)".into()
            } else {
                stopped.join(", ")
            },
        }
    }
}
