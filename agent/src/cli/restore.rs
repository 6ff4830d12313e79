//! `cairn restore` and `cairn verify`: run an adapter over a snapshot.

use super::job::{AdapterFlags, LimitFlags};
use super::{Global, Outcome, out};
use crate::ops::{Store, pitr_restore, restore};
use crate::pitr::plan::Target;
use crate::pitr::recover::Action;
use crate::runtime::{AdapterSource, Grants};
use anyhow::{Context, bail};

/// Flags of `restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or unique prefix), or `latest` (with --job: the job's
    /// latest). With --until, --until-lsn or --until-xid: the base backup
    /// to recover from (default: the newest that fits the target).
    #[arg(required_unless_present_any = ["until", "until_lsn", "until_xid"])]
    snapshot: Option<String>,
    /// Restore with this job of the config file: its tenant, adapter,
    /// adapter configuration and grants (into the job's server, say).
    #[arg(long)]
    job: Option<String>,
    /// Directory to restore into (created if missing); the filesystem
    /// adapter needs it, database adapters restore into their server.
    #[arg(short, long)]
    target: Option<String>,
    #[command(flatten)]
    adapter_flags: AdapterFlags,
    /// Restore only this path of the snapshot and what is below it (repeatable).
    #[arg(short, long)]
    include: Vec<String>,
    /// The adapter to restore with (default: the job's, or the bundled
    /// adapter that made the snapshot).
    #[arg(long)]
    adapter: Option<String>,
    /// When to replace a file the target already has: `if-changed` (the
    /// default) keeps one whose size, modification time and content (read
    /// back, blob by blob) are the snapshot's, so a rerun resumes; `always`
    /// rewrites it.
    #[arg(long, default_value = "if-changed", value_parser = ["if-changed", "always"])]
    overwrite: String,
    #[command(flatten)]
    limits: LimitFlags,
    /// Point-in-time recovery of a PostgreSQL job that streams its WAL
    /// (`[jobs.J.wal]`): recover to this moment, as the server's commit
    /// times say (`2026-12-06 10:04:05+00`, RFC 3339; a time zone is
    /// required), or `latest` for all the WAL archived.
    #[arg(long, requires = "job", conflicts_with_all = ["until_lsn", "until_xid"])]
    until: Option<String>,
    /// Point-in-time recovery to just after the WAL record at this
    /// position (`16/B374D848`).
    #[arg(long, requires = "job", conflicts_with = "until_xid")]
    until_lsn: Option<String>,
    /// Point-in-time recovery to just after this transaction's commit.
    #[arg(long, requires = "job")]
    until_xid: Option<u64>,
    /// With --until…: the timeline to follow (default: the newest one of
    /// the archive in the base backup's lineage).
    #[arg(long)]
    timeline: Option<u32>,
    /// With --until…: start the recovered server as the data directory's
    /// owner (the job must grant `pg_ctl`), serve it the WAL, and wait
    /// until it reaches the target.
    #[arg(long)]
    start: bool,
    /// With --start: the server also listens on 127.0.0.1 at this port
    /// (default: a private unix socket only).
    #[arg(long, requires = "start")]
    port: Option<u16>,
    /// With --start: the server's configuration file (default: the
    /// restored postgresql.conf, else a minimal one: the owner alone, over
    /// the socket).
    #[arg(long, requires = "start")]
    pg_conf: Option<std::path::PathBuf>,
    /// With --until…: what the server does at the target: `pause` (stays
    /// in recovery, readable), `promote` (opens for writes on a new
    /// timeline) or `shutdown`. A `latest` recovery always promotes.
    #[arg(long, default_value = "promote", value_parser = ["pause", "promote", "shutdown"])]
    action: String,
}

/// A recovery target given on the command line.
fn pitr_target(a: &Args) -> anyhow::Result<Option<Target>> {
    if let Some(u) = &a.until {
        if u == "latest" {
            return Ok(Some(Target::Latest));
        }
        return Ok(Some(Target::Time(parse_time(u)?)));
    }
    if let Some(l) = &a.until_lsn {
        let lsn = l
            .parse()
            .map_err(|e| anyhow::anyhow!("--until-lsn {l:?}: {e}"))?;
        return Ok(Some(Target::Lsn(lsn)));
    }
    if let Some(x) = a.until_xid
        && x > u64::from(u32::MAX)
    {
        bail!(
            "--until-xid {x}: PostgreSQL's recovery_target_xid is a 32-bit transaction id (it would silently mean {})",
            x & 0xFFFF_FFFF
        );
    }
    Ok(a.until_xid.map(Target::Xid))
}

