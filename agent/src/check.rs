//! `check`: prove the repository is whole. Structure first (index, packs,
//! snapshots, trees, every referenced blob indexed), then with `read_data`
//! every pack is read, its name and header verified and every blob
//! authenticated and hashed.

use crate::repo::index::BlobLocation;
use crate::repo::pack::{self, BlobType};
use crate::repo::{Id, RepoError, Repository, decode_blob};
use crate::storage::FileType;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Packs `check --read-data` holds in memory at once, at most.
const CHECK_PACKS_IN_FLIGHT: usize = 2;

/// What `check` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees read.
    pub trees: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs read in full (with `read_data`).
    pub packs_read: usize,
    /// Packs present in storage but in no index (harmless leftovers of an
    /// interrupted backup).
    pub unreferenced_packs: Vec<String>,
    /// Errors, each naming the object; the repository is damaged if any.
    pub errors: Vec<String>,
}

/// Check the repository. Errors that stop the check early (storage down,
/// wrong key) are returned as `Err`; damage is listed in the report.
pub async fn check(repo: &Arc<Repository>, read_data: bool) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();

    // Index files: every one must load.
    let mut contents = crate::repo::index::PackContents::default();
    let mut index = crate::repo::index::Index::default();
    let mut files = repo.index_files().await?;
    while let Some((_, file)) = files.next().await {
        match file {
            Ok(file) => {
                index.add_file(&file);
                contents.add_file(file);
            }
            // The error names the file.
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    drop(files);
    // Check against what the readable index files say, so one damaged
    // index file is reported instead of hiding everything else.
    repo.set_index(index);
    let index_packs = contents.into_packs();
    report.packs = index_packs.len();

    // Packs: indexed ones must exist; stored ones should be indexed.
    let stored: HashMap<String, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .collect();
    for (pack, blobs) in &index_packs {
        let Some(&size) = stored.get(&pack.to_hex()) else {
            report.errors.push(format!(
                "pack {pack}: referenced by the index but missing from storage"
            ));
            continue;
        };
        // A pack is its blobs, the encrypted header listing them, and the
        // header's length: anything else means truncation or damage.
        let expected = blobs.iter().map(|(_, l)| l.length as u64).sum::<u64>()
            + crate::repo::crypto::OVERHEAD as u64
            + blobs
                .iter()
                .map(|(_, l)| pack::header_entry_len(l.uncompressed_length.is_some()))
                .sum::<u64>()
            + 4;
        if size != expected {
            report.errors.push(format!(
                "pack {pack}: {size} bytes in storage, but its index entries add up to {expected}: the pack is truncated or damaged"
            ));
        }
    }
    for name in stored.keys() {
        if Id::parse(name).is_none_or(|id| !index_packs.contains_key(&id)) {
            report.unreferenced_packs.push(name.clone());
        }
    }
    report.unreferenced_packs.sort();

    // Snapshots and trees.
    // Snapshots each on its own: a damaged one must not hide the others.
    let mut snapshots = Vec::new();
    let mut loaded = repo.snapshot_files().await?;
    while let Some((_, snap)) = loaded.next().await {
        match snap {
            Ok(s) => snapshots.push(s),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    drop(loaded);
    report.snapshots = snapshots.len();
    let mut seen_trees = HashSet::new();
    let mut todo: Vec<(Id, String)> = snapshots
        .iter()
        .map(|(id, s)| (s.tree, format!("snapshot {}", id.short())))
        .collect();
    // Level by level, each level's trees read several at once: against
    // object storage each tree is a round trip.
    while !todo.is_empty() {
        let level: Vec<(Id, String)> = std::mem::take(&mut todo)
            .into_iter()
            .filter(|(id, _)| seen_trees.insert(*id))
            .collect();
        let mut loaded =
            futures::stream::iter(level)
                .map(|(tree_id, context)| async move {
                    (tree_id, repo.load_tree(&tree_id).await, context)
                })
                .buffered(repo.connections());
        while let Some((tree_id, tree, context)) = loaded.next().await {
            check_tree(&mut report, &mut todo, repo, tree_id, tree, context);
        }
    }
    if read_data {
        let mut packs: Vec<_> = index_packs.into_iter().collect();
        packs.sort_by_key(|(id, _)| *id);
        packs.retain(|(id, _)| stored.contains_key(&id.to_hex()));
        report.packs_read = packs.len();
        // Packs are read whole, CHECK_PACKS_IN_FLIGHT at once: two keep
        // both cores busy; four used twice restic's memory (benches/s3.sh).
        let mut checked = futures::stream::iter(packs)
            .map(|(pack_id, blobs)| async move {
                let bytes = match repo.backend().load(FileType::Pack, &pack_id.to_hex()).await {
                    Ok(b) => b,
                    Err(e) => return Ok(vec![format!("pack {pack_id}: {e}")]),
                };
                let key = repo.key().clone();
                tokio::task::spawn_blocking(move || verify_pack(&key, pack_id, &bytes, &blobs))
                    .await
                    .map_err(|e| RepoError::Corrupt {
                        what: format!("pack {pack_id}"),
                        reason: e.to_string(),
                    })
            })
            .buffered(repo.connections().min(CHECK_PACKS_IN_FLIGHT));
        while let Some(errors) = checked.next().await {
            report.errors.extend(errors?);
        }
    }
    Ok(report)
}

/// Check one tree read during the walk (or the error reading it), and
/// queue its subtrees in `todo`.
fn check_tree(
    report: &mut CheckReport,
    todo: &mut Vec<(Id, String)>,
    repo: &Repository,
    tree_id: Id,
    tree: Result<crate::repo::tree::Tree, RepoError>,
    context: String,
) {
    let tree = match tree {
        Ok(t) => t,
        Err(e) => {
            report
                .errors
                .push(format!("tree {tree_id} (in {context}): {e}"));
            return;
        }
    };
    report.trees += 1;
    // Names a restore could not create, or that repeat: restore passes
    // over such entries, so the snapshot is not whole.
    let mut names = HashSet::new();
    for node in &tree.nodes {
        if let Some(p) = crate::restore::name_problem(&node.name) {
            report.errors.push(format!(
                "tree {tree_id} (in {context}): entry {}: {p}",
                crate::util::escaped(&node.name)
            ));
        } else if !names.insert(node.name.as_str()) {
            report.errors.push(format!(
                "tree {tree_id} (in {context}): entry {} appears twice",
                crate::util::escaped(&node.name)
            ));
        }
    }
    for node in tree.nodes {
        match node.kind.as_str() {
            "file" => match &node.content {
                None => report.errors.push(format!(
                    "tree {tree_id}: file {:?} has no content list",
                    node.name
                )),
                Some(content) => {
                    for blob in content {
                        match repo.locate(blob, BlobType::Data) {
                            Some(loc) if loc.kind == BlobType::Data => {}
                            _ => report.errors.push(format!(
                                "tree {tree_id}: file {:?}: data blob {blob} is not in the index",
                                node.name
                            )),
                        }
                    }
                }
            },
            "dir" => match node.subtree {
                Some(sub) => todo.push((sub, format!("{context}/{}", node.name))),
                None => report.errors.push(format!(
                    "tree {tree_id}: directory {:?} has no subtree",
                    node.name
                )),
            },
            _ => {}
        }
    }
}

fn verify_pack(
    key: &crate::repo::crypto::Key,
    pack_id: Id,
    bytes: &[u8],
    blobs: &[(Id, BlobLocation)],
) -> Vec<String> {
    let mut errors = Vec::new();
    if Id::hash(bytes) != pack_id {
        errors.push(format!(
            "pack {pack_id}: content does not match its name (SHA-256): the file is damaged"
        ));
    }
    let header = (|| {
        let trailer: [u8; 4] = bytes.get(bytes.len().checked_sub(4)?..)?.try_into().ok()?;
        let hlen = pack::header_length_from_trailer(&trailer, bytes.len() as u64).ok()? as usize;
        let start = bytes.len() - 4 - hlen;
        pack::parse_header(key, &bytes[start..bytes.len() - 4]).ok()
    })();
    match header {
        None => errors.push(format!("pack {pack_id}: header is damaged or unreadable")),
        Some(entries) => {
            let in_header: HashSet<(Id, u32)> = entries.iter().map(|e| (e.id, e.offset)).collect();
            for (id, loc) in blobs {
                if !in_header.contains(&(*id, loc.offset)) {
                    errors.push(format!(
                        "pack {pack_id}: blob {id} is in the index but not in the pack header"
                    ));
                }
            }
        }
    }
    for (id, loc) in blobs {
        let start = loc.offset as usize;
        let Some(stored) = bytes.get(start..start + loc.length as usize) else {
            errors.push(format!(
                "pack {pack_id}: blob {id} lies beyond the end of the pack"
            ));
            continue;
        };
        if let Err(e) = decode_blob(key, id, loc, stored) {
            errors.push(format!("pack {pack_id}: blob {id}: {e}"));
        }
    }
    errors
}
