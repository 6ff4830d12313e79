//! The host side of the adapter interface: what each WIT import does.
//!
//! Errors an adapter can act on (a path outside its grant, an unreadable
//! file) are returned as WIT `adapter-error` values. Host faults (storage
//! down, the pipeline stopped) trap the guest with a [`HostFault`], so the
//! job fails whatever the adapter would have done with the error.

use super::bindings::cairn::adapter0_1_0::{self as wit, types};
use super::grants::{GrantError, Grants};
use super::meta;
use super::{Limits, store_limits};
use crate::pipeline::chunker::{Chunker, ChunkerParams};
use crate::pipeline::parent::ParentTrees;
use crate::pipeline::pump;
use crate::pipeline::tree_builder::{TreeBuilder, TreeError, split_path};
use crate::pipeline::{PendingId, Pipeline, Stats};
use crate::read::{ContentReader, Walker, write};
use crate::repo::tree::{Node, go_mode};
use crate::repo::{Id, RepoError, Repository};
use std::io::Read;
use std::sync::Arc;
use types::{AdapterError, EntryKind, Metadata};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::WasiCtx;

mod archive;
mod confine;
mod fs;
mod log;
mod object_store;
mod process;
mod restore_writes;
mod secrets;
mod snapshot;

pub use process::ChildState;
pub(crate) use process::{Spawn, spawn_confined};

/// Files up to this size are read in one go on the calling task: a hop to
/// a blocking thread would cost more than the read.
const SMALL_FILE: u64 = 256 * 1024;
/// Largest single `read` handed to an adapter.
const MAX_READ: u32 = 4 * 1024 * 1024;

type HostResult<T> = wasmtime::Result<Result<T, AdapterError>>;

/// A failure of the host itself; it traps the guest and fails the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostFault(pub String);

fn fault(e: impl std::fmt::Display) -> wasmtime::Error {
    wasmtime::Error::new(HostFault(e.to_string()))
}

fn grant_error(e: GrantError) -> AdapterError {
    match e {
        GrantError::Denied(_) | GrantError::ReadOnly(_) | GrantError::NotGranted(_) => {
            AdapterError::Denied(e.to_string())
        }
        GrantError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            AdapterError::NotFound(e.to_string())
        }
        GrantError::Io { .. } => AdapterError::Io(e.to_string()),
    }
}

/// Repository errors: damage is the adapter's business (it may report
/// it); anything else is a host fault. A pack the index lists but the
/// storage does not hold is damage too (as for a restore's writes).
fn repo_error(e: RepoError) -> wasmtime::Result<AdapterError> {
    match e {
        RepoError::Corrupt { .. } | RepoError::BlobNotFound(_) => {
            Ok(AdapterError::Corrupt(e.to_string()))
        }
        RepoError::Storage(s) if s.is_not_found() => Ok(AdapterError::Corrupt(format!(
            "{s} (the index lists it; run `cairn check`)"
        ))),
        other => Err(fault(other)),
    }
}

fn tree_error(e: TreeError) -> wasmtime::Result<AdapterError> {
    match e {
        TreeError::Repo(r) => Err(fault(r)),
        other => Ok(AdapterError::Other(other.to_string())),
    }
}

/// What a backup job needs from its caller.
pub struct BackupRequest {
    /// The running write pipeline.
    pub pipeline: Pipeline,
    /// Paths the adapter may read.
    pub grants: Grants,
    /// The adapter's configuration.
    pub config: serde_json::Value,
    /// The parent snapshot's root tree, for unchanged-file detection.
    pub parent_tree: Option<Id>,
}

/// What a finished backup produced.
pub struct BackupOutcome {
    /// The snapshot's root tree.
    pub tree: Id,
    /// The adapter's own count.
    pub files: u64,
    /// Directories emitted.
    pub directories: u64,
    /// Entries the adapter could not read, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Files re-used from the parent without reading.
    pub unchanged: u64,
    /// The pipeline's counters.
    pub stats: Arc<Stats>,
    /// The component, as its `info` names itself, and its SHA-256.
    pub component: Option<crate::repo::snapshot::ComponentId>,
    /// Most linear memory the adapter held, in bytes.
    pub memory_peak: u64,
}

/// What a restore job needs from its caller.
pub struct RestoreRequest {
    /// The repository.
    pub repo: Arc<Repository>,
    /// The snapshot's root tree.
    pub tree: Id,
    /// Absolute paths inside the snapshot to restore (empty: all).
    pub include: Vec<String>,
    /// Paths the adapter may write (and read).
    pub grants: Grants,
    /// The adapter's configuration.
    pub config: serde_json::Value,
    /// Rewrite a file the target already has whole (same size and mtime
    /// as in the snapshot); by default it is kept, so a rerun resumes.
    pub overwrite: bool,
}

