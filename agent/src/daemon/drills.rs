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

/// Append `record` to the state directory's drill record.
pub fn append(state_dir: &Path, record: &DrillRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path(state_dir))?;
    // One write of the whole line: concurrent drills do not interleave.
    f.write_all(&line)?;
    f.sync_data()
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
