//! `cairn restore --job J --until …`: point-in-time recovery of a
//! PostgreSQL job (docs/design/pitr.md §8). [`plan`] chooses the
//! timeline and the base backup and checks the WAL chain from tags and
//! the archive's catalog, before anything is written; the caller then
//! extracts the base backup through the adapter, and [`recover`] writes
//! the recovery settings and, with `start`, runs the server as the data
//! directory's owner, serving its `restore_command` over a private socket
//! until it reaches the target.

use super::{Error, Result, Store, invalid};
use crate::pitr::basebackup::BaseBackup;
use crate::pitr::fetch::Catalog;
use crate::pitr::history;
use crate::pitr::plan::{self, Candidate, Plan, Target};
use crate::pitr::recover::{self, Action, Owner, shell_quote};
use crate::repo::Id;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A snapshot id that prints short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short(pub Id);

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.short())
    }
}

/// A plan that holds, with the catalog recovery will read.
pub struct Planned {
    /// The base backup, timeline and WAL chain.
    pub plan: Plan<Short>,
    /// The job's WAL archive.
    pub catalog: Arc<Catalog>,
    /// Where to stop.
    pub target: Target,
}

impl plan::Archived for Catalog {
    fn has_segment(&self, s: crate::pitr::lsn::Segment) -> bool {
        Catalog::has_segment(self, s)
    }
    fn has_partial(&self, s: crate::pitr::lsn::Segment) -> bool {
        Catalog::has_partial(self, s)
    }
    fn newest(&self, tli: u32) -> Option<crate::pitr::lsn::Segment> {
        Catalog::newest(self, tli)
    }
}

/// Plan the recovery of job `job` to `target`: on `timeline` (default:
/// the newest of the archive in the base backups' lineage), from base
/// backup `base` (an id or prefix; default: the newest that fits).
pub async fn plan(
    store: &Store,
    job: &str,
    target: Target,
    timeline: Option<u32>,
    base: Option<&str>,
) -> Result<Planned> {
    let snapshots = store.repo.snapshots().await?;
    // A stream's flush may have saved a window version (and the index
    // file it needs) since the index was read: read it again, after the
    // listing, so every listed window's blobs are found.
    store.repo.load_index().await?;
    let bases: Vec<(Id, chrono::DateTime<chrono::FixedOffset>, BaseBackup)> = snapshots
        .iter()
        .filter(|(_, s)| s.cairn_job.as_deref() == Some(job))
        .filter_map(|(id, s)| BaseBackup::from_tags(&s.tags).map(|b| (*id, s.time, b)))
        .collect();
    let chosen = match base {
        Some(spec) => {
            let (id, snap) = store.repo.find_snapshot_of(spec, Some(job)).await?;
            if snap.cairn_job.as_deref() != Some(job) || BaseBackup::from_tags(&snap.tags).is_none()
            {
                invalid!(
                    "snapshot {} is not a physical base backup of job {job} (its tags have no pg-basebackup)",
                    id.short()
                );
            }
            Some(id)
        }
        None => None,
    };
    // The cluster: the named base backup's, else the newest one's.
    let Some((_, _, reference)) = bases
        .iter()
        .filter(|(id, _, _)| chosen.is_none_or(|c| c == *id))
        .max_by_key(|(_, time, _)| *time)
        .cloned()
    else {
        invalid!(
            "job {job} has no physical base backup (`cairn backup --job {job}` with mode = \"physical\" takes one)"
        );
    };
    let size = reference.segment_size;
    let catalog = Catalog::load(store.repo.clone(), &snapshots, job, reference.system, size)
        .await
        .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?;
    let timelines = catalog.timelines();
    if timelines.is_empty() {
        invalid!(
            "job {job} has no archived WAL of cluster {} (does `cairn wal-stream --job {job}` run?)",
            reference.system
        );
    }
    let mut paths = BTreeMap::new();
    for t in &timelines {
        if let Some(text) = catalog
            .history_text(*t)
            .await
            .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?
        {
            let path = history::Path::parse(*t, &text)
                .map_err(|e| Error::Invalid(format!("job {job}'s WAL archive: {e}")))?;
            paths.insert(*t, path);
        }
    }
    let tli = match timeline {
        Some(t) if !timelines.contains(&t) => invalid!(
            "timeline {t}: job {job}'s archive has no WAL of it (it has timelines {timelines:?})"
        ),
        Some(t) => t,
        None => plan::default_timeline(&paths, reference.tli),
    };
    let path = paths
        .get(&tli)
        .cloned()
        .unwrap_or_else(|| history::Path::root(tli));
    let candidates: Vec<Candidate<Short>> = bases
        .iter()
        .filter(|(_, _, b)| b.system == reference.system)
        .map(|(id, _, b)| Candidate {
            id: Short(*id),
            base: b.clone(),
        })
        .collect();
    let plan = plan::plan(
        &candidates,
        &catalog,
        &path,
        size,
        &target,
        chosen.map(Short).as_ref(),
    )
    .map_err(|e| Error::Invalid(format!("job {job}: {e}")))?;
    Ok(Planned {
        plan,
        catalog: Arc::new(catalog),
        target,
    })
}

