//! The plan of a point-in-time restore (docs/design/pitr.md §8), from
//! tags and the archive's catalog only: which timeline, which base
//! backup, and whether the WAL between them is all there. Nothing is
//! touched until the plan holds.

use super::basebackup::BaseBackup;
use super::history::Path as TimelinePath;
use super::lsn::{Lsn, Segment, SegmentSize};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// After the last transaction that committed at or before this time
    /// (commit records' times, the server's clock).
    Time(DateTime<Utc>),
    /// After the WAL record at this position.
    Lsn(Lsn),
    /// After this transaction's commit.
    Xid(u64),
    /// At the end of the archived WAL.
    Latest,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time(t) => write!(
                f,
                "time {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            Target::Lsn(l) => write!(f, "WAL position {l}"),
            Target::Xid(x) => write!(f, "transaction {x}"),
            Target::Latest => write!(f, "the end of the archived WAL"),
        }
    }
}

/// A base backup the plan may choose.
#[derive(Clone, Debug)]
pub struct Candidate<I> {
    /// The snapshot's id.
    pub id: I,
    /// What its tags say.
    pub base: BaseBackup,
}

/// What the archive holds, as the plan sees it.
pub trait Archived {
    /// Whether complete segment `s` is archived.
    fn has_segment(&self, s: Segment) -> bool;
    /// Whether only a partial of segment `s` is archived.
    fn has_partial(&self, s: Segment) -> bool;
    /// The newest segment of timeline `tli` archived, complete or partial.
    fn newest(&self, tli: u32) -> Option<Segment>;
}

/// A plan that holds.
#[derive(Clone, Debug)]
pub struct Plan<I> {
    /// The base backup chosen.
    pub base: Candidate<I>,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// The first segment recovery reads (the base backup's start).
    pub first: Segment,
    /// The last segment of the gapless run from `first` the archive
    /// holds, on the timeline's path: recovery cannot go past it.
    pub last: Segment,
    /// Whether `last` is held only as a partial (the segment the stream
    /// was receiving).
    pub last_partial: bool,
    /// The first segment missing after `last` when the archive holds WAL
    /// beyond it: recovery to a time cannot pass it.
    pub gap: Option<Segment>,
    /// Why each newer base backup was not chosen.
    pub passed_over: Vec<(I, String)>,
}