/// A moment with its time zone: RFC 3339, or PostgreSQL's
/// `2026-12-06 10:04:05.123+00`.
fn parse_time(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let t = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(t.to_utc());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(t, format) {
            return Ok(t.to_utc());
        }
    }
    bail!(
        "--until {s:?}: give a moment with its time zone, like 2026-12-06 10:04:05+00 or 2026-12-06T10:04:05Z, or `latest`"
    )
}

/// Flags of `verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot id (or unique prefix), or `latest` (with --job: the job's latest).
    snapshot: String,
    /// Verify with this job of the config file (its tenant, adapter,
    /// adapter configuration and grants).
    #[arg(long)]
    job: Option<String>,
    /// The adapter to verify with (default: the job's, or the bundled
    /// adapter that made the snapshot).
    #[arg(long)]
    adapter: Option<String>,
    #[command(flatten)]
    adapter_flags: AdapterFlags,
    #[command(flatten)]
    limits: LimitFlags,
}

/// What a restore or verify runs: the snapshot, its adapter, grants and
/// configuration, from the flags and from the job if one is named.
struct Plan {
    store: Store,
    id: crate::repo::Id,
    snap: crate::repo::snapshot::Snapshot,
    source: AdapterSource,
    grants: Grants,
    config: Option<serde_json::Value>,
    /// A point-in-time recovery's plan.
    pitr: Option<pitr_restore::Planned>,
    /// A point-in-time recovery's shared lock, held from its plan until
    /// the server has read its last WAL: a prune meanwhile would remove
    /// what the plan counted on.
    _pitr_lock: Option<crate::repo::LockGuard>,
}

async fn plan(
    g: &Global,
    spec: Option<&str>,
    job: Option<&str>,
    adapter: Option<&str>,
    mut flags: AdapterFlags,
    pitr: Option<(Target, Option<u32>)>,
) -> anyhow::Result<Plan> {
    let mut env = Default::default();
    let mut job_adapter = None;
    let mut pin = None;
    let g = match job {
        Some(name) => {
            let (job, jg) = super::job::load(g, name)?;
            flags.add_job(name, &job)?;
            env = job.grants.env.clone();
            job_adapter = Some(job.adapter.clone());
            pin = job.adapter_sha256.clone();
            jg
        }
        None => g.clone(),
    };
    let store = g.open().await?;
    let pitr_lock = match pitr {
        Some(_) => store.read_lock().await?,
        None => None,
    };
    let (pitr, spec) = match (pitr, job) {
        (Some((target, timeline)), Some(job)) => {
            let planned = pitr_restore::plan(&store, job, target, timeline, spec).await?;
            let base = planned.plan.base.id.0.to_hex();
            (Some(planned), base)
        }
        (Some(_), None) => bail!("--until, --until-lsn and --until-xid need --job"),
        (None, _) => (None, spec.context("give a snapshot")?.to_string()),
    };
    let (id, snap) = store.repo.find_snapshot_of(&spec, job).await?;
    let source = match adapter.map(str::to_string).or(job_adapter) {
        Some(name) => AdapterSource::parse(&name).pinned(pin.as_deref()),
        None => restore::snapshot_adapter(&id, &snap)?,
    };
    if let Some(job) = job {
        restore::same_adapter(&id, &snap, job, &source)?;
    }
    let grants = flags.grants(&env)?;
    let config = flags.config()?;
    Ok(Plan {
        store,
        id,
        snap,
        source,
        grants,
        config,
        pitr,
        _pitr_lock: pitr_lock,
    })
}

/// Whether the adapter says it writes paths (so takes `--target`); an
/// adapter that cannot be loaded or asked does not.
async fn writes_paths(source: &crate::runtime::AdapterSource) -> bool {
    let Ok(runtime) = crate::runtime::Runtime::new() else {
        return false;
    };
    let Ok(component) = runtime.load(source) else {
        return false;
    };
    runtime
        .info(&source.name(), &component)
        .await
        .is_ok_and(|i| i.needs.iter().any(|n| n == "write-paths"))
}

