//! Forget: remove snapshots by a retention policy (restic's rules, see
//! [`crate::retention`]) or by id, under the exclusive lock. It removes
//! snapshot files only; the data they alone referenced stays until a prune
//! (which [`Options::prune`] runs under the same lock).

use super::prune::PruneReport;
use super::{Error, Result, Store};
use crate::repo::id::Id;
use crate::repo::snapshot::{Listed, Snapshot};
use crate::retention::{KeepPolicy, Verdict, apply, has_tags};
use crate::storage::FileType;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What to forget.
#[derive(Debug, Default)]
pub struct Options {
    /// Snapshots named by id or unique prefix (instead of a policy).
    pub snapshots: Vec<String>,
    /// The retention policy (when no snapshot is named).
    pub policy: KeepPolicy,
    /// The fields groups are made by: `host`, `paths`, `tags`, `job`.
    pub group_by: Vec<String>,
    /// Which snapshots the policy looks at.
    pub filter: Filter,
    /// Snapshots a policy never removes (the newest drilled snapshot of
    /// each job), by id.
    pub pinned: HashSet<String>,
    /// Per job that streams its WAL, how far back point-in-time recovery
    /// must reach (`wal.pitr-window-secs`): the newest base backup that
    /// ended before the window starts is never removed by a policy, so
    /// every moment of the window stays recoverable.
    pub pitr_windows: BTreeMap<String, std::time::Duration>,
    /// Decide, remove nothing.
    pub dry_run: bool,
    /// Then prune, under the same lock.
    pub prune: bool,
}

/// restic's snapshot filters: any host, any tag list, all the paths.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only these hosts (empty: any).
    pub hosts: Vec<String>,
    /// Only snapshots having all the tags of one of these lists.
    pub tags: Vec<Vec<String>>,
    /// Only snapshots that include every one of these paths.
    pub paths: Vec<String>,
    /// Only snapshots of this config file job.
    pub job: Option<String>,
}

impl Filter {
    /// Whether `snap` passes.
    pub fn selects(&self, snap: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&snap.hostname))
            && (self.tags.is_empty() || self.tags.iter().any(|l| has_tags(&snap.tags, l)))
            && self.paths.iter().all(|p| snap.paths.contains(p))
            && (self.job.is_none() || snap.cairn_job == self.job)
    }
}

/// The fields a group shares; the ones not grouped by are `None`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct GroupKey {
    /// The host.
    pub hostname: Option<String>,
    /// The paths, sorted.
    pub paths: Option<Vec<String>>,
    /// The tags, sorted.
    pub tags: Option<Vec<String>>,
    /// The job (`Some(None)`: grouped by job, and made by none).
    #[serde(with = "job_key")]
    pub job: Option<Option<String>>,
}

/// restic has no job field: a group key prints it as a plain optional
/// string, as before.
mod job_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v.clone().flatten() {
            Some(j) => s.serialize_some(&j),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Some))
    }
}

impl GroupKey {
    fn of(fields: &[String], snap: &Snapshot) -> GroupKey {
        let has = |f: &str| fields.iter().any(|x| x == f);
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        GroupKey {
            hostname: has("host").then(|| snap.hostname.clone()),
            paths: has("paths").then(|| sorted(&snap.paths)),
            tags: has("tags").then(|| sorted(&snap.tags)),
            job: has("job").then(|| snap.cairn_job.clone()),
        }
    }
}

/// Why a kept snapshot is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepReason {
    /// The snapshot.
    pub snapshot: Listed,
    /// The rules that keep it.
    pub matches: Vec<String>,
}

/// One group's decision, as restic's `forget --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// What its snapshots share.
    pub group_key: GroupKey,
    /// Snapshots kept, newest first.
    pub keep: Vec<Listed>,
    /// Snapshots removed (or, in a dry run, to be removed).
    pub remove: Vec<Listed>,
    /// Why each kept one is kept.
    pub reasons: Vec<KeepReason>,
    /// Every snapshot of the group in the order decided (newest first, or
    /// as named), with the decision: for a listing (not in restic's JSON).
    #[serde(skip)]
    pub decided: Vec<(Listed, Verdict)>,
}

