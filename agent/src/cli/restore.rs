//! `cairn restore` and `cairn verify`: run an adapter over a snapshot.

use super::job::{AdapterFlags, LimitFlags};
use super::{Global, Outcome, out};
use crate::ops::{Store, restore};
use crate::runtime::{AdapterSource, Grants};
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
    store: Store,
    id: crate::repo::Id,
    snap: crate::repo::snapshot::Snapshot,
    source: AdapterSource,
    grants: Grants,
    config: Option<serde_json::Value>,
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
    let store = g.open().await?;
    let (id, snap) = store.repo.find_snapshot_of(spec, job).await?;
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
    let Plan {
        store,
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
    } = plan(
        g,
        &a.snapshot,
        a.job.as_deref(),
        a.adapter.as_deref(),
        a.adapter_flags,
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