/// Run `restore`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let target_of_pitr = pitr_target(&a)?;
    if target_of_pitr.is_none() && (a.start || a.timeline.is_some() || a.action != "promote") {
        bail!(
            "--start, --timeline and --action are for point-in-time recovery: give --until, --until-lsn or --until-xid"
        );
    }
    if target_of_pitr.is_some() && a.target.is_none() {
        bail!("--until…: give --target, the empty directory to restore the base backup into");
    }
    if target_of_pitr.is_some() && !a.include.is_empty() {
        bail!(
            "--until… recovers the whole cluster: --include does not apply to a point-in-time recovery"
        );
    }
    if let Some(t) = a.target.as_ref().filter(|_| a.start)
        && t.contains(['\'', '"', '\\', '\n'])
    {
        bail!(
            "--target {t:?}: a path with quotes, backslashes or newlines cannot be given to pg_ctl (--start)"
        );
    }
    let Plan {
        store,
        id,
        snap,
        source,
        mut grants,
        config: adapter_config,
        pitr,
        _pitr_lock,
    } = plan(
        g,
        a.snapshot.as_deref(),
        a.job.as_deref(),
        a.adapter.as_deref(),
        a.adapter_flags,
        target_of_pitr.map(|t| (t, a.timeline)),
    )
    .await?;
    // Checked before a byte is written: --start needs pg_ctl.
    let pg_ctl = pitr_restore::granted(&grants, "pg_ctl");
    let psql = pitr_restore::granted(&grants, "psql");
    if a.start && pg_ctl.is_none() {
        bail!(
            "--start: job {} does not grant pg_ctl (add its path to the job's programs, /usr/lib/postgresql/15/bin/pg_ctl on Debian)",
            a.job.as_deref().unwrap_or_default()
        );
    }
    // A file adapter's snapshot records the paths it backed up; a service
    // adapter's records `/<adapter>` only, and its settings have no target.
    let files = snap.paths != [format!("/{}", snap.adapter())];
    // A service adapter restores where its settings say: a `--target` it
    // would not read must not be taken (nor reported) as where the data
    // went. Refused before the directory is made.
    // An adapter that says it writes paths (`info.needs` has
    // `write-paths`) takes one.
    if let (Some(t), Some(serde_json::Value::Object(c))) = (&a.target, &adapter_config)
        && !files
        && !c.contains_key("target")
        && !writes_paths(&source).await
    {
        bail!(
            "--target {t}: snapshot {} was made by a service adapter ({}), whose settings take no target: it restores where its settings say; leave --target out",
            id.short(),
            source.name()
        );
    }
    let target = match &a.target {
        Some(t) => {
            std::fs::create_dir_all(t).with_context(|| format!("creating restore target {t}"))?;
            let abs = std::fs::canonicalize(t).with_context(|| format!("restore target {t}"))?;
            let abs = abs
                .to_str()
                .context("restore target is not valid UTF-8")?
                .to_string();
            grants.add(&abs, true)?;
            Some(abs)
        }
        None => None,
    };
    let config = match (adapter_config, &target) {
        // `--target` is where, over whatever the job's config says: a
        // job's settings need no `--set target=` beside it.
        (Some(serde_json::Value::Object(mut c)), Some(t)) => {
            c.insert("target".into(), t.clone().into());
            serde_json::Value::Object(c)
        }
        (Some(c), _) => c,
        (None, Some(t)) => serde_json::json!({ "target": t }),
        (None, None) => bail!(
            "give --target (a directory to restore into), or --adapter-config (or --job) for adapter {}",
            source.name()
        ),
    };
    let target = target.unwrap_or_else(|| format!("adapter {}", source.name()));
    let mut include = Vec::new();
    for i in &a.include {
        if !i.starts_with('/') {
            bail!("--include {i:?}: give an absolute path inside the snapshot (see `cairn ls`)");
        }
        include.push(i.trim_end_matches('/').to_string());
    }
    let options = restore::Options {
        snapshot: id,
        tree: snap.tree,
        source,
        grants,
        config,
        include,
        overwrite: a.overwrite == "always",
        limits: a.limits.limits(),
        target,
    };
    let report = restore::run(&store, options).await?;
    super::to_agent(crate::ops::protocol::Message::Restore(report.clone()));
    for entry in &report.not_restored {
        super::note(format!("not restored: {}", crate::util::escaped(entry)));
    }
    if let Some(planned) = pitr {
        if !report.not_restored.is_empty() {
            bail!(
                "the base backup {} was not restored whole into {}: no recovery settings written",
                id.short(),
                report.target
            );
        }
        let recovery = pitr_restore::Recovery {
            job: a.job.clone().unwrap_or_default(),
            start: a.start,
            port: a.port,
            pg_conf: a.pg_conf.clone(),
            action: match a.action.as_str() {
                "pause" => Action::Pause,
                "shutdown" => Action::Shutdown,
                _ => Action::Promote,
            },
            exe: std::env::current_exe().context("finding this program's path")?,
            config: g.config_path.clone(),
            pg_ctl,
            psql,
        };
        let r = pitr_restore::recover(&planned, std::path::Path::new(&report.target), &recovery)
            .await?;
        if let Some(g) = &r.gap {
            super::note(format!(
                "the archive lacks WAL segment {g} but holds WAL after it: recovery could not pass it"
            ));
        }
        if g.json {
            super::emit(&r);
        } else {
            out(format!(
                "restored base backup {} to {}; recovery to {} on timeline {}, WAL {} to {}{}",
                id.short(),
                r.data_directory,
                r.target,
                r.timeline,
                r.wal_from,
                r.wal_to,
                if r.wal_to_partial { " (partial)" } else { "" }
            ));
            if r.started {
                out(format!(
                    "the server {} after {:.1} s: last commit replayed at {}, WAL position {}{}; {} WAL files served",
                    r.state,
                    r.seconds,
                    r.reached_commit_time.as_deref().unwrap_or("(none)"),
                    r.reached_lsn.as_deref().unwrap_or("-"),
                    r.new_timeline
                        .map_or(String::new(), |t| format!(", new timeline {t}")),
                    r.wal_files_served
                ));
                if let Some(stopped) = &r.stopped {
                    out(format!("the server's log: {stopped}"));
                }
                out(format!(
                    "it runs on: psql -h {} -p {} (log: {})",
                    r.socket_dir.as_deref().unwrap_or_default(),
                    r.port.unwrap_or_default(),
                    r.log.as_deref().unwrap_or_default()
                ));
            } else {
                out(format!(
                    "recovery settings written; start it as the directory's owner with pg_ctl start -D {}. Its restore_command runs {}: that user needs the config, the password file and the repository (or use --start, which serves the WAL itself)",
                    r.data_directory, r.restore_command
                ));
            }
        }
        return Ok(Outcome::Ok);
    }
    if g.json {
        super::emit(&report);
    } else {
        out(format!(
            "restored snapshot {} to {}: {} files ({} already there, kept), {} directories, {} symlinks, {}",
            id.short(),
            report.target,
            report.files,
            report.files_unchanged,
            report.directories,
            report.symlinks,
            indicatif::HumanBytes(report.bytes)
        ));
    }
    Ok(if report.not_restored.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Incomplete
    })
}

