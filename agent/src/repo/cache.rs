//! A local copy of a repository's metadata, as restic keeps one: index
//! files, snapshot files and the packs holding trees, read once from the
//! storage and then from disk (`<cache dir>/repos/<repository id>/`, the
//! cache directory being `$CAIRN_CACHE_DIR` or `~/.cache/cairn`;
//! `--no-cache` turns it off).
//!
//! Nothing read from it is trusted more than the storage: every file is
//! named by the SHA-256 of its bytes and checked against its name when
//! read (a file that does not match is removed and read from the storage
//! again), and what is inside is decrypted and authenticated as always.
//! Entries the repository no longer lists are removed when the listing is
//! read. Failing to write the cache (a full disk, a read-only home) costs
//! speed, never a command.

use super::Id;
use crate::storage::FileType;
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Packs larger than this are not cached (a tree pack is never this large;
/// something else is).
pub const MAX_CACHED_PACK: u64 = 128 << 20;

/// Open a cached file for reading: a regular file no larger than any
/// cached file, never through a symbolic link, never blocking (a FIFO
/// planted in the cache is no file).
fn open_regular(path: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.len() <= MAX_CACHED_PACK.max(super::MAX_UNPACKED)).then_some(file)
}

/// One repository's cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

fn subdir(t: FileType) -> Option<&'static str> {
    match t {
        FileType::Index => Some("index"),
        FileType::Snapshot => Some("snapshots"),
        FileType::Pack => Some("data"),
        _ => None,
    }
}

impl Cache {
    /// The cache of the repository with config ID `id` under `base`,
    /// created (owner-only) if missing.
    pub fn open(base: &Path, id: &str) -> std::io::Result<Cache> {
        if Id::parse(id).is_none() {
            return Err(std::io::Error::other(format!(
                "the repository ID {:?} is no ID",
                crate::util::escaped(id)
            )));
        }
        let dir = base.join("repos").join(id);
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for sub in ["index", "snapshots", "data"] {
            b.create(dir.join(sub))?;
        }
        Ok(Cache { dir })
    }

    /// The file for `name`, if `t` is cached and `name` is an ID (nothing
    /// else can reach the cache, so no name can leave it).
    fn path(&self, t: FileType, name: &str) -> Option<PathBuf> {
        let sub = subdir(t)?;
        Id::parse(name)?;
        Some(self.dir.join(sub).join(name))
    }

    /// The cached file, if present and its content matches its name.
    pub fn get(&self, t: FileType, name: &str) -> Option<Vec<u8>> {
        let path = self.path(t, name)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut open_regular(&path)?, &mut data).ok()?;
        if Id::hash(&data).to_hex() == name {
            return Some(data);
        }
        tracing::warn!(file = %path.display(), "A cached file does not match its name; reading it from the repository again.");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// `length` bytes at `offset` of a cached pack (checked whole when it
    /// was stored; its blobs are authenticated by the reader). A cached
    /// pack that cannot give them (shortened, no regular file) is removed.
    pub fn get_range(&self, name: &str, offset: u64, length: u64) -> Option<Vec<u8>> {
        let path = self.path(FileType::Pack, name)?;
        if std::fs::symlink_metadata(&path).is_err() {
            return None;
        }
        let read = open_regular(&path).and_then(|file| {
            let mut buf = vec![0; usize::try_from(length).ok()?];
            file.read_exact_at(&mut buf, offset).ok()?;
            Some(buf)
        });
        if read.is_none() {
            tracing::warn!(file = %path.display(), "A cached pack is damaged; reading from the repository again.");
            self.remove(FileType::Pack, name);
        }
        read
    }

    /// Keep `data` as `name`, if it matches its name; whether it is kept.
    /// Written to a temporary file and renamed, so a reader sees all or
    /// nothing.
    pub fn put(&self, t: FileType, name: &str, data: &[u8]) -> bool {
        let Some(path) = self.path(t, name) else {
            return false;
        };
        if Id::hash(data).to_hex() != name {
            return false;
        }
        // Unique among processes sharing the cache, even with the same
        // PID (two containers).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tmp = path.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
        // A file of that name was planted: never written through, never
        // followed (create_new fails, and the file is not cached).
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(file = %path.display(), error = %e, "Could not write to the cache.");
                false
            }
        }
    }

    /// Remove a cached file (found damaged).
    pub fn remove(&self, t: FileType, name: &str) {
        if let Some(path) = self.path(t, name) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Remove the cached files of type `t` not in `keep` (no longer in the
    /// repository), and leftover temporary files. Returns how many.
    pub fn retain(&self, t: FileType, keep: &HashSet<String>) -> usize {
        let Some(sub) = subdir(t) else { return 0 };
        let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, Cache) {
        let base = tempfile::tempdir().unwrap();
        let id = Id::hash(b"repo").to_hex();
        let c = Cache::open(base.path(), &id).unwrap();
        (base, c)
    }

    #[test]
    fn a_file_is_kept_only_under_its_own_hash_and_checked_when_read() {
        let (_base, c) = cache();
        let data = b"an index file".to_vec();
        let name = Id::hash(&data).to_hex();
        assert!(!c.put(FileType::Index, &Id::hash(b"other").to_hex(), &data));
        assert_eq!(c.get(FileType::Index, &Id::hash(b"other").to_hex()), None);
        assert!(c.put(FileType::Index, &name, &data));
        assert_eq!(c.get(FileType::Index, &name), Some(data));
        // Damaged on disk: not returned, and removed.
        let path = c.path(FileType::Index, &name).unwrap();
        std::fs::write(&path, b"an index filf").unwrap();
        assert_eq!(c.get(FileType::Index, &name), None);
        assert!(!path.exists());
    }

    #[test]
    fn a_shortened_or_irregular_cached_pack_is_removed_not_served() {
        let (_base, c) = cache();
        let pack = b"0123456789".repeat(10);
        let name = Id::hash(&pack).to_hex();
        assert!(c.put(FileType::Pack, &name, &pack));
        assert_eq!(c.get_range(&name, 10, 5).as_deref(), Some(&b"01234"[..]));
        let path = c.path(FileType::Pack, &name).unwrap();
        std::fs::write(&path, &pack[..50]).unwrap();
        assert_eq!(c.get_range(&name, 40, 20), None);
        assert!(!path.exists(), "a shortened pack stays");
        // A FIFO under a pack's name is no pack, and reading it does not
        // block.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(c.get_range(&name, 0, 5), None);
        assert!(!path.exists(), "a FIFO stays");
    }

    #[test]
    fn names_that_are_no_id_never_reach_the_disk() {
        let (base, c) = cache();
        c.put(FileType::Snapshot, "../../escape", b"x");
        assert!(c.path(FileType::Snapshot, "../x").is_none());
        assert!(c.path(FileType::Key, &Id::hash(b"k").to_hex()).is_none());
        assert!(!base.path().join("escape").exists());
        assert!(Cache::open(base.path(), "../up").is_err());
    }

    #[test]
    fn retain_removes_what_the_repository_no_longer_lists() {
        let (_base, c) = cache();
        let (a, b) = (b"a".to_vec(), b"b".to_vec());
        let (na, nb) = (Id::hash(&a).to_hex(), Id::hash(&b).to_hex());
        c.put(FileType::Snapshot, &na, &a);
        c.put(FileType::Snapshot, &nb, &b);
        let removed = c.retain(FileType::Snapshot, &HashSet::from([na.clone()]));
        assert_eq!(removed, 1);
        assert!(c.get(FileType::Snapshot, &na).is_some());
        assert!(c.get(FileType::Snapshot, &nb).is_none());
    }
}
