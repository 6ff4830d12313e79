//! WAL in the repository: one *window* snapshot per job, timeline and
//! stretch of time (docs/design/pitr.md §4), replaced by a new version at
//! every flush while it is open, so a day of WAL is about 24 snapshots
//! rather than thousands, and every version is a whole, restic-readable
//! snapshot:
//!
//! ```text
//! /postgres-wal/window.json                               what the window holds
//! /postgres-wal/history/00000002.history                  every history file known
//! /postgres-wal/000000010000000A/000000010000000A0000003F complete segments
//! /postgres-wal/000000010000000A/000000010000000A00000040.partial   (open window only)
//! ```
//!
//! A flush pumps only what changed in the spool; files stored by earlier
//! versions keep their nodes (no byte is read again), and the partial is
//! stored whole, zeros included, so that a `restic restore` of a window
//! gives segment files PostgreSQL can replay. Content-defined chunking
//! makes each new version of a partial cost about one chunk.
//!
//! The new version is saved before the previous one is removed: a crash
//! between the two leaves two versions, and [`WindowWriter::resume`]
//! keeps the newest.

use super::PitrError;
use super::lsn::{Lsn, Segment, SegmentSize, WalFile, history_name};
use super::records::{self, Extent};
use super::spool::{Seen, Spool};
use crate::pipeline::chunker::{Chunker, ChunkerParams};
use crate::pipeline::tree_builder::TreeBuilder;
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Node;
use crate::repo::{Id, RepoError, Repository};
use crate::storage::FileType;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder every window's files are under.
pub const ROOT: &str = "/postgres-wal";

/// A file stored in the open window, and how it looked in the spool then.
#[derive(Clone, Debug)]
struct Stored {
    node: Node,
    seen: Option<Seen>,
}

/// What one window holds.
#[derive(Clone, Debug)]
struct Window {
    /// Its identity across versions (the `wal-window` tag).
    key: String,
    tli: u32,
    opened: DateTime<Utc>,
    segments: BTreeMap<u64, Stored>,
    partial: Option<(u64, Stored)>,
    /// The snapshot of its newest version.
    snapshot: Option<Id>,
}

/// `window.json`: what a window holds, for people and tools reading the
/// repository without Cairn.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct WindowRecord {
    format: u32,
    system: String,
    timeline: u32,
    wal_segment_size: u64,
    first: Option<String>,
    last: Option<String>,
    partial: Option<String>,
    stored_lsn: String,
    opened: String,
    closed: bool,
}

/// What the writer needs to know of the stream it archives.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The job.
    pub job: String,
    /// The host name recorded.
    pub host: String,
    /// The cluster's system identifier.
    pub system: u64,
    /// Its WAL segment size.
    pub size: SegmentSize,
    /// zstd level.
    pub compression: i32,
}

/// What one flush stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Files pumped (new or changed), by name.
    pub files: Vec<String>,
    /// The window's new version, if anything changed.
    pub snapshot: Option<Id>,
    /// Windows closed by this flush (their final versions).
    pub closed: Vec<Id>,
}

/// Keeps a job's open window and writes its versions.
pub struct WindowWriter {
    repo: Arc<Repository>,
    stream: Stream,
    window: Option<Window>,
    history: BTreeMap<u32, Stored>,
    /// Per timeline, the last complete segment closed windows hold: the
    /// spool may still show it (the receiver resumes after it), and it is
    /// not stored twice.
    archived: BTreeMap<u32, u64>,
    /// The newest complete segment of the closed windows, with its node
    /// (to seed an empty spool).
    last_closed: Option<(Segment, Node)>,
    /// The `wal-stored` of the open window's newest version when resumed:
    /// later versions never say less.
    stored_tag: Lsn,
    /// Spool files found damaged (not stored) since the writer started,
    /// and what was wrong with the last.
    damaged: u64,
    last_damage: Option<String>,
    /// A timeline the server's history left before the WAL the archive
    /// holds of it ends (see [`WindowWriter::freeze`]): nothing more of
    /// it is stored from this server.
    frozen: Option<u32>,
    /// Complete segments refused by the record check and not stored
    /// since: the gapless run ends before the first, and it is fetched
    /// again. Kept in the spool's `cairn-refused` across restarts.
    refused: std::collections::BTreeSet<Segment>,
    /// The stored partial, and where its last whole checked record ends.
    partial_checked: Option<(Segment, Lsn)>,
}

impl WindowWriter {
    /// A writer that continues the job's open window, if the repository
    /// holds one; older versions of it (a crash between saving a version
    /// and removing the previous one) are removed.
    pub async fn resume(repo: Arc<Repository>, stream: Stream) -> Result<Self, PitrError> {
        let mut writer = WindowWriter {
            repo,
            stream,
            window: None,
            history: BTreeMap::new(),
            archived: BTreeMap::new(),
            last_closed: None,
            stored_tag: Lsn(0),
            damaged: 0,
            last_damage: None,
            frozen: None,
            refused: Default::default(),
            partial_checked: None,
        };
        let mine: Vec<(Id, Snapshot)> = writer
            .repo
            .snapshots()
            .await?
            .into_iter()
            .filter(|(_, s)| writer.is_mine(s))
            .collect();
        // Per window, the newest version wins; the others go.
        let mut newest: BTreeMap<String, (Id, Snapshot)> = BTreeMap::new();
        let mut stale = Vec::new();
        for (id, snap) in mine {
            let Some(key) = tag(&snap.tags, "wal-window").map(str::to_string) else {
                continue;
            };
            match newest.get(&key) {
                Some((_, kept)) if version(kept) >= version(&snap) => stale.push(id),
                Some((old, _)) => {
                    stale.push(*old);
                    newest.insert(key, (id, snap));
                }
                None => {
                    newest.insert(key, (id, snap));
                }
            }
        }
        for id in stale {
            writer.remove_snapshot(id).await?;
        }
        // The open one, if any, becomes the window; history files come
        // from the newest window of all.
        // Closed windows say where the gapless run of segments ended when
        // they closed (`wal-run`; `wal-last` for windows written before
        // that tag, which did not tell); the open one is loaded whole, so
        // a gap inside it is seen.
        let last_of = |snap: &Snapshot| {
            tag(&snap.tags, "wal-run")
                .or_else(|| tag(&snap.tags, "wal-last"))
                .and_then(|n| match WalFile::parse(n, writer.stream.size) {
                    Some(WalFile::Segment(s)) => Some(s),
                    _ => None,
                })
        };
        let mut newest_closed: Option<(Segment, Id)> = None;
        for (id, snap) in newest.values() {
            if !snap.tags.iter().any(|t| t == "wal-closed") {
                continue;
            }
            if let Some(s) = last_of(snap) {
                let max = writer.archived.entry(s.tli).or_insert(s.segno);
                *max = (*max).max(s.segno);
                if newest_closed.is_none_or(|(n, _)| s > n) {
                    newest_closed = Some((s, *id));
                }
            }
        }
        let mut by_time: Vec<(Id, Snapshot)> = newest.values().cloned().collect();
        by_time.sort_by_key(|(_, s)| (s.time, version(s)));
        if let Some((id, snap)) = by_time.last() {
            let (window, history) = load(&writer.repo, writer.stream.size, *id, snap).await?;
            writer.history = history;
            if snap.tags.iter().any(|t| t == "wal-open") {
                writer.stored_tag = version(snap).0;
                writer.window = Some(window);
            }
        }
        // The end of the closed windows' run, with its node: what an empty
        // spool is seeded with when the open window has none yet. It may
        // sit in an earlier window than the one whose tag names it.
        if let Some((seg, _)) = newest_closed {
            let name = seg.name(writer.stream.size);
            let mut holders: Vec<&(Id, Snapshot)> = newest
                .values()
                .filter(|(_, s)| {
                    s.tags.iter().any(|t| t == "wal-closed")
                        && tag(&s.tags, "pg-tli") == Some(&seg.tli.to_string())
                        && tag(&s.tags, "wal-first").is_some_and(|f| f <= name.as_str())
                        && tag(&s.tags, "wal-last").is_some_and(|l| l >= name.as_str())
                })
                .collect();
            holders.sort_by_key(|(_, s)| std::cmp::Reverse(s.time));
            for (id, snap) in holders {
                let (window, _) = load(&writer.repo, writer.stream.size, *id, snap).await?;
                if let Some(s) = window.segments.get(&seg.segno) {
                    writer.last_closed = Some((seg, s.node.clone()));
                    break;
                }
            }
        }
        Ok(writer)
    }

