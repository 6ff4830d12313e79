//! WAL back out of the archive (docs/design/pitr.md §7): the catalog of a
//! job's windows, the lookup PostgreSQL's `restore_command` needs, and
//! the socket a restore serves it over, so that the cluster's owner runs
//! `cairn wal-fetch --socket S %f %p` without the config, the password or
//! the repository, and each segment costs no key derivation, index load
//! or snapshot listing.
//!
//! The lookup prefers a complete segment to a partial; of the partials of
//! one segment, the one of the window version that reaches furthest
//! (`wal-stored`). A partial is served under the segment's full name, as
//! PostgreSQL's documentation says to: recovery replays its valid part
//! and ends where the zeros begin.

use super::PitrError;
use super::archive::{ROOT, tag};
use super::lsn::{Lsn, Segment, SegmentSize, WalFile};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Node;
use crate::repo::{Id, Repository};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// A file of the archive, where it is.
#[derive(Clone, Debug)]
struct Held {
    node: Node,
    /// How far the window version holding it reaches.
    stored: Lsn,
}

/// What the archive holds of one job and cluster, by file.
pub struct Catalog {
    repo: Arc<Repository>,
    size: SegmentSize,
    segments: BTreeMap<Segment, Held>,
    partials: BTreeMap<Segment, Held>,
    history: BTreeMap<u32, Held>,
    /// Files served so far.
    served: AtomicU64,
}

/// Whether snapshot `s` is a WAL window of `job` and cluster `system`.
pub fn is_window(s: &Snapshot, job: &str, system: u64) -> bool {
    s.cairn_job.as_deref() == Some(job)
        && s.tags.iter().any(|t| t == "cairn-wal")
        && tag(&s.tags, "pg-system") == Some(&system.to_string())
}

impl Catalog {
    /// Read every WAL window of `job` and cluster `system` (the newest
    /// version of each) from `snapshots`.
    pub async fn load(
        repo: Arc<Repository>,
        snapshots: &[(Id, Snapshot)],
        job: &str,
        system: u64,
        size: SegmentSize,
    ) -> Result<Catalog, PitrError> {
        let mut newest: BTreeMap<&str, (&Id, &Snapshot)> = BTreeMap::new();
        for (id, snap) in snapshots.iter().filter(|(_, s)| is_window(s, job, system)) {
            let Some(key) = tag(&snap.tags, "wal-window") else {
                continue;
            };
            if newest.get(key).is_none_or(|(_, kept)| {
                super::archive::version(kept) < super::archive::version(snap)
            }) {
                newest.insert(key, (id, snap));
            }
        }
        let mut catalog = Catalog {
            repo,
            size,
            segments: BTreeMap::new(),
            partials: BTreeMap::new(),
            history: BTreeMap::new(),
            served: AtomicU64::new(0),
        };
        for (id, snap) in newest.values() {
            catalog.add(id, snap).await?;
        }
        Ok(catalog)
    }

