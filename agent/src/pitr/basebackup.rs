//! What a physical base backup records, read back from its snapshot's
//! tree and turned into the snapshot's tags, so that a restore to a point
//! in time and retention choose base backups from the snapshot list alone.
//!
//! The adapter writes `/postgres/basebackup.json` (format 1): the server's
//! identity and its WAL position and time just before and just after the
//! copy. `pg_basebackup --wal-method=none` prints no positions, so these
//! are bounds. The exact start is in the `backup_label` that the server
//! puts first in `base.tar`; it is read from the tar's first bytes and
//! must lie within the bounds. The tags:
//!
//! | tag | value |
//! |---|---|
//! | `pg-basebackup` | (marks a base backup) |
//! | `pg-system=<id>` | the cluster's system identifier, decimal |
//! | `pg-tli=<n>` | the timeline, decimal |
//! | `pg-start=<X/Y>` | `START WAL LOCATION` of `backup_label`: recovery starts here |
//! | `pg-stop=<X/Y>` | the server's WAL position after the copy: at or after the point where the copy is consistent |
//! | `pg-stop-time=<RFC 3339>` | the server's time after the copy |
//! | `pg-segment-size=<bytes>` | the cluster's WAL segment size |

use super::PitrError;
use super::lsn::{Lsn, SegmentSize};
use crate::read::{ContentReader, lookup};
use crate::repo::{Id, Repository};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Where the adapter puts the record.
pub const RECORD: &str = "/postgres/basebackup.json";
/// Where the adapter puts the cluster's files.
pub const BASE_TAR: &str = "/postgres/base.tar";
/// The largest record read.
const MAX_RECORD: usize = 64 << 10;

/// `basebackup.json`, format 1, as the adapter writes it.
#[derive(serde::Deserialize, Debug)]
struct Record {
    format: u32,
    system: String,
    timeline: u32,
    start_lsn: String,
    stop_lsn: String,
    stop_time: String,
    wal_segment_size: u64,
}

/// One base backup, as its tags describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackup {
    /// The cluster's system identifier.
    pub system: u64,
    /// The timeline it was taken on.
    pub tli: u32,
    /// Where recovery from it starts.
    pub start: Lsn,
    /// A position at or after the one where it is consistent.
    pub stop: Lsn,
    /// The server's time when the copy had ended.
    pub stop_time: DateTime<Utc>,
    /// The cluster's WAL segment size.
    pub segment_size: SegmentSize,
}

