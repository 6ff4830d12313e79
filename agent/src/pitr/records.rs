//! Reading a WAL segment's pages and records to tell whether PostgreSQL
//! could replay it, before the archive counts it: every page header (magic,
//! address, cluster, sizes) and every record (length, `xl_prev` chain and
//! CRC-32C), the way `xlogreader.c` reads them. A segment whose header is
//! intact but whose body is damaged would otherwise be stored, pass the
//! hold slot, and stop a later recovery short.
//!
//! A segment starts with the end of a record that began in the previous
//! one; that continuation is checked only for its page headers and length
//! (its CRC needs the record's start). The record that runs on into the
//! next segment is checked as far as it goes. After an `XLOG_SWITCH`
//! record the rest of the segment is padding and is not read.
//!
//! A `.partial` file holds WAL up to where the receiver got, then zeros:
//! its WAL is read up to its last byte that is not zero; a record that
//! runs past that point was cut off there, not damaged, but a gap or a bad
//! record before it is damage.

use std::io::Read;

use super::lsn::{Lsn, Segment, SegmentSize};

/// `XLogLongPageHeaderData`'s size (MAXALIGNed), at a segment's start.
const LONG_HEADER: usize = 40;
/// `XLogPageHeaderData`'s size (MAXALIGNed), on every other page.
const SHORT_HEADER: usize = 24;
/// `XLogRecord`'s size: `xl_crc` is its last field.
const RECORD_HEADER: usize = 24;
/// `xl_crc`'s offset: the CRC covers the record's data, then this much of
/// its header.
const CRC_AT: usize = 20;
/// No upper bound of its own on a record's length: PostgreSQL 15 writes
/// records of a little over 1 GiB (16 caps them at 1020 MiB). A length
/// that is garbage fails the CRC, or runs on past the segment's end.
const RECORD_MAX: u32 = u32::MAX;
/// `xlp_info` bits: the page starts with a record's continuation; the page
/// has a long header; ...; a record cut off by a crash was abandoned and
/// this page starts afresh (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
const FIRST_IS_CONTRECORD: u16 = 0x0001;
const LONG_HEADER_BIT: u16 = 0x0002;
const OVERWRITE_CONTRECORD: u16 = 0x0008;
const KNOWN_INFO: u16 = 0x000F;
/// `RM_XLOG_ID` and `XLOG_SWITCH`: the record that ends a segment early.
const RM_XLOG: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;

/// What the file is meant to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// A complete segment: WAL to its last byte, or to a switch.
    Complete,
    /// A `.partial`: WAL up to some point, zeros after.
    Partial,
}

/// What a segment that passed holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records checked whole (CRC included).
    pub records: u64,
    /// Where the last whole record ends.
    pub end: Option<Lsn>,
    /// Whether an `XLOG_SWITCH` record ended it early.
    pub switched: bool,
}

/// Checks the file `path`, segment `seg` of cluster `system`, as
/// [`verify`] does. A partial's WAL is taken to end at its last byte that
/// is not zero.
pub fn verify_file(
    path: &std::path::Path,
    seg: Segment,
    size: SegmentSize,
    system: u64,
    extent: Extent,
) -> Result<Verified, String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != size.bytes() {
        return Err(format!("{len} bytes, not {}", size.bytes()));
    }
    let mut limit = len;
    if extent == Extent::Partial {
        // Backwards to the last byte that is not zero.
        let mut buf = vec![0u8; 64 << 10];
        limit = 0;
        let mut at = len;
        while at > 0 {
            let n = (buf.len() as u64).min(at);
            at -= n;
            file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
            file.read_exact(&mut buf[..n as usize])
                .map_err(|e| e.to_string())?;
            if let Some(i) = buf[..n as usize].iter().rposition(|&b| b != 0) {
                limit = at + i as u64 + 1;
                break;
            }
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    }
    verify(
        std::io::BufReader::with_capacity(1 << 20, file),
        seg,
        size,
        system,
        limit,
    )
}

