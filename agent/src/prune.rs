//! `prune`: remove the data no snapshot references any more.
//!
//! Under the repository's exclusive lock: every snapshot's trees are walked
//! to find the blobs in use (any snapshot, tree or index that cannot be read
//! stops the prune before anything is written or removed). Packs whose
//! blobs are all in use stay; packs with none in use go; packs with some
//! are repacked: their used blobs, each authenticated and hashed on the
//! way, are copied as they are stored (still encrypted and compressed) into
//! new packs. Packs no index mentions (an interrupted backup's) go too.
//!
//! The order makes a crash at any point harmless: new packs, then a new
//! index covering every pack that stays, then the old index files, then the
//! packs that are no longer needed. A crash leaves either both indexes (the
//! same blobs listed twice, which restic's format allows) or packs nothing
//! references, which the next prune removes; `check` accepts both. Before
//! each step the caller confirms the lock is still held and, on a region
//! pair, that both regions answer.

use crate::pipeline::PACK_SIZE;
use crate::repo::index::{BlobLocation, IndexBuilder, IndexPack, PackContents};
use crate::repo::pack::{BlobType, PackBuilder};
use crate::repo::{Id, RepoError, Repository, decode_blob};
use crate::storage::FileType;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a prune did, or with `dry_run` would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Snapshots whose trees were walked.
    pub snapshots: usize,
    /// Distinct blobs in use.
    pub blobs_used: usize,
    /// Packs kept as they are.
    pub packs_kept: usize,
    /// Packs removed whole (no blob in use).
    pub packs_removed: usize,
    /// Packs whose used blobs were copied into new packs, then removed.
    pub packs_repacked: usize,
    /// Packs in storage that no index mentioned, removed.
    pub packs_unreferenced: usize,
    /// New packs written by repacking.
    pub packs_written: usize,
    /// Blobs copied into new packs.
    pub blobs_repacked: usize,
    /// Stored bytes removed (packs removed, minus new packs written).
    pub bytes_freed: u64,
    /// Index files replaced by the new index.
    pub index_files_replaced: usize,
    /// Temporary files writers left (a crash, a full disk), removed.
    pub temporary_files_removed: usize,
}

