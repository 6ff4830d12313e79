//! Where repository files live. [`Backend`] is the one trait every store
//! implements (a local directory now, S3 next); the repository layer above it
//! encrypts, compresses and names the files.

pub mod layout;
pub mod local;
pub mod memory;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

/// Requests in flight at once to a store that does not say (a local
/// directory); S3 regions set theirs with `concurrency`.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// The kinds of file in a restic-format repository, each in its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// The single `config` file.
    Config,
    /// Key files under `keys/`.
    Key,
    /// Snapshot files under `snapshots/`.
    Snapshot,
    /// Index files under `index/`.
    Index,
    /// Pack files under `data/xx/`.
    Pack,
    /// Lock files under `locks/`.
    Lock,
}

impl FileType {
    /// The folder the type lives in (empty for the config file).
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Lock => "locks",
        }
    }

    /// Every type, in the order `init` creates their folders.
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Key,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
        FileType::Lock,
    ];
}

/// A storage fault, naming the object and the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("{location}: {name} does not exist")]
    NotFound {
        /// The store, as a user would name it.
        location: String,
        /// The object's path inside the store.
        name: String,
    },
    /// Any other I/O failure.
    #[error("{location}: {name}: {source}")]
    Io {
        /// The store, as a user would name it.
        location: String,
        /// The object's path inside the store.
        name: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A remote store refused or failed the request (after its retries).
    #[error("{location}: {}{message}", with_colon(.name))]
    Remote {
        /// The store, as a user would name it (with its region).
        location: String,
        /// The object's key.
        name: String,
        /// What went wrong; never contains a secret.
        message: String,
    },
    /// The store refused the request for lack of permission (HTTP 403,
    /// `AccessDenied`): read-only credentials, say.
    #[error("{location}: {}{message}", with_colon(.name))]
    Forbidden {
        /// The store, as a user would name it (with its region).
        location: String,
        /// The object's key.
        name: String,
        /// What the store said; never contains a secret.
        message: String,
    },
    /// A tenant's rules stopped the work: the tenant was shredded, it
    /// requires both regions and one failed, or a write could not be
    /// recorded in the audit log.
    #[error("tenant {tenant}: {message}")]
    Policy {
        /// The tenant.
        tenant: String,
        /// What the rule is and what it stopped, naming the region.
        message: String,
    },
    /// The request would put or read a tenant's data outside its region
    /// pair; it was not sent.
    #[error("residency: refused to {op} {name} for tenant {tenant} in region {region}: {reason}")]
    Refused {
        /// The tenant.
        tenant: String,
        /// The region the request would have gone to.
        region: String,
        /// The operation (write, read, list, delete).
        op: &'static str,
        /// The object.
        name: String,
        /// Why the region is not allowed.
        reason: String,
    },
}

fn with_colon(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name}: ")
    }
}

pub use layout::content_sha256;

impl StorageError {
    /// Whether the error means the object is absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Whether the store refused a write for lack of permission or
    /// because it is read-only (not because it failed or is full).
    pub fn is_write_refused(&self) -> bool {
        match self {
            StorageError::Forbidden { .. } => true,
            StorageError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
                    || source.kind() == std::io::ErrorKind::ReadOnlyFilesystem
                    || source.raw_os_error() == Some(libc::EROFS)
                    || source.raw_os_error() == Some(libc::EPERM)
            }
            _ => false,
        }
    }
}

/// A file store holding one repository. Names are the file names restic uses
/// (hex ids, or `config`); the backend decides the layout below its root.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Where the store is, for messages (a path, or an `s3:` URL).
    fn location(&self) -> String;
    /// Whether reading costs a round trip over a network (a local copy of
    /// metadata is then worth keeping).
    fn remote(&self) -> bool {
        true
    }
    /// Requests the store takes at once (readers keep this many in flight).
    fn connections(&self) -> usize {
        DEFAULT_CONNECTIONS
    }
    /// Copies the store keeps of each file (a region pair: two), each
    /// read on its own when another fails its check.
    fn copies(&self) -> usize {
        1
    }
    /// Create the store's folders; fails if a repository config already exists.
    async fn create(&self) -> Result<(), StorageError>;
    /// Store `data` under `name` atomically: readers see the whole file or none.
    /// (`Bytes`, so a store writing to several places shares one buffer.)
    async fn save(&self, t: FileType, name: &str, data: Bytes) -> Result<(), StorageError>;
    /// Read a whole file.
    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Read `length` bytes at `offset`.
    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError>;
    /// Read a whole file and check it with `verify`; like
    /// [`Backend::load_range_verified`] for files whose name is not their
    /// hash (the config).
    async fn load_verified(
        &self,
        t: FileType,
        name: &str,
        verify: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<Vec<u8>, StorageError> {
        let _ = verify;
        self.load(t, name).await
    }
    /// Read a range and check it with `verify` (for pack blobs: their MAC).
    /// A store holding more than one copy tries the next copy when a read
    /// fails or the check does; a single store returns what it read and
    /// leaves checking to the caller.
    async fn load_range_verified(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
        verify: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<Vec<u8>, StorageError> {
        let _ = verify;
        self.load_range(t, name, offset, length).await
    }
    /// The size of a file.
    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError>;
    /// The names and sizes of every file of type `t`.
    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError>;
    /// Delete a file; deleting a missing file is not an error.
    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError>;
    /// Remove the temporary files writers left (a crash, a full disk) that
    /// nothing touched for `age`; returns how many. A store that writes no
    /// temporary files has none.
    async fn remove_stale_temporary(
        &self,
        age: std::time::Duration,
    ) -> Result<usize, StorageError> {
        let _ = age;
        Ok(0)
    }
}

/// A store that lives in one region: what the residency guard and the
/// region pair need beyond [`Backend`] (S3 in production, memory in the
/// unit tests).
#[async_trait]
pub trait Regional: Backend {
    /// The region it is in.
    fn region(&self) -> &str;
    /// The bucket (or whatever the store calls its container).
    fn bucket(&self) -> &str;
    /// The object key of a repository file: what the policy checks, the
    /// audit log records and messages name.
    fn key(&self, t: FileType, name: &str) -> String;
    /// The key of an object beside the repository (`rel` under the
    /// tenant's root: the shred marker).
    fn root_key(&self, rel: &str) -> String;
    /// Write an object by key.
    async fn put_key(&self, key: &str, data: Vec<u8>) -> Result<(), StorageError>;
    /// Whether an object exists, by key.
    async fn exists_key(&self, key: &str) -> Result<bool, StorageError>;
}
