//! A backup as one transaction: lock the repository, read its index, adopt
//! the packs an interrupted backup left, choose the parent, run the
//! adapter through the pipeline, even out a region pair, record the
//! snapshot.

use super::{Error, Result, Store, invalid};
use crate::pipeline::{Pipeline, PipelineOptions, Stats};
use crate::repo::snapshot::Snapshot;
use crate::residency::pair::Replicated;
use crate::runtime::{AdapterSource, BackupRequest, Grants, Limits, Runtime};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What to back up and how.
pub struct Options {
    /// The adapter.
    pub source: AdapterSource,
    /// Absolute paths granted to the adapter and recorded in the snapshot
    /// (empty for a service adapter), sorted.
    pub paths: Vec<String>,
    /// What the adapter may reach.
    pub grants: Grants,
    /// The adapter's configuration.
    pub config: serde_json::Value,
    /// Excludes, recorded in the snapshot.
    pub excludes: Vec<String>,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// The host name recorded.
    pub host: String,
    /// The time recorded instead of now (restic's `--time`).
    pub time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Read every file, with no parent snapshot.
    pub force: bool,
    /// The config file's job this backup runs, recorded in the snapshot.
    pub job: Option<String>,
    /// zstd level for new data (0: uncompressed).
    pub compression: i32,
    /// The adapter's memory and time limits.
    pub limits: Limits,
    /// Called with the counters every [`PROGRESS_EVERY`] while it runs.
    pub on_progress: Option<Box<dyn Fn(Progress) + Send + Sync>>,
    /// When the backup began, as the snapshot records it (unless `time`),
    /// and the clock its duration is measured from: the caller's start,
    /// before the repository was opened.
    pub began: (chrono::DateTime<chrono::FixedOffset>, Instant),
}

/// How often [`Options::on_progress`] is called.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A running backup's counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Bytes handed to the pipeline so far.
    pub bytes_read: u64,
    /// Bytes written to storage so far.
    pub bytes_stored: u64,
}

impl Progress {
    fn of(stats: &Stats) -> Progress {
        Progress {
            bytes_read: stats.bytes_in.load(Ordering::Relaxed),
            bytes_stored: stats.bytes_stored.load(Ordering::Relaxed),
        }
    }
}

/// An entry the adapter could not read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// The entry's path in the snapshot.
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// What a backup stored (`backup --json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "message_type", rename = "summary")]
pub struct Report {
    /// The snapshot written.
    pub snapshot_id: String,
    /// Its parent, if one was used.
    pub parent: Option<String>,
    /// The adapter's name.
    pub adapter: String,
    /// Files the adapter emitted.
    pub files: u64,
    /// Directories emitted.
    pub directories: u64,
    /// Files re-used from the parent without reading.
    pub files_unchanged: u64,
    /// Entries left out.
    pub skipped: Vec<Skipped>,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes of data new to the repository.
    pub bytes_new: u64,
    /// Bytes written to storage.
    pub bytes_stored: u64,
    /// Blobs stored.
    pub blobs_new: u64,
    /// Packs written.
    pub packs: u64,
    /// Packs an interrupted backup had uploaded, indexed instead of
    /// uploaded again.
    pub packs_adopted: usize,
    /// Seconds taken.
    pub duration_seconds: f64,
    /// Whether every entry was read (no `skipped`).
    pub complete: bool,
    /// Most linear memory the adapter held, in bytes (what
    /// `--memory-limit` must allow).
    pub adapter_memory_bytes: u64,
}

