//! What each command does to a repository, as library calls: each
//! operation takes an opened [`Store`] and typed options and returns a
//! typed report (`Serialize`), which the command line prints as text or
//! JSON and the agent reads from its children through [`protocol`].
//!
//! The layers: `cli` and `daemon` call `ops`; `ops` drives `runtime`
//! (adapters), `pipeline` and `repo`; `repo` reads and writes through a
//! `storage::Backend`, which `residency` wraps for tenants.

pub mod authoring;
pub mod backup;
pub mod check;
pub mod conformance;
pub mod drill;
pub mod drills;
pub mod forget;
pub mod pitr_drill;
pub mod pitr_restore;
pub mod protocol;
pub mod prune;
pub mod replicate;
pub mod restore;
pub mod settings;
pub mod shred;

use crate::repo::{LockGuard, RepoError, Repository};
use crate::residency::pair::Replicated;
use std::sync::Arc;

/// Why an operation failed. Every variant names what it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options given cannot work (a flag out of range, paths missing).
    #[error("{0}")]
    Invalid(String),
    /// The repository or its storage failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The adapter or the sandbox around it failed (its own error, a
    /// trap, a timeout); the message names the adapter.
    #[error("{0:#}")]
    Adapter(anyhow::Error),
    /// The tenant's residency rules stopped the work (a region of the pair
    /// that cannot be made whole when both are required, say).
    #[error("{0}")]
    Residency(String),
    /// Something this process needs locally failed (the drill record, a
    /// scratch directory); the message names the file.
    #[error("{0:#}")]
    Local(anyhow::Error),
    /// A repository error, with what was being done when it happened.
    #[error("{0:#}")]
    RepoContext(anyhow::Error),
}

impl Error {
    /// Wrap an error with what was being done, keeping its kind.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        match self {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            Error::Residency(m) => Error::Residency(format!("{what}: {m}")),
            Error::Repo(e) => Error::RepoContext(anyhow::Error::new(e).context(what.to_string())),
            Error::RepoContext(e) => Error::RepoContext(e.context(what.to_string())),
            Error::Adapter(e) => Error::Adapter(e.context(what.to_string())),
            Error::Local(e) => Error::Local(e.context(what.to_string())),
        }
    }

    /// The kind the agent records (and counts in its metrics).
    pub fn kind(&self) -> protocol::ErrorKind {
        use protocol::ErrorKind;
        match self {
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Repo(e) if residency_stop(e) => ErrorKind::Residency,
            Error::RepoContext(e) if e.downcast_ref().is_some_and(residency_stop) => {
                ErrorKind::Residency
            }
            Error::Repo(_) | Error::RepoContext(_) => ErrorKind::Repository,
            Error::Adapter(_) => ErrorKind::Adapter,
            Error::Residency(_) => ErrorKind::Residency,
            Error::Local(_) => ErrorKind::Local,
        }
    }
}

/// Whether the storage refused a request for the tenant's residency rules
/// (outside the pair, or a rule that stops the work).
fn residency_stop(e: &RepoError) -> bool {
    use crate::storage::StorageError;
    matches!(
        e,
        RepoError::Storage(StorageError::Refused { .. } | StorageError::Policy { .. })
    )
}

/// An operation's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fail with [`Error::Invalid`].
macro_rules! invalid {
    ($($t:tt)*) => { return Err($crate::ops::Error::Invalid(format!($($t)*))) };
}
pub(crate) use invalid;

/// A repository opened for an operation, and what stands behind it.
pub struct Store {
    /// The repository.
    pub repo: Arc<Repository>,
    /// The tenant's region pair, when the repository is replicated across
    /// one: operations that remove data need both regions whole, and a
    /// backup evens the regions out before recording its snapshot.
    pub pair: Option<Arc<dyn Replicated>>,
    /// Read without a lock (`--no-lock`): for read-only credentials.
    pub no_lock: bool,
}

impl Store {
    /// Before an operation that removes data or checks every region: on a
    /// region pair, every listing must cover both regions (a failed one is
    /// an error, not a region quietly left out) and no region may lag, or a
    /// snapshot stored only in the region not listed would look unused.
    pub fn require_whole_pair(&self, what: &str) -> Result<()> {
        if let Some(pair) = &self.pair {
            pair.set_strict_listing(true);
            if let Some((region, why)) = pair.lagging().into_iter().next() {
                return Err(Error::Residency(format!(
                    "region {region} of tenant {}'s pair is not usable ({why}); {what} needs both regions whole: run `cairn replicate` first",
                    pair.tenant()
                )));
            }
        }
        Ok(())
    }

    /// While a removal runs: the lock is still ours and, on a pair, no
    /// region has started lagging (its listings would be missing).
    pub fn still_safe(&self, lock: &LockGuard) -> Result<(), RepoError> {
        lock.ensure_held()?;
        if let Some((region, why)) = self
            .pair
            .as_ref()
            .and_then(|p| p.lagging().into_iter().next())
        {
            return Err(RepoError::Unsafe(format!(
                "region {region} stopped answering ({why})"
            )));
        }
        Ok(())
    }

