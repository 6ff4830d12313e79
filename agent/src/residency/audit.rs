//! The append-only audit log: one JSON line per object written to or deleted
//! from a tenant's storage, with where it went and what it held.
//!
//! Lines are written with a single `write` on a file opened with `O_APPEND`,
//! so concurrent writers (two commands at once) never interleave inside a
//! line, and the file is synced when the command ends. A record is written
//! after the store confirmed the request; `cairn residency report` (which
//! lists the stores themselves) is the proof of where objects are, the log
//! is the history of how they got there.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339 time the store confirmed the request.
    pub time: String,
    /// `put` or `delete`.
    pub op: &'a str,
    /// The tenant whose data it is.
    pub tenant: &'a str,
    /// The region of the bucket.
    pub region: &'a str,
    /// The bucket.
    pub bucket: &'a str,
    /// The object key.
    pub key: &'a str,
    /// Bytes written (0 for a delete).
    pub size: u64,
    /// SHA-256 of the bytes written, hex (absent for a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Open (creating) the log for appending. Fails, naming the file, when
    /// it cannot be opened: no tenant storage is touched without a log.
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("audit log {}: {e}", path.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("audit log {}: {e}", path.display()))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Append one record.
    pub fn append(&self, record: &Record<'_>) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut f = self.file.lock().map_err(|_| "audit log lock poisoned")?;
        f.write_all(&line)
            .map_err(|e| format!("audit log {}: {e}", self.path.display()))
    }

    /// Flush the log to disk.
    pub fn sync(&self) -> Result<(), String> {
        let f = self.file.lock().map_err(|_| "audit log lock poisoned")?;
        f.sync_data()
            .map_err(|e| format!("audit log {}: {e}", self.path.display()))
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// The current time as RFC 3339 with the local offset.
pub fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}
