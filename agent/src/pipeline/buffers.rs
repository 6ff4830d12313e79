//! Pools of the write path's large buffers, so their pages are faulted in
//! once per backup rather than once per chunk or pack.
//!
//! - Chunk buffers, with room for a maximal chunk sealed (encrypted, IV and
//!   MAC added): a stream's chunks are cut from them, a worker seals each
//!   chunk into another, and both come back once the packer has copied the
//!   sealed blob into its pack.
//! - Pack buffers, with room for a full pack and its header.
//!
//! Without the pools each is a fresh mapping from the system (the
//! allocator's mmap threshold is fixed low on purpose, see `main.rs`), whose
//! every page faults in on first write: about half a second per GB here.
//! What the pools keep stays resident, so they are emptied when the last
//! pipeline of the process ends, and a buffer that comes back after that
//! (from a cancelled backup's upload or worker) is dropped: an idle agent
//! holds none.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Capacity of a pooled chunk buffer: a maximal chunk, sealed.
pub const CHUNK: usize = super::chunker::MAX_SIZE + crate::repo::crypto::OVERHEAD;
/// Chunk buffers kept at most: enough for the chunks in flight between the
/// producers and the workers.
const KEEP: usize = 8;
/// Pack buffers kept at most: the packs being filled and uploaded.
const KEEP_PACKS: usize = 3;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static FREE_PACKS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Pipelines running in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A pipeline starts: returned buffers are pooled again.
pub fn pipeline_started() {
    LIVE.fetch_add(1, Ordering::SeqCst);
}

/// A pipeline ended; the last one empties the pools.
pub fn pipeline_ended() {
    if LIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
        for pool in [&FREE, &FREE_PACKS] {
            if let Ok(mut free) = pool.lock() {
                *free = Vec::new();
            }
        }
    }
}

/// An empty buffer with room for at least `capacity` bytes: a pooled chunk
/// buffer when it fits in one, else a new one (of chunk size when the
/// request is large, so it can be pooled afterwards).
pub fn take(capacity: usize) -> Vec<u8> {
    // Small requests (a small file's blob, a tree) get a small buffer: the
    // pooled ones are for the chunks of large files.
    if capacity <= CHUNK / 8 || capacity > CHUNK {
        return Vec::with_capacity(capacity);
    }
    FREE.lock()
        .ok()
        .and_then(|mut free| free.pop())
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Return a buffer from [`take`] (others are simply dropped).
pub fn give(buffer: Vec<u8>) {
    put(&FREE, buffer, CHUNK, KEEP);
}

/// An empty pack buffer with room for at least `capacity` bytes.
pub fn take_pack(capacity: usize) -> Vec<u8> {
    let pooled = FREE_PACKS.lock().ok().and_then(|mut free| free.pop());
    match pooled {
        Some(b) if b.capacity() >= capacity => b,
        _ => Vec::with_capacity(capacity),
    }
}

/// Return a buffer from [`take_pack`].
pub fn give_pack(buffer: Vec<u8>, capacity: usize) {
    put(&FREE_PACKS, buffer, capacity, KEEP_PACKS);
}

/// Pool `buffer` if it is of the pool's size class (not one that grew far
/// past it) and a pipeline still runs.
fn put(pool: &Mutex<Vec<Vec<u8>>>, mut buffer: Vec<u8>, capacity: usize, keep: usize) {
    if buffer.capacity() < capacity || buffer.capacity() > 2 * capacity {
        return;
    }
    buffer.clear();
    if let Ok(mut free) = pool.lock()
        // Read under the pool's lock, which the last pipeline's end takes
        // to empty it: a buffer is never pooled after that.
        && LIVE.load(Ordering::SeqCst) > 0
        && free.len() < keep
    {
        free.push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small requests never take a pooled buffer; a buffer that grew far
    /// past its class is not pooled; nothing is pooled with no pipeline.
    #[test]
    fn pooling_rules() {
        // Other tests run pipelines at the same time: only what this test
        // can tell apart is checked.
        let small = take(100);
        assert!(small.capacity() < CHUNK / 8);
        let large = take(CHUNK);
        assert!(large.capacity() >= CHUNK);
        let mut grown = Vec::with_capacity(3 * CHUNK);
        grown.push(1u8);
        let ptr = grown.as_ptr();
        pipeline_started();
        give(grown);
        assert!(
            FREE.lock().unwrap().iter().all(|b| b.as_ptr() != ptr),
            "a grown buffer was pooled"
        );
        pipeline_ended();
    }
}
