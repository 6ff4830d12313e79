//! Writing a restored file: its content from the read path into a file
//! on the target (all-zero blobs become holes), and the register of files
//! being written, so that a restore stopped in the middle (a signal, its
//! deadline) leaves none half-written: the exit path removes what is still
//! registered ([`remove_unfinished_files`]).

use super::ContentReader;
use std::io::{Seek, Write};

/// Why a file's content could not be written.
#[derive(Debug)]
pub enum WriteError {
    /// The snapshot's data for it is damaged or missing: this file fails
    /// (and is removed), the restore goes on.
    Damaged(String),
    /// The target refused the bytes (full, read-only): this file fails.
    Target(String),
    /// The storage failed: the whole restore stops.
    Storage(String),
}

/// Write a file's content, turning all-zero blobs into holes; returns the
/// file and the bytes written. `entry` names it in the snapshot, `target`
/// on disk.
pub async fn write_content(
    mut out: std::fs::File,
    mut content: ContentReader,
    entry: &str,
    target: &str,
) -> Result<(std::fs::File, u64), WriteError> {
    let mut total = 0u64;
    let mut ends_in_hole = false;
    loop {
        let blob = match content.next_blob().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) if e.is_damage() => {
                let what = match e {
                    crate::repo::RepoError::Storage(s) => {
                        format!("{s} (the index lists it; run `cairn check`)")
                    }
                    e => e.to_string(),
                };
                return Err(WriteError::Damaged(format!("{entry}: {what}")));
            }
            Err(e) => return Err(WriteError::Storage(format!("reading {entry}: {e}"))),
        };
        ends_in_hole = blob.iter().all(|&b| b == 0);
        let (len, hole) = (blob.len() as u64, ends_in_hole);
        // On a blocking thread: a target that stops answering (a hung
        // network mount) must not hold the runtime's workers.
        let (file, written) = crate::util::blocking(move || {
            let r = if hole {
                out.seek(std::io::SeekFrom::Current(len as i64)).map(|_| ())
            } else {
                out.write_all(&blob)
            };
            (out, r)
        })
        .await;
        out = file;
        written.map_err(|e| WriteError::Target(format!("{target}: {e}")))?;
        total += len;
    }
    // A trailing hole needs the length set explicitly.
    if ends_in_hole {
        let (file, set) = crate::util::blocking(move || {
            let r = out.set_len(total);
            (out, r)
        })
        .await;
        out = file;
        set.map_err(|e| WriteError::Target(format!("{target}: {e}")))?;
    }
    Ok((out, total))
}

/// Files a restore is writing, registered from their creation until their
/// content and metadata are written: a restore stopped in the middle (a
/// signal, its deadline) leaves none half-written, because the exit path
/// removes what is still registered ([`remove_unfinished_files`]). Each is
/// its directory, opened inside the grant, and its name.
static UNFINISHED: std::sync::Mutex<Vec<Unfinished>> = std::sync::Mutex::new(Vec::new());
static NEXT_UNFINISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A file being restored: its directory, opened inside the grant, and its
/// name there (never resolved by path again), the file's identity (what is
/// at that name when it is removed must still be it: another restore or
/// the user may have put a file there since), and its path for messages.
struct Unfinished {
    id: u64,
    dir: cap_std::fs::Dir,
    name: String,
    identity: (u64, u64),
    path: String,
}

impl Unfinished {
    /// Remove the file if it is still the one created; true if it was.
    fn remove(&self) -> bool {
        let at = rustix::fs::statat(
            &self.dir,
            self.name.as_str(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
        if !at.is_ok_and(|st| (st.st_dev, st.st_ino) == self.identity) {
            return false;
        }
        match rustix::fs::unlinkat(&self.dir, self.name.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) => true,
            Err(rustix::io::Errno::NOENT) => false,
            Err(e) => {
                tracing::warn!(path = %crate::util::escaped(&self.path), error = %e, "Could not remove a half-written file.");
                false
            }
        }
    }
}

/// Register `file`, just created as `name` in `dir` (`path` for messages),
/// as unfinished; returns its number.
pub fn register_unfinished(
    dir: cap_std::fs::Dir,
    name: String,
    path: &str,
    file: &std::fs::File,
) -> u64 {
    let id = NEXT_UNFINISHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = rustix::fs::fstat(file)
        .map(|st| (st.st_dev, st.st_ino))
        .unwrap_or_default();
    crate::util::lock(&UNFINISHED).push(Unfinished {
        id,
        path: path.to_string(),
        dir,
        name,
        identity,
    });
    id
}

/// The file `id` is whole: nothing to remove.
pub fn finished(id: u64) {
    crate::util::lock(&UNFINISHED).retain(|u| u.id != id);
}

/// Remove the unfinished file `id` (its write failed).
pub fn remove_unfinished(id: u64) {
    let taken = {
        let mut all = crate::util::lock(&UNFINISHED);
        all.iter().position(|u| u.id == id).map(|i| all.remove(i))
    };
    if let Some(u) = taken {
        u.remove();
    }
}

/// Remove every file a stopped restore left half-written. Returns how many.
pub fn remove_unfinished_files() -> usize {
    let left = std::mem::take(&mut *crate::util::lock(&UNFINISHED));
    left.iter().filter(|u| u.remove()).count()
}
