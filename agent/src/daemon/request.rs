//! What can be asked of the agent (a backup, a group, a drill, a restore)
//! and the checks a request passes before a run starts: names that exist,
//! snapshot and paths well formed, a restore target that is one new
//! directory inside the agent's restore root.

use crate::config::Config;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    Restore(Box<RestoreSpec>),
}

impl Target {
    /// The key that keeps two runs of the same thing apart.
    pub(super) fn busy_key(&self) -> Option<String> {
        match self {
            Target::Backup(j) => Some(format!("backup:{j}")),
            Target::Group(g) => Some(format!("group:{g}")),
            Target::Drill(j) => Some(format!("drill:{j}")),
            Target::Restore(_) => None,
        }
    }

    pub(super) fn describe(&self) -> String {
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
    /// Point-in-time recovery of a job that streams its WAL (as `cairn
    /// restore --until`): a moment with its time zone, or `latest`.
    pub until: Option<String>,
    /// Or to just after the WAL record at this position.
    pub until_lsn: Option<String>,
    /// Or to just after this transaction's commit.
    #[serde(default, deserialize_with = "whole")]
    pub until_xid: Option<u64>,
    /// The timeline to follow.
    #[serde(default, deserialize_with = "whole")]
    pub timeline: Option<u32>,
    /// Start the recovered server and wait until it reaches the target.
    #[serde(default)]
    pub start: bool,
    /// With `start`: also listen on 127.0.0.1 at this port.
    #[serde(default, deserialize_with = "whole")]
    pub port: Option<u16>,
    /// At the target: `pause`, `promote` (the default) or `shutdown`.
    pub action: Option<String>,
}

/// A whole number as JSON Schema counts one: `114` or `114.0`.
fn whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(n) = <Option<serde_json::Number> as serde::Deserialize>::deserialize(d)? else {
        return Ok(None);
    };
    let value = n
        .as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        })
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number of 0 or more")))?;
    T::try_from(value)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

fn latest() -> String {
    "latest".into()
}

impl RestoreSpec {
    /// Whether it asks for a point-in-time recovery.
    pub(super) fn pitr(&self) -> bool {
        self.until.is_some() || self.until_lsn.is_some() || self.until_xid.is_some()
    }

    pub(super) fn label(&self) -> String {
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

pub(super) fn check_restore(c: &Config, spec: &RestoreSpec) -> Result<(), TriggerError> {
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
        restore_target(c, t)?;
    }
    check_pitr(c, spec)
}

/// The point-in-time fields: one target, for a job that streams its WAL,
/// into a target directory; the rest only with one.
fn check_pitr(c: &Config, spec: &RestoreSpec) -> Result<(), TriggerError> {
    let invalid = |m: String| Err(TriggerError::Invalid(m));
    let targets = [
        spec.until.is_some(),
        spec.until_lsn.is_some(),
        spec.until_xid.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() > 1 {
        return invalid("give one of until, until_lsn and until_xid".into());
    }
    if !spec.pitr() {
        if spec.timeline.is_some() || spec.start || spec.port.is_some() || spec.action.is_some() {
            return invalid(
                "timeline, start, port and action are for point-in-time recovery: give until, until_lsn or until_xid".into(),
            );
        }
        return Ok(());
    }
    let Some(job) = &spec.job else {
        return invalid("a point-in-time recovery needs a job".into());
    };
    if c.jobs.get(job).is_none_or(|j| j.wal.is_none()) {
        return invalid(format!(
            "job {job} does not stream its WAL ([jobs.{job}.wal]): it has no point-in-time recovery"
        ));
    }
    if spec.target.is_none() {
        return invalid("a point-in-time recovery needs a target directory".into());
    }
    if !spec.include.is_empty() || !spec.set.is_empty() {
        return invalid(
            "include and set do not apply to a point-in-time recovery (it restores the whole cluster)".into(),
        );
    }
    if let Some(u) = &spec.until
        && u != "latest"
        && chrono::DateTime::parse_from_rfc3339(u.trim()).is_err()
    {
        return invalid(format!(
            "until {u:?}: give an RFC 3339 moment with its time zone (2026-12-06T10:04:05Z) or latest"
        ));
    }
    if let Some(l) = &spec.until_lsn
        && l.parse::<crate::pitr::lsn::Lsn>().is_err()
    {
        return invalid(format!(
            "until_lsn {l:?} is not a WAL position like 16/B374D848"
        ));
    }
    if let Some(x) = spec.until_xid
        && x > u64::from(u32::MAX)
    {
        return invalid(format!("until_xid {x} is not a 32-bit transaction id"));
    }
    if spec.timeline == Some(0) {
        return invalid("timeline 0 does not exist".into());
    }
    if spec.port.is_some() && !spec.start {
        return invalid("port needs start".into());
    }
    if spec.port == Some(0) {
        return invalid("port 0 is not a port".into());
    }
    if let Some(a) = &spec.action
        && !["pause", "promote", "shutdown"].contains(&a.as_str())
    {
        return invalid(format!("action {a:?}: give pause, promote or shutdown"));
    }
    Ok(())
}

/// The directory an API restore writes to: inside the restore root.
fn restore_target(c: &Config, target: &str) -> Result<PathBuf, TriggerError> {
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
pub(super) fn create_target(c: &Config, target: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let full = restore_target(c, target).map_err(|e| e.to_string())?;
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
