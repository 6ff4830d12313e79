//! What the agent remembers about runs: the recent runs (kept in memory and
//! appended to `<state-dir>/runs.jsonl` when they end, so the history and
//! the metrics survive a restart) and, per job, its state and counters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Runs kept in memory (and read back at start).
const KEEP: usize = 1000;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Back up one job (then apply its retention).
    Backup,
    /// Run a group's hooks and jobs in order.
    Group,
    /// A restore drill of one job.
    Drill,
    /// A restore asked for through the API.
    Restore,
    /// One life of a job's WAL stream (`cairn wal-stream`), from its start
    /// to its end (a restart is a new run).
    Stream,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Waiting for a free slot (the node-wide cap) or its tenant.
    Queued,
    /// Running.
    Running,
    /// Done; for a backup, a snapshot was recorded.
    Succeeded,
    /// A backup recorded a snapshot without some entries it could not read.
    Incomplete,
    /// A backup recorded in one region of the tenant's pair only.
    Degraded,
    /// Failed; nothing was recorded.
    Failed,
    /// Stopped at its timeout; nothing was recorded.
    TimedOut,
    /// Stopped by the agent's shutdown; nothing was recorded.
    Aborted,
}

impl Status {
    /// Whether the run has ended.
    pub fn ended(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// Bytes moved so far by a running backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes the adapter has handed over.
    pub bytes_read: u64,
    /// Bytes written to storage (compressed, encrypted).
    pub bytes_stored: u64,
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Unique id.
    pub id: String,
    /// What it does.
    pub kind: Kind,
    /// The job (or, for a group run, the group).
    pub job: String,
    /// The group it ran in, if any.
    pub group: Option<String>,
    /// `schedule` or `api`.
    pub trigger: String,
    /// Where it is.
    pub status: Status,
    /// When it was asked for.
    pub queued_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Running time in seconds.
    pub duration_seconds: Option<f64>,
    /// Bytes moved so far.
    pub progress: Progress,
    /// The command's own summary (a backup's snapshot id and byte counts, a
    /// drill's record, a restore's counts).
    pub summary: Option<serde_json::Value>,
    /// What retention did after the backup.
    pub retention: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The failure reason counted in the metrics.
    pub reason: Option<String>,
    /// A group run's job runs, in order.
    #[serde(default)]
    pub runs: Vec<String>,
}

impl Run {
    /// A new run of `kind` for `job` (in `group`), waiting to start.
    pub fn queued(kind: Kind, job: &str, group: Option<&str>, trigger: &str) -> Run {
        Run {
            id: new_run_id(),
            kind,
            job: job.to_string(),
            group: group.map(str::to_string),
            trigger: trigger.to_string(),
            status: Status::Queued,
            queued_at: Utc::now(),
            started_at: None,
            finished_at: None,
            duration_seconds: None,
            progress: Progress::default(),
            summary: None,
            retention: None,
            error: None,
            reason: None,
            runs: Vec::new(),
        }
    }

    /// The snapshot a backup recorded.
    pub fn snapshot_id(&self) -> Option<&str> {
        self.summary.as_ref()?.get("snapshot_id")?.as_str()
    }
}

/// Per job (and group) counters for the metrics.
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    /// Scheduled runs skipped because the previous one was still running.
    pub skipped_overlap: u64,
    /// End time of the last successful backup.
    pub last_success: Option<DateTime<Utc>>,
    /// Duration of the last backup that ended.
    pub last_duration: Option<f64>,
    /// Bytes read by all backups.
    pub bytes_read: u64,
    /// New (not deduplicated) bytes of all backups.
    pub bytes_new: u64,
    /// Bytes uploaded by all backups.
    pub bytes_stored: u64,
    /// Bytes read divided by new bytes, of the last successful backup.
    pub dedup_ratio: Option<f64>,
    /// Failures by reason (retention failures are counted as they happen
    /// and not read back from the history).
    pub failures: BTreeMap<String, u64>,
    /// Ended runs by status.
    pub ended: BTreeMap<String, u64>,
}

