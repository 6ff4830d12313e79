//! Running one piece of work as a child process and recording its end: a
//! backup (then its retention), a drill, a restore, a group between its
//! hooks. What a child says comes through [`crate::ops::protocol`].

use super::request::{RestoreSpec, create_target};
use super::state::{Kind, Run, Status};
use super::{Agent, Loaded, RunGuard, runner};
use crate::ops::drills;
use crate::ops::protocol::{Exit, Message};
use crate::util::lock;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock as AsyncRwLock;

/// How long retention waits for a tenant's other runs to end.
const RETENTION_WAIT: Duration = Duration::from_secs(60);

impl Agent {
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
        let finished = runner::run(id, &args, timeout, self.abort.subscribe(), |m| {
            if let Message::Progress(p) = m {
                lock(&self.runs).update(&progress_id, |r| {
                    r.progress.bytes_read = p.bytes_read;
                    r.progress.bytes_stored = p.bytes_stored;
                });
            }
        })
        .await;
        let f = match finished {
            Ok(f) => f,
            Err(e) => {
                lock(&self.runs).update(id, |r| {
                    r.error = Some(format!("cannot start the command: {e}"))
                });
                return (Status::Failed, None);
            }
        };
        if let Some(end) = &f.end {
            let mut runs = lock(&self.runs);
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
        lock(&self.runs).update(id, |r| {
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
                let e = f
                    .map(|f| f.error())
                    .or_else(|| lock(&self.runs).get(id).and_then(|r| r.error.clone()));
                (e, Some(if refused { "residency" } else { "failed" }))
            }
        };
        self.end(id, status, error, reason);
    }

    /// The job's config; `None`, with the run ended as failed, when a
    /// reload removed the job after the run was queued.
    fn job_or_end<'a>(
        &self,
        loaded: &'a Loaded,
        id: &str,
        job: &str,
    ) -> Option<&'a crate::config::JobConfig> {
        let j = loaded.config.jobs.get(job);
        if j.is_none() {
            self.end(
                id,
                Status::Failed,
                Some(format!("job {job} is no longer in the config")),
                Some("failed"),
            );
        }
        j
    }

    /// Back up `job`, then apply its retention; `own_slot`: take a node
    /// slot (a group's jobs run in the group's).
    pub(super) async fn backup(&self, loaded: &Loaded, id: &str, job: &str, own_slot: bool) {
        let Some(j) = self.job_or_end(loaded, id, job) else {
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
                let mut runs = lock(&self.runs);
                *runs
                    .stats
                    .entry(job.to_string())
                    .or_default()
                    .failures
                    .entry("retention".into())
                    .or_default() += 1;
            }
            lock(&self.runs).update(id, |r| r.retention = Some(outcome));
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

    pub(super) async fn drill(&self, loaded: &Loaded, id: &str, job: &str) {
        let Some(j) = self.job_or_end(loaded, id, job) else {
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
        lock(&self.runs).update(id, |r| r.summary = record);
        self.finish_child(id, status, f.as_ref());
    }

    pub(super) async fn restore(&self, loaded: &Loaded, id: &str, spec: &RestoreSpec) {
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
            match create_target(c, t) {
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
        if let Some(u) = &spec.until {
            args.push(format!("--until={u}"));
        }
        if let Some(l) = &spec.until_lsn {
            args.push(format!("--until-lsn={l}"));
        }
        if let Some(x) = spec.until_xid {
            args.push(format!("--until-xid={x}"));
        }
        if let Some(t) = spec.timeline {
            args.push(format!("--timeline={t}"));
        }
        if spec.start {
            args.push("--start".into());
        }
        if let Some(p) = spec.port {
            args.push(format!("--port={p}"));
        }
        if let Some(a) = &spec.action {
            args.push(format!("--action={a}"));
        }
        // A recovery's base backup is the newest that fits unless one is
        // named.
        if !(spec.pitr() && spec.snapshot == "latest") {
            args.extend(["--".into(), spec.snapshot.clone()]);
        }
        let (status, f) = self.child(id, args, None).await;
        self.finish_child(id, status, f.as_ref());
    }

    pub(super) async fn group(self: &Arc<Self>, loaded: &Loaded, id: &str, group: &str) {
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
                let mut runs = lock(&self.runs);
                runs.add(run);
                runs.update(id, |r| r.runs.push(job_id.clone()));
            }
            let key = format!("backup:{job}");
            lock(&self.busy).insert(key.clone());
            // Frees the job and ends its run even if the backup panics.
            let guard = RunGuard {
                agent: self.clone(),
                key: Some(key),
                id: job_id.clone(),
                counts_active: false,
            };
            Box::pin(self.backup(loaded, &job_id, job, false)).await;
            drop(guard);
            let status = lock(&self.runs).get(&job_id).map(|r| r.status);
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
}
