//! Capability grants: the host paths a job may touch, opened as capability
//! handles. Every path an adapter names is resolved against them; nothing
//! outside a grant is reachable, and the final component of a path is never
//! followed if it is a symbolic link.

use cap_fs_ext::DirExt;
use rustix::fs::{AtFlags, Mode, OFlags};

/// A granted path, opened.
struct Grant {
    /// Absolute path as the adapter names it (and as it is on the host).
    path: String,
    /// The directory holding the grant: the grant itself, or for a granted
    /// file, its parent (only that file is then reachable).
    dir: cap_std::fs::Dir,
    /// For a granted file: its name inside `dir`.
    only: Option<String>,
    writable: bool,
}

/// Why a path was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The path is outside every grant (or malformed).
    #[error("{0}: not inside a path this job grants")]
    Denied(String),
    /// A secret, variable or other named thing the job does not grant.
    #[error("{0}: this job does not grant it")]
    NotGranted(String),
    /// Write access to a read-only grant.
    #[error("{0}: this job grants read-only access")]
    ReadOnly(String),
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl GrantError {
    pub(crate) fn io(path: &str, source: impl Into<std::io::Error>) -> Self {
        GrantError::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}

/// The largest secret read.
pub const MAX_SECRET: u64 = 1 << 20;

/// The kind of file a mode describes, for messages.
pub fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "named pipe",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        _ => "file of unknown type",
    }
}

/// The set of paths a job may use.
#[derive(Default)]
pub struct Grants {
    grants: Vec<Grant>,
    /// TCP endpoints the adapter may connect to; nothing else on the network.
    connect: Vec<std::net::SocketAddr>,
    /// Local sockets (by absolute path) granted programs may connect to.
    sockets: Vec<std::path::PathBuf>,
    /// Programs the adapter may start: the name it uses, and the absolute
    /// path that name resolved to when it was granted.
    programs: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// Secrets the adapter may name: secret name, and the file holding it.
    secrets: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// Environment variables every process of the job gets.
    env: std::collections::BTreeMap<String, String>,
    /// Buckets the adapter may reach through `object-store`, by grant name.
    buckets: std::collections::BTreeMap<String, crate::config::BucketGrant>,
}

/// A resolved path: the directory it lives in and its final name (`None`
/// for the grant root itself).
pub struct Resolved<'a> {
    /// The directory holding the entry (opened safely inside the grant).
    pub parent: cap_std::fs::Dir,
    /// The entry's name inside `parent`; `None` means `parent` is the entry.
    pub name: Option<String>,
    /// The path as given, for messages.
    pub path: &'a str,
}

