//! Bringing the regions of a tenant's pair level: `replicate` copies into
//! each region what it lacks from the other; `repair` rewrites one
//! region's missing or damaged objects from the other.

use super::{Error, Result};
use crate::repo::Repository;
use crate::residency::pair::{PairBackend, Role};
use crate::residency::sync::{SyncStats, sync};
use serde::Serialize;
use std::sync::Arc;

/// What one direction of a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    /// `from -> to`, by region.
    pub direction: String,
    /// What was copied, repaired and what failed.
    #[serde(flatten)]
    pub stats: SyncStats,
}

impl Direction {
    /// Whether anything could not be copied.
    pub fn failed(&self) -> bool {
        let s = &self.stats;
        !s.failed.is_empty() || !s.failed_writes.is_empty() || !s.failed_reads.is_empty()
    }
}

fn direction(pair: &PairBackend, from: Role, to: Role) -> String {
    format!(
        "{} -> {}",
        pair.store(from).region(),
        pair.store(to).region()
    )
}

/// Replicate one tenant both ways, under a shared lock (so a shred or a
/// prune, which lock exclusively, cannot run at the same time).
pub async fn replicate(pair: &Arc<PairBackend>, password: &str) -> Result<Vec<Direction>> {
    if let Some((region, why)) = pair.lagging().into_iter().next() {
        return Err(Error::Residency(format!(
            "region {region} is not usable ({why}); cannot replicate now"
        )));
    }
    // Open the repository first: the config is checked by its MAC.
    let repo = Arc::new(Repository::open(pair.clone(), password).await?);
    // Locks are not copied; a lock a lagging region kept because its
    // holder could not remove it there is cleared once its holder is gone,
    // so restic and Cairn can lock the region again.
    repo.remove_stale_locks().await?;
    let _lock = repo.lock(false).await?;
    let key = repo.key().clone();
    let config_ok = move |d: &[u8]| key.authentic(d);
    let mut done = Vec::new();
    for (from, to) in [
        (Role::Primary, Role::Secondary),
        (Role::Secondary, Role::Primary),
    ] {
        let stats = sync(pair, from, to, false, &config_ok)
            .await
            .map_err(|e| Error::Repo(e.error.into()))?;
        done.push(Direction {
            direction: direction(pair, from, to),
            stats,
        });
    }
    Ok(done)
}

/// Rewrite the missing or damaged objects of the region that is not
/// `from` with good copies from `from`, under a shared lock.
pub async fn repair(pair: &Arc<PairBackend>, password: &str, from: Role) -> Result<Direction> {
    let to = match from {
        Role::Primary => Role::Secondary,
        Role::Secondary => Role::Primary,
    };
    for role in [from, to] {
        if !pair.usable(role) {
            return Err(Error::Residency(format!(
                "tenant {}: region {} is not usable; cannot repair now",
                pair.tenant(),
                pair.store(role).region()
            )));
        }
    }
    let repo = Arc::new(Repository::open(pair.clone(), password).await?);
    let _lock = repo.lock(false).await?;
    let key = repo.key().clone();
    let config_ok = move |d: &[u8]| key.authentic(d);
    let stats = sync(pair, from, to, true, &config_ok)
        .await
        .map_err(|e| Error::Repo(e.error.into()))?;
    Ok(Direction {
        direction: direction(pair, from, to),
        stats,
    })
}
