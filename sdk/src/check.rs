//! Helpers for `verify`: comparing what a snapshot holds with what a
//! restore produced.

/// An order-independent fingerprint of a multiset of rows (lines,
/// records): how many, how many bytes, and two sums of 64-bit hashes.
/// Two sets with the same rows, in any order, have equal fingerprints;
/// a missing, extra or changed row changes it. Not a cryptographic
/// digest: it catches accidents, not an adversary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowSum {
    /// Rows added.
    pub rows: u64,
    /// Bytes of all rows.
    pub bytes: u64,
    sum_a: u64,
    sum_b: u64,
}

impl RowSum {
    /// Add one row.
    pub fn add(&mut self, row: &[u8]) {
        self.rows += 1;
        self.bytes += row.len() as u64;
        self.sum_a = self.sum_a.wrapping_add(fnv1a(row, SEED_A));
        self.sum_b = self.sum_b.wrapping_add(fnv1a(row, SEED_B).rotate_left(17));
    }
}

/// A fingerprint of one byte string fed in pieces (a large object
/// written in chunks, say): the same bytes give the same fingerprint
/// however they are split. Like [`RowSum`], it catches accidents, not
/// an adversary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSum {
    /// Bytes fed so far.
    pub bytes: u64,
    a: u64,
    b: u64,
}

impl Default for StreamSum {
    fn default() -> Self {
        StreamSum {
            bytes: 0,
            a: SEED_A,
            b: SEED_B,
        }
    }
}

impl StreamSum {
    /// Feed the next piece.
    pub fn update(&mut self, piece: &[u8]) {
        self.bytes += piece.len() as u64;
        self.a = fnv1a(piece, self.a);
        // A second, differently mixed hash: chained byte by byte too,
        // so it does not depend on where the pieces were cut.
        self.b = piece.iter().fold(self.b, |h, &b| {
            (h.rotate_left(5) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
    }

    /// The fingerprint as bytes, to add as one row of a [`RowSum`].
    pub fn digest(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.bytes.to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..].copy_from_slice(&self.b.to_le_bytes());
        out
    }
}

const SEED_A: u64 = 0xcbf2_9ce4_8422_2325;
const SEED_B: u64 = 0x6c62_272e_07bb_0142;

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
