//! `cairn agent`: the long-running per-node agent. It runs the config's
//! jobs and groups on their schedules and its drills on theirs, applies
//! each job's retention after a successful backup, serves the REST API and
//! the metrics, and reacts to SIGHUP (reload) and SIGTERM (finish within
//! the grace period, then abort, exit 0).
//!
//! Each run is a child process of this binary ([`runner`]) reading a frozen
//! copy of the config the agent validated, so an edit on disk takes effect
//! only through a reload that accepts it. Runs are bounded node-wide by
//! `max-concurrent-jobs`; a job (or group) never runs twice at once: a
//! scheduled run that finds it still running is skipped and counted. Runs
//! of one tenant share its repository, where forget and prune need the
//! only lock: the agent orders them itself (backups and drills together,
//! retention alone) rather than let them fail on each other's locks.

pub mod api;
mod frozen;
pub mod metrics;
mod request;
pub mod runner;
mod runs;
mod scheduler;
mod shutdown;
pub mod state;
pub mod streams;

pub use frozen::Loaded;
pub use request::{RestoreSpec, Target, TriggerError};
pub use shutdown::run;

use crate::util::lock;
use chrono::{DateTime, Utc};
use state::{Kind, Run, Runs, Status};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, RwLock as AsyncRwLock, Semaphore, watch};

/// The agent.
pub struct Agent {
    config_path: PathBuf,
    loaded: std::sync::RwLock<Arc<Loaded>>,
    /// The memory of runs.
    pub runs: Mutex<Runs>,
    busy: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
    slot_count: Mutex<usize>,
    tenants: Mutex<HashMap<String, Arc<AsyncRwLock<()>>>>,
    stopping: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    reloaded: Notify,
    active: watch::Sender<usize>,
    /// When each schedule next fires, by target description.
    next_runs: Mutex<BTreeMap<String, DateTime<Utc>>>,
    scheduler_up: std::sync::atomic::AtomicBool,
    /// Held while a reload checks the new config: one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Each WAL stream's state, by job.
    streams: Mutex<BTreeMap<String, streams::StreamState>>,
    /// Each WAL stream's supervisor, by job.
    stream_handles: Mutex<BTreeMap<String, streams::Handle>>,
}

