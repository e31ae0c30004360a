//! `repro`: run the stages that are not up to date, in topological order, in parallel up
//! to `-j` and the declared resources; restore from the run cache when a key was seen
//! before; keep earlier outputs and the lock intact when a stage fails or is interrupted.

use crate::confine::{decode_name, encode_name, resolve_out};
use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, write_atomic};
use crate::hash::PathHash;
use crate::key::KeyInputs;
use crate::lock::LockEntry;
use crate::pipeline::{Resources, Stage};
use crate::progress::Progress;
use crate::runcache::{CachedOut, Restore, RunEntry};
use crate::workspace::{Reason, Workspace};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything `acpo repro` needs, resolved from the command line before any work.
#[derive(Debug, Clone)]
pub struct ReproSettings {
    /// Directory of `pipeline.yaml`.
    pub root: PathBuf,
    /// The pipeline file in `root` (`--file`); `None`: `pipeline.yaml`, else `dvc.yaml`.
    pub file: Option<String>,
    pub profile: String,
    /// `-S key=value` overrides.
    pub overrides: Vec<String>,
    /// Stage names (full or base); empty = all.
    pub targets: Vec<String>,
    pub force: bool,
    pub downstream: bool,
    pub single: bool,
    pub dry_run: bool,
    /// Most stages running at once (>= 1).
    pub jobs: usize,
    pub keep_going: bool,
    /// The command line that resumes this run (printed after a failure or interruption).
    pub resume_command: String,
    /// Draw a progress bar (when stderr is a terminal); plain lines otherwise.
    pub progress: bool,
    /// `--pull`: fetch a stage whose key a remote has instead of running it; the remote's
    /// name (`Some("")`: the config's default). See [`crate::remote`].
    pub pull: Option<String>,
    /// `--executor slurm`: submit stages with sbatch instead of running them here.
    pub slurm: Option<crate::slurm::SlurmSettings>,
}

impl ReproSettings {
    /// Defaults for running every stage of `root`.
    pub fn new(root: impl Into<PathBuf>) -> ReproSettings {
        ReproSettings {
            root: root.into(),
            file: None,
            profile: crate::params::DEFAULT_PROFILE.into(),
            overrides: Vec::new(),
            targets: Vec::new(),
            force: false,
            downstream: false,
            single: false,
            dry_run: false,
            jobs: 1,
            keep_going: false,
            resume_command: "acpo repro".into(),
            progress: false,
            pull: None,
            slurm: None,
        }
    }
}

/// What a `repro` did, stage names per outcome.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReproSummary {
    pub ran: Vec<String>,
    pub restored: Vec<String>,
    pub up_to_date: Vec<String>,
    pub skipped: Vec<String>,
    /// Stages a dry run would run or restore.
    pub would_run: Vec<String>,
    /// Run-cache objects found corrupt while restoring (each naming the object and the
    /// stage); those stages ran instead.
    pub corrupt_objects: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

struct ExitInfo {
    code: Option<i32>,
    signal: Option<i32>,
    maxrss_kib: i64,
    /// What the executor adds to a failure (Slurm's job state, sbatch's refusal).
    note: Option<String>,
}

enum Event {
    Line(usize, String),
    Exit(usize, ExitInfo),
}

struct Running {
    /// Process group of a local stage (0 for a Slurm job).
    pid: i32,
    /// The Slurm job of a stage submitted with `--executor slurm`.
    job: Option<String>,
    started: Instant,
    inputs: KeyInputs,
    key: String,
    /// GPU devices given to the stage (`CUDA_VISIBLE_DEVICES`), back to the pool on exit.
    devices: Vec<usize>,
}

/// Whole GPU devices a stage that declares `gpus` gets: one per started GPU.
fn devices_needed(r: &Resources) -> usize {
    if r.gpus > 0.0 {
        r.gpus.ceil() as usize
    } else {
        0
    }
}

