//! Pack files: encrypted blobs back to back, then the encrypted header that
//! lists them, then the header's length as a little-endian `u32`.

use super::crypto::{Key, OVERHEAD};
use super::id::Id;

/// Whether a blob holds file content or a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File content.
    Data,
    /// A directory listing (JSON).
    Tree,
}

/// One blob's place inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    /// SHA-256 of the plaintext (before compression).
    pub id: Id,
    /// Data or tree.
    pub kind: BlobType,
    /// Offset of the encrypted blob inside the pack.
    pub offset: u32,
    /// Stored (encrypted, maybe compressed) length.
    pub length: u32,
    /// Plaintext length when the blob is compressed.
    pub uncompressed_length: Option<u32>,
}

const ENTRY_PLAIN: usize = 1 + 4 + 32;
const ENTRY_COMPRESSED: usize = 1 + 4 + 4 + 32;

/// Why a pack header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The pack is too short or its header length points outside it.
    #[error("pack is truncated or its header length ({0}) is invalid")]
    BadLength(u64),
    /// The header failed authentication.
    #[error("pack header failed authentication")]
    Authentication,
    /// A header entry has an unknown type byte or a wrong size.
    #[error("pack header is malformed: {0}")]
    Malformed(String),
}

/// The size of one header entry for a blob, compressed or not.
pub fn header_entry_len(compressed: bool) -> u64 {
    if compressed {
        ENTRY_COMPRESSED as u64
    } else {
        ENTRY_PLAIN as u64
    }
}

/// Memory alignment of a pack's first byte, so a local repository can write
/// packs with direct I/O (no copy into the page cache).
pub const ALIGN: usize = 4096;

/// Builds one pack in memory. The pack starts at the first [`ALIGN`]ed byte
/// of its buffer (a few zero bytes of padding before it are not the pack's).
pub struct PackBuilder {
    data: Vec<u8>,
    start: usize,
    blobs: Vec<PackedBlob>,
    recycle: Option<fn(Vec<u8>)>,
}

impl PackBuilder {
    /// An empty pack with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::in_buffer(Vec::with_capacity(capacity + ALIGN), None)
    }

    /// An empty pack built in `buffer` (its content is discarded), which
    /// goes to `recycle` once the finished pack is dropped.
    pub fn in_buffer(mut buffer: Vec<u8>, recycle: Option<fn(Vec<u8>)>) -> Self {
        buffer.clear();
        let start = buffer.as_ptr().align_offset(ALIGN);
        // Padding only where it fits: growing the buffer would move it.
        let start = if start < buffer.capacity() { start } else { 0 };
        buffer.resize(start, 0);
        PackBuilder {
            data: buffer,
            start,
            blobs: Vec::new(),
            recycle,
        }
    }

    /// Append an already encrypted blob.
    pub fn add(
        &mut self,
        id: Id,
        kind: BlobType,
        encrypted: &[u8],
        uncompressed_length: Option<u32>,
    ) {
        self.blobs.push(PackedBlob {
            id,
            kind,
            offset: self.len() as u32,
            length: encrypted.len() as u32,
            uncompressed_length,
        });
        self.data.extend_from_slice(encrypted);
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Append the encrypted header and its length; returns the pack's bytes,
    /// its id (SHA-256 of those bytes) and its blobs.
    pub fn finish(mut self, key: &Key) -> (PackBytes, Id, Vec<PackedBlob>) {
        let mut header = Vec::with_capacity(self.blobs.len() * ENTRY_COMPRESSED);
        for b in &self.blobs {
            let type_byte = match (b.kind, b.uncompressed_length.is_some()) {
                (BlobType::Data, false) => 0u8,
                (BlobType::Tree, false) => 1,
                (BlobType::Data, true) => 2,
                (BlobType::Tree, true) => 3,
            };
            header.push(type_byte);
            header.extend_from_slice(&b.length.to_le_bytes());
            if let Some(u) = b.uncompressed_length {
                header.extend_from_slice(&u.to_le_bytes());
            }
            header.extend_from_slice(&b.id.0);
        }
        let before = self.data.len();
        key.encrypt_into(&header, &mut self.data);
        let encrypted = self.data.len() - before;
        self.data
            .extend_from_slice(&(encrypted as u32).to_le_bytes());
        let id = Id::hash(&self.data[self.start..]);
        let bytes = PackBytes {
            buf: std::mem::take(&mut self.data),
            start: self.start,
            recycle: self.recycle.take(),
        };
        (bytes, id, std::mem::take(&mut self.blobs))
    }
}

/// A finished pack's bytes, in the buffer it was built in.
pub struct PackBytes {
    buf: Vec<u8>,
    start: usize,
    recycle: Option<fn(Vec<u8>)>,
}

