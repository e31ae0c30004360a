//! What an error says about who must act: one rule for every stage crate, which the binary
//! turns into its exit status in one place (`exit_code` in `src/main.rs`).
//!
//! An error is **bad input** (exit 2) when the user's side is at fault and rerunning cannot
//! help: a parameter or config field out of range, a file that is malformed, has the wrong
//! shape or checksum, or is missing because another stage or `just setup` must make it first,
//! a checkpoint of a different run. Anything else is a **failure** of the work itself (exit
//! 1): reading or writing a file, a numerical step, a tensor library or ONNX Runtime.

/// Implemented by every stage crate's error type.
pub trait BadInput {
    /// Whether this error is bad input (exit 2) rather than a failure (exit 1).
    fn is_bad_input(&self) -> bool;
}

impl BadInput for crate::AtomicError {
    /// Writing an output failed: a failure, never the input's fault.
    fn is_bad_input(&self) -> bool {
        false
    }
}
