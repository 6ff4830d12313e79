//! The `snapshot` interface: what an adapter's restore or verify reads
//! (the snapshot's entries in order, each file's content, or its content
//! pumped by the host straight into a file on the target).

use super::*;

impl wit::snapshot::Host for HostState {
    async fn next_entry(&mut self) -> HostResult<Option<wit::snapshot::Entry>> {
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
            return Ok(Ok(Some(wit::snapshot::Entry {
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
            _ => match crate::read::lookup(&job.repo, job.root, &path).await {
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

impl wit::snapshot::HostEntryReader for HostState {
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
                // A created file always has a name (the grant root is a
                // directory, which `create_write` refuses).
                let name = resolved.name.clone().unwrap_or_default();
                let id = write::register_unfinished(resolved.parent, name, resolved.path, &file);
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
            let file = write::write_content(file, content, &entry, &target).await;
            drop(permit);
            let (file, written) = file.map_err(|e| match e {
                write::WriteError::Damaged(m) => WriteFailure::Entry(AdapterError::Corrupt(m)),
                write::WriteError::Target(m) => WriteFailure::Entry(AdapterError::Io(m)),
                write::WriteError::Storage(m) => WriteFailure::Fault(m),
            })?;
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
            write::finished(unfinished);
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
