//! glibc malloc tuning for the `walstream` process (an application embedding
//! the library keeps its own). Each setting yields to its `MALLOC_*`
//! environment variable.

/// glibc gives every thread that meets contention an arena of its own (up to
/// eight per core), and each keeps freed memory: with three threads per
/// database that was 2-4 MB of the 31 MB a process replicating 100 idle
/// databases used (docs/benchmarks.md). walstream's threads mostly wait, so
/// two arenas cost little (within the noise of the throughput probe).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(libc::M_ARENA_MAX, "MALLOC_ARENA_MAX", 2);
}

/// For a command that runs to completion (restore): freed memory is kept for
/// reuse instead of returned to the kernel and faulted in again. A restore
/// of a long history reads hundreds of objects into fresh buffers; with
/// glibc's defaults a third of its page faults came from that
/// (docs/benchmarks.md, "Restore: buffers reused").
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        set(libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 32 << 20);
        set(libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 128 << 20);
        set(libc::M_TOP_PAD, "MALLOC_TOP_PAD_", 16 << 20);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(param: libc::c_int, env: &str, value: libc::c_int) {
    if std::env::var_os(env).is_none() {
        // SAFETY: called before the async runtime starts, while main's thread
        // is the only one; mallopt only changes a malloc tuning parameter.
        unsafe {
            libc::mallopt(param, value);
        }
    }
}
