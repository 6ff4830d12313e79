//! `cairn backup`: run an adapter's backup and record a snapshot.

use super::job::{AdapterFlags, LimitFlags};
use super::{Global, Outcome, out};
use crate::ops::backup;
use crate::runtime::AdapterSource;
use anyhow::{Context, bail};
use std::time::Duration;

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
    let began = (
        chrono::Local::now().fixed_offset(),
        std::time::Instant::now(),
    );
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
    let source = AdapterSource::parse(&a.adapter).pinned(pin.as_deref());
    let config = match (&source, a.adapter_flags.config()?) {
        (_, Some(config)) => config,
        (AdapterSource::Bundled(n), None) if n == "filesystem" => serde_json::json!({
            "paths": paths, "exclude": a.exclude, "exclude-temporary": !a.no_exclude_temporary,
        }),
        _ => serde_json::json!({}),
    };
    // A bad flag is refused before the repository is opened.
    if a.compression < 0 || a.compression > 22 {
        bail!("--compression {} is out of range 0..=22", a.compression);
    }
    if paths.is_empty() && source.name() == "filesystem" {
        bail!("give the paths to back up (or --job)");
    }
    let store = g.open_without_index().await?;
    let bar = (!g.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let on_progress = progress_reporter(bar.clone());
    let options = backup::Options {
        source,
        paths,
        grants,
        config,
        excludes: a.exclude.clone(),
        tags: a.tag.clone(),
        host: a.host.clone().unwrap_or_else(crate::util::hostname),
        time: a.time,
        force: a.force,
        job: a.job.clone(),
        compression: a.compression,
        limits: a.limits.limits(),
        on_progress,
        began,
    };
    let report = backup::run(&store, options).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    super::to_agent(crate::ops::protocol::Message::Backup(report.clone()));
    for s in &report.skipped {
        super::note(format!(
            "left out {}: {}",
            crate::util::escaped(&s.path),
            crate::util::escaped(&s.reason)
        ));
    }
    if g.json {
        super::emit(&report);
    } else {
        out(format!(
            "Files: {} ({} unchanged), directories: {}, skipped: {}",
            report.files,
            report.files_unchanged,
            report.directories,
            report.skipped.len()
        ));
        out(format!(
            "Read {}, new {}, stored {} in {:.1}s",
            indicatif::HumanBytes(report.bytes_read),
            indicatif::HumanBytes(report.bytes_new),
            indicatif::HumanBytes(report.bytes_stored),
            report.duration_seconds
        ));
        out(format!(
            "snapshot {} saved",
            &report.snapshot_id[..8.min(report.snapshot_id.len())]
        ));
    }
    Ok(if report.complete {
        Outcome::Ok
    } else {
        Outcome::Incomplete
    })
}

/// Where a running backup's counters go: the spinner on a terminal, and
/// a progress message each second to the agent that started this process.
fn progress_reporter(
    bar: Option<indicatif::ProgressBar>,
) -> Option<Box<dyn Fn(backup::Progress) + Send + Sync>> {
    let to_agent = crate::ops::protocol::is_child();
    if bar.is_none() && !to_agent {
        return None;
    }
    let ticks = std::sync::atomic::AtomicU32::new(0);
    let per_second = (1000 / backup::PROGRESS_EVERY.as_millis()).max(1) as u32;
    Some(Box::new(move |p: backup::Progress| {
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "read {}, stored {}",
                indicatif::HumanBytes(p.bytes_read),
                indicatif::HumanBytes(p.bytes_stored)
            ));
        }
        let n = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if to_agent && n.is_multiple_of(per_second) {
            crate::ops::protocol::send(&crate::ops::protocol::Message::Progress(p));
        }
    }))
}
