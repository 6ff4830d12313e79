//! Repository locks, restic's way: a small encrypted JSON file under
//! `locks/`, refreshed while its holder lives. A lock is stale when it is
//! older than [`STALE_AFTER`] or when it names a process on this host that no
//! longer exists; stale locks are removed automatically.
//!
//! A lock is held by a [`LockGuard`]; dropping the guard releases it, and
//! the process's exit path removes whatever a stopped command still held.

use super::{Id, RepoError, Repository};
use crate::storage::FileType;
use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

impl Repository {
    /// Try again for up to `d` when a conflicting lock is held (restic's
    /// `--retry-lock`).
    pub fn set_lock_retry(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.lock_retry
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Take a lock (shared, or exclusive), removing stale locks on the way,
    /// trying again every 1 to 3 seconds (jittered, so two waiting
    /// processes do not collide in step) for up to the retry time set.
    /// The lock is refreshed in the background until its guard is dropped,
    /// which removes it.
    pub async fn lock(self: &Arc<Self>, exclusive: bool) -> Result<LockGuard, RepoError> {
        let retry = self.lock_retry.load(std::sync::atomic::Ordering::Relaxed);
        self.lock_within(exclusive, std::time::Duration::from_millis(retry))
            .await
    }

    /// [`Repository::lock`], trying again for up to `wait` whatever the
    /// retry time set (zero: once).
    pub async fn lock_within(
        self: &Arc<Self>,
        exclusive: bool,
        wait: std::time::Duration,
    ) -> Result<LockGuard, RepoError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.lock_once(exclusive).await {
                Err(RepoError::Locked(who)) if std::time::Instant::now() < deadline => {
                    tracing::info!(holder = %who, "The repository is locked; trying again.");
                    let pause = 1000 + u64::from(rand::random::<u16>() % 2000);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                other => return other,
            }
        }
    }

    async fn lock_once(self: &Arc<Self>, exclusive: bool) -> Result<LockGuard, RepoError> {
        // A lock this process dropped a moment ago is not someone else's.
        settle_dropped(Some(self)).await;
        self.check_locks(exclusive, None).await?;
        let lock = Lock::for_this_process(exclusive);
        let id = self
            .save_unpacked(FileType::Lock, &serde_json::to_vec(&lock).expect("lock"))
            .await?;
        // Someone may have locked between our look and our write: look again.
        if let Err(e) = self.check_locks(exclusive, Some(id)).await {
            let _ = self.backend.remove(FileType::Lock, &id.to_hex()).await;
            return Err(e);
        }
        let current = Arc::new(tokio::sync::Mutex::new(id));
        // The time written into the lock file: others judge staleness by it.
        let refreshed = Arc::new(std::sync::Mutex::new(lock.time));
        let refresher = {
            let repo = Arc::clone(self);
            let current = Arc::clone(&current);
            let refreshed = Arc::clone(&refreshed);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH_EVERY).await;
                    let lock = Lock::for_this_process(exclusive);
                    let json = serde_json::to_vec(&lock).expect("lock");
                    let mut cur = current.lock().await;
                    match repo.save_unpacked(FileType::Lock, &json).await {
                        Ok(new) => {
                            let _ = repo.backend.remove(FileType::Lock, &cur.to_hex()).await;
                            *cur = new;
                            *refreshed.lock().expect("refresh time") = lock.time;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not refresh the repository lock.");
                        }
                    }
                }
            })
        };
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        held().push(Held {
            token,
            repo: Arc::clone(self),
            current: Arc::clone(&current),
            refresher: refresher.abort_handle(),
            removal: None,
        });
        Ok(LockGuard {
            refresher,
            refreshed,
            token,
        })
    }

    /// Remove the locks whose holders are gone (a lock left in a region
    /// that lagged, say); live locks stay.
    pub async fn remove_stale_locks(&self) -> Result<(), RepoError> {
        self.check_locks(false, None).await
    }

    async fn check_locks(&self, exclusive: bool, ours: Option<Id>) -> Result<(), RepoError> {
        for (name, _) in self.backend.list(FileType::Lock).await? {
            if ours.map(|o| o.to_hex()) == Some(name.clone()) {
                continue;
            }
            // Like restic, a lock that cannot be read (planted junk, a
            // name that is no ID, another key's lock) holds nothing back.
            let lock: Result<Lock, String> = match self.load_unpacked(FileType::Lock, &name).await {
                Ok(plain) => serde_json::from_slice(&plain).map_err(|e| e.to_string()),
                // Removed by its holder while we listed.
                Err(RepoError::Storage(e)) if e.is_not_found() => continue,
                Err(e @ RepoError::Corrupt { .. }) => Err(e.to_string()),
                Err(e) => return Err(e),
            };
            let lock = match lock {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(lock = %crate::util::escaped(&name), %error, "Ignoring an unreadable lock.");
                    continue;
                }
            };
            if lock.is_stale() {
                tracing::info!(lock = %crate::util::escaped(&name), host = %lock.hostname, pid = lock.pid, "Removing a stale lock.");
                self.backend.remove(FileType::Lock, &name).await?;
                continue;
            }
            if exclusive || lock.exclusive {
                return Err(RepoError::Locked(format!(
                    "{}by pid {} on {} (user {}) since {}",
                    if lock.exclusive { "exclusively " } else { "" },
                    lock.pid,
                    lock.hostname,
                    lock.username,
                    lock.time
                )));
            }
        }
        Ok(())
    }
}