/// Available capacity for scheduling.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    cpus: f64,
    gpus: f64,
    mem_gb: f64,
}

impl Capacity {
    fn detect() -> Capacity {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let gpus = std::env::var("ACPO_GPUS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                (0..16)
                    .filter(|i| Path::new(&format!("/dev/nvidia{i}")).exists())
                    .count() as f64
            });
        let mem_gb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(f64::INFINITY);
        Capacity { cpus, gpus, mem_gb }
    }
}

/// Runs `repro`. Errors: bad input (before anything runs), stage failure, interruption.
pub fn repro(settings: &ReproSettings) -> Result<ReproSummary> {
    let mut ws = Workspace::open_file(
        &settings.root,
        settings.file.as_deref(),
        &settings.profile,
        &settings.overrides,
    )?;
    let sel = ws
        .pipeline
        .select(&settings.targets, settings.downstream, settings.single)?;
    for &i in &sel {
        ws.check_deps(i)?;
    }
    // The lock first, then pipeline.lock (read again under it): a repro that waited for
    // another must not write back what it read before that one finished.
    let _guard = ws.lock_exclusive()?;
    let expected = sel
        .iter()
        .map(|&i| {
            let name = ws.pipeline.stages[i].name.clone();
            let last = ws.lock.stages.get(&name).map(|e| e.wall_s);
            (name, last)
        })
        .collect();
    let progress = Progress::with_estimates(settings.progress, expected, sel.len(), settings.jobs);
    stop_left_behind(&ws, &progress)?;
    recover_backups(&ws, &progress)?;
    for &i in &sel {
        ws.check_outs(i)?;
    }
    if settings.dry_run {
        return dry_run(&mut ws, settings, &sel, &progress);
    }
    // Checked before anything is submitted: a stage no node can hold is bad input.
    if let Some(slurm) = &settings.slurm {
        let stages: Vec<&Stage> = sel.iter().map(|&i| &ws.pipeline.stages[i]).collect();
        crate::slurm::check_resources(&stages, slurm)?;
    }
    // Opened before anything runs, so an unknown remote is bad input with nothing done.
    let remote = match &settings.pull {
        None => None,
        Some(name) => Some(crate::remote::open(
            &ws.root,
            Some(name.as_str()).filter(|n| !n.is_empty()),
        )?),
    };
    let mut ex = Executor {
        ws,
        settings,
        progress,
        status: BTreeMap::new(),
        prepared: BTreeMap::new(),
        running: BTreeMap::new(),
        summary: ReproSummary::default(),
        failures: Vec::new(),
        capacity: Capacity::detect(),
        interrupted: Arc::new(AtomicBool::new(false)),
        remote,
        free_devices: Vec::new(),
    };
    ex.free_devices = (0..ex.capacity.gpus.floor().max(0.0) as usize).collect();
    let result = ex.run(&sel);
    let _ = ex.ws.hashes.save();
    ex.progress.finish();
    result
}

fn dry_run(
    ws: &mut Workspace,
    settings: &ReproSettings,
    sel: &[usize],
    progress: &Progress,
) -> Result<ReproSummary> {
    let mut summary = ReproSummary::default();
    let mut will = vec![false; ws.pipeline.stages.len()];
    for &i in sel {
        let name = ws.pipeline.stages[i].name.clone();
        let ups: Vec<String> = ws.pipeline.upstream[i]
            .iter()
            .filter(|&&u| will[u])
            .map(|&u| ws.pipeline.stages[u].name.clone())
            .collect();
        let msg = if ws.pipeline.stages[i].frozen {
            "frozen (not checked)".to_string()
        } else if !ups.is_empty() {
            format!("would run (after upstream {})", ups.join(", "))
        } else {
            let st = ws.state(i)?;
            if settings.force {
                "would run (forced)".to_string()
            } else if st.reasons.is_empty() {
                "up to date".to_string()
            } else if ws.runcache.get(&st.key).is_some() {
                "would restore from the run cache".to_string()
            } else {
                format!("would run: {}", reasons_text(&st.reasons))
            }
        };
        if msg != "up to date" && !msg.starts_with("frozen") {
            will[i] = true;
            summary.would_run.push(name.clone());
        } else {
            summary.up_to_date.push(name.clone());
        }
        progress.line(&format!("{name}: {msg}"));
    }
    Ok(summary)
}

