//! Allocator tuning for training and sampling on the CPU.
//!
//! A training step allocates and frees many activation-sized buffers (megabytes each). With
//! glibc's defaults, blocks above the dynamic mmap threshold are fresh `mmap`s and freed memory
//! at the top of the heap is returned to the kernel, so every step page-faults its buffers in
//! again: measured on the 2-core machine, the cpu-profile UNet step spent about 7 s of 12 s in
//! the kernel (`throughput` example, batch 32). Keeping freed memory in the process removes
//! that. Blocks above glibc's largest mmap threshold (32 MiB) are always fresh `mmap`s, so no
//! block is mapped at all: the FID Inception's activations at batch 16 are up to 88 MB, and
//! with them mapped anew each time, the kernel's page zeroing (`clear_page_erms`) was 9 % of a
//! profile of its bench; without `mmap`, the candle forward measured 4-15 % faster in three
//! alternated pairs (bench/README, "Inception against ONNX Runtime"). Binaries call it once at start-up, through [`crate::startup::tune_cpu_process`]; it is a
//! no-op off glibc.

/// Blocks up to this size come from the heap rather than from `mmap` (glibc's maximum, 32 MiB
/// on 64-bit).
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory kept at the top of the heap before it is returned to the kernel.
pub const TRIM_THRESHOLD: i32 = i32::MAX;
/// Blocks allocated with `mmap` at most at once: none, every block comes from a heap (for a
/// thread's arena, one of at most 64 MiB; larger blocks there are still mapped).
pub const MMAP_MAX: i32 = 0;
/// Extra memory requested from the kernel each time the heap grows.
pub const TOP_PAD: i32 = 256 << 20;

/// Tells glibc malloc to keep freed memory for reuse (see the module docs). Returns whether
/// every setting was accepted (always `true` off glibc, where nothing is changed).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator tuning parameters; it is safe to call at
        // any time, and these values are within glibc's documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_MMAP_MAX, MMAP_MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_accepted() {
        assert!(super::retain_freed_memory());
    }
}
