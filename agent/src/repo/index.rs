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

/// One blob's entry in the in-memory index: 48 bytes, so an index of
/// millions of blobs costs what its entries do (docs/benchmarks.md).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: Id,
    /// The pack's number in [`Index::pack_ids`]; the top bit marks a tree.
    pack: u32,
    offset: u32,
    length: u32,
    /// [`NOT_COMPRESSED`] for a blob stored without compression.
    uncompressed: u32,
}

const TREE_BIT: u32 = 1 << 31;
/// No blob is 4 GiB long: the length marks one stored uncompressed.
const NOT_COMPRESSED: u32 = u32::MAX;

impl Entry {
    fn kind(&self) -> BlobType {
        if self.pack & TREE_BIT != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }

    /// What lookups and the sort order compare.
    fn key(&self) -> (&Id, bool) {
        (&self.id, self.pack & TREE_BIT != 0)
    }
}

/// The merged, in-memory index of a repository: the entries of every index
/// file in one sorted array, looked up by binary search, and the few packs
/// written since in a small map. Built by [`IndexBuilder`].
#[derive(Debug, Default)]
pub struct Index {
    pack_ids: Vec<Id>,
    pack_numbers: HashMap<Id, u32>,
    /// By (id, type), each once.
    sorted: Vec<Entry>,
    /// Blobs added after the index was built (packs a backup writes),
    /// keyed by id *and* type, as restic does: a tree and a file may hold
    /// the same bytes (an empty directory's JSON, say).
    recent: HashMap<(Id, BlobType), Entry>,
}

/// Gathers index files into an [`Index`]. Each file's entries are kept in
/// an array of their own size, then moved into one exactly sized array and
/// sorted, so memory never holds a half-empty table or two copies.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    index: Index,
    parts: Vec<Vec<Entry>>,
}

impl IndexBuilder {
    /// Add every blob of an index file.
    pub fn add_file(&mut self, file: &IndexFile) {
        let mut part = Vec::with_capacity(file.packs.iter().map(|p| p.blobs.len()).sum());
        for p in &file.packs {
            let number = self.index.number(p.id);
            part.extend(p.blobs.iter().map(|b| Entry::of(number, b)));
        }
        self.parts.push(part);
    }

    /// The index. Where index files list a blob more than once, one
    /// location is kept: in the pack seen first, at its lowest offset.
    /// (Writers list a blob once; only a damaged or hand-made index lists
    /// it twice, and then either copy is as good a claim as the other.)
    pub fn finish(mut self) -> Index {
        let total = self.parts.iter().map(Vec::len).sum();
        let mut sorted = Vec::with_capacity(total);
        for part in self.parts {
            sorted.extend_from_slice(&part);
        }
        // Pack numbers follow the order packs were first seen.
        sorted.sort_unstable_by(|a: &Entry, b: &Entry| {
            a.key()
                .cmp(&b.key())
                .then((a.pack & !TREE_BIT).cmp(&(b.pack & !TREE_BIT)))
                .then(a.offset.cmp(&b.offset))
        });
        sorted.dedup_by(|later, first| later.key() == first.key());
        sorted.shrink_to_fit();
        self.index.sorted = sorted;
        self.index
    }
}

impl Entry {
    fn of(pack: u32, b: &IndexBlob) -> Self {
        Entry {
            id: b.id,
            pack: match b.kind {
                BlobType::Data => pack,
                BlobType::Tree => pack | TREE_BIT,
            },
            offset: b.offset,
            length: b.length,
            uncompressed: b.uncompressed_length.unwrap_or(NOT_COMPRESSED),
        }
    }
}

impl Index {
    /// A pack's number, given on first sight.
    fn number(&mut self, pack: Id) -> u32 {
        *self.pack_numbers.entry(pack).or_insert_with(|| {
            self.pack_ids.push(pack);
            (self.pack_ids.len() - 1) as u32
        })
    }

    /// Add one freshly written pack's blobs. A blob the index knows keeps
    /// its location.
    pub fn add_pack(&mut self, p: &IndexPack) {
        let number = self.number(p.id);
        for b in &p.blobs {
            if self.sorted_entry(&b.id, b.kind).is_none() {
                self.recent
                    .entry((b.id, b.kind))
                    .or_insert_with(|| Entry::of(number, b));
            }
        }
    }

