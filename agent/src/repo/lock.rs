//! Repository locks, restic's way: a small encrypted JSON file under
//! `locks/`, refreshed while its holder lives. A lock is stale when it is
//! older than [`STALE_AFTER`] or when it names a process on this host that no
//! longer exists; stale locks are removed automatically.

use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Serialize};

/// A lock not refreshed for this long is stale (restic uses 30 minutes).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(30);
/// A held lock that could not be refreshed for this long is no longer
/// trusted (half of [`STALE_AFTER`]): the holder stops before recording work.
pub const TRUST_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// How often a held lock is refreshed (restic uses 5 minutes).
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// A lock file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    /// When it was created or last refreshed.
    pub time: DateTime<FixedOffset>,
    /// Whether it excludes every other lock.
    pub exclusive: bool,
    /// The holder's host.
    pub hostname: String,
    /// The holder's user.
    #[serde(default)]
    pub username: String,
    /// The holder's process id.
    pub pid: i64,
    /// The holder's numeric user.
    #[serde(default)]
    pub uid: u32,
    /// The holder's numeric group.
    #[serde(default)]
    pub gid: u32,
}

impl Lock {
    /// A lock for this process.
    pub fn for_this_process(exclusive: bool) -> Self {
        Lock {
            time: Local::now().fixed_offset(),
            exclusive,
            hostname: crate::util::system_hostname(),
            username: whoami::username(),
            pid: std::process::id() as i64,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    /// Whether the lock is stale: too old, or its process on this host is gone.
    pub fn is_stale(&self) -> bool {
        if Local::now().fixed_offset() - self.time > STALE_AFTER {
            return true;
        }
        if self.hostname != crate::util::system_hostname() {
            return false;
        }
        !process_exists(self.pid)
    }
}

fn process_exists(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let signalable = match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // EPERM: it exists but belongs to someone else.
        Err(e) => e == rustix::io::Errno::PERM,
    };
    signalable && !is_zombie(pid)
}

/// A killed process whose parent died too stays a zombie until an init
/// reaps it (some container inits never do): it still takes signals, but
/// it will never refresh or remove its lock.
fn is_zombie(pid: rustix::process::Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}
