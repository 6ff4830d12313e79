//! Which archived WAL segments the kept base backups need.
//!
//! A base backup taken on timeline `b` at position `start` recovers along
//! the path to any timeline that passes through `b` without leaving it
//! before `start`. Segment `s` of timeline `t` is needed when some kept
//! backup can recover along the path to `t` and the segment ends after
//! the backup's start. That keeps every file recovery can ask for (a
//! property test checks it against [`Path::timeline_of_segment`], the
//! rule recovery follows) plus, at most, the old timeline's partial copy
//! of the segment where a newer timeline begins. It keeps nothing that
//! ends at or before the oldest kept start: pgBackRest, WAL-G and Barman
//! all derive WAL expiry from the backups kept in the same way.

use super::history::Path;
use super::lsn::{Lsn, Segment, SegmentSize};
use std::collections::BTreeMap;

/// A base backup that retention keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptBase {
    /// The timeline it was taken on.
    pub tli: u32,
    /// Where its WAL starts (its redo point, or a position before it).
    pub start: Lsn,
}

/// Whether segment `seg` must stay for one of `kept` to be restorable to
/// any point after it. `paths` holds the path to each timeline the
/// archive knows; a timeline without one is kept whole (it cannot be
/// placed, and keeping is the safe mistake).
pub fn needed(
    seg: Segment,
    kept: &[KeptBase],
    paths: &BTreeMap<u32, Path>,
    size: SegmentSize,
) -> bool {
    let path = match paths.get(&seg.tli) {
        Some(p) => std::borrow::Cow::Borrowed(p),
        None if seg.tli == 1 => std::borrow::Cow::Owned(Path::root(1)),
        None => return true,
    };
    kept.iter()
        .any(|b| size.end(seg.segno) > b.start && path.reachable_from(b.tli, b.start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    fn paths_of(list: &[Path]) -> BTreeMap<u32, Path> {
        list.iter().map(|p| (p.tli, p.clone())).collect()
    }

    #[test]
    fn two_base_backups_on_one_timeline_keep_from_the_oldest_start() {
        let paths = paths_of(&[Path::root(1)]);
        // B1 starts in segment 3 (0/3000028), B2 in segment 9.
        let kept = [
            KeptBase {
                tli: 1,
                start: "0/3000028".parse().unwrap(),
            },
            KeptBase {
                tli: 1,
                start: "0/9000060".parse().unwrap(),
            },
        ];
        let need = |segno| needed(Segment { tli: 1, segno }, &kept, &paths, SIZE);
        assert!(!need(1));
        assert!(!need(2));
        assert!(need(3));
        assert!(need(40));
        // Only B2 kept: from its start segment.
        let need2 = |segno| needed(Segment { tli: 1, segno }, &kept[1..], &paths, SIZE);
        assert!(!need2(8));
        assert!(need2(9));
        // Nothing kept: nothing needed (the caller warns and removes nothing).
        assert!(!needed(Segment { tli: 1, segno: 9 }, &[], &paths, SIZE));
    }

    #[test]
    fn forks_before_between_and_after_base_backups() {
        // Timeline 2 forks from 1 at 0/8002C48.
        let two = Path::parse(2, "1\t0/8002C48\tx\n").unwrap();
        let paths = paths_of(&[Path::root(1), two]);
        let seg = |tli, segno| Segment { tli, segno };
        // A backup on 1 before the fork needs timeline 2 too.
        let before = [KeptBase {
            tli: 1,
            start: "0/5000028".parse().unwrap(),
        }];
        assert!(needed(seg(1, 5), &before, &paths, SIZE));
        assert!(needed(seg(1, 8), &before, &paths, SIZE));
        assert!(needed(seg(2, 8), &before, &paths, SIZE));
        assert!(needed(seg(2, 20), &before, &paths, SIZE));
        // A backup on 1 after the fork cannot reach timeline 2.
        let after = [KeptBase {
            tli: 1,
            start: "0/A000028".parse().unwrap(),
        }];
        assert!(needed(seg(1, 10), &after, &paths, SIZE));
        assert!(!needed(seg(2, 10), &after, &paths, SIZE));
        assert!(!needed(seg(1, 8), &after, &paths, SIZE));
        // A backup on 2 needs nothing of timeline 1.
        let on_two = [KeptBase {
            tli: 2,
            start: "0/9000028".parse().unwrap(),
        }];
        assert!(!needed(seg(1, 9), &on_two, &paths, SIZE));
        assert!(!needed(seg(2, 8), &on_two, &paths, SIZE));
        assert!(needed(seg(2, 9), &on_two, &paths, SIZE));
        // Timeline 3, whose history the archive lacks: kept whole.
        assert!(needed(seg(3, 1), &on_two, &paths, SIZE));
    }

    /// A random tree of timelines: each after the first forks from an
    /// older one at a position on that one's own stretch.
    fn random_tree(rng: &mut rand::rngs::StdRng) -> BTreeMap<u32, Path> {
        let mut paths = BTreeMap::from([(1, Path::root(1))]);
        for tli in 2..=rng.gen_range(1..=6u32) {
            let parent = rng.gen_range(1..tli);
            let mut path = paths[&parent].clone();
            let begin = path.begin(parent).unwrap().0;
            let fork = Lsn(begin + rng.gen_range(0..40 * SIZE.bytes()));
            path.ancestors.push(crate::pitr::history::Switch {
                tli: parent,
                end: fork,
            });
            path.tli = tli;
            paths.insert(tli, path);
        }
        paths
    }

    #[test]
    fn every_file_recovery_can_read_from_a_kept_backup_is_kept_and_nothing_older() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..2000 {
            let paths = random_tree(&mut rng);
            let tlis: Vec<u32> = paths.keys().copied().collect();
            let kept: Vec<KeptBase> = (0..rng.gen_range(1..=3))
                .map(|_| {
                    let tli = tlis[rng.gen_range(0..tlis.len())];
                    let begin = paths[&tli].begin(tli).unwrap().0;
                    KeptBase {
                        tli,
                        start: Lsn(begin + rng.gen_range(0..40 * SIZE.bytes())),
                    }
                })
                .collect();
            let last = 200;
            for target in paths.values() {
                for b in kept
                    .iter()
                    .filter(|b| target.reachable_from(b.tli, b.start))
                {
                    for segno in SIZE.segno(b.start)..last {
                        let tli = target.timeline_of_segment(segno, SIZE);
                        let seg = Segment { tli, segno };
                        assert!(
                            needed(seg, &kept, &paths, SIZE),
                            "{seg:?} read recovering {b:?} to timeline {}, not kept; paths {paths:?}",
                            target.tli
                        );
                    }
                }
            }
            let oldest = kept.iter().map(|b| b.start).min().unwrap();
            for &tli in &tlis {
                for segno in 0..SIZE.segno(oldest) {
                    let seg = Segment { tli, segno };
                    if SIZE.end(segno) <= oldest {
                        assert!(!needed(seg, &kept, &paths, SIZE), "{seg:?} kept");
                    }
                }
            }
        }
    }
}