/// Reads segment `seg` (exactly `size` bytes) of cluster `system` from
/// `input` page by page and checks it, up to byte `limit` of the segment:
/// the segment's size for a complete one, for a partial the end of what
/// was received (a record that runs past it is cut off, not damaged; a
/// gap or a damaged record before it is damage). The error says what is
/// wrong and where, as a WAL position.
pub fn verify(
    mut input: impl Read,
    seg: Segment,
    size: SegmentSize,
    system: u64,
    limit: u64,
) -> Result<Verified, String> {
    let base = size.start(seg.segno).0;
    let mut walk = Walk {
        limit: base + limit.min(size.bytes()),
        block: 0,
        seg,
        magic: 0,
        pending: None,
        skip: None,
        prev: None,
        records: 0,
        end: None,
    };
    if limit == 0 {
        return Ok(walk.verified(false));
    }
    let mut head = [0u8; LONG_HEADER];
    input.read_exact(&mut head).map_err(|e| e.to_string())?;
    if u16_at(&head, 2) & LONG_HEADER_BIT == 0 {
        return Err("its first page has no long header".into());
    }
    if u64_at(&head, 24) != system {
        return Err(format!(
            "it belongs to cluster {}, not {system}",
            u64_at(&head, 24)
        ));
    }
    if u64::from(u32_at(&head, 32)) != size.bytes() {
        return Err(format!("its segment size is {}", u32_at(&head, 32)));
    }
    let block = u32_at(&head, 36) as usize;
    if !block.is_power_of_two() || !(1024..=65536).contains(&block) {
        return Err(format!("its page size is {block}"));
    }
    walk.block = block;
    walk.magic = u16_at(&head, 0);
    let mut page = vec![0u8; block];
    page[..LONG_HEADER].copy_from_slice(&head);
    input
        .read_exact(&mut page[LONG_HEADER..])
        .map_err(|e| e.to_string())?;
    let pages = size.bytes() / block as u64;
    for n in 0..pages {
        let at = base + n * block as u64;
        // (A partial's data never ends inside a page header: the server
        // sends WAL up to the end of a record. One that does holds no
        // record on this page.)
        let header = if n == 0 { LONG_HEADER } else { SHORT_HEADER };
        if at + header as u64 > walk.limit {
            break;
        }
        if n > 0 {
            input.read_exact(&mut page).map_err(|e| e.to_string())?;
        }
        match walk.page(&page, at, n == 0)? {
            Flow::Next => {}
            Flow::Switched => return Ok(walk.verified(true)),
            Flow::Ended => break,
        }
    }
    Ok(walk.verified(false))
}

enum Flow {
    /// Go on with the next page.
    Next,
    /// An `XLOG_SWITCH` ended the segment.
    Switched,
    /// A partial's WAL ends here.
    Ended,
}

/// A record being read: its start, length, the header bytes so far and
/// the CRC of its data so far.
struct Pending {
    start: u64,
    total: u32,
    got: usize,
    header: [u8; RECORD_HEADER],
    crc: u32,
}

struct Walk {
    /// Where the data ends (the segment's end, or a partial's last byte).
    limit: u64,
    block: usize,
    seg: Segment,
    magic: u16,
    pending: Option<Pending>,
    /// Bytes of a continuation from the previous segment still to skip.
    skip: Option<u32>,
    /// The last record's start (for the next one's `xl_prev`).
    prev: Option<u64>,
    records: u64,
    end: Option<u64>,
}

impl Walk {
    fn verified(&self, switched: bool) -> Verified {
        Verified {
            records: self.records,
            end: self.end.map(Lsn),
            switched,
        }
    }

