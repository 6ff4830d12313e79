//! The write path: chunk -> hash -> dedup -> compress -> encrypt -> pack ->
//! upload, as concurrent stages joined by bounded channels.
//!
//! The producer (a file pump, or an adapter writing bytes) chunks on its own
//! task and hands whole chunks to a pool of worker threads, one per core, that
//! hash, deduplicate, compress and encrypt. A packer gathers encrypted blobs
//! into ~16 MiB packs and a bounded number of uploads store them. Channel
//! capacities bound memory whatever the size of the data.

pub mod buffers;
pub mod chunker;
pub mod parent;
pub mod pump;
pub mod tree_builder;

use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::pack::{ALIGN, BlobType, PackBuilder};
use crate::repo::{Id, RepoError, Repository};
use crate::storage::FileType;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Packs are closed once their blobs reach this size.
pub const PACK_SIZE: usize = 16 * 1024 * 1024;
/// Room in a data pack's buffer: a full pack, one more maximal blob, the
/// alignment padding, and a header of thousands of blobs.
const PACK_BUFFER: usize = PACK_SIZE + buffers::CHUNK + ALIGN + 256 * 1024;
/// An index file is written every this many packs, so an interrupted backup
/// does not have to upload the same data again.
const PACKS_PER_INDEX: usize = 64;

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// zstd level for blobs (0 stores every blob uncompressed).
    pub compression_level: i32,
    /// Worker threads for hashing, compression and encryption.
    pub workers: usize,
    /// Pack uploads in flight at once.
    pub uploads: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            compression_level: 3,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            uploads: 2,
        }
    }
}

/// Counters of what the pipeline did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes handed to the pipeline.
    pub bytes_in: AtomicU64,
    /// Plaintext bytes of file data that was new to the repository (trees
    /// are not counted).
    pub bytes_new: AtomicU64,
    /// Bytes written to storage (packs and index files).
    pub bytes_stored: AtomicU64,
    /// Blobs stored.
    pub blobs_new: AtomicU64,
    /// Blobs found in the repository already.
    pub blobs_known: AtomicU64,
    /// Packs written.
    pub packs: AtomicU64,
}

struct Job {
    data: Vec<u8>,
    kind: BlobType,
    id: Option<Id>,
    reply: Option<oneshot::Sender<Id>>,
}

struct Sealed {
    id: Id,
    kind: BlobType,
    bytes: Vec<u8>,
    uncompressed_length: Option<u32>,
}

/// A running write pipeline over one repository.
pub struct Pipeline {
    repo: Arc<Repository>,
    jobs: async_channel::Sender<Job>,
    workers: Vec<std::thread::JoinHandle<()>>,
    packer: tokio::task::JoinHandle<Result<(), RepoError>>,
    stats: Arc<Stats>,
    packer_guard: AbortOnDrop,
}

/// Stops the packer when a pipeline is dropped without [`Pipeline::finish`]
/// (a failed or cancelled backup): otherwise it would go on uploading and
/// write an index after the command released its lock, and a prune that
/// started meanwhile could remove a pack that index then names. The packer
/// is also registered in [`PACKERS`] until then: a command stopped where
/// its pipeline can never be dropped (a read stuck in the kernel) has its
/// packers stopped by [`stop_packers`] before its locks are removed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>, u64);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
        PACKERS
            .lock()
            .expect("packers")
            .retain(|(id, _)| *id != self.1);
        buffers::pipeline_ended();
    }
}