/// A held lock. Dropping it releases it: the refresh stops and the lock
/// file is removed in the background, and the process waits for that
/// removal before it exits ([`release_held_locks`]). A removal that fails
/// is tried once more on the way out; a lock left behind after that goes
/// stale and is cleared by the next process that locks.
pub struct LockGuard {
    refresher: tokio::task::JoinHandle<()>,
    /// Wall-clock time of the lock file's last successful write: others
    /// judge staleness by the time inside it, so we do too.
    refreshed: Arc<std::sync::Mutex<chrono::DateTime<chrono::FixedOffset>>>,
    /// This lock's entry in [`HELD`].
    token: u64,
}

/// One lock this process holds, from the moment it is written until its
/// file is removed.
struct Held {
    token: u64,
    repo: Arc<Repository>,
    current: Arc<tokio::sync::Mutex<Id>>,
    refresher: tokio::task::AbortHandle,
    /// The removal its guard's drop started, if it did.
    removal: Option<tokio::task::JoinHandle<()>>,
}

/// Every lock this process holds. A command stopped by a signal or a
/// deadline may be stuck where its guard can never be dropped (a blocking
/// read); the exit path still finds its lock here and removes it.
static HELD: std::sync::Mutex<Vec<Held>> = std::sync::Mutex::new(Vec::new());
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);
/// How long removing one lock file may take on the way out.
const REMOVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    // The list stays consistent whatever panicked while holding it: each
    // change is one push, retain or field write.
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remove one held lock's file (after a refresh in flight, which moves it
/// to a new file); true when it is gone.
async fn remove_lock_file(repo: &Repository, current: &tokio::sync::Mutex<Id>) -> bool {
    let id = match tokio::time::timeout(REMOVE_WITHIN, current.lock()).await {
        Ok(id) => *id,
        Err(_) => {
            tracing::warn!("A lock refresh did not finish; its lock will be cleared as stale.");
            return false;
        }
    };
    match tokio::time::timeout(
        REMOVE_WITHIN,
        repo.backend.remove(FileType::Lock, &id.to_hex()),
    )
    .await
    {
        Ok(Ok(())) => {
            tracing::debug!(lock = %id.short(), "Removed the repository lock.");
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "Could not remove the repository lock yet.");
            false
        }
        Err(_) => {
            tracing::debug!("Removing the repository lock timed out.");
            false
        }
    }
}