    /// The catalog of job `job`'s WAL windows of cluster `system`, or,
    /// without one, of the cluster of its newest window; `None` if the
    /// job has no window.
    pub async fn load_for_job(
        repo: Arc<Repository>,
        job: &str,
        system: Option<u64>,
    ) -> Result<Option<Catalog>, PitrError> {
        let snapshots = repo.snapshots().await?;
        let newest = snapshots
            .iter()
            .filter(|(_, s)| {
                s.cairn_job.as_deref() == Some(job) && s.tags.iter().any(|t| t == "cairn-wal")
            })
            .filter_map(|(id, s)| {
                let sys: u64 = tag(&s.tags, "pg-system")?.parse().ok()?;
                system
                    .is_none_or(|want| want == sys)
                    .then_some((id, s, sys))
            })
            .max_by_key(|(_, s, _)| s.time);
        let Some((id, snap, sys)) = newest else {
            return Ok(None);
        };
        let record = crate::read::lookup(&repo, snap.tree, &format!("{ROOT}/window.json"))
            .await?
            .ok_or_else(|| {
                PitrError::Archive(format!(
                    "WAL window snapshot {}: no {ROOT}/window.json",
                    id.short()
                ))
            })?;
        let json =
            crate::read::ContentReader::new(repo.clone(), record.content.unwrap_or_default())
                .read_up_to(usize::MAX)
                .await?;
        let bytes = serde_json::from_slice::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["wal_segment_size"].as_u64())
            .ok_or_else(|| {
                PitrError::Archive(format!(
                    "WAL window snapshot {}: its window.json names no wal_segment_size",
                    id.short()
                ))
            })?;
        let size = SegmentSize::new(bytes)
            .map_err(|e| PitrError::Archive(format!("WAL window snapshot {}: {e}", id.short())))?;
        Catalog::load(repo, &snapshots, job, sys, size)
            .await
            .map(Some)
    }

    async fn add(&mut self, id: &Id, snap: &Snapshot) -> Result<(), PitrError> {
        let bad =
            |why: String| PitrError::Archive(format!("WAL window snapshot {}: {why}", id.short()));
        let stored = super::archive::version(snap).0;
        let root = crate::read::lookup(&self.repo, snap.tree, ROOT)
            .await?
            .and_then(|n| n.subtree)
            .ok_or_else(|| bad(format!("no {ROOT} folder")))?;
        for dir in self.repo.load_tree(&root).await?.nodes {
            let Some(sub) = dir.subtree.filter(|_| dir.kind == "dir") else {
                continue;
            };
            for node in self.repo.load_tree(&sub).await?.nodes {
                let held = Held {
                    node: node.clone(),
                    stored,
                };
                match WalFile::parse(&node.name, self.size) {
                    Some(WalFile::Segment(s)) => {
                        self.segments.entry(s).or_insert(held);
                    }
                    Some(WalFile::Partial(s)) => {
                        if self.partials.get(&s).is_none_or(|h| h.stored < stored) {
                            self.partials.insert(s, held);
                        }
                    }
                    Some(WalFile::History(t)) => {
                        if self.history.get(&t).is_none_or(|h| h.stored < stored) {
                            self.history.insert(t, held);
                        }
                    }
                    None => return Err(bad(format!("{:?} does not belong in it", node.name))),
                }
            }
        }
        Ok(())
    }

    /// The segment size.
    pub fn size(&self) -> SegmentSize {
        self.size
    }

    /// Whether complete segment `s` is archived.
    pub fn has_segment(&self, s: Segment) -> bool {
        self.segments.contains_key(&s)
    }

    /// Whether only a partial of segment `s` is archived.
    pub fn has_partial(&self, s: Segment) -> bool {
        !self.segments.contains_key(&s) && self.partials.contains_key(&s)
    }

    /// Every timeline the archive has WAL or a history file of.
    pub fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .segments
            .keys()
            .chain(self.partials.keys())
            .map(|s| s.tli)
            .chain(self.history.keys().copied())
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The newest segment of timeline `tli` archived, complete or partial.
    pub fn newest(&self, tli: u32) -> Option<Segment> {
        self.segments
            .keys()
            .chain(self.partials.keys())
            .filter(|s| s.tli == tli)
            .max()
            .copied()
    }

    /// Timeline `tli`'s history file's text.
    pub async fn history_text(&self, tli: u32) -> Result<Option<String>, PitrError> {
        let Some(held) = self.history.get(&tli) else {
            return Ok(None);
        };
        let bytes = self.content(&held.node).await?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The file PostgreSQL asks for by `name` (`%f`): a segment (complete,
    /// or else its partial) or a history file; `None` if the archive has
    /// none, or the name is not one of those.
    pub fn find(&self, name: &str) -> Option<&Node> {
        match WalFile::parse(name, self.size)? {
            WalFile::Segment(s) => self
                .segments
                .get(&s)
                .or_else(|| self.partials.get(&s))
                .map(|h| &h.node),
            WalFile::History(t) => self.history.get(&t).map(|h| &h.node),
            WalFile::Partial(_) => None,
        }
    }

    /// Files served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// `node`'s content, whole (a segment at most: 1 GiB).
    async fn content(&self, node: &Node) -> Result<Vec<u8>, PitrError> {
        Ok(crate::read::ContentReader::new(
            self.repo.clone(),
            node.content.clone().unwrap_or_default(),
        )
        .read_up_to(usize::MAX)
        .await?)
    }

    /// Write file `name` to `dest` (see [`write_dest`]); whether the
    /// archive has it.
    pub async fn fetch_to(&self, name: &str, dest: &Path) -> Result<bool, PitrError> {
        let Some(node) = self.find(name) else {
            return Ok(false);
        };
        let bytes = self.content(node).await?;
        if bytes.len() as u64 != node.size {
            return Err(PitrError::Archive(format!(
                "{name}: the archive gave {} bytes, its record says {}",
                bytes.len(),
                node.size
            )));
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || write_dest(&dest, &mut &bytes[..], bytes.len() as u64))
            .await
            .map_err(|e| PitrError::Archive(e.to_string()))?
            .map_err(PitrError::Archive)?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Answer `restore_command` clients on `listener` until `stop`: each
    /// connection sends a file name and a newline, and gets `ok <size>`
    /// and the bytes, `missing`, or `error <why>`. Only processes of the
    /// users `uids` are answered (the cluster's owner).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::UnixListener,
        uids: Vec<u32>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // PostgreSQL asks one file at a time: a few connections at once is
        // plenty, and a flood of idle ones must not exhaust this process.
        let open = Arc::new(tokio::sync::Semaphore::new(16));
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.changed() => return,
            };
            let Ok((stream, _)) = conn else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!("wal-fetch socket: too many connections at once; one was closed.");
                continue;
            };
            let catalog = self.clone();
            let uids = uids.clone();
            tokio::spawn(async move {
                if let Err(e) = catalog.answer(stream, &uids).await {
                    tracing::warn!("wal-fetch socket: {e}");
                }
                drop(permit);
            });
        }
    }

    async fn answer(&self, stream: tokio::net::UnixStream, uids: &[u32]) -> std::io::Result<()> {
        let uid = stream.peer_cred()?.uid();
        let (read, mut write) = stream.into_split();
        if !uids.contains(&uid) {
            tracing::warn!(
                uid,
                "wal-fetch socket: refused a process of a user that does not own the cluster"
            );
            write
                .write_all(b"error refused: not the cluster's owner\n")
                .await?;
            return Ok(());
        }
        let mut line = String::new();
        let mut read = tokio::io::BufReader::new(read.take(128));
        // A client that connects and says nothing is let go.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read.read_line(&mut line),
        )
        .await
        .map_err(|_| std::io::Error::other("a client sent no file name within 10 s"))??;
        let name = line.trim_end_matches('\n');
        let Some(node) = self.find(name) else {
            tracing::info!(file = %crate::util::escaped(name), "wal-fetch: not in the archive");
            write.write_all(b"missing\n").await?;
            return Ok(());
        };
        let mut reader = crate::read::ContentReader::new(
            self.repo.clone(),
            node.content.clone().unwrap_or_default(),
        );
        // The first piece is read before the answer: a repository error
        // is still an answer, not a cut-off stream.
        let first = match reader.read(1 << 20).await {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string().replace('\n', " ");
                tracing::error!(file = %name, error = %why, "wal-fetch: cannot read the file from the repository; recovery stops.");
                write.write_all(format!("error {why}\n").as_bytes()).await?;
                return Ok(());
            }
        };
        write
            .write_all(format!("ok {}\n", node.size).as_bytes())
            .await?;
        write.write_all(&first).await?;
        loop {
            let piece = reader.read(1 << 20).await.map_err(|e| {
                tracing::error!(file = %name, error = %e, "wal-fetch: reading the file from the repository failed midway; recovery stops.");
                std::io::Error::other(e.to_string())
            })?;
            if piece.is_empty() {
                break;
            }
            write.write_all(&piece).await?;
        }
        write.shutdown().await?;
        self.served.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %name, "wal-fetch: served");
        Ok(())
    }
}

