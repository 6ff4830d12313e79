//! Small helpers shared across the crate.

/// This host's name, as restic records it in snapshots and locks.
pub fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
