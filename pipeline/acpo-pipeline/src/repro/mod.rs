//! `repro`: run the stages that are not up to date, in topological order, in parallel up
//! to `-j` and the declared resources; restore from the run cache when a key was seen
//! before; keep earlier outputs and the lock intact when a stage fails or is interrupted.

mod process;
mod stage_run;
mod staging;

use process::Event;
use staging::{recover_backups, stop_left_behind};

use crate::error::{Error, Result};
use crate::hash::PathHash;
use crate::key::KeyInputs;
use crate::lock::LockEntry;
use crate::pipeline::{Resources, Stage};
use crate::progress::Progress;
use crate::runcache::{Restore, RunEntry};
use crate::workspace::{Reason, Workspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
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

/// The Slurm settings a stage runs with, or `None` to run here: its own `executor:` field
/// first, then `--executor`. A stage that asks for Slurm without `--executor slurm` gets the
/// default partition and the default time limit.
fn slurm_for(settings: &ReproSettings, stage: &Stage) -> Option<crate::slurm::SlurmSettings> {
    match stage.executor.as_deref() {
        Some("local") => None,
        Some("slurm") => Some(settings.slurm.clone().unwrap_or_default()),
        _ => settings.slurm.clone(),
    }
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
    let on_slurm: Vec<&Stage> = sel
        .iter()
        .map(|&i| &ws.pipeline.stages[i])
        .filter(|s| slurm_for(settings, s).is_some())
        .collect();
    if !on_slurm.is_empty() {
        let slurm = slurm_for(settings, on_slurm[0]).expect("a Slurm stage");
        crate::slurm::check_resources(&on_slurm, &slurm)?;
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
            if self.fits(&self.ws.pipeline.stages[i]) {
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

    fn fits(&self, stage: &Stage) -> bool {
        let r = &stage.resources;
        if self.running.is_empty() {
            return true;
        }
        if slurm_for(self.settings, stage).is_some() {
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
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
