//! Progress of long loops: an indicatif bar on a terminal; in a log, a plain line now and then.
//!
//! The engine runs every stage with its stderr piped into the run's log, where a drawn bar is
//! noise and a hidden one is silence (a stage could print nothing for minutes). So when stderr
//! is not a terminal the same bar is drawn to [`LogLines`], which writes the bar's rendered
//! line, as text, at most once every `ACPO_PROGRESS_SECS` seconds (default 30; 0 turns the
//! lines off). Callers use the ordinary `indicatif::ProgressBar` API either way.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Seconds between two log lines of one bar when stderr is not a terminal.
pub const DEFAULT_LOG_SECS: u64 = 30;

/// `ACPO_PROGRESS_SECS`, else [`DEFAULT_LOG_SECS`]; `None` when set to 0 (no lines).
fn log_interval() -> Option<Duration> {
    let secs = std::env::var("ACPO_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_LOG_SECS);
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// A bar over `len` steps with an indicatif `template` (e.g.
/// `"train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}"`).
pub fn bar_with_template(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), draw_target());
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

/// A bar over `len` steps labelled `label`: `label [elapsed] bar pos/len (rate, eta)`.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = bar_with_template(
        len,
        "{msg} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec}, eta {eta})",
    );
    pb.set_message(label.to_string());
    pb
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        return ProgressDrawTarget::stderr();
    }
    match log_interval() {
        // indicatif renders at most once a second; LogLines keeps one line per interval
        Some(every) => ProgressDrawTarget::term_like_with_hz(
            Box::new(LogLines::new(every, std::io::stderr())),
            1,
        ),
        None => ProgressDrawTarget::hidden(),
    }
}

/// An indicatif terminal that turns redraws into log lines: the text of a redraw is kept, and
/// written as one line when `every` has passed since the last line (the first after `every`
/// from creation, so short loops print nothing). Cursor movements and clears are ignored.
#[derive(Debug)]
pub struct LogLines<W: Write + Send + std::fmt::Debug> {
    every: Duration,
    state: Mutex<LogState<W>>,
}

#[derive(Debug)]
struct LogState<W> {
    out: W,
    frame: String,
    last: Instant,
}

impl<W: Write + Send + std::fmt::Debug> LogLines<W> {
    pub fn new(every: Duration, out: W) -> Self {
        LogLines {
            every,
            state: Mutex::new(LogState {
                out,
                frame: String::new(),
                last: Instant::now(),
            }),
        }
    }

    /// The writer (tests read what was logged).
    pub fn into_inner(self) -> W {
        self.state
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .out
    }

    fn push(&self, s: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.frame.is_empty() && !s.is_empty() {
            st.frame.push(' ');
        }
        st.frame.push_str(s.trim_end());
    }
}

impl<W: Write + Send + std::fmt::Debug> TermLike for LogLines<W> {
    fn width(&self) -> u16 {
        120
    }

    fn move_cursor_up(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(s);
        Ok(())
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.push(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let frame = std::mem::take(&mut st.frame);
        let line = frame.trim();
        if line.is_empty() || st.last.elapsed() < self.every {
            return Ok(());
        }
        st.last = Instant::now();
        writeln!(st.out, "{line}")?;
        st.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_one_line_per_interval_and_drop_clears() {
        let t = LogLines::new(Duration::from_millis(0), Vec::new());
        t.write_str("train [==>   ] 5/10").unwrap();
        t.flush().unwrap();
        t.clear_line().unwrap();
        t.flush().unwrap(); // an empty frame (a clear) writes nothing
        t.write_line("a").unwrap();
        t.write_str("b").unwrap();
        t.flush().unwrap();
        let out = String::from_utf8(t.into_inner()).unwrap();
        assert_eq!(out, "train [==>   ] 5/10\na b\n");

        let slow = LogLines::new(Duration::from_secs(3600), Vec::new());
        slow.write_str("x").unwrap();
        slow.flush().unwrap();
        assert!(slow.into_inner().is_empty(), "nothing before the interval");
    }

    #[test]
    fn a_bar_drawn_to_log_lines_writes_its_rendered_line() {
        use std::sync::Arc;
        #[derive(Debug, Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Shared::default();
        let target = ProgressDrawTarget::term_like(Box::new(LogLines::new(
            Duration::from_millis(0),
            buf.clone(),
        )));
        let pb = ProgressBar::with_draw_target(Some(4), target);
        pb.set_style(ProgressStyle::with_template("{msg} {pos}/{len}").unwrap());
        pb.set_message("encode");
        pb.set_position(3);
        pb.finish();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.lines().any(|l| l == "encode 3/4"), "{out:?}");
        assert!(
            out.lines().all(|l| !l.is_empty() && !l.contains('\x1b')),
            "{out:?}"
        );
    }
}
