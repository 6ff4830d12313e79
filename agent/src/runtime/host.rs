//! The host side of the adapter interface: what each WIT import does.
//!
//! Errors an adapter can act on (a path outside its grant, an unreadable
//! file) are returned as WIT `adapter-error` values. Host faults (storage
//! down, the pipeline stopped) trap the guest with a [`HostFault`], so the
//! job fails whatever the adapter would have done with the error.

use super::bindings::cairn::adapter0_1_0::{archive, fs, log, snapshot, types};
use super::grants::{GrantError, Grants};
use super::meta;
use super::{Limits, store_limits};
use crate::pipeline::chunker::{Chunker, ChunkerParams};
use crate::pipeline::tree_builder::{TreeBuilder, TreeError, split_path};
use crate::pipeline::{PendingId, Pipeline, Stats};
use crate::repo::tree::{Node, Tree, go_mode};
use crate::repo::{Id, RepoError, Repository};
use crate::restore::{ContentReader, Walker};
use std::io::{Read, Seek, Write};
use std::sync::Arc;
use types::{AdapterError, EntryKind, Metadata};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::WasiCtx;

mod confine;
mod process;

pub use process::ChildState;

/// Bytes read from a file per step of a native pump.
const PUMP_BLOCK: usize = 1024 * 1024;
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
    /// Let the adapter write to our stderr.
    pub inherit_stderr: bool,
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
    /// Let the adapter write to our stderr.
    pub inherit_stderr: bool,
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

/// The parent snapshot's trees along the current path, for unchanged-file
/// detection without reloading trees for every file.
struct ParentTrees {
    root: Id,
    /// (directory path, its tree), from the root down.
    chain: Vec<(String, Arc<Tree>)>,
}

impl ParentTrees {
    async fn lookup(&mut self, repo: &Repository, path: &str) -> Result<Option<Node>, RepoError> {
        let Some((dir, name)) = path.rsplit_once('/') else {
            return Ok(None);
        };
        // Keep the part of the chain that leads to `dir`.
        self.chain
            .retain(|(p, _)| p.is_empty() || dir == p || dir.starts_with(&format!("{p}/")));
        if self.chain.is_empty() {
            let root = repo.load_tree(&self.root).await?;
            self.chain.push((String::new(), Arc::new(root)));
        }
        while self.chain.last().map(|(p, _)| p.as_str()) != Some(dir) {
            let (p, tree) = self.chain.last().expect("root is in the chain");
            let rest = dir[p.len()..].trim_start_matches('/');
            let next = rest.split('/').next().unwrap_or_default();
            let Some(sub) = tree
                .nodes
                .iter()
                .find(|n| n.name == next && n.kind == "dir")
                .and_then(|n| n.subtree)
            else {
                return Ok(None);
            };
            let sub_path = format!("{p}/{next}");
            let tree = repo.load_tree(&sub).await?;
            self.chain.push((sub_path, Arc::new(tree)));
        }
        let (_, tree) = self.chain.last().expect("dir is in the chain");
        Ok(tree.nodes.iter().find(|n| n.name == name).cloned())
    }
}

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
    prefetch: crate::restore::prefetch::Prefetch,
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
    /// Every process the adapter started.
    started: Vec<process::Started>,
}

/// A directory node for a path the adapter did not emit itself (a parent of
/// a backed-up root): the host's own metadata when the path exists.
fn synthesized_dir(comps: &[String], granted: &[String]) -> Node {
    let path = format!("/{}", comps.join("/"));
    // Only a parent of a granted path may lend its real metadata: anything
    // else would let an adapter read metadata outside its grants.
    let is_parent_of_grant = granted
        .iter()
        .any(|g| g == &path || g.starts_with(&format!("{path}/")));
    let meta = is_parent_of_grant
        .then(|| rustix::fs::lstat(path.as_str()).ok())
        .flatten()
        .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map(|st| meta::metadata_from_stat(&st).1)
        .unwrap_or_else(|| Metadata {
            mode: 0o755,
            mtime: None,
            atime: None,
            ctime: None,
            uid: None,
            gid: None,
            size: None,
            inode: None,
            device: None,
            links: None,
        });
    let mut node = meta::node_from(EntryKind::Directory, &meta);
    node.mode = go_mode::from_unix(meta.mode, go_mode::DIR);
    node
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
                parent: req.parent_tree.map(|root| ParentTrees {
                    root,
                    chain: Vec::new(),
                }),
                writer_open: None,
                abandoned: None,
                skipped: Vec::new(),
                unchanged: 0,
                files: 0,
                directories: 0,
            })),
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
        let prefetch = crate::restore::prefetch::Prefetch::start(
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
            Job::Backup(_) => (Vec::new(), Vec::new()),
        }
    }

    /// The storage failure a background write met, if any: the cause of
    /// whatever the job then reported.
    pub(super) fn restore_fault(&self) -> Option<String> {
        match &self.job {
            Job::Restore(job) => job.fault.clone(),
            Job::Backup(_) => None,
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
            Job::Backup(_) => RestoreProgress::default(),
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
            Job::Restore(_) => Err(fault("archive calls are only available during a backup")),
        }
    }

    fn restore(&mut self) -> wasmtime::Result<&mut RestoreJob> {
        match &mut self.job {
            Job::Restore(r) => Ok(r),
            Job::Backup(_) => Err(fault(
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
        })
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let adapter = self.adapter.as_str();
        // A newline or an escape sequence must not forge a log line.
        let message = crate::util::escaped(&message);
        match level {
            log::Level::Trace => tracing::trace!(adapter, "{message}"),
            log::Level::Debug => tracing::debug!(adapter, "{message}"),
            log::Level::Info => tracing::info!(adapter, "{message}"),
            log::Level::Warn => tracing::warn!(adapter, "{message}"),
            log::Level::Error => tracing::error!(adapter, "{message}"),
        }
        Ok(())
    }
}

