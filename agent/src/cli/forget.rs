//! `cairn forget`: remove snapshots by a retention policy (restic's flags
//! and rules, see [`crate::retention`]) or by id. It removes snapshot files
//! only; the data they alone referenced stays until a prune (`--prune`, or
//! `cairn prune`).

use super::snapshots::snapshot_json;
use super::{Global, Outcome, out};
use crate::repo::id::Id;
use crate::repo::snapshot::Snapshot;
use crate::retention::{Policy, Span, Verdict, apply, has_tags, tag_list};
use crate::storage::FileType;
use anyhow::{Context, bail};
use futures::StreamExt;
use std::collections::BTreeMap;

/// Flags of `forget`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshots to forget, by id or unique prefix (instead of a policy).
    snapshots: Vec<String>,
    /// Keep the N newest snapshots (-1: all).
    #[arg(
        short = 'l',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_last: i32,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(
        short = 'H',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_hourly: i32,
    /// Keep the newest snapshot of each of the N newest days that have one.
    #[arg(
        short = 'd',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_daily: i32,
    /// Keep the newest snapshot of each of the N newest ISO weeks.
    #[arg(
        short = 'w',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_weekly: i32,
    /// Keep the newest snapshot of each of the N newest months.
    #[arg(
        short = 'm',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_monthly: i32,
    /// Keep the newest snapshot of each of the N newest years.
    #[arg(
        short = 'y',
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    keep_yearly: i32,
    /// Keep every snapshot less than DURATION (`1y2m3d4h`) older than the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<Span>,
    /// Keep the newest snapshot of each hour within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_hourly: Option<Span>,
    /// Keep the newest snapshot of each day within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_daily: Option<Span>,
    /// Keep the newest snapshot of each week within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_weekly: Option<Span>,
    /// Keep the newest snapshot of each month within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_monthly: Option<Span>,
    /// Keep the newest snapshot of each year within DURATION of the newest.
    #[arg(long, value_name = "DURATION")]
    keep_within_yearly: Option<Span>,
    /// Keep snapshots having all of these tags (comma-separated; repeat for
    /// alternatives).
    #[arg(long, value_name = "TAG[,TAG]")]
    keep_tag: Vec<String>,
    /// Apply the policy to each group of snapshots sharing these fields:
    /// `host`, `paths`, `tags`, `job` (comma-separated, or empty for one
    /// group).
    #[arg(
        short = 'g',
        long,
        value_name = "FIELDS",
        default_value = "host,paths,job"
    )]
    group_by: String,
    /// Only snapshots of this host (repeatable).
    #[arg(long)]
    host: Vec<String>,
    /// Only snapshots with all of these tags (comma-separated; repeatable,
    /// any list matching).
    #[arg(long, value_name = "TAG[,TAG]")]
    tag: Vec<String>,
    /// Only snapshots that include this path (repeatable: all of them).
    #[arg(long)]
    path: Vec<String>,
    /// Only snapshots made by this config file job.
    #[arg(long)]
    job: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Then prune, under the same lock (not with --dry-run).
    #[arg(long)]
    prune: bool,
}

fn tag_lists(specs: &[String]) -> Vec<Vec<String>> {
    specs.iter().map(|s| tag_list(s)).collect()
}

impl Args {
    fn policy(&self) -> anyhow::Result<Policy> {
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if n < -1 {
                bail!("{flag} {n}: give a count, or -1 for every period");
            }
        }
        let span = |s: &Option<Span>| s.unwrap_or_default();
        Ok(Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: span(&self.keep_within),
            within_hourly: span(&self.keep_within_hourly),
            within_daily: span(&self.keep_within_daily),
            within_weekly: span(&self.keep_within_weekly),
            within_monthly: span(&self.keep_within_monthly),
            within_yearly: span(&self.keep_within_yearly),
            tags: tag_lists(&self.keep_tag),
        })
    }

    /// Whether `snap` passes the `--host`, `--tag`, `--path` and `--job`
    /// filters (restic's: any host, any tag list, all the paths).
    fn selects(&self, snap: &Snapshot) -> bool {
        (self.host.is_empty() || self.host.contains(&snap.hostname))
            && (self.tag.is_empty() || tag_lists(&self.tag).iter().any(|l| has_tags(&snap.tags, l)))
            && self.path.iter().all(|p| snap.paths.contains(p))
            && (self.job.is_none() || snap.cairn_job == self.job)
    }
}

