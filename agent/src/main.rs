//! The `cairn` command: parse flags, set up logging, run the command, map
//! the outcome to an exit code (0 ok, 1 failed, 3 incomplete).

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_malloc();
    not_dumpable();
    cairn::cli::main()
}

/// Keep this process's memory and `/proc/<pid>/environ` from the programs
/// a job grants (they run as the same user): a process that is not
/// dumpable can be read only with CAP_SYS_PTRACE, which those programs
/// never get (see `runtime::host::confine`).
fn not_dumpable() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// glibc raises its mmap threshold each time a large block is freed, after
/// which multi-MiB chunk and pack buffers come from per-thread arenas and are
/// kept: resident memory then grows far past what is in use. A fixed
/// threshold returns every large buffer to the system when freed.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
