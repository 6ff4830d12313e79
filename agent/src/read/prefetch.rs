//! Reading small files ahead of the walk, many per request.
//!
//! An adapter restores (or verifies) file after file, in the order the
//! walk hands them out. Read one at a time, each small file costs a round
//! trip to the storage: tens of thousands of files against object storage
//! are tens of thousands of sequential requests. [`Prefetch`] walks the
//! same snapshot ahead of the adapter, takes the next small files in
//! batches, groups their blobs by pack into spans (see
//! [`crate::repo::span`]) and reads several spans at once, as restic's
//! restorer does. When the adapter opens a file, its content is usually
//! already in memory.
//!
//! It is only ever a shortcut: a file it has not read (large, passed
//! over, damaged, a read that failed) is read by the adapter's own reader
//! as before, which reports what is wrong. Memory is bounded by
//! [`HELD_BYTES`] of content waiting for the adapter plus the spans being
//! read; a file the adapter passes over without opening is dropped as the
//! walk moves on.

use super::Walker;
use crate::repo::index::BlobLocation;
use crate::repo::pack::BlobType;
use crate::repo::span;
use crate::repo::{Id, Repository};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore, oneshot};

/// Files of at most this many stored bytes are read ahead; larger ones are
/// read in spans by their own reader, which keeps a request busy anyway.
pub const SMALL_FILE: u64 = 1 << 20;
/// ... and of at most this many bytes once read: a file of a few stored
/// bytes can be gigabytes (a sparse file is one all-zero blob, repeated),
/// and its reader streams it instead.
pub const SMALL_FILE_PLAIN: u64 = 4 << 20;
/// Content read ahead and not yet taken by the adapter, at most.
pub const HELD_BYTES: u64 = 24 << 20;
/// A batch (the files whose blobs are planned together) holds at most
/// this many bytes or [`BATCH_FILES`] files.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_FILES: usize = 1024;

/// Content of a file read ahead: its blobs in order, or `None` when they
/// could not be read (the reader then reads the file itself).
pub type Ready = oneshot::Receiver<Option<Vec<Vec<u8>>>>;

/// Reads small files ahead of a walk; dropping it stops the reading.
pub struct Prefetch {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when held bytes are released or the walk moves on.
    moved: Notify,
    /// The number of the last file the prefetcher has taken into a batch
    /// or passed over; `u64::MAX` once it stopped. The adapter's `open`
    /// of a file waits for it: a file the prefetcher has not reached yet
    /// is read ahead in a moment, with many others, rather than alone now.
    frontier: tokio::sync::watch::Sender<u64>,
}

/// Marks the prefetcher stopped however its task ends (done, failed,
/// aborted), so no `take` waits for it.
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.frontier.send_replace(u64::MAX);
    }
}

#[derive(Default)]
struct State {
    /// The number of the file the adapter's walk handed out last (files
    /// are numbered from 1 in walk order).
    cursor: u64,
    /// Files read (or being read) ahead, by number.
    slots: BTreeMap<u64, Slot>,
    /// Bytes of the files in `slots` (their content, once read).
    held: u64,
}

struct Slot {
    path: String,
    bytes: u64,
    ready: Ready,
}

impl State {
    fn release(&mut self, slot: &Slot) {
        self.held -= slot.bytes;
    }
}

/// A small file of the walk, before it is read ahead.
struct Candidate {
    /// Its number in the walk.
    num: u64,
    path: String,
    blobs: Vec<(Id, BlobLocation)>,
    /// What it holds in memory once read.
    bytes: u64,
}

/// Whether a file can be read ahead now.
enum Room {
    Yes,
    /// Not until the adapter takes or passes files read ahead.
    Full,
    /// The adapter's walk is past it.
    Passed,
}

/// A file taken into a batch, and where its content goes.
struct Admitted {
    blobs: Vec<(Id, BlobLocation)>,
    tx: oneshot::Sender<Option<Vec<Vec<u8>>>>,
}

impl Prefetch {
    /// Start reading ahead of a walk of `root` over `include` (the same as
    /// the adapter's walk), with at most `connections` requests at once.
    pub fn start(
        repo: Arc<Repository>,
        root: Id,
        include: Vec<String>,
        connections: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            moved: Notify::new(),
            frontier: tokio::sync::watch::Sender::new(0),
        });
        let task = tokio::spawn(run(
            repo,
            root,
            include,
            connections.max(1),
            Arc::clone(&shared),
        ));
        Prefetch { shared, task }
    }

    /// The adapter's walk handed out file number `n` (`path`): files before
    /// it that were not taken will not be, and are dropped.
    pub fn walked(&self, n: u64) {
        let mut state = self.shared.state.lock().expect("prefetch state");
        state.cursor = n;
        while let Some(entry) = state.slots.first_entry() {
            if *entry.key() >= n {
                break;
            }
            let slot = entry.remove();
            state.release(&slot);
        }
        drop(state);
        self.shared.moved.notify_one();
    }

    /// The content of file number `n`, if it is being read ahead and is
    /// the file at `path`. Waits until the prefetcher has reached `n`.
    pub async fn take(&self, n: u64, path: &str) -> Option<Ready> {
        let mut frontier = self.shared.frontier.subscribe();
        // Err: the sender is gone, which it is not while `self` lives.
        let _ = frontier.wait_for(|f| *f >= n).await;
        let mut state = self.shared.state.lock().expect("prefetch state");
        let slot = state.slots.remove(&n)?;
        state.release(&slot);
        drop(state);
        self.shared.moved.notify_one();
        (slot.path == path).then_some(slot.ready)
    }
}

