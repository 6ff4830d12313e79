//! Timeline history files and the paths they describe.
//!
//! After a promotion PostgreSQL starts a new timeline and writes
//! `TTTTTTTT.history`: one line per ancestor, oldest first, each the
//! ancestor's ID, the position where the WAL left it, and a reason
//! (`1`, tab, `0/8002C48`, tab, `before 2026-12-07 15:40:55.512927+00`). A timeline
//! without a history file (normally 1) has no ancestors. Recovery towards
//! a timeline reads, for each segment, the file of the newest timeline on
//! its path that had begun by that segment; [`Path::timeline_of_segment`]
//! is that rule, and retention and the restore plan rest on it.

use super::lsn::{Lsn, SegmentSize};

/// Where the WAL of one ancestor ends on a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The ancestor timeline.
    pub tli: u32,
    /// The first position that is no longer on it (the next timeline's
    /// start).
    pub end: Lsn,
}

/// The path from the cluster's first timeline to one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// The timeline the path leads to.
    pub tli: u32,
    /// Its ancestors, oldest first.
    pub ancestors: Vec<Switch>,
}

/// A history file PostgreSQL could not have written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    /// A line is not `<tli> <position> <reason>`.
    #[error(
        "history file of timeline {tli}, line {line}: {text:?} is not \"<timeline> <position> <reason>\""
    )]
    Syntax {
        /// The timeline whose file it is.
        tli: u32,
        /// The line's number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// Timelines not increasing, or one not older than the file's own,
    /// or positions going back.
    #[error("history file of timeline {tli}: {why}")]
    Order {
        /// The timeline whose file it is.
        tli: u32,
        /// What is out of order.
        why: String,
    },
}

impl Path {
    /// The path to a timeline with no history file.
    pub fn root(tli: u32) -> Path {
        Path {
            tli,
            ancestors: Vec::new(),
        }
    }