/// How far a restore got.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreProgress {
    /// Files whose content and metadata were written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files the target already had whole, kept.
    pub unchanged: u64,
    /// Files removed half-written (a storage failure, damaged data).
    pub removed: u64,
}

/// What a restore or verify produced.
pub enum RestoreOutcome {
    /// A restore's summary.
    Restored(types::RestoreSummary),
    /// A verification's report.
    Verified(types::VerifyReport),
}

/// An open file or stream being written.
pub struct WriterState {
    path: String,
    node: Node,
    chunker: Option<Chunker>,
    pending: Vec<PendingId>,
    size: u64,
    finished: bool,
    /// Why the host refused the entry (an invalid name): nothing of it is
    /// read or stored, and the backup is incomplete.
    refused: Option<String>,
}

/// An open entry being read.
pub struct ReaderState {
    path: String,
    reader: ContentReader,
    /// Plaintext bytes the content adds up to, according to the index.
    size: u64,
    /// The entry's node, when it came from the walk (a restore keeps a
    /// file the target already has whole: same size and mtime).
    node: Option<Node>,
}

/// Metadata to apply to a restored file through its own descriptor, once
/// its content is written (so writing cannot disturb the mtime, and no path
/// is resolved again).
struct FileMeta {
    mode: u32,
    owner: Option<(u32, u32)>,
    times: Option<(rustix::fs::Timespec, rustix::fs::Timespec)>,
}

impl FileMeta {
    fn from_metadata(m: &Metadata) -> Self {
        let ts = |t: types::Timestamp| rustix::fs::Timespec {
            tv_sec: t.seconds,
            tv_nsec: t.nanoseconds as _,
        };
        FileMeta {
            mode: m.mode,
            owner: m.uid.zip(m.gid),
            times: m.mtime.map(|mt| (ts(m.atime.unwrap_or(mt)), ts(mt))),
        }
    }

    fn apply(&self, file: &std::fs::File) -> std::io::Result<()> {
        if let Some((uid, gid)) = self.owner
            && rustix::process::geteuid().is_root()
        {
            rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(self.mode & 0o7777))?;
        if let Some((atime, mtime)) = self.times {
            rustix::fs::futimens(
                file,
                &rustix::fs::Timestamps {
                    last_access: atime,
                    last_modification: mtime,
                },
            )?;
        }
        Ok(())
    }
}

/// A file being written in the background by a restore.
struct PendingWrite {
    handle: tokio::task::JoinHandle<Result<(), WriteFailure>>,
    /// Hands the task the file's metadata; `None` once given or given up.
    meta: Option<tokio::sync::oneshot::Sender<FileMeta>>,
    /// Its entry among the unfinished files.
    unfinished: u64,
}

/// Files restored at once in the background.
const PARALLEL_WRITES: usize = 8;
/// Files whose metadata may still arrive through `set-metadata` while their
/// write is in flight; older ones get it applied by path.
const META_WINDOW: usize = 64;

struct BackupJob {
    pipeline: Pipeline,
    /// The granted paths, whose parents may be synthesised from real metadata.
    granted: Vec<String>,
    tree: TreeBuilder,
    params: ChunkerParams,
    parent: Option<ParentTrees>,
    writer_open: Option<String>,
    abandoned: Option<String>,
    skipped: Vec<(String, String)>,
    unchanged: u64,
    files: u64,
    directories: u64,
}

struct RestoreJob {
    repo: Arc<Repository>,
    root: Id,
    walker: Walker,
    /// The last file entry handed out, so `open` of it needs no tree walk,
    /// and its number in the walk (from 1).
    last: Option<(String, Node, u64)>,
    /// File entries handed out so far.
    files_walked: u64,
    /// Small files read ahead of the walk.
    prefetch: crate::read::prefetch::Prefetch,
    /// Damage handed to the adapter as errors. The job fails if any, even
    /// when the adapter ignores the error and reports success.
    damaged: Vec<String>,
    /// Entries of kinds adapters cannot restore (devices, fifos, sockets).
    left_out: Vec<String>,
    /// Files being written in the background, by restore path.
    writes: std::collections::HashMap<String, PendingWrite>,
    /// Paths whose metadata sender is still live, oldest first.
    meta_order: std::collections::VecDeque<String>,
    /// Bounds the writes in flight.
    slots: Arc<tokio::sync::Semaphore>,
    /// Background writes that failed: (path, error, its unfinished-file
    /// entry); no error for a write cut short by a storage failure (the
    /// file is removed all the same).
    failed_writes: Vec<(String, Option<AdapterError>, u64)>,
    /// A storage failure met by a background write: it stops the job, and
    /// is the error reported first.
    fault: Option<String>,
    /// Entries the host could not create (a name too long for the target,
    /// say), each with the reason: the restore goes on without them and
    /// ends incomplete.
    not_restored: Vec<String>,
    /// Rewrite files the target already has whole (`--overwrite always`).
    overwrite: bool,
    /// Files kept because the target already had them whole.
    unchanged: u64,
    /// Files whose write a storage failure cut short (removed).
    interrupted: u64,
    /// Files whose content and metadata were written, and their bytes.
    progress: Arc<Progress>,
}

