//! One tenant's repository kept in both regions of its pair.
//!
//! Writes go to both regions at once. When one region fails, the default is
//! to finish in the other and mark the failed one as lagging (the command
//! then exits degraded (exit code 4) and `cairn replicate`
//! catches it up); with `require-both` the write fails instead.
//!
//! Reads go to the primary and fall back, per object, to the secondary when
//! the object is missing, unreadable, or fails its check: whole files must
//! hash to their name (every repository file but `config` is named by the
//! SHA-256 of its bytes), pack ranges must carry a valid MAC. Each fallback
//! that succeeded is recorded as healed, so the command can say what it
//! healed.

use super::{Guarded, Policy, audit::AuditLog};
use crate::config::{Config, Placement};
use crate::storage::layout::matches_name;
use crate::storage::s3::S3Backend;
use crate::storage::{Backend, FileType, Regional, StorageError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The object (under the tenant's root) that marks a shredded tenant; once
/// present in any region, no command but `tenant shred` opens the tenant,
/// so nothing can copy keys back into a region that was shredded.
pub const SHREDDED: &str = "cairn-shredded";

/// The role of a region in a tenant's pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Written and read first.
    Primary,
    /// The replica.
    Secondary,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

struct Replica<B> {
    store: Guarded<B>,
    role: Role,
    /// Why this region is not used at all in this run (its bucket is not
    /// where it is declared, or it did not answer at start), if so.
    disabled: Option<String>,
    /// Why this region stopped taking writes in this run, if it did.
    lagging: Mutex<Option<String>>,
}

impl<B> Replica<B> {
    /// Why the region takes no writes, if it does not.
    fn lagging(&self) -> Option<String> {
        self.disabled
            .clone()
            .or_else(|| crate::util::lock(&self.lagging).clone())
    }
}

/// An object read from the other region because the first copy was bad.
#[derive(Debug, Clone)]
pub struct Healed {
    /// The object's key in the region that failed.
    pub key: String,
    /// The region whose copy was bad.
    pub bad_region: String,
    /// The region the good copy came from.
    pub from_region: String,
    /// What was wrong with the bad copy.
    pub reason: String,
}

/// A tenant's repository in both regions of its pair: a decorator over two
/// guarded stores of any kind that lives in a region.
pub struct PairBackend<B = S3Backend> {
    tenant: String,
    replicas: [Replica<B>; 2],
    require_both: bool,
    healed: Mutex<Vec<Healed>>,
    /// Fail a listing when any usable region fails it (for `check`).
    strict_listing: std::sync::atomic::AtomicBool,
}

impl PairBackend<S3Backend> {
    /// Open the tenant's repository in both regions of its pair, checking
    /// that each bucket really is in the region it is declared in. A region
    /// that fails the check, or does not answer, is disabled for this run
    /// (loudly); with `require-both` that is an error.
    pub async fn open(
        config: &Config,
        tenant: &str,
        policy: Arc<Policy>,
        audit: Arc<AuditLog>,
        allow_shredded: bool,
    ) -> Result<PairBackend, StorageError> {
        let Ok(Placement::Pair {
            primary, secondary, ..
        }) = config.placement(tenant)
        else {
            return Err(StorageError::Refused {
                tenant: tenant.into(),
                region: String::new(),
                op: "open",
                name: String::new(),
                reason: "the tenant has no region pair in the config".into(),
            });
        };
        let require_both = config.tenants.get(tenant).is_some_and(|t| t.require_both);
        let open = |role: Role, region: String| {
            let (policy, audit) = (policy.clone(), audit.clone());
            async move {
                let cfg = config
                    .regions
                    .get(&region)
                    .ok_or_else(|| StorageError::Refused {
                        tenant: tenant.into(),
                        region: region.clone(),
                        op: "open",
                        name: String::new(),
                        reason: "the region is not declared".into(),
                    })?;
                let s3 = S3Backend::new(&region, cfg, tenant).await?;
                Ok::<_, StorageError>(Replica {
                    store: Guarded::new(s3, tenant, policy, audit)?,
                    role,
                    disabled: None,
                    lagging: Mutex::new(None),
                })
            }
        };
        let p = open(Role::Primary, primary).await?;
        let s = open(Role::Secondary, secondary).await?;
        let mut pair = PairBackend {
            tenant: tenant.to_string(),
            replicas: [p, s],
            require_both,
            healed: Mutex::new(Vec::new()),
            strict_listing: std::sync::atomic::AtomicBool::new(false),
        };
        let checks = pair
            .replicas
            .iter()
            .map(|r| super::report::check_region(r.store.inner()));
        let results = futures::future::join_all(checks).await;
        for (r, check) in pair.replicas.iter_mut().zip(results) {
            if let (false, Some(reason)) = (check.ok, check.error) {
                tracing::error!(tenant = %pair.tenant, region = %r.store.region(), role = %r.role, %reason, "Region disabled for this run.");
                if pair.require_both {
                    return Err(StorageError::Policy {
                        tenant: pair.tenant.clone(),
                        message: format!(
                            "region {} disabled: {reason} (tenant {} requires both regions)",
                            r.store.region(),
                            pair.tenant
                        ),
                    });
                }
                r.disabled = Some(format!("disabled: {reason}"));
            }
        }
        if !allow_shredded {
            for r in pair.replicas.iter().filter(|r| r.disabled.is_none()) {
                if r.store.exists_marker(SHREDDED).await? {
                    return Err(StorageError::Policy {
                        tenant: tenant.to_string(),
                        message: format!(
                            "the tenant was shredded (marker {SHREDDED} in region {}); its repository can no longer be used. If a region still holds keys, run `cairn tenant shred {tenant}` again",
                            r.store.region()
                        ),
                    });
                }
            }
        }
        if pair.replicas.iter().all(|r| r.lagging().is_some()) {
            let reasons: Vec<String> = pair
                .replicas
                .iter()
                .map(|r| format!("{}: {}", r.store.region(), r.lagging().unwrap_or_default()))
                .collect();
            return Err(StorageError::Remote {
                location: format!("tenant {tenant}"),
                name: String::new(),
                message: format!("no region of the pair is usable ({})", reasons.join("; ")),
            });
        }
        Ok(pair)
    }
}

impl<B: Regional> PairBackend<B> {
    /// Join two guarded regions (primary, secondary) into one store; with
    /// `require_both`, a write that fails in either region fails.
    pub fn from_regions(
        tenant: &str,
        primary: Guarded<B>,
        secondary: Guarded<B>,
        require_both: bool,
    ) -> PairBackend<B> {
        let replica = |store, role| Replica {
            store,
            role,
            disabled: None,
            lagging: Mutex::new(None),
        };
        PairBackend {
            tenant: tenant.to_string(),
            replicas: [
                replica(primary, Role::Primary),
                replica(secondary, Role::Secondary),
            ],
            require_both,
            healed: Mutex::new(Vec::new()),
            strict_listing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Regions that stopped taking writes in this run, with the reason.
    pub fn lagging(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .filter_map(|r| r.lagging().map(|why| (r.store.region().to_string(), why)))
            .collect()
    }

    /// Objects read from the other region because the first copy was bad.
    pub fn healed(&self) -> Vec<Healed> {
        crate::util::lock(&self.healed).clone()
    }

    fn replica(&self, role: Role) -> &Replica<B> {
        &self.replicas[if role == Role::Primary { 0 } else { 1 }]
    }

    /// The region store playing `role`.
    pub fn store(&self, role: Role) -> &Guarded<B> {
        &self.replica(role).store
    }

    /// Whether the region playing `role` is usable in this run.
    pub fn usable(&self, role: Role) -> bool {
        self.replica(role).lagging().is_none()
    }

    /// Make a listing fail when any usable region fails it, instead of
    /// using the other region's alone.
    pub fn set_strict_listing(&self, strict: bool) {
        self.strict_listing
            .store(strict, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tenant requires both regions to take every write.
    pub fn require_both(&self) -> bool {
        self.require_both
    }

    /// Stop writing to the region playing `role` for the rest of the run.
    pub fn mark_region_lagging(&self, role: Role, reason: &str) {
        self.mark_lagging(self.replica(role), reason);
    }

    /// Regions in read order: never a disabled one; regions that lagged in
    /// this run last; primary before secondary.
    fn read_order(&self) -> Vec<&Replica<B>> {
        let mut v: Vec<&Replica<B>> = self
            .replicas
            .iter()
            .filter(|r| r.disabled.is_none())
            .collect();
        v.sort_by_key(|r| (r.lagging().is_some(), r.role == Role::Secondary));
        v
    }

    fn nothing_usable(&self) -> StorageError {
        StorageError::Remote {
            location: format!("tenant {}", self.tenant),
            name: String::new(),
            message: "no region of the pair is usable".into(),
        }
    }

    fn mark_lagging(&self, r: &Replica<B>, reason: &str) {
        let mut slot = crate::util::lock(&r.lagging);
        if slot.is_none() {
            tracing::warn!(tenant = %self.tenant, region = %r.store.region(), role = %r.role, %reason, "Region is lagging: writes go on in the other region only.");
            *slot = Some(reason.to_string());
        }
    }

    fn record_heal(&self, bad: &Replica<B>, good: &Replica<B>, key: String, reason: String) {
        let mut healed = crate::util::lock(&self.healed);
        // A file read in several ranges is healed once.
        if healed
            .iter()
            .any(|h| h.key == key && h.bad_region == bad.store.region())
        {
            return;
        }
        tracing::warn!(tenant = %self.tenant, %key, bad_region = %bad.store.region(), from_region = %good.store.region(), %reason, "Read the other region's copy.");
        healed.push(Healed {
            key,
            bad_region: bad.store.region().to_string(),
            from_region: good.store.region().to_string(),
            reason,
        });
    }

    /// Run a write on every usable region at once; what a failure means
    /// depends on `require-both`.
    async fn write_all<'a, F, Fut>(&'a self, op: F) -> Result<(), StorageError>
    where
        F: Fn(&'a Guarded<B>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StorageError>> + 'a,
    {
        let targets: Vec<&Replica<B>> = self
            .replicas
            .iter()
            .filter(|r| r.lagging().is_none())
            .collect();
        if targets.is_empty() {
            return Err(StorageError::Remote {
                location: format!("tenant {}", self.tenant),
                name: String::new(),
                message: "both regions of the pair are lagging; nothing can be written".into(),
            });
        }
        let results = futures::future::join_all(targets.iter().map(|r| op(&r.store))).await;
        let mut first_err = None;
        let mut failed = Vec::new();
        let mut ok = 0;
        for (r, res) in targets.iter().zip(results) {
            match res {
                Ok(()) => ok += 1,
                Err(e @ StorageError::Refused { .. }) => return Err(e),
                Err(e) if self.require_both => {
                    return Err(StorageError::Policy {
                        tenant: self.tenant.clone(),
                        message: format!(
                            "{}: {e} (tenant {} requires both regions of its pair)",
                            r.store.location(),
                            self.tenant
                        ),
                    });
                }
                Err(e) => failed.push((*r, e)),
            }
        }
        // Both regions refusing the write for lack of permission is not
        // lagging: the credentials are read-only (a restore fallen back to
        // reading without a lock), and nothing needs replicating.
        if ok == 0 && !failed.is_empty() && failed.iter().all(|(_, e)| e.is_write_refused()) {
            return Err(failed.remove(0).1);
        }
        for (r, e) in failed {
            self.mark_lagging(r, &e.to_string());
            first_err.get_or_insert(e);
        }
        match (ok, first_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Read from the first region that has a good copy.
    async fn read_first<'a, F, Fut>(
        &'a self,
        key: String,
        read: F,
        good: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, StorageError>
    where
        F: Fn(&'a Guarded<B>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, StorageError>> + 'a,
    {
        let order = self.read_order();
        if order.is_empty() {
            return Err(self.nothing_usable());
        }
        let mut failures: Vec<(&Replica<B>, String, Option<StorageError>)> = Vec::new();
        for r in order {
            match read(&r.store).await {
                Ok(data) if good(&data) => {
                    if let Some((bad, reason, _)) = failures.first() {
                        self.record_heal(bad, r, key.clone(), reason.clone());
                    }
                    return Ok(data);
                }
                Ok(_) => failures.push((
                    r,
                    "content fails its check (damaged or tampered)".into(),
                    None,
                )),
                Err(e @ StorageError::Refused { .. }) => return Err(e),
                Err(e) => failures.push((r, e.to_string(), Some(e))),
            }
        }
        // No good copy anywhere: a missing object stays "not found" (the
        // repository layer treats that specially), anything else names
        // every region's failure.
        if failures
            .iter()
            .all(|(_, _, e)| e.as_ref().is_some_and(|e| e.is_not_found()))
        {
            if let Some((_, _, Some(e))) = failures.into_iter().next() {
                return Err(e);
            }
            return Err(self.nothing_usable());
        }
        Err(StorageError::Remote {
            location: format!("tenant {}", self.tenant),
            name: key,
            message: failures
                .iter()
                .map(|(r, why, _)| format!("{} ({}): {why}", r.store.region(), r.role))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// What operations need of a replicated store, whatever its regions are
/// made of: which regions lag, the tenant's rules, and copying between
/// the regions. An operation holds one as a trait object, so it runs the
/// same on S3 regions and on memory ones in the unit tests.
#[async_trait]
pub trait Replicated: Send + Sync {
    /// The tenant.
    fn tenant(&self) -> &str;
    /// Regions that stopped taking writes in this run, with the reason.
    fn lagging(&self) -> Vec<(String, String)>;
    /// Make a listing fail when any usable region fails it.
    fn set_strict_listing(&self, strict: bool);
    /// Whether the tenant requires both regions to take every write.
    fn require_both(&self) -> bool;
    /// Stop writing to the region playing `role` for the rest of the run.
    fn mark_region_lagging(&self, role: Role, reason: &str);
    /// Whether the region playing `role` is usable in this run.
    fn usable(&self, role: Role) -> bool;
    /// The name of the region playing `role`.
    fn region(&self, role: Role) -> String;
    /// Copy into `to` what it lacks from `from` (see [`super::sync::sync`]).
    async fn copy_missing(
        &self,
        from: Role,
        to: Role,
        config_ok: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<super::sync::SyncStats, super::sync::SyncError>;
}

#[async_trait]
impl<B: Regional> Replicated for PairBackend<B> {
    fn tenant(&self) -> &str {
        PairBackend::tenant(self)
    }

    fn lagging(&self) -> Vec<(String, String)> {
        PairBackend::lagging(self)
    }

    fn set_strict_listing(&self, strict: bool) {
        PairBackend::set_strict_listing(self, strict)
    }

    fn require_both(&self) -> bool {
        PairBackend::require_both(self)
    }

    fn mark_region_lagging(&self, role: Role, reason: &str) {
        PairBackend::mark_region_lagging(self, role, reason)
    }

    fn usable(&self, role: Role) -> bool {
        PairBackend::usable(self, role)
    }

    fn region(&self, role: Role) -> String {
        self.store(role).region().to_string()
    }

    async fn copy_missing(
        &self,
        from: Role,
        to: Role,
        config_ok: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<super::sync::SyncStats, super::sync::SyncError> {
        super::sync::sync(self, from, to, false, config_ok).await
    }
}

#[async_trait]
impl<B: Regional> Backend for PairBackend<B> {
    fn copies(&self) -> usize {
        self.replicas.len()
    }

    /// Reads go to one region at a time: the fewer of the two.
    fn connections(&self) -> usize {
        self.replicas[0]
            .store
            .connections()
            .min(self.replicas[1].store.connections())
    }

    fn location(&self) -> String {
        format!(
            "tenant {} ({} + {})",
            self.tenant,
            self.replicas[0].store.region(),
            self.replicas[1].store.region()
        )
    }

    async fn create(&self) -> Result<(), StorageError> {
        self.write_all(|s| s.create()).await
    }

    async fn save(&self, t: FileType, name: &str, data: bytes::Bytes) -> Result<(), StorageError> {
        // One buffer for both regions (a clone of `Bytes` is a count).
        self.write_all(|s| s.save(t, name, data.clone())).await
    }

    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError> {
        let key = self.replicas[0].store.inner().key(t, name);
        self.read_first(key, |s| s.load(t, name), |d| matches_name(t, name, d))
            .await
    }

    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let key = self.replicas[0].store.inner().key(t, name);
        self.read_first(key, |s| s.load_range(t, name, offset, length), |_| true)
            .await
    }

    async fn load_verified(
        &self,
        t: FileType,
        name: &str,
        verify: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<Vec<u8>, StorageError> {
        let key = self.replicas[0].store.inner().key(t, name);
        self.read_first(
            key,
            |s| s.load(t, name),
            |d| matches_name(t, name, d) && verify(d),
        )
        .await
    }

    async fn load_range_verified(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
        verify: &(dyn for<'b> Fn(&'b [u8]) -> bool + Send + Sync),
    ) -> Result<Vec<u8>, StorageError> {
        let key = self.replicas[0].store.inner().key(t, name);
        self.read_first(key, |s| s.load_range(t, name, offset, length), verify)
            .await
    }

    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError> {
        // "Not found" only when no usable region has it and none failed:
        // `init` relies on this to never start a second repository.
        let mut missing = None;
        for r in self.read_order() {
            match r.store.size(t, name).await {
                Ok(n) => return Ok(n),
                Err(e) if e.is_not_found() => {
                    missing.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(missing.unwrap_or_else(|| self.nothing_usable()))
    }

    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError> {
        // The union of both regions: a file only one region holds (the
        // other lagged) is still part of the repository.
        let order = self.read_order();
        let results = futures::future::join_all(order.iter().map(|r| r.store.list(t))).await;
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        let mut answered = 0;
        let mut first_err = None;
        for (r, res) in order.iter().zip(results) {
            match res {
                Ok(files) => {
                    answered += 1;
                    for (name, size) in files {
                        all.entry(name).or_insert(size);
                    }
                }
                Err(e @ StorageError::Refused { .. }) => return Err(e),
                Err(e)
                    if self
                        .strict_listing
                        .load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, region = %r.store.region(), error = %e, "Listing failed in one region; using the other.");
                    first_err.get_or_insert(e);
                }
            }
        }
        if answered == 0 {
            return Err(first_err.unwrap_or_else(|| self.nothing_usable()));
        }
        Ok(all.into_iter().collect())
    }

    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError> {
        self.write_all(|s| s.remove(t, name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryBackend;
    use crate::testing::runtime;
    use bytes::Bytes;

    use crate::testing::memory_pair as pair;

    /// A snapshot-like file: named by the SHA-256 of its bytes.
    fn file(content: &[u8]) -> (String, Bytes) {
        (
            crate::repo::Id::hash(content).to_hex(),
            Bytes::copy_from_slice(content),
        )
    }

    #[test]
    fn a_write_lands_in_both_regions() {
        let p = pair(false);
        let (name, data) = file(b"snapshot");
        runtime().block_on(async {
            p.pair.save(FileType::Snapshot, &name, data).await.unwrap();
        });
        assert!(p.a.get(FileType::Snapshot, &name).is_some());
        assert!(p.b.get(FileType::Snapshot, &name).is_some());
        assert!(p.pair.lagging().is_empty());
    }

    #[test]
    fn a_region_that_fails_a_write_lags_and_the_other_takes_the_rest() {
        let p = pair(false);
        p.b.set_down(true);
        let (one, d1) = file(b"one");
        let (two, d2) = file(b"two");
        runtime().block_on(async {
            p.pair.save(FileType::Snapshot, &one, d1).await.unwrap();
            p.b.set_down(false);
            // Lagging for the rest of the run: not written again.
            p.pair.save(FileType::Snapshot, &two, d2).await.unwrap();
        });
        let lagging = p.pair.lagging();
        assert_eq!(lagging.len(), 1);
        assert_eq!(lagging[0].0, "b");
        assert!(p.a.get(FileType::Snapshot, &two).is_some());
        assert!(p.b.get(FileType::Snapshot, &two).is_none());
        assert!(!p.pair.usable(Role::Secondary));
    }

    #[test]
    fn with_require_both_a_write_one_region_fails_fails() {
        let p = pair(true);
        p.b.fail_nth_save(1);
        let (name, data) = file(b"snapshot");
        let e = runtime()
            .block_on(p.pair.save(FileType::Snapshot, &name, data))
            .unwrap_err();
        assert!(e.to_string().contains("requires both regions"), "{e}");
        assert!(p.pair.lagging().is_empty(), "nothing goes on in one region");
    }

    #[test]
    fn a_damaged_copy_is_read_from_the_other_region_and_recorded_as_healed() {
        let p = pair(false);
        let (name, data) = file(b"index file");
        runtime().block_on(async {
            p.pair
                .save(FileType::Index, &name, data.clone())
                .await
                .unwrap();
            p.a.put_raw(FileType::Index, &name, b"index fil3".to_vec());
            let read = p.pair.load(FileType::Index, &name).await.unwrap();
            assert_eq!(read, data);
            // A second read of the same object is not a second heal.
            p.pair.load(FileType::Index, &name).await.unwrap();
        });
        let healed = p.pair.healed();
        assert_eq!(healed.len(), 1, "{healed:?}");
        assert_eq!(
            (
                healed[0].bad_region.as_str(),
                healed[0].from_region.as_str()
            ),
            ("a", "b")
        );
    }

    #[test]
    fn a_file_missing_everywhere_stays_not_found_and_damage_everywhere_names_both_regions() {
        let p = pair(false);
        let (name, data) = file(b"pack");
        runtime().block_on(async {
            let missing = p.pair.load(FileType::Pack, &name).await.unwrap_err();
            assert!(missing.is_not_found(), "{missing}");
            p.pair.save(FileType::Pack, &name, data).await.unwrap();
            p.a.put_raw(FileType::Pack, &name, b"bad".to_vec());
            p.b.put_raw(FileType::Pack, &name, b"bad".to_vec());
            let e = p
                .pair
                .load(FileType::Pack, &name)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("a (primary)") && e.contains("b (secondary)"),
                "{e}"
            );
        });
    }

    #[test]
    fn a_listing_is_the_union_unless_strict_when_a_region_fails() {
        let p = pair(false);
        let (one, d1) = file(b"one");
        let (two, d2) = file(b"two");
        runtime().block_on(async {
            p.pair.save(FileType::Snapshot, &one, d1).await.unwrap();
            // Only the secondary has the second (the primary lagged once).
            p.b.save(FileType::Snapshot, &two, d2).await.unwrap();
            let names: Vec<String> = p
                .pair
                .list(FileType::Snapshot)
                .await
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(names.len(), 2);
            p.a.set_down(true);
            assert_eq!(p.pair.list(FileType::Snapshot).await.unwrap().len(), 2);
            p.pair.set_strict_listing(true);
            assert!(p.pair.list(FileType::Snapshot).await.is_err());
        });
    }

    #[test]
    fn replicate_copies_what_one_region_lacks_and_rewrites_damage_when_deep() {
        let p = pair(false);
        let (one, d1) = file(b"one");
        let (two, d2) = file(b"two");
        runtime().block_on(async {
            p.a.save(FileType::Snapshot, &one, d1.clone())
                .await
                .unwrap();
            p.b.save(FileType::Snapshot, &two, d2.clone())
                .await
                .unwrap();
            let ok = |_: &[u8]| true;
            let s = super::super::sync::sync(&p.pair, Role::Primary, Role::Secondary, false, &ok)
                .await
                .unwrap();
            assert_eq!(s.copied, 1);
            assert_eq!(p.b.get(FileType::Snapshot, &one).unwrap(), d1);
            // Damage in the secondary is found only by a deep pass.
            p.b.put_raw(FileType::Snapshot, &one, b"0ne".to_vec());
            let s = super::super::sync::sync(&p.pair, Role::Primary, Role::Secondary, true, &ok)
                .await
                .unwrap();
            assert_eq!((s.copied, s.repaired), (0, 1), "{s:?}");
            assert_eq!(p.b.get(FileType::Snapshot, &one).unwrap(), d1);
        });
    }

    #[test]
    fn a_region_outside_the_pair_is_refused_before_any_request() {
        let p = pair(false);
        let c = MemoryBackend::new("c");
        let config = Config::default();
        let policy = Arc::new(Policy::from_config(&config));
        let audit = Arc::new(AuditLog::open(&p.dir.path().join("other.jsonl")).unwrap());
        let e = Guarded::new(c, "t", policy, audit).err().expect("refused");
        assert!(matches!(e, StorageError::Refused { .. }), "{e}");
    }
}