/// Why an entry path cannot be stored: not absolute, an empty, `.` or `..`
/// component, or a NUL byte (no file system can create such a name, so the
/// snapshot could never be restored).
fn invalid_entry(path: &str) -> Option<String> {
    if path.contains('\0') {
        return Some("its name contains a NUL byte, which no file can have".into());
    }
    match split_path(path) {
        Ok(c) if !c.is_empty() => None,
        _ => Some(
            "invalid entry path: paths are absolute, with no empty, '.' or '..' component".into(),
        ),
    }
}

impl BackupJob {
    /// Leave an entry out of the snapshot, saying why; the backup is then
    /// incomplete (exit 3). Said once per path.
    fn refuse(&mut self, path: &str, reason: String) {
        if self.skipped.iter().any(|(p, _)| p == path) {
            return;
        }
        tracing::warn!(path = %crate::util::escaped(path), %reason, "Entry refused; the backup will be incomplete.");
        self.skipped.push((path.to_string(), reason));
    }

    async fn add_node(&mut self, path: &str, node: Node) -> HostResult<()> {
        self.add_pending_node(path, node, Vec::new()).await
    }

    /// Add a node whose content ids may still be on their way from the
    /// workers; the tree builder collects them when it seals the directory.
    async fn add_pending_node(
        &mut self,
        path: &str,
        node: Node,
        pending: Vec<PendingId>,
    ) -> HostResult<()> {
        if let Some(open) = &self.writer_open {
            return Ok(Err(AdapterError::Other(format!(
                "cannot add {path}: entry {open} is still open"
            ))));
        }
        let granted = self.granted.clone();
        let mut make_dir = |c: &[String]| synthesized_dir(c, &granted);
        match self
            .tree
            .add(path, node, pending, &self.pipeline, &mut make_dir)
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err(tree_error(e)?)),
        }
    }

    fn begin(&mut self, path: String, meta: Metadata) -> Result<WriterState, AdapterError> {
        if let Some(open) = &self.writer_open {
            return Err(AdapterError::Other(format!(
                "cannot begin {path}: entry {open} is still open"
            )));
        }
        if let Err(e) = split_path(&path) {
            return Err(AdapterError::Other(e.to_string()));
        }
        self.writer_open = Some(path.clone());
        Ok(WriterState {
            node: meta::node_from(EntryKind::File, &meta),
            path,
            chunker: Some(Chunker::new(self.params.clone())),
            pending: Vec::new(),
            size: 0,
            finished: false,
            refused: None,
        })
    }
}

impl archive::Host for HostState {
    async fn begin_file(
        &mut self,
        path: String,
        meta: Metadata,
    ) -> HostResult<Resource<WriterState>> {
        self.begin_entry(path, meta).await
    }

    async fn begin_stream(
        &mut self,
        path: String,
        meta: Metadata,
    ) -> HostResult<Resource<WriterState>> {
        self.begin_entry(path, meta).await
    }

    async fn add_directory(&mut self, path: String, meta: Metadata) -> HostResult<()> {
        let job = self.backup()?;
        if let Some(reason) = invalid_entry(&path) {
            job.refuse(&path, reason);
            return Ok(Ok(()));
        }
        job.directories += 1;
        job.add_node(&path, meta::node_from(EntryKind::Directory, &meta))
            .await
    }

    async fn add_symlink(
        &mut self,
        path: String,
        target: String,
        meta: Metadata,
    ) -> HostResult<()> {
        let job = self.backup()?;
        if let Some(reason) = invalid_entry(&path) {
            job.refuse(&path, reason);
            return Ok(Ok(()));
        }
        if target.contains('\0') {
            job.refuse(&path, "its link target contains a NUL byte".into());
            return Ok(Ok(()));
        }
        let mut node = meta::node_from(EntryKind::Symlink, &meta);
        node.linktarget = target;
        node.size = 0;
        job.add_node(&path, node).await
    }

