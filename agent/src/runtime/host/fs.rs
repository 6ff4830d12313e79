//! The `fs` interface: the granted paths, read (stat, listing) during a
//! backup and written (directories, links, metadata) during a restore,
//! each through the grants.

use super::*;

impl wit::fs::Host for HostState {
    async fn granted_paths(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.grants.paths())
    }

    async fn stat(&mut self, path: String) -> HostResult<wit::fs::FileStat> {
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
        Ok(Ok(wit::fs::FileStat {
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
    pub(super) fn restored(&mut self, done: Result<(), GrantError>) -> Result<(), AdapterError> {
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
    pub(super) async fn already_restored(
        &mut self,
        r: &Resource<ReaderState>,
        resolved: &crate::runtime::grants::Resolved<'_>,
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