    fn sorted_entry(&self, id: &Id, kind: BlobType) -> Option<&Entry> {
        let key = (id, kind == BlobType::Tree);
        let i = self.sorted.partition_point(|e| e.key() < key);
        self.sorted.get(i).filter(|e| e.key() == key)
    }

    /// Where a blob is, if the index knows it.
    pub fn get(&self, id: &Id, kind: BlobType) -> Option<BlobLocation> {
        let e = self
            .sorted_entry(id, kind)
            .or_else(|| self.recent.get(&(*id, kind)))?;
        Some(BlobLocation {
            pack: self.pack_ids[(e.pack & !TREE_BIT) as usize],
            kind: e.kind(),
            offset: e.offset,
            length: e.length,
            uncompressed_length: (e.uncompressed != NOT_COMPRESSED).then_some(e.uncompressed),
        })
    }

    /// Whether the index knows the blob.
    pub fn contains(&self, id: &Id, kind: BlobType) -> bool {
        self.sorted_entry(id, kind).is_some() || self.recent.contains_key(&(*id, kind))
    }

    /// Every pack the index references.
    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.pack_ids.iter()
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, kind: BlobType, offset: u32) -> IndexBlob {
        IndexBlob {
            id: Id([n; 32]),
            kind,
            offset,
            length: 100,
            uncompressed_length: (kind == BlobType::Data).then_some(300),
        }
    }

    fn file(packs: Vec<(u8, Vec<IndexBlob>)>) -> IndexFile {
        IndexFile {
            supersedes: None,
            packs: packs
                .into_iter()
                .map(|(p, blobs)| IndexPack {
                    id: Id([p; 32]),
                    blobs,
                })
                .collect(),
        }
    }

    #[test]
    fn finds_every_blob_by_id_and_type_and_the_first_location_wins() {
        let mut b = IndexBuilder::default();
        b.add_file(&file(vec![(
            200,
            vec![blob(3, BlobType::Data, 0), blob(1, BlobType::Tree, 100)],
        )]));
        // Pack 100 is seen after pack 200: its copy of blob 3 loses, though
        // its id sorts first.
        b.add_file(&file(vec![
            (
                100,
                vec![blob(3, BlobType::Data, 500), blob(2, BlobType::Data, 0)],
            ),
            (200, vec![blob(1, BlobType::Data, 200)]),
        ]));
        let index = b.finish();
        assert_eq!(index.len(), 4);
        let l = index.get(&Id([3; 32]), BlobType::Data).unwrap();
        assert_eq!((l.pack, l.offset), (Id([200; 32]), 0));
        assert_eq!(l.uncompressed_length, Some(300));
        // The same id as a tree and as data: two blobs.
        let t = index.get(&Id([1; 32]), BlobType::Tree).unwrap();
        assert_eq!(
            (t.pack, t.offset, t.kind),
            (Id([200; 32]), 100, BlobType::Tree)
        );
        assert_eq!(t.uncompressed_length, None);
        let d = index.get(&Id([1; 32]), BlobType::Data).unwrap();
        assert_eq!(
            (d.pack, d.offset, d.kind),
            (Id([200; 32]), 200, BlobType::Data)
        );
        assert!(index.get(&Id([2; 32]), BlobType::Tree).is_none());
        assert!(index.get(&Id([4; 32]), BlobType::Data).is_none());
        let mut packs: Vec<_> = index.packs().copied().collect();
        packs.sort();
        assert_eq!(packs, vec![Id([100; 32]), Id([200; 32])]);
    }

    #[test]
    fn packs_added_later_are_found_and_do_not_move_known_blobs() {
        let mut b = IndexBuilder::default();
        b.add_file(&file(vec![(10, vec![blob(1, BlobType::Data, 0)])]));
        let mut index = b.finish();
        index.add_pack(&IndexPack {
            id: Id([20; 32]),
            blobs: vec![blob(1, BlobType::Data, 7), blob(5, BlobType::Tree, 9)],
        });
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.get(&Id([1; 32]), BlobType::Data).unwrap().pack,
            Id([10; 32])
        );
        let l = index.get(&Id([5; 32]), BlobType::Tree).unwrap();
        assert_eq!((l.pack, l.offset), (Id([20; 32]), 9));
        assert!(index.contains(&Id([5; 32]), BlobType::Tree));
        assert!(!index.contains(&Id([5; 32]), BlobType::Data));
        assert_eq!(index.packs().count(), 2);
        assert!(Index::default().is_empty());
    }
}