/// The agent's memory of runs.
pub struct Runs {
    recent: VecDeque<Run>,
    /// Counters per job or group name.
    pub stats: BTreeMap<String, JobStats>,
    /// Residency refusals counted by the commands the agent ran.
    pub residency_refusals: u64,
    /// Storage retries counted by the commands the agent ran.
    pub storage_retries: u64,
    file: PathBuf,
}

impl Runs {
    /// Read back the history in `state_dir`.
    pub fn load(state_dir: &Path) -> Runs {
        let file = state_dir.join("runs.jsonl");
        let mut runs = Runs {
            recent: VecDeque::new(),
            stats: BTreeMap::new(),
            residency_refusals: 0,
            storage_retries: 0,
            file,
        };
        let text = std::fs::read_to_string(&runs.file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(KEEP)..] {
            if let Ok(run) = serde_json::from_str::<Run>(line) {
                runs.count(&run);
                runs.recent.push_back(run);
            }
        }
        // Keep the file from growing without bound.
        if lines.len() > 4 * KEEP {
            let kept: String = runs
                .recent
                .iter()
                .filter_map(|r| serde_json::to_string(r).ok())
                .map(|l| l + "\n")
                .collect();
            let tmp = runs.file.with_extension("jsonl.tmp");
            if std::fs::write(&tmp, kept)
                .and_then(|_| std::fs::rename(&tmp, &runs.file))
                .is_err()
            {
                tracing::warn!(file = %runs.file.display(), "Could not compact the run history.");
            }
        }
        runs
    }

    /// Add a new run.
    pub fn add(&mut self, run: Run) {
        self.recent.push_back(run);
        while self.recent.len() > KEEP {
            if let Some(pos) = self.recent.iter().position(|r| r.status.ended()) {
                self.recent.remove(pos);
            } else {
                break;
            }
        }
    }

    /// A run by id.
    pub fn get(&self, id: &str) -> Option<&Run> {
        self.recent.iter().rev().find(|r| r.id == id)
    }

    /// Change a run in place.
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut Run)) {
        if let Some(r) = self.recent.iter_mut().rev().find(|r| r.id == id) {
            f(r);
        }
    }

    /// Mark a run ended: count it and append it to the history file.
    pub fn finish(&mut self, id: &str) {
        let Some(run) = self.get(id).cloned() else {
            return;
        };
        self.count(&run);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .and_then(|mut f| {
                let mut line = serde_json::to_vec(&run).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)
            });
        if let Err(e) = appended {
            tracing::warn!(file = %self.file.display(), error = %e, "Could not append to the run history.");
        }
    }

    fn count(&mut self, run: &Run) {
        // Drills have their own series (from the drill record); restores
        // are not a job's runs.
        if !matches!(run.kind, Kind::Backup | Kind::Group) {
            return;
        }
        let s = self.stats.entry(run.job.clone()).or_default();
        *s.ended.entry(status_name(run.status)).or_default() += 1;
        if let Some(reason) = &run.reason {
            *s.failures.entry(reason.clone()).or_default() += 1;
        }
        if run.kind == Kind::Group {
            return;
        }
        s.last_duration = run.duration_seconds;
        if let Some(sum) = &run.summary {
            let n = |k: &str| sum.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            s.bytes_read += n("bytes_read");
            s.bytes_new += n("bytes_new");
            s.bytes_stored += n("bytes_stored");
            if run.status == Status::Succeeded {
                s.dedup_ratio = Some(n("bytes_read") as f64 / n("bytes_new").max(1) as f64);
            }
        }
        if run.status == Status::Succeeded {
            s.last_success = run.finished_at;
        }
    }

    /// The newest runs of `job`, newest first.
    pub fn of_job(&self, job: &str, n: usize) -> Vec<Run> {
        self.recent
            .iter()
            .rev()
            .filter(|r| r.job == job)
            .take(n)
            .cloned()
            .collect()
    }

    /// The run of `job` (or group) that is queued or running, if any.
    pub fn active(&self, job: &str) -> Option<&Run> {
        self.recent
            .iter()
            .rev()
            .find(|r| r.job == job && !r.status.ended())
    }
}

/// A status as the metrics and the API spell it.
pub fn status_name(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A new run id: time-ordered and unique.
fn new_run_id() -> String {
    format!(
        "{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S%3f"),
        hex::encode(rand::random::<[u8; 4]>())
    )
}
