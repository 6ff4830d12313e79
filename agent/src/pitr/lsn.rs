//! PostgreSQL's WAL positions and file names: log sequence numbers
//! (`16/B374D848`), segment numbers for any segment size the server was
//! initialised with (a power of two from 1 MiB to 1 GiB), and the names
//! `pg_receivewal` gives the files it writes (`TTTTTTTTXXXXXXXXYYYYYYYY`,
//! the same with `.partial` while it grows, `TTTTTTTT.history`).

use std::fmt;

/// A position in the WAL: a byte offset since the cluster was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A name or value that is not what PostgreSQL writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not `X/Y` with one to eight hexadecimal digits each side.
    #[error("{0:?} is not a WAL position (one like 0/16B3748)")]
    Lsn(String),
    /// Not a power of two from 1 MiB to 1 GiB.
    #[error(
        "{0} bytes is not a WAL segment size PostgreSQL allows (a power of two from 1 MiB to 1 GiB)"
    )]
    SegmentSize(u64),
}

impl std::str::FromStr for Lsn {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Lsn(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    /// As PostgreSQL prints it: `%X/%X`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The size of a cluster's WAL segments (`wal_segment_size`, fixed by
/// `initdb`): segment numbers and file names depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl SegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    /// A segment size of `bytes`, if PostgreSQL allows it.
    pub fn new(bytes: u64) -> Result<Self, ParseError> {
        if bytes.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&bytes) {
            Ok(SegmentSize(bytes))
        } else {
            Err(ParseError::SegmentSize(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "log id": the middle and last eight digits of a
    /// name split the segment number by it.
    fn per_log(self) -> u64 {
        (1 << 32) / self.0
    }

    /// The number of the segment holding `lsn`.
    pub fn segno(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// Where segment `segno` starts.
    pub fn start(self, segno: u64) -> Lsn {
        Lsn(segno.saturating_mul(self.0))
    }

    /// Where segment `segno` ends (the next one's start).
    pub fn end(self, segno: u64) -> Lsn {
        self.start(segno.saturating_add(1))
    }
}

/// One segment of one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline (first in the order: names sort by timeline, then position).
    pub tli: u32,
    /// The segment number.
    pub segno: u64,
}

impl Segment {
    /// Its file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn name(self, size: SegmentSize) -> String {
        let per = size.per_log();
        format!(
            "{:08X}{:08X}{:08X}",
            self.tli,
            self.segno / per,
            self.segno % per
        )
    }
}

/// What a file in a `pg_receivewal` directory (or a restore command's
/// `%f`) is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// A complete segment.
    Segment(Segment),
    /// A segment still being received (`.partial`): its valid data ends
    /// somewhere inside; the rest is zeros.
    Partial(Segment),
    /// A timeline's history file, `TTTTTTTT.history`.
    History(u32),
}

impl WalFile {
    /// The file named `name`, or `None` for anything else (a temporary,
    /// a compressed file, a backup history file, a stray).
    pub fn parse(name: &str, size: SegmentSize) -> Option<WalFile> {
        let hex = |s: &str| {
            (s.len() == 8
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
        };
        if let Some(tli) = name.strip_suffix(".history") {
            return hex(tli).filter(|&t| t > 0).map(WalFile::History);
        }
        let (stem, partial) = match name.strip_suffix(".partial") {
            Some(stem) => (stem, true),
            None => (name, false),
        };
        if stem.len() != 24 {
            return None;
        }
        let (tli, log, seg) = (hex(&stem[..8])?, hex(&stem[8..16])?, hex(&stem[16..])?);
        if tli == 0 || u64::from(seg) >= size.per_log() {
            return None;
        }
        let segment = Segment {
            tli,
            segno: u64::from(log) * size.per_log() + u64::from(seg),
        };
        Some(if partial {
            WalFile::Partial(segment)
        } else {
            WalFile::Segment(segment)
        })
    }

    /// Its file name (the inverse of [`WalFile::parse`]).
    pub fn name(self, size: SegmentSize) -> String {
        match self {
            WalFile::Segment(s) => s.name(size),
            WalFile::Partial(s) => format!("{}.partial", s.name(size)),
            WalFile::History(tli) => history_name(tli),
        }
    }
}

/// The name of timeline `tli`'s history file.
pub fn history_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_print_as_postgresql_does() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "123456789/0",
            "0/-1",
            "0/+1",
            "g/0",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_names_follow_the_segment_size() {
        // F3 of docs/design/pitr.md: 0/7000028 is in segment 7 of 16 MiB.
        let size = SegmentSize::DEFAULT;
        let lsn: Lsn = "0/7000028".parse().unwrap();
        let seg = Segment {
            tli: 1,
            segno: size.segno(lsn),
        };
        assert_eq!(seg.name(size), "000000010000000000000007");
        // 16 MiB: 256 segments per log id.
        let seg = Segment {
            tli: 2,
            segno: size.segno("A/3F000000".parse().unwrap()),
        };
        assert_eq!(seg.name(size), "000000020000000A0000003F");
        // 1 MiB: 4096 per log id; 1 GiB: 4.
        let mib = SegmentSize::new(1 << 20).unwrap();
        let seg = Segment {
            tli: 1,
            segno: mib.segno("1/FFF00000".parse().unwrap()),
        };
        assert_eq!(seg.name(mib), "000000010000000100000FFF");
        let gib = SegmentSize::new(1 << 30).unwrap();
        let seg = Segment {
            tli: 3,
            segno: gib.segno("5/C0000000".parse().unwrap()),
        };
        assert_eq!(seg.name(gib), "000000030000000500000003");
        assert_eq!(gib.start(seg.segno).to_string(), "5/C0000000");
        assert_eq!(gib.end(seg.segno).to_string(), "6/0");
        for bad in [0, 1 << 19, 3 << 20, 2 << 30] {
            assert!(SegmentSize::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn spool_names_are_classified_and_strays_ignored() {
        let size = SegmentSize::DEFAULT;
        let seg = Segment {
            tli: 1,
            segno: 0x0A3F,
        };
        for file in [
            WalFile::Segment(seg),
            WalFile::Partial(seg),
            WalFile::History(2),
        ] {
            assert_eq!(WalFile::parse(&file.name(size), size), Some(file));
        }
        assert_eq!(
            WalFile::parse("000000010000000A0000003F.partial", size),
            Some(WalFile::Partial(seg))
        );
        for stray in [
            "000000010000000A0000003F.gz",
            "000000010000000A0000003F.gz.partial",
            "000000010000000A0000003F.00000028.backup",
            "00000002.history.tmp",
            "000000010000000a0000003f",
            // The segment part is beyond 256 for 16 MiB segments.
            "000000010000000A00000100",
            "000000000000000A0000003F",
            "00000000.history",
            "000000010000000A0000003",
            "receiver.pid",
        ] {
            assert_eq!(WalFile::parse(stray, size), None, "{stray}");
        }
        // For 1 MiB segments the same name is a real segment.
        let mib = SegmentSize::new(1 << 20).unwrap();
        assert_eq!(
            WalFile::parse("000000010000000A00000100", mib),
            Some(WalFile::Segment(Segment {
                tli: 1,
                segno: 0xA * 4096 + 0x100
            }))
        );
    }
}
