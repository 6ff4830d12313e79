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
pub mod metrics;
pub mod runner;
pub mod schedule;
pub mod state;

use crate::config::Config;
use crate::ops::drills;
use crate::ops::protocol::{Exit, Message};
use anyhow::Context;
use chrono::{DateTime, Utc};
use schedule::Schedule;
use state::{Kind, Run, Runs, Status};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, RwLock as AsyncRwLock, Semaphore, watch};

/// A config the agent accepted, with what it derived from it.
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// The copy the agent's commands read (`<state-dir>/config-<hash>.toml`).
    pub frozen: PathBuf,
    /// The API's bearer token.
    pub token: Option<String>,
    /// When it was accepted.
    pub loaded_at: DateTime<Utc>,
}

impl Loaded {
    /// Read and validate the config at `path` (and its token file); with
    /// `freeze`, also write the copy the agent's commands read.
    pub fn load(path: &Path, freeze: bool) -> anyhow::Result<Loaded> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config {}", path.display()))?;
        let config = Config::parse(path, &text)?;
        let token = match &config.agent.api_token_file {
            Some(file) => {
                let t = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the API token file {}", file.display()))?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    anyhow::bail!(
                        "the API token in {} is shorter than 16 characters",
                        file.display()
                    );
                }
                Some(t)
            }
            None => None,
        };
        let dir = &config.agent.state_dir;
        if !freeze {
            return Ok(Loaded {
                frozen: path.to_path_buf(),
                config,
                token,
                loaded_at: Utc::now(),
            });
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let hash = crate::repo::Id::hash(text.as_bytes()).to_hex();
        let frozen = dir.join(format!("config-{}.toml", &hash[..16]));
        if !frozen.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = dir.join(format!(".config-{}.tmp", &hash[..16]));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &frozen)
                .with_context(|| format!("writing {}", frozen.display()))?;
        }
        Ok(Loaded {
            config,
            frozen,
            token,
            loaded_at: Utc::now(),
        })
    }

    /// Every schedule the config declares.
    fn schedules(&self) -> Vec<(Target, Schedule)> {
        let c = &self.config;
        let tz = |t: &Option<String>| t.clone().unwrap_or_else(|| c.agent.timezone.clone());
        let mut out = Vec::new();
        for (name, job) in &c.jobs {
            if let Some(s) = &job.schedule
                && let Ok(s) = Schedule::parse(s, &tz(&job.timezone), job.schedule_spread_secs)
            {
                out.push((Target::Backup(name.clone()), s));
            }
            if let Some(s) = job.drill.as_ref().and_then(|d| d.schedule.as_ref())
                && let Ok(s) = Schedule::parse(s, &tz(&job.timezone), job.schedule_spread_secs)
            {
                out.push((Target::Drill(name.clone()), s));
            }
        }
        for (name, g) in &c.groups {
            if let Ok(s) = Schedule::parse(&g.schedule, &tz(&g.timezone), g.schedule_spread_secs) {
                out.push((Target::Group(name.clone()), s));
            }
        }
        out
    }
}

/// How long retention waits for a tenant's other runs to end.
const RETENTION_WAIT: Duration = Duration::from_secs(60);

/// What a run is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Back up a job.
    Backup(String),
    /// Run a group.
    Group(String),
    /// Drill a job.
    Drill(String),
    /// Restore (through the API).
    Restore(RestoreSpec),
}

