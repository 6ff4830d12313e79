//! A restore drill: prove a job's latest snapshot restores. The
//! snapshot is restored into a scratch target, checked, and the scratch
//! target removed; the result (pass or fail, the snapshot's age as the
//! achieved RPO, the time taken as the RTO) is printed and appended to the
//! agent's drill record, which retention reads.
//!
//! The scratch target depends on the adapter:
//! - `filesystem`: a fresh directory under `<state-dir>/drills/`. After the
//!   restore, every restored file is read back and each stretch of it
//!   hashed against the snapshot's blob ids (SHA-256 of the plain bytes),
//!   so the check is independent of the restore code; directories and
//!   symlink targets are compared too.
//! - a job with `drill.set`: the adapter restores with the job's
//!   configuration plus those keys (a spare Redis database, say), then its
//!   verify compares against that target and clears it.
//! - otherwise the adapter's verify alone, which for PostgreSQL and MariaDB
//!   restores into a scratch database, compares, and drops it.

use super::drills::{self, DrillRecord};
use super::{Error, Result, Store};
use crate::config::JobConfig;
use crate::repo::pack::BlobType;
use crate::repo::{Id, Repository};
use crate::runtime::{AdapterSource, Grants, Limits, RestoreOutcome, RestoreRequest, Runtime};
use anyhow::{Context, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to drill.
pub struct Options {
    /// The config file's job.
    pub job_name: String,
    /// Its configuration.
    pub job: JobConfig,
    /// The snapshot: `latest` (this host's newest of the job) or an id.
    pub snapshot: String,
    /// The agent's state directory: the drill record and scratch
    /// directories live there.
    pub state_dir: PathBuf,
    /// The job's grants, made anew for each adapter run.
    pub grants: Box<dyn Fn() -> anyhow::Result<Grants> + Send + Sync>,
    /// The job's adapter configuration with the drill's `set` applied,
    /// or why it could not be made (a failed drill, recorded).
    pub config: Result<Option<serde_json::Value>, String>,
}

/// What a drill found.
#[derive(Default)]
pub(super) struct Found {
    pub(super) snapshot: Option<(Id, crate::repo::snapshot::Snapshot)>,
    /// When the snapshot was chosen: its age then is the recovery point
    /// (a backup may finish after the drill started, and be chosen).
    pub(super) chosen: Option<chrono::DateTime<chrono::Utc>>,
    /// The recovery point measured otherwise (a PITR drill: the stream's
    /// lag when the drill wrote its marker).
    pub(super) rpo: Option<f64>,
    pub(super) entries: u64,
    pub(super) problems: Vec<String>,
}

/// Drill a job and append the result to the drill record. The record is
/// the report, pass or fail (a repository that cannot be opened is a
/// failed drill, recorded); the second part says whether it could be
/// appended to the record file.
pub async fn run(
    open: impl std::future::Future<Output = anyhow::Result<Store>>,
    o: Options,
) -> (DrillRecord, Result<()>) {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut found = Found::default();
    let result = async {
        let store = open.await?;
        drill(&store, &o, &mut found).await
    }
    .await;
    let rto = clock.elapsed().as_secs_f64();
    let record = DrillRecord {
        job: o.job_name.clone(),
        tenant: o.job.tenant.clone(),
        adapter: AdapterSource::parse(&o.job.adapter).name(),
        snapshot_id: found.snapshot.as_ref().map(|(id, _)| id.to_hex()),
        snapshot_time: found.snapshot.as_ref().map(|(_, s)| s.time),
        started,
        finished: chrono::Utc::now(),
        passed: result.is_ok() && found.problems.is_empty(),
        rpo_seconds: found.rpo.or_else(|| {
            found
                .snapshot
                .as_ref()
                .zip(found.chosen)
                .map(|((_, s), chosen)| {
                    (chosen - s.time.with_timezone(&chrono::Utc))
                        .as_seconds_f64()
                        .max(0.0)
                })
        }),
        rto_seconds: rto,
        entries: found.entries,
        problems: found.problems,
        error: result.err().map(|e| format!("{e:#}")),
    };
    let recorded = drills::append(&o.state_dir, &record).map_err(|e| {
        Error::Local(anyhow::Error::new(e).context(format!(
            "recording the drill in {}",
            drills::path(&o.state_dir).display()
        )))
    });
    (record, recorded)
}

async fn drill(store: &Store, o: &Options, found: &mut Found) -> anyhow::Result<()> {
    // A job that streams its WAL is drilled to a point in time.
    if o.job.wal.is_some() && o.snapshot == "latest" {
        return super::pitr_drill::drill(store, o, found).await;
    }
    let (name, job, spec, repo) = (&o.job_name, &o.job, &o.snapshot, &store.repo);
    // `latest` is this host's: a node drills what it backed up itself.
    let host = crate::util::hostname();
    let (id, snap) = if spec == "latest" {
        repo.snapshots()
            .await?
            .into_iter()
            .rfind(|(_, s)| s.cairn_job.as_deref() == Some(name) && s.hostname == host)
            .with_context(|| format!("no snapshot of job {name} from host {host}"))?
    } else {
        repo.find_snapshot_of(spec, Some(name)).await?
    };
    found.snapshot = Some((id, snap.clone()));
    found.chosen = Some(chrono::Utc::now());
    let source = AdapterSource::parse(&job.adapter).pinned(job.adapter_sha256.as_deref());
    super::restore::same_adapter(&id, &snap, name, &source)?;
    let adapter_config = o.config.clone().map_err(anyhow::Error::msg)?;
    let drill_set = job.drill.as_ref().and_then(|d| d.set.as_ref());
    let _lock = store.read_lock().await?;
    {
        let runtime = Runtime::new()?;
        let request = |grants, config| RestoreRequest {
            repo: repo.clone(),
            tree: snap.tree,
            include: Vec::new(),
            grants,
            config,
            // A fresh scratch target: everything is written.
            overwrite: true,
        };
        if matches!(&source, AdapterSource::Bundled(n) if n == "filesystem") {
            let drills = o.state_dir.join("drills");
            // A drill that was killed left its scratch copy: remove it now.
            if let Ok(entries) = std::fs::read_dir(&drills) {
                for e in entries.flatten() {
                    let stale = e
                        .file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix(name))
                        .is_some_and(|rest| rest.starts_with('-') && rest.len() == 13);
                    // A drill still running holds a lock on its directory.
                    if stale && !in_use(&e.path()) {
                        tracing::info!(dir = %e.path().display(), "Removing a scratch directory an earlier drill left.");
                        let _ = remove_scratch(&e.path());
                    }
                }
            }
            let scratch = drills.join(format!("{name}-{}", hex::encode(rand::random::<[u8; 6]>())));
            std::fs::create_dir_all(&scratch)
                .with_context(|| format!("creating the scratch directory {}", scratch.display()))?;
            // Held until this drill ends: another drill's sweep leaves it.
            let _held = hold(&scratch)
                .with_context(|| format!("locking the scratch directory {}", scratch.display()))?;
            let checked = async {
                let abs = scratch
                    .to_str()
                    .context("the state directory is not UTF-8")?;
                let mut grants = (o.grants)()?;
                grants.add(abs, true)?;
                let req = request(grants, serde_json::json!({ "target": abs }));
                let restored = runtime
                    .restore(&source, req, &Limits::default(), false)
                    .await
                    .context("restore into the scratch directory failed")?;
                for e in &restored.left_out {
                    found.problems.push(format!("not restored: {e}"));
                }
                compare_tree(repo, snap.tree, &scratch, found).await
            }
            .await;
            let removed = remove_scratch(&scratch);
            checked?;
            removed
                .with_context(|| format!("removing the scratch directory {}", scratch.display()))?;
            return Ok(());
        }
        let adapter_config = adapter_config.unwrap_or_else(|| serde_json::json!({}));
        if drill_set.is_some() {
            let mut grants = (o.grants)()?;
            // A scratch directory the drill's set names (`target`) is
            // granted for writing, as `cairn restore --target` grants one.
            if let Some(t) = adapter_config.get("target").and_then(|t| t.as_str()) {
                std::fs::create_dir_all(t)
                    .with_context(|| format!("creating the drill's target {t}"))?;
                grants
                    .add(t, true)
                    .with_context(|| format!("the drill's target {t}"))?;
            }
            let req = request(grants, adapter_config.clone());
            let restored = runtime
                .restore(&source, req, &Limits::default(), false)
                .await
                .context("restore into the drill's scratch target failed")?;
            for e in &restored.left_out {
                found.problems.push(format!("not restored: {e}"));
            }
        }
        let req = request((o.grants)()?, adapter_config);
        let verified = runtime
            .restore(&source, req, &Limits::default(), true)
            .await
            .context("verify failed")?;
        let RestoreOutcome::Verified(report) = verified.outcome else {
            bail!("unexpected restore outcome");
        };
        found.entries = report.entries;
        found.problems.extend(report.problems);
        Ok(())
    }
}

