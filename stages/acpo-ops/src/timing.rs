//! Opt-in wall-clock timing of the hand-written ops, per op class and direction: the per-op
//! split of a training or sampling step that the roofline bench (`examples/roofline.rs` of
//! acpo-diffusion) reports beside its GFLOP/s.
//!
//! Off by default, when each op pays one relaxed atomic load. [`enable`] turns it on for the
//! whole process; every op call then adds its elapsed time and one call to its class's
//! counters, which [`snapshot`] reads and [`reset`] clears. The classes cover the time spent
//! inside each op's own kernel (including the copies to and from candle's storage); candle's
//! generic ops between them (additions, concatenation, the SiLU of the time embedding, the
//! linear layers, autograd's bookkeeping) are what a caller's total minus their sum leaves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What an op call is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// [`crate::conv`] forward.
    ConvForward,
    /// [`crate::conv`] backward (input, weight and bias gradients).
    ConvBackward,
    /// [`crate::norm`] forward (GroupNorm, with SiLU when fused).
    NormForward,
    /// [`crate::norm`] backward.
    NormBackward,
    /// [`crate::attention`] forward.
    AttentionForward,
    /// [`crate::attention`] backward.
    AttentionBackward,
}

impl OpClass {
    /// Every class, in [`OpTimes`]' order.
    pub const ALL: [OpClass; 6] = [
        OpClass::ConvForward,
        OpClass::ConvBackward,
        OpClass::NormForward,
        OpClass::NormBackward,
        OpClass::AttentionForward,
        OpClass::AttentionBackward,
    ];

    /// A short name for tables and JSON: `conv_forward`, ...
    pub fn name(self) -> &'static str {
        match self {
            OpClass::ConvForward => "conv_forward",
            OpClass::ConvBackward => "conv_backward",
            OpClass::NormForward => "norm_forward",
            OpClass::NormBackward => "norm_backward",
            OpClass::AttentionForward => "attention_forward",
            OpClass::AttentionBackward => "attention_backward",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const CLASSES: usize = OpClass::ALL.len();

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];
static CALLS: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];

/// Turns the counters on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether op calls are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Sets every counter to zero.
pub fn reset() {
    for c in NANOS.iter().chain(CALLS.iter()) {
        c.store(0, Ordering::Relaxed);
    }
}

/// Seconds and calls of one class since the last [`reset`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClassTime {
    pub seconds: f64,
    pub calls: u64,
}

/// The counters of every class, indexed like [`OpClass::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OpTimes(pub [ClassTime; CLASSES]);

impl OpTimes {
    /// One class's counters.
    pub fn get(&self, class: OpClass) -> ClassTime {
        self.0[class.index()]
    }

    /// Seconds summed over every class.
    pub fn total_seconds(&self) -> f64 {
        self.0.iter().map(|c| c.seconds).sum()
    }

    /// `self - earlier`, class by class: what happened between two snapshots.
    pub fn since(&self, earlier: &OpTimes) -> OpTimes {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(&earlier.0) {
            o.seconds -= e.seconds;
            o.calls -= e.calls;
        }
        out
    }
}

/// The counters now.
pub fn snapshot() -> OpTimes {
    let mut out = OpTimes::default();
    for (i, slot) in out.0.iter_mut().enumerate() {
        *slot = ClassTime {
            seconds: NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
            calls: CALLS[i].load(Ordering::Relaxed),
        };
    }
    out
}

/// Counts the time until it is dropped against its class (nothing when timing is off).
#[must_use = "the span counts until it is dropped"]
pub(crate) struct Span {
    class: OpClass,
    start: Option<Instant>,
}

/// Starts timing one call of `class`.
pub(crate) fn span(class: OpClass) -> Span {
    Span {
        class,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let i = self.class.index();
            NANOS[i].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The process-wide counters are exercised through the ops in `tests/timing.rs`, a test
    // binary of its own: here, other tests run ops in parallel and would count too.
    #[test]
    fn since_subtracts_class_by_class() {
        let mut later = OpTimes::default();
        later.0[OpClass::NormBackward.index()] = ClassTime {
            seconds: 3.0,
            calls: 5,
        };
        later.0[OpClass::ConvForward.index()] = ClassTime {
            seconds: 1.0,
            calls: 2,
        };
        let mut earlier = OpTimes::default();
        earlier.0[OpClass::NormBackward.index()] = ClassTime {
            seconds: 1.0,
            calls: 1,
        };
        let d = later.since(&earlier);
        assert_eq!(d.get(OpClass::NormBackward).calls, 4);
        assert_eq!(d.get(OpClass::ConvForward).calls, 2);
        assert_eq!(d.total_seconds(), 3.0);
        assert_eq!(OpClass::ALL.map(|c| c.index()), [0, 1, 2, 3, 4, 5]);
    }
}
