//! A repository in a local directory, laid out exactly as restic's local
//! backend lays it out. Writes go to a temporary file in `.tmp/`, are synced,
//! and renamed into place, so a crash never leaves a half-written object.

use super::{Backend, FileType, StorageError};
use async_trait::async_trait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A local-directory backend.
pub struct LocalBackend {
    root: PathBuf,
    counter: AtomicU64,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            counter: AtomicU64::new(0),
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
            let written = std::fs::File::create(&tmp).and_then(|mut f| {
                f.write_all(&data)?;
                f.sync_all()
            });
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