/// A damaged snapshot file named on the command line and removed whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamagedFile {
    /// Its file name.
    pub name: String,
    /// What is wrong with it.
    pub damage: String,
}

/// What a forget decided and did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Each group's decision.
    pub groups: Vec<Group>,
    /// Damaged snapshot files named and removed.
    pub damaged: Vec<DamagedFile>,
    /// Snapshot files removed (in a dry run: that would be).
    pub removed: usize,
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// The prune that followed, if one did.
    pub pruned: Option<PruneReport>,
    /// What a policy's WAL step did to each PostgreSQL job's WAL archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wal: Vec<WalRetention>,
}

/// What the WAL step of a policy forget did to one job's archive of one
/// cluster: the closed windows removed or rewritten so that exactly the
/// WAL the kept base backups need stays (docs/retention.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalRetention {
    /// The job.
    pub job: String,
    /// The cluster's system identifier.
    pub system: String,
    /// Base backups of that cluster the repository keeps.
    pub kept_base_backups: usize,
    /// Windows removed or rewritten.
    pub windows: Vec<crate::pitr::archive::Trimmed>,
    /// Why nothing was trimmed, when nothing could be.
    pub note: Option<String>,
}

impl Options {
    /// Refuse options that cannot work together, before anything is read.
    pub fn validate(&self) -> Result<()> {
        let o = self;
        if let Some(f) = o
            .group_by
            .iter()
            .find(|f| !["host", "paths", "tags", "job"].contains(&f.as_str()))
        {
            super::invalid!("--group-by {f:?}: group by host, paths, tags or job");
        }
        if !o.snapshots.is_empty() && !o.policy.is_empty() {
            super::invalid!("give snapshot ids or a policy (--keep-*), not both");
        }
        if o.prune && o.dry_run {
            super::invalid!(
                "--prune with --dry-run: forget for real first, or see `cairn prune --dry-run`"
            );
        }
        Ok(())
    }
}

/// Forget snapshots. An error after some were removed says how many.
pub async fn run(store: &Store, o: Options) -> Result<Report> {
    o.validate()?;
    if !o.dry_run {
        store.require_whole_pair("forget")?;
    }
    // Removing snapshots must not race a prune or another forget.
    let lock = match o.dry_run {
        true => None,
        false => Some(store.repo.lock(true).await?),
    };
    let mut report = Report {
        groups: Vec::new(),
        damaged: Vec::new(),
        removed: 0,
        dry_run: o.dry_run,
        pruned: None,
        wal: Vec::new(),
    };
    let work = async {
        let groups = match o.snapshots.is_empty() {
            true => by_policy(store, &o).await?,
            false => named(store, &o, &mut report).await?,
        };
        for (_, members) in &groups {
            let doomed: Vec<Id> = members
                .iter()
                .filter(|(_, _, v)| !v.keep)
                .map(|(id, _, _)| *id)
                .collect();
            if !o.dry_run {
                remove_all(store, &doomed).await?;
            }
            report.removed += doomed.len();
        }
        // A policy keeps base backups; their WAL follows. Snapshots named
        // by id are removed as named, nothing more.
        if o.snapshots.is_empty() {
            let removed: HashSet<Id> = groups
                .iter()
                .flat_map(|(_, m)| m.iter().filter(|(_, _, v)| !v.keep).map(|(id, _, _)| *id))
                .collect();
            report.wal = wal_step(store, &removed, o.dry_run, &|| match &lock {
                Some(held) => store.still_safe(held),
                None => Ok(()),
            })
            .await?;
        }
        report.groups = groups.into_iter().map(group).collect();
        if let (Some(held), true) = (&lock, o.prune) {
            report.pruned =
                Some(super::prune::prune(&store.repo, false, &|| store.still_safe(held)).await?);
        }
        Ok::<_, Error>(())
    }
    .await;
    drop(lock);
    match work {
        Ok(()) => Ok(report),
        Err(e) => Err(match (report.removed, o.dry_run) {
            (0, _) | (_, true) => e.context("nothing was removed"),
            (n, false) => e.context(format!("{n} snapshots were removed before this")),
        }),
    }
}