/// Check the restored copy under `root` against the snapshot's tree.
async fn compare_tree(
    repo: &Arc<Repository>,
    tree: Id,
    root: &Path,
    found: &mut Found,
) -> anyhow::Result<()> {
    let mut walker = crate::read::Walker::new(repo.clone(), tree, Vec::new()).await?;
    while let Some(entry) = walker.next().await? {
        found.entries += 1;
        let local = root.join(entry.path.trim_start_matches('/'));
        let node = entry.node;
        // Nothing is followed: a restored symlink where the snapshot has a
        // file or directory is a problem, not a way to the real thing.
        let kind = std::fs::symlink_metadata(&local).map(|m| m.file_type());
        let problem = match node.kind.as_str() {
            "dir" => (!kind.as_ref().is_ok_and(|k| k.is_dir()))
                .then(|| "is not a restored directory".to_string()),
            "file" if !kind.as_ref().is_ok_and(|k| k.is_file()) => {
                Some("is not a restored regular file".to_string())
            }
            "symlink" => match std::fs::read_link(&local) {
                Ok(t) if t.as_os_str() == node.linktarget.as_str() => None,
                Ok(t) => Some(format!(
                    "links to {}, the snapshot says {}",
                    t.display(),
                    node.linktarget
                )),
                Err(e) => Some(format!("cannot read the restored link: {e}")),
            },
            "file" => {
                let blobs: Vec<(Id, Option<u32>)> = node
                    .content
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|id| {
                        let len = repo
                            .with_index(|i| i.get(&id, BlobType::Data).map(|l| l.plain_length()));
                        (id, len)
                    })
                    .collect();
                let path = local.clone();
                let size = node.size;
                tokio::task::spawn_blocking(move || check_file(&path, &blobs, size)).await?
            }
            _ => None,
        };
        if let Some(p) = problem {
            found.problems.push(format!("{}: {p}", entry.path));
        }
    }
    Ok(())
}

