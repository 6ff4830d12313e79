//! Crypto-shredding a tenant: its key files are destroyed in every region
//! of its pair (or its local repository), so none of its data can be
//! decrypted again. docs/residency.md says exactly what it does and does
//! not guarantee.

use super::Result;
use crate::repo::Repository;
use crate::residency::pair::{PairBackend, Role, SHREDDED};
use crate::storage::{Backend, FileType};
use serde::Serialize;
use std::sync::Arc;

/// What a shred destroyed, and what stopped it being whole.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The tenant.
    pub tenant: String,
    /// Each key file destroyed, with where it was.
    pub destroyed: Vec<String>,
    /// What could not be done (a region that did not answer, a key that
    /// could not be deleted): the shred is incomplete until they are none.
    pub problems: Vec<String>,
}

/// Shred a tenant whose repository is one local store.
pub async fn local(tenant: &str, store: &dyn Backend) -> Report {
    let mut report = Report {
        tenant: tenant.to_string(),
        ..Default::default()
    };
    shred_store(store, &mut report).await;
    report
}

/// Shred a tenant's region pair: the shred marker first in each region
/// (from then on no command but shred opens the tenant, so nothing copies
/// keys back), then its keys, under the exclusive lock. `password` is asked
/// for only when keys are left to open the repository with.
pub async fn pair(
    pair: &Arc<PairBackend>,
    password: impl FnOnce() -> anyhow::Result<String>,
) -> Result<Report> {
    let tenant = pair.tenant().to_string();
    let mut report = Report {
        tenant: tenant.clone(),
        ..Default::default()
    };
    // An exclusive lock: no backup, replicate or repair of the tenant runs
    // meanwhile (one could copy keys back). Only when no key is left
    // anywhere (an earlier shred got that far) is there nothing to lock,
    // and nothing to open the repository with.
    let keys = pair
        .list(FileType::Key)
        .await
        .map_err(crate::repo::RepoError::from)?;
    let _lock = if keys.is_empty() {
        None
    } else {
        let password = password().map_err(super::Error::Local)?;
        let repo = Repository::open(pair.clone(), &password)
            .await
            .map_err(|e| {
                super::Error::from(e).context(format!(
                    "opening tenant {tenant} to lock it; nothing was shredded"
                ))
            })?;
        Some(Arc::new(repo).lock(true).await.map_err(|e| {
            super::Error::from(e).context(format!(
                "tenant {tenant} is in use; nothing was shredded, try again when it is not"
            ))
        })?)
    };
    for role in [Role::Primary, Role::Secondary] {
        let store = pair.store(role);
        if !pair.usable(role) {
            report.problems.push(format!(
                "region {} is not usable; its keys remain there",
                store.region()
            ));
            continue;
        }
        let marker = serde_json::json!({
            "tenant": tenant,
            "shredded": crate::residency::audit::now(),
        });
        if let Err(e) = store
            .put_marker(SHREDDED, marker.to_string().into_bytes())
            .await
        {
            report.problems.push(format!(
                "region {}: writing the shred marker failed: {e}",
                store.region()
            ));
            continue;
        }
        shred_store(store, &mut report).await;
    }
    Ok(report)
}

/// Delete every key file of one store, then list again to prove none is left.
async fn shred_store(store: &dyn Backend, report: &mut Report) {
    let keys = match store.list(FileType::Key).await {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(format!("listing keys failed: {e}"));
            return;
        }
    };
    for (name, _) in keys {
        match store.remove(FileType::Key, &name).await {
            Ok(()) => report
                .destroyed
                .push(format!("{} in {}", name, store.location())),
            Err(e) => report
                .problems
                .push(format!("deleting key {name} failed: {e}")),
        }
    }
    match store.list(FileType::Key).await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => report.problems.push(format!(
            "{} key file(s) still listed in {}",
            left.len(),
            store.location()
        )),
        Err(e) => report
            .problems
            .push(format!("could not confirm the keys are gone: {e}")),
    }
}