    fn is_mine(&self, s: &Snapshot) -> bool {
        s.cairn_job.as_deref() == Some(&self.stream.job)
            && s.tags.iter().any(|t| t == "cairn-wal")
            && tag(&s.tags, "pg-system") == Some(&self.stream.system.to_string())
    }

    async fn remove_snapshot(&self, id: Id) -> Result<(), PitrError> {
        match self
            .repo
            .backend()
            .remove(FileType::Snapshot, &id.to_hex())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(RepoError::from(e).into()),
        }
    }

    /// The timeline of the open window.
    pub fn timeline(&self) -> Option<u32> {
        self.window.as_ref().map(|w| w.tli)
    }

    /// Make sure the open window's newest version is still in the
    /// repository (a `forget` by id may have removed it, and a prune its
    /// data): if it is gone, nothing of it is built on; the next flush
    /// starts a new window from what the spool holds, and history files
    /// are stored again. Returns whether it was gone.
    pub async fn check_open(&mut self) -> Result<bool, PitrError> {
        let Some(id) = self.window.as_ref().and_then(|w| w.snapshot) else {
            return Ok(false);
        };
        match self
            .repo
            .backend()
            .size(FileType::Snapshot, &id.to_hex())
            .await
        {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => {
                tracing::warn!(job = %self.stream.job, snapshot = %id.short(), "The open WAL window was removed from the repository; a new one starts.");
                self.window = None;
                self.history.clear();
                self.last_closed = None;
                Ok(true)
            }
            Err(e) => Err(RepoError::from(e).into()),
        }
    }

    /// Whether complete segment `seg` is in the repository (in the open
    /// window, or at or before the last one closed windows hold).
    pub fn is_stored(&self, seg: Segment) -> bool {
        self.archived.get(&seg.tli).is_some_and(|m| seg.segno <= *m)
            || self
                .window
                .as_ref()
                .is_some_and(|w| w.tli == seg.tli && w.segments.contains_key(&seg.segno))
    }

    /// Whether timeline `tli`'s history file is in the repository.
    pub fn has_history(&self, tli: u32) -> bool {
        self.history.contains_key(&tli)
    }

    /// The newest complete segment the repository holds, written into
    /// `dir` under its name (from the repository). An empty spool is
    /// seeded with it, so that `pg_receivewal` goes on right after it,
    /// from WAL the hold slot kept, rather than from where its own slot
    /// says the lost spool had got to.
    pub async fn seed(&self, dir: &Path) -> Result<Option<Segment>, PitrError> {
        // The end of the gapless run, not the newest: the receiver must
        // fill a gap, never step over it.
        let open = self.contiguous().and_then(|seg| {
            let w = self.window.as_ref()?;
            let node = w.segments.get(&seg.segno)?.node.clone();
            Some((seg, node))
        });
        let closed = self
            .last_closed
            .clone()
            .filter(|(seg, _)| self.contiguous().is_none_or(|c| c == *seg));
        let Some((seg, node)) = open.or(closed) else {
            return Ok(None);
        };
        let name = seg.name(self.stream.size);
        let path = dir.join(format!("{name}.seeding"));
        let mut reader =
            crate::read::ContentReader::new(self.repo.clone(), node.content.unwrap_or_default());
        let io = |e: std::io::Error| {
            PitrError::Archive(format!("seeding the spool with segment {name}: {e}"))
        };
        let mut file = std::fs::File::create(&path).map_err(io)?;
        loop {
            let piece = reader.read(1 << 20).await?;
            if piece.is_empty() {
                break;
            }
            std::io::Write::write_all(&mut file, &piece).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        std::fs::rename(&path, dir.join(&name)).map_err(io)?;
        Ok(Some(seg))
    }

    /// The newest complete segment of the open window's timeline that the
    /// repository holds with every segment before it (since the first
    /// one stored): the hold slot never passes a gap.
    pub fn contiguous(&self) -> Option<Segment> {
        // Between windows: where the closed ones' run ends.
        let Some(w) = self.window.as_ref() else {
            // (None while a frozen timeline is the newest: the server's
            // WAL after the fork is not stored yet.)
            return self
                .archived
                .iter()
                .next_back()
                .filter(|(tli, _)| Some(**tli) != self.frozen)
                .map(|(tli, segno)| Segment {
                    tli: *tli,
                    segno: *segno,
                });
        };
        let mut end = self.archived.get(&w.tli).copied();
        // Where the run starts: in a closed window, or at the first
        // segment stored.
        let start = match end {
            Some(_) => 0,
            None => w.segments.keys().next().copied().unwrap_or(u64::MAX),
        };
        for segno in w.segments.keys() {
            match end {
                Some(e) if *segno <= e => {}
                Some(e) if *segno != e + 1 => break,
                _ => end = Some(*segno),
            }
        }
        // A refused segment breaks the run, also before its first segment.
        if let Some(r) = self.first_refused(w.tli) {
            if r < start {
                return None;
            }
            if end.is_some_and(|e| r <= e) {
                end = (r > start).then(|| r - 1);
            }
        }
        end.map(|segno| Segment { tli: w.tli, segno })
    }

    /// The first segment missing after the gapless run when the open
    /// window holds WAL beyond it (a segment lost from the spool, a
    /// receiver that skipped ahead): the hold slot stays before it, and
    /// the receiver must fetch it again.
    pub fn gap(&self) -> Option<Segment> {
        let w = self.window.as_ref()?;
        if let Some(r) = self.first_refused(w.tli) {
            return Some(Segment {
                tli: w.tli,
                segno: r,
            });
        }
        let next = self.contiguous()?.segno + 1;
        let beyond = w.segments.keys().any(|s| *s > next)
            || w.partial.as_ref().is_some_and(|(s, _)| *s > next);
        beyond.then_some(Segment {
            tli: w.tli,
            segno: next,
        })
    }

    /// The first refused segment of timeline `tli`.
    fn first_refused(&self, tli: u32) -> Option<u64> {
        self.refused
            .iter()
            .filter(|s| s.tli == tli)
            .map(|s| s.segno)
            .min()
    }

    /// Read the refused segments a previous streamer left in `dir`.
    pub fn load_refused(&mut self, dir: &Path) {
        let Ok(text) = std::fs::read_to_string(dir.join("cairn-refused")) else {
            return;
        };
        for line in text.lines() {
            if let Some(WalFile::Segment(s)) = WalFile::parse(line.trim(), self.stream.size)
                && !self.is_stored(s)
            {
                self.refused.insert(s);
            }
        }
    }

    fn save_refused(&self, dir: &Path) {
        let text: String = self
            .refused
            .iter()
            .map(|s| format!("{}\n", s.name(self.stream.size)))
            .collect();
        let path = dir.join("cairn-refused");
        let tmp = dir.join("cairn-refused.tmp");
        let written = if text.is_empty() {
            std::fs::remove_file(&path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        } else {
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path))
        };
        if let Err(e) = written {
            tracing::warn!(job = %self.stream.job, error = %e, "Could not record the refused segments in the spool.");
        }
    }

    /// Leave in `dir` an empty partial (sparse zeros, the whole size) of
    /// segment `seg`: the receiver streams that segment again from its
    /// start into it (it goes on from the newest file it finds, from a
    /// partial's start). It holds no record, so nothing of it counts.
    pub fn placeholder(&self, dir: &Path, seg: Segment) -> std::io::Result<()> {
        let name = WalFile::Partial(seg).name(self.stream.size);
        let tmp = dir.join(format!("{name}.seeding"));
        let file = std::fs::File::create(&tmp)?;
        file.set_len(self.stream.size.bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    }

    /// The partial stored, and where the last whole record the check read
    /// in it ends: the hold slot goes no further into it.
    pub fn partial_checked(&self) -> Option<(Segment, Lsn)> {
        self.partial_checked
    }

    /// The newest complete segment the repository holds (of the newest
    /// timeline), open window or closed.
    pub fn newest_held(&self) -> Option<Segment> {
        let open = self.window.as_ref().and_then(|w| {
            w.segments.keys().next_back().map(|segno| Segment {
                tli: w.tli,
                segno: *segno,
            })
        });
        let closed = self
            .archived
            .iter()
            .next_back()
            .map(|(tli, segno)| Segment {
                tli: *tli,
                segno: *segno,
            });
        open.max(closed)
    }

    /// The newest timeline the writer knows of: the open window's, the
    /// closed windows', or a history file's.
    pub fn newest_timeline(&self) -> Option<u32> {
        [
            self.timeline(),
            self.archived.keys().next_back().copied(),
            self.history.keys().next_back().copied(),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// The server's history left the open window's timeline before the
    /// WAL the archive holds of it ends (a restored copy promoted while
    /// the original went on, or a failover that lost WAL the old primary
    /// had sent): what the spool holds of that timeline is stored, its
    /// window closes as it is (it stays the original's history, restorable
    /// with `--timeline`), and nothing more of it is stored from this
    /// server, which goes on from the fork on its own timeline.
    pub async fn freeze(
        &mut self,
        dir: &Path,
        spool: &Spool,
        stored: Lsn,
        tli: u32,
    ) -> Result<Flushed, PitrError> {
        let mut out = Flushed::default();
        if self.timeline() == Some(tli) {
            let (snapshot, pumped) = self.write(dir, spool, tli, stored, true).await?;
            out.files.extend(pumped);
            out.closed.extend(snapshot);
            self.window = None;
        }
        self.frozen = Some(tli);
        Ok(out)
    }

    /// Spool files found damaged, and not stored, since the writer
    /// started.
    pub fn damaged(&self) -> u64 {
        self.damaged
    }

    /// What was wrong with the last damaged spool file.
    pub fn last_damage(&self) -> Option<&str> {
        self.last_damage.as_deref()
    }

    /// When the open window opened.
    pub fn opened(&self) -> Option<DateTime<Utc>> {
        self.window.as_ref().map(|w| w.opened)
    }

    /// Where [`WindowWriter::contiguous`] ends, or 0.
    pub fn stored_end(&self) -> Lsn {
        self.contiguous()
            .map_or(Lsn(0), |s| self.stream.size.end(s.segno))
    }

    /// The `wal-stored` the open window's newest version had when this
    /// writer resumed it (0 without one).
    pub fn resumed_stored(&self) -> Lsn {
        self.stored_tag
    }

    /// How the open window's partial looked in the spool when stored
    /// (`None` if it holds none, or it was loaded from the repository).
    pub fn partial_seen(&self) -> Option<(Segment, Seen)> {
        let w = self.window.as_ref()?;
        let (segno, s) = w.partial.as_ref()?;
        Some((
            Segment {
                tli: w.tli,
                segno: *segno,
            },
            s.seen?,
        ))
    }

    /// The segment of the open window's partial.
    pub fn partial_segment(&self) -> Option<Segment> {
        let w = self.window.as_ref()?;
        w.partial.as_ref().map(|(segno, _)| Segment {
            tli: w.tli,
            segno: *segno,
        })
    }

    /// Store what changed in `spool` (read from `dir`) since the last
    /// flush. `stored` is the WAL position the stored files reach.
    /// `close` ends the open window after this flush (its final version
    /// keeps no partial that a complete segment replaces).
    pub async fn flush(
        &mut self,
        dir: &Path,
        spool: &Spool,
        stored: Lsn,
        close: bool,
    ) -> Result<Flushed, PitrError> {
        let mut out = Flushed::default();
        // A newer timeline in the spool: the open window is finished with
        // what it has of its own timeline, and a window opens for the new one.
        let newest_tli = spool
            .complete
            .keys()
            .chain(spool.partial.keys())
            .map(|s| s.tli)
            .filter(|t| Some(*t) != self.frozen)
            .max();
        if let (Some(w), Some(t)) = (&self.window, newest_tli)
            && t > w.tli
        {
            let old = w.tli;
            let (snapshot, pumped) = self.write(dir, spool, old, stored, true).await?;
            out.files.extend(pumped);
            out.closed.extend(snapshot);
            self.window = None;
        }
        let Some(tli) = newest_tli.or(self.timeline()) else {
            return Ok(out);
        };
        let (snapshot, pumped) = self.write(dir, spool, tli, stored, close).await?;
        out.files.extend(pumped);
        if close {
            out.closed.extend(snapshot);
            self.window = None;
        } else {
            out.snapshot = snapshot;
        }
        Ok(out)
    }

    /// Bring the window of timeline `tli` up to date with the spool and,
    /// if anything changed (or it closes), save its new version.
    async fn write(
        &mut self,
        dir: &Path,
        spool: &Spool,
        tli: u32,
        stored: Lsn,
        close: bool,
    ) -> Result<(Option<Id>, Vec<String>), PitrError> {
        let size = self.stream.size;
        let mut window = match self.window.take() {
            Some(w) if w.tli == tli => w,
            _ => {
                let opened = Utc::now();
                Window {
                    key: format!(
                        "{}-{:04x}",
                        opened.format("%Y%m%dT%H%M%SZ"),
                        rand::random::<u16>()
                    ),
                    tli,
                    opened,
                    segments: BTreeMap::new(),
                    partial: None,
                    snapshot: None,
                }
            }
        };
        // What to pump: new or changed files of this timeline, and history.
        let mut todo: Vec<(WalFile, Seen)> = Vec::new();
        let floor = self.archived.get(&tli).copied();
        let fresh = |s: &Segment| s.tli == tli && floor.is_none_or(|f| s.segno > f);
        for (seg, seen) in spool.complete.iter().filter(|(s, _)| fresh(s)) {
            if window.segments.get(&seg.segno).and_then(|s| s.seen) != Some(*seen) {
                todo.push((WalFile::Segment(*seg), *seen));
            }
        }
        let partial = spool
            .partial
            .iter()
            .rfind(|(s, _)| fresh(s))
            // A partial that a complete copy replaces is not stored, nor
            // one older than the window's (a gap fetched again: the
            // window keeps the newer WAL it has).
            .filter(|(s, _)| {
                !spool.complete.contains_key(s)
                    && !window.segments.contains_key(&s.segno)
                    && window.partial.as_ref().is_none_or(|(n, _)| s.segno >= *n)
            });
        if let Some((seg, seen)) = partial
            && window
                .partial
                .as_ref()
                .and_then(|(n, s)| (*n == seg.segno).then_some(s.seen))
                .flatten()
                != Some(*seen)
        {
            todo.push((WalFile::Partial(*seg), *seen));
        }
        for (t, seen) in &spool.history {
            if self.history.get(t).and_then(|s| s.seen) != Some(*seen) {
                todo.push((WalFile::History(*t), *seen));
            }
        }
        let partial_done = window
            .partial
            .as_ref()
            .is_some_and(|(segno, _)| spool.complete.contains_key(&Segment { tli, segno: *segno }));
        if todo.is_empty() && !close && !partial_done && window.snapshot.is_some() {
            self.window = Some(window);
            return Ok((None, Vec::new()));
        }
        let pipeline = Pipeline::start(
            self.repo.clone(),
            PipelineOptions {
                compression_level: self.stream.compression,
                ..Default::default()
            },
        );
        let params = ChunkerParams::new(self.repo.config().chunker_polynomial.0);
        let mut pumped = Vec::new();
        for (file, seen) in &todo {
            let name = file.name(size);
            // A segment is read record by record before it counts (page
            // headers, lengths, the xl_prev chain, every CRC). A damaged
            // complete one is left out, and out of the spool, so the
            // receiver fetches it again (the hold slot kept it). A damaged
            // partial is left as it is, not stored: the next flush looks
            // again, and its complete copy is checked in turn.
            let extent = match file {
                WalFile::Segment(s) => Some((*s, Extent::Complete)),
                WalFile::Partial(s) => Some((*s, Extent::Partial)),
                WalFile::History(_) => None,
            };
            // A partial still being padded to its size by the receiver is
            // not ready yet (not damaged): the next flush looks again.
            if let Some((_, Extent::Partial)) = extent
                && std::fs::metadata(dir.join(&name)).is_ok_and(|m| m.len() != size.bytes())
            {
                continue;
            }
            let checked = match extent {
                Some((s, extent)) => Some((
                    s,
                    extent,
                    records::verify_file(&dir.join(&name), s, size, self.stream.system, extent),
                )),
                None => None,
            };
            let mut partial_end = None;
            if let Some((s, extent, Ok(v))) = &checked
                && *extent == Extent::Partial
            {
                // (Where the next record would start: MAXALIGNed, as the
                // server's positions are.)
                let end = v.end.map_or(size.start(s.segno), |e| Lsn((e.0 + 7) & !7));
                partial_end = Some((*s, end));
            }
            if let Some((s, extent, Err(why))) = checked {
                // Gone since the scan: the next flush sees what it became.
                if dir.join(&name).exists() {
                    if extent == Extent::Complete {
                        self.refused.insert(s);
                        self.save_refused(dir);
                        tracing::error!(job = %self.stream.job, segment = %name, reason = %why, "A WAL segment in the spool is damaged or not of this cluster: not stored, removed from the spool to be fetched again.");
                        let _ = std::fs::remove_file(dir.join(&name));
                    } else {
                        tracing::error!(job = %self.stream.job, segment = %name, reason = %why, "A partial WAL segment in the spool is damaged: not stored.");
                    }
                    self.damaged += 1;
                    self.last_damage = Some(format!(
                        "WAL file {name} in the spool failed the record check ({why}): not stored{}",
                        if extent == Extent::Complete {
                            ", fetched again from the server"
                        } else {
                            ""
                        }
                    ));
                }
                continue;
            }
            // Renamed (a partial completed) or removed since the scan:
            // the next flush sees what it became.
            let Some(node) = store_file(&pipeline, &params, &dir.join(&name), &name).await? else {
                continue;
            };
            let stored_node = Stored {
                node,
                seen: Some(*seen),
            };
            match file {
                WalFile::Segment(s) => {
                    if let Some(before) = window.segments.get(&s.segno)
                        && before.node.content != stored_node.node.content
                    {
                        return Err(PitrError::Archive(format!(
                            "WAL segment {name} is already archived with different content: the stream stops rather than replace it (another cluster writing into this job's archive?)"
                        )));
                    }
                    window.segments.insert(s.segno, stored_node);
                    if self.refused.remove(s) {
                        self.save_refused(dir);
                    }
                }
                WalFile::Partial(s) => {
                    window.partial = Some((s.segno, stored_node));
                    self.partial_checked = partial_end.filter(|(p, _)| p == s);
                }
                WalFile::History(t) => {
                    if let Some(before) = self.history.get(t)
                        && before.node.content != stored_node.node.content
                    {
                        return Err(PitrError::Archive(format!(
                            "history file {name} is already archived with different content: two clusters promoted to the same timeline ID into one archive"
                        )));
                    }
                    self.history.insert(*t, stored_node);
                }
            }
            pumped.push(name);
        }
        // A partial goes once its segment is complete. One the spool no
        // longer shows, but whose segment is not complete either, stays:
        // it may be the only copy of that WAL.
        if window
            .partial
            .as_ref()
            .is_some_and(|(segno, _)| window.segments.contains_key(segno))
        {
            window.partial = None;
        }
        let record = WindowRecord {
            format: 1,
            system: self.stream.system.to_string(),
            timeline: tli,
            wal_segment_size: size.bytes(),
            first: window
                .segments
                .keys()
                .next()
                .map(|s| Segment { tli, segno: *s }.name(size)),
            last: window
                .segments
                .keys()
                .next_back()
                .map(|s| Segment { tli, segno: *s }.name(size)),
            partial: window
                .partial
                .as_ref()
                .map(|(s, _)| Segment { tli, segno: *s }.name(size)),
            stored_lsn: stored.to_string(),
            opened: window.opened.to_rfc3339(),
            closed: close,
        };
        let tree = build_tree(&pipeline, &window, &self.history, &record, size).await?;
        pipeline.finish().await?;
        // Closing: where the gapless run ends now (never past a gap; a
        // restarted writer believes this tag).
        let run_end = close
            .then(|| {
                let mut end = self.archived.get(&tli).copied();
                for segno in window.segments.keys() {
                    match end {
                        Some(e) if *segno <= e => {}
                        Some(e) if *segno != e + 1 => break,
                        _ => end = Some(*segno),
                    }
                }
                end
            })
            .flatten();
        let mut tags = vec![
            "cairn-wal".to_string(),
            format!("pg-system={}", self.stream.system),
            format!("pg-tli={tli}"),
            format!("wal-window={}", window.key),
            format!("wal-stored={stored}"),
            if close { "wal-closed" } else { "wal-open" }.to_string(),
        ];
        tags.extend(record.first.iter().map(|f| format!("wal-first={f}")));
        tags.extend(record.last.iter().map(|f| format!("wal-last={f}")));
        tags.extend(record.partial.iter().map(|f| format!("wal-partial={f}")));
        tags.extend(run_end.map(|e| format!("wal-run={}", Segment { tli, segno: e }.name(size))));
        let snapshot = Snapshot {
            time: window.opened.fixed_offset(),
            parent: window.snapshot,
            tree,
            paths: vec![ROOT.to_string()],
            hostname: self.stream.host.clone(),
            username: whoami::username(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            excludes: Vec::new(),
            tags,
            original: None,
            program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
            cairn_adapter: Some("postgres".into()),
            cairn_component: None,
            cairn_job: Some(self.stream.job.clone()),
            cairn_skipped: Vec::new(),
        };
        let id = self.repo.save_snapshot(&snapshot).await?;
        if let Some(previous) = window.snapshot.replace(id) {
            self.remove_snapshot(previous).await?;
        }
        if close {
            if let Some(end) = run_end {
                self.archived.insert(tli, end);
                if let Some(s) = window.segments.get(&end) {
                    self.last_closed = Some((Segment { tli, segno: end }, s.node.clone()));
                }
            }
        } else {
            self.window = Some(window);
        }
        Ok((Some(id), pumped))
    }
}

/// Read a window version's tree back into its state.
async fn load(
    repo: &Repository,
    size: SegmentSize,
    id: Id,
    snap: &Snapshot,
) -> Result<(Window, BTreeMap<u32, Stored>), PitrError> {
    let bad =
        |why: String| PitrError::Archive(format!("WAL window snapshot {}: {why}", id.short()));
    let key = tag(&snap.tags, "wal-window")
        .ok_or_else(|| bad("no wal-window tag".into()))?
        .to_string();
    let tli = tag(&snap.tags, "pg-tli")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("no pg-tli tag".into()))?;
    let mut window = Window {
        key,
        tli,
        opened: snap.time.with_timezone(&Utc),
        segments: BTreeMap::new(),
        partial: None,
        snapshot: Some(id),
    };
    let mut history = BTreeMap::new();
    let root = crate::read::lookup(repo, snap.tree, ROOT)
        .await?
        .and_then(|n| n.subtree)
        .ok_or_else(|| bad(format!("no {ROOT} folder")))?;
    for dir in repo.load_tree(&root).await?.nodes {
        let Some(sub) = dir.subtree.filter(|_| dir.kind == "dir") else {
            continue;
        };
        for node in repo.load_tree(&sub).await?.nodes {
            let stored = Stored {
                node: node.clone(),
                seen: None,
            };
            match WalFile::parse(&node.name, size) {
                Some(WalFile::Segment(s)) if s.tli == tli => {
                    window.segments.insert(s.segno, stored);
                }
                Some(WalFile::Partial(s)) if s.tli == tli => {
                    window.partial = Some((s.segno, stored));
                }
                Some(WalFile::History(t)) => {
                    history.insert(t, stored);
                }
                _ => return Err(bad(format!("{:?} does not belong in it", node.name))),
            }
        }
    }
    Ok((window, history))
}

/// A window's tree: every file it holds (history files from `history`),
/// in depth-first order.
async fn build_tree(
    pipeline: &Pipeline,
    window: &Window,
    history: &BTreeMap<u32, Stored>,
    record: &WindowRecord,
    size: SegmentSize,
) -> Result<Id, PitrError> {
    let mut files: BTreeMap<Vec<String>, Node> = BTreeMap::new();
    let folder = |segno: u64| {
        Segment {
            tli: window.tli,
            segno,
        }
        .name(size)[..16]
            .to_string()
    };
    for (segno, s) in &window.segments {
        files.insert(vec![folder(*segno), s.node.name.clone()], s.node.clone());
    }
    if let Some((segno, s)) = &window.partial {
        files.insert(vec![folder(*segno), s.node.name.clone()], s.node.clone());
    }
    for (t, s) in history {
        files.insert(vec!["history".into(), history_name(*t)], s.node.clone());
    }
    let json = serde_json::to_vec_pretty(record).expect("the record serialises");
    let mut node = Node::new("window.json", "file");
    node.mode = 0o600;
    node.size = json.len() as u64;
    node.mtime = Some(Utc::now().fixed_offset());
    node.content = Some(vec![pipeline.add_data(json).await?.get().await?]);
    files.insert(vec!["window.json".into()], node);
    let mut builder = TreeBuilder::new();
    let mut make_dir = |path: &[String]| {
        let mut n = Node::new(path.last().cloned().unwrap_or_default(), "dir");
        n.mode = 0o700;
        n.mtime = Some(window.opened.fixed_offset());
        n
    };
    for (path, node) in files {
        let full = format!("{ROOT}/{}", path.join("/"));
        builder
            .add(&full, node, Vec::new(), pipeline, &mut make_dir)
            .await
            .map_err(|e| PitrError::Archive(format!("building the window's tree: {e}")))?;
    }
    builder
        .finish(pipeline)
        .await
        .map_err(|e| PitrError::Archive(format!("building the window's tree: {e}")))
}

/// What retention did (or, in a dry run, would do) to one closed window.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Trimmed {
    /// The window (its `wal-window` tag).
    pub window: String,
    /// Its snapshot.
    pub snapshot: String,
    /// `removed` (nothing of it is needed) or `rewritten` (some is).
    pub action: String,
    /// Segments and partials dropped.
    pub files_dropped: usize,
    /// The first segment it keeps, when rewritten.
    pub first_kept: Option<String>,
    /// Its new version, when rewritten.
    pub new_snapshot: Option<String>,
}

/// Drop from window snapshot `id` the segments and partials `keep` says
/// no to. A window left with none is removed; one that loses some is
/// rewritten: a new version with the same key and tags, its tree built
/// from the nodes it keeps (no data is read), saved before the old one is
/// removed. History files always stay. `None`: it keeps everything.
pub async fn trim_window(
    repo: &Arc<Repository>,
    size: SegmentSize,
    id: Id,
    snap: &Snapshot,
    keep: impl Fn(WalFile) -> bool,
    dry_run: bool,
) -> Result<Option<Trimmed>, PitrError> {
    let (mut window, history) = load(repo, size, id, snap).await?;
    let tli = window.tli;
    let before = window.segments.len() + usize::from(window.partial.is_some());
    window
        .segments
        .retain(|segno, _| keep(WalFile::Segment(Segment { tli, segno: *segno })));
    if window
        .partial
        .as_ref()
        .is_some_and(|(segno, _)| !keep(WalFile::Partial(Segment { tli, segno: *segno })))
    {
        window.partial = None;
    }
    let after = window.segments.len() + usize::from(window.partial.is_some());
    if after == before {
        return Ok(None);
    }
    let name = |segno: u64| Segment { tli, segno }.name(size);
    let mut trimmed = Trimmed {
        window: window.key.clone(),
        snapshot: id.to_hex(),
        action: if after == 0 { "removed" } else { "rewritten" }.into(),
        files_dropped: before - after,
        first_kept: window.segments.keys().next().map(|s| name(*s)),
        new_snapshot: None,
    };
    if dry_run {
        return Ok(Some(trimmed));
    }
    if after > 0 {
        let record = WindowRecord {
            format: 1,
            system: tag(&snap.tags, "pg-system").unwrap_or_default().to_string(),
            timeline: tli,
            wal_segment_size: size.bytes(),
            first: window.segments.keys().next().map(|s| name(*s)),
            last: window.segments.keys().next_back().map(|s| name(*s)),
            partial: window.partial.as_ref().map(|(s, _)| name(*s)),
            stored_lsn: tag(&snap.tags, "wal-stored").unwrap_or("0/0").to_string(),
            opened: window.opened.to_rfc3339(),
            closed: snap.tags.iter().any(|t| t == "wal-closed"),
        };
        let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
        let tree = build_tree(&pipeline, &window, &history, &record, size).await?;
        pipeline.finish().await?;
        let mut new = snap.clone();
        new.tree = tree;
        new.parent = Some(id);
        new.tags.retain(|t| {
            !(t.starts_with("wal-first=")
                || t.starts_with("wal-last=")
                || t.starts_with("wal-partial="))
        });
        new.tags
            .extend(record.first.iter().map(|f| format!("wal-first={f}")));
        new.tags
            .extend(record.last.iter().map(|f| format!("wal-last={f}")));
        new.tags
            .extend(record.partial.iter().map(|f| format!("wal-partial={f}")));
        let new_id = repo.save_snapshot(&new).await?;
        trimmed.new_snapshot = Some(new_id.to_hex());
    }
    match repo
        .backend()
        .remove(FileType::Snapshot, &id.to_hex())
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(RepoError::from(e).into()),
    }
    Ok(Some(trimmed))
}

