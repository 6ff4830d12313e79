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
    Restore(RestoreSpec),
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
}

fn latest() -> String {
    "latest".into()
}

impl RestoreSpec {
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