/// Write exactly `size` bytes of `from` to `dest`, as `restore_command`
/// must: into a new file beside it, synced, then renamed over it, so a
/// failure leaves nothing at `dest` and removes only the file this made.
/// A `dest` that exists and is not a regular file is refused, untouched.
pub fn write_dest(dest: &Path, from: &mut impl Read, size: u64) -> Result<(), String> {
    if let Ok(meta) = std::fs::symlink_metadata(dest)
        && !meta.file_type().is_file()
    {
        return Err(format!(
            "{}: exists and is not a regular file; not written",
            dest.display()
        ));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| format!("{}: not a file path", dest.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".cairn-{}", std::process::id()));
    let tmp = dest.with_file_name(tmp_name);
    let mut write = || -> Result<(), String> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let copied = std::io::copy(&mut from.take(size), &mut file)
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        if copied != size {
            return Err(format!(
                "{}: got {copied} of {size} bytes (did the restore stop?)",
                dest.display()
            ));
        }
        file.sync_all()
            .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dest)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dest.display()))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What a fetch found out.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The file was written.
    Written,
    /// The archive has no such file (or the restore that served it has
    /// ended and removed its socket): PostgreSQL may go on without it.
    Missing,
}

/// The client side of [`Catalog::serve`] (`cairn wal-fetch --socket`),
/// blocking and small: ask for `name` and write it to `dest` (see
/// [`write_dest`]). An error means "cannot tell" (the restore was
/// killed, the repository failed): recovery must stop, not end early.
pub fn fetch_over_socket(socket: &Path, name: &str, dest: &Path) -> Result<Fetched, String> {
    if !valid_request(name) {
        return Ok(Fetched::Missing);
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        // The restore ended and removed its socket (after a pause, say,
        // a promotion probes history files): nothing more to serve.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Fetched::Missing),
        Err(e) => return Err(format!("connecting to {}: {e}", socket.display())),
    };
    stream
        .write_all(format!("{name}\n").as_bytes())
        .map_err(|e| format!("asking {} for {name}: {e}", socket.display()))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut header = Vec::new();
    std::io::BufRead::read_until(&mut (&mut reader).take(4096), b'\n', &mut header)
        .map_err(|e| format!("reading the answer for {name}: {e}"))?;
    let header = String::from_utf8_lossy(&header);
    let header = header.trim_end();
    if header == "missing" {
        return Ok(Fetched::Missing);
    }
    if let Some(why) = header.strip_prefix("error ") {
        return Err(format!("{name}: {why}"));
    }
    let size: u64 = header
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{name}: the restore answered {header:?}"))?;
    write_dest(dest, &mut reader, size)?;
    Ok(Fetched::Written)
}

/// Whether `name` is what `restore_command`'s `%f` may be: a segment
/// (24 upper-case hex digits) or a history file.
pub fn valid_request(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    (name.len() == 24 && hex(name))
        || name
            .strip_suffix(".history")
            .is_some_and(|t| t.len() == 8 && hex(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_and_history_names_are_asked_for() {
        assert!(valid_request("000000010000000A0000003F"));
        assert!(valid_request("00000002.history"));
        for bad in [
            "",
            "000000010000000A0000003f",
            "000000010000000A0000003F.partial",
            "../etc/passwd",
            "000000010000000A0000003F\n",
            "0000002.history",
            "000000010000000A0000003F.00000028.backup",
        ] {
            assert!(!valid_request(bad), "{bad:?}");
        }
    }
}
