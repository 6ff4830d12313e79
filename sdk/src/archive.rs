//! Emitting the entries of a backup, depth-first.

use crate::wit::cairn::adapter0_1_0::archive as host;
use crate::{Error, Metadata, io_error};

/// How much a [`EntryWriter`] buffers before crossing into the host.
const BUFFER: usize = 512 * 1024;

/// Writes one file's or stream's bytes. Implements [`std::io::Write`]
/// with a large buffer, so small writes are cheap. Call
/// [`EntryWriter::finish`] to seal it; dropping it unfinished fails the backup.
pub struct EntryWriter {
    inner: host::EntryWriter,
    buf: Vec<u8>,
}

impl EntryWriter {
    fn new(inner: host::EntryWriter) -> Self {
        EntryWriter {
            inner,
            buf: Vec::with_capacity(BUFFER),
        }
    }

    fn flush_buffer(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.inner.write(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Append a whole file inside the job's grants; the host reads it
    /// natively. Returns the bytes appended.
    pub fn pump_file(&mut self, path: &str) -> Result<u64, Error> {
        self.flush_buffer()?;
        Ok(self.inner.pump_file(path)?)
    }

    /// The host's writer, with everything buffered here handed over
    /// first, for a pump that appends after it.
    pub(crate) fn flushed(&mut self) -> Result<&host::EntryWriter, Error> {
        self.flush_buffer()?;
        Ok(&self.inner)
    }

    /// Abandon the entry: nothing is recorded for it. Use with
    /// [`skip`] when its source could not be read.
    pub fn cancel(self) {
        self.inner.cancel();
    }

    /// Seal the entry; returns its size.
    pub fn finish(mut self) -> Result<u64, Error> {
        self.flush_buffer()?;
        Ok(self.inner.finish()?)
    }
}

impl std::io::Write for EntryWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > BUFFER {
            self.flush_buffer().map_err(io_error)?;
        }
        if data.len() >= BUFFER {
            self.inner.write(data).map_err(|e| io_error(e.into()))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buffer().map_err(io_error)
    }
}

/// Start a regular file.
pub fn begin_file(path: &str, meta: &Metadata) -> Result<EntryWriter, Error> {
    Ok(EntryWriter::new(host::begin_file(path, *meta)?))
}

/// Start a stream of unknown length.
pub fn begin_stream(path: &str, meta: &Metadata) -> Result<EntryWriter, Error> {
    Ok(EntryWriter::new(host::begin_stream(path, *meta)?))
}

/// Add a directory.
pub fn add_directory(path: &str, meta: &Metadata) -> Result<(), Error> {
    Ok(host::add_directory(path, *meta)?)
}

/// Add a symbolic link (stored, never followed).
pub fn add_symlink(path: &str, target: &str, meta: &Metadata) -> Result<(), Error> {
    Ok(host::add_symlink(path, target, *meta)?)
}

/// Re-add an unchanged file from the parent snapshot without reading it;
/// false when there is no such unchanged file.
pub fn reuse_unchanged(path: &str, meta: &Metadata) -> Result<bool, Error> {
    Ok(host::reuse_unchanged(path, *meta)?)
}

/// Record an entry that could not be read; the backup ends incomplete.
pub fn skip(path: &str, reason: &str) {
    host::skip(path, reason);
}