/// Run `verify`.
pub async fn verify(g: &Global, a: VerifyArgs) -> anyhow::Result<Outcome> {
    let Plan {
        store,
        id,
        snap,
        source,
        grants,
        config,
        ..
    } = plan(
        g,
        Some(&a.snapshot),
        a.job.as_deref(),
        a.adapter.as_deref(),
        a.adapter_flags,
        None,
    )
    .await?;
    let options = restore::Options {
        snapshot: id,
        tree: snap.tree,
        target: format!("adapter {}", source.name()),
        source,
        grants,
        config: config.unwrap_or_else(|| serde_json::json!({})),
        include: Vec::new(),
        overwrite: false,
        limits: a.limits.limits(),
    };
    let r = restore::verify(&store, options).await?;
    if g.json {
        out(serde_json::to_value(&r)?);
    } else {
        for p in &r.problems {
            out(format!("problem: {p}"));
        }
        out(format!(
            "verified snapshot {}: {} entries, {} read and authenticated, {} problems",
            id.short(),
            r.entries,
            indicatif::HumanBytes(r.bytes),
            r.problems.len()
        ));
    }
    if !r.problems.is_empty() {
        bail!(
            "snapshot {} did not verify: {} problems",
            id.short(),
            r.problems.len()
        );
    }
    Ok(Outcome::Ok)
}