/// What a restore's background writes have finished.
#[derive(Default)]
struct Progress {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// How a background write failed.
enum WriteFailure {
    /// The entry could not be written (damaged data, a local I/O error):
    /// the file is removed and the job fails once everything else is done.
    Entry(AdapterError),
    /// The storage failed: the job stops with this as its cause.
    Fault(String),
}

enum Job {
    Backup(Box<BackupJob>),
    Restore(Box<RestoreJob>),
    /// `configuration.check`: settings only, no snapshot either way.
    Check,
}

/// The data of one job's store.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: super::JobLimiter,
    adapter: String,
    grants: Grants,
    config: String,
    job: Job,
    /// The clients of the job's bucket grants, made on first use.
    buckets: object_store::Buckets,
    /// Every process the adapter started.
    started: Vec<process::Started>,
}

impl HostState {
    pub(super) fn for_backup(
        adapter: String,
        wasi: WasiCtx,
        limits: &Limits,
        req: BackupRequest,
    ) -> Self {
        let params = ChunkerParams::new(req.pipeline.repo().config().chunker_polynomial.0);
        let granted = req.grants.paths();
        HostState {
            wasi,
            table: super::new_table(),
            limits: store_limits(limits),
            adapter,
            grants: req.grants,
            config: req.config.to_string(),
            job: Job::Backup(Box::new(BackupJob {
                granted,
                pipeline: req.pipeline,
                tree: TreeBuilder::new(),
                params,
                parent: req.parent_tree.map(ParentTrees::new),
                writer_open: None,
                abandoned: None,
                skipped: Vec::new(),
                unchanged: 0,
                files: 0,
                directories: 0,
            })),
            buckets: Default::default(),
            started: Vec::new(),
        }
    }

    /// A store for `configuration.check`: no grants, no snapshot.
    pub(super) fn for_check(adapter: String, wasi: WasiCtx, limits: &Limits) -> Self {
        HostState {
            wasi,
            table: super::new_table(),
            limits: store_limits(limits),
            adapter,
            grants: Grants::default(),
            config: String::new(),
            job: Job::Check,
            buckets: Default::default(),
            started: Vec::new(),
        }
    }

    /// The processes the adapter started and neither waited for nor
    /// killed: still running, or killed by the host when the adapter
    /// dropped them. A call that returns success with any of these did not
    /// see its work end (a restore's client may have been cut off).
    pub(super) fn unsettled_processes(&self) -> Vec<String> {
        self.started
            .iter()
            .filter(|p| !p.settled.load(std::sync::atomic::Ordering::Relaxed))
            .map(|p| format!("{} (pid {})", p.program, p.pid))
            .collect()
    }

