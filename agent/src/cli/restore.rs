//! `cairn restore` and `cairn verify`: run an adapter over a snapshot.

use super::job::{AdapterFlags, LimitFlags};
use super::{Global, Outcome, out};
use crate::runtime::{AdapterSource, Grants, RestoreRequest, Runtime};
use anyhow::{Context, bail};

/// Flags of `restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or unique prefix), or `latest` (with --job: the job's latest).
    snapshot: String,
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
    g: Global,
    repo: std::sync::Arc<crate::repo::Repository>,
    id: crate::repo::Id,
    snap: crate::repo::snapshot::Snapshot,
    source: AdapterSource,
    grants: Grants,
    config: Option<serde_json::Value>,
}

/// A job's adapter restoring another adapter's snapshot would misread it.
pub(super) fn same_adapter(
    id: &crate::repo::Id,
    snap: &crate::repo::snapshot::Snapshot,
    job: &str,
    source: &AdapterSource,
) -> anyhow::Result<()> {
    if source.name() != snap.adapter() {
        bail!(
            "snapshot {} was made by adapter {}, but job {job} uses {}",
            id.short(),
            snap.adapter(),
            source.name()
        );
    }
    Ok(())
}

/// The adapter a snapshot names, when neither `--adapter` nor a job says
/// which one to run: only a bundled adapter. Whoever can write snapshots
/// must not choose a program to run on this machine (a path to any
/// `.wasm` file), so a component file is run only when named by the
/// operator: `--adapter`, or a configured job.
pub(crate) fn snapshot_adapter(
    id: &crate::repo::Id,
    snap: &crate::repo::snapshot::Snapshot,
) -> anyhow::Result<AdapterSource> {
    let name = snap.adapter();
    match AdapterSource::parse(name) {
        AdapterSource::Bundled(n) if crate::runtime::bundled::get(&n).is_some() => {
            Ok(AdapterSource::Bundled(n))
        }
        _ => bail!(
            "snapshot {} was made by adapter {:?}, which is not a bundled adapter; name the component to restore it with: --adapter PATH (or --job)",
            id.short(),
            crate::util::escaped(name)
        ),
    }
}

async fn plan(
    g: &Global,
    spec: &str,
    job: Option<&str>,
    adapter: Option<&str>,
    mut flags: AdapterFlags,
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
    let repo = g.open().await?;
    let (id, snap) = repo.find_snapshot_of(spec, job).await?;
    let source = match adapter.map(str::to_string).or(job_adapter) {
        Some(name) => AdapterSource::parse(&name).pinned(pin.as_deref()),
        None => snapshot_adapter(&id, &snap)?,
    };
    if let Some(job) = job {
        same_adapter(&id, &snap, job, &source)?;
    }
    let grants = flags.grants(&env)?;
    let config = flags.config()?;
    Ok(Plan {
        g,
        repo,
        id,
        snap,
        source,
        grants,
        config,
    })
}

/// Run `restore`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let Plan {
        g,
        repo,
        id,
        snap,
        source,
        mut grants,
        config: adapter_config,
    } = plan(
        g,
        &a.snapshot,
        a.job.as_deref(),
        a.adapter.as_deref(),
        a.adapter_flags,
    )
    .await?;
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
    let lock = g.read_lock(&repo).await?;
    let req = RestoreRequest {
        repo: repo.clone(),
        tree: snap.tree,
        include,
        grants,
        config,
        inherit_stderr: false,
        overwrite: a.overwrite == "always",
    };
    let result = Runtime::new()?
        .restore(&source, req, &a.limits.limits(), false)
        .await;
    let result = super::release_read_lock(lock, result)
        .await
        .context("restore failed")?;
    let crate::runtime::RestoreOutcome::Restored(s) = result.outcome else {
        bail!("unexpected verify outcome");
    };
    for entry in &result.left_out {
        eprintln!("cairn: not restored: {}", crate::util::escaped(entry));
    }
    if g.json {
        out(serde_json::json!({
            "message_type": "summary", "snapshot_id": id.to_hex(), "target": target,
            "files": s.files, "directories": s.directories, "symlinks": s.symlinks, "bytes": s.bytes,
            "files_unchanged": result.unchanged, "not_restored": result.left_out,
        }));
    } else {
        out(format!(
            "restored snapshot {} to {target}: {} files ({} already there, kept), {} directories, {} symlinks, {}",
            id.short(),
            s.files,
            result.unchanged,
            s.directories,
            s.symlinks,
            indicatif::HumanBytes(s.bytes)
        ));
    }
    Ok(if result.left_out.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Incomplete
    })
}

/// Run `verify`.
pub async fn verify(g: &Global, a: VerifyArgs) -> anyhow::Result<Outcome> {
    let Plan {
        g,
        repo,
        id,
        snap,
        source,
        grants,
        config,
    } = plan(
        g,
        &a.snapshot,
        a.job.as_deref(),
        a.adapter.as_deref(),
        a.adapter_flags,
    )
    .await?;
    let lock = g.read_lock(&repo).await?;
    let req = RestoreRequest {
        repo: repo.clone(),
        tree: snap.tree,
        include: Vec::new(),
        grants,
        config: config.unwrap_or_else(|| serde_json::json!({})),
        inherit_stderr: false,
        overwrite: false,
    };
    let result = Runtime::new()?
        .restore(&source, req, &a.limits.limits(), true)
        .await;
    let result = super::release_read_lock(lock, result)
        .await
        .context("verify failed")?;
    let crate::runtime::RestoreOutcome::Verified(r) = result.outcome else {
        bail!("unexpected restore outcome");
    };
    if g.json {
        out(serde_json::json!({
            "message_type": "verify", "snapshot_id": id.to_hex(), "entries": r.entries,
            "bytes": r.bytes, "problems": r.problems,
        }));
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