/// The fields snapshots are grouped by; unused ones stay empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
struct GroupKey {
    host: Option<String>,
    paths: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    job: Option<Option<String>>,
}

fn group_key(fields: &[&str], snap: &Snapshot) -> GroupKey {
    let sorted = |v: &Vec<String>| {
        let mut v = v.clone();
        v.sort();
        v
    };
    GroupKey {
        host: fields.contains(&"host").then(|| snap.hostname.clone()),
        paths: fields.contains(&"paths").then(|| sorted(&snap.paths)),
        tags: fields.contains(&"tags").then(|| sorted(&snap.tags)),
        job: fields.contains(&"job").then(|| snap.cairn_job.clone()),
    }
}

/// One group's snapshots, newest first, each with what the policy decided.
type Decided = Vec<(Id, Snapshot, Verdict)>;

/// Run `forget`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let policy = a.policy()?;
    let fields: Vec<&str> = a.group_by.split(',').filter(|f| !f.is_empty()).collect();
    if let Some(f) = fields
        .iter()
        .find(|f| !["host", "paths", "tags", "job"].contains(f))
    {
        bail!("--group-by {f:?}: group by host, paths, tags or job");
    }
    if !a.snapshots.is_empty() && !policy.is_empty() {
        bail!("give snapshot ids or a policy (--keep-*), not both");
    }
    if a.prune && a.dry_run {
        bail!("--prune with --dry-run: forget for real first, or see `cairn prune --dry-run`");
    }
    // With a config file, the newest snapshot of each job that passed a
    // restore drill is never forgotten by a policy.
    let drilled: std::collections::HashSet<String> = match g.config_path.as_ref() {
        Some(_) => {
            let config = g.config()?;
            let records =
                crate::daemon::drills::read(&config.agent.state_dir).with_context(|| {
                    format!(
                        "reading the drill record {}",
                        crate::daemon::drills::path(&config.agent.state_dir).display()
                    )
                })?;
            crate::daemon::drills::pinned(&records)
                .into_values()
                .collect()
        }
        None => Default::default(),
    };
    let repo = g.open_without_index().await?;
    if !a.dry_run {
        g.require_whole_pair("forget")?;
    }
    // Removing snapshots must not race a prune or another forget.
    let lock = if a.dry_run {
        None
    } else {
        Some(repo.lock(true).await?)
    };
    // Whatever happens from here on, the lock is released and what was
    // removed is said.
    let mut removed = 0usize;
    let work: anyhow::Result<(Vec<serde_json::Value>, Option<crate::prune::PruneReport>)> =
        async {
            let all = repo.snapshots().await?;

            // What to remove, group by group.
            let mut groups: Vec<(GroupKey, Decided)> = Vec::new();
            if a.snapshots.is_empty() {
                let mut grouped: BTreeMap<GroupKey, Vec<(Id, Snapshot)>> = BTreeMap::new();
                for (id, snap) in all.into_iter().filter(|(_, s)| a.selects(s)) {
                    grouped
                        .entry(group_key(&fields, &snap))
                        .or_default()
                        .push((id, snap));
                }
                let now = chrono::Utc::now().fixed_offset();
                for (key, members) in grouped {
                    let decided = apply(
                        members,
                        |(_, s)| s.time,
                        |(_, s)| s.tags.clone(),
                        &policy,
                        now,
                    );
                    let decided = decided
                        .into_iter()
                        .map(|((id, s), mut v)| {
                            if drilled.contains(&id.to_hex()) {
                                if !v.keep {
                                    v.reasons.clear();
                                }
                                v.keep = true;
                                v.reasons.push("newest snapshot that passed a restore drill".into());
                            }
                            (id, s, v)
                        })
                        .collect();
                    groups.push((key, decided));
                }
            } else {
                let mut chosen = Vec::new();
                let files: std::collections::HashSet<String> = repo
                    .backend()
                    .list(FileType::Snapshot)
                    .await?
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                for spec in &a.snapshots {
                    // A damaged snapshot file, named whole (as `check`
                    // names it): it cannot be read, but it can be removed.
                    if files.contains(spec)
                        && let Err(e @ crate::repo::RepoError::Corrupt { .. }) =
                            repo.load_snapshot(spec).await
                    {
                        if !g.json {
                            out(format!("  remove {} (damaged: {e})", crate::util::escaped(spec)));
                        }
                        if !a.dry_run {
                            repo.backend()
                                .remove(FileType::Snapshot, spec)
                                .await
                                .with_context(|| format!("removing damaged snapshot file {spec}"))?;
                            repo.damage_removed(&format!("snapshots/{spec}"));
                        }
                        removed += 1;
                        continue;
                    }
                    let (id, snap) = repo
                        .find_snapshot(spec)
                        .await
                        .with_context(|| format!("snapshot {spec}"))?;
                    if chosen.iter().any(|(c, _, _)| *c == id) {
                        continue; // named twice
                    }
                    let verdict = Verdict {
                        keep: false,
                        reasons: vec!["named on the command line".into()],
                    };
                    chosen.push((id, snap, verdict));
                }
                groups.push((GroupKey::default(), chosen));
            }

            let mut report = Vec::new();
            for (key, members) in &groups {
                if !g.json {
                    let mut about = Vec::new();
                    if let Some(h) = &key.host {
                        about.push(format!("host {h}"));
                    }
                    if let Some(p) = &key.paths {
                        about.push(format!("paths [{}]", p.join(", ")));
                    }
                    if let Some(t) = &key.tags {
                        about.push(format!("tags [{}]", t.join(", ")));
                    }
                    if let Some(j) = &key.job {
                        about.push(format!("job {}", j.as_deref().unwrap_or("-")));
                    }
                    if !about.is_empty() {
                        out(format!("snapshots of {}:", about.join(", ")));
                    }
                    for (id, snap, v) in members {
                        out(format!(
                            "  {} {:<10} {}  {}",
                            if v.keep { "keep  " } else { "remove" },
                            id.short(),
                            snap.time.format("%Y-%m-%d %H:%M:%S"),
                            v.reasons.join(", ")
                        ));
                    }
                }
                let doomed: Vec<_> = members
                    .iter()
                    .filter(|(_, _, v)| !v.keep)
                    .map(|(id, _, _)| *id)
                    .collect();
                if !a.dry_run {
                    // Several at once: against object storage each removal
                    // is a round trip.
                    let repo = &repo;
                    let mut removals = futures::stream::iter(doomed.iter().copied())
                        .map(|id| async move {
                            repo.backend()
                                .remove(FileType::Snapshot, &id.to_hex())
                                .await
                                .with_context(|| format!("removing snapshot {}", id.short()))
                        })
                        .buffer_unordered(repo.connections());
                    while let Some(r) = removals.next().await {
                        r?;
                    }
                }
                removed += doomed.len();
                let pick = |keep: bool| -> Vec<serde_json::Value> {
                    members
                        .iter()
                        .filter(|(_, _, v)| v.keep == keep)
                        .map(|(id, s, _)| snapshot_json(id, s))
                        .collect()
                };
                report.push(serde_json::json!({
                    "group_key": {
                        "hostname": key.host, "paths": key.paths, "tags": key.tags,
                        "job": key.job.clone().flatten(),
                    },
                    "keep": pick(true),
                    "remove": pick(false),
                    "reasons": members.iter().filter(|(_, _, v)| v.keep).map(|(id, s, v)| serde_json::json!({
                        "snapshot": snapshot_json(id, s), "matches": v.reasons,
                    })).collect::<Vec<_>>(),
                }));
            }
            let pruned = match (&lock, a.prune) {
                (Some(held), true) => {
                    Some(crate::prune::prune(&repo, false, &|| g.still_safe(held)).await?)
                }
                _ => None,
            };
            Ok((report, pruned))
        }
        .await;
    let work = match lock {
        Some(lock) => lock.release_after(work).await,
        None => work,
    };
    let (report, pruned) = work.with_context(|| match (removed, a.dry_run) {
        (0, _) | (_, true) => "nothing was removed".to_string(),
        (n, false) => format!("{n} snapshots were removed before this"),
    })?;
    if g.json {
        out(serde_json::Value::Array(report));
        if let Some(p) = &pruned {
            out(serde_json::to_value(p)?);
        }
        return Ok(Outcome::Ok);
    }
    if let Some(p) = &pruned {
        super::prune::print_report(p, false);
    }
    if a.dry_run {
        out(format!("would remove {removed} snapshots (dry run)"));
    } else if pruned.is_some() {
        out(format!("removed {removed} snapshots"));
    } else {
        out(format!(
            "removed {removed} snapshots; their data stays until prune"
        ));
    }
    Ok(Outcome::Ok)
}