    async fn reuse_unchanged(&mut self, path: String, meta: Metadata) -> HostResult<bool> {
        let job = self.backup()?;
        if invalid_entry(&path).is_some() {
            // `begin-file` refuses it, saying why.
            return Ok(Ok(false));
        }
        let Some(parent) = job.parent.as_mut() else {
            return Ok(Ok(false));
        };
        let repo = Arc::clone(job.pipeline.repo());
        let old = match parent.lookup(&repo, &path).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %crate::util::escaped(&path), error = %e, "Parent snapshot unreadable here; reading the file again.");
                None
            }
        };
        let Some(old) = old else { return Ok(Ok(false)) };
        let same = old.kind == "file"
            && Some(old.size) == meta.size
            && old.mtime.is_some()
            && old.mtime == meta::to_time(meta.mtime)
            && meta.inode.is_some_and(|i| i == old.inode);
        let content = old.content.clone().unwrap_or_default();
        if !same
            || !repo.with_index(|i| {
                content
                    .iter()
                    .all(|b| i.contains(b, crate::repo::pack::BlobType::Data))
            })
        {
            return Ok(Ok(false));
        }
        let mut node = meta::node_from(EntryKind::File, &meta);
        node.content = Some(content);
        job.files += 1;
        job.unchanged += 1;
        job.add_node(&path, node).await.map(|r| r.map(|()| true))
    }

    async fn skip(&mut self, path: String, reason: String) -> wasmtime::Result<()> {
        let adapter = self.adapter.clone();
        let job = self.backup()?;
        // Refused by the host already (its reason is the one that counts).
        if job.skipped.iter().any(|(p, _)| *p == path) {
            return Ok(());
        }
        tracing::warn!(adapter = %adapter, path = %crate::util::escaped(&path), reason = %crate::util::escaped(&reason), "Entry could not be read; the backup will be incomplete.");
        job.skipped.push((path, reason));
        Ok(())
    }
}

impl HostState {
    async fn begin_entry(
        &mut self,
        path: String,
        meta: Metadata,
    ) -> HostResult<Resource<WriterState>> {
        let job = self.backup()?;
        if let Some(reason) = invalid_entry(&path) {
            // A writer that stores nothing: the adapter goes on as if the
            // entry were unreadable; the snapshot leaves it out.
            job.refuse(&path, reason.clone());
            let writer = WriterState {
                node: meta::node_from(EntryKind::File, &meta),
                path,
                chunker: None,
                pending: Vec::new(),
                size: 0,
                finished: false,
                refused: Some(reason),
            };
            return Ok(Ok(self.table.push(writer)?));
        }
        // Validate the order now, so a misplaced entry fails at its start.
        let comps = split_path(&path).unwrap_or_default();
        let granted = job.granted.clone();
        let mut make_dir = |c: &[String]| synthesized_dir(c, &granted);
        if let Err(e) = job
            .tree
            .enter(&comps[..comps.len() - 1], &job.pipeline, &mut make_dir)
            .await
        {
            return Ok(Err(tree_error(e)?));
        }
        let writer = match job.begin(path, meta) {
            Ok(w) => w,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(writer)?))
    }
}

