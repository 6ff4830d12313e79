//! What can go wrong in a repository, each error naming the object.

use super::Id;
use crate::storage::StorageError;

/// Errors from repository operations. Each names the object it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// No key file opens with the given password.
    #[error("wrong password, or no key in repository {location} opens with it")]
    WrongPassword {
        /// The repository.
        location: String,
    },
    /// No key file of those tried opens with the password, and some were
    /// not tried (more than are: key files planted by whoever can write to
    /// the storage, say).
    #[error(
        "no key file of the {tried} tried (of {total}) in repository {location} opens with this password; if it is right, name the repository's key file with --key-hint (see `ls keys/`)"
    )]
    TooManyKeys {
        /// The repository.
        location: String,
        /// Key files tried.
        tried: usize,
        /// Key files in the repository.
        total: usize,
    },
    /// The location holds no repository.
    #[error("{location} is not a Cairn/restic repository (no config file); run `cairn init` first")]
    NotARepository {
        /// The location given.
        location: String,
    },
    /// The repository already exists.
    #[error("a repository already exists at {location}")]
    AlreadyExists {
        /// The location given.
        location: String,
    },
    /// The config uses a format this version does not read.
    #[error("repository {location} has format version {version}; Cairn reads versions 1 and 2")]
    UnsupportedVersion {
        /// The repository.
        location: String,
        /// The version found.
        version: u32,
    },
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An object failed authentication or does not parse.
    #[error("{what} is damaged: {reason}")]
    Corrupt {
        /// The file or blob, named.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The index knows no such blob.
    #[error("blob {0} is not in the index (the repository is missing data; run `cairn check`)")]
    BlobNotFound(Id),
    /// No snapshot matches.
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    /// More than one snapshot matches an id prefix.
    #[error("snapshot id prefix {0:?} is ambiguous")]
    AmbiguousSnapshot(String),
    /// Cairn itself failed (a worker thread panicked or stopped early):
    /// nothing was recorded, and the repository is not damaged by it.
    #[error("{what}: {reason} (a fault in Cairn, not damage to the repository)")]
    Internal {
        /// What was running.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The write pipeline stopped after a failure in a later stage; finishing
    /// the pipeline reports that failure.
    #[error("the backup pipeline stopped after a storage failure")]
    PipelineStopped,
    /// Another process holds a conflicting lock.
    #[error("repository is locked {0}")]
    Locked(String),
    /// Our own lock could not be kept fresh; nothing more is recorded.
    #[error("{0}")]
    LockLost(String),
    /// A removal stopped because going on could lose data (a region of
    /// the pair stopped answering, say); what it says is why.
    #[error("stopped before removing anything more: {0}")]
    Unsafe(String),
}

impl RepoError {
    /// Whether the error is damage in the repository (a file or blob that
    /// fails its check, or that the index lists and the storage lacks), as
    /// opposed to a storage or host failure: damage fails what needs that
    /// data and nothing else.
    pub fn is_damage(&self) -> bool {
        match self {
            RepoError::Corrupt { .. } | RepoError::BlobNotFound(_) => true,
            RepoError::Storage(s) => s.is_not_found(),
            _ => false,
        }
    }

    /// `what` may carry a name from the storage (anyone who can write to
    /// it chooses those): escaped, so it can forge no line where printed.
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        RepoError::Corrupt {
            what: crate::util::escaped(&what.into()).into_owned(),
            reason: reason.to_string(),
        }
    }
}