impl Target {
    /// The key that keeps two runs of the same thing apart.
    fn busy_key(&self) -> Option<String> {
        match self {
            Target::Backup(j) => Some(format!("backup:{j}")),
            Target::Group(g) => Some(format!("group:{g}")),
            Target::Drill(j) => Some(format!("drill:{j}")),
            Target::Restore(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Backup(j) => format!("job {j}"),
            Target::Group(g) => format!("group {g}"),
            Target::Drill(j) => format!("the drill of job {j}"),
            Target::Restore(r) => format!("a restore for {}", r.label()),
        }
    }
}

/// A restore asked for through the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// Restore with this job (its tenant, adapter, grants, configuration).
    pub job: Option<String>,
    /// Or restore a filesystem snapshot of this tenant (with `target`).
    pub tenant: Option<String>,
    /// Snapshot id or prefix, or `latest` (the job's latest with `job`).
    #[serde(default = "latest")]
    pub snapshot: String,
    /// A directory under the agent's restore root (relative, or absolute
    /// inside it) to restore files into.
    pub target: Option<String>,
    /// Only these paths of the snapshot.
    #[serde(default)]
    pub include: Vec<String>,
    /// Adapter configuration overrides (`{"target-database": "shop_copy"}`).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

fn latest() -> String {
    "latest".into()
}

impl RestoreSpec {
    fn label(&self) -> String {
        match (&self.job, &self.tenant) {
            (Some(j), _) => format!("job {j}"),
            (None, Some(t)) => format!("tenant {t}"),
            _ => "nothing".into(),
        }
    }
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// The job, group or tenant is not in the config.
    #[error("{0}")]
    NotFound(String),
    /// It is running already.
    #[error("{0} is running already")]
    Busy(String),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    Stopping,
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
}

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
}

