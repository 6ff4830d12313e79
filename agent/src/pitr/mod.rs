//! PostgreSQL point-in-time recovery: the only part of the host that knows
//! PostgreSQL (docs/design/pitr.md). The PostgreSQL adapter takes physical
//! base backups (`mode = "physical"`); this module reads what they record,
//! names and orders WAL ([`lsn`]), follows timelines ([`history`]) and
//! decides which WAL the kept base backups need ([`retention`]).

pub mod basebackup;
pub mod history;
pub mod lsn;
pub mod retention;

use crate::repo::RepoError;

/// What went wrong reading PITR records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PitrError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A base backup's record or label is not what the PostgreSQL adapter
    /// writes; the message names the file.
    #[error("{0}")]
    BaseBackup(String),
    /// The WAL archive cannot take or give what was asked; the message
    /// names the segment, window or file.
    #[error("{0}")]
    Archive(String),
}

/// Whether `tag` is one Cairn sets itself on PostgreSQL base backups and
/// WAL (`pg-…`, `wal-…`, `cairn-wal`): a user's tag may not pose as one.
pub fn reserved_tag(tag: &str) -> bool {
    tag.starts_with("pg-") || tag.starts_with("wal-") || tag == "cairn-wal"
}
