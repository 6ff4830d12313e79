//! Reading blobs: locate one in the index, fetch its bytes (from the
//! metadata cache for trees), authenticate, decompress (bounded) and check
//! its SHA-256.

use super::cache;
use super::index::BlobLocation;
use super::pack::BlobType;
use super::tree::Tree;
use super::{Id, Key, PARALLEL_DECODE, RepoError, Repository};
use crate::storage::FileType;

impl Repository {
    /// Where a blob is stored.
    pub fn locate(&self, id: &Id, kind: BlobType) -> Option<BlobLocation> {
        self.index.read().expect("index lock").get(id, kind)
    }

    /// Read a blob: fetch, authenticate, decompress and check its SHA-256.
    pub async fn load_blob(&self, id: &Id, kind: BlobType) -> Result<Vec<u8>, RepoError> {
        let loc = self.locate(id, kind).ok_or(RepoError::BlobNotFound(*id))?;
        if kind == BlobType::Tree
            && let Some(stored) = self.cached_tree_blob(&loc).await
        {
            match decode_blob(&self.key, id, &loc, &stored) {
                Ok(plain) => return Ok(plain),
                // The pack matched its name when it was cached: the disk
                // changed it since. Read from the storage.
                Err(_) => {
                    if let Some(c) = &self.cache {
                        c.remove(FileType::Pack, &loc.pack.to_hex());
                    }
                }
            }
        }
        let key = &self.key;
        let stored = self
            .backend
            .load_range_verified(
                FileType::Pack,
                &loc.pack.to_hex(),
                loc.offset as u64,
                loc.length as u64,
                &|data: &[u8]| key.authentic(data),
            )
            .await?;
        if stored.len() < PARALLEL_DECODE {
            return decode_blob(&self.key, id, &loc, &stored);
        }
        // Large blobs are decrypted, decompressed and hashed on a blocking
        // thread, so the blobs a reader fetches ahead decode in parallel.
        let (key, id) = (self.key.clone(), *id);
        crate::util::blocking(move || decode_blob(&key, &id, &loc, &stored)).await
    }

    /// A tree blob's stored bytes from the cache, the whole pack copied
    /// into it first if it is not there (one request for every tree in the
    /// pack). `None` without a cache, or for a pack that cannot be cached
    /// (too large, not matching its name, the cache not writable): that
    /// pack's trees are then read blob by blob, as without a cache, never
    /// by downloading the pack again for each.
    async fn cached_tree_blob(&self, loc: &BlobLocation) -> Option<Vec<u8>> {
        let cache = self.cache.as_ref()?;
        let name = loc.pack.to_hex();
        let (offset, length) = (loc.offset as u64, loc.length as u64);
        // What the cache can say without a download, if anything.
        let known = || {
            if self
                .not_cached
                .lock()
                .expect("not cached")
                .contains(&loc.pack)
            {
                return Some(None);
            }
            cache.get_range(&name, offset, length).map(Some)
        };
        if let Some(answer) = known() {
            return answer;
        }
        let _one_at_a_time = self.caching.lock().await;
        // Cached (or found not cachable) by another reader while this one
        // waited?
        if let Some(answer) = known() {
            return answer;
        }
        let pack = match self.backend.size(FileType::Pack, &name).await {
            Ok(size) if size <= cache::MAX_CACHED_PACK => {
                self.backend.load(FileType::Pack, &name).await.ok()
            }
            _ => None,
        };
        let from = usize::try_from(offset).ok()?;
        match pack {
            Some(pack) if cache.put(FileType::Pack, &name, &pack) => {
                pack.get(from..from + length as usize).map(<[u8]>::to_vec)
            }
            other => {
                self.not_cached.lock().expect("not cached").insert(loc.pack);
                other.and_then(|p| p.get(from..from + length as usize).map(<[u8]>::to_vec))
            }
        }
    }

    /// Read and parse a tree.
    pub async fn load_tree(&self, id: &Id) -> Result<Tree, RepoError> {
        let bytes = self.load_blob(id, BlobType::Tree).await?;
        serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(format!("tree {id}"), e))
    }
}

/// Decrypt, decompress and authenticate one stored blob.
pub fn decode_blob(
    key: &Key,
    id: &Id,
    loc: &BlobLocation,
    stored: &[u8],
) -> Result<Vec<u8>, RepoError> {
    let label = || format!("blob {id} in pack {}", loc.pack);
    let plain = key
        .decrypt(stored)
        .map_err(|e| RepoError::corrupt(label(), e))?;
    let plain = match loc.uncompressed_length {
        Some(len) => decompress_blob(&plain, len as usize)
            .map_err(|e| RepoError::corrupt(label(), format!("zstd: {e}")))?,
        None => plain,
    };
    if Id::hash(&plain) != *id {
        return Err(RepoError::corrupt(
            label(),
            "content does not match its id (SHA-256)",
        ));
    }
    Ok(plain)
}

/// Decompress a blob of known size, never allocating more than that size
/// (a zstd bomb fails instead of exhausting memory). The decompression
/// context is kept per thread: creating one per blob is measurable.
fn decompress_blob(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = slot.as_mut().expect("set above");
        d.decompress(data, len)
    })
}
