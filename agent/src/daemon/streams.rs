//! The agent's WAL streams (docs/design/pitr.md §6): every job with a
//! `[jobs.J.wal]` table has a `cairn wal-stream --job J` child for as long
//! as the agent runs. A child that ends is started again after 1, 2, 4 …
//! 60 seconds (plus up to a second of jitter; the count starts over after
//! five minutes up). Each child's life is a run of kind `stream`, so
//! `/v1/runs` shows restarts and their errors. Streams take no node slot
//! and do not count as running jobs: they never end by themselves.
//!
//! A reload restarts a stream whose job (or tenant) changed, stops one
//! whose job went, and starts new ones; the old child's last flush ends
//! before the new one takes the spool. Stopping the agent stops every
//! stream (SIGTERM: a last flush) and waits for them. A child also gets
//! SIGTERM if the agent dies, even by SIGKILL (the runner's PDEATHSIG).

use super::state::{Kind, Run, Status};
use super::{Agent, runner};
use crate::ops::protocol::Message;
use crate::pitr::stream::Status as WalStatus;
use crate::util::lock;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A stream's state, as `/v1/jobs` (`wal`) and `/metrics` show it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StreamState {
    /// Whether its child runs.
    pub up: bool,
    /// Since when the current child runs.
    pub since: Option<DateTime<Utc>>,
    /// Children started after one ended.
    pub restarts: u64,
    /// When the next child starts, while none runs.
    pub next_start: Option<DateTime<Utc>>,
    /// Why the last child ended, if it failed.
    pub last_error: Option<String>,
    /// What the current (or last) child said last.
    pub status: Option<WalStatus>,
    /// Files stored, over every child.
    pub files_stored_total: u64,
    /// Receiver restarts, over every child.
    pub receiver_restarts_total: u64,
    /// Damaged spool files, over every child.
    pub damaged_files_total: u64,
}

impl StreamState {
    /// Files stored, over every child, the running one included.
    pub fn files_stored(&self) -> u64 {
        self.files_stored_total + self.live().map_or(0, |s| s.files_stored)
    }

    /// Receiver restarts, over every child, the running one included.
    pub fn receiver_restarts(&self) -> u64 {
        self.receiver_restarts_total + self.live().map_or(0, |s| s.receiver_restarts)
    }

    /// Damaged spool files, over every child, the running one included.
    pub fn damaged_files(&self) -> u64 {
        self.damaged_files_total + self.live().map_or(0, |s| s.damaged_files)
    }

    /// The running child's state (an ended child's counts are in the totals).
    fn live(&self) -> Option<&WalStatus> {
        self.status.as_ref().filter(|_| self.up)
    }
}

/// A running supervisor.
pub(super) struct Handle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The job's and its tenant's settings, as they were when it started.
    fingerprint: String,
}

/// Longest pause before a child starts again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A child up this long counts as healthy: the pause starts over at 1 s.
const HEALTHY: Duration = Duration::from_secs(300);

impl Agent {
    /// Start, restart and stop streams to match the config in force.
    pub(super) fn sync_streams(self: &Arc<Self>) {
        if *self.stopping.borrow() {
            return;
        }
        let loaded = self.loaded();
        let c = &loaded.config;
        let wanted: std::collections::BTreeMap<String, String> = c
            .jobs
            .iter()
            .filter(|(_, j)| j.wal.is_some())
            .map(|(name, j)| (name.clone(), format!("{j:?}{:?}", c.tenants.get(&j.tenant))))
            .collect();
        let mut handles = lock(&self.stream_handles);
        let names: Vec<String> = handles.keys().cloned().collect();
        let mut previous = std::collections::HashMap::new();
        for name in names {
            if wanted.get(&name) != handles.get(&name).map(|h| &h.fingerprint) {
                let h = handles.remove(&name).expect("listed");
                tracing::info!(job = %name, "The job's WAL stream stops (its job changed or went).");
                h.stop.send_replace(true);
                previous.insert(name, h.task);
            }
        }
        for (name, fingerprint) in wanted {
            if handles.contains_key(&name) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(self.clone().supervise(
                name.clone(),
                stop_rx,
                previous.remove(&name),
            ));
            handles.insert(
                name,
                Handle {
                    stop,
                    task,
                    fingerprint,
                },
            );
        }
        lock(&self.streams).retain(|name, _| handles.contains_key(name));
    }