    fn page(&mut self, page: &[u8], at: u64, first: bool) -> Result<Flow, String> {
        let info = u16_at(page, 2);
        let header_len = if first { LONG_HEADER } else { SHORT_HEADER };
        if u16_at(page, 0) != self.magic {
            return Err(format!(
                "the page at {} has magic {:#06x}, not {:#06x}",
                Lsn(at),
                u16_at(page, 0),
                self.magic
            ));
        }
        if info & !KNOWN_INFO != 0 || (info & LONG_HEADER_BIT != 0) != first {
            return Err(format!("the page at {} has flags {info:#06x}", Lsn(at)));
        }
        if u64_at(page, 8) != at {
            return Err(format!(
                "the page at {} says it is at {}",
                Lsn(at),
                Lsn(u64_at(page, 8))
            ));
        }
        let tli = u32_at(page, 4);
        if tli == 0 || tli > self.seg.tli {
            return Err(format!(
                "the page at {} is of timeline {tli}, in a segment of timeline {}",
                Lsn(at),
                self.seg.tli
            ));
        }
        let rem = u32_at(page, 16);
        let room = (self.block - header_len) as u32;
        let mut off = header_len;
        if info & FIRST_IS_CONTRECORD != 0 {
            if first {
                // The end of a record from the previous segment.
                self.skip = Some(rem);
            }
            if let Some(skip) = self.skip {
                if skip != rem {
                    return Err(format!(
                        "the page at {} continues a record with {rem} bytes left, not {skip}",
                        Lsn(at)
                    ));
                }
                if rem > room {
                    self.skip = Some(rem - room);
                    return Ok(Flow::Next);
                }
                self.skip = None;
                off = maxalign(header_len + rem as usize);
            } else if let Some(p) = &self.pending {
                let left = p.total - p.got as u32;
                if rem != left {
                    return Err(format!(
                        "the page at {} continues the record at {} with {rem} bytes left, not {left}",
                        Lsn(at),
                        Lsn(p.start)
                    ));
                }
                let take = left.min(room) as usize;
                self.feed(&page[header_len..header_len + take]);
                if take < left as usize {
                    return Ok(Flow::Next);
                }
                if let Some(flow) = self.finish(at + (header_len + take) as u64)? {
                    return Ok(flow);
                }
                off = maxalign(header_len + take);
            } else {
                return Err(format!(
                    "the page at {} continues a record that did not start",
                    Lsn(at)
                ));
            }
        } else if let Some(p) = &self.pending {
            if info & OVERWRITE_CONTRECORD == 0 {
                return Err(format!(
                    "the record at {} runs on into the page at {}, which does not continue it",
                    Lsn(p.start),
                    Lsn(at)
                ));
            }
            // A crash cut that record off; the server abandoned it.
            self.pending = None;
        } else if self.skip.is_some() {
            if info & OVERWRITE_CONTRECORD == 0 {
                return Err(format!(
                    "the page at {} does not continue the record the segment starts with",
                    Lsn(at)
                ));
            }
            // A crash cut off the record the segment started inside; the
            // server abandoned it and went on here.
            self.skip = None;
        }
        // Records starting on this page.
        while off < self.block {
            let start = at + off as u64;
            if start >= self.limit {
                return Ok(Flow::Ended);
            }
            let total = u32_at(page, off);
            if total == 0 {
                return Err(format!(
                    "its WAL ends at {}, but data follows up to {}",
                    Lsn(start),
                    Lsn(self.limit)
                ));
            }
            if !(RECORD_HEADER as u32..=RECORD_MAX).contains(&total) {
                return Err(format!("the record at {} has length {total}", Lsn(start)));
            }
            self.pending = Some(Pending {
                start,
                total,
                got: 0,
                header: [0; RECORD_HEADER],
                crc: !0,
            });
            let take = (total as usize).min(self.block - off);
            self.feed(&page[off..off + take]);
            if take < total as usize {
                return Ok(Flow::Next);
            }
            if let Some(flow) = self.finish(at + (off + take) as u64)? {
                return Ok(flow);
            }
            off = maxalign(off + take);
        }
        Ok(Flow::Next)
    }

    /// Adds `bytes` to the pending record.
    fn feed(&mut self, mut bytes: &[u8]) {
        let p = self.pending.as_mut().expect("a record is pending");
        if p.got < RECORD_HEADER {
            let n = (RECORD_HEADER - p.got).min(bytes.len());
            p.header[p.got..p.got + n].copy_from_slice(&bytes[..n]);
            p.got += n;
            bytes = &bytes[n..];
        }
        p.crc = crc32c_append(p.crc, bytes);
        p.got += bytes.len();
    }

