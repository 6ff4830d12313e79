//! A restic-format (version 2) repository: keys, config, packs, index,
//! trees, snapshots and locks over a [`Backend`].
//!
//! Objects other than `config` and key files are encrypted with the master
//! key and named by the SHA-256 of their stored bytes. "Unpacked" files
//! (snapshots, index, locks) are zstd-compressed behind a version byte, as
//! format version 2 prescribes.

pub mod b64;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod id;
pub mod index;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod snapshot;
pub mod span;
pub mod tree;

use crate::storage::{Backend, FileType, StorageError};
use config::Config;
use crypto::Key;
use futures::StreamExt;
pub use id::Id;
use index::{BlobLocation, Index, IndexFile};
use keys::KeyFile;
pub use lock::{LockGuard, release_held_locks};
use pack::BlobType;
use snapshot::Snapshot;
use std::io::Read;
use std::sync::{Arc, RwLock};
use tree::Tree;

/// Blobs at least this large are decoded off the async task.
const PARALLEL_DECODE: usize = 128 * 1024;

/// The most an unpacked file (index, snapshot, lock) may decompress to;
/// anything larger is treated as damage, not allocated.
const MAX_UNPACKED: u64 = 1 << 30;

/// Errors from repository operations. Each names the object it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// No key file opens with the given password.
    #[error("wrong password, or no key in repository {location} opens with it")]
    WrongPassword {
        /// The repository.
        location: String,
    },
    /// No key file of those tried opens with the password, and some were
    /// not tried (more than are: key files planted by whoever can write to
    /// the storage, say).
    #[error(
        "no key file of the {tried} tried (of {total}) in repository {location} opens with this password; if it is right, name the repository's key file with --key-hint (see `ls keys/`)"
    )]
    TooManyKeys {
        /// The repository.
        location: String,
        /// Key files tried.
        tried: usize,
        /// Key files in the repository.
        total: usize,
    },
    /// The location holds no repository.
    #[error("{location} is not a Cairn/restic repository (no config file); run `cairn init` first")]
    NotARepository {
        /// The location given.
        location: String,
    },
    /// The repository already exists.
    #[error("a repository already exists at {location}")]
    AlreadyExists {
        /// The location given.
        location: String,
    },
    /// The config uses a format this version does not read.
    #[error("repository {location} has format version {version}; Cairn reads versions 1 and 2")]
    UnsupportedVersion {
        /// The repository.
        location: String,
        /// The version found.
        version: u32,
    },
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An object failed authentication or does not parse.
    #[error("{what} is damaged: {reason}")]
    Corrupt {
        /// The file or blob, named.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The index knows no such blob.
    #[error("blob {0} is not in the index (the repository is missing data; run `cairn check`)")]
    BlobNotFound(Id),
    /// No snapshot matches.
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    /// More than one snapshot matches an id prefix.
    #[error("snapshot id prefix {0:?} is ambiguous")]
    AmbiguousSnapshot(String),
    /// Cairn itself failed (a worker thread panicked or stopped early):
    /// nothing was recorded, and the repository is not damaged by it.
    #[error("{what}: {reason} (a fault in Cairn, not damage to the repository)")]
    Internal {
        /// What was running.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The write pipeline stopped after a failure in a later stage; finishing
    /// the pipeline reports that failure.
    #[error("the backup pipeline stopped after a storage failure")]
    PipelineStopped,
    /// Another process holds a conflicting lock.
    #[error("repository is locked {0}")]
    Locked(String),
    /// Our own lock could not be kept fresh; nothing more is recorded.
    #[error("{0}")]
    LockLost(String),
    /// A removal stopped because going on could lose data (a region of
    /// the pair stopped answering, say); what it says is why.
    #[error("stopped before removing anything more: {0}")]
    Unsafe(String),
}

impl RepoError {
    /// Whether the error is damage in the repository (a file or blob that
    /// fails its check, or that the index lists and the storage lacks), as
    /// opposed to a storage or host failure: damage fails what needs that
    /// data and nothing else.
    pub fn is_damage(&self) -> bool {
        match self {
            RepoError::Corrupt { .. } | RepoError::BlobNotFound(_) => true,
            RepoError::Storage(s) => s.is_not_found(),
            _ => false,
        }
    }

    /// `what` may carry a name from the storage (anyone who can write to
    /// it chooses those): escaped, so it can forge no line where printed.
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        RepoError::Corrupt {
            what: crate::util::escaped(&what.into()).into_owned(),
            reason: reason.to_string(),
        }
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Key,
    config: Config,
    index: RwLock<Index>,
    /// Damaged snapshot and index files met and passed over: the file
    /// (`snapshots/<name>`) and what is wrong with it. The command still
    /// did its job, but must say so.
    damage: std::sync::Mutex<Vec<(String, String)>>,
    /// Requests a reader may have in flight to the storage at once.
    connections: usize,
    /// The local copy of index files, snapshots and tree packs, if used.
    cache: Option<cache::Cache>,
    /// Held while a tree pack is copied into the cache, so two readers
    /// wanting it do not both download it.
    caching: tokio::sync::Mutex<()>,
    /// Tree packs that could not be cached in this run.
    not_cached: std::sync::Mutex<std::collections::HashSet<Id>>,
}

/// Requests in flight at once to a store that does not say (a local
/// directory); S3 regions set theirs with `concurrency`.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// The largest snapshot file read; a bigger one is damage, not data.
const MAX_SNAPSHOT_FILE: u64 = 64 << 20;
/// The largest index file read; a bigger one is damage, not data.
const MAX_INDEX_FILE: u64 = MAX_UNPACKED;

fn file_label(t: FileType, name: &str) -> String {
    match t {
        FileType::Config => "config".to_string(),
        FileType::Pack => format!("pack {name}"),
        _ => format!("{}/{name}", t.dir()),
    }
}

impl Repository {
    /// Create a new repository with a fresh master key.
    pub async fn init(backend: Arc<dyn Backend>, password: &str) -> Result<Self, RepoError> {
        Self::init_with_cost(backend, password, keys::DEFAULT_LOG_N).await
    }

    /// [`Repository::init`] with an explicit scrypt cost (tests use a cheap one).
    pub async fn init_with_cost(
        backend: Arc<dyn Backend>,
        password: &str,
        log_n: u8,
    ) -> Result<Self, RepoError> {
        match backend.size(FileType::Config, "config").await {
            Ok(_) => {
                return Err(RepoError::AlreadyExists {
                    location: backend.location(),
                });
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        backend.create().await?;
        let key = Key::random();
        let config = Config::generate();
        let key_file = KeyFile::create(&key, password, log_n)
            .map_err(|e| RepoError::corrupt("new key file", e))?;
        let key_bytes = key_file.to_bytes();
        let key_name = Id::hash(&key_bytes).to_hex();
        backend
            .save(FileType::Key, &key_name, key_bytes.into())
            .await?;
        keys::remember(&backend.location(), &key_name);
        // The config is stored as plain (uncompressed) JSON, encrypted: every
        // restic version reads that form, whatever it assumes before loading.
        let config_json = serde_json::to_vec(&config).expect("config serialises");
        backend
            .save(FileType::Config, "config", key.encrypt(&config_json).into())
            .await?;
        Ok(Self::opened(backend, key, config))
    }

    /// Open a repository: find a key file the password opens, read the config.
    /// The index is not loaded; call [`Repository::load_index`].
    pub async fn open(backend: Arc<dyn Backend>, password: &str) -> Result<Self, RepoError> {
        let location = backend.location();
        let config_bytes = match backend.load(FileType::Config, "config").await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::NotARepository { location }),
            Err(e) => return Err(e.into()),
        };
        let mut key = None;
        // The key that opened this repository last time first, then the
        // others. At most MAX_KEYS_TRIED of them cost a derivation, and at
        // most MAX_KEY_FILES_READ are read: key files planted by whoever can
        // write to the storage cannot make every command slow. Files that
        // are no key, or ask too much, cost nothing and do not count.
        let mut listed = backend.list(FileType::Key).await?;
        let hint = keys::hint(&location);
        if let Some(h) = &hint {
            match listed.iter().position(|(n, _)| n.starts_with(h.as_str())) {
                Some(i) => {
                    let first = listed.remove(i);
                    listed.insert(0, first);
                }
                None => {
                    tracing::warn!(hint = %h, repository = %location, "No key file of the repository matches the key hint.")
                }
            }
        }
        let total = listed.len();
        let (mut tried, mut read) = (0, 0);
        let mut opened_with = None;
        for (name, size) in listed {
            if tried == keys::MAX_KEYS_TRIED || read == keys::MAX_KEY_FILES_READ {
                break;
            }
            read += 1;
            // Anyone who can write to the storage can add a key file: one
            // is parsed, and its scrypt cost bounded, before any work.
            if size > keys::MAX_KEY_FILE {
                tracing::warn!(key = %crate::util::escaped(&name), size, "Skipping a key file too large to be one.");
                continue;
            }
            let bytes = match backend.load(FileType::Key, &name).await {
                Ok(b) => b,
                // One unreadable key file (denied, gone) is not every key.
                Err(e) => {
                    tracing::warn!(key = %crate::util::escaped(&name), error = %crate::util::indented(&e.to_string()), "Skipping a key file that cannot be read.");
                    continue;
                }
            };
            let file = match KeyFile::parse(&bytes).and_then(|f| f.check_cost().map(|()| f)) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(key = %crate::util::escaped(&name), error = %e, "Skipping a key file.");
                    continue;
                }
            };
            tried += 1;
            let password = password.to_string();
            let opened = tokio::task::spawn_blocking(move || file.open(&password))
                .await
                .map_err(|e| RepoError::corrupt(format!("keys/{name}"), e))?;
            if let Ok(k) = opened {
                key = Some(k);
                opened_with = Some(name);
                break;
            }
        }
        let Some(key) = key else {
            if read < total {
                return Err(RepoError::TooManyKeys {
                    location,
                    tried,
                    total,
                });
            }
            return Err(RepoError::WrongPassword { location });
        };
        if let Some(name) = opened_with
            && hint.as_deref() != Some(name.as_str())
        {
            keys::remember(&location, &name);
        }
        // A store with more than one copy may hold a good config elsewhere.
        let config_bytes = if key.authentic(&config_bytes) {
            config_bytes
        } else {
            backend
                .load_verified(FileType::Config, "config", &|d: &[u8]| key.authentic(d))
                .await?
        };
        let plain = key
            .decrypt(&config_bytes)
            .map_err(|e| RepoError::corrupt("config", e))?;
        let plain = decompress_unpacked(&plain, "config")?;
        let config: Config =
            serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt("config", e))?;
        if config.version != 1 && config.version != 2 {
            return Err(RepoError::UnsupportedVersion {
                location,
                version: config.version,
            });
        }
        Ok(Self::opened(backend, key, config))
    }

    /// A repository just created or opened: no index loaded yet, no
    /// cache, the store's own number of connections.
    fn opened(backend: Arc<dyn Backend>, key: Key, config: Config) -> Self {
        Repository {
            connections: backend.connections(),
            backend,
            key,
            config,
            index: RwLock::new(Index::default()),
            damage: Default::default(),
            cache: None,
            caching: Default::default(),
            not_cached: Default::default(),
        }
    }

    /// Requests a reader may have in flight to the storage at once.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Set the requests a reader may have in flight at once (at least 1).
    pub fn set_connections(&mut self, n: usize) {
        self.connections = n.max(1);
    }

    /// Keep index files, snapshots and tree packs in `cache` (see
    /// [`cache`]).
    pub fn set_cache(&mut self, cache: cache::Cache) {
        self.cache = Some(cache);
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The repository config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Read every index file into memory. Returns the number of index files
    /// read. A damaged one is passed over and noted (see
    /// [`Repository::damage`]): the blobs only it lists look missing, which
    /// `check` reports and `rebuild-index` mends.
    pub async fn load_index(&self) -> Result<usize, RepoError> {
        let mut index = index::IndexBuilder::default();
        let mut read = 0;
        let mut loaded = self.index_files().await?;
        while let Some((name, file)) = loaded.next().await {
            match file {
                Ok(file) => {
                    index.add_file(&file);
                    read += 1;
                }
                Err(e @ RepoError::Corrupt { .. }) => {
                    self.note_damage(&format!("index/{name}"), &e)
                }
                // Removed by a prune while we listed.
                Err(RepoError::Storage(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        drop(loaded);
        let index = index.finish();
        if let Some(c) = &self.cache {
            let packs = index.packs().map(Id::to_hex).collect();
            c.retain(FileType::Pack, &packs);
        }
        *self.index.write().expect("index lock") = index;
        Ok(read)
    }

    /// Every index file, read `connections` at a time, in listing order,
    /// with its name; a file too large to be one is damage, not read.
    pub async fn index_files(
        &self,
    ) -> Result<impl futures::Stream<Item = (String, Result<IndexFile, RepoError>)> + '_, RepoError>
    {
        self.load_listed(
            FileType::Index,
            MAX_INDEX_FILE,
            "index",
            move |name| async move { self.load_index_file(&name).await },
        )
        .await
    }

    /// Every snapshot file, as [`Repository::index_files`] reads index
    /// files.
    pub async fn snapshot_files(
        &self,
    ) -> Result<
        impl futures::Stream<Item = (String, Result<(Id, Snapshot), RepoError>)> + '_,
        RepoError,
    > {
        self.load_listed(
            FileType::Snapshot,
            MAX_SNAPSHOT_FILE,
            "snapshot",
            move |name| async move { self.load_snapshot(&name).await },
        )
        .await
    }

    /// Every file of type `t` (index or snapshot files), each read by
    /// `load`, `self.connections` at a time, in listing order, with its
    /// name. A file larger than `max` is damage (`kind` names what it
    /// should be), not read. The cache keeps only the listed files.
    async fn load_listed<'a, T, Fut>(
        &'a self,
        t: FileType,
        max: u64,
        kind: &'a str,
        load: impl Fn(String) -> Fut + 'a,
    ) -> Result<impl futures::Stream<Item = (String, Result<T, RepoError>)> + 'a, RepoError>
    where
        Fut: std::future::Future<Output = Result<T, RepoError>> + 'a,
        T: 'a,
    {
        let listed = self.backend.list(t).await?;
        if let Some(c) = &self.cache {
            c.retain(t, &listed.iter().map(|(n, _)| n.clone()).collect());
        }
        let load = std::sync::Arc::new(load);
        Ok(futures::stream::iter(listed)
            .map(move |(name, size)| {
                let load = std::sync::Arc::clone(&load);
                async move {
                    let read = if size > max {
                        Err(RepoError::corrupt(
                            file_label(t, &name),
                            format!("it is {size} bytes, larger than any {kind} file"),
                        ))
                    } else {
                        load(name.clone()).await
                    };
                    (name, read)
                }
            })
            .buffered(self.connections))
    }

    /// Note the damaged file `file` passed over, and warn about it.
    fn note_damage(&self, file: &str, e: &RepoError) {
        let mut damage = self.damage.lock().expect("damage list");
        if !damage.iter().any(|(f, _)| f == file) {
            let what = e.to_string();
            tracing::warn!(problem = %what, "Passing over a damaged file; run `cairn check`.");
            damage.push((file.to_string(), what));
        }
    }

    /// What is wrong with each damaged snapshot or index file this
    /// repository passed over.
    pub fn damage(&self) -> Vec<String> {
        let damage = self.damage.lock().expect("damage list");
        damage.iter().map(|(_, what)| what.clone()).collect()
    }

    /// Forget the damage noted about `file` (`snapshots/<name>`): it was
    /// removed.
    pub fn damage_removed(&self, file: &str) {
        self.damage
            .lock()
            .expect("damage list")
            .retain(|(f, _)| f != file);
    }

    /// Parse one index file.
    pub async fn load_index_file(&self, name: &str) -> Result<IndexFile, RepoError> {
        let plain = self.load_unpacked(FileType::Index, name).await?;
        serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt(format!("index/{name}"), e))
    }

    /// Run `f` with read access to the in-memory index.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.index.read().expect("index lock"))
    }

    /// Add freshly written packs to the in-memory index.
    pub fn index_add(&self, pack: &index::IndexPack) {
        self.index.write().expect("index lock").add_pack(pack);
    }

    /// Encrypt (and for format 2, compress) a JSON document and store it
    /// under the SHA-256 of its stored bytes.
    pub async fn save_unpacked(&self, t: FileType, plaintext: &[u8]) -> Result<Id, RepoError> {
        let body = if self.config.version >= 2 {
            let mut v = vec![2u8];
            v.extend(
                zstd::bulk::compress(plaintext, 3).map_err(|e| RepoError::corrupt("zstd", e))?,
            );
            v
        } else {
            plaintext.to_vec()
        };
        let stored = self.key.encrypt(&body);
        let id = Id::hash(&stored);
        self.backend.save(t, &id.to_hex(), stored.into()).await?;
        Ok(id)
    }

    /// Load, authenticate and decompress an unpacked file.
    pub async fn load_unpacked(&self, t: FileType, name: &str) -> Result<Vec<u8>, RepoError> {
        // The cache returns only a file that matches its name, so what it
        // returns is what the storage holds.
        let stored = match self.cache.as_ref().and_then(|c| c.get(t, name)) {
            Some(s) => s,
            None => {
                let stored = self.backend.load(t, name).await?;
                if let Some(c) = &self.cache {
                    c.put(t, name, &stored);
                }
                stored
            }
        };
        let label = file_label(t, name);
        if Id::hash(&stored).to_hex() != name {
            return Err(RepoError::corrupt(
                label,
                "its content does not match its name (SHA-256)",
            ));
        }
        let plain = self
            .key
            .decrypt(&stored)
            .map_err(|e| RepoError::corrupt(&label, e))?;
        decompress_unpacked(&plain, &label)
    }

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

    /// Replace the in-memory index.
    pub fn set_index(&self, index: Index) {
        *self.index.write().expect("index lock") = index;
    }

    /// Load one snapshot file.
    pub async fn load_snapshot(&self, name: &str) -> Result<(Id, Snapshot), RepoError> {
        let what = format!("snapshots/{name}");
        let plain = self.load_unpacked(FileType::Snapshot, name).await?;
        let snap: Snapshot =
            serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt(&what, e))?;
        let id = Id::parse(name).ok_or_else(|| RepoError::corrupt(&what, "bad file name"))?;
        Ok((id, snap))
    }

    /// Every readable snapshot, oldest first. A damaged snapshot file is
    /// passed over and noted (see [`Repository::damage`]).
    pub async fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        self.list_snapshots(false).await
    }

    /// Every snapshot, oldest first; a damaged snapshot file is an error
    /// (prune must know every snapshot to know what is unused).
    pub async fn snapshots_strict(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        self.list_snapshots(true).await
    }

    async fn list_snapshots(&self, strict: bool) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        let mut out = Vec::new();
        let mut loaded = self.snapshot_files().await?;
        while let Some((name, snap)) = loaded.next().await {
            match snap {
                Ok(s) => out.push(s),
                Err(e @ RepoError::Corrupt { .. }) if !strict => {
                    self.note_damage(&format!("snapshots/{name}"), &e)
                }
                // Removed by a forget while we listed.
                Err(RepoError::Storage(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(_, s)| s.time);
        Ok(out)
    }

    /// Find a snapshot by `latest` or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot), RepoError> {
        self.find_snapshot_of(spec, None).await
    }

    /// Like [`Repository::find_snapshot`], but `latest` means the latest
    /// snapshot that `job` made, when a job is given.
    pub async fn find_snapshot_of(
        &self,
        spec: &str,
        job: Option<&str>,
    ) -> Result<(Id, Snapshot), RepoError> {
        let all = self.snapshots().await?;
        if spec == "latest" {
            return all
                .into_iter()
                .rfind(|(_, s)| job.is_none() || s.cairn_job.as_deref() == job)
                .ok_or_else(|| match job {
                    Some(j) => RepoError::SnapshotNotFound(format!("latest (of job {j})")),
                    None => RepoError::SnapshotNotFound(spec.into()),
                });
        }
        let mut found: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(spec))
            .collect();
        match found.len() {
            0 => Err(RepoError::SnapshotNotFound(spec.into())),
            1 => Ok(found.remove(0)),
            _ => Err(RepoError::AmbiguousSnapshot(spec.into())),
        }
    }

    /// Store a snapshot; returns its id.
    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        let json = serde_json::to_vec(snap).expect("snapshot serialises");
        self.save_unpacked(FileType::Snapshot, &json).await
    }

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

    /// Store `entries` as new index files of at most
    /// [`index::BLOBS_PER_INDEX`] blobs each; returns how many were written.
    pub async fn save_index(&self, entries: Vec<index::IndexPack>) -> Result<usize, RepoError> {
        let mut written = 0;
        let mut file = IndexFile::default();
        let mut blobs = 0;
        let mut entries = entries.into_iter().peekable();
        while let Some(pack) = entries.next() {
            blobs += pack.blobs.len();
            file.packs.push(pack);
            if blobs >= index::BLOBS_PER_INDEX || entries.peek().is_none() {
                let json = serde_json::to_vec(&file).expect("an index serialises");
                self.save_unpacked(FileType::Index, &json).await?;
                written += 1;
                file = IndexFile::default();
                blobs = 0;
            }
        }
        Ok(written)
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

/// Undo format 2's optional compression of unpacked files: JSON starts with
/// `{` or `[`; anything else must be version byte 2 followed by zstd.
fn decompress_unpacked(plain: &[u8], label: &str) -> Result<Vec<u8>, RepoError> {
    match plain.first() {
        None | Some(b'{') | Some(b'[') => Ok(plain.to_vec()),
        Some(2) => {
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(&plain[1..])
                .map_err(|e| RepoError::corrupt(label, e))?;
            decoder
                .take(MAX_UNPACKED + 1)
                .read_to_end(&mut out)
                .map_err(|e| RepoError::corrupt(label, format!("zstd: {e}")))?;
            if out.len() as u64 > MAX_UNPACKED {
                return Err(RepoError::corrupt(label, "decompresses to more than 1 GiB"));
            }
            Ok(out)
        }
        Some(b) => Err(RepoError::corrupt(
            label,
            format!("unknown encoding byte {b:#x}"),
        )),
    }
}
