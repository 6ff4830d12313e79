//! `cairn forget`: remove snapshots by a retention policy (restic's flags
//! and rules, see [`crate::retention`]) or by id. It removes snapshot files
//! only; the data they alone referenced stays until a prune (`--prune`, or
//! `cairn prune`).

use super::{Global, Outcome, out};
use crate::ops::{drills, forget};
use crate::retention::{KeepPolicy, Span, tag_list};
use anyhow::{Context, bail};

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
    fn policy(&self) -> anyhow::Result<KeepPolicy> {
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
        Ok(KeepPolicy {
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
}

/// Run `forget`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let policy = a.policy()?;
    // With a config file, the newest snapshot of each job that passed a
    // restore drill is never forgotten by a policy.
    // And the base backup a job's point-in-time recovery window starts
    // from.
    let (pinned, pitr_windows) = match g.config_path.as_ref() {
        Some(_) => {
            let config = g.config()?;
            let records = drills::read(&config.agent.state_dir).with_context(|| {
                format!(
                    "reading the drill record {}",
                    drills::path(&config.agent.state_dir).display()
                )
            })?;
            let windows = config
                .jobs
                .iter()
                .filter_map(|(name, j)| {
                    let w = j.wal.as_ref()?.pitr_window_secs;
                    (w > 0).then(|| (name.clone(), std::time::Duration::from_secs(w)))
                })
                .collect();
            (drills::pinned(&records).into_values().collect(), windows)
        }
        None => Default::default(),
    };
    let options = forget::Options {
        snapshots: a.snapshots.clone(),
        policy,
        group_by: a
            .group_by
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        filter: forget::Filter {
            hosts: a.host.clone(),
            tags: tag_lists(&a.tag),
            paths: a.path.clone(),
            job: a.job.clone(),
        },
        pinned,
        pitr_windows,
        dry_run: a.dry_run,
        prune: a.prune,
    };
    options.validate()?;
    let store = g.open_without_index().await?;
    let report = forget::run(&store, options).await?;
    super::to_agent(crate::ops::protocol::Message::Forget(report.clone()));
    if g.json {
        out(serde_json::to_value(&report.groups)?);
        if !report.wal.is_empty() {
            out(serde_json::json!({ "wal": report.wal }));
        }
        if let Some(p) = &report.pruned {
            out(serde_json::to_value(p)?);
        }
        return Ok(Outcome::Ok);
    }
    print(&report);
    Ok(Outcome::Ok)
}

/// Say what a forget decided and did.
fn print(report: &forget::Report) {
    for d in &report.damaged {
        out(format!(
            "  remove {} (damaged: {})",
            crate::util::escaped(&d.name),
            d.damage
        ));
    }
    for group in &report.groups {
        let key = &group.group_key;
        let mut about = Vec::new();
        if let Some(h) = &key.hostname {
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
        for (listed, v) in &group.decided {
            out(format!(
                "  {} {:<10} {}  {}",
                if v.keep { "keep  " } else { "remove" },
                listed.short_id,
                listed.snapshot.time.format("%Y-%m-%d %H:%M:%S"),
                v.reasons.join(", ")
            ));
        }
    }
    for w in &report.wal {
        out(format!(
            "WAL of job {} (cluster {}, {} base backups kept):{}",
            w.job,
            w.system,
            w.kept_base_backups,
            w.note.as_ref().map_or(String::new(), |n| format!(" {n}"))
        ));
        for t in &w.windows {
            out(format!(
                "  {} window {} ({} files dropped{})",
                t.action,
                t.window,
                t.files_dropped,
                t.first_kept
                    .as_ref()
                    .map_or(String::new(), |f| format!(", keeps from {f}"))
            ));
        }
    }
    let removed = report.removed;
    if let Some(p) = &report.pruned {
        super::prune::print_report(p, false);
    }
    if report.dry_run {
        out(format!("would remove {removed} snapshots (dry run)"));
    } else if report.pruned.is_some() {
        out(format!("removed {removed} snapshots"));
    } else {
        out(format!(
            "removed {removed} snapshots; their data stays until prune"
        ));
    }
}