fn reasons_text(r: &[Reason]) -> String {
    r.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

struct Executor<'a> {
    ws: Workspace,
    settings: &'a ReproSettings,
    progress: Progress,
    status: BTreeMap<usize, St>,
    prepared: BTreeMap<usize, (KeyInputs, String, Vec<Reason>)>,
    running: BTreeMap<usize, Running>,
    summary: ReproSummary,
    failures: Vec<(String, String)>,
    capacity: Capacity,
    interrupted: Arc<AtomicBool>,
    /// The remote of `--pull`.
    remote: Option<Box<dyn crate::remote::Store>>,
    /// GPU device ids not given to a running stage.
    free_devices: Vec<usize>,
}

impl Executor<'_> {
    fn run(&mut self, sel: &[usize]) -> Result<ReproSummary> {
        for &i in sel {
            self.status.insert(i, St::Pending);
        }
        let ids: Vec<signal_hook::SigId> =
            // SIGHUP too: a closed terminal or SSH session stops the stages cleanly instead
            // of killing acpo and leaving them running.
            [
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGHUP,
            ]
                .iter()
                .filter_map(|&s| signal_hook::flag::register(s, self.interrupted.clone()).ok())
                .collect();
        let (tx, rx) = channel::<Event>();
        let result = self.main_loop(sel, &tx, &rx);
        for id in ids {
            signal_hook::low_level::unregister(id);
        }
        result
    }

    fn main_loop(
        &mut self,
        sel: &[usize],
        tx: &Sender<Event>,
        rx: &Receiver<Event>,
    ) -> Result<ReproSummary> {
        let mut stop = false;
        let mut fatal: Option<Error> = None;
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                return Err(self.interrupt(rx));
            }
            if !stop {
                if let Err(e) = self.schedule(sel, tx) {
                    // A stage could not even be prepared (I/O): stop starting new work.
                    stop = true;
                    fatal = Some(e);
                }
            }
            if self.running.is_empty() {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Line(i, text)) => {
                    let name = &self.ws.pipeline.stages[i].name;
                    self.progress.stage_output(name, &text);
                }
                Ok(Event::Exit(i, info)) => {
                    if let Err(msg) = self.finish(i, info) {
                        let name = self.ws.pipeline.stages[i].name.clone();
                        self.progress
                            .settled(&name, Some(&format!("{name}: FAILED: {msg}")));
                        self.failures.push((name, msg));
                        self.status.insert(i, St::Failed);
                        if !self.settings.keep_going {
                            stop = true;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.progress.heartbeat();
        }
        for (&i, &st) in &self.status {
            if st == St::Pending || st == St::Skipped {
                self.summary
                    .skipped
                    .push(self.ws.pipeline.stages[i].name.clone());
            }
        }
        if let Some(e) = fatal {
            self.print_resume();
            return Err(e);
        }
        if !self.failures.is_empty() {
            self.print_resume();
            let names: Vec<String> = self.failures.iter().map(|f| f.0.clone()).collect();
            if self.failures.len() == 1 {
                let (stage, message) = self.failures.remove(0);
                return Err(Error::StageFailed { stage, message });
            }
            return Err(Error::StagesFailed {
                failed: names.len(),
                stages: names.join(", "),
            });
        }
        Ok(self.summary.clone())
    }

    fn print_resume(&self) {
        self.progress.line(&format!(
            "nothing finished was lost; to resume, run: {}",
            self.settings.resume_command
        ));
    }

    /// Starts every stage that is ready and fits; settles up-to-date and cached ones.
    fn schedule(&mut self, sel: &[usize], tx: &Sender<Event>) -> Result<()> {
        for &i in sel {
            if self.status[&i] != St::Pending {
                continue;
            }
            let ups = &self.ws.pipeline.upstream[i];
            let mut ready = true;
            let mut blocked = false;
            for u in ups {
                match self.status.get(u) {
                    None | Some(St::Done) => {}
                    Some(St::Failed) | Some(St::Skipped) => blocked = true,
                    Some(_) => ready = false,
                }
            }
            if blocked {
                self.status.insert(i, St::Skipped);
                let name = &self.ws.pipeline.stages[i].name;
                self.progress
                    .line(&format!("{name}: skipped (an upstream stage failed)"));
                self.progress.settled(name, None);
                continue;
            }
            if !ready {
                continue;
            }
            if !self.prepared.contains_key(&i) && self.ws.pipeline.stages[i].frozen {
                // DVC `frozen`: neither checked nor run, even with --force.
                let name = self.ws.pipeline.stages[i].name.clone();
                self.status.insert(i, St::Done);
                self.summary.up_to_date.push(name.clone());
                self.progress.line(&format!("{name}: frozen (not checked)"));
                self.progress.settled(&name, None);
                continue;
            }
            if !self.prepared.contains_key(&i) {
                let st = self.ws.state(i)?;
                let name = self.ws.pipeline.stages[i].name.clone();
                if !self.settings.force && st.reasons.is_empty() {
                    self.status.insert(i, St::Done);
                    self.summary.up_to_date.push(name.clone());
                    self.progress.line(&format!("{name}: up to date"));
                    self.progress.settled(&name, None);
                    continue;
                }
                // Checked again before anything is written: an upstream stage may have made a
                // link on the way to an out since the check before the run.
                self.ws.check_outs(i)?;
                let stage = &self.ws.pipeline.stages[i];
                if !self.settings.force && !stage.always_changed && stage.uncached.is_empty() {
                    let mut entry = self.ws.runcache.get(&st.key);
                    if let (None, Some(store)) = (&entry, &self.remote) {
                        match crate::remote::fetch(&self.ws.runcache, store.as_ref(), &st.key) {
                            Ok(Some((n, bytes))) => {
                                self.progress.line(&format!(
                                    "{name}: pulled from {} ({n} object(s), {:.1} MiB)",
                                    store.url(),
                                    bytes as f64 / 1048576.0
                                ));
                                entry = self.ws.runcache.get(&st.key);
                            }
                            Ok(None) => {}
                            // A corrupt remote run is not used: the stage runs instead.
                            Err(e @ Error::Corrupt { .. }) => {
                                let msg =
                                    format!("{name}: remote run not used: {e}; it runs instead");
                                self.progress.line(&msg);
                                self.summary.corrupt_objects.push(msg);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    let restored = match entry {
                        Some(entry) => self.restore(i, &entry)?,
                        None => false,
                    };
                    if restored {
                        self.status.insert(i, St::Done);
                        self.summary.restored.push(name.clone());
                        self.progress.line(&format!(
                            "{name}: restored from the run cache ({})",
                            reasons_text(&st.reasons)
                        ));
                        self.progress.settled(&name, None);
                        continue;
                    }
                }
                let reasons = if self.settings.force {
                    vec![Reason::Forced]
                } else {
                    st.reasons
                };
                self.prepared.insert(i, (st.inputs, st.key, reasons));
            }
            if self.fits(&self.ws.pipeline.stages[i].resources) {
                self.start(i, tx)?;
            }
        }
        Ok(())
    }

    /// Gives GPU devices back to the pool.
    fn release(&mut self, devices: Vec<usize>) {
        self.free_devices.extend(devices);
        self.free_devices.sort_unstable();
    }

    fn fits(&self, r: &Resources) -> bool {
        if self.running.is_empty() {
            return true;
        }
        if self.settings.slurm.is_some() {
            // The cluster places the jobs; -j bounds how many are submitted at once.
            return self.running.len() < self.settings.jobs.max(1);
        }
        if devices_needed(r) > self.free_devices.len() {
            return false;
        }
        if self.running.len() >= self.settings.jobs.max(1) {
            return false;
        }
        let mut used = Resources::default();
        for &i in self.running.keys() {
            let s = &self.ws.pipeline.stages[i].resources;
            used.cpus += s.cpus;
            used.gpus += s.gpus;
            used.mem_gb += s.mem_gb;
        }
        used.cpus + r.cpus <= self.capacity.cpus + 1e-9
            && used.gpus + r.gpus <= self.capacity.gpus + 1e-9
            && used.mem_gb + r.mem_gb <= self.capacity.mem_gb + 1e-9
    }

    /// Restores stage `i` from a cached run; `false` when the run cannot be used (its outputs
    /// are not the stage's, or an object is corrupt: reported, removed, and the stage runs).
    fn restore(&mut self, i: usize, entry: &RunEntry) -> Result<bool> {
        let stage = self.ws.pipeline.stages[i].clone();
        let mut declared: Vec<&String> = stage.outs.iter().collect();
        declared.sort();
        if !entry.outs.keys().eq(declared) {
            return Ok(false);
        }
        let done = self
            .ws
            .runcache
            .restore(&self.ws.root, entry, &mut self.ws.hashes)?;
        if let Restore::Corrupt(objects) = done {
            for o in objects {
                let msg = format!(
                    "stage `{}`: run-cache object {}: {}; removed it, the stage runs instead",
                    stage.name,
                    o.path.display(),
                    match &o.found {
                        Some(h) => format!("its bytes hash to {h}, not to its name"),
                        None => "missing or not a regular file".into(),
                    }
                );
                self.progress.line(&msg);
                self.summary.corrupt_objects.push(msg);
            }
            return Ok(false);
        }
        let outs = entry
            .outs
            .iter()
            .map(|(k, v)| (k.clone(), v.hash.clone()))
            .collect();
        self.record(
            &stage,
            &entry.key,
            entry.inputs.clone(),
            outs,
            entry.wall_s,
            entry.peak_rss_mib,
            true,
        )?;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        stage: &Stage,
        key: &str,
        inputs: KeyInputs,
        outs: BTreeMap<String, PathHash>,
        wall_s: f64,
        peak_rss_mib: f64,
        restored: bool,
    ) -> Result<()> {
        self.ws.lock.stages.insert(
            stage.name.clone(),
            LockEntry {
                key: key.to_string(),
                profile: self.settings.profile.clone(),
                inputs,
                outs,
                wall_s,
                peak_rss_mib,
                finished_unix: unix_now(),
                restored,
            },
        );
        self.ws.lock.save(&self.ws.lock_path)?;
        // Keep the stat cache current too, so a killed engine does not rehash everything.
        self.ws.hashes.save()
    }

    fn start(&mut self, i: usize, tx: &Sender<Event>) -> Result<()> {
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
        let (pid, job, devices) = match self.settings.slurm.clone() {
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
    fn record_running(&self, stage: &Stage, pgid: i32, job: Option<String>, key: &str) {
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
    fn spawn_local(
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
    fn finish(&mut self, i: usize, info: ExitInfo) -> std::result::Result<(), String> {
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
    fn interrupt(&mut self, rx: &Receiver<Event>) -> Error {
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

/// Makes the stage's `sh` get SIGKILL when the engine dies (Linux's parent-death signal), so a
/// `kill -9` of acpo or an out-of-memory kill does not leave the command running. A stage
/// command that is one program (`acpo stage ...`: `sh -c` execs it) dies outright; what a
/// compound command started in the background of its `sh` is stopped by the next `repro`
/// from the running record ([`crate::running`]). The signal follows the death of the thread
/// that spawned the child, which is the one running [`repro`] and outlives every stage.
fn die_with_this_thread(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid before the fork; the closure calls only async-signal-safe functions
    // (prctl, getppid) between fork and exec.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The engine died between fork and prctl: nothing would signal us, so stop now.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Follows Slurm job `id`: forwards new lines of its log as they appear and reports its
/// exit (code, signal, and Slurm's state as a note) when it is done.
fn follow_job(i: usize, id: &str, log: &Path, tx: &Sender<Event>) {
    let mut offset = 0u64;
    let mut pending = String::new();
    let forward = |offset: &mut u64, pending: &mut String, flush: bool| {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(log) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(*offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            *offset += buf.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&buf));
        }
        while let Some(n) = pending.find('\n') {
            let line: String = pending.drain(..=n).collect();
            let last = line
                .trim_end()
                .rsplit('\r')
                .next()
                .unwrap_or("")
                .to_string();
            let _ = tx.send(Event::Line(i, last));
        }
        if flush && !pending.is_empty() {
            let _ = tx.send(Event::Line(i, std::mem::take(pending)));
        }
    };
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let state = crate::slurm::poll(id);
        forward(&mut offset, &mut pending, false);
        if let crate::slurm::JobState::Done {
            state,
            code,
            signal,
        } = state
        {
            // Slurm may still be writing the log's last lines.
            std::thread::sleep(Duration::from_millis(200));
            forward(&mut offset, &mut pending, true);
            let _ = tx.send(Event::Exit(
                i,
                ExitInfo {
                    code,
                    signal,
                    maxrss_kib: 0,
                    note: Some(format!("Slurm job {id} {state}")),
                },
            ));
            return;
        }
    }
}

fn spawn_reader(
    i: usize,
    pipe: impl std::io::Read + Send + 'static,
    tx: Sender<Event>,
    log: Arc<Mutex<std::fs::File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(mut f) = log.lock() {
                        let _ = f.write_all(&buf);
                    }
                    let text = String::from_utf8_lossy(&buf);
                    // A progress bar redraws with '\r': show only its latest state.
                    let last = text
                        .trim_end()
                        .rsplit('\r')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(Event::Line(i, last));
                }
            }
        }
    })
}

fn wait_pid(pid: i32) -> ExitInfo {
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 writes both out-parameters.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child; the pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return ExitInfo {
            code: None,
            signal: None,
            maxrss_kib: 0,
            note: None,
        };
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    ExitInfo {
        code,
        signal,
        maxrss_kib: ru.ru_maxrss,
        note: None,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `.acpo/backup/<stage>/` (the stage name encoded as one file name, [`encode_name`]).
fn backup_dir(state: &Path, stage: &Stage) -> PathBuf {
    state.join("backup").join(encode_name(&stage.name))
}

/// `.acpo/params/<stage>.json`, the stage's declared params (`ACPO_PARAMS`).
fn params_file(state: &Path, stage: &Stage) -> PathBuf {
    state
        .join("params")
        .join(format!("{}.json", encode_name(&stage.name)))
}

/// `.acpo/logs/<stage>.log`, the stage's output.
fn log_file(state: &Path, stage: &Stage) -> PathBuf {
    state
        .join("logs")
        .join(format!("{}.log", encode_name(&stage.name)))
}

/// Whether the engine may move, remove or restore output `o` now (it resolves inside the
/// pipeline directory and is none of the engine's own paths, links followed).
fn confined(root: &Path, o: &str) -> bool {
    resolve_out(root, o).is_ok()
}

/// The stage's outputs that exist (and may be touched), each with the numbered name it gets
/// in a backup or partial folder (its index in `outs`).
fn existing_outs(root: &Path, stage: &Stage) -> Vec<(String, String)> {
    stage
        .outs
        .iter()
        .enumerate()
        .filter(|(_, o)| confined(root, o))
        .filter(|(_, o)| std::fs::symlink_metadata(root.join(o)).is_ok())
        .map(|(n, o)| (o.clone(), n.to_string()))
        .collect()
}

/// Whether a (path, numbered name) pair read from a backup or partial manifest is one the
/// engine may act on: a confined output and a plain number.
fn manifest_pair_ok(root: &Path, o: &str, n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && confined(root, o)
}

/// Moves a stage's existing outputs into `.acpo/backup/<stage>/` (a manifest first, so a
/// killed engine can put them back on its next start) and creates the outs' parents.
fn move_outs_aside(root: &Path, state: &Path, stage: &Stage) -> Result<()> {
    let dir = backup_dir(state, stage);
    remove_path(&dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let moved = existing_outs(root, stage);
    let manifest = serde_json::to_vec(&moved).unwrap_or_default();
    write_atomic(&dir.join("manifest.json"), &manifest)?;
    for (o, n) in &moved {
        let src = root.join(o);
        std::fs::rename(&src, dir.join(n)).map_err(|e| Error::io(&src, e))?;
    }
    for o in &stage.outs {
        ensure_parent(&root.join(o))?;
    }
    Ok(())
}

/// Puts the outputs moved aside back in place (removing whatever partial outputs exist).
fn restore_backup(root: &Path, state: &Path, stage: &Stage) -> Result<()> {
    restore_backup_dir(root, &backup_dir(state, stage))
}

/// Puts back what a backup folder's manifest lists. An entry that names a path the engine may
/// not touch (outside the directory, or reached through a link) is left in the folder, which
/// is then kept, and the error names it.
fn restore_backup_dir(root: &Path, dir: &Path) -> Result<()> {
    let manifest = dir.join("manifest.json");
    let Ok(bytes) = std::fs::read(&manifest) else {
        return remove_path(dir);
    };
    let moved: Vec<(String, String)> = serde_json::from_slice(&bytes).unwrap_or_default();
    let refused: Vec<&str> = moved
        .iter()
        .filter(|(o, n)| !manifest_pair_ok(root, o, n))
        .map(|(o, _)| o.as_str())
        .collect();
    for (o, n) in &moved {
        if !manifest_pair_ok(root, o, n) {
            continue;
        }
        let src = dir.join(n);
        if src.exists() || std::fs::symlink_metadata(&src).is_ok() {
            let dst = root.join(o);
            remove_path(&dst)?;
            ensure_parent(&dst)?;
            std::fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    if !refused.is_empty() {
        return Err(Error::Corrupt {
            path: dir.to_path_buf(),
            message: format!(
                "not restored: {} would be written outside the pipeline directory or onto the \
                 engine's own files (through a symbolic link); the backup is kept here",
                refused
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    remove_path(dir)
}

fn discard_backup(state: &Path, stage: &Stage) {
    let _ = remove_path(&backup_dir(state, stage));
}

/// `.acpo/partial/<stage>/` (the stage name encoded as one file name).
fn partial_dir(state: &Path, stage: &Stage) -> PathBuf {
    state.join("partial").join(encode_name(&stage.name))
}

/// What `.acpo/partial/<stage>/manifest.json` records: the stage key of the run that left the
/// outputs, and which numbered entry of the folder each output is.
#[derive(serde::Serialize, serde::Deserialize)]
struct PartialManifest {
    key: String,
    outs: Vec<(String, String)>,
}

/// After a failed or interrupted run: for a `persist` stage, moves the partial outputs into
/// `.acpo/partial/<stage>/` (replacing older ones) and appends a note to `msg`; otherwise
/// removes them. Either way the outs' paths are free afterwards for the backup to return.
fn settle_partial(root: &Path, state: &Path, stage: &Stage, key: &str, msg: String) -> String {
    if stage.persist {
        match keep_partial(root, state, stage, key) {
            Ok(true) => {
                return format!(
                    "{msg}; its partial outputs are kept in {} and the next run with the same \
                     inputs resumes from them",
                    partial_dir(state, stage).display()
                )
            }
            Ok(false) => {}
            Err(e) => return format!("{msg}; keeping its partial outputs failed: {e}"),
        }
    }
    for o in stage.outs.iter().filter(|o| confined(root, o)) {
        let _ = remove_path(&root.join(o));
    }
    msg
}

fn keep_partial(root: &Path, state: &Path, stage: &Stage, key: &str) -> Result<bool> {
    let dir = partial_dir(state, stage);
    remove_path(&dir)?;
    let outs = existing_outs(root, stage);
    if outs.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (o, n) in &outs {
        let src = root.join(o);
        std::fs::rename(&src, dir.join(n)).map_err(|e| Error::io(&src, e))?;
    }
    let manifest = PartialManifest {
        key: key.to_string(),
        outs,
    };
    write_atomic(
        &dir.join("manifest.json"),
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )?;
    Ok(true)
}

/// Before a `persist` stage runs: puts back the partial outputs an earlier run with the same
/// key left (true), or drops partial outputs of other inputs (false).
fn take_partial(root: &Path, state: &Path, stage: &Stage, key: &str) -> Result<bool> {
    let dir = partial_dir(state, stage);
    let manifest: Option<PartialManifest> = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let usable = |m: &PartialManifest| {
        m.key == key
            && m.outs
                .iter()
                .all(|(o, n)| stage.outs.contains(o) && manifest_pair_ok(root, o, n))
    };
    let Some(m) = manifest.filter(usable) else {
        remove_path(&dir)?;
        return Ok(false);
    };
    for (o, n) in &m.outs {
        let dst = root.join(o);
        ensure_parent(&dst)?;
        let src = dir.join(n);
        std::fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    remove_path(&dir)?;
    Ok(true)
}

/// After an engine that was killed outright: put back every output left moved aside.
/// Stops what an engine that was killed (not interrupted) left running, and keeps a persist
/// stage's partial outputs for its key, before [`recover_backups`] puts the earlier outputs
/// back (see [`crate::running`]).
fn stop_left_behind(ws: &Workspace, progress: &Progress) -> Result<()> {
    let state = ws.state_dir();
    for rec in crate::running::left_behind(&state) {
        let n = crate::running::stop(&rec, Duration::from_secs(5));
        if n > 0 {
            progress.line(&format!(
                "{}: stopped {n} process(es) that a killed acpo left running (process group {})",
                rec.stage, rec.pgid
            ));
        }
        if let Some(i) = ws.pipeline.index_of(&rec.stage) {
            let stage = &ws.pipeline.stages[i];
            if stage.persist && keep_partial(&ws.root, &state, stage, &rec.key)? {
                progress.line(&format!(
                    "{}: its partial outputs are kept in {} and the next run with the same \
                     inputs resumes from them",
                    rec.stage,
                    partial_dir(&state, stage).display()
                ));
            }
        }
        crate::running::remove(&state, &rec.stage);
    }
    Ok(())
}

fn recover_backups(ws: &Workspace, progress: &Progress) -> Result<()> {
    let dir = ws.state_dir().join("backup");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let name = decode_name(&file_name);
        if let Some(i) = name.as_deref().and_then(|n| ws.pipeline.index_of(n)) {
            for o in &ws.pipeline.stages[i].outs {
                if confined(&ws.root, o) {
                    remove_path(&ws.root.join(o))?;
                }
            }
        }
        let name = name.unwrap_or(file_name);
        progress.line(&format!(
            "{name}: restoring the outputs of an interrupted run"
        ));
        restore_backup_dir(&ws.root, &e.path())?;
    }
    Ok(())
}
