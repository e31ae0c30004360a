//! Progress over stages: an indicatif bar when stderr is a terminal, plain lines otherwise.
//!
//! Every stage start and finish line carries a counter, the time since the run began and an
//! estimate of what is left: `[3/101 12m03s ~2h05m left]`. The estimate adds up, for every
//! stage not yet settled, the wall time `pipeline.lock` recorded for it last (what a running
//! stage has already spent is taken off), divided by the jobs; stages never timed are counted
//! apart (`+4 untimed`). Without a terminal a running stage that printed nothing for
//! `ACPO_HEARTBEAT_S` seconds (default 60) gets a line saying it still runs, so a log never
//! goes quiet for minutes.

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable that sets the heartbeat interval (seconds; 0 turns it off).
pub const HEARTBEAT_ENV: &str = "ACPO_HEARTBEAT_S";
const DEFAULT_HEARTBEAT_S: u64 = 60;

/// Reports stage progress and forwards stage output.
pub struct Progress {
    bar: Option<ProgressBar>,
    heartbeat: Option<Duration>,
    state: Mutex<State>,
}

struct State {
    began: Instant,
    total: usize,
    settled: usize,
    jobs: usize,
    /// Last recorded wall time of every stage not yet settled (`None`: never timed).
    expected: BTreeMap<String, Option<f64>>,
    /// Running stages: when they started and when they last printed (or were reported).
    running: BTreeMap<String, (Instant, Instant)>,
}

/// `1h05m`, `12m03s`, `45s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// A bar over `total` stages when `enabled` and stderr is a terminal; no estimates.
    pub fn new(enabled: bool, total: u64) -> Progress {
        Self::with_estimates(enabled, BTreeMap::new(), total as usize, 1)
    }

    /// Progress over the stages of `expected` (each with its last wall time, if any), run
    /// `jobs` at a time.
    pub fn with_estimates(
        enabled: bool,
        expected: BTreeMap<String, Option<f64>>,
        total: usize,
        jobs: usize,
    ) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} stages {elapsed} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        let heartbeat = std::env::var(HEARTBEAT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_HEARTBEAT_S);
        Progress {
            heartbeat: (enabled && bar.is_none() && heartbeat > 0)
                .then(|| Duration::from_secs(heartbeat)),
            bar,
            state: Mutex::new(State {
                began: Instant::now(),
                total,
                settled: 0,
                jobs: jobs.max(1),
                expected,
                running: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `[settled/total elapsed ~left]`: the counter that stage start and finish lines carry.
    pub fn counter(&self) -> String {
        let st = self.state();
        let now = Instant::now();
        let (mut left, mut untimed) = (0.0, 0usize);
        for (name, e) in &st.expected {
            match e {
                Some(s) => {
                    let spent = st
                        .running
                        .get(name)
                        .map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64());
                    left += (s - spent).max(0.0);
                }
                None => untimed += 1,
            }
        }
        let mut s = format!(
            "[{}/{} {}",
            st.settled,
            st.total,
            duration(st.began.elapsed().as_secs_f64())
        );
        if !st.expected.is_empty() {
            s.push_str(&format!(" ~{} left", duration(left / st.jobs as f64)));
            if untimed > 0 {
                s.push_str(&format!(" +{untimed} untimed"));
            }
        }
        s.push(']');
        s
    }

    /// Prints one line (above the bar, if any).
    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    /// A stage starts: its line carries the counter.
    pub fn started(&self, stage: &str, s: &str) {
        let now = Instant::now();
        self.state().running.insert(stage.to_string(), (now, now));
        self.line(&format!("{} {s}", self.counter()));
    }

    /// A stage is settled (ran, restored, up to date, failed or skipped); `s`, if any, is
    /// printed with the counter.
    pub fn settled(&self, stage: &str, s: Option<&str>) {
        {
            let mut st = self.state();
            st.settled += 1;
            st.expected.remove(stage);
            st.running.remove(stage);
        }
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        if let Some(s) = s {
            self.line(&format!("{} {s}", self.counter()));
        }
    }

    /// A line of a stage's output: printed with the stage's name; the bar shows the latest.
    pub fn stage_output(&self, stage: &str, text: &str) {
        if let Some(r) = self.state().running.get_mut(stage) {
            r.1 = Instant::now();
        }
        match &self.bar {
            Some(b) => {
                b.set_message(format!("{stage}: {text}"));
                b.println(format!("[{stage}] {text}"));
            }
            None => eprintln!("[{stage}] {text}"),
        }
    }

    /// Without a terminal: a line for every running stage silent for the heartbeat interval.
    pub fn heartbeat(&self) {
        let Some(every) = self.heartbeat else {
            return;
        };
        let now = Instant::now();
        let mut lines = Vec::new();
        {
            let mut st = self.state();
            let expected = st.expected.clone();
            for (name, (began, last)) in st.running.iter_mut() {
                if now.duration_since(*last) >= every {
                    *last = now;
                    let ran = duration(now.duration_since(*began).as_secs_f64());
                    let last_time = match expected.get(name) {
                        Some(Some(s)) => format!(", {} last time", duration(*s)),
                        _ => String::new(),
                    };
                    lines.push(format!(
                        "[{name}] still running ({ran}{last_time}; no output for {})",
                        duration(every.as_secs_f64())
                    ));
                }
            }
        }
        for l in lines {
            eprintln!("{l}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(723.0), "12m03s");
        assert_eq!(duration(3900.0), "1h05m");
    }

    #[test]
    fn the_estimate_adds_the_last_times_of_what_is_left() {
        let expected: BTreeMap<String, Option<f64>> = [
            ("a".to_string(), Some(600.0)),
            ("b".to_string(), Some(1200.0)),
            ("c".to_string(), None),
        ]
        .into();
        let p = Progress::with_estimates(false, expected, 3, 1);
        assert_eq!(p.counter(), "[0/3 0s ~30m00s left +1 untimed]");
        p.settled("b", None);
        assert_eq!(p.counter(), "[1/3 0s ~10m00s left +1 untimed]");
        let p2 = Progress::with_estimates(
            false,
            [
                ("a".to_string(), Some(600.0)),
                ("b".to_string(), Some(600.0)),
            ]
            .into(),
            2,
            2,
        );
        assert_eq!(p2.counter(), "[0/2 0s ~10m00s left]");
        assert_eq!(Progress::new(false, 4).counter(), "[0/4 0s]");
    }
}
