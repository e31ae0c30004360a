//! `malloc::retain_freed_memory` in a process of its own (it changes the process's allocator):
//! after it, a large buffer freed and allocated again costs no new page faults. 48 MiB: above
//! glibc's largest mmap threshold (32 MiB), so by default always a fresh mapping, and within
//! the 64 MiB heaps of the arena a test thread allocates from.

/// Bytes of the buffer.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const SIZE: usize = 48 << 20;

/// Minor page faults of this process so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given, which is zero-initialisable.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_minflt
}

/// Faults taken while allocating, touching and freeing a [`SIZE`] buffer.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_a_large_buffer() -> i64 {
    let before = minor_faults();
    let mut v = vec![0u8; SIZE];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
    drop(v);
    minor_faults() - before
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_large_buffer_is_reused_without_page_faults() {
    // glibc's default: each buffer is a fresh mapping, a fault per 4 KiB page touched
    let pages = SIZE as i64 / 4096;
    assert!(faults_of_a_large_buffer() > pages / 2);
    assert!(faults_of_a_large_buffer() > pages / 2, "mmap by default");
    assert!(acpo_diffusion::malloc::retain_freed_memory());
    faults_of_a_large_buffer(); // the heap grows once
    let again = faults_of_a_large_buffer();
    assert!(
        again < pages / 50,
        "{again} faults after retain_freed_memory"
    );
}
