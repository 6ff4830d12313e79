//! Small helpers shared across the crate.

/// This host's name, as restic records it in snapshots and locks:
/// `$CAIRN_HOSTNAME` when set (a pod, whose own name changes at each
/// restart, sets it to its node's), else the system's host name.
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("CAIRN_HOSTNAME")
        && !h.is_empty()
    {
        return h;
    }
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