impl BaseBackup {
    /// Its tags.
    pub fn tags(&self) -> Vec<String> {
        vec![
            "pg-basebackup".into(),
            format!("pg-system={}", self.system),
            format!("pg-tli={}", self.tli),
            format!("pg-start={}", self.start),
            format!("pg-stop={}", self.stop),
            format!(
                "pg-stop-time={}",
                self.stop_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            format!("pg-segment-size={}", self.segment_size.bytes()),
        ]
    }

    /// The base backup a snapshot's tags describe; `None` unless they
    /// describe one whole.
    pub fn from_tags(tags: &[String]) -> Option<BaseBackup> {
        if !tags.iter().any(|t| t == "pg-basebackup") {
            return None;
        }
        let value = |key: &str| {
            tags.iter()
                .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        };
        Some(BaseBackup {
            system: value("pg-system")?.parse().ok()?,
            tli: value("pg-tli")?.parse().ok()?,
            start: value("pg-start")?.parse().ok()?,
            stop: value("pg-stop")?.parse().ok()?,
            stop_time: DateTime::parse_from_rfc3339(value("pg-stop-time")?)
                .ok()?
                .with_timezone(&Utc),
            segment_size: SegmentSize::new(value("pg-segment-size")?.parse().ok()?).ok()?,
        })
    }
}

/// The base backup in the tree `root` of a new snapshot, or `None` if the
/// tree holds no `basebackup.json` (a logical backup).
pub async fn read(repo: &Arc<Repository>, root: Id) -> Result<Option<BaseBackup>, PitrError> {
    let Some(node) = lookup(repo, root, RECORD).await? else {
        return Ok(None);
    };
    let bad = |why: String| PitrError::BaseBackup(format!("{RECORD}: {why}"));
    let text = ContentReader::new(repo.clone(), node.content.unwrap_or_default())
        .read_up_to(MAX_RECORD + 1)
        .await?;
    if text.len() > MAX_RECORD {
        return Err(bad(format!("larger than {} KiB", MAX_RECORD >> 10)));
    }
    let record: Record = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if record.format != 1 {
        return Err(bad(format!(
            "format {} is not one this agent reads",
            record.format
        )));
    }
    let lsn = |s: &str| s.parse::<Lsn>().map_err(|e| bad(e.to_string()));
    let (before, stop) = (lsn(&record.start_lsn)?, lsn(&record.stop_lsn)?);
    let system = record
        .system
        .parse::<u64>()
        .map_err(|_| bad(format!("system {:?} is not a number", record.system)))?;
    let segment_size = SegmentSize::new(record.wal_segment_size).map_err(|e| bad(e.to_string()))?;
    let stop_time = DateTime::parse_from_rfc3339(&record.stop_time)
        .map_err(|e| bad(format!("stop_time {:?}: {e}", record.stop_time)))?
        .with_timezone(&Utc);
    let Some(tar) = lookup(repo, root, BASE_TAR).await? else {
        return Err(PitrError::BaseBackup(format!(
            "{RECORD} is there but {BASE_TAR} is not"
        )));
    };
    let head = ContentReader::new(repo.clone(), tar.content.unwrap_or_default())
        .read_up_to(512 + 4096)
        .await?;
    let label = Label::from_tar_head(&head)?;
    if label.timeline != record.timeline || label.start < before || label.start > stop {
        return Err(PitrError::BaseBackup(format!(
            "{BASE_TAR}: backup_label says timeline {} from {}, but the server said timeline {} between {before} and {stop}",
            label.timeline, label.start, record.timeline
        )));
    }
    Ok(Some(BaseBackup {
        system,
        tli: label.timeline,
        start: label.start,
        stop,
        stop_time,
        segment_size,
    }))
}

/// What `backup_label` says.
#[derive(Debug, PartialEq, Eq)]
struct Label {
    start: Lsn,
    timeline: u32,
}

impl Label {
    /// Read `backup_label` from the first member of a tar (where
    /// PostgreSQL puts it).
    fn from_tar_head(head: &[u8]) -> Result<Label, PitrError> {
        let bad = |why: &str| {
            PitrError::BaseBackup(format!(
                "{BASE_TAR}: {why} (the server puts backup_label first in its tar)"
            ))
        };
        if head.len() < 512 {
            return Err(bad("shorter than a tar header"));
        }
        let field = |range: std::ops::Range<usize>| {
            let f = &head[range];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).trim().to_string()
        };
        if field(0..100).trim_start_matches("./") != "backup_label" {
            return Err(bad("the first member is not backup_label"));
        }
        let size = usize::from_str_radix(&field(124..136), 8)
            .map_err(|_| bad("backup_label's size is unreadable"))?;
        let text = head
            .get(512..512 + size)
            .ok_or_else(|| bad("backup_label is longer than expected"))?;
        let text = String::from_utf8_lossy(text);
        let line = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .ok_or_else(|| bad(&format!("backup_label has no {key}")))
        };
        let start = line("START WAL LOCATION:")?
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("backup_label's START WAL LOCATION is unreadable"))?;
        let timeline = line("START TIMELINE:")?
            .parse()
            .map_err(|_| bad("backup_label's START TIMELINE is unreadable"))?;
        Ok(Label { start, timeline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar's first 512-byte header for a file `name` of `size` bytes,
    /// then its content, padded.
    fn tar_member(name: &str, content: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", content.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h.extend_from_slice(content.as_bytes());
        h.resize(512 + content.len().div_ceil(512) * 512, 0);
        h
    }

    const LABEL: &str = "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\n\
        CHECKPOINT LOCATION: 0/7000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-12-07 15:40:55 UTC\nLABEL: cairn\nSTART TIMELINE: 1\n";

    #[test]
    fn the_exact_start_is_read_from_the_backup_label_that_opens_the_tar() {
        let label = Label::from_tar_head(&tar_member("backup_label", LABEL)).unwrap();
        assert_eq!(
            label,
            Label {
                start: "0/7000028".parse().unwrap(),
                timeline: 1
            }
        );
        for (head, why) in [
            (tar_member("PG_VERSION", "15\n"), "not backup_label"),
            (
                tar_member("backup_label", "LABEL: x\n"),
                "no START WAL LOCATION",
            ),
            (
                tar_member("backup_label", &LABEL.replace("0/7000028", "zz")),
                "unreadable",
            ),
            (tar_member("backup_label", LABEL)[..300].to_vec(), "shorter"),
        ] {
            let err = Label::from_tar_head(&head).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn tags_describe_a_base_backup_and_read_back_the_same() {
        let b = BaseBackup {
            system: 7_412_345_678_901_234_567,
            tli: 2,
            start: "0/7000028".parse().unwrap(),
            stop: "0/7000100".parse().unwrap(),
            stop_time: DateTime::parse_from_rfc3339("2026-12-07T15:40:55.512927Z")
                .unwrap()
                .with_timezone(&Utc),
            segment_size: SegmentSize::DEFAULT,
        };
        let tags = b.tags();
        assert!(tags.contains(&"pg-start=0/7000028".to_string()), "{tags:?}");
        assert!(
            tags.contains(&"pg-stop-time=2026-12-07T15:40:55.512927Z".to_string()),
            "{tags:?}"
        );
        assert!(
            tags.iter().all(|t| !t.contains(',')),
            "restic splits --tag on commas: {tags:?}"
        );
        assert!(
            tags.iter().all(|t| super::super::reserved_tag(t)),
            "{tags:?}"
        );
        assert_eq!(BaseBackup::from_tags(&tags), Some(b));
        // One tag missing or damaged: not a base backup.
        assert_eq!(BaseBackup::from_tags(&tags[1..]), None);
        let mut bad = tags.clone();
        bad[3] = "pg-start=nope".into();
        assert_eq!(BaseBackup::from_tags(&bad), None);
    }
}
