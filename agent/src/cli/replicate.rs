//! `cairn replicate` and `cairn repair`: bring the regions of a tenant's
//! pair level with each other.

use super::{Global, Outcome, out};
use crate::config::{Config, Placement};
use crate::repo::Repository;
use crate::residency::pair::Role;
use crate::residency::sync::{SyncStats, sync};
use anyhow::bail;
use std::sync::Arc;

/// Flags of `replicate`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Flags of `repair`.
#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// The region to copy good objects from: `primary`, `secondary`, or a
    /// region name of the tenant's pair.
    #[arg(long)]
    from: String,
}

fn report(g: &Global, tenant: &str, direction: &str, s: &SyncStats) {
    if g.json {
        out(serde_json::json!({
            "tenant": tenant, "direction": direction, "copied": s.copied,
            "repaired": s.repaired, "bytes": s.bytes, "failed": s.failed,
            "failed_writes": s.failed_writes, "failed_reads": s.failed_reads,
        }));
    } else {
        out(format!(
            "tenant {tenant} {direction}: copied {}, repaired {}, {} written, {} failed",
            s.copied,
            s.repaired,
            indicatif::HumanBytes(s.bytes),
            s.failed.len() + s.failed_writes.len() + s.failed_reads.len()
        ));
    }
    for f in s
        .failed
        .iter()
        .chain(&s.failed_writes)
        .chain(&s.failed_reads)
    {
        super::note(format!("tenant {tenant}: {f}"));
    }
}

fn region_of(pair: &crate::residency::pair::PairBackend, role: Role) -> String {
    pair.store(role).region().to_string()
}

/// Run `replicate`: for the tenant given (or every tenant with a pair),
/// copy into each region what it lacks from the other.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let config = g.config()?;
    let tenants: Vec<String> = match &g.tenant {
        Some(t) => vec![t.clone()],
        None => config
            .tenants
            .keys()
            .filter(|t| matches!(config.placement(t), Ok(Placement::Pair { .. })))
            .cloned()
            .collect(),
    };
    let mut failed = Vec::new();
    for tenant in tenants {
        if let Err(e) = replicate_tenant(g, &config, &tenant).await {
            super::note(format!("tenant {tenant}: {e:#}"));
            failed.push(tenant);
        }
    }
    if !failed.is_empty() {
        bail!(
            "replicate failed for tenant(s) {} (see above)",
            failed.join(", ")
        );
    }
    Ok(Outcome::Ok)
}

/// Replicate one tenant both ways, under a shared lock (so a shred or a
/// prune, which lock exclusively, cannot run at the same time).
async fn replicate_tenant(g: &Global, config: &Config, tenant: &str) -> anyhow::Result<()> {
    if !matches!(
        config.placement(tenant).map_err(anyhow::Error::msg)?,
        Placement::Pair { .. }
    ) {
        bail!("the tenant has a local repository; there is nothing to replicate");
    }
    let tg = g.for_tenant(tenant);
    let pair = tg.open_pair(config, tenant).await?;
    if let Some((region, why)) = pair.lagging().into_iter().next() {
        bail!("region {region} is not usable ({why}); cannot replicate now");
    }
    // Open the repository first: the config is checked by its MAC.
    let repo = Arc::new(Repository::open(pair.clone(), &tg.password(false)?).await?);
    // Locks are not copied; a lock a lagging region kept because its
    // holder could not remove it there is cleared once its holder is gone,
    // so restic and Cairn can lock the region again.
    repo.remove_stale_locks().await?;
    let lock = repo.lock(false).await?;
    let key = repo.key().clone();
    let config_ok = move |d: &[u8]| key.authentic(d);
    let mut failed = false;
    for (from, to) in [
        (Role::Primary, Role::Secondary),
        (Role::Secondary, Role::Primary),
    ] {
        let s = match sync(&pair, from, to, false, &config_ok).await {
            Ok(s) => s,
            Err(e) => return Err(e.into()),
        };
        let dir = format!("{} -> {}", region_of(&pair, from), region_of(&pair, to));
        report(g, tenant, &dir, &s);
        failed |= !s.failed.is_empty() || !s.failed_writes.is_empty() || !s.failed_reads.is_empty();
    }
    drop(lock);
    if failed {
        bail!("some files could not be copied (see above)");
    }
    Ok(())
}

/// Run `repair --from`: rewrite the other region's missing or damaged
/// objects from the given one.
pub async fn repair(g: &Global, a: RepairArgs) -> anyhow::Result<Outcome> {
    let config = g.config()?;
    let Some(tenant) = &g.tenant else {
        bail!("repair needs --tenant");
    };
    let Placement::Pair {
        primary, secondary, ..
    } = config.placement(tenant).map_err(anyhow::Error::msg)?
    else {
        bail!("tenant {tenant} has a local repository; repair works on a region pair");
    };
    let from = match a.from.as_str() {
        "primary" => Role::Primary,
        "secondary" => Role::Secondary,
        r if r == primary => Role::Primary,
        r if r == secondary => Role::Secondary,
        r => bail!(
            "residency: refused to repair tenant {tenant} from region {r}: the tenant's pair is {primary} + {secondary}; nothing was read or written"
        ),
    };
    let to = if from == Role::Primary {
        Role::Secondary
    } else {
        Role::Primary
    };
    let pair = g.open_pair(&config, tenant).await?;
    for role in [from, to] {
        if !pair.usable(role) {
            bail!(
                "tenant {tenant}: region {} is not usable; cannot repair now",
                region_of(&pair, role)
            );
        }
    }
    let repo = Arc::new(Repository::open(pair.clone(), &g.password(false)?).await?);
    let lock = repo.lock(false).await?;
    let key = repo.key().clone();
    let config_ok = move |d: &[u8]| key.authentic(d);
    let s = sync(&pair, from, to, true, &config_ok).await;
    drop(lock);
    let s = s?;
    let dir = format!("{} -> {}", region_of(&pair, from), region_of(&pair, to));
    report(g, tenant, &dir, &s);
    if !s.failed.is_empty() || !s.failed_writes.is_empty() || !s.failed_reads.is_empty() {
        bail!("repair of tenant {tenant}: some objects could not be repaired (see above)");
    }
    Ok(Outcome::Ok)
}
