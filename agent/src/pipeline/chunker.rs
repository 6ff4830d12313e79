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

    /// Length of the first chunk of `data`, or `None` when `data` holds no
    /// boundary yet (it is shorter than `MAX_SIZE` and no cut point was found).
    pub fn cut(&self, data: &[u8]) -> Option<usize> {
        if data.len() <= MIN_SIZE {
            return None;
        }
        let end = data.len().min(MAX_SIZE);
        let normal = AVG_SIZE.min(end);
        let mut h = 0u64;
        let mut i = MIN_SIZE;
        while i < normal {
            h = (h << 1).wrapping_add(self.gear[data[i] as usize]);
            if h & self.mask_small == 0 {
                return Some(i + 1);
            }
            i += 1;
        }
        while i < end {
            h = (h << 1).wrapping_add(self.gear[data[i] as usize]);
            if h & self.mask_large == 0 {
                return Some(i + 1);
            }
            i += 1;
        }
        (end == MAX_SIZE).then_some(MAX_SIZE)
    }
}

/// Splits a byte stream into chunks as it arrives.
pub struct Chunker {
    params: ChunkerParams,
    buf: Vec<u8>,
}

impl Chunker {
    /// A chunker with empty state.
    pub fn new(params: ChunkerParams) -> Self {
        Chunker {
            params,
            buf: Vec::new(),
        }
    }

    /// Feed bytes; returns the chunks completed by them.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            // Never hold more than one maximal chunk: take only what fits.
            let room = MAX_SIZE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while let Some(cut) = self.params.cut(&self.buf) {
                let rest = self.buf.split_off(cut);
                out.push(std::mem::replace(&mut self.buf, rest));
            }
        }
        out
    }

    /// The final, possibly short, chunk.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
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