/// Walk ahead: take the next small files into batches while there is room,
/// read each batch in the background.
async fn run(
    repo: Arc<Repository>,
    root: Id,
    include: Vec<String>,
    connections: usize,
    shared: Arc<Shared>,
) {
    let _stopped = Stopped(Arc::clone(&shared));
    let Ok(mut walker) = Walker::new(Arc::clone(&repo), root, include).await else {
        return;
    };
    // Requests at once, across batches.
    let requests = Arc::new(Semaphore::new(connections));
    // Batches being read; dropped (the reads stopped) with this task.
    let mut reading = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut next: Option<Candidate> = None;
    let mut ended = false;
    while !ended || next.is_some() {
        let mut batch: Vec<Admitted> = Vec::new();
        let mut batch_bytes = 0;
        loop {
            let Candidate {
                num,
                path,
                blobs,
                bytes,
            } = match next.take() {
                Some(f) => f,
                None if ended => break,
                None => match next_small_file(&repo, &mut walker, &mut n, &shared).await {
                    Some(f) => f,
                    None => {
                        ended = true;
                        break;
                    }
                },
            };
            if !batch.is_empty()
                && (batch_bytes + bytes > BATCH_BYTES || batch.len() >= BATCH_FILES)
            {
                next = Some(Candidate {
                    num,
                    path,
                    blobs,
                    bytes,
                });
                break;
            }
            let room = {
                let state = shared.state.lock().expect("prefetch state");
                if num <= state.cursor {
                    // The adapter is past it already.
                    Room::Passed
                } else if state.held + bytes > HELD_BYTES && !state.slots.is_empty() {
                    Room::Full
                } else {
                    Room::Yes
                }
            };
            match room {
                Room::Passed => {
                    shared.frontier.send_replace(num);
                }
                Room::Yes => {
                    let (tx, ready) = oneshot::channel();
                    let mut state = shared.state.lock().expect("prefetch state");
                    state.held += bytes;
                    state.slots.insert(num, Slot { path, bytes, ready });
                    drop(state);
                    shared.frontier.send_replace(num);
                    batch_bytes += bytes;
                    batch.push(Admitted { blobs, tx });
                }
                Room::Full => {
                    // No room: read what is batched, wait for the adapter.
                    next = Some(Candidate {
                        num,
                        path,
                        blobs,
                        bytes,
                    });
                    if !batch.is_empty() {
                        break;
                    }
                    // Until half the room is free: taken one file at a
                    // time, the room would be refilled a file at a time,
                    // one request each.
                    loop {
                        shared.moved.notified().await;
                        let state = shared.state.lock().expect("prefetch state");
                        if state.held <= HELD_BYTES / 2 || state.slots.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        while reading.try_join_next().is_some() {}
        if !batch.is_empty() {
            reading.spawn(read_batch(Arc::clone(&repo), batch, Arc::clone(&requests)));
        }
    }
    while reading.join_next().await.is_some() {}
}

/// The next file of the walk small enough to read ahead. Files not read
/// ahead still take a number, so numbers match the adapter's walk.
async fn next_small_file(
    repo: &Repository,
    walker: &mut Walker,
    n: &mut u64,
    shared: &Shared,
) -> Option<Candidate> {
    loop {
        let entry = walker.next().await.ok()??;
        if entry.node.kind != "file" {
            continue;
        }
        *n += 1;
        let content = entry.node.content.unwrap_or_default();
        let located: Option<Vec<(Id, BlobLocation)>> = repo.with_index(|i| {
            content
                .iter()
                .map(|id| Some((*id, i.get(id, BlobType::Data)?)))
                .collect()
        });
        // A blob the index does not know: the reader reports it.
        if let Some(blobs) = located {
            let stored: u64 = blobs.iter().map(|(_, l)| l.length as u64).sum();
            let plain: u64 = blobs.iter().map(|(_, l)| l.plain_length() as u64).sum();
            if stored <= SMALL_FILE && plain <= SMALL_FILE_PLAIN {
                return Some(Candidate {
                    num: *n,
                    path: entry.path,
                    blobs,
                    bytes: plain,
                });
            }
        }
        // Not read ahead: its reader reads it.
        shared.frontier.send_replace(*n);
    }
}

/// Read a batch's blobs in spans, several requests at once, and hand each
/// file its content. A file with any blob that could not be read gets
/// `None` (its reader reads it again and reports why).
async fn read_batch(repo: Arc<Repository>, batch: Vec<Admitted>, requests: Arc<Semaphore>) {
    let spans = span::plan(batch.iter().flat_map(|f| f.blobs.iter().copied()));
    let mut read: HashMap<Id, Vec<u8>> = HashMap::new();
    let mut results = futures::stream::iter(spans)
        .map(|s| {
            let (repo, requests) = (Arc::clone(&repo), Arc::clone(&requests));
            async move {
                let _permit = requests.acquire_owned().await.ok()?;
                repo.load_span(&s).await.ok()
            }
        })
        .buffer_unordered(usize::MAX);
    while let Some(r) = results.next().await {
        for (id, blob) in r.into_iter().flatten() {
            if let Ok(b) = blob {
                read.insert(id, b);
            }
        }
    }
    // A blob the batch needs once is moved to its file, not copied.
    let mut uses: HashMap<Id, usize> = HashMap::new();
    for (id, _) in batch.iter().flat_map(|f| f.blobs.iter()) {
        *uses.entry(*id).or_default() += 1;
    }
    for f in batch {
        let content: Option<Vec<Vec<u8>>> = f
            .blobs
            .iter()
            .map(|(id, _)| {
                let left = uses.get_mut(id)?;
                *left -= 1;
                if *left == 0 {
                    read.remove(id)
                } else {
                    read.get(id).cloned()
                }
            })
            .collect();
        let _ = f.tx.send(content);
    }
}
