//! `cairn residency verify|report`: prove where tenants' data is.

use super::{Global, Outcome, out};
use crate::residency::report;
use anyhow::bail;

/// Residency subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check that every region's bucket is in the region it is declared in.
    Verify,
    /// List every region and show where each tenant's objects are; fails if
    /// any object sits outside its tenant's pair.
    Report,
}

/// Run a residency subcommand.
pub async fn run(g: &Global, c: Command) -> anyhow::Result<Outcome> {
    let config = g.config()?;
    match c {
        Command::Verify => {
            let checks = report::verify_regions(&config).await;
            let bad: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
            if g.json {
                out(serde_json::to_string(&checks)?);
            } else {
                for c in &checks {
                    out(format!(
                        "{:<16} bucket {:<24} reported {:<16} {}",
                        c.region,
                        c.bucket,
                        c.reported.as_deref().unwrap_or("-"),
                        if c.ok {
                            "ok".to_string()
                        } else {
                            format!("FAILED: {}", c.error.as_deref().unwrap_or(""))
                        }
                    ));
                }
            }
            if !bad.is_empty() {
                let names: Vec<_> = bad.iter().map(|c| c.region.as_str()).collect();
                bail!(
                    "residency verify: region(s) {} failed and are disabled",
                    names.join(", ")
                );
            }
            Ok(Outcome::Ok)
        }
        Command::Report => {
            if let Some(t) = &g.tenant
                && !config.tenants.contains_key(t)
            {
                bail!("tenant {t} is not in the config");
            }
            let r = report::report(&config, g.tenant.as_deref()).await;
            if g.json {
                out(serde_json::to_string(&r)?);
            } else {
                for t in &r.tenants {
                    out(format!(
                        "tenant {} (pair {}): {}",
                        t.tenant,
                        if t.pair.is_empty() {
                            "local".to_string()
                        } else {
                            t.pair.join(" + ")
                        },
                        if !t.violations.is_empty() {
                            format!("VIOLATION: objects in {}", t.violations.join(", "))
                        } else if !r.unreachable.is_empty() {
                            "UNPROVEN: some regions could not be listed".into()
                        } else if t.in_sync {
                            "ok, in sync".into()
                        } else {
                            "ok, regions differ (run cairn replicate)".into()
                        }
                    ));
                    for (region, h) in &t.regions {
                        out(format!(
                            "  {region:<16} {:>8} objects {:>14} bytes",
                            h.objects, h.bytes
                        ));
                    }
                }
                for (region, h) in &r.unowned {
                    out(format!(
                        "unowned objects in {region}: {} ({} bytes) under no configured tenant",
                        h.objects, h.bytes
                    ));
                }
                for (region, e) in &r.unreachable {
                    out(format!("region {region} could not be listed: {e}"));
                }
            }
            for t in &r.tenants {
                if !t.violations.is_empty() {
                    eprintln!(
                        "cairn: residency violation: tenant {} has objects in {} (pair {})",
                        t.tenant,
                        t.violations.join(", "),
                        t.pair.join(" + ")
                    );
                }
            }
            if !r.unreachable.is_empty() {
                let names: Vec<_> = r.unreachable.keys().cloned().collect();
                bail!(
                    "residency report is incomplete: could not list {}",
                    names.join(", ")
                );
            }
            if !r.ok() {
                bail!("residency report: some tenant data is outside its pair");
            }
            Ok(Outcome::Ok)
        }
    }
}