/// Run a backup and record its snapshot.
pub async fn run(store: &Store, o: Options) -> Result<Report> {
    if !(0..=22).contains(&o.compression) {
        invalid!("--compression {} is out of range 0..=22", o.compression);
    }
    if o.paths.is_empty() && o.source.name() == "filesystem" {
        invalid!("give the paths to back up (or --job)");
    }
    if let Some(t) = o.tags.iter().find(|t| crate::pitr::reserved_tag(t)) {
        invalid!(
            "tag {t:?}: tags starting with pg- or wal-, and cairn-wal, are the ones Cairn sets on PostgreSQL base backups and WAL; choose another"
        );
    }
    let (started, clock) = o.began;
    let physical = matches!(&o.source, AdapterSource::Bundled(n) if n == "postgres")
        && o.config.get("mode").and_then(|m| m.as_str()) == Some("physical");
    let repo = &store.repo;
    let adapter_name = o.source.name();
    // Dropped on every way out: the lock goes with it.
    let lock = repo.lock(false).await?;
    // The index is read under the lock: a prune that finished before the
    // lock was granted has removed what it no longer lists.
    repo.load_index().await?;
    // Packs an interrupted backup uploaded are indexed, not uploaded again.
    let adopted = repo.adopt_unindexed_packs().await?;
    // restic lists snapshots by path: a server backup records where its
    // adapter puts its entries.
    let recorded_paths = if o.paths.is_empty() {
        vec![format!("/{adapter_name}")]
    } else {
        o.paths.clone()
    };
    let parent = if o.force {
        None
    } else {
        // As restic: the newest one of the same paths and host, not newer
        // than the time recorded. A service adapter's paths (`/<adapter>`)
        // say nothing of which server or database: its parent is also the
        // same job's, so no job is handed another's tree.
        repo.snapshots().await?.into_iter().rev().find(|(_, s)| {
            s.hostname == o.host
                && s.paths == recorded_paths
                && s.adapter() == adapter_name
                && (!o.paths.is_empty() || s.cairn_job == o.job)
                && o.time.is_none_or(|t| s.time <= t)
        })
    };
    let pipeline = Pipeline::start(
        repo.clone(),
        PipelineOptions {
            compression_level: o.compression,
            ..Default::default()
        },
    );
    let stats = pipeline.stats().clone();
    let ticker = o.on_progress.map(|report| {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                report(Progress::of(&stats));
            }
        })
    });
    let request = BackupRequest {
        pipeline,
        grants: o.grants,
        config: o.config,
        parent_tree: parent.as_ref().map(|(_, s)| s.tree),
    };
    let outcome = async {
        Runtime::new()
            .map_err(Error::Adapter)?
            .backup(&o.source, request, &o.limits)
            .await
            .map_err(|e| Error::Adapter(e.context("backup failed; no snapshot was written")))
    }
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    let outcome = outcome?;
    let mut tags = o.tags.clone();
    // A physical base backup of the bundled PostgreSQL adapter is tagged
    // with its WAL bounds, or there is no snapshot at all if its record
    // does not hold together. No other snapshot is read for one: what a
    // file system or another adapter stores under /postgres is its own.
    if physical {
        let what = match &o.job {
            Some(j) => format!("job {j}"),
            None => format!("adapter {adapter_name}"),
        };
        let base = crate::pitr::basebackup::read(repo, outcome.tree)
            .await
            .map_err(|e| match e {
                crate::pitr::PitrError::Repo(e) => Error::Repo(e),
                e => Error::Adapter(anyhow::anyhow!("{what}: {e}; no snapshot was written")),
            })?;
        let Some(base) = base else {
            return Err(Error::Adapter(anyhow::anyhow!(
                "{what}: a physical backup without {}; no snapshot was written",
                crate::pitr::basebackup::RECORD
            )));
        };
        tags.extend(base.tags());
    }
    let snapshot = Snapshot {
        time: o.time.unwrap_or(started),
        parent: parent.as_ref().map(|(id, _)| *id),
        tree: outcome.tree,
        paths: recorded_paths,
        hostname: o.host.clone(),
        username: whoami::username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        excludes: o.excludes.clone(),
        tags,
        original: None,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        cairn_adapter: Some(adapter_name.clone()),
        cairn_component: outcome.component.clone(),
        cairn_job: o.job.clone(),
        cairn_skipped: outcome
            .skipped
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect(),
    };
    if let Some(pair) = &store.pair {
        even_out(pair, repo).await?;
    }
    lock.ensure_held()
        .map_err(|e| Error::from(e).context("backup stopped; no snapshot was written"))?;
    let id = repo.save_snapshot(&snapshot).await?;
    // The snapshot is safely stored: a lock we cannot remove is only a
    // leftover (it goes stale and is cleared), not a failed backup.
    drop(lock);
    let s = &outcome.stats;
    Ok(Report {
        snapshot_id: id.to_hex(),
        parent: parent.map(|(p, _)| p.to_hex()),
        adapter: adapter_name,
        files: outcome.files,
        directories: outcome.directories,
        files_unchanged: outcome.unchanged,
        complete: outcome.skipped.is_empty(),
        adapter_memory_bytes: outcome.memory_peak,
        skipped: outcome
            .skipped
            .into_iter()
            .map(|(path, reason)| Skipped { path, reason })
            .collect(),
        bytes_read: s.bytes_in.load(Ordering::Relaxed),
        bytes_new: s.bytes_new.load(Ordering::Relaxed),
        bytes_stored: s.bytes_stored.load(Ordering::Relaxed),
        blobs_new: s.blobs_new.load(Ordering::Relaxed),
        packs: s.packs.load(Ordering::Relaxed),
        packs_adopted: adopted,
        duration_seconds: clock.elapsed().as_secs_f64(),
    })
}

