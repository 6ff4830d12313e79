//! The index: which pack holds each blob. Index files are JSON, encrypted;
//! in memory it is one hash map from blob id to location.

use super::id::Id;
use super::pack::{BlobType, PackedBlob};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// How many blobs one index file lists at most (restic's limit).
pub const BLOBS_PER_INDEX: usize = 50_000;

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack file holding it.
    pub pack: Id,
    /// Data or tree.
    pub kind: BlobType,
    /// Offset inside the pack.
    pub offset: u32,
    /// Stored length.
    pub length: u32,
    /// Plaintext length when compressed.
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// The plaintext length.
    pub fn plain_length(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or(self.length.saturating_sub(super::crypto::OVERHEAD as u32))
    }
}

/// An index file as restic writes it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index files this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<Vec<Id>>,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}

/// One pack's entry in an index file.
#[derive(Debug, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's id.
    pub id: Id,
    /// Its blobs.
    pub blobs: Vec<IndexBlob>,
}

/// One blob's entry in an index file.
#[derive(Debug, Serialize, Deserialize)]
pub struct IndexBlob {
    /// The blob's id.
    pub id: Id,
    /// `data` or `tree`.
    #[serde(rename = "type")]
    pub kind: BlobType,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length.
    pub length: u32,
    /// Plaintext length when compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl IndexPack {
    /// The entry for a freshly written pack.
    pub fn new(pack: Id, blobs: &[PackedBlob]) -> Self {
        IndexPack {
            id: pack,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect(),
        }
    }
}

impl IndexPack {
    /// The entry for a pack whose blobs are at `blobs`.
    pub fn from_locations(pack: Id, blobs: &[(Id, BlobLocation)]) -> Self {
        IndexPack {
            id: pack,
            blobs: blobs
                .iter()
                .map(|(id, l)| IndexBlob {
                    id: *id,
                    kind: l.kind,
                    offset: l.offset,
                    length: l.length,
                    uncompressed_length: l.uncompressed_length,
                })
                .collect(),
        }
    }
}

/// Every pack the index files list, with the blobs each holds, in pack id
/// order; a pack listed by several files (an interrupted index rewrite
/// leaves that) is one pack, each blob once. `check` and `prune` read the
/// packs this way.
#[derive(Debug, Default)]
pub struct PackContents(BTreeMap<Id, Vec<(Id, BlobLocation)>>);

impl PackContents {
    /// Add the packs of one index file.
    pub fn add_file(&mut self, file: IndexFile) {
        for p in file.packs {
            let blobs = self.0.entry(p.id).or_default();
            blobs.extend(p.blobs.into_iter().map(|b| {
                let loc = BlobLocation {
                    pack: p.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                };
                (b.id, loc)
            }));
        }
    }

    /// The packs, each with its blobs in offset order, duplicates merged.
    pub fn into_packs(mut self) -> BTreeMap<Id, Vec<(Id, BlobLocation)>> {
        for blobs in self.0.values_mut() {
            blobs.sort_by_key(|(id, l)| (l.offset, *id));
            blobs.dedup_by_key(|(id, l)| (l.offset, *id));
        }
        self.0
    }
}

/// The merged, in-memory index of a repository.
#[derive(Debug, Default)]
pub struct Index {
    /// Keyed by id *and* type, as restic does: a tree and a file may hold
    /// the same bytes (an empty directory's JSON, say).
    blobs: HashMap<(Id, BlobType), BlobLocation>,
    packs: HashMap<Id, usize>,
}

impl Index {
    /// Add every blob of an index file.
    pub fn add_file(&mut self, file: &IndexFile) {
        for p in &file.packs {
            self.add_pack(p);
        }
    }

    /// Add one pack's blobs. The first location seen for a blob wins.
    pub fn add_pack(&mut self, p: &IndexPack) {
        *self.packs.entry(p.id).or_default() += p.blobs.len();
        for b in &p.blobs {
            self.blobs.entry((b.id, b.kind)).or_insert(BlobLocation {
                pack: p.id,
                kind: b.kind,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            });
        }
    }

    /// Where a blob is, if the index knows it.
    pub fn get(&self, id: &Id, kind: BlobType) -> Option<&BlobLocation> {
        self.blobs.get(&(*id, kind))
    }

    /// Whether the index knows the blob.
    pub fn contains(&self, id: &Id, kind: BlobType) -> bool {
        self.blobs.contains_key(&(*id, kind))
    }

    /// Every pack the index references.
    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.packs.keys()
    }

    /// Every blob with its location.
    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter().map(|((id, _), loc)| (id, loc))
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}
