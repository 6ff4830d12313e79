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
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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

/// Prune the store under its exclusive lock (a dry run says what it would
/// remove and changes nothing). On a region pair both regions must be
/// whole, and stay answering throughout.
pub async fn run(store: &super::Store, dry_run: bool) -> super::Result<PruneReport> {
    store.require_whole_pair("prune")?;
    let lock = store.repo.lock(true).await?;
    // prune reads the index under the lock: no backup can add to it
    // meanwhile.
    Ok(prune(&store.repo, dry_run, &|| store.still_safe(&lock)).await?)
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
        .save(FileType::Pack, &id.to_hex(), bytes.into_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{backed_up, memory_repo, noise, runtime, store};

    async fn read_back(repo: &Arc<Repository>, snapshot: &Id) -> Vec<Vec<u8>> {
        repo.load_index().await.unwrap();
        let (_, snap) = repo.load_snapshot(&snapshot.to_hex()).await.unwrap();
        let tree = repo.load_tree(&snap.tree).await.unwrap();
        let mut out = Vec::new();
        for n in tree.nodes {
            for blob in n.content.unwrap_or_default() {
                out.push(repo.load_blob(&blob, BlobType::Data).await.unwrap());
            }
        }
        out
    }

    #[test]
    fn the_packs_of_a_forgotten_snapshot_go_and_the_kept_one_still_reads() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            let (a, b) = (noise(1, 200_000), noise(2, 300_000));
            let kept = backed_up(&repo, &[("a", &a)], 2, "h").await;
            let gone = backed_up(&repo, &[("b", &b)], 1, "h").await;
            let packs_before = backend.names(FileType::Pack).len();
            repo.backend()
                .remove(FileType::Snapshot, &gone.to_hex())
                .await
                .unwrap();
            let report = run(&store(&repo), false).await.unwrap();
            assert_eq!(report.snapshots, 1);
            assert!(report.packs_removed >= 1, "{report:?}");
            assert!(report.bytes_freed >= 300_000, "{report:?}");
            assert!(backend.names(FileType::Pack).len() < packs_before);
            assert_eq!(read_back(&repo, &kept).await, vec![a]);
            let check = crate::ops::check::check(&repo, true).await.unwrap();
            assert!(check.errors.is_empty(), "{:?}", check.errors);
        });
    }

    #[test]
    fn a_dry_run_says_what_it_would_free_and_changes_nothing() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            backed_up(&repo, &[("a", &noise(3, 100_000))], 2, "h").await;
            let gone = backed_up(&repo, &[("b", &noise(4, 100_000))], 1, "h").await;
            repo.backend()
                .remove(FileType::Snapshot, &gone.to_hex())
                .await
                .unwrap();
            let packs = backend.names(FileType::Pack);
            let index = backend.names(FileType::Index);
            let report = run(&store(&repo), true).await.unwrap();
            assert!(report.packs_removed >= 1, "{report:?}");
            assert_eq!(backend.names(FileType::Pack), packs);
            assert_eq!(backend.names(FileType::Index), index);
        });
    }

    #[test]
    fn a_pack_partly_in_use_is_repacked_with_only_the_blobs_in_use() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            let (a, b) = (noise(5, 150_000), noise(6, 150_000));
            // One pipeline: both blobs land in one pack.
            let tree_a = crate::testing::store_tree(&repo, &[("a", &a), ("b", &b)]).await;
            let both = repo
                .save_snapshot(&crate::testing::snapshot(tree_a, 2, "h"))
                .await
                .unwrap();
            let only_a = backed_up(&repo, &[("a", &a)], 1, "h").await;
            // a and b share a data pack; each snapshot has its tree pack.
            assert_eq!(backend.names(FileType::Pack).len(), 3);
            repo.backend()
                .remove(FileType::Snapshot, &both.to_hex())
                .await
                .unwrap();
            let report = run(&store(&repo), false).await.unwrap();
            assert_eq!(report.packs_repacked, 1, "{report:?}");
            assert_eq!(report.blobs_repacked, 1, "{report:?}");
            assert_eq!(read_back(&repo, &only_a).await, vec![a]);
            let check = crate::ops::check::check(&repo, true).await.unwrap();
            assert!(check.errors.is_empty(), "{:?}", check.errors);
        });
    }

    #[test]
    fn a_prune_that_is_no_longer_safe_stops_before_removing_anything() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            backed_up(&repo, &[("a", &noise(7, 50_000))], 2, "h").await;
            let gone = backed_up(&repo, &[("b", &noise(8, 50_000))], 1, "h").await;
            repo.backend()
                .remove(FileType::Snapshot, &gone.to_hex())
                .await
                .unwrap();
            let packs = backend.names(FileType::Pack);
            let unsafe_now = || {
                Err(RepoError::Unsafe(
                    "region eu-west-1 stopped answering".into(),
                ))
            };
            let e = prune(&repo, false, &unsafe_now).await.unwrap_err();
            assert!(e.to_string().contains("eu-west-1"), "{e}");
            assert_eq!(backend.names(FileType::Pack), packs);
        });
    }

    #[test]
    fn a_pack_no_index_lists_is_removed() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            backed_up(&repo, &[("a", &noise(9, 10_000))], 1, "h").await;
            // An interrupted backup's pack: uploaded, never indexed.
            let (bytes, id, _) = {
                let mut b = PackBuilder::with_capacity(1 << 16);
                let plain = noise(10, 5_000);
                b.add(
                    Id::hash(&plain),
                    BlobType::Data,
                    &repo.key().encrypt(&plain),
                    None,
                );
                b.finish(repo.key())
            };
            backend.put_raw(FileType::Pack, &id.to_hex(), bytes.to_vec());
            let report = run(&store(&repo), false).await.unwrap();
            assert_eq!(report.packs_unreferenced, 1, "{report:?}");
            assert!(!backend.names(FileType::Pack).contains(&id.to_hex()));
        });
    }

    #[test]
    fn on_a_storage_failure_midway_the_repository_still_checks() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("prune").await;
            let (a, b) = (noise(11, 80_000), noise(12, 80_000));
            let tree = crate::testing::store_tree(&repo, &[("a", &a), ("b", &b)]).await;
            let both = repo
                .save_snapshot(&crate::testing::snapshot(tree, 2, "h"))
                .await
                .unwrap();
            let only_a = backed_up(&repo, &[("a", &a)], 1, "h").await;
            repo.backend()
                .remove(FileType::Snapshot, &both.to_hex())
                .await
                .unwrap();
            // The new index is the second write (after the repacked pack
            // and with the lock file first): each failure point in turn.
            for nth in 1..=4 {
                backend.fail_nth_save(nth);
                let _ = run(&store(&repo), false).await;
                repo.load_index().await.unwrap();
                let check = crate::ops::check::check(&repo, true).await.unwrap();
                assert!(
                    check.errors.is_empty(),
                    "failing save {nth}: {:?}",
                    check.errors
                );
                assert_eq!(read_back(&repo, &only_a).await, vec![a.clone()]);
            }
        });
    }
}
