//! PostgreSQL point-in-time recovery: the only part of the host that knows
//! PostgreSQL (docs/design/pitr.md). The PostgreSQL adapter takes physical
//! base backups (`mode = "physical"`); this module reads what they record,
//! names and orders WAL ([`lsn`]), follows timelines ([`history`]) and
//! decides which WAL the kept base backups need ([`retention`]).

pub mod archive;
pub mod basebackup;
pub mod fetch;
pub mod history;
pub mod lsn;
pub mod plan;
pub mod records;
pub mod recover;
pub mod retention;
pub mod spool;
pub mod stream;

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
/// A tag with commas counts as each of its parts, as restic's `--tag`
/// reads it.
pub fn reserved_tag(tag: &str) -> bool {
    tag.split(',')
        .map(str::trim)
        .any(|t| t.starts_with("pg-") || t.starts_with("wal-") || t == "cairn-wal")
}
