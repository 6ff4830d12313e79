//! Data residency: which regions a tenant's data may live in, and the
//! enforcement that every storage request goes through.
//!
//! A tenant's data may only be in the two regions of its pair, both inside
//! its regime ([`crate::config::Config::validate`] refuses any other config).
//! [`Guarded`] wraps a tenant's store in one region and checks the
//! [`Policy`] before every request, so no code path — backup, restore,
//! replicate, repair, shred — can reach a region outside the pair, and
//! records every write and delete in the [`audit::AuditLog`].
//! [`pair::PairBackend`] joins the two regions of a pair into one store.

pub mod audit;
pub mod pair;
pub mod report;
pub mod sync;

use crate::config::{Config, Placement};
use crate::storage::s3::S3Backend;
use crate::storage::{Backend, FileType, Regional, StorageError};
use async_trait::async_trait;
use audit::{AuditLog, Record};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which regions each tenant may use.
#[derive(Debug, Default)]
pub struct Policy {
    pairs: BTreeMap<String, [String; 2]>,
    refusals: AtomicU64,
}

impl Policy {
    /// The policy a validated config describes.
    pub fn from_config(config: &Config) -> Policy {
        let mut pairs = BTreeMap::new();
        for name in config.tenants.keys() {
            if let Ok(Placement::Pair {
                primary, secondary, ..
            }) = config.placement(name)
            {
                pairs.insert(name.clone(), [primary, secondary]);
            }
        }
        Policy {
            pairs,
            refusals: AtomicU64::new(0),
        }
    }

    /// The tenant's pair (primary, secondary).
    pub fn pair(&self, tenant: &str) -> Option<&[String; 2]> {
        self.pairs.get(tenant)
    }

    /// Allow or refuse one request for `tenant` in `region`.
    pub fn check(
        &self,
        tenant: &str,
        region: &str,
        op: &'static str,
        name: &str,
    ) -> Result<(), StorageError> {
        let reason = match self.pairs.get(tenant) {
            Some(pair) if pair.iter().any(|r| r == region) => return Ok(()),
            Some(pair) => format!("the tenant's pair is {} + {}", pair[0], pair[1]),
            None => "the tenant has no region pair in the config".to_string(),
        };
        self.refusals.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::residency_refused();
        tracing::error!(%tenant, %region, op, object = %name, %reason, "Residency refusal: request not sent.");
        Err(StorageError::Refused {
            tenant: tenant.into(),
            region: region.into(),
            op,
            name: name.into(),
            reason,
        })
    }

    /// How many requests were refused.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// A tenant's repository in one region, behind the residency check and the
/// audit log: a decorator over any store that lives in a region.
pub struct Guarded<B = S3Backend> {
    inner: B,
    tenant: String,
    policy: Arc<Policy>,
    audit: Arc<AuditLog>,
}

impl<B: Regional> Guarded<B> {
    /// Wrap `inner`; refuses at once (before any request) when the region
    /// is outside the tenant's pair.
    pub fn new(
        inner: B,
        tenant: &str,
        policy: Arc<Policy>,
        audit: Arc<AuditLog>,
    ) -> Result<Guarded<B>, StorageError> {
        policy.check(tenant, inner.region(), "open", inner.bucket())?;
        Ok(Guarded {
            inner,
            tenant: tenant.to_string(),
            policy,
            audit,
        })
    }

    /// The region.
    pub fn region(&self) -> &str {
        self.inner.region()
    }

    /// The unguarded store, for region checks that are not tenant data.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn check(&self, op: &'static str, t: FileType, name: &str) -> Result<(), StorageError> {
        self.policy.check(
            &self.tenant,
            self.inner.region(),
            op,
            &self.inner.key(t, name),
        )
    }

    /// Write a small object beside the repository files (`rel` under the
    /// tenant's root), checked and audited like any other write.
    pub async fn put_marker(&self, rel: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let key = self.inner.root_key(rel);
        self.policy
            .check(&self.tenant, self.inner.region(), "write", &key)?;
        let size = data.len() as u64;
        let sha = hex::encode(Sha256::digest(&data));
        self.inner.put_key(&key, data).await?;
        self.audit("put", &key, size, Some(sha))
    }

    /// Whether a marker object exists.
    pub async fn exists_marker(&self, rel: &str) -> Result<bool, StorageError> {
        let key = self.inner.root_key(rel);
        self.policy
            .check(&self.tenant, self.inner.region(), "read", &key)?;
        self.inner.exists_key(&key).await
    }

    fn audit(
        &self,
        op: &str,
        key: &str,
        size: u64,
        sha256: Option<String>,
    ) -> Result<(), StorageError> {
        self.audit
            .append(&Record {
                time: audit::now(),
                op,
                tenant: &self.tenant,
                region: self.inner.region(),
                bucket: self.inner.bucket(),
                key,
                size,
                sha256,
            })
            .map_err(|message| StorageError::Policy {
                tenant: self.tenant.clone(),
                message: format!(
                    "{}: {key}: stored, but the audit record failed: {message}",
                    self.location()
                ),
            })
    }
}

#[async_trait]
impl<B: Regional> Backend for Guarded<B> {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn remote(&self) -> bool {
        self.inner.remote()
    }

    fn connections(&self) -> usize {
        self.inner.connections()
    }

    fn copies(&self) -> usize {
        self.inner.copies()
    }

    async fn create(&self) -> Result<(), StorageError> {
        self.check("write", FileType::Config, "config")?;
        self.inner.create().await
    }

    async fn save(&self, t: FileType, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.check("write", t, name)?;
        let size = data.len() as u64;
        let sha = hex::encode(crate::storage::content_sha256(t, name, &data));
        self.inner.save(t, name, data).await?;
        self.audit("put", &self.inner.key(t, name), size, Some(sha))
    }

    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError> {
        self.check("read", t, name)?;
        self.inner.load(t, name).await
    }

    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.check("read", t, name)?;
        self.inner.load_range(t, name, offset, length).await
    }

    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError> {
        self.check("read", t, name)?;
        self.inner.size(t, name).await
    }

    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError> {
        self.check("list", t, "")?;
        self.inner.list(t).await
    }

    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError> {
        self.check("delete", t, name)?;
        self.inner.remove(t, name).await?;
        self.audit("delete", &self.inner.key(t, name), 0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn requests_outside_the_pair_are_refused_and_counted() {
        let c = Config::parse(
            Path::new("t"),
            r#"
[regions.a]
endpoint = "http://127.0.0.1:1"
bucket = "x"
[regions.b]
endpoint = "http://127.0.0.1:2"
bucket = "y"
[regions.c]
endpoint = "http://127.0.0.1:3"
bucket = "z"
[regimes.r1]
regions = ["a", "b"]
[regimes.r2]
regions = ["c"]
[tenants.t]
regime = "r1"
primary = "a"
secondary = "b"
password-file = "/k"
"#,
        )
        .unwrap();
        let p = Policy::from_config(&c);
        p.check("t", "a", "write", "k").unwrap();
        p.check("t", "b", "read", "k").unwrap();
        let e = p.check("t", "c", "write", "k").unwrap_err().to_string();
        assert!(e.contains("tenant t") && e.contains("region c"), "{e}");
        assert!(p.check("nobody", "a", "list", "").is_err());
        assert_eq!(p.refusals(), 2);
    }
}
