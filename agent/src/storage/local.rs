//! A repository in a local directory, laid out exactly as restic's local
//! backend lays it out. Writes go to a temporary file in `.tmp/`, are synced,
//! and renamed into place, so a crash never leaves a half-written object.

use super::{Backend, FileType, StorageError};
use async_trait::async_trait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A local-directory backend.
pub struct LocalBackend {
    root: PathBuf,
    counter: AtomicU64,
    /// Cleared once the file system refuses direct I/O.
    direct: Arc<AtomicBool>,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            counter: AtomicU64::new(0),
            direct: Arc::new(AtomicBool::new(true)),
        }
    }

    fn path(&self, t: FileType, name: &str) -> PathBuf {
        self.root.join(super::layout::path(t, name))
    }

    fn io_err(&self, name: &Path, source: std::io::Error) -> StorageError {
        let name = name
            .strip_prefix(&self.root)
            .unwrap_or(name)
            .display()
            .to_string();
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound {
                location: self.location(),
                name,
            }
        } else {
            StorageError::Io {
                location: self.location(),
                name,
                source,
            }
        }
    }
}

/// Reads up to this size are done on the calling task.
const INLINE_READ: u64 = 128 * 1024;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Files from this size are written with direct I/O when their bytes are
/// aligned in memory (packs are, see [`crate::repo::pack::ALIGN`]).
const DIRECT_FROM: usize = 1024 * 1024;

