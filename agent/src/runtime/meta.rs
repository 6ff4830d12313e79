//! Conversions between the WIT metadata record and restic tree nodes.

use super::bindings::cairn::adapter0_1_0::types::{AdapterError, EntryKind, Metadata, Timestamp};
use crate::repo::tree::{Node, go_mode};
use chrono::{DateTime, FixedOffset};

pub(super) fn to_time(t: Option<Timestamp>) -> Option<DateTime<FixedOffset>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, t.nanoseconds).map(|d| d.fixed_offset())
}

pub(super) fn from_time(t: Option<DateTime<FixedOffset>>) -> Option<Timestamp> {
    let t = t?;
    // Go's zero time (year 1) means "unknown".
    if t.timestamp() <= -62_135_596_800 {
        return None;
    }
    Some(Timestamp {
        seconds: t.timestamp(),
        nanoseconds: t.timestamp_subsec_nanos(),
    })
}

/// A tree node for an entry of `kind` with metadata `m`.
pub(super) fn node_from(kind: EntryKind, m: &Metadata) -> Node {
    let (type_name, type_bits) = match kind {
        EntryKind::File | EntryKind::Stream => ("file", 0),
        EntryKind::Directory => ("dir", go_mode::DIR),
        EntryKind::Symlink => ("symlink", go_mode::SYMLINK),
    };
    let mut n = Node::new("", type_name);
    n.mode = go_mode::from_unix(m.mode, type_bits);
    n.mtime = to_time(m.mtime);
    n.atime = to_time(m.atime).or(n.mtime);
    n.ctime = to_time(m.ctime).or(n.mtime);
    n.uid = m.uid.unwrap_or(0);
    n.gid = m.gid.unwrap_or(0);
    n.size = m.size.unwrap_or(0);
    n.inode = m.inode.unwrap_or(0);
    n.device_id = m.device.unwrap_or(0);
    n.links = m.links.unwrap_or(0);
    if n.kind == "file" {
        n.content = Some(Vec::new());
    }
    n
}

/// The WIT view of a stored node.
pub(super) fn metadata_of(n: &Node) -> Metadata {
    Metadata {
        mode: go_mode::to_unix_perm(n.mode),
        mtime: from_time(n.mtime),
        atime: from_time(n.atime),
        ctime: from_time(n.ctime),
        uid: Some(n.uid),
        gid: Some(n.gid),
        size: (n.kind == "file").then_some(n.size),
        inode: (n.inode != 0).then_some(n.inode),
        device: (n.device_id != 0).then_some(n.device_id),
        links: (n.links != 0).then_some(n.links),
    }
}

/// The WIT kind of a stored node; `None` for kinds adapters cannot restore
/// (devices, fifos, sockets).
pub(super) fn kind_of(n: &Node) -> Option<EntryKind> {
    match n.kind.as_str() {
        "file" => Some(EntryKind::File),
        "dir" => Some(EntryKind::Directory),
        "symlink" => Some(EntryKind::Symlink),
        _ => None,
    }
}

/// Metadata from an `lstat`.
pub(super) fn metadata_from_stat(st: &rustix::fs::Stat) -> (Option<EntryKind>, Metadata) {
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFREG => Some(EntryKind::File),
        libc::S_IFDIR => Some(EntryKind::Directory),
        libc::S_IFLNK => Some(EntryKind::Symlink),
        _ => None,
    };
    let ts = |s: i64, ns: i64| {
        Some(Timestamp {
            seconds: s,
            nanoseconds: ns.clamp(0, 999_999_999) as u32,
        })
    };
    let meta = Metadata {
        mode: st.st_mode & 0o7777,
        mtime: ts(st.st_mtime, st.st_mtime_nsec as i64),
        atime: ts(st.st_atime, st.st_atime_nsec as i64),
        ctime: ts(st.st_ctime, st.st_ctime_nsec as i64),
        uid: Some(st.st_uid),
        gid: Some(st.st_gid),
        size: (fmt == libc::S_IFREG || fmt == libc::S_IFLNK).then_some(st.st_size as u64),
        inode: Some(st.st_ino),
        device: Some(st.st_dev),
        links: Some(st.st_nlink),
    };
    (kind, meta)
}

/// Words for an adapter's error. Its text is the adapter's (or a program's
/// standard error): made safe to print (see [`crate::util::indented`]).
pub(super) fn case_name(e: &AdapterError) -> &'static str {
    match e {
        AdapterError::InvalidConfig(_) => "invalid-config",
        AdapterError::NotFound(_) => "not-found",
        AdapterError::Denied(_) => "denied",
        AdapterError::Io(_) => "io",
        AdapterError::Corrupt(_) => "corrupt",
        AdapterError::Other(_) => "other",
    }
}

pub(super) fn describe_error(e: &AdapterError) -> String {
    let safe = crate::util::indented;
    match e {
        AdapterError::InvalidConfig(m) => format!("invalid configuration: {}", safe(m)),
        AdapterError::NotFound(m) => format!("not found: {}", safe(m)),
        AdapterError::Denied(m) => format!("denied: {}", safe(m)),
        AdapterError::Io(m) => format!("I/O error: {}", safe(m)),
        AdapterError::Corrupt(m) => format!("damaged repository data: {}", safe(m)),
        AdapterError::Other(m) => safe(m),
    }
}
