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

/// Check the store under a shared lock; `read_data` reads every pack. On a
/// region pair every region is checked: a listing that fails is an error,
/// not a region quietly left out.
pub async fn run(store: &super::Store, read_data: bool) -> super::Result<CheckReport> {
    if let Some(pair) = &store.pair {
        pair.set_strict_listing(true);
        if let Some((region, why)) = pair.lagging().into_iter().next() {
            return Err(super::Error::Residency(format!(
                "region {region} of the tenant's pair is not usable ({why}); check needs both"
            )));
        }
    }
    let _lock = store.read_lock().await?;
    Ok(check(&store.repo, read_data).await?)
}

/// Packs `check --read-data` holds in memory at once, at most.
const CHECK_PACKS_IN_FLIGHT: usize = 2;

/// What `check` found.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
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
    let mut index = crate::repo::index::IndexBuilder::default();
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
    repo.set_index(index.finish());
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
        let expected =
            blobs.iter().map(|(_, l)| l.length as u64).sum::<u64>() + header_and_trailer(blobs);
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
        // CHECK_PACKS_IN_FLIGHT packs at once, each read in pieces: two
        // keep both cores busy; whole packs, four at once, used twice
        // restic's memory (benches/compare.sh).
        let stored = &stored;
        let mut checked = futures::stream::iter(packs)
            .map(|(pack_id, blobs)| async move {
                let size = stored[&pack_id.to_hex()];
                check_pack(repo, pack_id, size, blobs).await
            })
            .buffered(repo.connections().min(CHECK_PACKS_IN_FLIGHT));
        while let Some(errors) = checked.next().await {
            report.errors.extend(errors);
        }
    }
    Ok(report)
}