/// An earlier run may have left files in one region of the pair only (it
/// was interrupted, or a region lagged): copy them over before the
/// snapshot refers to them, so each region is a whole repository. A region
/// that cannot be made whole does not get the snapshot (or, when the
/// tenant requires both, there is no snapshot).
async fn even_out(pair: &Arc<dyn Replicated>, repo: &crate::repo::Repository) -> Result<()> {
    use crate::residency::pair::Role;
    if !pair.lagging().is_empty() {
        return Ok(());
    }
    let key = repo.key().clone();
    let config_ok = move |d: &[u8]| key.authentic(d);
    for (from, to) in [
        (Role::Primary, Role::Secondary),
        (Role::Secondary, Role::Primary),
    ] {
        let s = pair.copy_missing(from, to, &config_ok).await;
        let (to_region, from_region) = (pair.region(to), pair.region(from));
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
                return Err(Error::Residency(format!(
                    "backup stopped, no snapshot was written: region {} could not be made whole and the tenant requires both regions: {why}",
                    pair.region(role)
                )));
            }
            pair.mark_region_lagging(role, &why);
            if !pair.usable(Role::Primary) && !pair.usable(Role::Secondary) {
                return Err(Error::Residency(format!(
                    "backup stopped, no snapshot was written: neither region of the pair can take it ({why})"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Backend, FileType};
    use crate::testing::{memory_pair, memory_repo, pair_store, runtime, store};

    /// A backup through the test adapter, which emits `/faulty/data` and
    /// then does what `fault` says.
    fn options(fault: &str) -> Options {
        Options {
            source: AdapterSource::parse(crate::runtime::bundled::FAULTY_PATH),
            paths: Vec::new(),
            grants: Grants::default(),
            config: serde_json::json!({ "fault": fault }),
            excludes: Vec::new(),
            tags: Vec::new(),
            host: "unit".into(),
            time: None,
            force: false,
            job: Some("faulty".into()),
            compression: 3,
            limits: Limits::default(),
            on_progress: None,
            began: (chrono::Local::now().fixed_offset(), Instant::now()),
        }
    }

    #[test]
    fn a_backup_records_a_snapshot_of_what_the_adapter_emitted() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("backup").await;
            let report = run(&store(&repo), options("none")).await.unwrap();
            assert!(report.complete, "{report:?}");
            assert_eq!(report.files, 1);
            assert_eq!(
                backend.names(FileType::Snapshot),
                vec![report.snapshot_id.clone()]
            );
            let (_, snap) = repo.load_snapshot(&report.snapshot_id).await.unwrap();
            assert_eq!(snap.paths, ["/cairn_test_adapter_faulty"]);
            assert_eq!(snap.cairn_job.as_deref(), Some("faulty"));
            // A second one stores nothing new but its snapshot, whose
            // parent is the first (matched by the paths recorded, as
            // restic matches them: a service adapter's `/<adapter>`).
            let again = run(&store(&repo), options("none")).await.unwrap();
            assert_eq!(again.blobs_new, 0, "{again:?}");
            assert_eq!(again.parent.as_deref(), Some(report.snapshot_id.as_str()));
            assert_eq!(backend.names(FileType::Snapshot).len(), 2);
            // Another job of the same adapter (another database, say) is
            // not handed this job's tree as its parent.
            let other = Options {
                job: Some("other".into()),
                ..options("none")
            };
            let other = run(&store(&repo), other).await.unwrap();
            assert_eq!(other.parent, None, "{other:?}");
            assert_eq!(
                snap.cairn_component.as_ref().map(|c| c.name.as_str()),
                Some("faulty")
            );
        });
    }

    #[test]
    fn a_backup_whose_adapter_fails_writes_no_snapshot_and_leaves_no_lock() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("backup").await;
            let e = run(&store(&repo), options("error")).await.unwrap_err();
            assert!(matches!(e, Error::Adapter(_)), "{e}");
            assert!(e.to_string().contains("no snapshot was written"), "{e}");
            assert!(backend.names(FileType::Snapshot).is_empty());
            // The lock goes with the guard: the next locker finds none.
            let exclusive = repo.lock(true).await.unwrap();
            drop(exclusive);
        });
    }

    #[test]
    fn options_out_of_range_are_refused_before_the_repository_is_touched() {
        runtime().block_on(async {
            let (backend, repo) = memory_repo("backup").await;
            let saves = backend.saves();
            let mut o = options("none");
            o.compression = 23;
            let e = run(&store(&repo), o).await.unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{e}");
            let mut o = options("none");
            o.source = AdapterSource::parse("filesystem");
            assert!(matches!(
                run(&store(&repo), o).await,
                Err(Error::Invalid(_))
            ));
            assert_eq!(backend.saves(), saves, "nothing was written, no lock taken");
        });
    }

    #[test]
    fn a_backup_on_a_pair_first_copies_what_one_region_lacks() {
        let p = memory_pair(false);
        runtime().block_on(async {
            let store = pair_store(&p).await;
            // An earlier run left an index file in the primary only.
            let orphan = store.repo.key().encrypt(b"{\"packs\":[]}");
            let name = crate::repo::Id::hash(&orphan).to_hex();
            p.a.save(FileType::Index, &name, orphan.into())
                .await
                .unwrap();
            let report = run(&store, options("none")).await.unwrap();
            assert!(p.b.get(FileType::Index, &name).is_some(), "not copied");
            for region in [&p.a, &p.b] {
                assert_eq!(
                    region.names(FileType::Snapshot),
                    vec![report.snapshot_id.clone()]
                );
            }
            assert!(p.pair.lagging().is_empty());
        });
    }
}