/// Every packer running in this process.
static PACKERS: Mutex<Vec<(u64, tokio::task::AbortHandle)>> = Mutex::new(Vec::new());
static NEXT_PACKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Stop every packer still running (a command stopped by a signal or its
/// deadline), before the command's locks are removed.
pub fn stop_packers() {
    for (_, h) in std::mem::take(&mut *PACKERS.lock().expect("packers")) {
        h.abort();
    }
}

/// A blob's id, available once a worker has hashed it.
pub struct PendingId(oneshot::Receiver<Id>);

impl PendingId {
    /// Wait for the id.
    pub async fn get(self) -> Result<Id, RepoError> {
        self.0.await.map_err(|_| RepoError::Internal {
            what: "backup pipeline".into(),
            reason: "a worker stopped before hashing a chunk".into(),
        })
    }
}

impl Pipeline {
    /// Start the stages.
    pub fn start(repo: Arc<Repository>, opts: PipelineOptions) -> Self {
        let workers_n = opts.workers.max(1);
        let (jobs_tx, jobs_rx) = async_channel::bounded::<Job>(workers_n * 2);
        let (sealed_tx, sealed_rx) = async_channel::bounded::<Sealed>(workers_n);
        let in_flight = Arc::new(Mutex::new(HashSet::<(Id, BlobType)>::new()));
        let stats = Arc::new(Stats::default());
        let workers = (0..workers_n)
            .map(|i| {
                let rx = jobs_rx.clone();
                let tx = sealed_tx.clone();
                let repo = Arc::clone(&repo);
                let in_flight = Arc::clone(&in_flight);
                let stats = Arc::clone(&stats);
                let level = opts.compression_level;
                std::thread::Builder::new()
                    .name(format!("cairn-worker-{i}"))
                    .spawn(move || worker(rx, tx, repo, in_flight, stats, level))
                    .expect("spawn worker thread")
            })
            .collect();
        drop(sealed_tx);
        let packer = tokio::spawn(packer(
            Arc::clone(&repo),
            sealed_rx,
            Arc::clone(&stats),
            opts.uploads.max(1),
        ));
        let token = NEXT_PACKER.fetch_add(1, Ordering::Relaxed);
        buffers::pipeline_started();
        PACKERS
            .lock()
            .expect("packers")
            .push((token, packer.abort_handle()));
        Pipeline {
            repo,
            jobs: jobs_tx,
            workers,
            packer_guard: AbortOnDrop(Some(packer.abort_handle()), token),
            packer,
            stats,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The repository written to.
    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Queue a data chunk; its id arrives once hashed.
    pub async fn add_data(&self, data: Vec<u8>) -> Result<PendingId, RepoError> {
        self.data_sender().add(data).await
    }

    /// A handle that queues data chunks from a blocking thread (a file pump).
    pub fn data_sender(&self) -> DataSender {
        DataSender {
            jobs: self.jobs.clone(),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Queue a tree whose id the caller computed.
    pub async fn add_tree(&self, id: Id, data: Vec<u8>) -> Result<(), RepoError> {
        self.send(Job {
            data,
            kind: BlobType::Tree,
            id: Some(id),
            reply: None,
        })
        .await
    }

    async fn send(&self, job: Job) -> Result<(), RepoError> {
        // A closed channel means a later stage failed; `finish` reports why.
        self.jobs
            .send(job)
            .await
            .map_err(|_| RepoError::PipelineStopped)
    }

    /// Flush every pack and index. After `Ok`, every blob handed in is
    /// stored and indexed.
    pub async fn finish(self) -> Result<Arc<Stats>, RepoError> {
        self.jobs.close();
        let workers = self.workers;
        // A worker that panicked may have handed out an id whose blob was
        // never stored: that must fail the backup, not pass silently.
        let panicked = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .map(|w| w.join())
                .filter(|r| r.is_err())
                .count()
        })
        .await
        .unwrap_or(1);
        if panicked > 0 {
            return Err(RepoError::Internal {
                what: "backup pipeline".into(),
                reason: format!(
                    "{panicked} worker threads panicked; this backup cannot be trusted"
                ),
            });
        }
        // The guard stays armed while the packer ends: a finish that is
        // itself cancelled (a SIGTERM during the last uploads) still stops it.
        let mut guard = self.packer_guard;
        let mut packer = self.packer;
        let ended = (&mut packer).await;
        guard.0 = None;
        crate::util::joined(ended).await?;
        Ok(self.stats)
    }
}

/// Queues data chunks from a blocking thread.
#[derive(Clone)]
pub struct DataSender {
    jobs: async_channel::Sender<Job>,
    stats: Arc<Stats>,
}

impl DataSender {
    /// Queue a data chunk from async code, waiting while the workers are busy.
    pub async fn add(&self, data: Vec<u8>) -> Result<PendingId, RepoError> {
        self.stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                data,
                kind: BlobType::Data,
                id: None,
                reply: Some(tx),
            })
            .await
            .map_err(|_| RepoError::PipelineStopped)?;
        Ok(PendingId(rx))
    }

    /// Queue a data chunk, blocking while the workers are busy.
    pub fn add_blocking(&self, data: Vec<u8>) -> Result<PendingId, RepoError> {
        self.stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send_blocking(Job {
                data,
                kind: BlobType::Data,
                id: None,
                reply: Some(tx),
            })
            .map_err(|_| RepoError::PipelineStopped)?;
        Ok(PendingId(rx))
    }
}

fn worker(
    rx: async_channel::Receiver<Job>,
    tx: async_channel::Sender<Sealed>,
    repo: Arc<Repository>,
    in_flight: Arc<Mutex<HashSet<(Id, BlobType)>>>,
    stats: Arc<Stats>,
    level: i32,
) {
    // One compression context and one output buffer per worker, reused
    // for every chunk.
    let mut compressor = (level > 0)
        .then(|| zstd::bulk::Compressor::new(level))
        .transpose()
        .ok()
        .flatten();
    let mut squeezed: Vec<u8> = Vec::new();
    while let Ok(job) = rx.recv_blocking() {
        let id = job.id.unwrap_or_else(|| Id::hash(&job.data));
        if let Some(reply) = job.reply {
            let _ = reply.send(id);
        }
        let known = repo.with_index(|i| i.contains(&id, job.kind));
        if known
            || !in_flight
                .lock()
                .expect("in-flight lock")
                .insert((id, job.kind))
        {
            stats.blobs_known.fetch_add(1, Ordering::Relaxed);
            buffers::give(job.data);
            continue;
        }
        stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if job.kind == BlobType::Data {
            stats
                .bytes_new
                .fetch_add(job.data.len() as u64, Ordering::Relaxed);
        }
        let compressed = match compressor.as_mut() {
            Some(z) => {
                if incompressible(z, &job.data, &mut squeezed) {
                    None
                } else {
                    squeezed.clear();
                    squeezed.reserve(zstd::zstd_safe::compress_bound(job.data.len()));
                    z.compress_to_buffer(&job.data, &mut squeezed)
                        .ok()
                        .filter(|&n| n < job.data.len())
                        .map(|_| squeezed.as_slice())
                }
            }
            None => None,
        };
        let (plain, uncompressed_length) = match compressed {
            Some(c) => (c, Some(job.data.len() as u32)),
            None => (job.data.as_slice(), None),
        };
        let mut bytes = buffers::take(plain.len() + crate::repo::crypto::OVERHEAD);
        repo.key().encrypt_into(plain, &mut bytes);
        buffers::give(job.data);
        let sealed = Sealed {
            id,
            kind: job.kind,
            bytes,
            uncompressed_length,
        };
        if tx.send_blocking(sealed).is_err() {
            // The packer failed; it has recorded why. Stop taking work.
            rx.close();
            return;
        }
    }
}

/// Chunks from this size are sampled before they are compressed.
const SAMPLED_FROM: usize = 256 * 1024;
/// Samples per chunk, spread evenly from its start to its end.
const SAMPLES: usize = 16;
/// Bytes per sample.
const SAMPLE: usize = 4 * 1024;

/// Whether a large chunk looks incompressible (random, or already
/// compressed: photos, video, archives), judged by compressing 16 samples
/// of it (6% of a 1 MiB chunk): when none shrinks by 2%, the chunk is
/// stored as is, without zstd's time on it. Small chunks are always
/// compressed. What the samples cannot see is lost to compression: a chunk
/// whose compressible parts (zeros, repeats) all fall between the samples,
/// or whose data repeats only at distances longer than a sample (a block
/// of random bytes repeated tens of KiB apart), is stored raw.
fn incompressible(z: &mut zstd::bulk::Compressor<'_>, data: &[u8], out: &mut Vec<u8>) -> bool {
    if data.len() < SAMPLED_FROM {
        return false;
    }
    let step = (data.len() - SAMPLE) / (SAMPLES - 1);
    (0..SAMPLES).all(|k| {
        let sample = &data[k * step..k * step + SAMPLE];
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(SAMPLE));
        z.compress_to_buffer(sample, out)
            .is_ok_and(|n| n * 50 >= sample.len() * 49)
    })
}