    /// The shared lock an operation that only reads takes: none with
    /// [`Store::no_lock`], and none, with a warning, when the storage
    /// refuses to write one (read-only credentials, a read-only mount):
    /// reading needs no lock to be correct, only to keep a prune from
    /// removing what is being read meanwhile.
    pub async fn read_lock(&self) -> Result<Option<LockGuard>> {
        if self.no_lock {
            return Ok(None);
        }
        match self.repo.lock(false).await {
            Ok(l) => Ok(Some(l)),
            Err(RepoError::Storage(e)) if e.is_write_refused() => {
                tracing::warn!(
                    error = %crate::util::indented(&e.to_string()),
                    "The repository refuses writes; reading without a lock (as with --no-lock): a prune running meanwhile could remove what is being read."
                );
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Build the index anew from the packs' headers, under the exclusive lock
/// (restic's `repair index`); both regions of a pair must be whole.
pub async fn rebuild_index(store: &Store) -> Result<crate::repo::RebuildReport> {
    store.require_whole_pair("rebuild-index")?;
    let _lock = store.repo.lock(true).await?;
    Ok(store.repo.rebuild_index().await?)
}

/// What `init` created.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Initialized {
    /// The new repository's id.
    pub id: String,
    /// Where it is.
    pub repository: String,
}

/// Create a repository on `backend`. On a region pair both regions must
/// be usable: a repository started in one region alone could meet a
/// different one started later in the other. `password` is asked for once
/// that is known.
pub async fn init(
    backend: Arc<dyn crate::storage::Backend>,
    pair: Option<&dyn Replicated>,
    password: impl FnOnce() -> anyhow::Result<String>,
) -> Result<Initialized> {
    if let Some((region, why)) = pair.and_then(|p| p.lagging().into_iter().next()) {
        return Err(Error::Residency(format!(
            "init needs both regions of the tenant's pair; region {region} is not usable: {why}"
        )));
    }
    let password = password().map_err(Error::Local)?;
    let repository = backend.location();
    let repo = Repository::init(backend, &password).await?;
    Ok(Initialized {
        id: repo.config().id.clone(),
        repository,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::residency::pair::Role;
    use crate::storage::FileType;
    use crate::testing::{backed_up, memory_pair, pair_store, runtime};

    #[test]
    fn a_refusal_keeps_its_kind_under_context() {
        use crate::storage::StorageError;
        let refused = || {
            Error::from(RepoError::Storage(StorageError::Refused {
                tenant: "t".into(),
                region: "us-east-1".into(),
                op: "write",
                name: "k".into(),
                reason: "outside the pair".into(),
            }))
        };
        assert_eq!(refused().kind(), protocol::ErrorKind::Residency);
        let wrapped = refused().context("saving the snapshot");
        assert_eq!(wrapped.kind(), protocol::ErrorKind::Residency);
        assert!(
            wrapped.to_string().starts_with("saving the snapshot: "),
            "{wrapped}"
        );
        let damaged = Error::from(RepoError::BlobNotFound(crate::repo::Id::hash(b"x")));
        assert_eq!(
            damaged.context("reading").kind(),
            protocol::ErrorKind::Repository
        );
    }

    #[test]
    fn forget_and_prune_refuse_a_pair_with_a_lagging_region_and_remove_nothing() {
        let p = memory_pair(false);
        runtime().block_on(async {
            let store = pair_store(&p).await;
            for days in [2u8, 1] {
                backed_up(&store.repo, &[("a", &[days; 100])], days.into(), "h").await;
            }
            p.pair
                .mark_region_lagging(Role::Secondary, "it did not answer");
            let keep_last = forget::Options {
                policy: crate::retention::KeepPolicy {
                    last: 1,
                    ..Default::default()
                },
                group_by: vec!["host".into()],
                ..Default::default()
            };
            let e = forget::run(&store, keep_last).await.unwrap_err();
            assert!(matches!(e, Error::Residency(_)), "{e}");
            assert!(e.to_string().contains("needs both regions whole"), "{e}");
            let e = prune::run(&store, false).await.unwrap_err();
            assert!(e.to_string().contains("region b"), "{e}");
            assert_eq!(p.a.names(FileType::Snapshot).len(), 2);
        });
    }

    #[test]
    fn check_reads_both_regions_and_fails_when_one_cannot_be_listed() {
        let p = memory_pair(false);
        runtime().block_on(async {
            let store = pair_store(&p).await;
            backed_up(&store.repo, &[("a", b"x")], 1, "h").await;
            let clean = check::run(&store, true).await.unwrap();
            assert!(clean.errors.is_empty(), "{:?}", clean.errors);
            // With one region silent, check does not quietly use the other.
            p.b.set_down(true);
            assert!(check::run(&store, false).await.is_err());
        });
    }

    #[test]
    fn a_lock_dropped_on_a_pair_leaves_neither_region_locked() {
        let p = memory_pair(false);
        runtime().block_on(async {
            let store = pair_store(&p).await;
            let lock = store.read_lock().await.unwrap().expect("a lock");
            assert_eq!(p.a.names(FileType::Lock).len(), 1);
            assert_eq!(p.b.names(FileType::Lock).len(), 1);
            drop(lock);
            // Locking again waits for the removal: then both are clear.
            let again = store.repo.lock(true).await.unwrap();
            drop(again);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !p.a.names(FileType::Lock).is_empty() || !p.b.names(FileType::Lock).is_empty() {
                assert!(std::time::Instant::now() < deadline, "a lock was left");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
    }
}
