//! The directory `pg_receivewal` writes into, as the WAL streamer sees it
//! (docs/design/pitr.md §5): complete segments, the segment being received
//! (`.partial`, pre-allocated to the full segment size and zero-filled
//! past the data received), and timeline history files. Anything else (a
//! `.tmp` being written, a compressed file, a stray) is left alone and
//! reported.

use super::lsn::{Segment, SegmentSize, WalFile};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

/// What the streamer needs to know of one file to tell whether it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its size.
    pub size: u64,
    /// Its modification time.
    pub mtime: SystemTime,
}

/// One look at the spool.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spool {
    /// Complete segments, in WAL order within each timeline.
    pub complete: BTreeMap<Segment, Seen>,
    /// Segments being received. Normally one; after a timeline switch the
    /// old timeline's last, unfinished segment stays beside the new one's.
    pub partial: BTreeMap<Segment, Seen>,
    /// History files by timeline.
    pub history: BTreeMap<u32, Seen>,
    /// Names that are none of these.
    pub ignored: Vec<String>,
}

impl Spool {
    /// Read the directory `dir`. Symbolic links and other non-regular
    /// files are ignored: the receiver writes only regular files.
    pub fn scan(dir: &Path, size: SegmentSize) -> std::io::Result<Spool> {
        let mut spool = Spool::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Renamed or removed since the listing: the next look sees it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let file = WalFile::parse(&name, size).filter(|_| meta.file_type().is_file());
            let seen = Seen {
                size: meta.len(),
                mtime: meta.modified()?,
            };
            match file {
                Some(WalFile::Segment(s)) => {
                    spool.complete.insert(s, seen);
                }
                Some(WalFile::Partial(s)) => {
                    spool.partial.insert(s, seen);
                }
                Some(WalFile::History(tli)) => {
                    spool.history.insert(tli, seen);
                }
                None => spool.ignored.push(name),
            }
        }
        spool.ignored.sort();
        Ok(spool)
    }

    /// The segment being received now: the newest partial, unless a
    /// complete segment is newer still (the receiver renamed it and has
    /// not created the next one yet).
    pub fn receiving(&self) -> Option<Segment> {
        let partial = self.partial.keys().next_back()?;
        match self.complete.keys().next_back() {
            Some(c) if c >= partial => None,
            _ => Some(*partial),
        }
    }

    /// The bytes the spool holds.
    pub fn bytes(&self) -> u64 {
        self.complete
            .values()
            .chain(self.partial.values())
            .chain(self.history.values())
            .map(|s| s.size)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_read_as_the_receiver_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let size = SegmentSize::DEFAULT;
        let write =
            |name: &str, len: usize| std::fs::write(dir.path().join(name), vec![0u8; len]).unwrap();
        write("000000010000000000000007", 100);
        write("000000010000000000000008", 100);
        write("000000010000000000000009.partial", 300);
        write("00000002.history", 40);
        write("00000002.history.tmp", 40);
        write("000000010000000000000006.gz", 10);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("00000003.history")).unwrap();
        std::fs::create_dir(dir.path().join("00000000000000000000000A")).unwrap();
        let spool = Spool::scan(dir.path(), size).unwrap();
        let seg = |segno| Segment { tli: 1, segno };
        assert_eq!(
            spool.complete.keys().copied().collect::<Vec<_>>(),
            [seg(7), seg(8)]
        );
        assert_eq!(spool.partial.keys().copied().collect::<Vec<_>>(), [seg(9)]);
        assert_eq!(spool.history.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(
            spool.ignored,
            [
                "00000000000000000000000A",
                "000000010000000000000006.gz",
                "00000002.history.tmp",
                "00000003.history"
            ]
        );
        assert_eq!(spool.receiving(), Some(seg(9)));
        assert_eq!(spool.bytes(), 540);
        // The partial was renamed and the next not yet created.
        std::fs::rename(
            dir.path().join("000000010000000000000009.partial"),
            dir.path().join("000000010000000000000009"),
        )
        .unwrap();
        write("000000010000000000000005.partial", 1);
        let spool = Spool::scan(dir.path(), size).unwrap();
        assert_eq!(spool.receiving(), None);
    }
}
