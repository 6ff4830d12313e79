//! `cairn tenant shred`: crypto-shred a tenant (docs/residency.md says
//! exactly what it does and does not guarantee).

use super::{Global, Outcome, out};
use crate::config::Placement;
use crate::repo::Repository;
use crate::residency::pair::{Role, SHREDDED};
use crate::storage::{Backend, FileType};
use anyhow::{Context, bail};
use std::sync::Arc;

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
    let mut destroyed = Vec::new();
    let mut problems = Vec::new();
    match placement {
        Placement::Local(dir) => {
            let store = crate::storage::local::LocalBackend::new(dir);
            shred_store(&store, &mut destroyed, &mut problems).await;
        }
        Placement::Pair { .. } => {
            let tg = g.for_tenant(&tenant);
            let pair = tg.open_pair_with(&config, &tenant, true).await?;
            // An exclusive lock: no backup, replicate or repair of the tenant
            // runs meanwhile (one could copy keys back). Only when no key is
            // left anywhere (an earlier shred got that far) is there nothing
            // to lock, and nothing to open the repository with.
            let lock = if pair.list(FileType::Key).await?.is_empty() {
                None
            } else {
                let repo = Repository::open(pair.clone(), &tg.password(false)?)
                    .await
                    .with_context(|| {
                        format!("opening tenant {tenant} to lock it; nothing was shredded")
                    })?;
                Some(Arc::new(repo).lock(true).await.with_context(|| {
                    format!(
                        "tenant {tenant} is in use; nothing was shredded, try again when it is not"
                    )
                })?)
            };
            for role in [Role::Primary, Role::Secondary] {
                let store = pair.store(role);
                if !pair.usable(role) {
                    problems.push(format!(
                        "region {} is not usable; its keys remain there",
                        store.region()
                    ));
                    continue;
                }
                // The marker first: from now on no command but shred opens
                // the tenant, so nothing copies keys back into this region.
                let marker = serde_json::json!({
                    "tenant": tenant,
                    "shredded": crate::residency::audit::now(),
                });
                if let Err(e) = store
                    .put_marker(SHREDDED, marker.to_string().into_bytes())
                    .await
                {
                    problems.push(format!(
                        "region {}: writing the shred marker failed: {e}",
                        store.region()
                    ));
                    continue;
                }
                shred_store(store, &mut destroyed, &mut problems).await;
            }
            drop(lock);
        }
    }
    if g.json {
        out(serde_json::json!({"tenant": tenant, "destroyed": destroyed, "problems": problems}));
    } else {
        for d in &destroyed {
            out(format!("destroyed key {d}"));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            super::note(format!("tenant {tenant}: {p}"));
        }
        bail!("shred of tenant {tenant} is INCOMPLETE: run it again when every region answers");
    }
    out(format!(
        "tenant {tenant} shredded: {} key file(s) destroyed; its backups can no longer be decrypted",
        destroyed.len()
    ));
    Ok(Outcome::Ok)
}

/// Delete every key file of one store, then list again to prove none is left.
async fn shred_store(store: &dyn Backend, destroyed: &mut Vec<String>, problems: &mut Vec<String>) {
    let keys = match store.list(FileType::Key).await {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("listing keys failed: {e}"));
            return;
        }
    };
    for (name, _) in keys {
        match store.remove(FileType::Key, &name).await {
            Ok(()) => destroyed.push(format!("{} in {}", name, store.location())),
            Err(e) => problems.push(format!("deleting key {name} failed: {e}")),
        }
    }
    match store.list(FileType::Key).await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => problems.push(format!(
            "{} key file(s) still listed in {}",
            left.len(),
            store.location()
        )),
        Err(e) => problems.push(format!("could not confirm the keys are gone: {e}")),
    }
}