    /// Read timeline `tli`'s history file.
    pub fn parse(tli: u32, text: &str) -> Result<Path, HistoryError> {
        let mut ancestors: Vec<Switch> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || HistoryError::Syntax {
                tli,
                line: i + 1,
                text: line.chars().take(200).collect(),
            };
            let mut fields = line.split_whitespace();
            let parent: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(syntax)?;
            let end: Lsn = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(syntax)?;
            let order = |why: String| HistoryError::Order { tli, why };
            if let Some(last) = ancestors.last() {
                if parent <= last.tli {
                    return Err(order(format!(
                        "timeline {parent} follows timeline {}",
                        last.tli
                    )));
                }
                if end < last.end {
                    return Err(order(format!(
                        "timeline {parent} ends at {end}, before timeline {} ended at {}",
                        last.tli, last.end
                    )));
                }
            }
            if parent == 0 || parent >= tli {
                return Err(order(format!(
                    "timeline {parent} cannot be an ancestor of timeline {tli}"
                )));
            }
            ancestors.push(Switch { tli: parent, end });
        }
        Ok(Path { tli, ancestors })
    }

    /// Where timeline `tli` begins on this path: 0 for the first, the
    /// previous one's end otherwise; `None` if `tli` is not on the path.
    pub fn begin(&self, tli: u32) -> Option<Lsn> {
        let mut begin = Lsn(0);
        for a in &self.ancestors {
            if a.tli == tli {
                return Some(begin);
            }
            begin = a.end;
        }
        (tli == self.tli).then_some(begin)
    }

    /// Where timeline `tli` ends on this path (`None` for the path's own
    /// timeline, which has not ended, and for one not on the path).
    pub fn end(&self, tli: u32) -> Option<Lsn> {
        self.ancestors.iter().find(|a| a.tli == tli).map(|a| a.end)
    }

    /// Whether `tli` is on this path.
    pub fn contains(&self, tli: u32) -> bool {
        tli == self.tli || self.ancestors.iter().any(|a| a.tli == tli)
    }

    /// The timeline whose WAL holds position `lsn` on this path.
    pub fn timeline_at(&self, lsn: Lsn) -> u32 {
        self.ancestors
            .iter()
            .find(|a| lsn < a.end)
            .map_or(self.tli, |a| a.tli)
    }

    /// The timeline whose file of segment `segno` recovery along this path
    /// reads: the newest one that had begun by that segment (PostgreSQL's
    /// XLogFileReadAnyTLI). The segment where a timeline begins is read
    /// from the new timeline; the old one's copy ends in a partial.
    pub fn timeline_of_segment(&self, segno: u64, size: SegmentSize) -> u32 {
        let mut chosen = self.ancestors.first().map_or(self.tli, |a| a.tli);
        for (i, a) in self.ancestors.iter().enumerate() {
            if size.segno(a.end) <= segno {
                chosen = self.ancestors.get(i + 1).map_or(self.tli, |n| n.tli);
            }
        }
        chosen
    }

    /// Whether a base backup taken on timeline `tli` at `start` can
    /// recover along this path: its timeline is on the path and was not
    /// left before the backup began.
    pub fn reachable_from(&self, tli: u32, start: Lsn) -> bool {
        match self.end(tli) {
            Some(end) => end >= start,
            None => tli == self.tli,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn a_history_file_as_postgresql_writes_it() {
        // F11 of docs/design/pitr.md, and a third timeline after it.
        let text = "1\t0/8002C48\tbefore 2026-12-07 15:40:55.512927+00\n\
                    # a comment\n\n\
                    2\t0/9A000000\tno recovery target specified\n";
        let path = Path::parse(3, text).unwrap();
        assert_eq!(
            path.ancestors,
            vec![
                Switch {
                    tli: 1,
                    end: lsn("0/8002C48")
                },
                Switch {
                    tli: 2,
                    end: lsn("0/9A000000")
                }
            ]
        );
        assert_eq!(path.begin(1), Some(Lsn(0)));
        assert_eq!(path.begin(2), Some(lsn("0/8002C48")));
        assert_eq!(path.begin(3), Some(lsn("0/9A000000")));
        assert_eq!(path.begin(4), None);
        assert_eq!(path.end(2), Some(lsn("0/9A000000")));
        assert_eq!(path.end(3), None);
        assert_eq!(path.timeline_at(lsn("0/8002C47")), 1);
        assert_eq!(path.timeline_at(lsn("0/8002C48")), 2);
        assert_eq!(path.timeline_at(lsn("5/0")), 3);
        let size = SegmentSize::DEFAULT;
        // Segment 8 holds the switch to 2: read from timeline 2.
        assert_eq!(path.timeline_of_segment(7, size), 1);
        assert_eq!(path.timeline_of_segment(8, size), 2);
        assert_eq!(path.timeline_of_segment(0x99, size), 2);
        assert_eq!(path.timeline_of_segment(0x9A, size), 3);
        assert_eq!(Path::root(1).timeline_of_segment(0x9A, size), 1);
    }

    #[test]
    fn which_base_backups_can_recover_along_a_path() {
        let path = Path::parse(2, "1\t0/8002C48\tx\n").unwrap();
        // Taken on 1 before the fork: yes. On 1 after it: that WAL is
        // another branch. On 2: yes. On 3: not on the path.
        assert!(path.reachable_from(1, lsn("0/7000028")));
        assert!(path.reachable_from(1, lsn("0/8002C48")));
        assert!(!path.reachable_from(1, lsn("0/8002C49")));
        assert!(path.reachable_from(2, lsn("0/9000028")));
        assert!(!path.reachable_from(3, lsn("0/9000028")));
    }

    #[test]
    fn files_postgresql_could_not_have_written_are_refused_with_the_line() {
        let err = Path::parse(2, "1\tnot-a-position\tx\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(Path::parse(2, "2\t0/1\tx\n").is_err());
        assert!(Path::parse(4, "2\t0/9\tx\n1\t0/A\tx\n").is_err());
        assert!(Path::parse(4, "1\t0/9\tx\n2\t0/8\tx\n").is_err());
        assert!(Path::parse(2, "0\t0/9\tx\n").is_err());
        assert!(Path::parse(2, "1\n").is_err());
        // An empty file: no ancestors.
        assert_eq!(Path::parse(1, "").unwrap(), Path::root(1));
    }
}