impl Agent {
    /// Load the config and the run history.
    pub fn new(config_path: &Path) -> anyhow::Result<Arc<Agent>> {
        let loaded = Loaded::load(config_path, true)?;
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
        }))
    }

    /// The config in force.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.read().expect("config lock").clone()
    }

    /// Whether the agent takes new runs and its scheduler is running.
    pub fn ready(&self) -> bool {
        !*self.stopping.borrow() && self.scheduler_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When `target`'s schedule next fires.
    pub fn next_run(&self, target: &Target) -> Option<DateTime<Utc>> {
        self.next_runs
            .lock()
            .expect("next runs")
            .get(&target.describe())
            .copied()
    }

    /// Re-read the config file: a valid one takes effect for the next runs
    /// (runs in progress finish under the old one); an invalid one is
    /// refused and the old one stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let new = Loaded::load(&self.config_path, true)?;
        let old = self.loaded();
        if new.config.agent.listen != old.config.agent.listen {
            tracing::warn!("The API's listen address changed; it takes effect at the next start.");
        }
        let cap = new.config.agent.max_concurrent_jobs;
        {
            let mut current = self.slot_count.lock().expect("slots");
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
        *self.loaded.write().expect("config lock") = Arc::new(new);
        self.reloaded.notify_one();
        Ok(())
    }

    fn tenant_lock(&self, tenant: &str) -> Arc<AsyncRwLock<()>> {
        self.tenants
            .lock()
            .expect("tenant locks")
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
                self.check_restore(c, spec)?;
                (
                    Kind::Restore,
                    spec.job.clone().or(spec.tenant.clone()).unwrap_or_default(),
                )
            }
        };
        if let Some(key) = target.busy_key() {
            let mut busy = self.busy.lock().expect("busy");
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
                    let mut runs = self.runs.lock().expect("runs");
                    runs.stats.entry(name.clone()).or_default().skipped_overlap += 1;
                }
                tracing::warn!(target = %target.describe(), trigger, "Still running; this run is skipped.");
                return Err(TriggerError::Busy(target.describe()));
            }
            busy.insert(key);
        }
        let run = Run::queued(kind, &name, None, trigger);
        self.runs.lock().expect("runs").add(run.clone());
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

    fn check_restore(&self, c: &Config, spec: &RestoreSpec) -> Result<(), TriggerError> {
        match (&spec.job, &spec.tenant) {
            (Some(j), _) if !c.jobs.contains_key(j) => {
                return Err(TriggerError::NotFound(format!(
                    "job {j} is not in the config"
                )));
            }
            (Some(j), Some(t)) if c.jobs[j].tenant != *t => {
                return Err(TriggerError::Invalid(format!(
                    "job {j} belongs to tenant {}, not {t}",
                    c.jobs[j].tenant
                )));
            }
            (None, Some(t)) if !c.tenants.contains_key(t) => {
                return Err(TriggerError::NotFound(format!(
                    "tenant {t} is not in the config"
                )));
            }
            (None, Some(_)) if spec.target.is_none() => {
                return Err(TriggerError::Invalid(
                    "a restore by tenant needs a target directory".into(),
                ));
            }
            (None, None) => return Err(TriggerError::Invalid("give a job or a tenant".into())),
            _ => {}
        }
        if spec.snapshot.is_empty() || spec.snapshot.starts_with('-') {
            return Err(TriggerError::Invalid(format!(
                "snapshot {:?} is not an id or latest",
                spec.snapshot
            )));
        }
        for p in &spec.include {
            if !p.starts_with('/') {
                return Err(TriggerError::Invalid(format!(
                    "include {p:?}: give an absolute path inside the snapshot"
                )));
            }
        }
        for k in spec.set.keys() {
            if k.is_empty() || k.contains('=') {
                return Err(TriggerError::Invalid(format!(
                    "set: key {k:?} is not valid"
                )));
            }
            crate::config::check_override_key(k)
                .map_err(|e| TriggerError::Invalid(format!("set: {e}")))?;
        }
        if let Some(t) = &spec.target {
            self.restore_target(c, t)?;
        }
        Ok(())
    }

    /// The directory an API restore writes to: inside the restore root.
    fn restore_target(&self, c: &Config, target: &str) -> Result<PathBuf, TriggerError> {
        let root = c.agent.restore_root();
        let path = Path::new(target);
        let rel = if path.is_absolute() {
            path.strip_prefix(&root).map_err(|_| {
                TriggerError::Invalid(format!(
                    "target {target} is outside the agent's restore root {}",
                    root.display()
                ))
            })?
        } else {
            path
        };
        // One new directory right under the root: no deeper path, whose
        // parents (earlier restores, owned by whoever the snapshot says)
        // someone could swap for a link while the restore starts.
        let mut parts = rel.components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        ) {
            return Err(TriggerError::Invalid(format!(
                "target {target:?} must name one new directory directly in the restore root {} (no '/' or '..')",
                root.display()
            )));
        }
        let full = root.join(rel);
        if std::fs::symlink_metadata(&full).is_ok() {
            return Err(TriggerError::Invalid(format!(
                "target {target} exists; an API restore writes into a new directory"
            )));
        }
        Ok(full)
    }

    /// Create the new target directory in the restore root (created
    /// private to the agent's user if missing). `create_dir` fails if
    /// anything, a link included, took the name meanwhile.
    fn create_target(&self, c: &Config, target: &str) -> Result<PathBuf, String> {
        use std::os::unix::fs::DirBuilderExt;
        let full = self.restore_target(c, target).map_err(|e| e.to_string())?;
        let root = c.agent.restore_root();
        if !root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| format!("creating the restore root {}: {e}", root.display()))?;
        }
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(format!(
                    "the restore root {} is not a directory",
                    root.display()
                ));
            }
        }
        std::fs::create_dir(&full).map_err(|e| format!("creating {}: {e}", full.display()))?;
        Ok(full)
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
        self.runs.lock().expect("runs").update(id, |r| {
            r.status = Status::Running;
            r.started_at = Some(Utc::now());
        });
    }

    fn end(&self, id: &str, status: Status, error: Option<String>, reason: Option<&str>) {
        let mut runs = self.runs.lock().expect("runs");
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

    fn common_args(loaded: &Loaded) -> Vec<String> {
        vec!["--config".into(), loaded.frozen.display().to_string()]
    }

    /// Run a child and turn its end into the run's status.
    async fn child(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: Option<Duration>,
    ) -> (Status, Option<runner::Finished>) {
        let progress_id = id.to_string();
        let finished = runner::run(id, &args, timeout, self.abort.subscribe(), |p| {
            self.runs.lock().expect("runs").update(&progress_id, |r| {
                r.progress.bytes_read = p.bytes_read;
                r.progress.bytes_stored = p.bytes_stored;
            });
        })
        .await;
        let f = match finished {
            Ok(f) => f,
            Err(e) => {
                self.runs.lock().expect("runs").update(id, |r| {
                    r.error = Some(format!("cannot start the command: {e}"))
                });
                return (Status::Failed, None);
            }
        };
        if let Some(end) = &f.end {
            let mut runs = self.runs.lock().expect("runs");
            runs.residency_refusals += end.residency_refusals;
            runs.storage_retries += end.storage_retries;
        }
        let status = match (f.stopped, f.exit()) {
            // It finished its work as the stop came: what it recorded stands.
            (Some(_), Some(Exit::Ok)) => Status::Succeeded,
            (Some(runner::Stopped::Timeout), _) => Status::TimedOut,
            (Some(runner::Stopped::Abort), _) => Status::Aborted,
            (None, Some(Exit::Ok)) => Status::Succeeded,
            (None, Some(Exit::Incomplete)) => Status::Incomplete,
            (None, Some(Exit::Degraded)) => Status::Degraded,
            (None, Some(Exit::Failed) | None) => Status::Failed,
        };
        (status, Some(f))
    }

    /// Record a child's end: its report (a backup's or a restore's) as the
    /// run's summary, its error and the reason counted in the metrics.
    fn finish_child(&self, id: &str, status: Status, f: Option<&runner::Finished>) {
        let summary = f.and_then(|f| {
            f.messages.iter().rev().find_map(|m| match m {
                Message::Backup(r) => serde_json::to_value(r).ok(),
                Message::Restore(r) => serde_json::to_value(r).ok(),
                _ => None,
            })
        });
        self.runs.lock().expect("runs").update(id, |r| {
            if summary.is_some() {
                r.summary = summary;
            }
        });
        let refused = f.is_some_and(|f| f.residency_refusals() > 0);
        let (error, reason) = match status {
            Status::Succeeded => (None, None),
            Status::TimedOut => (
                Some(
                    "the run took longer than its timeout and was stopped; nothing was recorded"
                        .to_string(),
                ),
                Some("timeout"),
            ),
            Status::Aborted => (
                Some(
                    "the agent stopped and its grace period ran out; nothing was recorded"
                        .to_string(),
                ),
                Some("aborted"),
            ),
            Status::Incomplete => (f.map(|f| f.error()), Some("incomplete")),
            Status::Degraded => (f.map(|f| f.error()), Some("degraded")),
            _ => {
                let e = f.map(|f| f.error()).or_else(|| {
                    self.runs
                        .lock()
                        .expect("runs")
                        .get(id)
                        .and_then(|r| r.error.clone())
                });
                (e, Some(if refused { "residency" } else { "failed" }))
            }
        };
        self.end(id, status, error, reason);
    }

    /// Back up `job`, then apply its retention; `own_slot`: take a node
    /// slot (a group's jobs run in the group's).
    async fn backup(&self, loaded: &Loaded, id: &str, job: &str, own_slot: bool) {
        let Some(j) = loaded.config.jobs.get(job) else {
            self.end(
                id,
                Status::Failed,
                Some(format!("job {job} is no longer in the config")),
                Some("failed"),
            );
            return;
        };
        let tenant = self.tenant_lock(&j.tenant);
        let shared = tenant.read().await;
        let _permit = match own_slot {
            true => match self.slot(id).await {
                Some(p) => Some(p),
                None => return,
            },
            false => None,
        };
        let (status, f) = {
            let _shared = shared;
            self.start(id);
            let mut args = Self::common_args(loaded);
            args.extend(["backup".into(), "--job".into(), job.into()]);
            self.child(id, args, j.timeout_secs.map(Duration::from_secs))
                .await
        };
        if status == Status::Succeeded
            && let Some(r) = &j.retention
        {
            let outcome = self.retention(loaded, id, job, &j.tenant, r, &tenant).await;
            if outcome.get("error").is_some() {
                let mut runs = self.runs.lock().expect("runs");
                *runs
                    .stats
                    .entry(job.to_string())
                    .or_default()
                    .failures
                    .entry("retention".into())
                    .or_default() += 1;
            }
            self.runs
                .lock()
                .expect("runs")
                .update(id, |r| r.retention = Some(outcome));
        }
        self.finish_child(id, status, f.as_ref());
    }

    /// Forget (and prune) this host's snapshots of `job` by its policy, with
    /// the tenant's repository to itself. Waiting for it is bounded: while a
    /// writer waits, the tenant's new runs wait too, so a long restore or
    /// drill defers retention to the next backup instead.
    async fn retention(
        &self,
        loaded: &Loaded,
        id: &str,
        job: &str,
        tenant: &str,
        policy: &crate::config::RetentionConfig,
        lock: &AsyncRwLock<()>,
    ) -> serde_json::Value {
        let Ok(_alone) = tokio::time::timeout(RETENTION_WAIT, lock.write()).await else {
            tracing::info!(run = %id, %job, "Retention deferred: another run holds the tenant's repository.");
            return serde_json::json!({"deferred": "another run of the tenant held its repository"});
        };
        let mut args = Self::common_args(loaded);
        args.extend([
            "--tenant".into(),
            tenant.into(),
            "forget".into(),
            format!("--job={job}"),
            // Only this node's snapshots: other nodes apply their own
            // policy and keep their own drilled snapshots.
            format!("--host={}", crate::util::hostname()),
        ]);
        args.extend(policy.forget_flags());
        if policy.prune {
            args.push("--prune".into());
        }
        let (status, f) = self.child(&format!("{id}/retention"), args, None).await;
        match (status, &f) {
            (Status::Succeeded, Some(f)) => {
                let removed = f.messages.iter().rev().find_map(|m| match m {
                    Message::Forget(r) => Some(r.removed),
                    _ => None,
                });
                serde_json::json!({"removed": removed.unwrap_or(0), "pruned": policy.prune})
            }
            (_, f) => {
                let why = f
                    .as_ref()
                    .map(|f| f.error())
                    .unwrap_or_else(|| "cannot start forget".into());
                tracing::warn!(run = %id, %job, error = %why, "Retention failed.");
                serde_json::json!({"error": why})
            }
        }
    }

    async fn drill(&self, loaded: &Loaded, id: &str, job: &str) {
        let Some(j) = loaded.config.jobs.get(job) else {
            self.end(
                id,
                Status::Failed,
                Some(format!("job {job} is no longer in the config")),
                Some("failed"),
            );
            return;
        };
        let tenant = self.tenant_lock(&j.tenant);
        let _shared = tenant.read().await;
        let Some(_permit) = self.slot(id).await else {
            return;
        };
        self.start(id);
        let mut args = Self::common_args(loaded);
        args.extend(["drill".into(), job.into()]);
        let timeout = j
            .drill
            .as_ref()
            .and_then(|d| d.timeout_secs)
            .or(j.timeout_secs)
            .map(Duration::from_secs);
        let started = Utc::now();
        let (status, f) = self.child(id, args, timeout).await;
        let mut record = f.as_ref().and_then(|f| {
            f.messages.iter().rev().find_map(|m| match m {
                Message::Drill(r) => serde_json::to_value(r).ok(),
                _ => None,
            })
        });
        if record.is_none() {
            // Stopped (timeout, shutdown) or killed before it could record
            // itself: the agent records the failure, so the drill metrics
            // do not keep showing an older pass.
            let why = match (status, f.as_ref()) {
                (Status::TimedOut, _) => {
                    "the drill took longer than its timeout and was stopped".to_string()
                }
                (Status::Aborted, _) => "the agent stopped during the drill".to_string(),
                (_, Some(f)) => f.error(),
                (_, None) => "the drill could not start".to_string(),
            };
            let failed = drills::DrillRecord {
                job: job.to_string(),
                tenant: j.tenant.clone(),
                adapter: crate::runtime::AdapterSource::parse(&j.adapter).name(),
                snapshot_id: None,
                snapshot_time: None,
                started,
                finished: Utc::now(),
                passed: false,
                rpo_seconds: None,
                rto_seconds: (Utc::now() - started).as_seconds_f64(),
                entries: 0,
                problems: Vec::new(),
                error: Some(why),
            };
            if let Err(e) = drills::append(&loaded.config.agent.state_dir, &failed) {
                tracing::error!(run = %id, %job, error = %e, "Could not record the failed drill.");
            }
            record = serde_json::to_value(&failed).ok();
        }
        self.runs
            .lock()
            .expect("runs")
            .update(id, |r| r.summary = record);
        self.finish_child(id, status, f.as_ref());
    }

    async fn restore(&self, loaded: &Loaded, id: &str, spec: &RestoreSpec) {
        let c = &loaded.config;
        let tenant = spec
            .job
            .as_ref()
            .and_then(|j| c.jobs.get(j))
            .map(|j| j.tenant.clone())
            .or(spec.tenant.clone())
            .unwrap_or_default();
        let lock = self.tenant_lock(&tenant);
        let _shared = lock.read().await;
        let Some(_permit) = self.slot(id).await else {
            return;
        };
        self.start(id);
        let mut args = Self::common_args(loaded);
        // Values from the request go in `--flag=value` form and the
        // snapshot after `--`, so none of them can be read as another flag.
        args.extend(["--tenant".into(), tenant, "restore".into()]);
        if let Some(j) = &spec.job {
            args.push(format!("--job={j}"));
        }
        if let Some(t) = &spec.target {
            match self.create_target(c, t) {
                Ok(p) => args.push(format!("--target={}", p.display())),
                Err(e) => {
                    self.end(id, Status::Failed, Some(e), Some("failed"));
                    return;
                }
            }
        }
        for i in &spec.include {
            args.push(format!("--include={i}"));
        }
        for (k, v) in &spec.set {
            args.push(format!("--set={k}={v}"));
        }
        args.extend(["--".into(), spec.snapshot.clone()]);
        let (status, f) = self.child(id, args, None).await;
        self.finish_child(id, status, f.as_ref());
    }

    async fn group(self: &Arc<Self>, loaded: &Loaded, id: &str, group: &str) {
        let Some(g) = loaded.config.groups.get(group) else {
            self.end(
                id,
                Status::Failed,
                Some(format!("group {group} is no longer in the config")),
                Some("failed"),
            );
            return;
        };
        self.start(id);
        let hook_timeout = Duration::from_secs(g.hook_timeout_secs);
        // A shutdown's abort stops the quiesce hook too (its process group
        // is killed): the release hook must still have time to run.
        let mut abort = self.abort.subscribe();
        let quiesced = tokio::select! {
            r = runner::hook(&g.quiesce, hook_timeout) => r.map_err(|e| (e, Status::Failed, "quiesce")),
            _ = abort.wait_for(|a| *a) => Err(("the agent stopped during the quiesce hook".to_string(), Status::Aborted, "aborted")),
        };
        if let Err((e, status, reason)) = quiesced {
            // The release hook runs also now: quiesce may have done half.
            if let Err(r) = runner::hook(&g.release, hook_timeout).await {
                tracing::warn!(%group, error = %r, "The release hook failed.");
            }
            self.end(
                id,
                status,
                Some(format!("quiesce hook: {e}; no job of the group ran")),
                Some(reason),
            );
            return;
        }
        let mut failed = Vec::new();
        let mut aborted = false;
        for job in &g.jobs {
            if *self.abort.borrow() {
                aborted = true;
                break;
            }
            let run = Run::queued(Kind::Backup, job, Some(group), "group");
            let job_id = run.id.clone();
            {
                let mut runs = self.runs.lock().expect("runs");
                runs.add(run);
                runs.update(id, |r| r.runs.push(job_id.clone()));
            }
            let key = format!("backup:{job}");
            self.busy.lock().expect("busy").insert(key.clone());
            // Frees the job and ends its run even if the backup panics.
            let guard = RunGuard {
                agent: self.clone(),
                key: Some(key),
                id: job_id.clone(),
                counts_active: false,
            };
            Box::pin(self.backup(loaded, &job_id, job, false)).await;
            drop(guard);
            let status = self
                .runs
                .lock()
                .expect("runs")
                .get(&job_id)
                .map(|r| r.status);
            if status == Some(Status::Aborted) {
                aborted = true;
                break;
            }
            if status != Some(Status::Succeeded) {
                failed.push(job.clone());
            }
        }
        let released = runner::hook(&g.release, hook_timeout).await;
        match (aborted, failed.is_empty(), released) {
            (true, _, _) => self.end(
                id,
                Status::Aborted,
                Some("the agent stopped during the group".into()),
                Some("aborted"),
            ),
            (_, _, Err(e)) => self.end(
                id,
                Status::Failed,
                Some(format!("release hook: {e}")),
                Some("release"),
            ),
            (_, false, Ok(())) => self.end(
                id,
                Status::Failed,
                Some(format!("jobs that did not succeed: {}", failed.join(", "))),
                Some("failed"),
            ),
            (_, true, Ok(())) => self.end(id, Status::Succeeded, None, None),
        }
    }

    /// Fire schedules until the agent stops; a reload recomputes them.
    pub async fn schedule(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        self.scheduler_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            let loaded = self.loaded();
            let items = loaded.schedules();
            let mut next: Vec<Option<DateTime<Utc>>> = items
                .iter()
                .map(|(t, s)| s.next_after(Utc::now(), &t.describe()))
                .collect();
            loop {
                {
                    let mut nr = self.next_runs.lock().expect("next runs");
                    nr.clear();
                    for ((t, _), n) in items.iter().zip(&next) {
                        if let Some(n) = n {
                            nr.insert(t.describe(), *n);
                        }
                    }
                }
                let soonest = next
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (i, n)))
                    .min_by_key(|(_, n)| *n);
                let wait = async {
                    match soonest {
                        Some((_, at)) => {
                            let d = (at - Utc::now()).to_std().unwrap_or_default();
                            tokio::time::sleep(d).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = wait => {
                        let (i, at) = soonest.expect("a schedule fired");
                        let (target, sched) = &items[i];
                        let _ = self.trigger(target.clone(), "schedule");
                        next[i] = sched.next_after(at.max(Utc::now()), &target.describe());
                    }
                    _ = self.reloaded.notified() => break,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Stop: no new runs; running ones get `grace` to finish, then are
    /// aborted (no snapshot) and waited for.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.send_replace(true);
        let mut active = self.active.subscribe();
        let n = *active.borrow();
        if n > 0 {
            tracing::info!(
                running = n,
                grace_secs = grace.as_secs(),
                "Stopping: waiting for running jobs."
            );
        }
        if tokio::time::timeout(grace, active.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                "The grace period ran out: aborting the running jobs (they record no snapshot)."
            );
            self.abort.send_replace(true);
            // Stopped commands get their SIGTERM grace, and a group its
            // release hook, which must run: it ends the cold-backup window.
            let hooks = self
                .loaded()
                .config
                .groups
                .values()
                .map(|g| g.hook_timeout_secs)
                .max()
                .unwrap_or(0);
            let wait = runner::STOP_GRACE + Duration::from_secs(hooks + 10);
            if tokio::time::timeout(wait, active.wait_for(|n| *n == 0))
                .await
                .is_err()
            {
                tracing::error!("Runs did not end after being stopped; exiting anyway.");
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
        if let Some(key) = &self.key
            && let Ok(mut busy) = self.agent.busy.lock()
        {
            busy.remove(key);
        }
        let unfinished = self
            .agent
            .runs
            .lock()
            .ok()
            .is_some_and(|r| r.get(&self.id).is_some_and(|r| !r.status.ended()));
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

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let agent = Agent::new(config_path)?;
    let loaded = agent.loaded();
    let server = match &loaded.config.agent.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("agent: cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(address = %local, "API listening.");
            Some(tokio::spawn(api::serve(agent.clone(), listener)))
        }
        None => None,
    };
    tokio::spawn(agent.clone().schedule());
    tracing::info!(
        config = %config_path.display(),
        jobs = loaded.config.jobs.len(),
        groups = loaded.config.groups.len(),
        "Agent started."
    );
    loop {
        tokio::select! {
            _ = hup.recv() => match agent.reload() {
                Ok(()) => tracing::info!(config = %config_path.display(), "Reloaded the config."),
                Err(e) => tracing::error!(config = %config_path.display(), error = %format!("{e:#}"), "The new config is refused; the old one stays in force."),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = Duration::from_secs(agent.loaded().config.agent.shutdown_grace_secs);
    tracing::info!("Stopping.");
    agent.shutdown(grace).await;
    if let Some(s) = server {
        s.abort();
    }
    tracing::info!("Stopped.");
    Ok(())
}
