//! A small pool of chunk buffers. A stream's chunks are cut from buffers
//! with room for a maximal chunk; once a worker has hashed, compressed and
//! encrypted a chunk, its buffer comes back here for the next one. Without
//! the pool each chunk is a fresh mapping from the system (the allocator's
//! mmap threshold is fixed low on purpose, see `main.rs`), whose every page
//! faults in on first write: about a quarter of a second per GB on the
//! machines measured (docs/benchmarks.md).

use std::sync::Mutex;

/// Buffers kept at most: enough for the chunks in flight between the
/// producer and the workers; what they hold stays resident.
const KEEP: usize = 8;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for at least `capacity` bytes.
pub fn take(capacity: usize) -> Vec<u8> {
    let pooled = FREE.lock().map(|mut free| free.pop()).ok().flatten();
    match pooled {
        Some(b) if b.capacity() >= capacity => b,
        _ => Vec::with_capacity(capacity),
    }
}

/// Return a buffer from [`take`] (others are simply dropped).
pub fn give(mut buffer: Vec<u8>) {
    if buffer.capacity() < super::chunker::MAX_SIZE {
        return;
    }
    buffer.clear();
    if let Ok(mut free) = FREE.lock()
        && free.len() < KEEP
    {
        free.push(buffer);
    }
}
