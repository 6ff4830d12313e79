//! Indexing packs from their own headers: the packs an interrupted backup
//! left unindexed (adopted by the next backup), or every pack when the
//! index is rebuilt (`rebuild-index`).

use super::index::{self, IndexFile};
use super::pack;
use super::{Id, RepoError, Repository};
use crate::storage::FileType;
use futures::StreamExt;

impl Repository {
    /// Index the packs no index file mentions: the packs an interrupted
    /// backup uploaded before it could write their index. Their headers are
    /// read (two small range reads each, eight packs at a time) and a new index file records them,
    /// so the next backup deduplicates against them instead of uploading
    /// the data again. A pack whose header cannot be read is left alone
    /// (`check` reports it). Returns the number of packs adopted.
    pub async fn adopt_unindexed_packs(&self) -> Result<usize, RepoError> {
        let known: std::collections::HashSet<Id> =
            self.with_index(|i| i.packs().copied().collect());
        let mut orphans = self.list_packs().await?;
        orphans.retain(|(id, _, _)| !known.contains(id));
        let mut adopted = Vec::new();
        for (id, header) in self.read_pack_headers(orphans).await {
            match header {
                Ok(blobs) => adopted.push(index::IndexPack::new(id, &blobs)),
                Err(e) => {
                    tracing::warn!(error = %e, "An unindexed pack has no readable header; leaving it.")
                }
            }
        }
        if adopted.is_empty() {
            return Ok(0);
        }
        let n = adopted.len();
        for p in &adopted {
            self.index_add(p);
        }
        let file = IndexFile {
            supersedes: None,
            packs: adopted,
        };
        let json = serde_json::to_vec(&file).expect("index serialises");
        self.save_unpacked(FileType::Index, &json).await?;
        tracing::info!(packs = n, "Indexed packs left by an interrupted backup.");
        Ok(n)
    }

    /// Build the index anew from the packs' own headers (restic's `repair
    /// index`): every pack whose header authenticates is listed, new index
    /// files are written, and only then are the old ones removed, so a
    /// crash leaves the old index or both. The caller holds the exclusive
    /// lock. A pack whose header cannot be read keeps the entries a
    /// readable old index file has for it (its blobs may well be intact,
    /// and each is authenticated when read); a pack no readable index
    /// file knows and whose header is unreadable is named and left out.
    pub async fn rebuild_index(&self) -> Result<RebuildReport, RepoError> {
        let old: Vec<String> = self
            .backend
            .list(FileType::Index)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let read = self.read_pack_headers(self.list_packs().await?).await;
        let mut report = RebuildReport {
            index_files_removed: old.len(),
            ..Default::default()
        };
        // What the readable old index files say, for packs whose header
        // is unreadable (read only if there is such a pack).
        let mut known: std::collections::HashMap<Id, index::IndexPack> = Default::default();
        if read.iter().any(|(_, h)| h.is_err()) {
            for name in &old {
                match self.load_index_file(name).await {
                    Ok(file) => {
                        for p in file.packs {
                            known.entry(p.id).or_insert(p);
                        }
                    }
                    Err(RepoError::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut entries = Vec::new();
        for (id, header) in read {
            match header {
                Ok(blobs) => {
                    report.blobs += blobs.len();
                    entries.push(index::IndexPack::new(id, &blobs));
                }
                // The error names the pack.
                Err(e @ RepoError::Corrupt { .. }) => match known.remove(&id) {
                    Some(entry) => {
                        report.blobs += entry.blobs.len();
                        report.kept_from_old_index.push(e.to_string());
                        entries.push(entry);
                    }
                    None => report.unreadable_packs.push(e.to_string()),
                },
                Err(e) => return Err(e),
            }
        }
        entries.sort_by_key(|p| p.id);
        report.packs = entries.len();
        report.index_files_written = self.save_index(entries).await?;
        for name in &old {
            self.backend.remove(FileType::Index, name).await?;
        }
        self.load_index().await?;
        Ok(report)
    }

    /// The packs in the storage: ID, name and size (a name that is no ID
    /// is no pack).
    async fn list_packs(&self) -> Result<Vec<(Id, String, u64)>, RepoError> {
        Ok(self
            .backend
            .list(FileType::Pack)
            .await?
            .into_iter()
            .filter_map(|(name, size)| Some((Id::parse(&name)?, name, size)))
            .collect())
    }

    /// The headers of `packs` (as [`Repository::list_packs`] gives them),
    /// read eight at a time, each with its pack's ID.
    async fn read_pack_headers(
        &self,
        packs: Vec<(Id, String, u64)>,
    ) -> Vec<(Id, Result<Vec<pack::PackedBlob>, RepoError>)> {
        futures::stream::iter(packs)
            .map(|(id, name, size)| async move { (id, self.read_pack_header(&name, size).await) })
            .buffer_unordered(8)
            .collect()
            .await
    }

    /// Read and check a pack's header: two range reads, the header
    /// authenticated by its MAC (a replicated store tries the other copy when
    /// it fails), and its blobs must lie inside the pack. The blobs' own
    /// bytes are checked when read, as every blob is.
    async fn read_pack_header(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Vec<pack::PackedBlob>, RepoError> {
        let bad = |reason: String| RepoError::corrupt(format!("pack {name}"), reason);
        if size < 4 {
            return Err(bad("shorter than its length field".into()));
        }
        let trailer = self
            .backend
            .load_range(FileType::Pack, name, size - 4, 4)
            .await?;
        let trailer: [u8; 4] = trailer
            .as_slice()
            .try_into()
            .map_err(|_| bad("short trailer".into()))?;
        let hlen =
            pack::header_length_from_trailer(&trailer, size).map_err(|e| bad(e.to_string()))?;
        let key = &self.key;
        let header = self
            .backend
            .load_range_verified(
                FileType::Pack,
                name,
                size - 4 - hlen,
                hlen,
                &|d: &[u8]| key.authentic(d),
            )
            .await?;
        let blobs = pack::parse_header(&self.key, &header).map_err(|e| bad(e.to_string()))?;
        let data_end = size - 4 - hlen;
        if blobs.is_empty() {
            return Err(bad("its header lists no blobs".into()));
        }
        if blobs
            .iter()
            .any(|b| b.offset as u64 + b.length as u64 > data_end)
        {
            return Err(bad("a blob lies outside the pack's data".into()));
        }
        Ok(blobs)
    }
}

/// What [`Repository::rebuild_index`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    /// Packs now indexed.
    pub packs: usize,
    /// Blobs they hold.
    pub blobs: usize,
    /// New index files written.
    pub index_files_written: usize,
    /// Old index files removed.
    pub index_files_removed: usize,
    /// Packs whose header could not be read and that no readable index
    /// file knew: left out of the index, each with why.
    pub unreadable_packs: Vec<String>,
    /// Packs whose header could not be read, indexed as a readable old
    /// index file had them, each with why.
    pub kept_from_old_index: Vec<String>,
}