impl PackBytes {
    /// The pack as `Bytes` for storage, without a copy; the buffer is
    /// recycled once the last clone is dropped.
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PackBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl std::ops::Deref for PackBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl Drop for PackBytes {
    fn drop(&mut self) {
        if let Some(recycle) = self.recycle.take() {
            recycle(std::mem::take(&mut self.buf));
        }
    }
}

/// Given the pack's total size, the byte range to fetch that surely holds the
/// header and its length field (the header's exact size is not known yet).
pub fn header_length_from_trailer(trailer: &[u8; 4], pack_size: u64) -> Result<u64, PackError> {
    let len = u32::from_le_bytes(*trailer) as u64;
    if len < OVERHEAD as u64 || len + 4 > pack_size {
        return Err(PackError::BadLength(len));
    }
    Ok(len)
}

/// Decrypt and parse a pack header (without the trailing length field).
pub fn parse_header(key: &Key, encrypted: &[u8]) -> Result<Vec<PackedBlob>, PackError> {
    let plain = key
        .decrypt(encrypted)
        .map_err(|_| PackError::Authentication)?;
    let mut blobs = Vec::new();
    let mut pos = 0usize;
    let mut offset = 0u64;
    while pos < plain.len() {
        let t = plain[pos];
        let (kind, compressed) = match t {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            other => {
                return Err(PackError::Malformed(format!(
                    "unknown blob type byte {other}"
                )));
            }
        };
        let size = if compressed {
            ENTRY_COMPRESSED
        } else {
            ENTRY_PLAIN
        };
        let entry = plain
            .get(pos..pos + size)
            .ok_or_else(|| PackError::Malformed("truncated header entry".into()))?;
        let length = u32::from_le_bytes(entry[1..5].try_into().expect("4 bytes"));
        let (uncompressed_length, id_at) = if compressed {
            (
                Some(u32::from_le_bytes(entry[5..9].try_into().expect("4 bytes"))),
                9,
            )
        } else {
            (None, 5)
        };
        let id = Id(entry[id_at..id_at + 32].try_into().expect("32 bytes"));
        blobs.push(PackedBlob {
            id,
            kind,
            offset: offset as u32,
            length,
            uncompressed_length,
        });
        offset += length as u64;
        pos += size;
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let key = Key::random();
        let mut b = PackBuilder::with_capacity(1024);
        let blob1 = key.encrypt(b"abc");
        let blob2 = key.encrypt(b"compressed-bytes");
        b.add(Id::hash(b"abc"), BlobType::Data, &blob1, None);
        b.add(Id::hash(b"t"), BlobType::Tree, &blob2, Some(100));
        let (bytes, id, blobs) = b.finish(&key);
        assert_eq!(id, Id::hash(&bytes));
        let trailer: [u8; 4] = bytes[bytes.len() - 4..].try_into().unwrap();
        let hlen = header_length_from_trailer(&trailer, bytes.len() as u64).unwrap() as usize;
        let header = &bytes[bytes.len() - 4 - hlen..bytes.len() - 4];
        assert_eq!(parse_header(&key, header).unwrap(), blobs);
        assert_eq!(blobs[1].offset as usize, blob1.len());
        assert_eq!(&bytes[..blob1.len()], &blob1[..]);
        assert_eq!(bytes.as_ptr() as usize % ALIGN, 0, "the pack is aligned");
    }

    #[test]
    fn a_recycled_buffer_builds_the_same_pack() {
        static RECYCLED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
        let key = Key::random();
        let blob = key.encrypt(b"abc");
        let mut first = PackBuilder::in_buffer(
            Vec::with_capacity(1 << 16),
            Some(|b| RECYCLED.lock().unwrap().push(b)),
        );
        first.add(Id::hash(b"abc"), BlobType::Data, &blob, None);
        let (bytes, id, _) = first.finish(&key);
        let bytes = bytes.into_bytes();
        assert_eq!(id, Id::hash(&bytes));
        assert!(RECYCLED.lock().unwrap().is_empty(), "recycled while in use");
        let copy = bytes.clone();
        drop(bytes);
        assert!(RECYCLED.lock().unwrap().is_empty(), "recycled while in use");
        drop(copy);
        let buffer = RECYCLED.lock().unwrap().pop().expect("recycled");
        // A used buffer starts clean: the pack is only what is added.
        let mut second = PackBuilder::in_buffer(buffer, None);
        assert!(second.is_empty());
        assert_eq!(second.len(), 0, "the padding is not the pack's");
        second.add(Id::hash(b"abc"), BlobType::Data, &blob, None);
        let (again, id2, blobs) = second.finish(&key);
        assert_eq!(id2, Id::hash(&again));
        assert_eq!(blobs[0].offset, 0);
        assert_eq!(
            parse_header(&key, &again[blob.len()..again.len() - 4]).unwrap(),
            blobs
        );
    }
}
