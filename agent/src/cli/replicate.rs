//! `cairn replicate` and `cairn repair`: bring the regions of a tenant's
//! pair level with each other.

use super::{Global, Outcome, out};
use crate::config::{Config, Placement};
use crate::ops::replicate;
use crate::residency::pair::Role;
use anyhow::bail;

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

fn report(g: &Global, tenant: &str, d: &replicate::Direction) {
    let (direction, s) = (&d.direction, &d.stats);
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

/// Replicate one tenant both ways (see [`replicate::replicate`]).
async fn replicate_tenant(g: &Global, config: &Config, tenant: &str) -> anyhow::Result<()> {
    if !matches!(
        config.placement(tenant).map_err(anyhow::Error::msg)?,
        Placement::Pair { .. }
    ) {
        bail!("the tenant has a local repository; there is nothing to replicate");
    }
    let tg = g.for_tenant(tenant);
    let pair = tg.open_pair(config, tenant).await?;
    let password = tg.password(false)?;
    let done = replicate::replicate(&pair, &password).await?;
    let mut failed = false;
    for d in &done {
        report(g, tenant, d);
        failed |= d.failed();
    }
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
    let pair = g.open_pair(&config, tenant).await?;
    let d = replicate::repair(&pair, &g.password(false)?, from).await?;
    report(g, tenant, &d);
    if d.failed() {
        bail!("repair of tenant {tenant}: some objects could not be repaired (see above)");
    }
    Ok(Outcome::Ok)
}