/// Read from `file` into `buf` until the end or until `buf` holds `limit`
/// bytes; `true` at the end. A read that would block (a file that is not
/// ordinary content, like `/proc/kmsg`) is an error, never a wait.
fn read_head(file: &mut std::fs::File, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    while buf.len() < limit {
        let want = chunk.len().min(limit - buf.len());
        match file.read(&mut chunk[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Words for a failed source read.
fn read_error(path: &str, e: &std::io::Error) -> AdapterError {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        AdapterError::Io(format!(
            "{path}: reading it would block (its content is not a regular file's); left out"
        ))
    } else {
        AdapterError::Io(format!("{path}: {e}"))
    }
}

impl archive::HostEntryWriter for HostState {
    async fn write(&mut self, w: Resource<WriterState>, bytes: Vec<u8>) -> HostResult<()> {
        let writer = self.table.get_mut(&w)?;
        if writer.refused.is_some() {
            return Ok(Ok(()));
        }
        let chunks = writer
            .chunker
            .as_mut()
            .map(|c| c.push(&bytes))
            .unwrap_or_default();
        writer.size += bytes.len() as u64;
        let mut ids = Vec::with_capacity(chunks.len());
        {
            let job = self.backup()?;
            for c in chunks {
                ids.push(job.pipeline.add_data(c).await.map_err(fault)?);
            }
        }
        self.table.get_mut(&w)?.pending.extend(ids);
        Ok(Ok(()))
    }

    async fn pump_file(&mut self, w: Resource<WriterState>, path: String) -> HostResult<u64> {
        let writer = self.table.get(&w)?;
        if let Some(reason) = &writer.refused {
            return Ok(Err(AdapterError::Io(format!(
                "{path}: entry {} refused: {reason}",
                crate::util::escaped(&writer.path)
            ))));
        }
        if writer.finished || writer.chunker.is_none() {
            return Ok(Err(AdapterError::Other(format!(
                "entry {} is already finished",
                writer.path
            ))));
        }
        // What the adapter looked at, if it says: the file opened must be it.
        let examined = (writer.node.inode != 0 && writer.node.device_id != 0)
            .then_some((writer.node.inode, writer.node.device_id));
        let (mut file, size) = match self
            .grants
            .resolve(&path, false)
            .and_then(|r| r.open_regular(examined))
        {
            Ok(f) => f,
            Err(e) => return Ok(Err(grant_error(e))),
        };
        let job = self.backup()?;
        let sender = job.pipeline.data_sender();
        let params = job.params.clone();
        // A small file is read here in one go (a hop to a blocking thread
        // would cost more than the read), but never more than SMALL_FILE
        // bytes of it: a file whose size says less than it holds (procfs)
        // goes on below, streamed with bounded memory.
        let mut head = Vec::new();
        let mut whole = false;
        if size <= SMALL_FILE {
            match read_head(&mut file, &mut head, SMALL_FILE as usize + 1) {
                Ok(eof) => whole = eof,
                Err(e) => return Ok(Err(read_error(&path, &e))),
            }
        }
        let writer = self.table.get_mut(&w)?;
        let Some(mut chunker) = writer.chunker.take() else {
            return Ok(Err(AdapterError::Other(format!(
                "entry {} is already finished",
                writer.path
            ))));
        };
        if whole {
            let chunks = chunker.push(&head);
            writer.chunker = Some(chunker);
            writer.size += head.len() as u64;
            let job = self.backup()?;
            let mut ids = Vec::with_capacity(chunks.len());
            for c in chunks {
                ids.push(job.pipeline.add_data(c).await.map_err(fault)?);
            }
            self.table.get_mut(&w)?.pending.extend(ids);
            return Ok(Ok(head.len() as u64));
        }
        let pumped = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut pending = Vec::new();
            let mut total = 0u64;
            let mut buf = vec![0u8; PUMP_BLOCK];
            let mut first = Some(head);
            let outcome = loop {
                let n = match first.take() {
                    Some(head) if !head.is_empty() => {
                        buf[..head.len()].copy_from_slice(&head);
                        head.len()
                    }
                    _ => match file.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => break Err(Ok(read_error(&path, &e))),
                    },
                };
                total += n as u64;
                let mut stopped = None;
                for chunk in chunker.push(&buf[..n]) {
                    match sender.add_blocking(chunk) {
                        Ok(p) => pending.push(p),
                        Err(e) => {
                            stopped = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = stopped {
                    break Err(Err(e));
                }
            };
            (chunker, pending, total, outcome)
        })
        .await
        .map_err(fault)?;
        let (chunker, pending, total, outcome) = pumped;
        let writer = self.table.get_mut(&w)?;
        match outcome {
            Ok(()) => {
                writer.chunker = Some(chunker);
                writer.pending.extend(pending);
                writer.size += total;
                Ok(Ok(total))
            }
            Err(Ok(adapter_error)) => {
                // A half-read file must not be stored as if whole: the entry
                // is reset to empty, and the adapter decides what to do.
                writer.chunker = Some(Chunker::new(params));
                writer.pending.clear();
                writer.size = 0;
                Ok(Err(adapter_error))
            }
            Err(Err(repo)) => Err(fault(repo)),
        }
    }

    async fn finish(&mut self, w: Resource<WriterState>) -> HostResult<u64> {
        let writer = self.table.get_mut(&w)?;
        if writer.finished {
            return Ok(Err(AdapterError::Other(format!(
                "entry {} is already finished",
                writer.path
            ))));
        }
        writer.finished = true;
        if writer.refused.is_some() {
            return Ok(Ok(0));
        }
        let last = writer.chunker.as_mut().and_then(|c| c.finish());
        let pending = std::mem::take(&mut writer.pending);
        let mut node = writer.node.clone();
        let path = writer.path.clone();
        let size = writer.size;
        let job = self.backup()?;
        let mut pending = pending;
        if let Some(last) = last {
            pending.push(job.pipeline.add_data(last).await.map_err(fault)?);
        }
        node.content = Some(Vec::new());
        node.size = size;
        job.writer_open = None;
        job.files += 1;
        match job.add_pending_node(&path, node, pending).await? {
            Ok(()) => Ok(Ok(size)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn cancel(&mut self, w: Resource<WriterState>) -> wasmtime::Result<()> {
        let writer = self.table.get_mut(&w)?;
        if writer.refused.is_some() {
            writer.finished = true;
            return Ok(());
        }
        if !writer.finished {
            // Chunks already queued stay stored, unreferenced; nothing of
            // the entry reaches the snapshot.
            writer.finished = true;
            writer.pending.clear();
            writer.chunker = None;
            if let Job::Backup(job) = &mut self.job {
                job.writer_open = None;
            }
        }
        Ok(())
    }

    async fn drop(&mut self, w: Resource<WriterState>) -> wasmtime::Result<()> {
        let writer = self.table.delete(w)?;
        if !writer.finished
            && writer.refused.is_none()
            && let Job::Backup(job) = &mut self.job
        {
            job.writer_open = None;
            job.abandoned.get_or_insert(writer.path);
        }
        Ok(())
    }
}

impl snapshot::Host for HostState {
    async fn next_entry(&mut self) -> HostResult<Option<snapshot::Entry>> {
        self.check_restore_fault()?;
        let job = self.restore()?;
        loop {
            let next = match job.walker.next().await {
                Ok(n) => n,
                Err(e) => return Ok(Err(self.restore_error(e)?)),
            };
            let Some(entry) = next else {
                return Ok(Ok(None));
            };
            let Some(kind) = meta::kind_of(&entry.node) else {
                tracing::warn!(path = %crate::util::escaped(&entry.path), kind = %crate::util::escaped(&entry.node.kind), "Not restorable by adapters; left out.");
                job.left_out.push(format!(
                    "{} ({})",
                    crate::util::escaped(&entry.path),
                    crate::util::escaped(&entry.node.kind)
                ));
                continue;
            };
            if entry.node.kind == "file" {
                job.files_walked += 1;
                job.prefetch.walked(job.files_walked);
            }
            if kind == EntryKind::File {
                job.last = Some((entry.path.clone(), entry.node.clone(), job.files_walked));
            }
            let link_target = (kind == EntryKind::Symlink).then(|| entry.node.linktarget.clone());
            return Ok(Ok(Some(snapshot::Entry {
                meta: meta::metadata_of(&entry.node),
                path: entry.path,
                kind,
                link_target,
            })));
        }
    }

    async fn open(&mut self, path: String) -> HostResult<Resource<ReaderState>> {
        self.check_restore_fault()?;
        let job = self.restore()?;
        let (node, ready) = match &job.last {
            Some((p, n, num)) if *p == path => (n.clone(), job.prefetch.take(*num, p).await),
            _ => match crate::restore::lookup(&job.repo, job.root, &path).await {
                Ok(Some(n)) if n.kind == "file" => (n, None),
                Ok(_) => {
                    return Ok(Err(AdapterError::NotFound(format!(
                        "{path}: no such file in the snapshot"
                    ))));
                }
                Err(e) => return Ok(Err(self.restore_error(e)?)),
            },
        };
        let content = node.content.clone().unwrap_or_default();
        let size = job.repo.with_index(|i| {
            content
                .iter()
                .map(|id| {
                    i.get(id, crate::repo::pack::BlobType::Data)
                        .map_or(0, |l| l.plain_length() as u64)
                })
                .sum()
        });
        let repo = Arc::clone(&job.repo);
        let reader = ReaderState {
            reader: match ready {
                Some(ready) => ContentReader::prefetched(repo, content, ready),
                None => ContentReader::new(repo, content),
            },
            path,
            size,
            node: Some(node),
        };
        Ok(Ok(self.table.push(reader)?))
    }
}

impl snapshot::HostEntryReader for HostState {
    async fn read(&mut self, r: Resource<ReaderState>, max: u32) -> HostResult<Vec<u8>> {
        self.check_restore_fault()?;
        let reader = self.table.get_mut(&r)?;
        match reader.reader.read(max.min(MAX_READ) as usize).await {
            Ok(b) => Ok(Ok(b)),
            Err(e) => Ok(Err(self.restore_error(e)?)),
        }
    }

    async fn pump_to_file(&mut self, r: Resource<ReaderState>, path: String) -> HostResult<u64> {
        self.check_restore_fault()?;
        // A second write to the same path waits for the first.
        self.settle_write(&path).await?;
        let resolved = match self.grants.resolve(&path, true) {
            Ok(r) => r,
            Err(e) => {
                self.note_not_restored(&e);
                return Ok(Err(grant_error(e)));
            }
        };
        if self.already_restored(&r, &resolved).await? {
            let reader = self.table.get_mut(&r)?;
            reader.reader = ContentReader::empty();
            let size = reader.node.as_ref().map_or(reader.size, |n| n.size);
            self.restore()?.unchanged += 1;
            return Ok(Ok(size));
        }
        let (file, unfinished) = match resolved.create_write() {
            Ok(file) => {
                let id = register_unfinished(resolved, &file);
                (file, id)
            }
            Err(e) => {
                self.note_not_restored(&e);
                return Ok(Err(grant_error(e)));
            }
        };
        let reader = self.table.get_mut(&r)?;
        let content = std::mem::replace(&mut reader.reader, ContentReader::empty());
        let (entry, size) = (reader.path.clone(), reader.size);
        // The file is created now (so errors about the path are immediate);
        // its content and metadata are written in the background, several
        // files at once. A failure there fails the job and removes the file.
        let job = self.restore()?;
        job.reap_writes().await;
        let permit = Arc::clone(&job.slots)
            .acquire_owned()
            .await
            .map_err(fault)?;
        let (meta_tx, meta_rx) = tokio::sync::oneshot::channel::<FileMeta>();
        let target = path.clone();
        let progress = Arc::clone(&job.progress);
        let handle = tokio::spawn(async move {
            let file = write_content(file, content, &entry, &target).await;
            drop(permit);
            let (file, written) = file?;
            if let Ok(meta) = meta_rx.await {
                crate::util::blocking(move || meta.apply(&file))
                    .await
                    .map_err(|e| {
                        WriteFailure::Entry(AdapterError::Io(format!(
                            "{target}: setting metadata: {e}"
                        )))
                    })?;
            }
            // Whole: no longer a file to remove if the restore stops.
            finished(unfinished);
            use std::sync::atomic::Ordering::Relaxed;
            progress.files.fetch_add(1, Relaxed);
            progress.bytes.fetch_add(written, Relaxed);
            Ok(())
        });
        job.writes.insert(
            path.clone(),
            PendingWrite {
                handle,
                meta: Some(meta_tx),
                unfinished,
            },
        );
        job.meta_order.push_back(path);
        while job.meta_order.len() > META_WINDOW {
            if let Some(old) = job.meta_order.pop_front()
                && let Some(w) = job.writes.get_mut(&old)
            {
                w.meta = None;
            }
        }
        Ok(Ok(size))
    }

    async fn discard(&mut self, r: Resource<ReaderState>) -> HostResult<u64> {
        self.check_restore_fault()?;
        let reader = self.table.get_mut(&r)?;
        let mut total = 0u64;
        loop {
            match reader.reader.next_blob().await {
                Ok(Some(blob)) => total += blob.len() as u64,
                Ok(None) => return Ok(Ok(total)),
                Err(e) => return Ok(Err(self.restore_error(e)?)),
            }
        }
    }

    async fn drop(&mut self, r: Resource<ReaderState>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl fs::Host for HostState {
    async fn granted_paths(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.grants.paths())
    }

    async fn stat(&mut self, path: String) -> HostResult<fs::FileStat> {
        let resolved = match self.grants.resolve(&path, false) {
            Ok(r) => r,
            Err(e) => return Ok(Err(grant_error(e))),
        };
        let st = match resolved.stat() {
            Ok(s) => s,
            Err(e) => return Ok(Err(grant_error(e))),
        };
        let (kind, meta) = meta::metadata_from_stat(&st);
        let link_target = if kind == Some(EntryKind::Symlink) {
            match resolved.read_link() {
                Ok(t) => Some(t),
                Err(e) => return Ok(Err(grant_error(e))),
            }
        } else {
            None
        };
        Ok(Ok(fs::FileStat {
            kind,
            meta,
            link_target,
        }))
    }

    async fn list_dir(&mut self, path: String) -> HostResult<Vec<String>> {
        let listed = self.grants.resolve(&path, false).and_then(|r| r.list_dir());
        match listed {
            Ok((names, not_utf8)) => {
                for raw in not_utf8 {
                    let entry = format!("{}/{raw}", path.trim_end_matches('/'));
                    let reason = "name is not valid UTF-8".to_string();
                    tracing::warn!(path = %crate::util::escaped(&entry), "Left out: its name is not valid UTF-8.");
                    if let Job::Backup(job) = &mut self.job {
                        job.skipped.push((entry, reason));
                    }
                }
                Ok(Ok(names))
            }
            Err(e) => Ok(Err(grant_error(e))),
        }
    }

    async fn create_dir(&mut self, path: String) -> HostResult<()> {
        let made = self.grants.create_dir_all(&path);
        Ok(self.restored(made))
    }

    async fn create_symlink(&mut self, path: String, target: String) -> HostResult<()> {
        let made = self
            .grants
            .resolve(&path, true)
            .and_then(|r| r.create_symlink(&target));
        Ok(self.restored(made))
    }

    async fn set_metadata(&mut self, path: String, m: Metadata) -> HostResult<()> {
        if let Job::Restore(job) = &mut self.job
            && let Some(w) = job.writes.get_mut(&path)
        {
            if let Some(tx) = w.meta.take() {
                // Applied through the file's descriptor once it is written.
                let _ = tx.send(FileMeta::from_metadata(&m));
                return Ok(Ok(()));
            }
            self.settle_write(&path).await?;
        }
        let owner = m.uid.zip(m.gid);
        let times = m.mtime.map(|mt| {
            let at = m.atime.unwrap_or(mt);
            (
                rustix::fs::Timespec {
                    tv_sec: at.seconds,
                    tv_nsec: at.nanoseconds as _,
                },
                rustix::fs::Timespec {
                    tv_sec: mt.seconds,
                    tv_nsec: mt.nanoseconds as _,
                },
            )
        });
        let set = self
            .grants
            .resolve(&path, true)
            .and_then(|r| r.set_metadata(Some(m.mode), owner, times));
        Ok(self.restored(set))
    }
}

impl HostState {
    /// The adapter's view of a host operation during a restore;
    /// a failure is also remembered, so the restore cannot end looking
    /// whole whatever the adapter does with the error.
    fn restored(&mut self, done: Result<(), GrantError>) -> Result<(), AdapterError> {
        done.map_err(|e| {
            self.note_not_restored(&e);
            grant_error(e)
        })
    }

    /// Whether the target already has the file `r` would restore to
    /// `path` whole: a regular file, not linked elsewhere, with the
    /// snapshot's size and modification time and, read back, every blob's
    /// content (what a finished write leaves; a failed write is removed).
    /// A rerun after an interruption then resumes instead of starting over;
    /// a file changed since, even keeping its size and time, is rewritten.
    /// The file must also be one a restore made: owned as the restore owns
    /// what it writes (the snapshot's owner when running as root, else this
    /// user), with the snapshot's mode and no extended attributes (no ACL).
    /// A file someone else planted there with the right content, and kept
    /// open to write to after the restore chowns it, is replaced by a new
    /// one instead.
    async fn already_restored(
        &mut self,
        r: &Resource<ReaderState>,
        resolved: &super::grants::Resolved<'_>,
    ) -> wasmtime::Result<bool> {
        let job = self.restore()?;
        if job.overwrite {
            return Ok(false);
        }
        // Most often nothing is there: one stat says so.
        let Ok(st) = resolved.stat() else {
            return Ok(false);
        };
        let repo = Arc::clone(&job.repo);
        let Some(node) = self.table.get(r)?.node.clone() else {
            return Ok(false);
        };
        let Some(mtime) = node.mtime else {
            return Ok(false);
        };
        let euid = rustix::process::geteuid();
        let owned = if euid.is_root() {
            st.st_uid == node.uid && st.st_gid == node.gid
        } else {
            st.st_uid == euid.as_raw()
        };
        let looks_whole = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && owned
            && st.st_mode & 0o7777 == crate::repo::tree::go_mode::to_unix_perm(node.mode)
            && st.st_nlink == 1
            && st.st_size as u64 == node.size
            && st.st_mtime == mtime.timestamp()
            && st.st_mtime_nsec as u32 == mtime.timestamp_subsec_nanos();
        if !looks_whole {
            return Ok(false);
        }
        let blobs: Option<Vec<(Id, usize)>> = repo.with_index(|i| {
            node.content
                .iter()
                .flatten()
                .map(|id| {
                    i.get(id, crate::repo::pack::BlobType::Data)
                        .map(|l| (*id, l.plain_length() as usize))
                })
                .collect()
        });
        let Some(blobs) = blobs else {
            return Ok(false);
        };
        if blobs.iter().map(|(_, n)| *n as u64).sum::<u64>() != node.size {
            return Ok(false);
        }
        let Ok((mut file, _)) = resolved.open_regular(Some((st.st_ino, st.st_dev))) else {
            return Ok(false);
        };
        let mut names = [0u8; 256];
        if !matches!(
            rustix::fs::flistxattr(&file, &mut names[..]),
            Ok(0) | Err(rustix::io::Errno::NOTSUP)
        ) {
            return Ok(false);
        }
        Ok(crate::util::blocking(move || {
            let mut buf = Vec::new();
            blobs.iter().all(|(id, len)| {
                buf.resize(*len, 0);
                file.read_exact(&mut buf).is_ok() && Id::hash(&buf) == *id
            })
        })
        .await)
    }
}

/// Write a file's content, turning all-zero blobs into holes; returns the
/// file and the bytes written. Damage fails the entry (the caller removes
/// the file); a storage failure stops the whole job.
async fn write_content(
    mut out: std::fs::File,
    mut content: ContentReader,
    entry: &str,
    target: &str,
) -> Result<(std::fs::File, u64), WriteFailure> {
    let mut total = 0u64;
    let mut ends_in_hole = false;
    loop {
        let blob = match content.next_blob().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            // Damage fails the file, as `repo_error` tells damage apart.
            Err(e) => {
                return Err(match repo_error(e) {
                    Ok(AdapterError::Corrupt(m)) => {
                        WriteFailure::Entry(AdapterError::Corrupt(format!("{entry}: {m}")))
                    }
                    Ok(other) => WriteFailure::Entry(other),
                    Err(fault) => WriteFailure::Fault(format!("reading {entry}: {fault}")),
                });
            }
        };
        ends_in_hole = blob.iter().all(|&b| b == 0);
        let (len, hole) = (blob.len() as u64, ends_in_hole);
        // On a blocking thread: a target that stops answering (a hung
        // network mount) must not hold the runtime's workers.
        let (file, written) = crate::util::blocking(move || {
            let r = if hole {
                out.seek(std::io::SeekFrom::Current(len as i64)).map(|_| ())
            } else {
                out.write_all(&blob)
            };
            (out, r)
        })
        .await;
        out = file;
        written.map_err(|e| WriteFailure::Entry(AdapterError::Io(format!("{target}: {e}"))))?;
        total += len;
    }
    // A trailing hole needs the length set explicitly.
    if ends_in_hole {
        let (file, set) = crate::util::blocking(move || {
            let r = out.set_len(total);
            (out, r)
        })
        .await;
        out = file;
        set.map_err(|e| WriteFailure::Entry(AdapterError::Io(format!("{target}: {e}"))))?;
    }
    Ok((out, total))
}

/// Files a restore is writing, registered from their creation until their
/// content and metadata are written: a restore stopped in the middle (a
/// signal, its deadline) leaves none half-written, because the exit path
/// removes what is still registered ([`remove_unfinished_files`]). Each is
/// its directory, opened inside the grant, and its name.
static UNFINISHED: std::sync::Mutex<Vec<Unfinished>> = std::sync::Mutex::new(Vec::new());
static NEXT_UNFINISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A file being restored: its directory, opened inside the grant, and its
/// name there (never resolved by path again), the file's identity (what is
/// at that name when it is removed must still be it: another restore or
/// the user may have put a file there since), and its path for messages.
struct Unfinished {
    id: u64,
    dir: cap_std::fs::Dir,
    name: String,
    identity: (u64, u64),
    path: String,
}

impl Unfinished {
    /// Remove the file if it is still the one created; true if it was.
    fn remove(&self) -> bool {
        let at = rustix::fs::statat(
            &self.dir,
            self.name.as_str(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
        if !at.is_ok_and(|st| (st.st_dev, st.st_ino) == self.identity) {
            return false;
        }
        match rustix::fs::unlinkat(&self.dir, self.name.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) => true,
            Err(rustix::io::Errno::NOENT) => false,
            Err(e) => {
                tracing::warn!(path = %crate::util::escaped(&self.path), error = %e, "Could not remove a half-written file.");
                false
            }
        }
    }
}

/// Register `file`, just created at the name `resolved` gives, as
/// unfinished.
fn register_unfinished(resolved: super::grants::Resolved<'_>, file: &std::fs::File) -> u64 {
    let id = NEXT_UNFINISHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = rustix::fs::fstat(file)
        .map(|st| (st.st_dev, st.st_ino))
        .unwrap_or_default();
    UNFINISHED
        .lock()
        .expect("unfinished files")
        .push(Unfinished {
            id,
            path: resolved.path.to_string(),
            dir: resolved.parent,
            // A created file always has a name (the grant root is a
            // directory, which `create_write` refuses).
            name: resolved.name.unwrap_or_default(),
            identity,
        });
    id
}

/// The file `id` is whole: nothing to remove.
fn finished(id: u64) {
    UNFINISHED
        .lock()
        .expect("unfinished files")
        .retain(|u| u.id != id);
}

/// Remove the unfinished file `id` (its write failed).
fn remove_unfinished(id: u64) {
    let taken = {
        let mut all = UNFINISHED.lock().expect("unfinished files");
        all.iter().position(|u| u.id == id).map(|i| all.remove(i))
    };
    if let Some(u) = taken {
        u.remove();
    }
}

/// Remove every file a stopped restore left half-written. Returns how many.
pub fn remove_unfinished_files() -> usize {
    let left = std::mem::take(&mut *UNFINISHED.lock().expect("unfinished files"));
    left.iter().filter(|u| u.remove()).count()
}

impl RestoreJob {
    /// Collect background writes that have finished.
    async fn reap_writes(&mut self) {
        let done: Vec<String> = self
            .writes
            .iter()
            .filter(|(_, w)| w.handle.is_finished())
            .map(|(p, _)| p.clone())
            .collect();
        for path in done {
            if let Some(w) = self.writes.remove(&path) {
                self.settle(path, w).await;
            }
        }
    }

    async fn settle(&mut self, path: String, w: PendingWrite) {
        drop(w.meta);
        let unfinished = w.unfinished;
        let result = match w.handle.await {
            Ok(r) => r,
            Err(e) => Err(WriteFailure::Entry(AdapterError::Other(format!(
                "{path}: the write task failed: {e}"
            )))),
        };
        match result {
            Ok(()) => {}
            Err(WriteFailure::Entry(e)) => self.failed_writes.push((path, Some(e), unfinished)),
            Err(WriteFailure::Fault(f)) => {
                // The file is incomplete: removed with the failed ones.
                self.failed_writes.push((path, None, unfinished));
                self.fault.get_or_insert(f);
            }
        }
    }
}

impl HostState {
    /// Wait for the background write of `path`, if any.
    async fn settle_write(&mut self, path: &str) -> wasmtime::Result<()> {
        if let Job::Restore(job) = &mut self.job
            && let Some(w) = job.writes.remove(path)
        {
            job.settle(path.to_string(), w).await;
        }
        Ok(())
    }

    /// Finish every background write of a restore. Failed files are removed
    /// and their errors recorded as damage, so the job fails.
    pub(super) async fn finish_writes(&mut self) {
        let Job::Restore(job) = &mut self.job else {
            return;
        };
        let paths: Vec<String> = job.writes.keys().cloned().collect();
        for path in paths {
            if let Some(w) = job.writes.remove(&path) {
                job.settle(path, w).await;
            }
        }
        let failed = std::mem::take(&mut job.failed_writes);
        for (_, err, unfinished) in failed {
            // Nothing may look restored that is not.
            remove_unfinished(unfinished);
            if let Job::Restore(job) = &mut self.job {
                match err {
                    Some(err) => job.damaged.push(meta::describe_error(&err)),
                    None => job.interrupted += 1,
                }
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<HostState>();
}