/// Normalise an absolute path: no empty, `.` or `..` components, no trailing `/`.
pub fn normalise(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let mut out = String::new();
    for c in rest.split('/') {
        match c {
            "" => continue,
            "." | ".." => return None,
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    Some(if out.is_empty() { "/".into() } else { out })
}

impl Grants {
    /// Let the adapter open TCP connections to `endpoint` (`ip:port`, or
    /// `host:port`, resolved now: every address it resolves to), or let its
    /// granted programs connect to the local socket at an absolute path
    /// (`/run/postgresql/.s.PGSQL.5432`).
    pub fn add_connect(&mut self, endpoint: &str) -> Result<(), GrantError> {
        use std::net::ToSocketAddrs;
        if endpoint.starts_with('/') {
            let norm = normalise(endpoint).ok_or_else(|| GrantError::Denied(endpoint.into()))?;
            self.sockets.push(norm.into());
            return Ok(());
        }
        let addrs = endpoint
            .to_socket_addrs()
            .map_err(|e| GrantError::io(endpoint, e))?;
        let before = self.connect.len();
        self.connect.extend(addrs);
        if self.connect.len() == before {
            return Err(GrantError::Denied(format!(
                "{endpoint} (resolves to no address)"
            )));
        }
        Ok(())
    }

    /// Let the adapter use a bucket, under the grant's name.
    pub fn add_bucket(
        &mut self,
        name: &str,
        grant: crate::config::BucketGrant,
    ) -> Result<(), GrantError> {
        if name.is_empty() || self.buckets.contains_key(name) {
            return Err(GrantError::Denied(format!(
                "bucket grant {name:?}: empty or given twice"
            )));
        }
        self.buckets.insert(name.to_string(), grant);
        Ok(())
    }

    /// The buckets granted, by name.
    pub fn buckets(&self) -> &std::collections::BTreeMap<String, crate::config::BucketGrant> {
        &self.buckets
    }

    /// The TCP endpoints granted.
    pub fn connect(&self) -> &[std::net::SocketAddr] {
        &self.connect
    }

    /// The local sockets granted (to programs), by path.
    pub fn sockets(&self) -> &[std::path::PathBuf] {
        &self.sockets
    }

    /// Let the adapter start `program`: a bare name, found now on this
    /// process's `PATH`, or an absolute path to an executable file. The
    /// adapter then names it as given (or by the path it resolved to).
    pub fn add_program(&mut self, program: &str) -> Result<(), GrantError> {
        let path = if program.contains('/') {
            if !program.starts_with('/') {
                return Err(GrantError::Denied(format!(
                    "program {program}: give a bare name (found on PATH) or an absolute path"
                )));
            }
            std::path::PathBuf::from(program)
        } else {
            find_on_path(program).ok_or_else(|| {
                GrantError::io(
                    &format!("program {program}"),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "not found on PATH"),
                )
            })?
        };
        if !is_executable(&path) {
            return Err(GrantError::io(
                &format!("program {program} ({})", path.display()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "not an executable file"),
            ));
        }
        self.programs.insert(program.to_string(), path);
        Ok(())
    }

    /// The granted programs' names, sorted.
    pub fn program_names(&self) -> Vec<String> {
        self.programs.keys().cloned().collect()
    }

    /// The executable for `program`, by its granted name or its resolved path.
    pub fn program(&self, program: &str) -> Option<&std::path::Path> {
        self.programs
            .get(program)
            .or_else(|| {
                self.programs
                    .values()
                    .find(|p| p.as_os_str() == std::ffi::OsStr::new(program))
            })
            .map(|p| p.as_path())
    }

    /// Let the adapter name secret `name`, whose value is the content of
    /// `file` (one trailing newline dropped). The file is read when used.
    pub fn add_secret(&mut self, name: &str, file: &std::path::Path) -> Result<(), GrantError> {
        if name.is_empty() {
            return Err(GrantError::NotGranted("a secret without a name".into()));
        }
        std::fs::metadata(file)
            .map_err(|e| GrantError::io(&format!("secret {name} ({})", file.display()), e))?;
        self.secrets.insert(name.to_string(), file.to_path_buf());
        Ok(())
    }

    /// The granted secrets' names, sorted.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    /// Read secret `name`. The error names the secret, never its value.
    /// The file is opened without blocking (a FIFO swapped in would hang
    /// the job) and must be a regular file of at most [`MAX_SECRET`] bytes;
    /// links are followed (Kubernetes mounts secrets through them).
    pub fn secret(&self, name: &str) -> Result<Vec<u8>, GrantError> {
        use std::io::Read;
        let file = self
            .secrets
            .get(name)
            .ok_or_else(|| GrantError::NotGranted(format!("secret {name}")))?;
        let label = format!("secret {name} ({})", file.display());
        let fd = rustix::fs::open(
            file,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| GrantError::io(&label, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| GrantError::io(&label, e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(GrantError::io(
                &label,
                std::io::Error::other(format!("not a regular file (a {})", kind_name(st.st_mode))),
            ));
        }
        let mut value = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_SECRET + 1)
            .read_to_end(&mut value)
            .map_err(|e| GrantError::io(&label, e))?;
        if value.len() as u64 > MAX_SECRET {
            return Err(GrantError::io(
                &label,
                std::io::Error::other(format!("larger than {MAX_SECRET} bytes")),
            ));
        }
        if value.ends_with(b"\n") {
            value.pop();
            if value.ends_with(b"\r") {
                value.pop();
            }
        }
        Ok(value)
    }

    /// Give every process of the job the variable `name=value`.
    pub fn add_env(&mut self, name: &str, value: &str) -> Result<(), GrantError> {
        check_env_name(name)?;
        self.env.insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// The variables every process of the job gets.
    pub fn env(&self) -> &std::collections::BTreeMap<String, String> {
        &self.env
    }

    /// Grant `path` (a directory or a file), read-only or read-write.
    pub fn add(&mut self, path: &str, writable: bool) -> Result<(), GrantError> {
        let norm = normalise(path).ok_or_else(|| GrantError::Denied(path.into()))?;
        let meta = std::fs::metadata(&norm).map_err(|e| GrantError::io(&norm, e))?;
        let (dir_path, only) = if meta.is_dir() {
            (norm.clone(), None)
        } else {
            let (parent, name) = norm
                .rsplit_once('/')
                .ok_or_else(|| GrantError::Denied(path.into()))?;
            (
                if parent.is_empty() {
                    "/".into()
                } else {
                    parent.to_string()
                },
                Some(name.to_string()),
            )
        };
        let dir = cap_std::fs::Dir::open_ambient_dir(&dir_path, cap_std::ambient_authority())
            .map_err(|e| GrantError::io(&dir_path, e))?;
        self.grants.push(Grant {
            path: norm,
            dir,
            only,
            writable,
        });
        Ok(())
    }

    /// The granted paths, in the order granted.
    pub fn paths(&self) -> Vec<String> {
        self.grants.iter().map(|g| g.path.clone()).collect()
    }

    /// Create directory `path` and its missing parents inside a writable grant.
    pub fn create_dir_all(&self, path: &str) -> Result<(), GrantError> {
        let norm = normalise(path).ok_or_else(|| GrantError::Denied(path.into()))?;
        let mut prefix = String::new();
        for comp in norm.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            match self.resolve(&prefix, true) {
                // Ancestors of the grant itself are not ours to create.
                Err(GrantError::Denied(_)) if prefix.len() < norm.len() => continue,
                Err(e) => return Err(e),
                Ok(r) => r.create_dir()?,
            }
        }
        Ok(())
    }

    /// Resolve `path` inside a grant; `write` asks for write access.
    pub fn resolve<'a>(&self, path: &'a str, write: bool) -> Result<Resolved<'a>, GrantError> {
        let norm = normalise(path).ok_or_else(|| GrantError::Denied(path.into()))?;
        let grant = self
            .grants
            .iter()
            .filter(|g| {
                norm == g.path || g.path == "/" || norm.starts_with(&format!("{}/", g.path))
            })
            .max_by_key(|g| g.path.len())
            .ok_or_else(|| GrantError::Denied(path.into()))?;
        if write && !grant.writable {
            return Err(GrantError::ReadOnly(path.into()));
        }
        let rel = norm[grant.path.len()..].trim_start_matches('/');
        if let Some(only) = &grant.only {
            if !rel.is_empty() {
                return Err(GrantError::Denied(path.into()));
            }
            let parent = grant.dir.try_clone().map_err(|e| GrantError::io(path, e))?;
            return Ok(Resolved {
                parent,
                name: Some(only.clone()),
                path,
            });
        }
        if rel.is_empty() {
            let parent = grant.dir.try_clone().map_err(|e| GrantError::io(path, e))?;
            return Ok(Resolved {
                parent,
                name: None,
                path,
            });
        }
        let (dir_rel, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (Some(d), n),
            None => (None, rel),
        };
        // cap-std resolves the intermediate components without ever leaving
        // the grant, even through symbolic links.
        let parent = match dir_rel {
            Some(d) => grant.dir.open_dir(d),
            None => grant.dir.try_clone(),
        }
        .map_err(|e| GrantError::io(path, e))?;
        Ok(Resolved {
            parent,
            name: Some(name.to_string()),
            path,
        })
    }
}