async fn packer(
    repo: Arc<Repository>,
    rx: async_channel::Receiver<Sealed>,
    stats: Arc<Stats>,
    uploads: usize,
) -> Result<(), RepoError> {
    let data_pack = || {
        PackBuilder::in_buffer(
            buffers::take_pack(PACK_BUFFER),
            Some(|b| buffers::give_pack(b, PACK_BUFFER)),
        )
    };
    let mut data = data_pack();
    let mut trees = PackBuilder::with_capacity(1024 * 1024);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut pending_index: Vec<IndexPack> = Vec::new();
    let result: Result<(), RepoError> = async {
        while let Ok(blob) = rx.recv().await {
            let builder = match blob.kind {
                BlobType::Data => &mut data,
                BlobType::Tree => &mut trees,
            };
            builder.add(blob.id, blob.kind, &blob.bytes, blob.uncompressed_length);
            buffers::give(blob.bytes);
            if builder.len() >= PACK_SIZE {
                let next = match blob.kind {
                    BlobType::Data => data_pack(),
                    BlobType::Tree => PackBuilder::with_capacity(1024 * 1024),
                };
                let full = std::mem::replace(builder, next);
                while in_flight.len() >= uploads {
                    collect(&mut in_flight, &mut pending_index).await?;
                }
                in_flight.spawn(upload(Arc::clone(&repo), full, Arc::clone(&stats)));
                if pending_index.len() >= PACKS_PER_INDEX {
                    write_index(&repo, &mut pending_index, &stats).await?;
                }
            }
        }
        for builder in [data, trees] {
            if !builder.is_empty() {
                in_flight.spawn(upload(Arc::clone(&repo), builder, Arc::clone(&stats)));
            }
        }
        while !in_flight.is_empty() {
            collect(&mut in_flight, &mut pending_index).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        rx.close();
        // Index what did reach storage, so a retry need not upload it again.
        while let Some(r) = in_flight.join_next().await {
            if let Ok(Ok(p)) = r {
                pending_index.push(p);
            }
        }
    }
    // Packs stored but left unindexed (the index write failed too) stay:
    // the next backup adopts them, and prune removes them if unused. They
    // are not removed here, not even on a full store: a backup running at
    // the same time may have adopted them already, and its snapshot would
    // then lose its data.
    let indexed = write_index(&repo, &mut pending_index, &stats).await;
    // The first failure is the cause.
    result.and(indexed)
}

async fn collect(
    set: &mut tokio::task::JoinSet<Result<IndexPack, RepoError>>,
    pending: &mut Vec<IndexPack>,
) -> Result<(), RepoError> {
    if let Some(r) = set.join_next().await {
        pending.push(crate::util::joined(r).await?);
    }
    Ok(())
}

async fn upload(
    repo: Arc<Repository>,
    builder: PackBuilder,
    stats: Arc<Stats>,
) -> Result<IndexPack, RepoError> {
    let key = repo.key().clone();
    let (bytes, id, blobs) = tokio::task::spawn_blocking(move || builder.finish(&key))
        .await
        .map_err(|e| RepoError::Internal {
            what: "pack".into(),
            reason: e.to_string(),
        })?;
    let size = bytes.len() as u64;
    repo.backend()
        .save(FileType::Pack, &id.to_hex(), bytes.into_bytes())
        .await?;
    stats.bytes_stored.fetch_add(size, Ordering::Relaxed);
    stats.packs.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(pack = %id.short(), bytes = size, blobs = blobs.len(), "Pack stored.");
    let entry = IndexPack::new(id, &blobs);
    repo.index_add(&entry);
    Ok(entry)
}

async fn write_index(
    repo: &Repository,
    pending: &mut Vec<IndexPack>,
    stats: &Stats,
) -> Result<(), RepoError> {
    if pending.is_empty() {
        return Ok(());
    }
    let file = IndexFile {
        supersedes: None,
        packs: std::mem::take(pending),
    };
    let json = serde_json::to_vec(&file).expect("index serialises");
    let id = repo.save_unpacked(FileType::Index, &json).await?;
    stats
        .bytes_stored
        .fetch_add(json.len() as u64, Ordering::Relaxed);
    tracing::debug!(index = %id.short(), packs = file.packs.len(), "Index stored.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{memory_repo, runtime};

    #[test]
    fn each_blob_is_stored_once_and_reads_back_as_handed_in() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("pipeline").await;
            let p = Pipeline::start(repo.clone(), PipelineOptions::default());
            let a = p.add_data(vec![1; 10_000]).await.unwrap();
            let b = p.add_data(vec![2; 20_000]).await.unwrap();
            let a_again = p.add_data(vec![1; 10_000]).await.unwrap();
            let (a, b, a_again) = (
                a.get().await.unwrap(),
                b.get().await.unwrap(),
                a_again.get().await.unwrap(),
            );
            assert_eq!(a, a_again);
            let stats = p.finish().await.unwrap();
            assert_eq!(stats.blobs_new.load(Ordering::Relaxed), 2);
            assert_eq!(stats.bytes_in.load(Ordering::Relaxed), 40_000);
            assert_eq!(backend.names(FileType::Index).len(), 1);
            repo.load_index().await.unwrap();
            assert_eq!(
                repo.load_blob(&a, BlobType::Data).await.unwrap(),
                vec![1; 10_000]
            );
            assert_eq!(
                repo.load_blob(&b, BlobType::Data).await.unwrap(),
                vec![2; 20_000]
            );
        });
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Large random chunks are stored as they are, without zstd's time on
    /// them; compressible ones (where a sample looks) and small ones are
    /// compressed as before. All read back.
    #[test]
    fn incompressible_chunks_are_stored_uncompressed() {
        let random = noise(1 << 20, 5);
        let text: Vec<u8> = (0..(1 << 20)).map(|i| b"cairn backs up "[i % 15]).collect();
        let mut half = random.clone();
        half[..1 << 19].fill(b'a');
        // A sparse file's chunk: zeros with a few random runs.
        let mut sparse = vec![0u8; 4 << 20];
        for at in (0..sparse.len()).step_by(300 * 1024) {
            let run = noise(64 * 1024, at as u64);
            let end = (at + run.len()).min(sparse.len());
            sparse[at..end].copy_from_slice(&run[..end - at]);
        }
        let small = noise(100_000, 6);
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        let mut out = Vec::new();
        assert!(incompressible(&mut z, &random, &mut out));
        assert!(!incompressible(&mut z, &text, &mut out));
        assert!(!incompressible(&mut z, &half, &mut out));
        assert!(!incompressible(&mut z, &sparse, &mut out));
        // Exactly 256 KiB, and 256 KiB + 1: the samples stay inside.
        assert!(incompressible(&mut z, &random[..256 * 1024], &mut out));
        assert!(incompressible(&mut z, &random[..256 * 1024 + 1], &mut out));
        assert!(!incompressible(&mut z, &small, &mut out));
        runtime().block_on(async {
            let (_, repo) = memory_repo("pipeline").await;
            let p = Pipeline::start(repo.clone(), PipelineOptions::default());
            let mut ids = Vec::new();
            for data in [&random, &text, &half, &small] {
                ids.push(p.add_data(data.clone()).await.unwrap().get().await.unwrap());
            }
            p.finish().await.unwrap();
            repo.load_index().await.unwrap();
            let compressed: Vec<bool> = ids
                .iter()
                .map(|id| {
                    repo.with_index(|i| i.get(id, BlobType::Data))
                        .unwrap()
                        .uncompressed_length
                        .is_some()
                })
                .collect();
            // The small random chunk was compressed, to no gain: stored as is.
            assert_eq!(compressed, [false, true, true, false]);
            for (id, data) in ids.iter().zip([&random, &text, &half, &small]) {
                assert!(&repo.load_blob(id, BlobType::Data).await.unwrap() == data);
            }
        });
    }

    #[test]
    fn a_later_pipeline_stores_nothing_the_index_already_has() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("pipeline").await;
            let p = Pipeline::start(repo.clone(), PipelineOptions::default());
            p.add_data(vec![3; 5000]).await.unwrap();
            p.finish().await.unwrap();
            let packs = backend.names(FileType::Pack);
            let p = Pipeline::start(repo.clone(), PipelineOptions::default());
            p.add_data(vec![3; 5000])
                .await
                .unwrap()
                .get()
                .await
                .unwrap();
            let stats = p.finish().await.unwrap();
            assert_eq!(stats.blobs_new.load(Ordering::Relaxed), 0);
            assert_eq!(stats.blobs_known.load(Ordering::Relaxed), 1);
            assert_eq!(backend.names(FileType::Pack), packs);
        });
    }

    #[test]
    fn a_pack_that_cannot_be_stored_fails_the_finish_and_indexes_nothing() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("pipeline").await;
            backend.fail_nth_save(1);
            let p = Pipeline::start(repo.clone(), PipelineOptions::default());
            p.add_data(vec![4; 5000]).await.unwrap();
            let Err(e) = p.finish().await else {
                panic!("the finish succeeded");
            };
            assert!(e.to_string().contains("memory:pipeline"), "{e}");
            assert!(backend.names(FileType::Index).is_empty());
            assert!(backend.names(FileType::Pack).is_empty());
        });
    }

    #[test]
    fn compression_level_zero_stores_blobs_as_they_are() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("pipeline").await;
            let p = Pipeline::start(
                repo.clone(),
                PipelineOptions {
                    compression_level: 0,
                    ..Default::default()
                },
            );
            let id = p
                .add_data(vec![0; 50_000])
                .await
                .unwrap()
                .get()
                .await
                .unwrap();
            let stats = p.finish().await.unwrap();
            repo.load_index().await.unwrap();
            let loc = repo.with_index(|i| i.get(&id, BlobType::Data)).unwrap();
            assert_eq!(loc.uncompressed_length, None);
            // Zeros compress to nothing when compressed: stored whole here.
            assert!(stats.bytes_stored.load(Ordering::Relaxed) > 50_000);
        });
    }
}