    pub(super) async fn for_restore(
        adapter: String,
        wasi: WasiCtx,
        limits: &Limits,
        req: RestoreRequest,
    ) -> anyhow::Result<Self> {
        let prefetch = crate::read::prefetch::Prefetch::start(
            Arc::clone(&req.repo),
            req.tree,
            req.include.clone(),
            req.repo.connections(),
        );
        let walker = Walker::new(Arc::clone(&req.repo), req.tree, req.include).await?;
        Ok(HostState {
            wasi,
            table: super::new_table(),
            limits: store_limits(limits),
            adapter,
            grants: req.grants,
            config: req.config.to_string(),
            job: Job::Restore(Box::new(RestoreJob {
                repo: req.repo,
                root: req.tree,
                walker,
                last: None,
                files_walked: 0,
                prefetch,
                damaged: Vec::new(),
                left_out: Vec::new(),
                writes: Default::default(),
                meta_order: Default::default(),
                slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_WRITES)),
                failed_writes: Vec::new(),
                fault: None,
                not_restored: Vec::new(),
                overwrite: req.overwrite,
                unchanged: 0,
                interrupted: 0,
                progress: Arc::default(),
            })),
            buckets: Default::default(),
            started: Vec::new(),
        })
    }

    /// Turn a repository error met during a restore into the adapter's
    /// error, remembering damage so the job fails whatever the adapter does.
    fn restore_error(&mut self, e: RepoError) -> wasmtime::Result<AdapterError> {
        let err = repo_error(e)?;
        self.note_damage(&err);
        Ok(err)
    }

    fn note_damage(&mut self, err: &AdapterError) {
        if let (AdapterError::Corrupt(m), Job::Restore(job)) = (err, &mut self.job) {
            job.damaged.push(m.clone());
        }
    }

    /// What the host saw go wrong during a restore or verify: damaged data
    /// handed out, and entries no adapter can restore.
    pub(super) fn restore_findings(&self) -> (Vec<String>, Vec<String>) {
        match &self.job {
            Job::Restore(job) => {
                let mut left_out = job.left_out.clone();
                left_out.extend(job.walker.skipped().iter().cloned());
                left_out.extend(job.not_restored.iter().cloned());
                (job.damaged.clone(), left_out)
            }
            Job::Backup(_) | Job::Check => (Vec::new(), Vec::new()),
        }
    }

    /// The storage failure a background write met, if any: the cause of
    /// whatever the job then reported.
    pub(super) fn restore_fault(&self) -> Option<String> {
        match &self.job {
            Job::Restore(job) => job.fault.clone(),
            Job::Backup(_) | Job::Check => None,
        }
    }

    /// How far a restore got: files written whole and their bytes, files
    /// the target already had whole, and files removed half-written.
    pub(super) fn restore_progress(&self) -> RestoreProgress {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.job {
            Job::Restore(job) => RestoreProgress {
                files: job.progress.files.load(Relaxed),
                bytes: job.progress.bytes.load(Relaxed),
                unchanged: job.unchanged,
                removed: job.interrupted + job.damaged.len() as u64,
            },
            Job::Backup(_) | Job::Check => RestoreProgress::default(),
        }
    }

    /// Remember that the host could not restore an entry (the adapter goes
    /// on or not; either way the restore is not whole).
    fn note_not_restored(&mut self, e: &GrantError) {
        if let Job::Restore(job) = &mut self.job {
            // The error names the path already.
            let line = crate::util::escaped(&e.to_string()).into_owned();
            if !job.not_restored.contains(&line) {
                job.not_restored.push(line);
            }
        }
    }

    /// A storage failure met in the background stops the job at its next
    /// call into the host.
    fn check_restore_fault(&self) -> wasmtime::Result<()> {
        match &self.job {
            Job::Restore(job) if job.fault.is_some() => {
                Err(fault(job.fault.clone().unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn config_json(&self) -> String {
        self.config.clone()
    }

    fn backup(&mut self) -> wasmtime::Result<&mut BackupJob> {
        match &mut self.job {
            Job::Backup(b) => Ok(b),
            Job::Restore(_) | Job::Check => {
                Err(fault("archive calls are only available during a backup"))
            }
        }
    }

    fn restore(&mut self) -> wasmtime::Result<&mut RestoreJob> {
        match &mut self.job {
            Job::Restore(r) => Ok(r),
            Job::Backup(_) | Job::Check => Err(fault(
                "snapshot calls are only available during a restore or verify",
            )),
        }
    }

    /// Seal the snapshot's trees and flush the pipeline. `result` is what
    /// the adapter's `backup` returned; on failure the pipeline is still
    /// flushed (so stored packs are indexed) and the failure returned.
    pub(super) async fn finish_backup(
        self,
        result: anyhow::Result<types::BackupSummary>,
    ) -> anyhow::Result<BackupOutcome> {
        let Job::Backup(job) = self.job else {
            anyhow::bail!("not a backup job")
        };
        let job = *job;
        let adapter = self.adapter;
        let result = result.and_then(|s| match (&job.writer_open, &job.abandoned) {
            (_, Some(p)) => Err(anyhow::anyhow!(
                "adapter {adapter}: abandoned entry {p} without finishing it"
            )),
            (Some(p), _) => Err(anyhow::anyhow!(
                "adapter {adapter}: returned with entry {p} still open"
            )),
            _ => Ok(s),
        });
        let (summary, tree_root) = match result {
            Ok(summary) => match job.tree.finish(&job.pipeline).await {
                Ok(root) => (Ok(summary), Some(root)),
                Err(e) => (Err(anyhow::anyhow!("adapter {adapter}: {e}")), None),
            },
            Err(e) => (Err(e), None),
        };
        // A storage failure is the root cause of whatever the adapter then
        // reported (it was trapped mid-call): report it first.
        let stats = match job.pipeline.finish().await {
            Ok(stats) => stats,
            Err(storage) => {
                let storage = anyhow::Error::new(storage).context("storing the backup failed");
                return Err(match summary {
                    Ok(_) => storage,
                    Err(adapter_error) => storage.context(format!("{adapter_error:#}")),
                });
            }
        };
        let summary = summary?;
        Ok(BackupOutcome {
            tree: tree_root.expect("set on success"),
            files: summary.files.max(job.files),
            directories: summary.directories.max(job.directories),
            skipped: job.skipped,
            unchanged: job.unchanged,
            stats,
            component: None,
            memory_peak: 0,
        })
    }
}

impl types::Host for HostState {}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<HostState>();
}