/// Refuse a variable name that is not a plain identifier, or that steers the
/// dynamic loader (`LD_*`) or the program search (`PATH`): a process must
/// not be made to load or run something other than what was granted.
pub fn check_env_name(name: &str) -> Result<(), GrantError> {
    let plain = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain || name.starts_with("LD_") || name == "PATH" {
        return Err(GrantError::NotGranted(format!(
            "environment variable {name:?} (not a plain name, or one that steers which code runs)"
        )));
    }
    Ok(())
}

fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Resolved<'_> {
    /// `lstat` of the entry.
    pub fn stat(&self) -> Result<rustix::fs::Stat, GrantError> {
        match &self.name {
            Some(n) => rustix::fs::statat(&self.parent, n.as_str(), AtFlags::SYMLINK_NOFOLLOW),
            None => rustix::fs::fstat(&self.parent),
        }
        .map_err(|e| GrantError::io(self.path, e))
    }

    /// The target of a symbolic link.
    pub fn read_link(&self) -> Result<String, GrantError> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| GrantError::Denied(self.path.into()))?;
        let target = rustix::fs::readlinkat(&self.parent, name, Vec::new())
            .map_err(|e| GrantError::io(self.path, e))?;
        target.into_string().map_err(|_| {
            GrantError::io(
                self.path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "link target is not UTF-8"),
            )
        })
    }

    /// Open a regular file to read its content, without blocking and
    /// without side effects: anything else (a FIFO, a device, a socket) is
    /// refused before it is opened, and what was opened must be what was
    /// looked at (a FIFO swapped in meanwhile, with `renameat2`, would
    /// block the read forever). `examined` is the (inode, device) the
    /// adapter saw when it looked at the entry, if it says: a different
    /// file at that name now is refused too. Returns the file and its size.
    pub fn open_regular(
        &self,
        examined: Option<(u64, u64)>,
    ) -> Result<(std::fs::File, u64), GrantError> {
        let Some(name) = self.name.as_deref() else {
            return Err(GrantError::io(
                self.path,
                std::io::Error::other("is a directory"),
            ));
        };
        let refuse = |why: String| GrantError::io(self.path, std::io::Error::other(why));
        let before = self.stat()?;
        if before.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(refuse(format!(
                "not a regular file (a {}); its content is not read",
                kind_name(before.st_mode)
            )));
        }
        let fd = rustix::fs::openat(
            &self.parent,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| GrantError::io(self.path, e))?;
        let opened = rustix::fs::fstat(&fd).map_err(|e| GrantError::io(self.path, e))?;
        if opened.st_mode & libc::S_IFMT != libc::S_IFREG
            || (opened.st_ino, opened.st_dev) != (before.st_ino, before.st_dev)
        {
            return Err(refuse(format!(
                "replaced while it was being opened (now a {}); left out",
                kind_name(opened.st_mode)
            )));
        }
        if let Some((ino, dev)) = examined
            && (ino, dev) != (opened.st_ino as u64, opened.st_dev as u64)
        {
            return Err(refuse(format!(
                "not the file that was examined (inode {ino} on device {dev}, now inode {} on device {}): it was replaced; left out",
                opened.st_ino, opened.st_dev
            )));
        }
        Ok((std::fs::File::from(fd), opened.st_size as u64))
    }

    /// Create or truncate the entry for writing, refusing a symbolic link.
    pub fn create_write(&self) -> Result<std::fs::File, GrantError> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| GrantError::Denied(self.path.into()))?;
        // Replace, never write through: an existing file may be a hard link
        // to something outside the target, or a symbolic link.
        match rustix::fs::unlinkat(&self.parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(GrantError::io(self.path, e)),
        }
        let fd = rustix::fs::openat(
            &self.parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| GrantError::io(self.path, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// The sorted names inside the directory.
    pub fn list_dir(&self) -> Result<(Vec<String>, Vec<String>), GrantError> {
        let dir = match &self.name {
            Some(n) => self.parent.open_dir_nofollow(n),
            None => self.parent.try_clone(),
        }
        .map_err(|e| GrantError::io(self.path, e))?;
        let mut names = Vec::new();
        let mut not_utf8 = Vec::new();
        for entry in dir.entries().map_err(|e| GrantError::io(self.path, e))? {
            let entry = entry.map_err(|e| GrantError::io(self.path, e))?;
            match entry.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(raw) => not_utf8.push(raw.to_string_lossy().into_owned()),
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok((names, not_utf8))
    }

    /// Create this directory (and missing parents are the caller's job).
    pub fn create_dir(&self) -> Result<(), GrantError> {
        let Some(name) = &self.name else {
            return Ok(());
        };
        match rustix::fs::mkdirat(&self.parent, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                let st = self.stat()?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    Ok(())
                } else {
                    Err(GrantError::io(
                        self.path,
                        std::io::Error::other("exists and is not a directory"),
                    ))
                }
            }
            Err(e) => Err(GrantError::io(self.path, e)),
        }
    }

    /// Create a symbolic link, replacing a non-directory already there.
    pub fn create_symlink(&self, target: &str) -> Result<(), GrantError> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| GrantError::Denied(self.path.into()))?;
        match rustix::fs::unlinkat(&self.parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(GrantError::io(self.path, e)),
        }
        rustix::fs::symlinkat(target, &self.parent, name).map_err(|e| GrantError::io(self.path, e))
    }

    /// Apply permissions, ownership and times without following a final link.
    /// Ownership is applied only when running as root; other failures to
    /// chown are ignored like restic does for unprivileged restores.
    pub fn set_metadata(
        &self,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        times: Option<(rustix::fs::Timespec, rustix::fs::Timespec)>,
    ) -> Result<(), GrantError> {
        let kind = self.stat()?.st_mode & libc::S_IFMT;
        let (fd, name): (&cap_std::fs::Dir, &str) =
            (&self.parent, self.name.as_deref().unwrap_or("."));
        let err = |e| GrantError::io(self.path, e);
        let owner = owner.filter(|_| rustix::process::geteuid().is_root());
        if kind == libc::S_IFDIR || kind == libc::S_IFREG {
            // Through a descriptor opened without following a link: if the
            // entry was swapped for a link since the stat, the open fails
            // (ELOOP) instead of changing whatever the link points to.
            let opened = rustix::fs::openat(
                fd,
                name,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::NOCTTY,
                Mode::empty(),
            );
            match opened {
                Ok(file) => {
                    if let Some((uid, gid)) = owner {
                        rustix::fs::fchown(
                            &file,
                            Some(rustix::fs::Uid::from_raw(uid)),
                            Some(rustix::fs::Gid::from_raw(gid)),
                        )
                        .map_err(err)?;
                    }
                    // After chown, which clears set-id bits.
                    if let Some(mode) = mode {
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))
                            .map_err(err)?;
                    }
                    if let Some((atime, mtime)) = times {
                        let ts = rustix::fs::Timestamps {
                            last_access: atime,
                            last_modification: mtime,
                        };
                        rustix::fs::futimens(&file, &ts).map_err(err)?;
                    }
                    return Ok(());
                }
                // Not readable by us (a non-root restore into an existing
                // write-only directory): by name below, as for other types.
                Err(rustix::io::Errno::ACCESS) => {}
                Err(e) => return Err(err(e)),
            }
        }
        if let Some((uid, gid)) = owner {
            rustix::fs::chownat(
                fd,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        // Links have no mode of their own on Linux: never chmod their target.
        if let (Some(mode), false) = (mode, kind == libc::S_IFLNK) {
            rustix::fs::chmodat(
                fd,
                name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(err)?;
        }
        if let Some((atime, mtime)) = times {
            let ts = rustix::fs::Timestamps {
                last_access: atime,
                last_modification: mtime,
            };
            rustix::fs::utimensat(fd, name, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses_dot_dot() {
        assert_eq!(normalise("/a//b/").as_deref(), Some("/a/b"));
        assert_eq!(normalise("/").as_deref(), Some("/"));
        assert_eq!(normalise("/a/../etc"), None);
        assert_eq!(normalise("relative"), None);
    }

    #[test]
    fn paths_outside_or_through_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        let mut g = Grants::default();
        g.add(root.to_str().unwrap(), false).unwrap();
        let ok = format!("{}/ok", root.display());
        assert!(g.resolve(&ok, false).unwrap().open_regular(None).is_ok());
        assert!(matches!(g.resolve(&ok, true), Err(GrantError::ReadOnly(_))));
        assert!(matches!(
            g.resolve("/etc/passwd", false),
            Err(GrantError::Denied(_))
        ));
        let through_link = format!("{}/out/passwd", root.display());
        assert!(
            g.resolve(&through_link, false).is_err(),
            "a link must not lead out of the grant"
        );
        let link = format!("{}/out", root.display());
        assert!(
            g.resolve(&link, false).unwrap().open_regular(None).is_err(),
            "a final link is not followed"
        );
    }
}