/// Read `path` back, hashing each stretch against the snapshot's blob
/// ids; a problem, or `None` when the file is exactly the snapshot's.
fn check_file(path: &Path, blobs: &[(Id, Option<u32>)], size: u64) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot open the restored file: {e}")),
    };
    let mut buf = Vec::new();
    let mut total = 0u64;
    for (i, (id, len)) in blobs.iter().enumerate() {
        let Some(len) = len else {
            return Some(format!("blob {} is not in the index", id.short()));
        };
        buf.resize(*len as usize, 0);
        if let Err(e) = f.read_exact(&mut buf) {
            return Some(format!("ends early, in blob {i} ({e})"));
        }
        if Id::hash(&buf) != *id {
            return Some(format!(
                "bytes {total}..{} differ from the snapshot",
                total + *len as u64
            ));
        }
        total += *len as u64;
    }
    match f.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Ok(_) => return Some(format!("is longer than the snapshot's {total} bytes")),
        Err(e) => return Some(format!("cannot read the restored file: {e}")),
    }
    (total != size).then(|| format!("holds {total} bytes, the snapshot records {size}"))
}

/// Remove a scratch directory, first making every directory in it
/// writable (a restored read-only directory would keep its entries).
fn remove_scratch(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(dir: &Path) -> std::io::Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                open_up(&e.path())?;
            }
        }
        Ok(())
    }
    let _ = open_up(dir);
    std::fs::remove_dir_all(dir)
}

/// An exclusive lock on a scratch directory, held while its drill runs.
fn hold(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    Ok(f)
}

/// Whether a running drill holds `dir`.
fn in_use(dir: &Path) -> bool {
    match std::fs::File::open(dir) {
        Ok(f) => {
            rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
        }
        Err(_) => false,
    }
}
