//! Reading many blobs with few requests: blobs are grouped by pack and
//! nearby ones merged into one ranged read (a [`Span`]), as restic's
//! restorer does. Against object storage a request costs a round trip
//! whatever its size, so reading a pack's needed part at once instead of
//! blob by blob is what makes restores of many small files fast.

use super::index::BlobLocation;
use super::{Id, RepoError, Repository};
use crate::storage::FileType;

/// Blobs this far apart (bytes) or closer are read with one request: the
/// bytes between cost less than another round trip.
pub const MAX_GAP: u64 = 1 << 20;
/// A span is not grown past this many bytes (one blob larger than this is
/// its own span): what one request holds in memory.
pub const MAX_SPAN: u64 = 4 << 20;

/// A part of one pack read with one request, and the blobs in it, by
/// offset.
#[derive(Debug, Clone)]
pub struct Span {
    /// The pack.
    pub pack: Id,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The blobs inside, by offset, each once.
    pub blobs: Vec<(Id, BlobLocation)>,
}

impl Span {
    fn of(id: Id, loc: BlobLocation) -> Self {
        Span {
            pack: loc.pack,
            start: loc.offset as u64,
            end: loc.offset as u64 + loc.length as u64,
            blobs: vec![(id, loc)],
        }
    }

    /// Whether `loc` can join this span: same pack, at or after its end,
    /// close enough, and the span stays small enough.
    fn takes(&self, loc: &BlobLocation) -> bool {
        let start = loc.offset as u64;
        let end = start + loc.length as u64;
        loc.pack == self.pack
            && start >= self.end
            && start - self.end <= MAX_GAP
            && end - self.start <= MAX_SPAN
    }

    fn push(&mut self, id: Id, loc: BlobLocation) {
        self.end = loc.offset as u64 + loc.length as u64;
        self.blobs.push((id, loc));
    }