/// How to recover.
pub struct Recovery {
    /// The job.
    pub job: String,
    /// Start the server and serve its WAL until it reaches the target.
    pub start: bool,
    /// A TCP port on 127.0.0.1 for the started server.
    pub port: Option<u16>,
    /// Its configuration file.
    pub pg_conf: Option<PathBuf>,
    /// What it does at the target.
    pub action: Action,
    /// This program (restore_command runs it).
    pub exe: PathBuf,
    /// The config file (for the restore_command of a server started by hand).
    pub config: Option<PathBuf>,
    /// `pg_ctl`, granted by the job (with `start`).
    pub pg_ctl: Option<PathBuf>,
    /// `psql`, granted by the job: asks the server what it reached.
    pub psql: Option<PathBuf>,
}

/// What a point-in-time restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The target, as given.
    pub target: String,
    /// The base backup restored.
    pub base_snapshot: String,
    /// The timeline followed.
    pub timeline: u32,
    /// The first WAL segment recovery reads.
    pub wal_from: String,
    /// The last one the archive holds without a gap.
    pub wal_to: String,
    /// Whether that one is the partial of the segment being streamed.
    pub wal_to_partial: bool,
    /// Newer base backups not chosen, and why.
    pub passed_over: Vec<String>,
    /// The first segment the archive lacks after `wal_to` when it holds
    /// WAL beyond it: recovery cannot pass it.
    pub gap: Option<String>,
    /// The restored data directory.
    pub data_directory: String,
    /// The restore_command written.
    pub restore_command: String,
    /// Whether the server was started.
    pub started: bool,
    /// `paused`, `promoted`, `shut down`, or `not started`.
    pub state: String,
    /// The server log's "recovery stopping …" line.
    pub stopped: Option<String>,
    /// The commit time of the last transaction replayed (UTC).
    pub reached_commit_time: Option<String>,
    /// The last WAL position replayed.
    pub reached_lsn: Option<String>,
    /// The new timeline, when promoted.
    pub new_timeline: Option<u32>,
    /// WAL files served to the server.
    pub wal_files_served: u64,
    /// The directory of the server's socket.
    pub socket_dir: Option<String>,
    /// Its port.
    pub port: Option<u16>,
    /// Its log.
    pub log: Option<String>,
    /// Seconds from the start of recovery to the target.
    pub seconds: f64,
}

/// The granted program named `name` (by its name, or a path ending in it).
pub fn granted(grants: &crate::runtime::Grants, name: &str) -> Option<PathBuf> {
    grants.program(name).map(Path::to_path_buf).or_else(|| {
        grants
            .program_names()
            .iter()
            .find(|p| Path::new(p).file_name().is_some_and(|f| f == name))
            .and_then(|p| grants.program(p))
            .map(Path::to_path_buf)
    })
}