/// The bytes a pack holding `blobs` ends with: its encrypted header and
/// the header's length.
fn header_and_trailer(blobs: &[(Id, BlobLocation)]) -> u64 {
    crate::repo::crypto::OVERHEAD as u64
        + blobs
            .iter()
            .map(|(_, l)| pack::header_entry_len(l.uncompressed_length.is_some()))
            .sum::<u64>()
        + 4
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
        if let Some(p) = crate::read::name_problem(&node.name) {
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

/// Bytes of a pack `check --read-data` asks for with one request. A pack
/// is read in pieces this size, one after another, so memory holds a piece
/// and the blobs it cuts through, not the whole pack.
const CHECK_PIECE: u64 = 4 << 20;

/// Check one pack: read in pieces; if that finds damage and the store
/// keeps more than one copy, read it whole again, as such a store checks a
/// whole file (its SHA-256 name) and heals it from the good copy. A single
/// store would return the same bytes: its damage is reported as found,
/// without a second read. Returns the damage found.
async fn check_pack(
    repo: &Repository,
    pack_id: Id,
    size: u64,
    blobs: Vec<(Id, BlobLocation)>,
) -> Vec<String> {
    let (mut errors, blobs) = check_pack_in_pieces(repo, pack_id, size, blobs).await;
    if errors.is_empty() || repo.backend().copies() < 2 {
        return errors;
    }
    match repo.backend().load(FileType::Pack, &pack_id.to_hex()).await {
        Ok(bytes) => {
            let key = repo.key().clone();
            crate::util::blocking(move || verify_pack(&key, pack_id, &bytes, &blobs)).await
        }
        // What the pieces showed stands, with why the copies could not
        // be read whole.
        Err(e) => {
            errors.push(format!("pack {pack_id}: {e}"));
            errors
        }
    }
}

/// Read one pack in pieces and check it: its bytes against its name, its
/// header against the index, every blob (MAC, zstd, SHA-256). The next
/// piece is fetched while the last one is checked. Returns the damage
/// found, and the blobs.
async fn check_pack_in_pieces(
    repo: &Repository,
    pack_id: Id,
    size: u64,
    blobs: Vec<(Id, BlobLocation)>,
) -> (Vec<String>, Vec<(Id, BlobLocation)>) {
    let name = pack_id.to_hex();
    let fetch = |pos: u64| {
        let name = &name;
        async move {
            let len = CHECK_PIECE.min(size - pos);
            match repo
                .backend()
                .load_range(FileType::Pack, name, pos, len)
                .await
            {
                Ok(b) if b.len() as u64 == len => Ok(b),
                Ok(b) => Err(format!(
                    "pack {pack_id}: storage returned {} bytes at offset {pos} where {len} were asked for",
                    b.len()
                )),
                Err(e) => Err(format!("pack {pack_id}: {e}")),
            }
        }
    };
    let mut state = PackCheck::new(repo.key().clone(), pack_id, size, blobs);
    if size == 0 {
        return state.finish();
    }
    let mut piece = match fetch(0).await {
        Ok(p) => p,
        Err(e) => return (vec![e], state.blobs),
    };
    let mut pos = piece.len() as u64;
    loop {
        let check = crate::util::blocking(move || {
            state.feed(&piece);
            state
        });
        if pos >= size {
            state = check.await;
            break;
        }
        let next;
        (state, next) = tokio::join!(check, fetch(pos));
        match next {
            Ok(p) => piece = p,
            Err(e) => {
                state.errors.push(e);
                return (state.errors, state.blobs);
            }
        }
        pos += piece.len() as u64;
    }
    state.finish()
}

/// A pack being checked as its bytes arrive, in order.
struct PackCheck {
    key: crate::repo::crypto::Key,
    pack_id: Id,
    size: u64,
    /// The index's blobs, by offset; `next` is the first not yet checked.
    blobs: Vec<(Id, BlobLocation)>,
    next: usize,
    /// Bytes of the pack from `base` on that are still needed: the blobs
    /// not yet checked and the header at the end.
    window: Vec<u8>,
    base: u64,
    /// The header and its length field, as long as the index says it is.
    tail: u64,
    hasher: sha2::Sha256,
    errors: Vec<String>,
}

impl PackCheck {
    fn new(
        key: crate::repo::crypto::Key,
        pack_id: Id,
        size: u64,
        mut blobs: Vec<(Id, BlobLocation)>,
    ) -> Self {
        blobs.sort_by_key(|(_, l)| l.offset);
        let tail = header_and_trailer(&blobs);
        PackCheck {
            key,
            pack_id,
            size,
            blobs,
            next: 0,
            window: Vec::new(),
            base: 0,
            tail,
            hasher: sha2::Digest::new(),
            errors: Vec::new(),
        }
    }

    /// Take the next bytes of the pack: check every blob they complete,
    /// then drop what no blob and not the header needs.
    fn feed(&mut self, piece: &[u8]) {
        sha2::Digest::update(&mut self.hasher, piece);
        self.window.extend_from_slice(piece);
        let end = self.base + self.window.len() as u64;
        while let Some((id, loc)) = self.blobs.get(self.next) {
            let start = loc.offset as u64;
            let blob_end = start + loc.length as u64;
            if blob_end > end {
                break;
            }
            let stored =
                &self.window[(start - self.base) as usize..(blob_end - self.base) as usize];
            if let Err(e) = decode_blob(&self.key, id, loc, stored) {
                self.errors
                    .push(format!("pack {}: blob {id}: {e}", self.pack_id));
            }
            self.next += 1;
        }
        let needed = self
            .blobs
            .get(self.next)
            .map_or(u64::MAX, |(_, l)| l.offset as u64)
            .min(self.size.saturating_sub(self.tail))
            .clamp(self.base, end);
        self.window.drain(..(needed - self.base) as usize);
        self.base = needed;
    }

    /// The whole pack has been fed: check its name and header, and name
    /// the blobs it did not hold. Returns the damage found, and the blobs.
    fn finish(mut self) -> (Vec<String>, Vec<(Id, BlobLocation)>) {
        let pack_id = self.pack_id;
        if Id(sha2::Digest::finalize(self.hasher).into()) != pack_id {
            self.errors.push(format!(
                "pack {pack_id}: content does not match its name (SHA-256): the file is damaged"
            ));
        }
        let end = self.base + self.window.len() as u64;
        let header = (|| {
            let bytes = &self.window;
            let trailer: [u8; 4] = bytes.get(bytes.len().checked_sub(4)?..)?.try_into().ok()?;
            let hlen = pack::header_length_from_trailer(&trailer, end).ok()?;
            // The header must lie inside what was kept (as long as the
            // index says it is); a longer one does not match the index.
            let start = (end - 4).checked_sub(hlen)?.checked_sub(self.base)? as usize;
            pack::parse_header(&self.key, &bytes[start..bytes.len() - 4]).ok()
        })();
        compare_header(pack_id, header, &self.blobs, &mut self.errors);
        for (id, _) in &self.blobs[self.next..] {
            self.errors.push(format!(
                "pack {pack_id}: blob {id} lies beyond the end of the pack"
            ));
        }
        (self.errors, self.blobs)
    }
}

/// Name a header that could not be read, or the index's blobs it lacks.
fn compare_header(
    pack_id: Id,
    header: Option<Vec<pack::PackedBlob>>,
    blobs: &[(Id, BlobLocation)],
    errors: &mut Vec<String>,
) {
    let Some(entries) = header else {
        errors.push(format!("pack {pack_id}: header is damaged or unreadable"));
        return;
    };
    let in_header: HashSet<(Id, u32)> = entries.iter().map(|e| (e.id, e.offset)).collect();
    for (id, loc) in blobs {
        if !in_header.contains(&(*id, loc.offset)) {
            errors.push(format!(
                "pack {pack_id}: blob {id} is in the index but not in the pack header"
            ));
        }
    }
}

/// Check a pack read whole (after [`PackCheck`] found damage).
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
    compare_header(pack_id, header, blobs, &mut errors);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::crypto::Key;
    use crate::repo::pack::PackBuilder;

    /// A pack of `n` data blobs of different sizes, stored uncompressed,
    /// and the index's view of it.
    fn pack(key: &Key, n: usize) -> (Vec<u8>, Id, Vec<(Id, BlobLocation)>) {
        let mut b = PackBuilder::with_capacity(1 << 20);
        for i in 0..n {
            let plain: Vec<u8> = (0..(100 + i * 3001)).map(|j| (i * 7 + j) as u8).collect();
            b.add(Id::hash(&plain), BlobType::Data, &key.encrypt(&plain), None);
        }
        let (bytes, id, packed) = b.finish(key);
        let blobs = packed
            .iter()
            .map(|p| {
                let loc = BlobLocation {
                    pack: id,
                    kind: p.kind,
                    offset: p.offset,
                    length: p.length,
                    uncompressed_length: p.uncompressed_length,
                };
                (p.id, loc)
            })
            .collect();
        (bytes.to_vec(), id, blobs)
    }

    fn in_pieces(
        key: &Key,
        bytes: &[u8],
        id: Id,
        blobs: &[(Id, BlobLocation)],
        piece: usize,
    ) -> Vec<String> {
        let mut c = PackCheck::new(key.clone(), id, bytes.len() as u64, blobs.to_vec());
        for p in bytes.chunks(piece) {
            c.feed(p);
            // What is kept is the blobs not checked yet and the header.
            assert!(c.window.len() <= piece + 16 * 3001 + c.tail as usize);
        }
        c.finish().0
    }

    #[test]
    fn a_pack_read_in_pieces_of_any_size_checks_as_read_whole() {
        let key = Key::random();
        let (bytes, id, blobs) = pack(&key, 16);
        assert!(verify_pack(&key, id, &bytes, &blobs).is_empty());
        for piece in [1, 7, 4096, 10_000, bytes.len() - 1, bytes.len(), 1 << 22] {
            assert_eq!(
                in_pieces(&key, &bytes, id, &blobs, piece),
                Vec::<String>::new(),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn damage_found_in_pieces_names_what_whole_reading_names() {
        let key = Key::random();
        let (bytes, id, blobs) = pack(&key, 16);
        // A flipped bit in the fifth blob, then in the header.
        for at in [blobs[4].1.offset as usize + 20, bytes.len() - 10] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            let whole = verify_pack(&key, id, &damaged, &blobs);
            assert!(
                whole.iter().any(|e| e.contains("does not match its name")),
                "{whole:?}"
            );
            assert_eq!(whole.len(), 2, "{whole:?}");
            for piece in [1, 5000, 1 << 22] {
                let mut got = in_pieces(&key, &damaged, id, &blobs, piece);
                let mut want = whole.clone();
                got.sort();
                want.sort();
                assert_eq!(got, want, "damage at {at}, piece {piece}");
            }
        }
        // A truncated pack: the blobs past its end are named.
        let cut = blobs[10].1.offset as usize + 5;
        let got = in_pieces(&key, &bytes[..cut], id, &blobs, 4096);
        assert_eq!(
            got.iter()
                .filter(|e| e.contains("lies beyond the end"))
                .count(),
            6,
            "{got:?}"
        );
    }

    mod repository {
        use super::*;
        use crate::testing::{backed_up, memory_repo, runtime};

        #[test]
        fn a_whole_repository_checks_clean_with_and_without_reading_data() {
            runtime().block_on(async {
                let (_, repo) = memory_repo("check").await;
                backed_up(&repo, &[("a", b"alpha"), ("b", b"beta")], 1, "h").await;
                for read_data in [false, true] {
                    let r = check(&repo, read_data).await.unwrap();
                    assert!(r.errors.is_empty(), "{:?}", r.errors);
                    assert_eq!((r.snapshots, r.trees), (1, 1));
                    assert_eq!(r.packs_read, if read_data { r.packs } else { 0 });
                }
            });
        }

        #[test]
        fn a_missing_pack_is_named() {
            runtime().block_on(async {
                let (backend, repo) = memory_repo("check").await;
                backed_up(&repo, &[("a", &[7u8; 5000])], 1, "h").await;
                let packs = backend.names(FileType::Pack);
                // Remove every pack: the tree's and the data's.
                for p in &packs {
                    repo.backend().remove(FileType::Pack, p).await.unwrap();
                }
                let r = check(&repo, false).await.unwrap();
                for p in &packs {
                    assert!(
                        r.errors.iter().any(|e| e.contains(&p[..8])),
                        "pack {p} not named: {:?}",
                        r.errors
                    );
                }
            });
        }

        #[test]
        fn reading_data_names_a_damaged_pack() {
            runtime().block_on(async {
                let (backend, repo) = memory_repo("check").await;
                backed_up(&repo, &[("a", &crate::testing::noise(9, 50_000))], 1, "h").await;
                let name = backend
                    .names(FileType::Pack)
                    .into_iter()
                    .max_by_key(|p| backend.get(FileType::Pack, p).map_or(0, |b| b.len()))
                    .unwrap();
                let mut bytes = backend.get(FileType::Pack, &name).unwrap().to_vec();
                bytes[40] ^= 0xff;
                backend.put_raw(FileType::Pack, &name, bytes);
                let quick = check(&repo, false).await.unwrap();
                assert!(
                    quick.errors.is_empty(),
                    "sizes still match: {:?}",
                    quick.errors
                );
                let full = check(&repo, true).await.unwrap();
                assert!(
                    full.errors.iter().any(|e| e.contains(&name[..8])),
                    "{:?}",
                    full.errors
                );
            });
        }

        #[test]
        fn a_pack_no_index_lists_is_reported_not_an_error() {
            runtime().block_on(async {
                let (backend, repo) = memory_repo("check").await;
                backed_up(&repo, &[("a", b"x")], 1, "h").await;
                let (bytes, id, _) = pack(repo.key(), 2);
                backend.put_raw(FileType::Pack, &id.to_hex(), bytes);
                let r = check(&repo, true).await.unwrap();
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                assert_eq!(r.unreferenced_packs, vec![id.to_hex()]);
            });
        }

        #[test]
        fn a_damaged_snapshot_file_is_an_error_naming_it() {
            runtime().block_on(async {
                let (backend, repo) = memory_repo("check").await;
                let id = backed_up(&repo, &[("a", b"x")], 1, "h").await;
                backend.put_raw(FileType::Snapshot, &id.to_hex(), b"not encrypted".to_vec());
                let r = check(&repo, false).await.unwrap();
                assert!(
                    r.errors.iter().any(|e| e.contains(&id.to_hex()[..8])),
                    "{:?}",
                    r.errors
                );
            });
        }
    }
}
