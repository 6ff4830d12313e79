//! The record of restore drills: one JSON line per drill in
//! `<state-dir>/drills.jsonl`, written by `cairn drill` whether the agent
//! or an operator ran it. Retention reads it so that the newest snapshot
//! that passed a drill is never forgotten.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One drill's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The job whose snapshot was drilled.
    pub job: String,
    /// The job's tenant.
    pub tenant: String,
    /// The adapter that restored and verified.
    pub adapter: String,
    /// The snapshot drilled (full id), if one was found.
    pub snapshot_id: Option<String>,
    /// When that snapshot was taken.
    pub snapshot_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// When the drill started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// When it ended.
    pub finished: chrono::DateTime<chrono::Utc>,
    /// Whether the restored copy verified without a problem.
    pub passed: bool,
    /// The snapshot's age when the drill started: the recovery point
    /// achieved had the data been lost then.
    pub rpo_seconds: Option<f64>,
    /// Time to open the repository, restore and verify: the recovery time.
    pub rto_seconds: f64,
    /// Entries restored and verified.
    pub entries: u64,
    /// What verify found wrong.
    pub problems: Vec<String>,
    /// Why the drill could not finish, if it did not.
    pub error: Option<String>,
}

/// The drill record file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("drills.jsonl")
}

/// Records kept when the file is compacted (besides each job's newest
/// passed drill, which retention needs).
const KEEP: usize = 1000;
/// The file is compacted once it grows past this size, so reading it (every
/// metrics scrape, every forget) stays cheap however long the agent runs.
const COMPACT_AT: u64 = 1 << 20;

/// Append `record` to the state directory's drill record.
pub fn append(state_dir: &Path, record: &DrillRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // Drills of the agent and by hand append one at a time, and a
    // compaction does not lose a line appended meanwhile: a writer that
    // waited on the lock of a file compaction replaced opens the new one.
    let mut f = loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path(state_dir))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::metadata(path(state_dir)).map(|m| m.ino());
        if current.ok() == Some(f.metadata()?.ino()) {
            break f;
        }
    };
    f.write_all(&line)?;
    f.sync_data()?;
    if f.metadata()?.len() > COMPACT_AT {
        compact(state_dir)?;
    }
    Ok(())
}

/// Rewrite the record with its last [`KEEP`] drills and each job's newest
/// passed one (called with the file locked).
fn compact(state_dir: &Path) -> std::io::Result<()> {
    let records = read(state_dir)?;
    let pins = pinned(&records);
    let cut = records.len().saturating_sub(KEEP);
    let mut text = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let pinned =
            r.passed && r.snapshot_id.is_some() && pins.get(&r.job) == r.snapshot_id.as_ref();
        if i >= cut || pinned {
            text.extend(serde_json::to_vec(r).map_err(std::io::Error::other)?);
            text.push(b'\n');
        }
    }
    let tmp = state_dir.join(".drills.jsonl.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path(state_dir))
}

/// Every drill recorded, oldest first; a missing file is an empty record
/// and a line that does not parse (a torn write) is skipped.
pub fn read(state_dir: &Path) -> std::io::Result<Vec<DrillRecord>> {
    let text = match std::fs::read_to_string(path(state_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Per job, the newest snapshot (by snapshot time) that passed a drill.
pub fn pinned(records: &[DrillRecord]) -> BTreeMap<String, String> {
    let mut newest: BTreeMap<String, (chrono::DateTime<chrono::FixedOffset>, String)> =
        BTreeMap::new();
    for r in records.iter().filter(|r| r.passed) {
        let (Some(id), Some(time)) = (&r.snapshot_id, r.snapshot_time) else {
            continue;
        };
        match newest.get(&r.job) {
            Some((t, _)) if *t >= time => {}
            _ => {
                newest.insert(r.job.clone(), (time, id.clone()));
            }
        }
    }
    newest.into_iter().map(|(j, (_, id))| (j, id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, n: i64, passed: bool) -> DrillRecord {
        let t = chrono::DateTime::from_timestamp(1_700_000_000 + n, 0).expect("time");
        DrillRecord {
            job: job.into(),
            tenant: "t".into(),
            adapter: "filesystem".into(),
            snapshot_id: Some(format!("{n:064x}")),
            snapshot_time: Some(t.fixed_offset()),
            started: t,
            finished: t,
            passed,
            rpo_seconds: Some(1.0),
            rto_seconds: 1.0,
            entries: 1,
            problems: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn compaction_keeps_the_last_drills_and_each_jobs_newest_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::new();
        // An old pass of job a, then only failures of a and passes of b.
        text.push_str(&serde_json::to_string(&record("a", 0, true)).expect("json"));
        text.push('\n');
        for n in 1..1500 {
            let r = record(if n % 2 == 0 { "a" } else { "b" }, n, n % 2 == 1);
            text.push_str(&serde_json::to_string(&r).expect("json"));
            text.push('\n');
        }
        std::fs::write(path(dir.path()), text).expect("write");
        let pins_before = pinned(&read(dir.path()).expect("read"));
        compact(dir.path()).expect("compact");
        let after = read(dir.path()).expect("read");
        assert_eq!(after.len(), KEEP + 1, "the last {KEEP} and a's old pass");
        assert_eq!(pinned(&after), pins_before);
        assert_eq!(
            after.last().map(|r| r.started),
            Some(record("b", 1499, true).started)
        );
    }
}