impl Agent {
    /// Load the config and the run history.
    pub async fn new(config_path: &Path) -> anyhow::Result<Arc<Agent>> {
        let loaded = Loaded::load_checked(config_path, true, false).await?;
        let runs = Runs::load(&loaded.config.agent.state_dir);
        let cap = loaded.config.agent.max_concurrent_jobs;
        Ok(Arc::new(Agent {
            config_path: config_path.to_path_buf(),
            loaded: std::sync::RwLock::new(Arc::new(loaded)),
            runs: Mutex::new(runs),
            busy: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(cap)),
            slot_count: Mutex::new(cap),
            tenants: Mutex::new(HashMap::new()),
            stopping: watch::channel(false).0,
            abort: watch::channel(false).0,
            reloaded: Notify::new(),
            active: watch::channel(0).0,
            next_runs: Mutex::new(BTreeMap::new()),
            scheduler_up: std::sync::atomic::AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
            streams: Mutex::new(BTreeMap::new()),
            stream_handles: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The config in force.
    pub fn loaded(&self) -> Arc<Loaded> {
        crate::util::read(&self.loaded).clone()
    }

    /// Whether the agent takes new runs and its scheduler is running.
    pub fn ready(&self) -> bool {
        !*self.stopping.borrow() && self.scheduler_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When `target`'s schedule next fires.
    pub fn next_run(&self, target: &Target) -> Option<DateTime<Utc>> {
        lock(&self.next_runs).get(&target.describe()).copied()
    }

    /// Re-read the config file: a valid one takes effect for the next runs
    /// (runs in progress finish under the old one); an invalid one is
    /// refused and the old one stays.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        let new = Loaded::load_checked(&self.config_path, true, false).await?;
        let old = self.loaded();
        if new.config.agent.listen != old.config.agent.listen {
            tracing::warn!("The API's listen address changed; it takes effect at the next start.");
        }
        let cap = new.config.agent.max_concurrent_jobs;
        {
            let mut current = lock(&self.slot_count);
            if cap > *current {
                self.slots.add_permits(cap - *current);
            } else if cap < *current {
                let gone = self.slots.forget_permits(*current - cap);
                if gone < *current - cap {
                    tracing::warn!(
                        cap,
                        "Fewer concurrent jobs: the cap shrinks as running jobs end."
                    );
                    // Take the rest as running jobs give them back.
                    let slots = self.slots.clone();
                    let rest = (*current - cap - gone) as u32;
                    tokio::spawn(async move {
                        if let Ok(p) = slots.acquire_many_owned(rest).await {
                            p.forget();
                        }
                    });
                }
            }
            *current = cap;
        }
        *crate::util::write(&self.loaded) = Arc::new(new);
        self.reloaded.notify_one();
        Ok(())
    }

    fn tenant_lock(&self, tenant: &str) -> Arc<AsyncRwLock<()>> {
        lock(&self.tenants)
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }

    /// Start a run of `target`. A target still running is not started
    /// again: the caller gets [`TriggerError::Busy`] (a scheduled run is
    /// counted as skipped).
    pub fn trigger(self: &Arc<Self>, target: Target, trigger: &str) -> Result<Run, TriggerError> {
        if *self.stopping.borrow() {
            return Err(TriggerError::Stopping);
        }
        let loaded = self.loaded();
        let c = &loaded.config;
        let (kind, name) = match &target {
            Target::Backup(j) | Target::Drill(j) => {
                if !c.jobs.contains_key(j) {
                    return Err(TriggerError::NotFound(format!(
                        "job {j} is not in the config"
                    )));
                }
                let kind = if matches!(target, Target::Backup(_)) {
                    Kind::Backup
                } else {
                    Kind::Drill
                };
                (kind, j.clone())
            }
            Target::Group(g) => {
                if !c.groups.contains_key(g) {
                    return Err(TriggerError::NotFound(format!(
                        "group {g} is not in the config"
                    )));
                }
                (Kind::Group, g.clone())
            }
            Target::Restore(spec) => {
                request::check_restore(c, spec)?;
                (
                    Kind::Restore,
                    spec.job.clone().or(spec.tenant.clone()).unwrap_or_default(),
                )
            }
        };
        if let Some(key) = target.busy_key() {
            let mut busy = lock(&self.busy);
            // A job inside a running group is busy too, and a group whose
            // job runs alone waits for nothing: it is skipped.
            let group_jobs: Vec<String> = match &target {
                Target::Group(g) => c.groups[g]
                    .jobs
                    .iter()
                    .map(|j| format!("backup:{j}"))
                    .collect(),
                _ => Vec::new(),
            };
            let in_group = match &target {
                Target::Backup(j) => c.group_of(j).map(|g| format!("group:{g}")),
                _ => None,
            };
            if busy.contains(&key)
                || group_jobs.iter().any(|k| busy.contains(k))
                || in_group.is_some_and(|k| busy.contains(&k))
            {
                if trigger == "schedule" && matches!(kind, Kind::Backup | Kind::Group) {
                    let mut runs = lock(&self.runs);
                    runs.stats.entry(name.clone()).or_default().skipped_overlap += 1;
                }
                tracing::warn!(target = %target.describe(), trigger, "Still running; this run is skipped.");
                return Err(TriggerError::Busy(target.describe()));
            }
            busy.insert(key);
        }
        let run = Run::queued(kind, &name, None, trigger);
        lock(&self.runs).add(run.clone());
        self.active.send_modify(|n| *n += 1);
        let guard = RunGuard {
            agent: self.clone(),
            key: target.busy_key(),
            id: run.id.clone(),
            counts_active: true,
        };
        tokio::spawn(async move {
            let agent = guard.agent.clone();
            let id = guard.id.clone();
            let loaded = agent.loaded();
            // Backups, drills and restores take their node slot once their
            // tenant's repository is theirs to share, so runs waiting
            // behind a tenant's prune do not hold slots other tenants need;
            // a group takes one slot for all its jobs.
            match &target {
                Target::Backup(j) => agent.backup(&loaded, &id, j, true).await,
                Target::Drill(j) => agent.drill(&loaded, &id, j).await,
                Target::Group(g) => {
                    if let Some(permit) = agent.slot(&id).await {
                        agent.group(&loaded, &id, g).await;
                        drop(permit);
                    }
                }
                Target::Restore(spec) => agent.restore(&loaded, &id, spec).await,
            }
            drop(guard);
        });
        Ok(run)
    }

    /// Wait for a slot under the node-wide cap; `None` if the agent began
    /// to stop first (the run is then recorded as aborted).
    async fn slot(&self, id: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = stopping.wait_for(|s| *s) => {
                self.end(id, Status::Aborted, Some("the agent stopped before the run could start".into()), Some("aborted"));
                None
            }
        }
    }

    fn start(&self, id: &str) {
        lock(&self.runs).update(id, |r| {
            r.status = Status::Running;
            r.started_at = Some(Utc::now());
        });
    }

    fn end(&self, id: &str, status: Status, error: Option<String>, reason: Option<&str>) {
        let mut runs = lock(&self.runs);
        runs.update(id, |r| {
            let now = Utc::now();
            r.status = status;
            r.finished_at = Some(now);
            r.duration_seconds = r.started_at.map(|s| (now - s).as_seconds_f64());
            r.error = error;
            r.reason = reason.map(str::to_string);
        });
        runs.finish(id);
        if let Some(r) = runs.get(id) {
            match status {
                Status::Succeeded => {
                    tracing::info!(run = %id, job = %r.job, kind = ?r.kind, seconds = r.duration_seconds, "Run succeeded.")
                }
                _ => {
                    tracing::warn!(run = %id, job = %r.job, kind = ?r.kind, status = ?status, error = r.error.as_deref().unwrap_or(""), "Run did not succeed.")
                }
            }
        }
    }
}

/// Ends a run's bookkeeping however its task ends (a panic included): its
/// target is no longer busy, the agent no longer waits for it, and a run
/// left without an end is recorded as failed.
struct RunGuard {
    agent: Arc<Agent>,
    key: Option<String>,
    id: String,
    /// Whether the run counts in `active` (a group's job runs do not: the
    /// group does).
    counts_active: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            lock(&self.agent.busy).remove(key);
        }
        let unfinished = lock(&self.agent.runs)
            .get(&self.id)
            .is_some_and(|r| !r.status.ended());
        if unfinished {
            self.agent.end(
                &self.id,
                Status::Failed,
                Some("the run stopped unexpectedly; see the agent's log".into()),
                Some("failed"),
            );
        }
        if self.counts_active {
            self.agent.active.send_modify(|n| *n -= 1);
        }
    }
}
