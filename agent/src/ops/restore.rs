//! Restore and verify: run a snapshot's adapter over it, under a shared
//! lock, to write it back (restore) or to compare it with what is live
//! (verify).

use super::{Error, Result, Store};
use crate::repo::Id;
use crate::repo::snapshot::Snapshot;
use crate::runtime::{
    AdapterSource, Grants, Limits, RestoreOutcome, RestoreRequest, RestoreResult, Runtime,
};
use serde::{Deserialize, Serialize};

/// What to restore and with what.
pub struct Options {
    /// The snapshot.
    pub snapshot: Id,
    /// Its root tree.
    pub tree: Id,
    /// The adapter.
    pub source: AdapterSource,
    /// What the adapter may reach (the target directory, its server).
    pub grants: Grants,
    /// The adapter's configuration.
    pub config: serde_json::Value,
    /// Absolute paths inside the snapshot to restore (empty: all).
    pub include: Vec<String>,
    /// Rewrite files the target already has whole.
    pub overwrite: bool,
    /// The adapter's memory and time limits.
    pub limits: Limits,
    /// Where it goes, as the report names it (a directory, an adapter).
    pub target: String,
}

/// What a restore wrote (`restore --json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "message_type", rename = "summary")]
pub struct Report {
    /// The snapshot restored.
    pub snapshot_id: String,
    /// Where it went.
    pub target: String,
    /// Files written.
    pub files: u64,
    /// Directories written.
    pub directories: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files the target already had whole, kept.
    pub files_unchanged: u64,
    /// Entries not restored, each with why.
    pub not_restored: Vec<String>,
}

/// What a verify found (`verify --json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "message_type", rename = "verify")]
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot_id: String,
    /// Entries compared.
    pub entries: u64,
    /// Bytes read and authenticated.
    pub bytes: u64,
    /// Every difference, named.
    pub problems: Vec<String>,
}

/// Restore a snapshot through its adapter.
pub async fn run(store: &Store, o: Options) -> Result<Report> {
    let (snapshot, target, adapter) = (o.snapshot, o.target.clone(), o.source.name());
    let result = adapter_pass(store, o, false, "restore failed").await?;
    let RestoreOutcome::Restored(s) = result.outcome else {
        return Err(Error::Adapter(anyhow::anyhow!(
            "adapter {adapter}: answered a restore with a verify report"
        )));
    };
    Ok(Report {
        snapshot_id: snapshot.to_hex(),
        target,
        files: s.files,
        directories: s.directories,
        symlinks: s.symlinks,
        bytes: s.bytes,
        files_unchanged: result.unchanged,
        not_restored: result.left_out,
    })
}

/// Verify a snapshot through its adapter; the report lists every problem
/// (an empty list: it verified).
pub async fn verify(store: &Store, o: Options) -> Result<VerifyReport> {
    let (snapshot, adapter) = (o.snapshot, o.source.name());
    let result = adapter_pass(store, o, true, "verify failed").await?;
    let RestoreOutcome::Verified(r) = result.outcome else {
        return Err(Error::Adapter(anyhow::anyhow!(
            "adapter {adapter}: answered a verify with a restore summary"
        )));
    };
    Ok(VerifyReport {
        snapshot_id: snapshot.to_hex(),
        entries: r.entries,
        bytes: r.bytes,
        problems: r.problems,
    })
}

/// Run the adapter's restore (or verify) under a shared lock; what the
/// adapter run fails with is said to be `what` (the lock's own failure is
/// said as it is).
async fn adapter_pass(
    store: &Store,
    o: Options,
    verify: bool,
    what: &str,
) -> Result<RestoreResult> {
    let _lock = store.read_lock().await?;
    let request = RestoreRequest {
        repo: store.repo.clone(),
        tree: o.tree,
        include: o.include,
        grants: o.grants,
        config: o.config,
        overwrite: o.overwrite,
    };
    Runtime::new()
        .map_err(Error::Adapter)?
        .restore(&o.source, request, &o.limits, verify)
        .await
        .map_err(|e| Error::Adapter(e.context(what.to_string())))
}

/// A job's adapter restoring another adapter's snapshot would misread it.
pub fn same_adapter(id: &Id, snap: &Snapshot, job: &str, source: &AdapterSource) -> Result<()> {
    if source.name() != snap.adapter() {
        super::invalid!(
            "snapshot {} was made by adapter {}, but job {job} uses {}{}",
            id.short(),
            crate::util::escaped(snap.adapter()),
            source.name(),
            made_by(snap)
        );
    }
    Ok(())
}

/// The adapter a snapshot names, when neither `--adapter` nor a job says
/// which one to run: only a bundled adapter. Whoever can write snapshots
/// must not choose a program to run on this machine (a path to any
/// `.wasm` file), so a component file is run only when named by the
/// operator: `--adapter`, or a configured job.
pub fn snapshot_adapter(id: &Id, snap: &Snapshot) -> Result<AdapterSource> {
    let name = snap.adapter();
    match AdapterSource::parse(name) {
        AdapterSource::Bundled(n) if crate::runtime::bundled::get(&n).is_some() => {
            Ok(AdapterSource::Bundled(n))
        }
        _ => super::invalid!(
            "snapshot {} was made by adapter {:?}{}, which is not a bundled adapter; name the component to restore it with: --adapter PATH (or --job)",
            id.short(),
            crate::util::escaped(name),
            made_by(snap)
        ),
    }
}

/// ` (made by component NAME VERSION, sha256 …)` when the
/// snapshot records which component made it.
fn made_by(snap: &Snapshot) -> String {
    snap.cairn_component
        .as_ref()
        .map(|c| format!(" (made by component {c})"))
        .unwrap_or_default()
}
