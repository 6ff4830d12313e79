//! `cairn drill <job>`: prove a job's latest snapshot restores. The
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

use super::job::AdapterFlags;
use super::{Global, Outcome, out};
use crate::daemon::drills::{self, DrillRecord};
use crate::repo::pack::BlobType;
use crate::repo::{Id, Repository};
use crate::runtime::{AdapterSource, Limits, RestoreOutcome, RestoreRequest, Runtime};
use anyhow::{Context, bail};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Flags of `drill`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job of the config file whose snapshot to drill.
    job: String,
    /// The snapshot to drill (default: the job's latest).
    #[arg(long, default_value = "latest")]
    snapshot: String,
}

/// What a drill found.
#[derive(Default)]
struct Found {
    snapshot: Option<(Id, crate::repo::snapshot::Snapshot)>,
    /// When the snapshot was chosen: its age then is the recovery point
    /// (a backup may finish after the drill started, and be chosen).
    chosen: Option<chrono::DateTime<chrono::Utc>>,
    entries: u64,
    problems: Vec<String>,
}

/// Run `drill`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let config = g.config()?;
    let (job, jg) = super::job::load(g, &a.job)?;
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut found = Found::default();
    let result = drill(&jg, &config, &a.job, &job, &a.snapshot, &mut found).await;
    let rto = clock.elapsed().as_secs_f64();
    let passed = result.is_ok() && found.problems.is_empty();
    let record = DrillRecord {
        job: a.job.clone(),
        tenant: job.tenant.clone(),
        adapter: AdapterSource::parse(&job.adapter).name(),
        snapshot_id: found.snapshot.as_ref().map(|(id, _)| id.to_hex()),
        snapshot_time: found.snapshot.as_ref().map(|(_, s)| s.time),
        started,
        finished: chrono::Utc::now(),
        passed,
        rpo_seconds: found
            .snapshot
            .as_ref()
            .zip(found.chosen)
            .map(|((_, s), chosen)| {
                (chosen - s.time.with_timezone(&chrono::Utc))
                    .as_seconds_f64()
                    .max(0.0)
            }),
        rto_seconds: rto,
        entries: found.entries,
        problems: found.problems.clone(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
    };
    let recorded = drills::append(&config.agent.state_dir, &record);
    if g.json {
        out(serde_json::to_value(&record)?);
    } else {
        for p in &record.problems {
            out(format!("problem: {p}"));
        }
        let snapshot = match (&found.snapshot, record.rpo_seconds) {
            (Some((id, _)), Some(rpo)) => format!("snapshot {} ({rpo:.0}s old)", id.short()),
            _ => "no snapshot".into(),
        };
        out(format!(
            "drill of job {}: {} — {snapshot}, {} entries restored and checked in {rto:.1}s",
            a.job,
            if passed { "passed" } else { "FAILED" },
            record.entries
        ));
    }
    recorded.with_context(|| {
        format!(
            "recording the drill in {}",
            drills::path(&config.agent.state_dir).display()
        )
    })?;
    result.with_context(|| format!("drill of job {}", a.job))?;
    if !passed {
        bail!(
            "drill of job {} failed: {} problems",
            a.job,
            record.problems.len()
        );
    }
    Ok(Outcome::Ok)
}

async fn drill(
    g: &Global,
    config: &crate::config::Config,
    name: &str,
    job: &crate::config::JobConfig,
    spec: &str,
    found: &mut Found,
) -> anyhow::Result<()> {
    let repo = g.open().await?;
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
    let mut flags = AdapterFlags::default();
    flags.add_job(name, job)?;
    let drill_set = job.drill.as_ref().and_then(|d| d.set.clone());
    if let Some(set) = &drill_set {
        for (k, v) in set {
            flags.set.push(format!("{k}={}", serde_json::to_string(v)?));
        }
    }
    let lock = g.read_lock(&repo).await?;
    let work = async {
        let runtime = Runtime::new()?;
        let request = |grants, config| RestoreRequest {
            repo: repo.clone(),
            tree: snap.tree,
            include: Vec::new(),
            grants,
            config,
            inherit_stderr: false,
            // A fresh scratch target: everything is written.
            overwrite: true,
        };
        if matches!(&source, AdapterSource::Bundled(n) if n == "filesystem") {
            let drills = config.agent.state_dir.join("drills");
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
                let mut grants = flags.grants(&job.grants.env)?;
                grants.add(abs, true)?;
                let req = request(grants, serde_json::json!({ "target": abs }));
                let restored = runtime
                    .restore(&source, req, &Limits::default(), false)
                    .await
                    .context("restore into the scratch directory failed")?;
                for e in &restored.left_out {
                    found.problems.push(format!("not restored: {e}"));
                }
                compare_tree(&repo, snap.tree, &scratch, found).await
            }
            .await;
            let removed = remove_scratch(&scratch);
            checked?;
            removed
                .with_context(|| format!("removing the scratch directory {}", scratch.display()))?;
            return Ok(());
        }
        let adapter_config = flags.config()?.unwrap_or_else(|| serde_json::json!({}));
        if drill_set.is_some() {
            let req = request(flags.grants(&job.grants.env)?, adapter_config.clone());
            let restored = runtime
                .restore(&source, req, &Limits::default(), false)
                .await
                .context("restore into the drill's scratch target failed")?;
            for e in &restored.left_out {
                found.problems.push(format!("not restored: {e}"));
            }
        }
        let req = request(flags.grants(&job.grants.env)?, adapter_config);
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
    .await;
    super::release_read_lock(lock, work).await
}

/// Check the restored copy under `root` against the snapshot's tree.
async fn compare_tree(
    repo: &Arc<Repository>,
    tree: Id,
    root: &Path,
    found: &mut Found,
) -> anyhow::Result<()> {
    let mut walker = crate::restore::Walker::new(repo.clone(), tree, Vec::new()).await?;
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
