//! A store in memory, with faults on demand: the backend unit tests run
//! repositories, pipelines, region pairs and prune against, in
//! milliseconds. The Garage and local-directory tests stay the end-to-end
//! proof; this one makes the failure orders they cannot stage exact: the
//! Nth write failing, a region gone, a listing that lags behind writes.

use super::{Backend, FileType, Regional, StorageError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A store held in memory. A clone is the same store (a test keeps one to
/// break or inspect the store it handed over).
#[derive(Clone)]
pub struct MemoryBackend {
    name: String,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<(&'static str, String), Bytes>,
    /// Saves so far.
    saves: usize,
    /// The save with this number (counted from 1) fails.
    fail_save: Option<usize>,
    /// Every request fails, as from a region that does not answer.
    down: bool,
    /// Listings show the files as they were when they were frozen.
    frozen: Option<BTreeMap<(&'static str, String), Bytes>>,
    /// Objects beside the repository, by key (markers).
    others: BTreeMap<String, Bytes>,
}

impl MemoryBackend {
    /// An empty store; `name` says which in messages (`memory:<name>`).
    pub fn new(name: &str) -> MemoryBackend {
        MemoryBackend {
            name: name.to_string(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding it has failed already.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the `n`th save from now fail (1: the next one).
    pub fn fail_nth_save(&self, n: usize) {
        let mut s = self.state();
        s.fail_save = Some(s.saves + n);
    }

    /// Take the store down (every request fails) or bring it back.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// From now on, listings show the files as they are now (a listing that
    /// lags behind writes and removals), until [`MemoryBackend::thaw`].
    pub fn freeze_listings(&self) {
        let mut s = self.state();
        s.frozen = Some(s.files.clone());
    }

    /// Listings show the files as they are again.
    pub fn thaw(&self) {
        self.state().frozen = None;
    }

    /// Saves made so far (failed ones included).
    pub fn saves(&self) -> usize {
        self.state().saves
    }

    /// The names of the files of type `t`, sorted (the truth, never a
    /// frozen listing).
    pub fn names(&self, t: FileType) -> Vec<String> {
        self.state()
            .files
            .keys()
            .filter(|(d, _)| *d == t.dir())
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// A file's bytes, if it exists.
    pub fn get(&self, t: FileType, name: &str) -> Option<Bytes> {
        self.state()
            .files
            .get(&(t.dir(), name.to_string()))
            .cloned()
    }

    /// Replace a file's bytes behind the repository's back (damage).
    pub fn put_raw(&self, t: FileType, name: &str, data: Vec<u8>) {
        self.state()
            .files
            .insert((t.dir(), name.to_string()), Bytes::from(data));
    }

    fn down(&self, s: &State, name: &str) -> Result<(), StorageError> {
        match s.down {
            true => Err(StorageError::Remote {
                location: self.location(),
                name: name.to_string(),
                message: "the store does not answer".into(),
            }),
            false => Ok(()),
        }
    }

    fn not_found(&self, t: FileType, name: &str) -> StorageError {
        StorageError::NotFound {
            location: self.location(),
            name: format!("{}/{name}", t.dir()),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn location(&self) -> String {
        format!("memory:{}", self.name)
    }

    fn remote(&self) -> bool {
        false
    }

    async fn create(&self) -> Result<(), StorageError> {
        let s = self.state();
        self.down(&s, "config")?;
        if s.files.contains_key(&("", "config".to_string())) {
            return Err(StorageError::Io {
                location: self.location(),
                name: "config".into(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        Ok(())
    }

    async fn save(&self, t: FileType, name: &str, data: Bytes) -> Result<(), StorageError> {
        let mut s = self.state();
        self.down(&s, name)?;
        s.saves += 1;
        if s.fail_save == Some(s.saves) {
            return Err(StorageError::Remote {
                location: self.location(),
                name: format!("{}/{name}", t.dir()),
                message: format!("save {} fails, as asked", s.saves),
            });
        }
        s.files.insert((t.dir(), name.to_string()), data);
        Ok(())
    }

    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError> {
        let s = self.state();
        self.down(&s, name)?;
        match s.files.get(&(t.dir(), name.to_string())) {
            Some(b) => Ok(b.to_vec()),
            None => Err(self.not_found(t, name)),
        }
    }

    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let s = self.state();
        self.down(&s, name)?;
        let Some(b) = s.files.get(&(t.dir(), name.to_string())) else {
            return Err(self.not_found(t, name));
        };
        let start = (offset as usize).min(b.len());
        let end = (offset.saturating_add(length) as usize).min(b.len());
        Ok(b[start..end].to_vec())
    }

    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError> {
        let s = self.state();
        self.down(&s, name)?;
        match s.files.get(&(t.dir(), name.to_string())) {
            Some(b) => Ok(b.len() as u64),
            None => Err(self.not_found(t, name)),
        }
    }

    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError> {
        let s = self.state();
        self.down(&s, t.dir())?;
        let files = s.frozen.as_ref().unwrap_or(&s.files);
        Ok(files
            .iter()
            .filter(|((d, _), _)| *d == t.dir())
            .map(|((_, n), b)| (n.clone(), b.len() as u64))
            .collect())
    }

    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError> {
        let mut s = self.state();
        self.down(&s, name)?;
        s.files.remove(&(t.dir(), name.to_string()));
        Ok(())
    }
}

/// As a region: the store's name is its region.
#[async_trait]
impl Regional for MemoryBackend {
    fn region(&self) -> &str {
        &self.name
    }

    fn bucket(&self) -> &str {
        "memory"
    }

    fn key(&self, t: FileType, name: &str) -> String {
        super::layout::path(t, name)
    }

    fn root_key(&self, rel: &str) -> String {
        format!("../{rel}")
    }

    async fn put_key(&self, key: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let mut s = self.state();
        self.down(&s, key)?;
        s.others.insert(key.to_string(), Bytes::from(data));
        Ok(())
    }

    async fn exists_key(&self, key: &str) -> Result<bool, StorageError> {
        let s = self.state();
        self.down(&s, key)?;
        Ok(s.others.contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn the_nth_save_fails_and_the_others_are_kept() {
        let m = MemoryBackend::new("t");
        m.fail_nth_save(2);
        block_on(async {
            m.save(FileType::Index, "a", Bytes::from_static(b"1"))
                .await
                .unwrap();
            let e = m
                .save(FileType::Index, "b", Bytes::from_static(b"2"))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("memory:t"), "{e}");
            m.save(FileType::Index, "c", Bytes::from_static(b"3"))
                .await
                .unwrap();
        });
        assert_eq!(m.names(FileType::Index), ["a", "c"]);
        assert_eq!(m.saves(), 3);
    }

    #[test]
    fn a_store_that_is_down_answers_nothing_until_it_is_back() {
        let m = MemoryBackend::new("eu-west-1");
        block_on(async {
            m.save(FileType::Snapshot, "s", Bytes::from_static(b"x"))
                .await
                .unwrap();
            m.set_down(true);
            let e = m.load(FileType::Snapshot, "s").await.unwrap_err();
            assert!(e.to_string().contains("eu-west-1"), "{e}");
            assert!(m.list(FileType::Snapshot).await.is_err());
            m.set_down(false);
            assert_eq!(m.load(FileType::Snapshot, "s").await.unwrap(), b"x");
        });
    }

    #[test]
    fn a_frozen_listing_lags_behind_writes_and_removals() {
        let m = MemoryBackend::new("t");
        block_on(async {
            m.save(FileType::Pack, "old", Bytes::from_static(b"1"))
                .await
                .unwrap();
            m.freeze_listings();
            m.save(FileType::Pack, "new", Bytes::from_static(b"2"))
                .await
                .unwrap();
            m.remove(FileType::Pack, "old").await.unwrap();
            let listed: Vec<_> = m.list(FileType::Pack).await.unwrap();
            assert_eq!(listed, [("old".to_string(), 1)]);
            assert!(
                m.load(FileType::Pack, "old")
                    .await
                    .unwrap_err()
                    .is_not_found()
            );
            m.thaw();
            assert_eq!(
                m.list(FileType::Pack).await.unwrap(),
                [("new".to_string(), 1)]
            );
        });
    }

    #[test]
    fn a_range_past_the_end_is_cut_at_the_end() {
        let m = MemoryBackend::new("t");
        block_on(async {
            m.save(FileType::Pack, "p", Bytes::from_static(b"abcdef"))
                .await
                .unwrap();
            assert_eq!(
                m.load_range(FileType::Pack, "p", 4, 10).await.unwrap(),
                b"ef"
            );
            assert_eq!(m.load_range(FileType::Pack, "p", 9, 1).await.unwrap(), b"");
        });
    }
}
