//! `cairn tenant shred`: crypto-shred a tenant (docs/residency.md says
//! exactly what it does and does not guarantee).

use super::{Global, Outcome, out};
use crate::config::Placement;
use crate::ops::shred;
use anyhow::{Context, bail};

/// Tenant subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Destroy the tenant's key files in every region of its pair, so none
    /// of its data can be decrypted again.
    Shred {
        /// The tenant.
        tenant: String,
        /// Confirm without a prompt by giving the tenant's name again.
        #[arg(long)]
        confirm: Option<String>,
    },
}

/// Run a tenant subcommand.
pub async fn run(g: &Global, c: Command) -> anyhow::Result<Outcome> {
    let Command::Shred { tenant, confirm } = c;
    let config = g.config()?;
    let placement = config.placement(&tenant).map_err(anyhow::Error::msg)?;
    let typed = match confirm {
        Some(c) => c,
        None => {
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!(
                    "shredding tenant {tenant} needs confirmation: type the name at the prompt or pass --confirm {tenant}"
                );
            }
            eprint!(
                "This destroys every key of tenant {tenant}; its backups can never be read again.\nType the tenant's name to confirm: "
            );
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the confirmation")?;
            line.trim().to_string()
        }
    };
    if typed != tenant {
        bail!("confirmation {typed:?} does not match tenant {tenant}; nothing was shredded");
    }
    let report = match placement {
        Placement::Local(dir) => {
            let store = crate::storage::local::LocalBackend::new(dir);
            shred::local(&tenant, &store).await
        }
        Placement::Pair { .. } => {
            let tg = g.for_tenant(&tenant);
            let pair = tg.open_pair_with(&config, &tenant, true).await?;
            shred::pair(&pair, || tg.password(false)).await?
        }
    };
    if g.json {
        out(serde_json::to_value(&report)?);
    } else {
        for d in &report.destroyed {
            out(format!("destroyed key {d}"));
        }
    }
    if !report.problems.is_empty() {
        for p in &report.problems {
            super::note(format!("tenant {tenant}: {p}"));
        }
        bail!("shred of tenant {tenant} is INCOMPLETE: run it again when every region answers");
    }
    out(format!(
        "tenant {tenant} shredded: {} key file(s) destroyed; its backups can no longer be decrypted",
        report.destroyed.len()
    ));
    Ok(Outcome::Ok)
}