/// A temporary file nothing touched for this long is a leftover: no writer
/// goes this long without writing, and prune holds the exclusive lock.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Prune `repo`; it reads the index itself, under the lock. The caller
/// holds the exclusive lock; `still_safe` says whether going on is (the
/// lock is still ours, no region stopped answering), and is asked before
/// each step that writes or removes.
pub async fn prune(
    repo: &Arc<Repository>,
    dry_run: bool,
    still_safe: &(dyn Fn() -> Result<(), RepoError> + Sync),
) -> Result<PruneReport, RepoError> {
    let mut report = PruneReport::default();

    // Every index file, by name, read once, several at once: the index the
    // tree walk below looks blobs up in, and each pack's blobs (a pack
    // listed by several files is one pack). One that cannot be read stops
    // the prune. The caller holds the exclusive lock.
    let mut index_names = Vec::new();
    let mut index = IndexBuilder::default();
    let mut contents = PackContents::default();
    let mut files = repo.index_files().await?;
    while let Some((name, file)) = files.next().await {
        let file = file?;
        index.add_file(&file);
        contents.add_file(file);
        index_names.push(name);
    }
    drop(files);
    repo.set_index(index.finish());
    let packs = contents.into_packs();

    // The blobs in use: walk every snapshot's trees.
    let used = used_blobs(repo, &mut report).await?;
    report.blobs_used = used.len();

    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .collect();

    // Decide per pack. A blob stored twice is kept once: the first pack
    // (in id order) that holds it and stays whole, else the first one.
    let mut claimed: HashSet<(Id, BlobType)> = HashSet::new();
    let whole: Vec<Id> = packs
        .iter()
        .filter(|(_, blobs)| blobs.iter().all(|(id, l)| used.contains(&(*id, l.kind))))
        .map(|(id, _)| *id)
        .collect();
    let mut keep: Vec<Id> = Vec::new();
    let mut keeping: HashSet<Id> = HashSet::new();
    for id in &whole {
        let blobs = &packs[id];
        if blobs
            .iter()
            .all(|(id, l)| !claimed.contains(&(*id, l.kind)))
        {
            claimed.extend(blobs.iter().map(|(id, l)| (*id, l.kind)));
            keep.push(*id);
            keeping.insert(*id);
        }
    }
    let mut repack: Vec<(Id, Vec<(Id, BlobLocation)>)> = Vec::new();
    let mut remove: Vec<Id> = Vec::new();
    for (id, blobs) in &packs {
        if keeping.contains(id) {
            continue;
        }
        let needed: Vec<(Id, BlobLocation)> = blobs
            .iter()
            .filter(|(id, l)| used.contains(&(*id, l.kind)) && claimed.insert((*id, l.kind)))
            .copied()
            .collect();
        if needed.is_empty() {
            remove.push(*id);
        } else {
            repack.push((*id, needed));
        }
    }
    // Every blob in use must be somewhere that stays.
    if let Some((id, kind)) = used.iter().find(|b| !claimed.contains(*b)) {
        return Err(RepoError::corrupt(
            format!("{kind:?} blob {id}"),
            "a snapshot uses it but no index lists it; run `cairn check`, nothing was pruned",
        ));
    }
    for id in keep.iter().chain(repack.iter().map(|(id, _)| id)) {
        if !stored.contains_key(&id.to_hex()) {
            return Err(RepoError::corrupt(
                format!("pack {id}"),
                "the index lists it but storage does not have it; run `cairn check`, nothing was pruned",
            ));
        }
    }
    let indexed: HashSet<String> = packs.keys().map(Id::to_hex).collect();
    let unreferenced: Vec<String> = stored
        .keys()
        .filter(|name| !indexed.contains(*name))
        .cloned()
        .collect();
    report.packs_kept = keep.len();
    report.packs_removed = remove.len();
    report.packs_repacked = repack.len();
    report.packs_unreferenced = unreferenced.len();
    report.index_files_replaced = index_names.len();
    let size_of = |id: &Id| stored.get(&id.to_hex()).copied().unwrap_or(0);
    let mut freed: u64 = remove
        .iter()
        .chain(repack.iter().map(|(id, _)| id))
        .map(size_of)
        .sum();
    freed += unreferenced
        .iter()
        .map(|n| stored.get(n).copied().unwrap_or(0))
        .sum::<u64>();
    if dry_run {
        // The repacked blobs are written again: only the rest is freed.
        let moved: u64 = repack
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(_, l)| l.length as u64))
            .sum();
        report.blobs_repacked = repack.iter().map(|(_, b)| b.len()).sum();
        report.bytes_freed = freed.saturating_sub(moved);
        return Ok(report);
    }
    still_safe()?;
    report.temporary_files_removed = repo
        .backend()
        .remove_stale_temporary(STALE_TEMPORARY)
        .await?;
    let nothing_to_do = remove.is_empty() && repack.is_empty() && unreferenced.is_empty();
    if nothing_to_do {
        report.index_files_replaced = 0;
        return Ok(report);
    }

    // 1. New packs holding the used blobs of the packs being repacked;
    // trees and data in packs of their own, as restic expects (it caches
    // every pack holding a tree).
    still_safe()?;
    let mut new_packs: Vec<IndexPack> = Vec::new();
    let mut written: u64 = 0;
    let mut data = PackBuilder::with_capacity(PACK_SIZE);
    let mut trees = PackBuilder::with_capacity(PACK_SIZE);
    for (pack, needed) in &repack {
        let bytes = repo.backend().load(FileType::Pack, &pack.to_hex()).await?;
        for (id, l) in needed {
            let (start, end) = (l.offset as usize, l.offset as usize + l.length as usize);
            let stored_blob = bytes.get(start..end).ok_or_else(|| {
                RepoError::corrupt(format!("pack {pack}"), "shorter than its index says")
            })?;
            // Authenticate, decompress and hash before copying: damage is
            // never carried into a new pack.
            decode_blob(repo.key(), id, l, stored_blob)?;
            let builder = match l.kind {
                BlobType::Data => &mut data,
                BlobType::Tree => &mut trees,
            };
            builder.add(*id, l.kind, stored_blob, l.uncompressed_length);
            report.blobs_repacked += 1;
            if builder.len() >= PACK_SIZE {
                let full = std::mem::replace(builder, PackBuilder::with_capacity(PACK_SIZE));
                written += save_pack(repo, full, &mut new_packs).await?;
            }
        }
    }
    for builder in [data, trees] {
        if !builder.is_empty() {
            written += save_pack(repo, builder, &mut new_packs).await?;
        }
    }
    report.packs_written = new_packs.len();

    // 2. A new index: the packs that stay as they are, and the new ones.
    let mut entries: Vec<IndexPack> = keep
        .iter()
        .map(|id| IndexPack::from_locations(*id, &packs[id]))
        .collect();
    entries.extend(new_packs);
    still_safe()?;
    repo.save_index(entries).await?;

    // 3. The old index files, then 4. the packs nothing lists any more.
    still_safe()?;
    for name in &index_names {
        repo.backend().remove(FileType::Index, name).await?;
    }
    still_safe()?;
    for id in remove.iter().chain(repack.iter().map(|(id, _)| id)) {
        repo.backend().remove(FileType::Pack, &id.to_hex()).await?;
    }
    for name in &unreferenced {
        repo.backend().remove(FileType::Pack, name).await?;
    }
    report.bytes_freed = freed.saturating_sub(written);
    repo.load_index().await?;
    Ok(report)
}

/// Seal `builder` into a pack, store it, and note its index entry; returns
/// its size.
async fn save_pack(
    repo: &Repository,
    builder: PackBuilder,
    new_packs: &mut Vec<IndexPack>,
) -> Result<u64, RepoError> {
    let (bytes, id, blobs) = builder.finish(repo.key());
    let size = bytes.len() as u64;
    repo.backend()
        .save(FileType::Pack, &id.to_hex(), bytes.into())
        .await?;
    new_packs.push(IndexPack::new(id, &blobs));
    Ok(size)
}

/// Every blob some snapshot uses: its trees, and the content of its files.
async fn used_blobs(
    repo: &Arc<Repository>,
    report: &mut PruneReport,
) -> Result<HashSet<(Id, BlobType)>, RepoError> {
    // Every snapshot must be known: a damaged one's data would look unused.
    let snapshots = repo.snapshots_strict().await?;
    report.snapshots = snapshots.len();
    let mut used = HashSet::new();
    let mut todo: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).collect();
    while let Some(tree_id) = todo.pop() {
        if !used.insert((tree_id, BlobType::Tree)) {
            continue;
        }
        let tree = repo.load_tree(&tree_id).await?;
        for node in tree.nodes {
            if let Some(content) = node.content {
                used.extend(content.into_iter().map(|id| (id, BlobType::Data)));
            }
            if let Some(sub) = node.subtree {
                todo.push(sub);
            }
        }
    }
    Ok(used)
}
