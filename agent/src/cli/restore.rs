//! `cairn restore` and `cairn verify`: run an adapter over a snapshot.

use super::{Global, Outcome, out};
use crate::runtime::{AdapterSource, Grants, Limits, RestoreRequest, Runtime};
use anyhow::{Context, bail};

/// Flags of `restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or unique prefix), or `latest`.
    snapshot: String,
    /// Directory to restore into (created if missing); the filesystem
    /// adapter needs it, database adapters restore into their server.
    #[arg(short, long)]
    target: Option<String>,
    /// Let the adapter connect to this TCP endpoint (repeatable).
    #[arg(long = "grant-connect")]
    grant_connect: Vec<String>,
    /// Adapter configuration as a JSON object (adapters other than filesystem).
    #[arg(long)]
    adapter_config: Option<String>,
    /// Restore only this path of the snapshot and what is below it (repeatable).
    #[arg(short, long)]
    include: Vec<String>,
    /// The adapter to restore with (default: the one that made the snapshot).
    #[arg(long)]
    adapter: Option<String>,
}

/// Flags of `verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot id (or unique prefix), or `latest`.
    snapshot: String,
    /// The adapter to verify with (default: the one that made the snapshot).
    #[arg(long)]
    adapter: Option<String>,
    /// Let the adapter connect to this TCP endpoint (repeatable).
    #[arg(long = "grant-connect")]
    grant_connect: Vec<String>,
    /// Adapter configuration as a JSON object (adapters other than filesystem).
    #[arg(long)]
    adapter_config: Option<String>,
}

/// Grants and adapter config for a restore or verify that talks to a server.
fn server_side(
    grant_connect: &[String],
    adapter_config: &Option<String>,
) -> anyhow::Result<(Grants, Option<serde_json::Value>)> {
    let mut grants = Grants::default();
    for endpoint in grant_connect {
        grants
            .add_connect(endpoint)
            .with_context(|| format!("--grant-connect {endpoint}"))?;
    }
    let config = adapter_config
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--adapter-config is not valid JSON")?;
    Ok((grants, config))
}

/// Run `restore`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let repo = g.open().await?;
    let (id, snap) = repo.find_snapshot(&a.snapshot).await?;
    let (mut grants, adapter_config) = server_side(&a.grant_connect, &a.adapter_config)?;
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
    let source = AdapterSource::parse(a.adapter.as_deref().unwrap_or(snap.adapter()));
    let config = match (adapter_config, &target) {
        (Some(c), _) => c,
        (None, Some(t)) => serde_json::json!({ "target": t }),
        (None, None) => bail!(
            "give --target (a directory to restore into), or --adapter-config for adapter {}",
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
    let lock = repo.lock(false).await?;
    let req = RestoreRequest {
        repo: repo.clone(),
        tree: snap.tree,
        include,
        grants,
        config,
        inherit_stderr: false,
    };
    let result = Runtime::new()?
        .restore(&source, req, &Limits::default(), false)
        .await;
    lock.release().await?;
    let result = result.context("restore failed")?;
    let crate::runtime::RestoreOutcome::Restored(s) = result.outcome else {
        bail!("unexpected verify outcome");
    };
    for entry in &result.left_out {
        eprintln!("cairn: not restored (no adapter restores this kind of entry): {entry}");
    }
    if g.json {
        out(serde_json::json!({
            "message_type": "summary", "snapshot_id": id.to_hex(), "target": target,
            "files": s.files, "directories": s.directories, "symlinks": s.symlinks, "bytes": s.bytes,
        }));
    } else {
        out(format!(
            "restored snapshot {} to {target}: {} files, {} directories, {} symlinks, {}",
            id.short(),
            s.files,
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
    let repo = g.open().await?;
    let (id, snap) = repo.find_snapshot(&a.snapshot).await?;
    let source = AdapterSource::parse(a.adapter.as_deref().unwrap_or(snap.adapter()));
    let (grants, config) = server_side(&a.grant_connect, &a.adapter_config)?;
    let lock = repo.lock(false).await?;
    let req = RestoreRequest {
        repo: repo.clone(),
        tree: snap.tree,
        include: Vec::new(),
        grants,
        config: config.unwrap_or_else(|| serde_json::json!({})),
        inherit_stderr: false,
    };
    let result = Runtime::new()?
        .restore(&source, req, &Limits::default(), true)
        .await;
    lock.release().await?;
    let result = result.context("verify failed")?;
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