    /// Tell every stream to stop (each child's last flush), now; the
    /// future waits for them, at most `wait`.
    pub(super) fn stop_streams(&self, wait: Duration) -> impl Future<Output = ()> + use<> {
        let handles: Vec<Handle> = std::mem::take(&mut *lock(&self.stream_handles))
            .into_values()
            .collect();
        if !handles.is_empty() {
            tracing::info!(
                streams = handles.len(),
                "Stopping the WAL streams (a last flush each)."
            );
        }
        for h in &handles {
            h.stop.send_replace(true);
        }
        let all = futures::future::join_all(handles.into_iter().map(|h| h.task));
        async move {
            if tokio::time::timeout(wait, all).await.is_err() {
                tracing::error!(
                    "WAL streams did not stop in time; exiting anyway (their children get SIGTERM when the agent ends)."
                );
            }
        }
    }

    /// Keep job `job`'s stream running until `stop`.
    async fn supervise(
        self: Arc<Self>,
        job: String,
        mut stop: watch::Receiver<bool>,
        previous: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(p) = previous {
            let _ = p.await;
        }
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            let loaded = self.loaded();
            if !loaded.config.jobs.contains_key(&job) {
                break;
            }
            let run = Run::queued(Kind::Stream, &job, None, "stream");
            let id = run.id.clone();
            lock(&self.runs).add(run);
            self.start(&id);
            {
                let mut streams = lock(&self.streams);
                let s = streams.entry(job.clone()).or_default();
                s.up = true;
                s.since = Some(Utc::now());
                s.next_start = None;
                s.status = None;
            }
            let args = vec![
                "--config".to_string(),
                loaded.frozen.display().to_string(),
                "wal-stream".into(),
                "--job".into(),
                job.clone(),
            ];
            let began = Instant::now();
            let mut last: Option<WalStatus> = None;
            let finished = runner::run(&format!("stream:{job}"), &args, None, stop.clone(), |m| {
                if let Message::WalStatus(s) = m {
                    last = Some(s.clone());
                    lock(&self.streams).entry(job.clone()).or_default().status = Some(s.clone());
                }
            })
            .await;
            let asked = *stop.borrow();
            let (status, error) = match &finished {
                Ok(f) if f.code == Some(0) => (Status::Succeeded, None),
                Ok(_) if asked => (Status::Aborted, Some("stopped by the agent".to_string())),
                Ok(f) => (Status::Failed, Some(f.error())),
                Err(e) => (
                    Status::Failed,
                    Some(format!("cannot start wal-stream: {e}")),
                ),
            };
            let reason = match status {
                Status::Succeeded => None,
                Status::Aborted => Some("aborted"),
                _ => Some("failed"),
            };
            self.end(&id, status, error.clone(), reason);
            {
                let mut streams = lock(&self.streams);
                let s = streams.entry(job.clone()).or_default();
                s.up = false;
                if let Some(l) = &last {
                    s.files_stored_total += l.files_stored;
                    s.receiver_restarts_total += l.receiver_restarts;
                    s.damaged_files_total += l.damaged_files;
                }
                if status != Status::Succeeded && !asked {
                    s.last_error = error.clone();
                }
            }
            if asked || *stop.borrow() {
                break;
            }
            if began.elapsed() >= HEALTHY {
                failures = 0;
            }
            let pause = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
                + Duration::from_millis(rand::random::<u64>() % 1000);
            failures = failures.saturating_add(1);
            tracing::warn!(job = %job, error = error.as_deref().unwrap_or("it ended"), pause_secs = pause.as_secs_f64(), "The WAL stream ended; it starts again after a pause.");
            {
                let mut streams = lock(&self.streams);
                let s = streams.entry(job.clone()).or_default();
                s.next_start =
                    Some(Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default());
                s.restarts += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// Each stream's state, by job.
    pub fn stream_states(&self) -> std::collections::BTreeMap<String, StreamState> {
        lock(&self.streams).clone()
    }
}

/// The stream's state as `/v1/jobs` shows it (`wal`).
pub fn view(s: &StreamState) -> serde_json::Value {
    let st = s.status.as_ref();
    serde_json::json!({
        "up": s.up,
        "state": if s.up { st.map_or("starting", |x| x.state.as_str()) } else { "restarting" },
        "since": s.since,
        "restarts": s.restarts,
        "next_start": s.next_start,
        "timeline": st.and_then(|x| x.timeline),
        "server_lsn": st.and_then(|x| x.server_lsn.clone()),
        "stored_lsn": st.and_then(|x| x.stored_lsn.clone()),
        "lag_bytes": st.and_then(|x| x.lag_bytes),
        "lag_seconds": st.and_then(|x| x.lag_seconds),
        "last_stored_at": st.and_then(|x| x.last_stored_at.clone()),
        "files_stored": s.files_stored(),
        "receiver_restarts": s.receiver_restarts(),
        "damaged_files": s.damaged_files(),
        "spool_bytes": st.map(|x| x.spool_bytes),
        "error": st.and_then(|x| x.error.clone()).or_else(|| s.last_error.clone()),
    })
}
