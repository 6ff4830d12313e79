//! Content-defined chunking with FastCDC (normalised chunking, level 1).
//!
//! The gear table is derived from the repository's secret chunker polynomial,
//! so chunk boundaries (and thus blob sizes) reveal nothing about content to
//! someone without the key, the reason restic keys its Rabin chunker.

use sha2::{Digest, Sha256};

/// Smallest chunk, except a file's last one.
pub const MIN_SIZE: usize = 512 * 1024;
/// Target average chunk size.
pub const AVG_SIZE: usize = 1024 * 1024;
/// Largest chunk.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;

/// A keyed gear table plus the masks for the chosen sizes.
#[derive(Clone)]
pub struct ChunkerParams {
    gear: Box<[u64; 256]>,
    mask_small: u64,
    mask_large: u64,
}

fn top_bits(bits: u32) -> u64 {
    !0u64 << (64 - bits)
}

impl ChunkerParams {
    /// Parameters keyed by the repository's chunker polynomial.
    pub fn new(polynomial: u64) -> Self {
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            let mut h = Sha256::new();
            h.update(b"cairn fastcdc gear v1");
            h.update(polynomial.to_le_bytes());
            h.update([i as u8]);
            *g = u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
        }
        let bits = AVG_SIZE.trailing_zeros();
        ChunkerParams {
            gear,
            mask_small: top_bits(bits + 1),
            mask_large: top_bits(bits - 1),
        }
    }

    /// Continue scanning `data` (the bytes of the chunk being built) for a
    /// cut point from where `state` left off. Returns the chunk length when
    /// a boundary is found (or `MAX_SIZE` is reached), resetting `state`.
    fn scan(&self, data: &[u8], state: &mut ScanState) -> Option<usize> {
        if data.len() <= MIN_SIZE {
            return None;
        }
        let end = data.len().min(MAX_SIZE);
        let mut h = state.hash;
        let start = state.pos.max(MIN_SIZE);
        // The stricter mask before the average size, the looser one after:
        // two plain loops rather than a choice per byte.
        let middle = end.min(AVG_SIZE).max(start);
        for (from, to, mask) in [
            (start, middle, self.mask_small),
            (middle, end, self.mask_large),
        ] {
            if let Some(k) = self.find(&data[from..to], &mut h, mask) {
                *state = ScanState::default();
                return Some(from + k + 1);
            }
        }
        if end == MAX_SIZE {
            *state = ScanState::default();
            return Some(MAX_SIZE);
        }
        *state = ScanState { pos: end, hash: h };
        None
    }

    /// Roll the gear hash `h` over `bytes`; the index of the first byte
    /// after which `h & mask` is zero.
    fn find(&self, bytes: &[u8], h: &mut u64, mask: u64) -> Option<usize> {
        for (k, &b) in bytes.iter().enumerate() {
            *h = (*h << 1).wrapping_add(self.gear[b as usize]);
            if *h & mask == 0 {
                return Some(k);
            }
        }
        None
    }
}

/// Where the scan of the current chunk stopped, so bytes arriving in small
/// pieces are hashed once, not rescanned from the start on every push.
#[derive(Default, Clone, Copy)]
struct ScanState {
    pos: usize,
    hash: u64,
}

/// Splits a byte stream into chunks as it arrives.
pub struct Chunker {
    params: ChunkerParams,
    buf: Vec<u8>,
    state: ScanState,
}

impl Chunker {
    /// A chunker with empty state.
    pub fn new(params: ChunkerParams) -> Self {
        Chunker {
            params,
            buf: Vec::new(),
            state: ScanState::default(),
        }
    }

    /// Feed bytes; returns the chunks completed by them.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            // Never hold more than one maximal chunk: take only what fits.
            let room = MAX_SIZE - self.buf.len();
            let take = room.min(data.len());
            // A stream that will be cut gets room for a maximal chunk at
            // once: no growing (and copying) a few MiB at a time. Small
            // files keep small buffers.
            if self.buf.len() + take > MIN_SIZE && self.buf.capacity() < MAX_SIZE {
                let mut room = super::buffers::take(MAX_SIZE);
                room.extend_from_slice(&self.buf);
                self.buf = room;
            }
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while let Some(cut) = self.params.scan(&self.buf, &mut self.state) {
                let mut rest = super::buffers::take(MAX_SIZE);
                rest.extend_from_slice(&self.buf[cut..]);
                self.buf.truncate(cut);
                out.push(std::mem::replace(&mut self.buf, rest));
            }
        }
        out
    }

    /// The final, possibly short, chunk.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.state = ScanState::default();
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let data = pseudo_random(20 * 1024 * 1024, 7);
        let mut c = Chunker::new(ChunkerParams::new(0x3DA3358B4DC173));
        let mut chunks = Vec::new();
        for piece in data.chunks(300_000) {
            chunks.extend(c.push(piece));
        }
        chunks.extend(c.finish());
        assert_eq!(chunks.concat(), data);
        for ch in &chunks[..chunks.len() - 1] {
            assert!(
                ch.len() > MIN_SIZE && ch.len() <= MAX_SIZE,
                "chunk of {}",
                ch.len()
            );
        }
        assert!(chunks.len() >= 8, "only {} chunks for 20 MiB", chunks.len());
    }

    #[test]
    fn small_pushes_cut_where_one_big_push_does() {
        let data = pseudo_random(10 * 1024 * 1024, 3);
        let params = ChunkerParams::new(7);
        let mut whole = Chunker::new(params.clone());
        let mut a = whole.push(&data);
        a.extend(whole.finish());
        let mut pieces = Chunker::new(params);
        let mut b = Vec::new();
        for piece in data.chunks(4093) {
            b.extend(pieces.push(piece));
        }
        b.extend(pieces.finish());
        assert_eq!(a, b);
    }

    #[test]
    fn boundaries_resynchronise_after_an_insertion() {
        let data = pseudo_random(12 * 1024 * 1024, 9);
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let params = ChunkerParams::new(42);
        let split = |d: &[u8]| {
            let mut c = Chunker::new(params.clone());
            let mut v = c.push(d);
            v.extend(c.finish());
            v
        };
        let a = split(&data);
        let b = split(&shifted);
        let shared = a.iter().filter(|ch| b.contains(ch)).count();
        assert!(
            shared + 2 >= a.len(),
            "only {shared} of {} chunks shared",
            a.len()
        );
    }
}