/// Write the recovery settings into restored data directory `data` and,
/// with `start`, recover.
pub async fn recover(planned: &Planned, data: &Path, r: &Recovery) -> Result<Report> {
    let p = &planned.plan;
    let size = planned.catalog.size();
    let owner = Owner::of(data).map_err(Error::Invalid)?;
    let exe = shell_quote(
        r.exe
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("{}: not a UTF-8 path", r.exe.display())))?,
    );
    let mut report = Report {
        target: planned.target.to_string(),
        base_snapshot: p.base.id.0.to_hex(),
        timeline: p.timeline,
        wal_from: p.first.name(size),
        wal_to: p.last.name(size),
        wal_to_partial: p.last_partial,
        passed_over: p
            .passed_over
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
        gap: p.gap.map(|g| g.name(size)),
        data_directory: data.display().to_string(),
        restore_command: String::new(),
        started: r.start,
        state: "not started".into(),
        stopped: None,
        reached_commit_time: None,
        reached_lsn: None,
        new_timeline: None,
        wal_files_served: 0,
        socket_dir: None,
        port: None,
        log: None,
        seconds: 0.0,
    };
    let log_nonce = format!("cairn-{}", hex::encode(rand::random::<[u8; 8]>()));
    let settings = |restore_command: String| recover::Settings {
        restore_command,
        target: &planned.target,
        timeline: p.timeline,
        action: r.action,
        log_nonce: log_nonce.clone(),
    };
    if !r.start {
        let config = r
            .config
            .as_ref()
            .and_then(|c| std::fs::canonicalize(c).ok())
            .and_then(|c| c.to_str().map(shell_quote));
        let command = match config {
            Some(c) => format!(
                "{exe} --config {c} wal-fetch --job {} %f %p",
                shell_quote(&r.job)
            ),
            None => format!("{exe} wal-fetch --job {} %f %p", shell_quote(&r.job)),
        };
        settings(command.clone())
            .write(data, &owner)
            .map_err(Error::Invalid)?;
        report.restore_command = command;
        return Ok(report);
    }
    let Some(pg_ctl) = &r.pg_ctl else {
        invalid!(
            "--start: job {} does not grant pg_ctl (grant its path, /usr/lib/postgresql/15/bin/pg_ctl on Debian)",
            r.job
        );
    };
    recover::owner_can_run(&owner, &r.exe).map_err(Error::Invalid)?;
    let dir = recover::private_dir(&owner).map_err(Error::Invalid)?;
    let socket = dir.join("wal-fetch.sock");
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| Error::Invalid(format!("listening on {}: {e}", socket.display())))?;
    std::os::unix::fs::chown(&socket, Some(owner.uid), Some(owner.gid))
        .map_err(|e| Error::Invalid(format!("{}: {e}", socket.display())))?;
    let command = format!(
        "{exe} wal-fetch --socket {} %f %p",
        shell_quote(socket.to_str().unwrap_or_default())
    );
    settings(command.clone())
        .write(data, &owner)
        .map_err(Error::Invalid)?;
    report.restore_command = command;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let me = rustix::process::getuid().as_raw();
    let serving = tokio::spawn(planned.catalog.clone().serve(
        listener,
        vec![owner.uid, me],
        stop_rx,
    ));
    let began = std::time::Instant::now();
    let started = recover::start(
        data,
        &owner,
        &recover::Start {
            pg_ctl,
            conf: r.pg_conf.as_deref(),
            port: r.port,
            socket_dir: &dir,
            log_nonce: &log_nonce,
        },
    );
    let gap_note = p.gap.map(|g| {
        format!(
            "; the archive lacks WAL segment {} (it holds WAL after it): recovery cannot pass it",
            g.name(size)
        )
    });
    let result = match started {
        Ok(server) => {
            report.socket_dir = Some(server.socket_dir.display().to_string());
            report.port = Some(server.port);
            report.log = Some(server.log.display().to_string());
            let watched = server
                .watch(
                    r.action,
                    planned.target == Target::Latest,
                    r.psql.as_deref(),
                )
                .await;
            // A failed recovery leaves no server running on the copy.
            watched.map_err(|e| {
                let stopped = server.stop_now();
                format!(
                    "{e}{}{}",
                    gap_note.clone().unwrap_or_default(),
                    if stopped {
                        "\nthe server was stopped (pg_ctl stop -m immediate)"
                    } else {
                        ""
                    }
                )
            })
        }
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(true);
    let _ = serving.await;
    let _ = std::fs::remove_file(&socket);
    report.wal_files_served = planned.catalog.served();
    report.seconds = began.elapsed().as_secs_f64();
    let reached = result.map_err(|e| Error::Local(anyhow::anyhow!("{e}")))?;
    report.state = reached.state;
    report.stopped = reached.stopped;
    report.reached_commit_time = reached.commit_time;
    report.reached_lsn = reached.lsn;
    report.new_timeline = reached.new_timeline;
    // `latest` must replay (nearly) all the archive holds: a recovery that
    // ended well before its last segments met a damaged one, and the
    // promoted copy lacks what follows. The last two segments are spared:
    // a partial may begin with a record it does not hold whole.
    if planned.target == Target::Latest
        && p.last.segno >= 1
        && let Some(reached) = report
            .reached_lsn
            .as_deref()
            .and_then(|l| l.parse::<crate::pitr::lsn::Lsn>().ok())
        && reached < size.start(p.last.segno - 1)
    {
        let stopped = recover::stop(pg_ctl, data, &owner, "immediate").is_ok();
        return Err(Error::Local(anyhow::anyhow!(
            "recovery ended at {reached}, in segment {}, before the end of the archived WAL ({}): a segment there is damaged (see the server's log, {}); the copy lacks what follows{}",
            crate::pitr::lsn::Segment {
                tli: p.timeline,
                segno: size.segno(reached)
            }
            .name(size),
            p.last.name(size),
            report.log.as_deref().unwrap_or_default(),
            if stopped { " and was stopped" } else { "" }
        )));
    }
    Ok(report)
}
