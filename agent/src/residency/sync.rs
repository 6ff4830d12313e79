//! Bringing one region of a tenant's pair level with the other: `replicate`
//! copies the files a region lacks; `repair` also reads every file the
//! target holds and rewrites the ones whose bytes no longer hash to their
//! name. Every copied file is checked against its SHA-256 name before it is
//! written, so a damaged source is never spread.

use super::pair::{PairBackend, Role};
use crate::storage::layout::matches_name;
use crate::storage::{Backend, FileType, Regional, StorageError};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStats {
    /// Files copied because the target lacked them.
    pub copied: u64,
    /// Files rewritten because the target's copy was damaged.
    pub repaired: u64,
    /// Bytes written to the target.
    pub bytes: u64,
    /// Files whose source copy fails its check (damaged in both regions, or
    /// missing from the target and damaged in the source), with the reason.
    pub failed: Vec<String>,
    /// Source files that could not be read: the target still lacks them.
    pub failed_reads: Vec<String>,
    /// Writes to the target that failed: the target is lagging.
    pub failed_writes: Vec<String>,
}

/// What happened to one file.
enum Step {
    /// The target's copy is good.
    Kept,
    /// Written to the target (`replaced`: over a damaged copy).
    Written { bytes: u64, replaced: bool },
    /// The source's copy fails its check: nothing written.
    SourceDamaged,
    /// The target refused the write.
    WriteFailed(StorageError),
    /// The source could not be read (after its retries).
    ReadFailed(StorageError),
}

/// A sync that stopped, and the side that failed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SyncError {
    /// The role of the region whose request failed.
    pub role: Role,
    /// What failed.
    pub error: StorageError,
}

/// Copy into `to` what it lacks from `from`; with `deep`, also read every
/// file `to` holds and rewrite the damaged ones. `config_ok` checks a
/// config's bytes (its MAC under the repository key): the config is the one
/// file not named by its hash. Data first, then indexes,
/// snapshots, keys and config, so the target never refers to a file it
/// does not have yet.
pub async fn sync<B: Regional>(
    pair: &PairBackend<B>,
    from: Role,
    to: Role,
    deep: bool,
    config_ok: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
) -> Result<SyncStats, SyncError> {
    let (src, dst) = (pair.store(from), pair.store(to));
    let at = |role: Role| move |error: StorageError| SyncError { role, error };
    let good = |t: FileType, name: &str, data: &[u8]| {
        if t == FileType::Config {
            config_ok(data)
        } else {
            matches_name(t, name, data)
        }
    };
    let mut stats = SyncStats::default();
    let mut checked_marker = false;
    for t in [
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
        FileType::Key,
        FileType::Config,
    ] {
        // Never bring keys back into a tenant shredded since this run began.
        if matches!(t, FileType::Key | FileType::Config) && !checked_marker {
            for (role, store) in [(from, src), (to, dst)] {
                if store
                    .exists_marker(super::pair::SHREDDED)
                    .await
                    .map_err(at(role))?
                {
                    return Err(at(role)(StorageError::Policy {
                        tenant: pair.tenant().to_string(),
                        message: format!(
                            "{}: {}: the tenant is being shredded; keys and config are not copied",
                            store.location(),
                            store.inner().root_key(super::pair::SHREDDED)
                        ),
                    }));
                }
            }
            checked_marker = true;
        }
        let have: BTreeMap<String, u64> = dst.list(t).await.map_err(at(to))?.into_iter().collect();
        let wanted = src.list(t).await.map_err(at(from))?;
        let mut work = Vec::new();
        for (name, size) in wanted {
            match have.get(&name) {
                None => work.push((name, false)),
                Some(&n) if n != size => work.push((name, true)),
                Some(_) if deep => work.push((name, true)),
                Some(_) => {}
            }
        }
        let results: Vec<_> = futures::stream::iter(work)
            .map(|(name, present)| async move {
                if present {
                    // The target has a file by this name: keep it if good.
                    match dst.load(t, &name).await {
                        Ok(data) if good(t, &name, &data) => return Ok((name, Step::Kept)),
                        _ => {}
                    }
                }
                let data = match src.load(t, &name).await {
                    Ok(d) => d,
                    Err(e @ StorageError::Refused { .. }) => return Err(e),
                    Err(e) => return Ok((name, Step::ReadFailed(e))),
                };
                if !good(t, &name, &data) {
                    return Ok((name, Step::SourceDamaged));
                }
                let n = data.len() as u64;
                Ok::<_, StorageError>(match dst.save(t, &name, data.into()).await {
                    Ok(()) => (
                        name,
                        Step::Written {
                            bytes: n,
                            replaced: present,
                        },
                    ),
                    Err(e @ StorageError::Refused { .. }) => return Err(e),
                    Err(e) => (name, Step::WriteFailed(e)),
                })
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for r in results {
            match r {
                Ok((_, Step::Kept)) => {}
                Ok((_, Step::Written { bytes, replaced })) => {
                    stats.bytes += bytes;
                    if replaced {
                        stats.repaired += 1;
                    } else {
                        stats.copied += 1;
                    }
                }
                Ok((name, Step::SourceDamaged)) => stats.failed.push(format!(
                    "{}: the source copy is damaged too",
                    src.inner().key(t, &name)
                )),
                Ok((_, Step::WriteFailed(e))) => stats.failed_writes.push(e.to_string()),
                Ok((_, Step::ReadFailed(e))) => stats.failed_reads.push(e.to_string()),
                Err(e) => return Err(at(to)(e)),
            }
        }
    }
    Ok(stats)
}
