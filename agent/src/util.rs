//! Small helpers shared across the crate.

/// The host name recorded in snapshots (and used to pick a job's parent,
/// its retention group and its drilled snapshot): `$CAIRN_HOSTNAME` when
/// set (a pod, whose own name changes at each restart, sets its node's),
/// else the system's host name.
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("CAIRN_HOSTNAME")
        && !h.is_empty()
    {
        return h;
    }
    system_hostname()
}

/// The kernel's host name, recorded in locks. Not `$CAIRN_HOSTNAME`: a
/// lock's process id is only meaningful in the PID namespace (the host or
/// the pod) that wrote it, and two of them may share a node's name.
pub fn system_hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
