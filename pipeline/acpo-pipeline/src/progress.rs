//! Progress over stages: an indicatif bar when stderr is a terminal, plain lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Reports stage progress and forwards stage output.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` stages when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool, total: u64) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} stages {elapsed} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Progress { bar }
    }

    /// Prints one line (above the bar, if any).
    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    /// A line of a stage's output: printed with the stage's name; the bar shows the latest.
    pub fn stage_output(&self, stage: &str, text: &str) {
        match &self.bar {
            Some(b) => {
                b.set_message(format!("{stage}: {text}"));
                b.println(format!("[{stage}] {text}"));
            }
            None => eprintln!("[{stage}] {text}"),
        }
    }

    /// One more stage settled.
    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