/// Wait (a bounded time) for the removals that dropped guards started, of
/// `repo`'s locks only when given. The handles stay in place: whoever else
/// waits sees the same removals.
async fn settle_dropped(repo: Option<&Repository>) {
    let deadline = tokio::time::Instant::now() + REMOVE_WITHIN;
    loop {
        let pending = held().iter().any(|h| {
            repo.is_none_or(|r| std::ptr::eq(Arc::as_ptr(&h.repo), r))
                && h.removal.as_ref().is_some_and(|t| !t.is_finished())
        });
        if !pending || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Remove the lock files this process still holds (a command stopped by a
/// signal, a deadline or an early return, or a removal that failed once),
/// so they do not wait to go stale. Their refreshers stop first, so none is
/// written again after.
pub async fn release_held_locks() {
    settle_dropped(None).await;
    let left = std::mem::take(&mut *held());
    for h in left {
        h.refresher.abort();
        if !remove_lock_file(&h.repo, &h.current).await {
            tracing::warn!("Could not remove a repository lock; it will be cleared as stale.");
        }
    }
}

impl LockGuard {
    /// Fail if the lock could not be refreshed for so long that another
    /// process may have removed it as stale: work done under it must not
    /// be recorded as if it had been protected.
    pub fn ensure_held(&self) -> Result<(), RepoError> {
        let last = *self.refreshed.lock().expect("refresh time");
        let age = chrono::Local::now().signed_duration_since(last);
        if age.to_std().unwrap_or_default() >= TRUST_FOR {
            return Err(RepoError::LockLost(format!(
                "the repository lock could not be refreshed for {} minutes; another process may have removed it",
                TRUST_FOR.as_secs() / 60
            )));
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
        // Outside a runtime the lock stays listed, for the exit path.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut list = held();
        let Some(h) = list.iter_mut().find(|h| h.token == self.token) else {
            return;
        };
        let (token, repo, current) = (h.token, h.repo.clone(), h.current.clone());
        h.removal = Some(runtime.spawn(async move {
            if remove_lock_file(&repo, &current).await {
                held().retain(|h| h.token != token);
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{memory_repo, runtime};

    /// These tests look at the process-wide list of held locks (and some
    /// empty it): one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn dropping_the_guard_removes_the_lock_file() {
        let _one = serial();
        runtime().block_on(async {
            let (backend, repo) = memory_repo("locks").await;
            let guard = repo.lock(false).await.unwrap();
            assert_eq!(backend.names(FileType::Lock).len(), 1);
            drop(guard);
            settle_dropped(None).await;
            assert!(backend.names(FileType::Lock).is_empty());
        });
    }

    #[test]
    fn an_exclusive_lock_waits_for_no_one_once_the_shared_one_is_dropped() {
        let _one = serial();
        runtime().block_on(async {
            let (_, repo) = memory_repo("locks").await;
            let shared = repo.lock(false).await.unwrap();
            let refused = repo.lock(true).await.err().expect("refused");
            assert!(matches!(refused, RepoError::Locked(_)), "{refused}");
            // A second shared lock is fine.
            let other = repo.lock(false).await.unwrap();
            drop(shared);
            drop(other);
            // The drop's removal is waited for before locking again.
            let exclusive = repo.lock(true).await.unwrap();
            exclusive.ensure_held().unwrap();
        });
    }

    #[test]
    fn with_a_retry_time_a_lock_waits_for_the_holder_to_let_go() {
        let _one = serial();
        runtime().block_on(async {
            let (_, repo) = memory_repo("locks").await;
            let exclusive = repo.lock(true).await.unwrap();
            repo.set_lock_retry(std::time::Duration::from_secs(20));
            let started = std::time::Instant::now();
            let release = tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                drop(exclusive);
            });
            let shared = repo.lock(false).await.unwrap();
            assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
            shared.ensure_held().unwrap();
            release.await.unwrap();
            drop(shared);
            // A retry time that runs out ends in the same refusal.
            let held = repo.lock(true).await.unwrap();
            repo.set_lock_retry(std::time::Duration::from_millis(1));
            let refused = repo.lock(false).await.err().expect("refused");
            assert!(matches!(refused, RepoError::Locked(_)), "{refused}");
            drop(held);
        });
    }

    #[test]
    fn a_lock_of_a_process_that_is_gone_is_removed_as_stale() {
        let _one = serial();
        runtime().block_on(async {
            let (backend, repo) = memory_repo("locks").await;
            let mut dead = Lock::for_this_process(true);
            // No process has this pid (above the kernel's pid_max).
            dead.pid = 1 << 23;
            repo.save_unpacked(FileType::Lock, &serde_json::to_vec(&dead).unwrap())
                .await
                .unwrap();
            let old = {
                let mut l = Lock::for_this_process(true);
                l.hostname = "elsewhere".into();
                l.time = l.time - STALE_AFTER - chrono::Duration::minutes(1);
                l
            };
            repo.save_unpacked(FileType::Lock, &serde_json::to_vec(&old).unwrap())
                .await
                .unwrap();
            let guard = repo.lock(true).await.unwrap();
            assert_eq!(backend.names(FileType::Lock).len(), 1, "only ours is left");
            drop(guard);
        });
    }

    #[test]
    fn a_lock_file_that_cannot_be_read_holds_nothing_back() {
        let _one = serial();
        runtime().block_on(async {
            let (backend, repo) = memory_repo("locks").await;
            backend.put_raw(FileType::Lock, &"ab".repeat(32), b"planted junk".to_vec());
            let guard = repo.lock(true).await.unwrap();
            drop(guard);
        });
    }

    #[test]
    fn the_exit_path_removes_a_lock_whose_guard_never_dropped() {
        let _one = serial();
        runtime().block_on(async {
            let (backend, repo) = memory_repo("locks").await;
            // A command stuck where its guard cannot be dropped.
            std::mem::forget(repo.lock(false).await.unwrap());
            assert_eq!(backend.names(FileType::Lock).len(), 1);
            release_held_locks().await;
            assert!(backend.names(FileType::Lock).is_empty());
        });
    }

    #[test]
    fn a_removal_that_fails_is_tried_again_on_the_way_out() {
        let _one = serial();
        runtime().block_on(async {
            let (backend, repo) = memory_repo("locks").await;
            let guard = repo.lock(false).await.unwrap();
            backend.set_down(true);
            drop(guard);
            settle_dropped(None).await;
            backend.set_down(false);
            assert_eq!(backend.names(FileType::Lock).len(), 1, "still there");
            release_held_locks().await;
            assert!(backend.names(FileType::Lock).is_empty());
        });
    }
}