/// Write `data` to a new file at `path` and sync it. A large, aligned
/// buffer goes to the disk with direct I/O: the bytes are not copied into
/// the page cache, which costs more CPU than hashing them on some virtual
/// machines, and a backup does not evict the node's cached data with
/// packs it will not read again. Where the file system refuses direct I/O
/// (older tmpfs, some FUSE and network file systems), the file is written
/// through the cache, and so is every later one (`direct` is cleared).
fn write_synced(path: &Path, data: &[u8], direct: &AtomicBool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use crate::repo::pack::ALIGN;
        if data.len() >= DIRECT_FROM
            && (data.as_ptr() as usize).is_multiple_of(ALIGN)
            && direct.load(Ordering::Relaxed)
        {
            match write_direct(path, data, data.len() / ALIGN * ALIGN) {
                // The file system refuses direct I/O: not tried again.
                Err(Direct::Refused(e)) => {
                    if direct.swap(false, Ordering::Relaxed) {
                        tracing::info!(path = %path.display(), error = %e, "The file system refuses direct I/O; packs are written through the page cache.");
                    }
                }
                // A write it did not take (a short write left the rest
                // unaligned): this file is written again through the cache.
                Err(Direct::Failed(e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(Direct::Failed(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = direct;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Why a direct write did not happen.
#[cfg(target_os = "linux")]
enum Direct {
    /// The file system does not take direct I/O (at the open, or at the
    /// first write).
    Refused(std::io::Error),
    /// Anything later.
    Failed(std::io::Error),
}

/// The first `whole` bytes (whole blocks) with `O_DIRECT`, the short tail
/// through the page cache, then a sync for the tail and the metadata.
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, data: &[u8], whole: usize) -> Result<(), Direct> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let refused = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP) => Direct::Refused(e),
        _ => Direct::Failed(e),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(refused)?;
    // The first block tells whether the file system takes direct writes.
    let first = whole.min(crate::repo::pack::ALIGN);
    f.write_all(&data[..first]).map_err(refused)?;
    let failed = Direct::Failed;
    f.write_all(&data[first..whole]).map_err(failed)?;
    let flags = rustix::fs::fcntl_getfl(&f).map_err(|e| failed(e.into()))?;
    rustix::fs::fcntl_setfl(&f, flags - OFlags::DIRECT).map_err(|e| failed(e.into()))?;
    f.write_all(&data[whole..]).map_err(failed)?;
    f.sync_all().map_err(failed)
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn remote(&self) -> bool {
        false
    }

    async fn create(&self) -> Result<(), StorageError> {
        let config = self.path(FileType::Config, "config");
        if config.exists() {
            return Err(StorageError::Io {
                location: self.location(),
                name: "config".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a repository already exists here",
                ),
            });
        }
        let mut dirs = vec![self.root.join(".tmp")];
        for t in FileType::ALL {
            if t != FileType::Config {
                dirs.push(self.root.join(t.dir()));
            }
        }
        for i in 0..=255u8 {
            dirs.push(self.root.join("data").join(format!("{i:02x}")));
        }
        for d in dirs {
            std::fs::create_dir_all(&d).map_err(|e| self.io_err(&d, e))?;
        }
        Ok(())
    }

    async fn save(&self, t: FileType, name: &str, data: bytes::Bytes) -> Result<(), StorageError> {
        let dest = self.path(t, name);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(".tmp")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let location = self.location();
        let root = self.root.clone();
        let direct = Arc::clone(&self.direct);
        crate::util::blocking(move || {
            let err = |p: &Path, e: std::io::Error| {
                let name = p.strip_prefix(&root).unwrap_or(p).display().to_string();
                StorageError::Io {
                    location: location.clone(),
                    name,
                    source: e,
                }
            };
            if let Some(parent) = tmp.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
            }
            let written = write_synced(&tmp, &data, &direct);
            if let Err(e) = written {
                // A full disk, say: what was written of it must not stay.
                let _ = std::fs::remove_file(&tmp);
                return Err(err(&tmp, e));
            }
            let dir = dest.parent().unwrap_or(&root).to_path_buf();
            if let Err(e) = std::fs::rename(&tmp, &dest) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(err(&dest, e));
                }
                // The data/xx folder is missing (a repository made by a tool
                // that creates them lazily): create it and try again.
                let renamed = std::fs::create_dir_all(&dir)
                    .map_err(|e| err(&dir, e))
                    .and_then(|()| std::fs::rename(&tmp, &dest).map_err(|e| err(&dest, e)));
                if let Err(e) = renamed {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            sync_dir(&dir).map_err(|e| err(&dir, e))
        })
        .await
    }

    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.path(t, name);
        let p = path.clone();
        crate::util::blocking(move || std::fs::read(&p))
            .await
            .map_err(|e| self.io_err(&path, e))
    }

    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let path = self.path(t, name);
        let read = move |p: &Path| -> std::io::Result<Vec<u8>> {
            let f = std::fs::File::open(p)?;
            let mut buf = vec![0u8; length as usize];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset)?;
            Ok(buf)
        };
        // A small read costs less than the hop to a blocking thread; large
        // ones go there so several can be in flight (restore reads ahead).
        if length <= INLINE_READ {
            return read(&path).map_err(|e| self.io_err(&path, e));
        }
        let p = path.clone();
        crate::util::blocking(move || read(&p))
            .await
            .map_err(|e| self.io_err(&path, e))
    }

    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError> {
        let path = self.path(t, name);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| self.io_err(&path, e))
    }

    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError> {
        let base = self.root.join(t.dir());
        let mut dirs = vec![base.clone()];
        if t == FileType::Pack {
            dirs.clear();
            let entries = std::fs::read_dir(&base).map_err(|e| self.io_err(&base, e))?;
            for e in entries {
                let e = e.map_err(|e| self.io_err(&base, e))?;
                if e.file_type().map(|ft| ft.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        for dir in dirs {
            let entries = std::fs::read_dir(&dir).map_err(|e| self.io_err(&dir, e))?;
            for e in entries {
                let e = e.map_err(|e| self.io_err(&dir, e))?;
                let meta = e.metadata().map_err(|err| self.io_err(&e.path(), err))?;
                if meta.is_file()
                    && let Some(name) = e.file_name().to_str()
                {
                    out.push((name.to_string(), meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn remove_stale_temporary(
        &self,
        age: std::time::Duration,
    ) -> Result<usize, StorageError> {
        let dir = self.root.join(".tmp");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io_err(&dir, e)),
        };
        let mut removed = 0;
        for e in entries {
            let e = e.map_err(|e| self.io_err(&dir, e))?;
            let meta = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            let idle = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if meta.is_file() && idle >= age {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(self.io_err(&e.path(), err)),
                }
            }
        }
        Ok(removed)
    }

    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError> {
        let path = self.path(t, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs (large, aligned: direct I/O, a short tail through the cache),
    /// unaligned buffers and small files all read back as written.
    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let direct = AtomicBool::new(true);
        let align = crate::repo::pack::ALIGN;
        let noise: Vec<u8> = (0..3 * DIRECT_FROM + 123)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut room: Vec<u8> = Vec::with_capacity(noise.len() + align);
        let start = room.as_ptr().align_offset(align);
        room.resize(start, 0);
        room.extend_from_slice(&noise);
        let aligned = &room[start..];
        assert_eq!(aligned.as_ptr() as usize % align, 0);
        for (name, data) in [
            ("aligned", aligned),
            ("aligned-whole-blocks", &aligned[..2 * DIRECT_FROM]),
            ("unaligned", &room[start + 1..]),
            ("small", &aligned[..100]),
            ("empty", &aligned[..0]),
        ] {
            let path = dir.path().join(name);
            write_synced(&path, data, &direct).unwrap();
            assert!(std::fs::read(&path).unwrap() == data, "{name}");
            // Written again over a longer file: nothing of it is left.
            write_synced(&path, &data[..data.len() / 2], &direct).unwrap();
            assert!(
                std::fs::read(&path).unwrap() == data[..data.len() / 2],
                "{name}"
            );
        }
    }
}
