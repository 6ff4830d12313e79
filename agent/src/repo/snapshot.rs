//! Snapshot files: the root of one backup.

use super::id::Id;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// A snapshot as restic stores it, plus Cairn's own optional fields (restic
/// ignores fields it does not know).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started.
    pub time: DateTime<FixedOffset>,
    /// The snapshot used as parent for change detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// The root tree.
    pub tree: Id,
    /// The paths that were backed up.
    pub paths: Vec<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Numeric user.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    /// Numeric group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    /// Exclude patterns used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The snapshot this one was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The program that wrote it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program_version: String,
    /// The adapter that produced the snapshot (Cairn only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cairn_adapter: Option<String>,
    /// The config file's job that made the snapshot (Cairn only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cairn_job: Option<String>,
    /// Entries that could not be read and are missing from this snapshot,
    /// each `path: reason` (Cairn only). Non-empty means incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cairn_skipped: Vec<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Snapshot {
    /// The adapter that can restore this snapshot; restic's own snapshots
    /// are filesystem snapshots.
    pub fn adapter(&self) -> &str {
        self.cairn_adapter.as_deref().unwrap_or("filesystem")
    }
}

/// A snapshot as restic lists it (`snapshots --json`, `forget --json`):
/// its fields, `id` and `short_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    /// The snapshot's fields.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Its id.
    pub id: Id,
    /// The id's short form.
    pub short_id: String,
}

impl Listed {
    /// `snapshot`, stored as `id`.
    pub fn new(id: Id, snapshot: Snapshot) -> Listed {
        Listed {
            short_id: id.short(),
            id,
            snapshot,
        }
    }
}
