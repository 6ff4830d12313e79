//! The backup's parent snapshot (WIT 0.4.0): read an entry the adapter
//! wrote last time, such as a manifest, so an incremental backup keeps
//! what it does not read again (with [`crate::archive::reuse_unchanged`]).

use crate::Error;
use crate::snapshot::EntryReader;
use crate::wit::cairn::adapter0_4_0::parent as host;

/// The parent's file or stream entry at `path`: `None` when the backup
/// has no parent or the parent has no file there. Only during a backup;
/// read it with [`std::io::Read`].
pub fn open(path: &str) -> Result<Option<EntryReader>, Error> {
    Ok(host::open(path)?.map(EntryReader::from_host))
}