/// Why no plan holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Choose the base backup and check the WAL chain. `bases` are the job's
/// base backups of one cluster, any order; `path` is the timeline's
/// history; `chosen` is a base backup the user named.
pub fn plan<I: Clone + std::fmt::Display + PartialEq>(
    bases: &[Candidate<I>],
    archive: &impl Archived,
    path: &TimelinePath,
    size: SegmentSize,
    target: &Target,
    chosen: Option<&I>,
) -> Result<Plan<I>, PlanError> {
    let mut sorted: Vec<&Candidate<I>> = bases.iter().collect();
    // Newest first: the least WAL to replay.
    sorted.sort_by_key(|c| std::cmp::Reverse((c.base.stop, c.base.stop_time)));
    if let Target::Xid(_) = target {
        // Tags do not say which transactions a base backup already holds:
        // the oldest one whose WAL has no gap reaches every transaction
        // after it.
        sorted.reverse();
    }
    let mut passed_over = Vec::new();
    let mut refusal = None;
    for c in sorted {
        if chosen.is_some_and(|id| *id != c.id) {
            continue;
        }
        let why = if !path.reachable_from(c.base.tli, c.base.start) {
            Some(format!(
                "taken on timeline {} at {}, which is not on timeline {}'s history",
                c.base.tli, c.base.start, path.tli
            ))
        } else {
            match target {
                Target::Time(t) if c.base.stop_time > *t => Some(format!(
                    "it ended at {}, after the target",
                    c.base
                        .stop_time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                )),
                Target::Lsn(l) if c.base.stop > *l => Some(format!(
                    "it is consistent only from {}, after the target",
                    c.base.stop
                )),
                _ => None,
            }
        };
        if let Some(why) = why {
            passed_over.push((c.id.clone(), why));
            continue;
        }
        match chain(c, archive, path, size, target) {
            Ok(plan) => {
                return Ok(Plan {
                    passed_over,
                    ..plan
                });
            }
            // A transaction may be after a gap that a newer base backup
            // starts beyond: try it.
            Err(e) if matches!(target, Target::Xid(_)) => {
                passed_over.push((c.id.clone(), e.0.clone()));
                refusal.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = refusal
        && passed_over.len() == 1
    {
        return Err(e);
    }
    let mut msg = match chosen {
        Some(id) => format!("base backup {id} cannot recover to {target}"),
        None if bases.is_empty() => {
            "the job has no physical base backup of this cluster (`cairn backup --job` with mode = \"physical\" takes one)".to_string()
        }
        None => format!("no base backup can recover to {target}"),
    };
    for (id, why) in &passed_over {
        msg.push_str(&format!("; {id}: {why}"));
    }
    Err(PlanError(msg))
}

/// The WAL chain from base backup `c` on `path`: the gapless run of
/// segments from its start, which must reach its stop, and the target's
/// position for [`Target::Lsn`]. For [`Target::Latest`] (and an xid,
/// which may be anywhere) the run must also reach the newest WAL archived
/// on the path: a gap would end recovery early, quietly.
fn chain<I: Clone + std::fmt::Display>(
    c: &Candidate<I>,
    archive: &impl Archived,
    path: &TimelinePath,
    size: SegmentSize,
    target: &Target,
) -> Result<Plan<I>, PlanError> {
    let segment = |segno: u64| Segment {
        tli: path.timeline_of_segment(segno, size),
        segno,
    };
    let first = segment(size.segno(c.base.start));
    let mut last = None;
    let mut last_partial = false;
    let mut segno = first.segno;
    loop {
        let s = segment(segno);
        if archive.has_segment(s) {
            last = Some(s);
            segno += 1;
            continue;
        }
        if archive.has_partial(s) {
            last = Some(s);
            last_partial = true;
        }
        break;
    }
    let missing = segment(segno + u64::from(last_partial));
    // WAL archived on the path after the missing segment: a gap.
    let newest = std::iter::once(path.tli)
        .chain(path.ancestors.iter().map(|a| a.tli))
        .filter_map(|t| {
            let n = archive.newest(t)?;
            // An ancestor's WAL counts only up to where the path leaves it.
            match path.end(t) {
                Some(end) => Some(n.segno.min(size.segno(end))),
                None => Some(n.segno),
            }
        })
        .max();
    let gap = newest.filter(|n| *n >= missing.segno).map(|_| missing);
    let lacks = |what: String| {
        PlanError(format!(
            "base backup {}: the archive lacks WAL segment {}, needed from its start {} to {what}{}",
            c.id,
            missing.name(size),
            c.base.start,
            if last_partial {
                format!(
                    " (it holds only the part of {} streamed so far)",
                    last.map(|s| s.name(size)).unwrap_or_default()
                )
            } else {
                String::new()
            }
        ))
    };
    // The stop: the backup's end record ends at or before it.
    let stop = c.base.stop;
    if !last.is_some_and(|l| {
        let end = size.end(l.segno);
        stop < end || (stop == end && !last_partial)
    }) {
        return Err(lacks(format!("its stop {stop}")));
    }
    let last = last.expect("checked above");
    match target {
        // Recovery stops after the first record at or past the position:
        // it reads the segment after the position's whenever no record
        // starts in the rest of its own (a switch, its very end). Only the
        // partial at the stream's end may hold the position itself.
        Target::Lsn(l)
            if !(size.segno(*l) < last.segno || (last_partial && size.segno(*l) == last.segno)) =>
        {
            return Err(lacks(format!("the target {l}")));
        }
        Target::Latest | Target::Xid(_) if gap.is_some() => {
            return Err(PlanError(format!(
                "base backup {}: the archive lacks WAL segment {} but holds WAL after it (to {}): recovery would end quietly before the gap; restore to a moment before it, or from a base backup taken after it",
                c.id,
                missing.name(size),
                newest.map(|n| segment(n).name(size)).unwrap_or_default()
            )));
        }
        _ => {}
    }
    Ok(Plan {
        timeline: path.tli,
        first,
        last,
        last_partial,
        gap,
        base: c.clone(),
        passed_over: Vec::new(),
    })
}

/// The timeline a restore follows when none is named: the newest one of
/// the archive whose history includes the base backups' timeline `from`
/// (a failover within one cluster's lineage), else `from`.
pub fn default_timeline(paths: &BTreeMap<u32, TimelinePath>, from: u32) -> u32 {
    paths
        .values()
        .filter(|p| p.contains(from))
        .map(|p| p.tli)
        .max()
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    struct Held {
        complete: BTreeSet<Segment>,
        partial: BTreeSet<Segment>,
    }

    impl Archived for Held {
        fn has_segment(&self, s: Segment) -> bool {
            self.complete.contains(&s)
        }
        fn has_partial(&self, s: Segment) -> bool {
            !self.complete.contains(&s) && self.partial.contains(&s)
        }
        fn newest(&self, tli: u32) -> Option<Segment> {
            self.complete
                .iter()
                .chain(self.partial.iter())
                .filter(|s| s.tli == tli)
                .max()
                .copied()
        }
    }

    const MIB16: u64 = 16 << 20;

    fn lsn(segno: u64, off: u64) -> Lsn {
        Lsn(segno * MIB16 + off)
    }

    fn base(id: &'static str, start: u64, stop: u64, minute: u32) -> Candidate<&'static str> {
        Candidate {
            id,
            base: BaseBackup {
                system: 7,
                tli: 1,
                start: lsn(start, 0x28),
                stop: lsn(stop, 0x100),
                stop_time: format!("2026-12-07T10:{minute:02}:00Z").parse().unwrap(),
                segment_size: SegmentSize::DEFAULT,
            },
        }
    }

    fn held(tli: u32, range: std::ops::RangeInclusive<u64>, partial: Option<u64>) -> Held {
        Held {
            complete: range.map(|segno| Segment { tli, segno }).collect(),
            partial: partial
                .map(|segno| Segment { tli, segno })
                .into_iter()
                .collect(),
        }
    }

    fn at(minute: u32, second: u32) -> Target {
        Target::Time(
            format!("2026-12-07T10:{minute:02}:{second:02}Z")
                .parse()
                .unwrap(),
        )
    }

    #[test]
    fn the_newest_base_backup_that_ended_before_the_target_is_chosen() {
        let bases = [base("a", 2, 2, 1), base("b", 5, 6, 10), base("c", 9, 9, 20)];
        let archive = held(1, 2..=11, Some(12));
        let path = TimelinePath::root(1);
        let size = SegmentSize::DEFAULT;
        let p = plan(&bases, &archive, &path, size, &at(15, 0), None).unwrap();
        assert_eq!(p.base.id, "b");
        assert_eq!(
            p.passed_over,
            vec![(
                "c",
                "it ended at 2026-12-07T10:20:00.000000Z, after the target".to_string()
            )]
        );
        assert_eq!(p.first, Segment { tli: 1, segno: 5 });
        assert_eq!(p.last, Segment { tli: 1, segno: 12 });
        assert!(p.last_partial);
        assert_eq!(
            plan(&bases, &archive, &path, size, &Target::Latest, None)
                .unwrap()
                .base
                .id,
            "c"
        );
        assert_eq!(
            plan(&bases, &archive, &path, size, &Target::Xid(9), None)
                .unwrap()
                .base
                .id,
            "a"
        );
        // A position: the base must be consistent by then.
        let p = plan(
            &bases,
            &archive,
            &path,
            size,
            &Target::Lsn(lsn(9, 0x50)),
            None,
        )
        .unwrap();
        assert_eq!(p.base.id, "b");
        // Named, it is taken, or refused with the reason.
        assert_eq!(
            plan(&bases, &archive, &path, size, &at(25, 0), Some(&"a"))
                .unwrap()
                .base
                .id,
            "a"
        );
        let e = plan(&bases, &archive, &path, size, &at(5, 0), Some(&"b")).unwrap_err();
        assert!(
            e.0.contains("base backup b cannot recover to time 2026-12-07T10:05:00"),
            "{e}"
        );
        let e = plan(&bases, &archive, &path, size, &at(0, 0), None).unwrap_err();
        assert!(e.0.starts_with("no base backup can recover to time"), "{e}");
        assert!(e.0.contains("; a: it ended at"), "{e}");
        let none: &[Candidate<&str>] = &[];
        let e = plan(none, &archive, &path, size, &Target::Latest, None).unwrap_err();
        assert!(e.0.contains("no physical base backup"), "{e}");
    }

    #[test]
    fn a_gap_between_the_start_and_the_stop_or_the_target_is_named() {
        let size = SegmentSize::DEFAULT;
        let path = TimelinePath::root(1);
        let bases = [base("b", 5, 6, 10)];
        // Segment 6 missing: the base backup cannot become consistent.
        let mut archive = held(1, 2..=11, None);
        archive.complete.remove(&Segment { tli: 1, segno: 6 });
        let e = plan(&bases, &archive, &path, size, &Target::Latest, None).unwrap_err();
        assert!(
            e.0.contains("lacks WAL segment 000000010000000000000006, needed from its start 0/5000028 to its stop 0/6000100"),
            "{e}"
        );
        // Segment 9 missing: a time target may be reached before it, and
        // the plan says how far recovery can go.
        let mut archive = held(1, 2..=11, None);
        archive.complete.remove(&Segment { tli: 1, segno: 9 });
        let p = plan(&bases, &archive, &path, size, &at(15, 0), None).unwrap();
        assert_eq!(p.last, Segment { tli: 1, segno: 8 });
        assert!(!p.last_partial);
        assert_eq!(p.gap, Some(Segment { tli: 1, segno: 9 }));
        // The end of the archive is past the gap: refused, not cut short.
        let e = plan(&bases, &archive, &path, size, &Target::Latest, None).unwrap_err();
        assert!(
            e.0.contains("lacks WAL segment 000000010000000000000009 but holds WAL after it (to 00000001000000000000000B)"),
            "{e}"
        );
        // A transaction: a base backup after the gap is tried.
        let both = [base("b", 5, 6, 10), base("late", 10, 10, 30)];
        let p = plan(&both, &archive, &path, size, &Target::Xid(7), None).unwrap();
        assert_eq!(p.base.id, "late");
        assert_eq!(p.passed_over.len(), 1);
        // A position at the very end of the last complete segment needs
        // the next one (the next record starts there).
        let whole = held(1, 2..=11, None);
        let e = plan(&bases, &whole, &path, size, &Target::Lsn(lsn(12, 0)), None).unwrap_err();
        assert!(
            e.0.contains("lacks WAL segment 00000001000000000000000C"),
            "{e}"
        );
        let e = plan(
            &bases,
            &whole,
            &path,
            size,
            &Target::Lsn(lsn(11, 0xFFF)),
            None,
        )
        .unwrap_err();
        assert!(
            e.0.contains("lacks WAL segment 00000001000000000000000C"),
            "{e}"
        );
        plan(
            &bases,
            &whole,
            &path,
            size,
            &Target::Lsn(lsn(10, 0xFFF)),
            None,
        )
        .unwrap();
        let e = plan(
            &bases,
            &archive,
            &path,
            size,
            &Target::Lsn(lsn(10, 0)),
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("lacks WAL segment 000000010000000000000009, needed from its start 0/5000028 to the target 0/A000000"), "{e}");
        // A position inside the partial at the end is left to recovery.
        let archive = held(1, 2..=11, Some(12));
        plan(
            &bases,
            &archive,
            &path,
            size,
            &Target::Lsn(lsn(12, 0x500)),
            None,
        )
        .unwrap();
        let e = plan(
            &bases,
            &archive,
            &path,
            size,
            &Target::Lsn(lsn(13, 0)),
            None,
        )
        .unwrap_err();
        assert!(
            e.0.contains("lacks WAL segment 00000001000000000000000D"),
            "{e}"
        );
        assert!(
            e.0.contains("(it holds only the part of 00000001000000000000000C streamed so far)"),
            "{e}"
        );
    }

    #[test]
    fn the_chain_follows_the_timeline_path_across_a_switch() {
        let size = SegmentSize::DEFAULT;
        // Timeline 2 began inside segment 8 (0/8002C48): recovery reads
        // 1..7 of timeline 1 and 8 onwards of timeline 2.
        let path = TimelinePath::parse(2, "1\t0/8002C48\tbefore 2026-12-07 15:40:55+00\n").unwrap();
        let mut archive = held(1, 2..=7, Some(8));
        archive
            .complete
            .extend((8..=10).map(|segno| Segment { tli: 2, segno }));
        let bases = [base("b", 5, 6, 10)];
        let p = plan(&bases, &archive, &path, size, &Target::Latest, None).unwrap();
        assert_eq!(p.timeline, 2);
        assert_eq!(p.last, Segment { tli: 2, segno: 10 });
        // A base on timeline 1 after the switch is not on the path.
        let late = [base("late", 9, 9, 30)];
        let e = plan(&late, &archive, &path, size, &Target::Latest, None).unwrap_err();
        assert!(e.0.contains("not on timeline 2's history"), "{e}");
        let mut paths = BTreeMap::new();
        paths.insert(2, path.clone());
        assert_eq!(default_timeline(&paths, 1), 2);
        assert_eq!(default_timeline(&paths, 3), 3);
    }
}