/// The value of tag `key=value`.
pub fn tag<'a>(tags: &'a [String], key: &str) -> Option<&'a str> {
    tags.iter()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// The order of a window's versions: by the WAL they reach, then closed
/// after open.
pub(crate) fn version(s: &Snapshot) -> (Lsn, bool) {
    let stored = tag(&s.tags, "wal-stored")
        .and_then(|l| l.parse().ok())
        .unwrap_or_default();
    (stored, s.tags.iter().any(|t| t == "wal-closed"))
}

/// Pump the spool file `path` into the pipeline; its node, named `name`
/// (`None` if the file is gone).
async fn store_file(
    pipeline: &Pipeline,
    params: &ChunkerParams,
    path: &Path,
    name: &str,
) -> Result<Option<Node>, PitrError> {
    let sender = pipeline.data_sender();
    let params = params.clone();
    let path_buf: PathBuf = path.to_path_buf();
    let (pending, size, mtime) = match tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path_buf) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut chunker = Chunker::new(params);
        let mut pending = Vec::new();
        let size =
            crate::pipeline::pump::pump(file, Vec::new(), &mut chunker, &sender, &mut pending)
                .map_err(|e| match e {
                    crate::pipeline::pump::PumpError::Read(e) => e,
                    crate::pipeline::pump::PumpError::Stopped(e) => {
                        std::io::Error::other(e.to_string())
                    }
                })?;
        if let Some(last) = chunker.finish() {
            pending.push(
                sender
                    .add_blocking(last)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            );
        }
        Ok::<_, std::io::Error>(Some((pending, size, meta.modified()?)))
    })
    .await
    .map_err(|e| PitrError::Archive(format!("reading {}: {e}", path.display())))?
    .map_err(|e| PitrError::Archive(format!("reading {}: {e}", path.display())))?
    {
        Some(read) => read,
        None => return Ok(None),
    };
    let mut content = Vec::with_capacity(pending.len());
    for p in pending {
        content.push(p.get().await?);
    }
    let mut node = Node::new(name, "file");
    node.mode = 0o600;
    node.size = size;
    node.mtime = Some(DateTime::<Utc>::from(mtime).fixed_offset());
    node.content = Some(content);
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{ContentReader, lookup};
    use crate::testing::{memory_repo, runtime};

    const MIB: usize = 1 << 20;

    fn size() -> SegmentSize {
        SegmentSize::new(MIB as u64).unwrap()
    }

    fn stream() -> Stream {
        Stream {
            job: "pitr".into(),
            host: "node-1".into(),
            system: 7_412_345_678_901_234_567,
            size: size(),
            compression: 3,
        }
    }

    /// Segment `seed` of [`stream`]'s cluster, well-formed WAL (records
    /// with their content from `seed`) over about `data` bytes, then zeros.
    fn wal(seed: u8, data: usize) -> Vec<u8> {
        wal_at(u64::from(seed), seed, data)
    }

    /// The same for segment `segno`, its content from `seed`.
    fn wal_at(segno: u64, seed: u8, data: usize) -> Vec<u8> {
        super::records::testing::segment(segno, size(), stream().system, data, seed)
    }

    fn name(tli: u32, segno: u64) -> String {
        Segment { tli, segno }.name(size())
    }

    async fn windows(repo: &Arc<Repository>) -> Vec<(Id, Snapshot)> {
        repo.snapshots()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, s)| s.tags.iter().any(|t| t == "cairn-wal"))
            .collect()
    }

    async fn file(repo: &Arc<Repository>, root: Id, path: &str) -> Option<Vec<u8>> {
        let node = lookup(repo, root, path).await.unwrap()?;
        let mut r = ContentReader::new(repo.clone(), node.content.unwrap_or_default());
        let mut out = Vec::new();
        loop {
            let piece = r.read(MIB).await.unwrap();
            if piece.is_empty() {
                return Some(out);
            }
            out.extend_from_slice(&piece);
        }
    }

    fn scan(dir: &Path) -> Spool {
        Spool::scan(dir, size()).unwrap()
    }

    /// Files written a moment apart get distinct modification times.
    fn put(dir: &Path, name: &str, bytes: &[u8]) {
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn each_flush_replaces_the_window_with_a_version_holding_every_segment() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-versions").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 7), &wal(7, MIB));
            put(dir, &format!("{}.partial", name(1, 8)), &wal(8, 100_000));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let first = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64 + 100_000), false)
                .await
                .unwrap();
            assert_eq!(first.files, [name(1, 7), format!("{}.partial", name(1, 8))]);
            let a = first.snapshot.expect("a first version");
            let listed = windows(&repo).await;
            assert_eq!(listed.len(), 1);
            let tags = &listed[0].1.tags;
            for t in [
                "cairn-wal",
                "wal-open",
                "pg-tli=1",
                &format!("wal-first={}", name(1, 7)),
                &format!("wal-partial={}", name(1, 8)),
            ] {
                assert!(tags.iter().any(|x| x == t), "{t} not in {tags:?}");
            }
            assert_eq!(listed[0].1.paths, [ROOT]);

            // Nothing changed: no new version.
            let same = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64 + 100_000), false)
                .await
                .unwrap();
            assert_eq!(same, Flushed::default());

            // The partial grows: a new version replaces the first.
            put(dir, &format!("{}.partial", name(1, 8)), &wal(8, 300_000));
            let grown = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64 + 300_000), false)
                .await
                .unwrap();
            assert_eq!(grown.files, [format!("{}.partial", name(1, 8))]);
            let b = grown.snapshot.unwrap();
            let listed = windows(&repo).await;
            assert_eq!(listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [b]);
            assert_eq!(listed[0].1.parent, Some(a));

            // The segment completes and the next one starts.
            std::fs::remove_file(dir.join(format!("{}.partial", name(1, 8)))).unwrap();
            put(dir, &name(1, 8), &wal(8, MIB));
            put(dir, &format!("{}.partial", name(1, 9)), &wal(9, 10_000));
            let next = w
                .flush(dir, &scan(dir), Lsn(9 * MIB as u64 + 10_000), false)
                .await
                .unwrap();
            let c = next.snapshot.unwrap();
            let (_, snap) = windows(&repo).await.pop().unwrap();
            let folder = &name(1, 8)[..16];
            assert_eq!(
                file(&repo, snap.tree, &format!("{ROOT}/{folder}/{}", name(1, 7)))
                    .await
                    .unwrap(),
                wal(7, MIB)
            );
            assert_eq!(
                file(&repo, snap.tree, &format!("{ROOT}/{folder}/{}", name(1, 8)))
                    .await
                    .unwrap(),
                wal(8, MIB)
            );
            assert_eq!(
                file(
                    &repo,
                    snap.tree,
                    &format!("{ROOT}/{folder}/{}.partial", name(1, 9))
                )
                .await
                .unwrap(),
                wal(9, 10_000),
                "a partial is stored whole, zeros included"
            );
            assert!(
                file(
                    &repo,
                    snap.tree,
                    &format!("{ROOT}/{folder}/{}.partial", name(1, 8))
                )
                .await
                .is_none()
            );
            let record: serde_json::Value = serde_json::from_slice(
                &file(&repo, snap.tree, &format!("{ROOT}/window.json"))
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(record["last"], name(1, 8));
            assert_eq!(windows(&repo).await.len(), 1, "version {} alone", c.short());

            // Closing: the final version is tagged closed; the next flush opens another window.
            let closed = w
                .flush(dir, &scan(dir), Lsn(9 * MIB as u64 + 10_000), true)
                .await
                .unwrap();
            assert_eq!(closed.closed.len(), 1);
            put(dir, &format!("{}.partial", name(1, 9)), &wal(9, 20_000));
            let reopened = w
                .flush(dir, &scan(dir), Lsn(9 * MIB as u64 + 20_000), false)
                .await
                .unwrap();
            assert!(reopened.snapshot.is_some());
            // What the closed window holds is not stored again.
            assert_eq!(reopened.files, [format!("{}.partial", name(1, 9))]);
            let listed = windows(&repo).await;
            assert_eq!(listed.len(), 2);
            let keys: std::collections::BTreeSet<_> = listed
                .iter()
                .map(|(_, s)| tag(&s.tags, "wal-window").unwrap().to_string())
                .collect();
            assert_eq!(keys.len(), 2, "two windows: {keys:?}");
        });
    }

    #[test]
    fn a_restarted_writer_keeps_the_newest_version_and_goes_on_from_it() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("wal-resume").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 3), &wal(3, MIB));
            put(dir, &format!("{}.partial", name(1, 4)), &wal(4, 50_000));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let a = w
                .flush(dir, &scan(dir), Lsn(4 * MIB as u64 + 50_000), false)
                .await
                .unwrap()
                .snapshot
                .unwrap();
            let old = backend
                .get(FileType::Snapshot, &a.to_hex())
                .unwrap()
                .to_vec();
            put(dir, &format!("{}.partial", name(1, 4)), &wal(4, 80_000));
            let b = w
                .flush(dir, &scan(dir), Lsn(4 * MIB as u64 + 80_000), false)
                .await
                .unwrap()
                .snapshot
                .unwrap();
            // A crash between saving b and removing a leaves both.
            backend.put_raw(FileType::Snapshot, &a.to_hex(), old);
            assert_eq!(windows(&repo).await.len(), 2);
            drop(w);
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let listed = windows(&repo).await;
            assert_eq!(listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [b]);
            assert_eq!(w.timeline(), Some(1));
            // A lost spool is seeded with the newest stored segment, whole.
            let fresh = tempfile::tempdir().unwrap();
            let seeded = w.seed(fresh.path()).await.unwrap();
            assert_eq!(seeded, Some(Segment { tli: 1, segno: 3 }));
            assert_eq!(
                std::fs::read(fresh.path().join(name(1, 3))).unwrap(),
                wal(3, MIB)
            );
            assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 1);
            // The restarted writer reads the spool again, finds the same
            // content, and continues the same window.
            put(dir, &name(1, 4), &wal(4, MIB));
            std::fs::remove_file(dir.join(format!("{}.partial", name(1, 4)))).unwrap();
            let c = w
                .flush(dir, &scan(dir), Lsn(5 * MIB as u64), false)
                .await
                .unwrap();
            let listed = windows(&repo).await;
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].1.parent, Some(b));
            assert_eq!(c.snapshot, Some(listed[0].0));
            assert!(
                listed[0]
                    .1
                    .tags
                    .contains(&format!("wal-last={}", name(1, 4))),
                "{:?}",
                listed[0].1.tags
            );
            assert!(
                !listed[0]
                    .1
                    .tags
                    .iter()
                    .any(|t| t.starts_with("wal-partial=")),
                "{:?}",
                listed[0].1.tags
            );
        });
    }

    #[test]
    fn a_segment_archived_with_other_content_stops_the_stream_and_replaces_nothing() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-differs").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 7), &wal(7, MIB));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let a = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64), false)
                .await
                .unwrap()
                .snapshot
                .unwrap();
            put(dir, &name(1, 7), &wal_at(7, 99, MIB));
            let err = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64), false)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&name(1, 7)) && err.contains("different content"),
                "{err}"
            );
            assert_eq!(
                windows(&repo)
                    .await
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
                [a]
            );
        });
    }

    #[test]
    fn a_timeline_switch_closes_the_old_window_and_opens_one_for_the_new_timeline() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-switch").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 7), &wal(7, MIB));
            put(dir, &format!("{}.partial", name(1, 8)), &wal(8, 5_000));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            w.flush(dir, &scan(dir), Lsn(8 * MIB as u64 + 5_000), false)
                .await
                .unwrap();
            // The receiver followed a promotion: history, and timeline 2's copy of segment 8.
            put(
                dir,
                "00000002.history",
                b"1\t0/800C48\tno recovery target specified\n",
            );
            put(
                dir,
                &format!("{}.partial", name(2, 8)),
                &wal_at(8, 28, 9_000),
            );
            let out = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64 + 9_000), false)
                .await
                .unwrap();
            assert_eq!(out.closed.len(), 1);
            assert_eq!(w.timeline(), Some(2));
            let listed = windows(&repo).await;
            assert_eq!(listed.len(), 2);
            let of = |t: &str| {
                listed
                    .iter()
                    .find(|(_, s)| s.tags.iter().any(|x| x == t))
                    .unwrap()
                    .1
                    .clone()
            };
            let one = of("pg-tli=1");
            assert!(one.tags.iter().any(|t| t == "wal-closed"), "{:?}", one.tags);
            // The old timeline's last segment stays as its partial: it is that timeline's only copy.
            assert!(
                one.tags.contains(&format!("wal-partial={}", name(1, 8))),
                "{:?}",
                one.tags
            );
            let two = of("pg-tli=2");
            assert!(two.tags.iter().any(|t| t == "wal-open"), "{:?}", two.tags);
            assert!(
                two.tags.contains(&format!("wal-partial={}", name(2, 8))),
                "{:?}",
                two.tags
            );
            assert_eq!(
                file(&repo, two.tree, &format!("{ROOT}/history/00000002.history"))
                    .await
                    .unwrap(),
                b"1\t0/800C48\tno recovery target specified\n"
            );
        });
    }

    #[test]
    fn the_hold_position_and_the_seed_stop_at_a_gap() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-gap").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            for segno in [3, 4, 6] {
                put(dir, &name(1, segno), &wal(segno as u8, MIB));
            }
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            w.flush(dir, &scan(dir), Lsn(7 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(w.contiguous(), Some(Segment { tli: 1, segno: 4 }));
            assert_eq!(w.stored_end(), Lsn(5 * MIB as u64));
            let fresh = tempfile::tempdir().unwrap();
            assert_eq!(
                w.seed(fresh.path()).await.unwrap(),
                Some(Segment { tli: 1, segno: 4 })
            );
            // Filled in: the run goes on to 6.
            put(dir, &name(1, 5), &wal(5, MIB));
            w.flush(dir, &scan(dir), Lsn(7 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(w.contiguous(), Some(Segment { tli: 1, segno: 6 }));
        });
    }

    #[test]
    fn a_refused_first_segment_is_a_gap_the_run_does_not_pass_also_after_a_restart() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-refused-first").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            let mut damaged = wal(3, MIB);
            damaged[500_000] ^= 0x04;
            put(dir, &name(1, 3), &damaged);
            put(dir, &name(1, 4), &wal(4, MIB));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            w.flush(dir, &scan(dir), Lsn(5 * MIB as u64), false)
                .await
                .unwrap();
            // Segment 4 is stored, but the run does not start after the
            // hole: nothing is safe to let the server recycle yet.
            assert_eq!(w.contiguous(), None);
            assert_eq!(w.stored_end(), Lsn(0));
            assert_eq!(w.gap(), Some(Segment { tli: 1, segno: 3 }));
            // A new streamer (a restart) knows it from the spool.
            let mut again = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            again.load_refused(dir);
            assert_eq!(again.gap(), Some(Segment { tli: 1, segno: 3 }));
            // The receiver fetches it again into an empty partial, which
            // does not replace the window's newer one.
            put(dir, &format!("{}.partial", name(1, 5)), &wal(5, 9_000));
            again
                .flush(dir, &scan(dir), Lsn(5 * MIB as u64), false)
                .await
                .unwrap();
            std::fs::remove_file(dir.join(format!("{}.partial", name(1, 5)))).unwrap();
            again
                .placeholder(dir, Segment { tli: 1, segno: 3 })
                .unwrap();
            let out = again
                .flush(dir, &scan(dir), Lsn(5 * MIB as u64), false)
                .await
                .unwrap();
            assert!(out.files.is_empty(), "{:?}", out.files);
            assert_eq!(again.partial_seen().map(|(s, _)| s.segno), Some(5));
            std::fs::remove_file(dir.join(format!("{}.partial", name(1, 3)))).unwrap();
            put(dir, &name(1, 3), &wal(3, MIB));
            let out = again
                .flush(dir, &scan(dir), Lsn(5 * MIB as u64), false)
                .await
                .unwrap();
            // (A resumed window pumps the spool's files again; they
            // deduplicate.)
            assert!(out.files.contains(&name(1, 3)), "{:?}", out.files);
            assert_eq!(again.contiguous(), Some(Segment { tli: 1, segno: 4 }));
            assert_eq!(again.gap(), None);
            assert!(!dir.join("cairn-refused").exists());
        });
    }

    #[test]
    fn a_window_closed_over_a_gap_counts_only_the_run_before_it() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-gap-close").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            for segno in [3, 4, 6, 7] {
                put(dir, &name(1, segno), &wal(segno as u8, MIB));
            }
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            assert_eq!(w.gap(), None);
            w.flush(dir, &scan(dir), Lsn(8 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(w.gap(), Some(Segment { tli: 1, segno: 5 }));
            let closed = w
                .flush(dir, &scan(dir), Lsn(8 * MIB as u64), true)
                .await
                .unwrap();
            assert_eq!(closed.closed.len(), 1);
            let (_, snap) = repo
                .find_snapshot(&closed.closed[0].to_hex())
                .await
                .unwrap();
            assert!(
                snap.tags.contains(&format!("wal-run={}", name(1, 4))),
                "{:?}",
                snap.tags
            );
            // Neither this writer nor a restarted one counts 6 and 7 as
            // archived: they are stored again after 5 is fetched.
            assert!(w.is_stored(Segment { tli: 1, segno: 4 }));
            assert!(!w.is_stored(Segment { tli: 1, segno: 6 }));
            let again = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            assert!(again.is_stored(Segment { tli: 1, segno: 4 }));
            assert!(!again.is_stored(Segment { tli: 1, segno: 6 }));
            let fresh = tempfile::tempdir().unwrap();
            assert_eq!(
                again.seed(fresh.path()).await.unwrap(),
                Some(Segment { tli: 1, segno: 4 })
            );
        });
    }

    #[test]
    fn a_spool_file_that_is_not_this_cluster_s_segment_is_not_stored() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-foreign").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 3), &wal(3, MIB));
            // Truncated, and another cluster's (its header's system id).
            std::fs::write(dir.join(name(1, 4)), &wal(4, MIB)[..16384]).unwrap();
            let mut other = wal(5, MIB);
            other[24..32].copy_from_slice(&42u64.to_le_bytes());
            std::fs::write(dir.join(name(1, 5)), &other).unwrap();
            // One byte of a record changed, its headers intact; and a
            // partial with a hole before its data ends.
            let mut damaged = wal(6, MIB);
            damaged[300_001] ^= 0x20;
            std::fs::write(dir.join(name(1, 6)), &damaged).unwrap();
            let mut holed = wal(7, 200_000);
            holed[100_000..110_000].fill(0);
            let partial = format!("{}.partial", name(1, 7));
            std::fs::write(dir.join(&partial), &holed).unwrap();
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let flushed = w
                .flush(dir, &scan(dir), Lsn(6 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(flushed.files, [name(1, 3)]);
            assert_eq!(w.contiguous(), Some(Segment { tli: 1, segno: 3 }));
            assert!(!dir.join(name(1, 4)).exists());
            assert!(!dir.join(name(1, 5)).exists());
            assert!(!dir.join(name(1, 6)).exists());
            assert!(
                dir.join(&partial).exists(),
                "a partial stays for the receiver"
            );
            assert_eq!(w.damaged(), 4);
            assert!(
                w.last_damage().unwrap().contains(&partial),
                "{:?}",
                w.last_damage()
            );
        });
    }

    #[test]
    fn a_forgotten_open_window_is_not_built_on() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("wal-forgotten").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 3), &wal(3, MIB));
            put(dir, "00000002.history", b"1\t0/800C48\tx\n");
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            let a = w
                .flush(dir, &scan(dir), Lsn(4 * MIB as u64), false)
                .await
                .unwrap()
                .snapshot
                .unwrap();
            assert!(!w.check_open().await.unwrap());
            crate::storage::Backend::remove(&*backend, FileType::Snapshot, &a.to_hex())
                .await
                .unwrap();
            assert!(w.check_open().await.unwrap());
            // The next flush stores everything the spool holds again, history included.
            let out = w
                .flush(dir, &scan(dir), Lsn(4 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(out.files, [name(1, 3), "00000002.history".to_string()]);
            let snap = out.snapshot.unwrap();
            assert_ne!(snap, a);
            let listed = repo.snapshots().await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(
                listed[0].1.parent, None,
                "a new window, not a version of the forgotten one"
            );
        });
    }

    #[test]
    fn after_a_restart_the_seed_comes_from_the_closed_window_and_a_gap_stays_seen() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("wal-restart-gap").await;
            let spool = tempfile::tempdir().unwrap();
            let dir = spool.path();
            put(dir, &name(1, 3), &wal(3, MIB));
            put(dir, &format!("{}.partial", name(1, 4)), &wal(4, 1_000));
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            w.flush(dir, &scan(dir), Lsn(4 * MIB as u64 + 1_000), true)
                .await
                .unwrap();
            // The next window holds only the partial.
            put(dir, &format!("{}.partial", name(1, 4)), &wal(4, 2_000));
            w.flush(dir, &scan(dir), Lsn(4 * MIB as u64 + 2_000), false)
                .await
                .unwrap();
            drop(w);
            let w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            assert_eq!(w.resumed_stored(), Lsn(4 * MIB as u64 + 2_000));
            let fresh = tempfile::tempdir().unwrap();
            assert_eq!(
                w.seed(fresh.path()).await.unwrap(),
                Some(Segment { tli: 1, segno: 3 }),
                "seeded from the closed window"
            );
            assert_eq!(
                std::fs::read(fresh.path().join(name(1, 3))).unwrap(),
                wal(3, MIB)
            );
            drop(w);
            // Segment 7 arrives with 4 to 6 missing: the run stops at 3,
            // also for a writer that resumes the window.
            let mut w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            put(dir, &name(1, 7), &wal(7, MIB));
            w.flush(dir, &scan(dir), Lsn(8 * MIB as u64), false)
                .await
                .unwrap();
            assert_eq!(w.contiguous(), Some(Segment { tli: 1, segno: 3 }));
            drop(w);
            let w = WindowWriter::resume(repo.clone(), stream()).await.unwrap();
            assert_eq!(w.contiguous(), Some(Segment { tli: 1, segno: 3 }));
            assert_eq!(w.stored_end(), Lsn(4 * MIB as u64));
        });
    }
}
