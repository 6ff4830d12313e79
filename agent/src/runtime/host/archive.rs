//! The `archive` interface: what an adapter's backup hands the host (a
//! file's bytes, or a path whose bytes the host pumps natively, and
//! directory and symlink nodes), checked and built into the snapshot's
//! trees.

use super::*;

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

/// Why an entry path cannot be stored: not absolute, an empty, `.` or `..`
/// component, or a NUL byte (no file system can create such a name, so the
/// snapshot could never be restored).
pub(super) fn invalid_entry(path: &str) -> Option<String> {
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
    pub(super) fn refuse(&mut self, path: &str, reason: String) {
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
    pub(super) async fn add_pending_node(
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

impl wit::archive::Host for HostState {
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

impl wit::archive::HostEntryWriter for HostState {
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
            match pump::read_head(&mut file, &mut head, SMALL_FILE as usize + 1) {
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
            let mut pending = Vec::new();
            let outcome = pump::pump(file, head, &mut chunker, &sender, &mut pending);
            (chunker, pending, outcome)
        })
        .await
        .map_err(fault)?;
        let (chunker, pending, outcome) = pumped;
        let writer = self.table.get_mut(&w)?;
        match outcome {
            Ok(total) => {
                writer.chunker = Some(chunker);
                writer.pending.extend(pending);
                writer.size += total;
                Ok(Ok(total))
            }
            Err(pump::PumpError::Read(e)) => {
                // A half-read file must not be stored as if whole: the entry
                // is reset to empty, and the adapter decides what to do.
                writer.chunker = Some(Chunker::new(params));
                writer.pending.clear();
                writer.size = 0;
                Ok(Err(read_error(&path, &e)))
            }
            Err(pump::PumpError::Stopped(repo)) => Err(fault(repo)),
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