    /// Stored bytes the span reads.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the span reads nothing (it never does: it holds a blob).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Group `blobs` (duplicates allowed) into spans: by pack, by offset, each
/// blob once. Spans come out in pack order.
pub fn plan(blobs: impl IntoIterator<Item = (Id, BlobLocation)>) -> Vec<Span> {
    let mut all: Vec<(Id, BlobLocation)> = blobs.into_iter().collect();
    all.sort_by_key(|(_, l)| (l.pack, l.offset));
    all.dedup_by(|a, b| a.1.pack == b.1.pack && a.1.offset == b.1.offset);
    let mut spans: Vec<Span> = Vec::new();
    for (id, loc) in all {
        match spans.last_mut() {
            Some(s) if s.takes(&loc) => s.push(id, loc),
            _ => spans.push(Span::of(id, loc)),
        }
    }
    spans
}

/// Consecutive blobs of a file's content that one span can read, each
/// with its location (none: the index does not know it).
pub type Run = Vec<(Id, Option<BlobLocation>)>;

/// Split a file's content, in order, into runs of consecutive blobs that
/// one span each can read: same pack, ascending and near. A blob the
/// index does not know is its own run, with no location.
pub fn runs(content: &[Id], locate: impl Fn(&Id) -> Option<BlobLocation>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut span: Option<Span> = None;
    for id in content {
        let loc = locate(id);
        match (loc, span.as_mut()) {
            (Some(l), Some(s)) if s.takes(&l) => {
                s.push(*id, l);
                runs.last_mut()
                    .expect("a span has a run")
                    .push((*id, Some(l)));
            }
            (Some(l), _) => {
                span = Some(Span::of(*id, l));
                runs.push(vec![(*id, Some(l))]);
            }
            (None, _) => {
                span = None;
                runs.push(vec![(*id, None)]);
            }
        }
    }
    runs
}

impl Repository {
    /// Read a span with one request and decode each of its blobs. A failed
    /// read fails the whole span; a damaged blob fails only itself. Each
    /// blob is authenticated (a store with more than one copy tries the
    /// next copy when any blob of the span fails its MAC).
    pub async fn load_span(
        &self,
        span: &Span,
    ) -> Result<Vec<(Id, Result<Vec<u8>, RepoError>)>, RepoError> {
        let key = &self.key;
        let (start, blobs) = (span.start, &span.blobs);
        let stored = self
            .backend
            .load_range_verified(
                FileType::Pack,
                &span.pack.to_hex(),
                start,
                span.len(),
                &|data: &[u8]| {
                    blobs.iter().all(|(_, l)| {
                        let from = (l.offset as u64 - start) as usize;
                        data.get(from..from + l.length as usize)
                            .is_some_and(|b| key.authentic(b))
                    })
                },
            )
            .await?;
        if stored.len() as u64 != span.len() {
            return Err(RepoError::corrupt(
                format!("pack {}", span.pack),
                format!(
                    "{} bytes read at offset {start}, {} expected (the pack is shorter than the index says)",
                    stored.len(),
                    span.len()
                ),
            ));
        }
        let (key, blobs) = (self.key.clone(), span.blobs.clone());
        let decode = move || {
            blobs
                .iter()
                .map(|(id, l)| {
                    let from = (l.offset as u64 - start) as usize;
                    let bytes = &stored[from..from + l.length as usize];
                    (*id, super::decode_blob(&key, id, l, bytes))
                })
                .collect::<Vec<_>>()
        };
        if span.len() < super::PARALLEL_DECODE as u64 {
            return Ok(decode());
        }
        // Decrypting, decompressing and hashing run off the async task, so
        // spans read ahead decode in parallel.
        Ok(crate::util::blocking(decode).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::BlobType;

    fn loc(pack: u8, offset: u32, length: u32) -> BlobLocation {
        BlobLocation {
            pack: Id([pack; 32]),
            kind: BlobType::Data,
            offset,
            length,
            uncompressed_length: None,
        }
    }

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn near_blobs_of_a_pack_share_a_span_and_far_ones_do_not() {
        let spans = plan([
            (id(3), loc(1, 5000, 100)),
            (id(1), loc(1, 0, 1000)),
            (id(2), loc(1, 1000, 4000)),
            (id(4), loc(1, 5100 + MAX_GAP as u32 + 1, 10)),
            (id(5), loc(2, 0, 10)),
            (id(1), loc(1, 0, 1000)),
        ]);
        let shape: Vec<(u8, u64, u64, usize)> = spans
            .iter()
            .map(|s| (s.pack.0[0], s.start, s.end, s.blobs.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, 5100, 3),
                (1, 5101 + MAX_GAP, 5111 + MAX_GAP, 1),
                (2, 0, 10, 1),
            ]
        );
    }

    #[test]
    fn a_span_stops_growing_at_its_limit_but_a_large_blob_is_read_whole() {
        let big = MAX_SPAN as u32 + 7;
        let spans = plan([
            (id(1), loc(1, 0, big)),
            (id(2), loc(1, big, 10)),
            (id(3), loc(1, big + 10, MAX_SPAN as u32 - 10)),
            (id(4), loc(1, big + MAX_SPAN as u32, 1)),
        ]);
        let lens: Vec<u64> = spans.iter().map(Span::len).collect();
        assert_eq!(lens, vec![big as u64, MAX_SPAN, 1]);
    }

    #[test]
    fn runs_follow_the_content_order_and_break_where_a_span_would() {
        let locs = std::collections::HashMap::from([
            (id(1), loc(1, 0, 10)),
            (id(2), loc(1, 10, 10)),
            (id(3), loc(2, 0, 10)),
        ]);
        let content = [id(1), id(2), id(1), id(9), id(3)];
        let runs = runs(&content, |i| locs.get(i).copied());
        let shape: Vec<Vec<(u8, bool)>> = runs
            .iter()
            .map(|r| r.iter().map(|(i, l)| (i.0[0], l.is_some())).collect())
            .collect();
        // id 1 again goes back in the pack: a new run; id 9 is unknown.
        assert_eq!(
            shape,
            vec![
                vec![(1, true), (2, true)],
                vec![(1, true)],
                vec![(9, false)],
                vec![(3, true)],
            ]
        );
    }
}