    /// Checks the record just read whole, which ends at `end`: its
    /// `xl_prev` and CRC. One that ends past a partial's data and fails
    /// them was cut off by the end of what was received: the WAL ends
    /// before it.
    fn finish(&mut self, end: u64) -> Result<Option<Flow>, String> {
        let p = self.pending.take().expect("a record is pending");
        let crc = !crc32c_append(p.crc, &p.header[..CRC_AT]);
        let stored = u32_at(&p.header, CRC_AT);
        // A record whose last bytes are zeros runs past a partial's last
        // byte that is not zero: whole if its CRC says so, else cut off.
        if end > self.limit
            && (crc != stored || self.prev.is_some_and(|prev| u64_at(&p.header, 8) != prev))
        {
            return Ok(Some(Flow::Ended));
        }
        if let Some(prev) = self.prev
            && u64_at(&p.header, 8) != prev
        {
            return Err(format!(
                "the record at {} points back to {}, not to the record before it at {}",
                Lsn(p.start),
                Lsn(u64_at(&p.header, 8)),
                Lsn(prev)
            ));
        }
        if crc != stored {
            return Err(format!(
                "the record at {} fails its CRC ({crc:08x}, not {stored:08x})",
                Lsn(p.start)
            ));
        }
        self.records += 1;
        self.prev = Some(p.start);
        self.end = Some(end);
        if p.header[17] == RM_XLOG && p.header[16] & 0xF0 == XLOG_SWITCH {
            return Ok(Some(Flow::Switched));
        }
        Ok(None)
    }
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// CRC-32C (Castagnoli, reflected), continued from `crc` without the final
/// inversion: start from `!0`, invert at the end, as PostgreSQL's
/// `INIT_CRC32C`/`COMP_CRC32C`/`FIN_CRC32C`.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42(crc, bytes) };
        }
    }
    crc32c_table(crc, bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut crc = u64::from(crc);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

fn crc32c_table(mut crc: u32, bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    for &b in bytes {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// Well-formed WAL for tests here and in [`super::archive`].
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) const BLOCK: usize = 8192;

    /// Writes a segment the way PostgreSQL lays WAL out: page headers,
    /// MAXALIGNed records that run across pages, continuations.
    pub(crate) struct Builder {
        pub(crate) buf: Vec<u8>,
        system: u64,
        pub(crate) base: u64,
        tli: u32,
        pub(crate) pos: usize,
        pub(crate) prev: u64,
        /// Each whole record: its start (offset in the segment) and how
        /// many of its bytes are on its first page.
        pub(crate) whole: Vec<(usize, usize)>,
        seed: u64,
    }

    impl Builder {
        pub(crate) fn new(seg: Segment, size: SegmentSize, system: u64) -> Builder {
            Builder {
                buf: vec![0; size.bytes() as usize],
                system,
                base: size.start(seg.segno).0,
                tli: seg.tli,
                pos: 0,
                prev: size.start(seg.segno).0 - 4096,
                whole: Vec::new(),
                seed: 0x9E37_79B9_7F4A_7C15,
            }
        }

        pub(crate) fn random(&mut self) -> u64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed
        }

        pub(crate) fn page_header(&mut self, rem: usize) {
            let first = self.pos == 0;
            let info: u16 = u16::from(rem > 0) | if first { LONG_HEADER_BIT } else { 0 };
            let at = self.pos;
            self.buf[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            self.buf[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            self.buf[at + 4..at + 8].copy_from_slice(&self.tli.to_le_bytes());
            self.buf[at + 8..at + 16].copy_from_slice(&(self.base + at as u64).to_le_bytes());
            self.buf[at + 16..at + 20].copy_from_slice(&(rem as u32).to_le_bytes());
            if first {
                self.buf[24..32].copy_from_slice(&self.system.to_le_bytes());
                let len = self.buf.len() as u32;
                self.buf[32..36].copy_from_slice(&len.to_le_bytes());
                self.buf[36..40].copy_from_slice(&(BLOCK as u32).to_le_bytes());
                self.pos += LONG_HEADER;
            } else {
                self.pos += SHORT_HEADER;
            }
        }

        /// Lays `bytes` down from the current position; `cont`: they
        /// continue a record begun in the previous segment. Whether it all
        /// fit in the segment.
        pub(crate) fn put(&mut self, bytes: &[u8], cont: bool) -> bool {
            let mut i = 0;
            while i < bytes.len() {
                if self.pos == self.buf.len() {
                    return false;
                }
                if self.pos.is_multiple_of(BLOCK) {
                    let rem = if i > 0 || cont { bytes.len() - i } else { 0 };
                    self.page_header(rem);
                }
                let n = (bytes.len() - i).min(BLOCK - self.pos % BLOCK);
                self.buf[self.pos..self.pos + n].copy_from_slice(&bytes[i..i + n]);
                self.pos += n;
                i += n;
            }
            self.pos = maxalign(self.pos).min(self.buf.len());
            true
        }

        pub(crate) fn record(&mut self, len: usize, rmid: u8, info: u8) -> bool {
            if self.pos.is_multiple_of(BLOCK) && self.pos < self.buf.len() {
                // The header goes first; the record starts after it.
                self.page_header(0);
            }
            let start = self.base + self.pos as u64;
            let mut rec = vec![0u8; len];
            rec[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            rec[4..8].copy_from_slice(&735u32.to_le_bytes());
            rec[8..16].copy_from_slice(&self.prev.to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            for b in &mut rec[RECORD_HEADER..] {
                *b = (self.random() >> 24) as u8;
            }
            let crc = !crc32c_append(crc32c_append(!0, &rec[RECORD_HEADER..]), &rec[..CRC_AT]);
            rec[CRC_AT..RECORD_HEADER].copy_from_slice(&crc.to_le_bytes());
            let offset = self.pos;
            let on_first = len.min(BLOCK - offset % BLOCK);
            let fit = self.put(&rec, false);
            if fit {
                self.whole.push((offset, on_first));
            }
            self.prev = start;
            fit
        }

        /// A segment that starts with a 20,000-byte continuation, is full
        /// of records of 24 bytes to 3 pages, and ends inside one.
        pub(crate) fn full(seg: Segment, size: SegmentSize, system: u64) -> Builder {
            let mut b = Builder::new(seg, size, system);
            let lead: Vec<u8> = (0..20_000).map(|i| (i % 251) as u8 + 1).collect();
            assert!(b.put(&lead, true));
            loop {
                let len = match b.random() % 10 {
                    0 => 24,
                    1..=6 => 24 + (b.random() % 400) as usize,
                    7 | 8 => 100 + (b.random() % 8200) as usize,
                    _ => 8000 + (b.random() % 17_000) as usize,
                };
                if !b.record(len, 10, 0) {
                    return b;
                }
            }
        }
    }

    /// Segment `segno` of cluster `system`: records (their content from
    /// `seed`) filling about `data` bytes, then, if there is room, an
    /// `XLOG_SWITCH`; zeros after. As a complete segment or as a partial,
    /// it passes the record check.
    pub(crate) fn segment(
        segno: u64,
        size: SegmentSize,
        system: u64,
        data: usize,
        seed: u8,
    ) -> Vec<u8> {
        let mut b = Builder::new(Segment { tli: 1, segno }, size, system);
        b.seed ^= u64::from(seed) * 0x0100_0000_01B3;
        while b.pos < data.min(size.bytes() as usize) {
            let len = 24 + (b.random() % 600) as usize;
            if !b.record(len, 10, 0) {
                return b.buf;
            }
        }
        b.record(24, RM_XLOG, XLOG_SWITCH);
        b.buf
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{BLOCK, Builder};
    use super::*;

    const SYSTEM: u64 = 7_123_456_789;

    fn seg() -> (Segment, SegmentSize) {
        (
            Segment { tli: 2, segno: 37 },
            SegmentSize::new(1 << 20).unwrap(),
        )
    }

    fn check(buf: &[u8], limit: usize) -> Result<Verified, String> {
        let (s, size) = seg();
        verify(buf, s, size, SYSTEM, limit as u64)
    }

    #[test]
    fn crc32c_is_castagnoli_s() {
        let crc = |b: &[u8]| !crc32c_append(!0, b);
        assert_eq!(crc(b"123456789"), 0xE306_9283);
        assert_eq!(!crc32c_table(!0, b"123456789"), 0xE306_9283);
        let long: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 256) as u8).collect();
        assert_eq!(
            crc32c_append(!0, &long),
            crc32c_table(!0, &long),
            "the SSE 4.2 path and the table agree"
        );
        let (a, b) = long.split_at(4321);
        assert_eq!(
            crc32c_append(crc32c_append(!0, a), b),
            crc32c_append(!0, &long)
        );
    }

    #[test]
    fn a_well_formed_segment_passes_with_every_whole_record_checked() {
        let b = Builder::full(seg().0, seg().1, SYSTEM);
        let v = check(&b.buf, b.buf.len()).unwrap();
        assert_eq!(v.records, b.whole.len() as u64);
        assert!(v.records > 100, "{v:?}");
        assert!(!v.switched);
        let (last, _) = b.whole.last().unwrap();
        assert!(v.end.unwrap().0 > b.base + *last as u64);
    }

    #[test]
    fn any_changed_byte_of_a_record_fails_the_segment() {
        let mut b = Builder::full(seg().0, seg().1, SYSTEM);
        let whole = b.whole.clone();
        let mut tried = 0;
        for (i, (start, on_first)) in whole.iter().enumerate().step_by(7) {
            let k = (b.random() as usize) % on_first;
            let at = start + k;
            let mut damaged = b.buf.clone();
            damaged[at] ^= 1 << (b.random() % 8);
            let err = check(&damaged, damaged.len()).unwrap_err();
            let rec = Lsn(b.base + *start as u64).to_string();
            assert!(
                err.contains(&rec) || k < 4,
                "record {i} at {rec}, byte {k}: {err}"
            );
            tried += 1;
        }
        assert!(tried > 20);
        // A body zeroed behind intact page headers (what a torn write or a
        // bad disk leaves).
        let mut zeroed = b.buf.clone();
        let page = 40 * BLOCK;
        zeroed[page + SHORT_HEADER..page + BLOCK].fill(0);
        let err = check(&zeroed, zeroed.len()).unwrap_err();
        assert!(!err.is_empty());
        // A page header that names another place, cluster or timeline.
        for (at, bad) in [(8, 0xAAu8), (24, 0x55), (4, 0x07)] {
            let mut d = b.buf.clone();
            let p = if at == 24 { 0 } else { 12 * BLOCK };
            d[p + at] ^= bad;
            let err = check(&d, d.len()).unwrap_err();
            assert!(
                err.contains("says it is at")
                    || err.contains("cluster")
                    || err.contains("timeline"),
                "{err}"
            );
        }
        // The continuation the segment starts with must fit its headers.
        let mut d = b.buf.clone();
        d[BLOCK + 16] ^= 1;
        let err = check(&d, d.len()).unwrap_err();
        assert!(err.contains("continues a record"), "{err}");
    }

    #[test]
    fn a_record_abandoned_at_a_crash_is_not_damage() {
        // The segment starts inside a long record; a crash cut it off and
        // the server wrote on from the next page, saying so.
        let (s, size) = seg();
        let mut b = Builder::new(s, size, SYSTEM);
        let lead = vec![7u8; 30_000];
        assert!(b.put(&lead[..10_000], true));
        // (The page after: the continuation was never written.)
        b.buf[..BLOCK][16..20].copy_from_slice(&30_000u32.to_le_bytes());
        b.pos = 2 * BLOCK;
        b.page_header(0);
        let info = u16::from_le_bytes([b.buf[2 * BLOCK + 2], b.buf[2 * BLOCK + 3]]);
        b.buf[2 * BLOCK + 2..2 * BLOCK + 4]
            .copy_from_slice(&(info | OVERWRITE_CONTRECORD).to_le_bytes());
        b.prev = b.base + 40;
        for len in [100, 9000, 24] {
            assert!(b.record(len, 10, 0));
        }
        assert!(b.record(24, RM_XLOG, XLOG_SWITCH));
        // Page 1 must continue the record too (it is the crash's hole):
        // a page of the abandoned record was written.
        let mut with_page1 = b.buf.clone();
        with_page1[BLOCK..BLOCK + 2].copy_from_slice(&0xD110u16.to_le_bytes());
        with_page1[BLOCK + 2..BLOCK + 4].copy_from_slice(&1u16.to_le_bytes());
        with_page1[BLOCK + 4..BLOCK + 8].copy_from_slice(&2u32.to_le_bytes());
        with_page1[BLOCK + 8..BLOCK + 16].copy_from_slice(&(b.base + BLOCK as u64).to_le_bytes());
        with_page1[BLOCK + 16..BLOCK + 20]
            .copy_from_slice(&(30_000u32 - (BLOCK - LONG_HEADER) as u32).to_le_bytes());
        let v = check(&with_page1, with_page1.len()).unwrap();
        assert_eq!((v.records, v.switched), (4, true));
        // Without the flag it is a hole.
        let mut no_flag = with_page1.clone();
        no_flag[2 * BLOCK + 2..2 * BLOCK + 4].copy_from_slice(&info.to_le_bytes());
        let err = check(&no_flag, no_flag.len()).unwrap_err();
        assert!(err.contains("does not continue"), "{err}");
    }

    #[test]
    fn after_a_switch_the_rest_is_padding() {
        let (s, size) = seg();
        let mut b = Builder::new(s, size, SYSTEM);
        for len in [100, 9000, 24, 300] {
            assert!(b.record(len, 10, 0));
        }
        assert!(b.record(24, RM_XLOG, XLOG_SWITCH));
        let v = check(&b.buf, b.buf.len()).unwrap();
        assert_eq!((v.records, v.switched), (5, true));
        // What follows the switch is not read (PostgreSQL does not either).
        let mut d = b.buf.clone();
        d[300_000] = 9;
        assert!(check(&d, d.len()).unwrap().switched);
        // Without the switch, WAL that stops inside a complete segment is
        // a hole.
        let mut b = Builder::new(s, size, SYSTEM);
        for len in [100, 9000, 24, 300] {
            assert!(b.record(len, 10, 0));
        }
        let err = check(&b.buf, b.buf.len()).unwrap_err();
        assert!(err.contains("its WAL ends at"), "{err}");
    }

    #[test]
    fn a_partial_is_checked_up_to_where_its_data_ends() {
        let b = Builder::full(seg().0, seg().1, SYSTEM);
        let whole = b.whole.clone();
        for cut in [41, 5000, 8192, 8200, 100_000, 333_333, 700_001] {
            let mut p = b.buf.clone();
            p[cut..].fill(0);
            let limit = p.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
            let v = check(&p, limit).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            // Every record that ended before the cut was checked.
            let before = whole.iter().filter(|(s, _)| *s + 24 <= cut).count() as u64;
            assert!(
                v.records + 2 >= before && v.records <= before,
                "cut {cut}: {v:?} of {before}"
            );
        }
        // A hole with data after it is damage, not the end.
        let mut p = b.buf.clone();
        p[500_000..].fill(0);
        p[200_000..200_000 + 3 * BLOCK].fill(0);
        let limit = p.iter().rposition(|&x| x != 0).unwrap() + 1;
        assert!(check(&p, limit).is_err());
        // Nothing received yet.
        let v = check(&vec![0u8; b.buf.len()], 0).unwrap();
        assert_eq!(v.records, 0);
    }

    #[test]
    fn a_file_of_the_wrong_size_or_cluster_fails() {
        let (s, size) = seg();
        let b = Builder::full(s, size, SYSTEM);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, &b.buf).unwrap();
        assert!(verify_file(&path, s, size, SYSTEM, Extent::Complete).is_ok());
        let err = verify_file(&path, s, size, SYSTEM + 1, Extent::Complete).unwrap_err();
        assert!(err.contains("cluster"), "{err}");
        std::fs::write(&path, &b.buf[..b.buf.len() - 1]).unwrap();
        let err = verify_file(&path, s, size, SYSTEM, Extent::Complete).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        let mut p = b.buf.clone();
        p[600_000..].fill(0);
        std::fs::write(&path, &p).unwrap();
        verify_file(&path, s, size, SYSTEM, Extent::Partial).unwrap();
        assert!(verify_file(&path, s, size, SYSTEM, Extent::Complete).is_err());
    }
}
