//! The `walstream` command: argument parsing lives in `cli`, behaviour in the library.

mod cli;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    cli::main()
}

/// glibc gives every thread that meets contention an arena of its own (up to
/// eight per core), and each keeps freed memory: with three threads per
/// database that was 2-4 MB of the 31 MB a process replicating 100 idle
/// databases used (docs/benchmarks.md). walstream's threads mostly wait, so
/// two arenas cost little (within the noise of the throughput probe).
/// `MALLOC_ARENA_MAX` still overrides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists;
        // mallopt only changes a malloc tuning parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
