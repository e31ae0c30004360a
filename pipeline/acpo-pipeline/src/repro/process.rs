//! Running a stage's command here, and following one elsewhere: the parent-death signal,
//! the readers that forward its output, the waiter that reaps it (`wait4`, which also gives
//! peak memory), and the follower of a Slurm job's state and log.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) struct ExitInfo {
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) maxrss_kib: i64,
    /// What the executor adds to a failure (Slurm's job state, sbatch's refusal).
    pub(super) note: Option<String>,
}

pub(super) enum Event {
    Line(usize, String),
    Exit(usize, ExitInfo),
}

/// Makes the stage's `sh` get SIGKILL when the engine dies (Linux's parent-death signal), so a
/// `kill -9` of acpo or an out-of-memory kill does not leave the command running. A stage
/// command that is one program (`acpo stage ...`: `sh -c` execs it) dies outright; what a
/// compound command started in the background of its `sh` is stopped by the next `repro`
/// from the running record ([`crate::running`]). The signal follows the death of the thread
/// that spawned the child, which is the one running [`repro`] and outlives every stage.
pub(super) fn die_with_this_thread(cmd: &mut std::process::Command) {
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
pub(super) fn follow_job(i: usize, id: &str, log: &Path, tx: &Sender<Event>) {
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
            let _ = tx.send(Event::Line(i, latest_state(&line)));
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

/// A line of stage output as shown: a progress bar redraws with `\r`, so only its latest
/// state.
fn latest_state(line: &str) -> String {
    line.trim_end()
        .rsplit('\r')
        .next()
        .unwrap_or("")
        .to_string()
}

pub(super) fn spawn_reader(
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
                    let _ = tx.send(Event::Line(i, latest_state(&text)));
                }
            }
        }
    })
}

pub(super) fn wait_pid(pid: i32) -> ExitInfo {
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
