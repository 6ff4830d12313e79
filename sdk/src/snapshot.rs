//! Reading the entries of the snapshot being restored or verified.

use crate::wit::cairn::adapter0_1_0::snapshot as host;
use crate::{Error, io_error};

pub use host::Entry;

/// The largest read crossing into the host at once.
const MAX_READ: usize = 1024 * 1024;

/// Reads one file's content; implements [`std::io::Read`].
pub struct EntryReader {
    inner: host::EntryReader,
}

impl EntryReader {
    /// Write all remaining content into a file inside the job's grants,
    /// natively. Returns the bytes written.
    pub fn pump_to_file(&mut self, path: &str) -> Result<u64, Error> {
        Ok(self.inner.pump_to_file(path)?)
    }

    /// Read and authenticate the rest without handing it out.
    pub fn discard(&mut self) -> Result<u64, Error> {
        Ok(self.inner.discard()?)
    }

    pub(crate) fn from_host(inner: host::EntryReader) -> Self {
        EntryReader { inner }
    }

    pub(crate) fn into_host(self) -> host::EntryReader {
        self.inner
    }
}

impl std::io::Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(MAX_READ) as u32;
        let bytes = self.inner.read(want).map_err(|e| io_error(e.into()))?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}

/// The next entry, depth-first; `None` at the end.
pub fn next_entry() -> Result<Option<Entry>, Error> {
    Ok(host::next_entry()?)
}

/// Open a file's content.
pub fn open(path: &str) -> Result<EntryReader, Error> {
    Ok(EntryReader {
        inner: host::open(path)?,
    })
}
