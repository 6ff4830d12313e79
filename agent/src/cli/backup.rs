//! `cairn backup`: run an adapter's backup and record a snapshot.

use super::job::{AdapterFlags, LimitFlags};
use super::{Global, Outcome, out};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::repo::snapshot::Snapshot;
use crate::runtime::{AdapterSource, BackupRequest, Runtime};
use anyhow::{Context, bail};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Flags of `backup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files and directories to back up (granted read-only to the adapter);
    /// required for the filesystem adapter.
    paths: Vec<String>,
    /// Run this job of the config file (its tenant, adapter, paths, excludes and tags).
    #[arg(long, conflicts_with = "paths")]
    job: Option<String>,
    /// Leave out entries matching this glob (a pattern without `/` matches names at any depth).
    #[arg(short = 'e', long)]
    exclude: Vec<String>,
    /// Back up temporary files too (TEMP.*, tmp/ directories, *.tmp, *.swp).
    #[arg(long)]
    no_exclude_temporary: bool,
    /// Add a tag to the snapshot (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record instead of this host's.
    #[arg(long)]
    host: Option<String>,
    /// Time to record instead of now, as restic's `--time`: "2012-11-01
    /// 22:08:41" (local time) or RFC 3339 ("2012-11-01T22:08:41+01:00").
    #[arg(long, value_parser = parse_time)]
    time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Read every file even when the parent snapshot has it unchanged.
    #[arg(long)]
    force: bool,
    /// The adapter: a bundled name or a path to a `.wasm` component.
    #[arg(long, default_value = "filesystem")]
    adapter: String,
    #[command(flatten)]
    adapter_flags: AdapterFlags,
    /// zstd level for new data (0 stores it uncompressed).
    #[arg(long, default_value_t = 3)]
    compression: i32,
    #[command(flatten)]
    limits: LimitFlags,
}

/// A `--time` value: RFC 3339, or "YYYY-MM-DD HH:MM:SS" in local time.
fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").map_err(|_| {
        format!("{s:?} is not a time: write \"2012-11-01 22:08:41\" (local time) or RFC 3339")
    })?;
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.fixed_offset())
        .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))
}

/// Make a path absolute and clean without resolving symlinks, as restic does.
fn absolute(p: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut parts: Vec<String> = Vec::new();
    for c in abs.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(
                s.to_str()
                    .with_context(|| format!("path {p:?} is not valid UTF-8"))?
                    .to_string(),
            ),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Run `backup`.
pub async fn run(g: &Global, mut a: Args) -> anyhow::Result<Outcome> {
    let job_global;
    let mut env = Default::default();
    let mut pin = None;
    let g = match &a.job {
        None => g,
        Some(name) => {
            let (job, jg) = super::job::load(g, name)?;
            a.paths = job.paths.clone();
            a.exclude.extend(job.exclude.iter().cloned());
            a.no_exclude_temporary |= !job.exclude_temporary;
            a.tag.extend(job.tags.iter().cloned());
            a.adapter = job.adapter.clone();
            a.compression = job.compression;
            a.adapter_flags.add_job(name, &job)?;
            env = job.grants.env.clone();
            pin = job.adapter_sha256.clone();
            job_global = jg;
            &job_global
        }
    };
    let started = chrono::Local::now().fixed_offset();
    let clock = Instant::now();
    let mut paths = Vec::new();
    let mut grants = a.adapter_flags.grants(&env)?;
    for p in &a.paths {
        let abs = absolute(p)?;
        std::fs::symlink_metadata(&abs).with_context(|| format!("backup path {abs}"))?;
        grants
            .add(&abs, false)
            .with_context(|| format!("backup path {abs}"))?;
        paths.push(abs);
    }
    paths.sort();
    if paths.is_empty() && AdapterSource::parse(&a.adapter).name() == "filesystem" {
        bail!("give the paths to back up (or --job)");
    }
    let source = AdapterSource::parse(&a.adapter).pinned(pin.as_deref());
    let adapter_name = source.name();
    let config = match (&source, a.adapter_flags.config()?) {
        (_, Some(config)) => config,
        (AdapterSource::Bundled(n), None) if n == "filesystem" => serde_json::json!({
            "paths": paths, "exclude": a.exclude, "exclude-temporary": !a.no_exclude_temporary,
        }),
        _ => serde_json::json!({}),
    };
    if a.compression < 0 || a.compression > 22 {
        bail!("--compression {} is out of range 0..=22", a.compression);
    }

    let repo = g.open_without_index().await?;
    let lock = repo.lock(false).await?;
    // The index is read under the lock: a prune that finished before the
    // lock was granted has removed what it no longer lists.
    if let Err(e) = repo.load_index().await {
        let _ = lock.release().await;
        return Err(e.into());
    }
    // Packs an interrupted backup uploaded are indexed, not uploaded again.
    let adopted = match repo.adopt_unindexed_packs().await {
        Ok(n) => n,
        Err(e) => {
            let _ = lock.release().await;
            return Err(e.into());
        }
    };
    let hostname = a.host.clone().unwrap_or_else(crate::util::hostname);
    let parent = if a.force {
        None
    } else {
        // As restic: the newest one not newer than the time recorded.
        repo.snapshots().await?.into_iter().rev().find(|(_, s)| {
            s.hostname == hostname
                && s.paths == paths
                && s.adapter() == adapter_name
                && a.time.is_none_or(|t| s.time <= t)
        })
    };
    let opts = PipelineOptions {
        compression_level: a.compression,
        ..Default::default()
    };
    let pipeline = Pipeline::start(repo.clone(), opts);
    let stats = pipeline.stats().clone();
    // The agent that started this backup reads its progress from stdout.
    let status = crate::telemetry::is_agent_child().then(|| {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                out(serde_json::json!({
                    "message_type": "status",
                    "bytes_read": stats.bytes_in.load(Ordering::Relaxed),
                    "bytes_stored": stats.bytes_stored.load(Ordering::Relaxed),
                }));
            }
        })
    });
    let progress = (!g.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        let stats = stats.clone();
        let bar2 = bar.clone();
        tokio::spawn(async move {
            loop {
                let read = stats.bytes_in.load(Ordering::Relaxed);
                let stored = stats.bytes_stored.load(Ordering::Relaxed);
                bar2.set_message(format!(
                    "read {}, stored {}",
                    indicatif::HumanBytes(read),
                    indicatif::HumanBytes(stored)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        bar
    });

    let runtime = Runtime::new()?;
    let limits = a.limits.limits();
    let req = BackupRequest {
        pipeline,
        grants,
        config,
        parent_tree: parent.as_ref().map(|(_, s)| s.tree),
        inherit_stderr: false,
    };
    let outcome = runtime.backup(&source, req, &limits).await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(task) = status {
        task.abort();
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = lock.release().await;
            return Err(e.context("backup failed; no snapshot was written"));
        }
    };
    let snapshot = Snapshot {
        time: a.time.unwrap_or(started),
        parent: parent.as_ref().map(|(id, _)| *id),
        tree: outcome.tree,
        // restic lists snapshots by path: a server backup records where
        // its adapter puts its entries.
        paths: if paths.is_empty() {
            vec![format!("/{adapter_name}")]
        } else {
            paths.clone()
        },
        hostname,
        username: whoami::username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        excludes: a.exclude.clone(),
        tags: a.tag.clone(),
        original: None,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        cairn_adapter: Some(adapter_name.clone()),
        cairn_job: a.job.clone(),
        cairn_skipped: outcome
            .skipped
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect(),
    };
    // An earlier run may have left files in one region of the pair only
    // (it was interrupted, or a region lagged): copy them over before the
    // snapshot refers to them, so each region is a whole repository.
    if let Some(pair) = g.pair().filter(|p| p.lagging().is_empty()) {
        use crate::residency::pair::Role;
        let key = repo.key().clone();
        let config_ok = move |d: &[u8]| key.authentic(d);
        for (from, to) in [
            (Role::Primary, Role::Secondary),
            (Role::Secondary, Role::Primary),
        ] {
            let s = crate::residency::sync::sync(&pair, from, to, false, &config_ok).await;
            let (to_region, from_region) = (pair.store(to).region(), pair.store(from).region());
            // The region that cannot be made whole does not get the
            // snapshot (or, with require-both, there is no snapshot).
            let lagging = match s {
                Ok(s) => {
                    if s.copied > 0 {
                        tracing::warn!(copied = s.copied, from = %from_region, to = %to_region, "Evened out the regions of the pair.");
                    }
                    // Damaged in the source too: `check` and `repair` report
                    // it; it is not the target's fault.
                    for f in &s.failed {
                        tracing::warn!(from = %from_region, to = %to_region, problem = %f, "Could not copy a file across the pair.");
                    }
                    // A file the target still lacks: it must not get a
                    // snapshot that may refer to it.
                    s.failed_writes
                        .first()
                        .or(s.failed_reads.first())
                        .map(|e| (to, e.clone()))
                }
                Err(e) => Some((e.role, e.error.to_string())),
            };
            if let Some((role, why)) = lagging {
                if pair.require_both() {
                    let _ = lock.release().await;
                    bail!(
                        "backup stopped, no snapshot was written: region {} could not be made whole and the tenant requires both regions: {why}",
                        pair.store(role).region()
                    );
                }
                pair.mark_region_lagging(role, &why);
                if !pair.usable(Role::Primary) && !pair.usable(Role::Secondary) {
                    let _ = lock.release().await;
                    bail!(
                        "backup stopped, no snapshot was written: neither region of the pair can take it ({why})"
                    );
                }
            }
        }
    }
    lock.ensure_held()
        .context("backup stopped; no snapshot was written")?;
    let id = repo.save_snapshot(&snapshot).await?;
    // The snapshot is safely stored: a lock we cannot remove is only a
    // leftover (it goes stale and is cleared), not a failed backup.
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "Could not remove the repository lock; it will be cleared as stale.");
    }

    let s = &outcome.stats;
    let incomplete = !outcome.skipped.is_empty();
    for (path, reason) in &outcome.skipped {
        eprintln!(
            "cairn: left out {}: {}",
            crate::util::escaped(path),
            crate::util::escaped(reason)
        );
    }
    if g.json {
        out(serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_hex(),
            "parent": parent.map(|(p, _)| p.to_hex()),
            "adapter": adapter_name,
            "files": outcome.files,
            "directories": outcome.directories,
            "files_unchanged": outcome.unchanged,
            "skipped": outcome.skipped.iter().map(|(p, r)| serde_json::json!({"path": p, "reason": r})).collect::<Vec<_>>(),
            "bytes_read": s.bytes_in.load(Ordering::Relaxed),
            "bytes_new": s.bytes_new.load(Ordering::Relaxed),
            "bytes_stored": s.bytes_stored.load(Ordering::Relaxed),
            "blobs_new": s.blobs_new.load(Ordering::Relaxed),
            "packs": s.packs.load(Ordering::Relaxed),
            "packs_adopted": adopted,
            "duration_seconds": clock.elapsed().as_secs_f64(),
            "complete": !incomplete,
        }));
    } else {
        out(format!(
            "Files: {} ({} unchanged), directories: {}, skipped: {}",
            outcome.files,
            outcome.unchanged,
            outcome.directories,
            outcome.skipped.len()
        ));
        out(format!(
            "Read {}, new {}, stored {} in {:.1}s",
            indicatif::HumanBytes(s.bytes_in.load(Ordering::Relaxed)),
            indicatif::HumanBytes(s.bytes_new.load(Ordering::Relaxed)),
            indicatif::HumanBytes(s.bytes_stored.load(Ordering::Relaxed)),
            clock.elapsed().as_secs_f64()
        ));
        out(format!("snapshot {} saved", id.short()));
    }
    Ok(if incomplete {
        Outcome::Incomplete
    } else {
        Outcome::Ok
    })
}