/// The WAL step: for each job and cluster with a WAL archive, drop from
/// its closed windows every segment no kept base backup of that cluster
/// needs (`pitr::retention::needed`). The open window is left to the
/// stream (it is trimmed once closed, at a later forget); history files
/// always stay; with no base backup kept, nothing is trimmed.
async fn wal_step(
    store: &Store,
    removed: &HashSet<Id>,
    dry_run: bool,
    safe: &(dyn Fn() -> std::result::Result<(), crate::repo::RepoError> + Sync),
) -> Result<Vec<WalRetention>> {
    use crate::pitr::archive::{tag, trim_window};
    use crate::pitr::basebackup::BaseBackup;
    use crate::pitr::lsn::WalFile;
    use crate::pitr::retention::{KeptBase, needed};
    let snaps: Vec<(Id, Snapshot)> = store
        .repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|(id, _)| !removed.contains(id))
        .collect();
    let mut archives: BTreeMap<(String, u64), ()> = BTreeMap::new();
    for (_, s) in &snaps {
        if s.tags.iter().any(|t| t == "cairn-wal")
            && let (Some(job), Some(system)) = (
                s.cairn_job.clone(),
                tag(&s.tags, "pg-system").and_then(|v| v.parse().ok()),
            )
        {
            archives.insert((job, system), ());
        }
    }
    let mut out = Vec::new();
    if archives.is_empty() {
        return Ok(out);
    }
    // Windows are read (trees, history files): the index is needed.
    store.repo.load_index().await?;
    for (job, system) in archives.into_keys() {
        let bases: Vec<BaseBackup> = snaps
            .iter()
            .filter(|(_, s)| s.cairn_job.as_deref() == Some(job.as_str()))
            .filter_map(|(_, s)| BaseBackup::from_tags(&s.tags))
            .filter(|b| b.system == system)
            .collect();
        let mut r = WalRetention {
            job: job.clone(),
            system: system.to_string(),
            kept_base_backups: bases.len(),
            windows: Vec::new(),
            note: None,
        };
        let Some(size) = bases.first().map(|b| b.segment_size) else {
            r.note = Some("no base backup of this cluster is kept: its WAL stays".into());
            tracing::warn!(job = %job, system, "No base backup of the cluster is kept: its WAL archive is left whole.");
            out.push(r);
            continue;
        };
        let kept: Vec<KeptBase> = bases
            .iter()
            .map(|b| KeptBase {
                tli: b.tli,
                start: b.start,
            })
            .collect();
        let catalog =
            crate::pitr::fetch::Catalog::load(store.repo.clone(), &snaps, &job, system, size)
                .await
                .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?;
        let mut paths = BTreeMap::new();
        for t in catalog.timelines() {
            let text = catalog
                .history_text(t)
                .await
                .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?;
            if let Some(text) = text {
                let path = crate::pitr::history::Path::parse(t, &text)
                    .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?;
                paths.insert(t, path);
            }
        }
        // The newest version of each closed window.
        let mut closed: BTreeMap<&str, (&Id, &Snapshot)> = BTreeMap::new();
        for (id, s) in &snaps {
            if crate::pitr::fetch::is_window(s, &job, system)
                && s.tags.iter().any(|t| t == "wal-closed")
                && let Some(key) = tag(&s.tags, "wal-window")
                && closed.get(key).is_none_or(|(_, kept)| {
                    crate::pitr::archive::version(kept) < crate::pitr::archive::version(s)
                })
            {
                closed.insert(key, (id, s));
            }
        }
        for (id, s) in closed.into_values() {
            safe()?;
            let keep = |f: WalFile| match f {
                WalFile::Segment(seg) | WalFile::Partial(seg) => needed(seg, &kept, &paths, size),
                WalFile::History(_) => true,
            };
            if let Some(t) = trim_window(&store.repo, size, *id, s, keep, dry_run)
                .await
                .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?
            {
                r.windows.push(t);
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Per job with a PITR window, its newest base backup (of each cluster)
/// that ended at or before `now` less the window: recovery to the
/// window's first moment starts from it. With why.
fn pitr_window_pins(
    snapshots: &[(Id, Snapshot)],
    windows: &BTreeMap<String, std::time::Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> HashMap<Id, String> {
    use crate::pitr::basebackup::BaseBackup;
    let mut newest: BTreeMap<(String, u64), (chrono::DateTime<chrono::Utc>, Id)> = BTreeMap::new();
    for (id, snap) in snapshots {
        let Some(job) = snap.cairn_job.as_ref() else {
            continue;
        };
        let Some(window) = windows.get(job) else {
            continue;
        };
        let Some(base) = BaseBackup::from_tags(&snap.tags) else {
            continue;
        };
        let Ok(window) = chrono::Duration::from_std(*window) else {
            continue;
        };
        if base.stop_time > now - window {
            continue;
        }
        let slot = newest
            .entry((job.clone(), base.system))
            .or_insert((base.stop_time, *id));
        if base.stop_time > slot.0 {
            *slot = (base.stop_time, *id);
        }
    }
    newest
        .into_iter()
        .map(|((job, _), (_, id))| {
            let secs = windows[&job].as_secs();
            (
                id,
                format!(
                    "newest base backup before job {job}'s point-in-time recovery window ({secs} s) begins: every moment of the window stays recoverable"
                ),
            )
        })
        .collect()
}

/// One group's snapshots, newest first, each with what was decided.
type Decided = (GroupKey, Vec<(Id, Snapshot, Verdict)>);

/// Group the selected snapshots and apply the policy to each group.
async fn by_policy(store: &Store, o: &Options) -> Result<Vec<Decided>> {
    let mut grouped: BTreeMap<GroupKey, Vec<(Id, Snapshot)>> = BTreeMap::new();
    let snapshots = store.repo.snapshots().await?;
    let now = chrono::Utc::now();
    let window_pins = pitr_window_pins(&snapshots, &o.pitr_windows, now);
    for (id, snap) in snapshots {
        // WAL windows are not backups a keep-rule counts: a policy that
        // chose the open window, or the WAL a kept base backup needs,
        // would break point-in-time recovery. The WAL step after the
        // policy trims them to what the kept base backups need.
        if snap.tags.iter().any(|t| t == "cairn-wal") {
            continue;
        }
        if o.filter.selects(&snap) {
            grouped
                .entry(GroupKey::of(&o.group_by, &snap))
                .or_default()
                .push((id, snap));
        }
    }
    let now = now.fixed_offset();
    let mut groups = Vec::new();
    for (key, members) in grouped {
        let decided = apply(
            members,
            |(_, s)| s.time,
            |(_, s)| s.tags.clone(),
            &o.policy,
            now,
        );
        groups.push((
            key,
            decided
                .into_iter()
                .map(|((id, s), mut v)| {
                    if o.pinned.contains(&id.to_hex()) {
                        if !v.keep {
                            v.reasons.clear();
                        }
                        v.keep = true;
                        v.reasons
                            .push("newest snapshot that passed a restore drill".into());
                    }
                    if let Some(why) = window_pins.get(&id) {
                        if !v.keep {
                            v.reasons.clear();
                        }
                        v.keep = true;
                        v.reasons.push(why.clone());
                    }
                    (id, s, v)
                })
                .collect(),
        ));
    }
    Ok(groups)
}

/// The snapshots named on the command line, as one group. A damaged
/// snapshot file named whole (as `check` names it) cannot be read, but it
/// can be removed: it is, here, and counted in `report`.
async fn named(store: &Store, o: &Options, report: &mut Report) -> Result<Vec<Decided>> {
    let repo = &store.repo;
    let files: HashSet<String> = repo
        .backend()
        .list(FileType::Snapshot)
        .await
        .map_err(crate::repo::RepoError::from)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut chosen = Vec::new();
    for spec in &o.snapshots {
        if files.contains(spec)
            && let Err(e @ crate::repo::RepoError::Corrupt { .. }) = repo.load_snapshot(spec).await
        {
            if !o.dry_run {
                repo.backend()
                    .remove(FileType::Snapshot, spec)
                    .await
                    .map_err(|e| {
                        Error::from(crate::repo::RepoError::from(e))
                            .context(format!("removing damaged snapshot file {spec}"))
                    })?;
                repo.damage_removed(&format!("snapshots/{spec}"));
            }
            report.damaged.push(DamagedFile {
                name: spec.clone(),
                damage: e.to_string(),
            });
            report.removed += 1;
            continue;
        }
        let (id, snap) = repo
            .find_snapshot(spec)
            .await
            .map_err(|e| Error::from(e).context(format!("snapshot {spec}")))?;
        if chosen.iter().any(|(c, _, _)| *c == id) {
            continue; // named twice
        }
        let verdict = Verdict {
            keep: false,
            reasons: vec!["named on the command line".into()],
        };
        chosen.push((id, snap, verdict));
    }
    Ok(vec![(GroupKey::default(), chosen)])
}

/// Remove snapshot files, several at once: against object storage each
/// removal is a round trip.
async fn remove_all(store: &Store, doomed: &[Id]) -> Result<()> {
    let repo = &store.repo;
    let mut removals = futures::stream::iter(doomed.iter().copied())
        .map(|id| async move {
            repo.backend()
                .remove(FileType::Snapshot, &id.to_hex())
                .await
                .map_err(|e| {
                    Error::from(crate::repo::RepoError::from(e))
                        .context(format!("removing snapshot {}", id.short()))
                })
        })
        .buffer_unordered(repo.connections());
    while let Some(r) = removals.next().await {
        r?;
    }
    Ok(())
}

fn group((group_key, members): Decided) -> Group {
    let mut g = Group {
        group_key,
        keep: Vec::new(),
        remove: Vec::new(),
        reasons: Vec::new(),
        decided: Vec::new(),
    };
    for (id, s, v) in members {
        let listed = Listed::new(id, s);
        if v.keep {
            g.reasons.push(KeepReason {
                snapshot: listed.clone(),
                matches: v.reasons.clone(),
            });
            g.keep.push(listed.clone());
        } else {
            g.remove.push(listed.clone());
        }
        g.decided.push((listed, v));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{backed_up, memory_repo, runtime, store};

    fn keep_last(n: i32) -> Options {
        Options {
            policy: KeepPolicy {
                last: n,
                ..Default::default()
            },
            group_by: vec!["host".into(), "paths".into()],
            ..Default::default()
        }
    }

    #[test]
    fn keep_last_removes_the_older_snapshots_of_each_group() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            let mut ids = Vec::new();
            for days in [5, 4, 3] {
                ids.push(backed_up(&repo, &[("a", b"x")], days, "one").await);
            }
            let other = backed_up(&repo, &[("a", b"x")], 9, "two").await;
            let report = run(&store(&repo), keep_last(1)).await.unwrap();
            assert_eq!(report.removed, 2);
            assert_eq!(report.groups.len(), 2);
            let left = backend.names(FileType::Snapshot);
            let mut want = vec![ids[2].to_hex(), other.to_hex()];
            want.sort();
            assert_eq!(left, want);
        });
    }

    #[test]
    fn a_policy_never_chooses_wal_windows() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            let tree = crate::testing::store_tree(&repo, &[("a", b"x")]).await;
            let mut wal = crate::testing::snapshot(tree, 9, "one");
            wal.tags = vec!["cairn-wal".into(), "wal-open".into()];
            let window = repo.save_snapshot(&wal).await.unwrap();
            for days in [2, 1] {
                backed_up(&repo, &[("a", b"x")], days, "one").await;
            }
            let report = run(&store(&repo), keep_last(1)).await.unwrap();
            assert_eq!(report.removed, 1);
            assert!(backend.names(FileType::Snapshot).contains(&window.to_hex()));
        });
    }

    #[test]
    fn a_dry_run_removes_nothing_and_takes_no_lock() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            for days in [2, 1] {
                backed_up(&repo, &[("a", b"x")], days, "one").await;
            }
            let saves = backend.saves();
            let report = run(
                &store(&repo),
                Options {
                    dry_run: true,
                    ..keep_last(1)
                },
            )
            .await
            .unwrap();
            assert_eq!(report.removed, 1);
            assert_eq!(backend.names(FileType::Snapshot).len(), 2);
            assert_eq!(backend.saves(), saves, "no lock file was written");
        });
    }

    #[test]
    fn the_newest_drilled_snapshot_is_kept_whatever_the_policy_says() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            let drilled = backed_up(&repo, &[("a", b"x")], 3, "one").await;
            backed_up(&repo, &[("a", b"x")], 1, "one").await;
            let report = run(
                &store(&repo),
                Options {
                    pinned: [drilled.to_hex()].into(),
                    ..keep_last(1)
                },
            )
            .await
            .unwrap();
            assert_eq!(report.removed, 0);
            assert_eq!(backend.names(FileType::Snapshot).len(), 2);
            let reasons = &report.groups[0].reasons;
            assert!(
                reasons.iter().any(|r| r.snapshot.id == drilled
                    && r.matches.iter().any(|m| m.contains("restore drill"))),
                "{reasons:?}"
            );
        });
    }

    #[test]
    fn a_damaged_snapshot_file_named_whole_is_removed_and_counted() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            let good = backed_up(&repo, &[("a", b"x")], 1, "one").await;
            let bad = "cd".repeat(32);
            backend.put_raw(FileType::Snapshot, &bad, b"junk".to_vec());
            let report = run(
                &store(&repo),
                Options {
                    snapshots: vec![bad.clone()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            assert_eq!(report.removed, 1);
            assert_eq!(report.damaged[0].name, bad);
            assert_eq!(backend.names(FileType::Snapshot), vec![good.to_hex()]);
        });
    }

    #[test]
    fn options_that_cannot_work_together_are_refused_before_anything_is_read() {
        let bad = [
            Options {
                group_by: vec!["colour".into()],
                ..Default::default()
            },
            Options {
                snapshots: vec!["abc".into()],
                ..keep_last(1)
            },
            Options {
                dry_run: true,
                prune: true,
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(Error::Invalid(_))), "{o:?}");
        }
        assert!(keep_last(3).validate().is_ok());
    }

    #[test]
    fn the_filter_leaves_other_hosts_and_jobs_alone() {
        let mut s = crate::testing::snapshot(Id::hash(b"t"), 1, "one");
        s.cairn_job = Some("files".into());
        s.tags = vec!["a".into(), "b".into()];
        let f = |hosts: &[&str], tags: &[&[&str]], job: Option<&str>| Filter {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tags: tags
                .iter()
                .map(|l| l.iter().map(|t| t.to_string()).collect())
                .collect(),
            paths: vec![],
            job: job.map(str::to_string),
        };
        assert!(f(&[], &[], None).selects(&s));
        assert!(f(&["one", "two"], &[], None).selects(&s));
        assert!(!f(&["two"], &[], None).selects(&s));
        assert!(f(&[], &[&["c"], &["a", "b"]], None).selects(&s));
        assert!(!f(&[], &[&["a", "c"]], None).selects(&s));
        assert!(f(&[], &[], Some("files")).selects(&s));
        assert!(!f(&[], &[], Some("db")).selects(&s));
    }

    #[test]
    fn a_failure_after_some_removals_says_how_many_went() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("forget").await;
            for days in [3u8, 2, 1] {
                backed_up(&repo, &[("a", &[days; 1000])], days.into(), "one").await;
            }
            // The prune after the removals cannot write its new index (the
            // first save is the lock file).
            backend.fail_nth_save(2);
            let options = Options {
                prune: true,
                ..keep_last(1)
            };
            let e = run(&store(&repo), options).await.map(|_| ()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("2 snapshots were removed before this"),
                "{e}"
            );
        });
    }
}
