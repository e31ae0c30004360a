//! What a process that trains or samples on the CPU sets once at start-up, before it starts a
//! thread or a candle op: glibc malloc keeps freed memory for reuse ([`crate::malloc`]), and
//! candle's own thread pool stays empty unless the user sized it.
//!
//! Why the pool: candle 0.11 runs its elementwise ops on a pool of its own threads
//! (`candle-bp-*`, one fewer than rayon's), beside rayon's threads that run this project's ops.
//! After each op a pool thread spins up to 25,000 `pause`s before it sleeps, so on two cores it
//! competes with rayon's workers for the next op: `perf` of a training step
//! (`examples/throughput`, batch 16) counted 17 % of all samples in that spin.
//! `CANDLE_NUM_THREADS=1` leaves the pool without workers, and candle's ops run on the thread
//! that calls them. Five paired runs of the same binary on the 2-core EPYC of 2026-12-03, the
//! pool left empty or not: every pair faster without it, median step 0.329 s against 0.346 s
//! (-5 %); a short spin limit (`CANDLE_BARRIER_POOL_SPIN_LIMIT=1000`) was slower than either.

/// The variable candle reads, once, when it builds its pool.
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Sets up this process for CPU work (see the module docs). Call it first in `main`, while the
/// process has one thread: it may set an environment variable. A `CANDLE_NUM_THREADS` that is
/// already set is left as it is.
pub fn tune_cpu_process() {
    crate::malloc::retain_freed_memory();
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        // Single-threaded here (the caller's contract), before candle reads it.
        std::env::set_var(CANDLE_THREADS_VAR, "1");
    }
}
