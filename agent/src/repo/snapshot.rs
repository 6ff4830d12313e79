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
    /// The component that made it, as its `info` named it, with the
    /// SHA-256 of the component's bytes: what a restore needs (Cairn only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cairn_component: Option<ComponentId>,
    /// The config file's job that made the snapshot (Cairn only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cairn_job: Option<String>,
    /// Entries that could not be read and are missing from this snapshot,
    /// each `path: reason` (Cairn only). Non-empty means incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cairn_skipped: Vec<String>,
}

/// Which adapter component made a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentId {
    /// The adapter's own name (`info().name`).
    pub name: String,
    /// Its own version (`info().version`).
    pub version: String,
    /// SHA-256 of the component file (hex).
    pub sha256: String,
}

impl std::fmt::Display for ComponentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}, sha256 {}",
            crate::util::escaped(&self.name),
            crate::util::escaped(&self.version),
            crate::util::escaped(&self.sha256)
        )
    }
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

use super::{RepoError, Repository};
use crate::storage::FileType;
use futures::StreamExt;

impl Repository {
    /// Load one snapshot file.
    pub async fn load_snapshot(&self, name: &str) -> Result<(Id, Snapshot), RepoError> {
        let what = format!("snapshots/{name}");
        let plain = self.load_unpacked(FileType::Snapshot, name).await?;
        let snap: Snapshot =
            serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt(&what, e))?;
        let id = Id::parse(name).ok_or_else(|| RepoError::corrupt(&what, "bad file name"))?;
        Ok((id, snap))
    }

    /// Every readable snapshot, oldest first. A damaged snapshot file is
    /// passed over and noted (see [`Repository::damage`]).
    pub async fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        self.list_snapshots(false).await
    }

    /// Every snapshot, oldest first; a damaged snapshot file is an error
    /// (prune must know every snapshot to know what is unused).
    pub async fn snapshots_strict(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        self.list_snapshots(true).await
    }

    async fn list_snapshots(&self, strict: bool) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        let mut out = Vec::new();
        let mut loaded = self.snapshot_files().await?;
        while let Some((name, snap)) = loaded.next().await {
            match snap {
                Ok(s) => out.push(s),
                Err(e @ RepoError::Corrupt { .. }) if !strict => {
                    self.note_damage(&format!("snapshots/{name}"), &e)
                }
                // Removed by a forget while we listed.
                Err(RepoError::Storage(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(_, s)| s.time);
        Ok(out)
    }

    /// Find a snapshot by `latest` or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot), RepoError> {
        self.find_snapshot_of(spec, None).await
    }

    /// Like [`Repository::find_snapshot`], but `latest` means the latest
    /// snapshot that `job` made, when a job is given.
    pub async fn find_snapshot_of(
        &self,
        spec: &str,
        job: Option<&str>,
    ) -> Result<(Id, Snapshot), RepoError> {
        let all = self.snapshots().await?;
        if spec == "latest" {
            return all
                .into_iter()
                .rfind(|(_, s)| job.is_none() || s.cairn_job.as_deref() == job)
                .ok_or_else(|| match job {
                    Some(j) => RepoError::SnapshotNotFound(format!("latest (of job {j})")),
                    None => RepoError::SnapshotNotFound(spec.into()),
                });
        }
        let mut found: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(spec))
            .collect();
        match found.len() {
            0 => Err(RepoError::SnapshotNotFound(spec.into())),
            1 => Ok(found.remove(0)),
            _ => Err(RepoError::AmbiguousSnapshot(spec.into())),
        }
    }

    /// Store a snapshot; returns its id.
    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        let json = serde_json::to_vec(snap).expect("snapshot serialises");
        self.save_unpacked(FileType::Snapshot, &json).await
    }
}
