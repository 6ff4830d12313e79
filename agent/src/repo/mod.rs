//! A restic-format (version 2) repository: keys, config, packs, index,
//! trees, snapshots and locks over a [`Backend`].
//!
//! Objects other than `config` and key files are encrypted with the master
//! key and named by the SHA-256 of their stored bytes. "Unpacked" files
//! (snapshots, index, locks) are zstd-compressed behind a version byte, as
//! format version 2 prescribes.

pub mod b64;
mod blob;
pub mod cache;
pub mod config;
pub mod crypto;
mod error;
pub mod id;
pub mod index;
pub mod keys;
pub mod lock;
pub mod pack;
mod rebuild;
pub mod snapshot;
pub mod span;
pub mod tree;

use crate::storage::{Backend, FileType};
pub use blob::decode_blob;
use config::RepoConfig;
use crypto::Key;
pub use error::RepoError;
use futures::StreamExt;
pub use id::Id;
use index::{Index, IndexFile};
use keys::KeyFile;
pub use lock::{LockGuard, release_held_locks};
pub use rebuild::RebuildReport;
use snapshot::Snapshot;
use std::io::Read;
use std::sync::{Arc, RwLock};

/// Blobs at least this large are decoded off the async task.
const PARALLEL_DECODE: usize = 128 * 1024;

/// The most an unpacked file (index, snapshot, lock) may decompress to;
/// anything larger is treated as damage, not allocated.
const MAX_UNPACKED: u64 = 1 << 30;

/// An open repository.
pub struct Repository {
    /// How long [`Repository::lock`] tries again while another process
    /// holds a conflicting lock, in milliseconds (zero: fail at once).
    lock_retry: std::sync::atomic::AtomicU64,
    backend: Arc<dyn Backend>,
    key: Key,
    config: RepoConfig,
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

/// Requests in flight at once when reading, unless the store says
/// otherwise.
pub use crate::storage::DEFAULT_CONNECTIONS;

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
        let config = RepoConfig::generate();
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
        let config: RepoConfig =
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
    fn opened(backend: Arc<dyn Backend>, key: Key, config: RepoConfig) -> Self {
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
            lock_retry: Default::default(),
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
    pub fn config(&self) -> &RepoConfig {
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

    /// Replace the in-memory index.
    pub fn set_index(&self, index: Index) {
        *self.index.write().expect("index lock") = index;
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
