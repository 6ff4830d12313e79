//! Proof of residency: where each bucket really is, and where each tenant's
//! objects really are, found by asking every configured region rather than
//! by trusting the audit log.

use crate::config::Config;
use crate::storage::s3::S3Backend;
use serde::Serialize;
use std::collections::BTreeMap;

/// The outcome of checking one region's bucket.
#[derive(Debug, Serialize)]
pub struct RegionCheck {
    /// The region as declared.
    pub region: String,
    /// Its bucket.
    pub bucket: String,
    /// The region the server reports, if it answered.
    pub reported: Option<String>,
    /// Whether the bucket is where it is declared.
    pub ok: bool,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Check every declared region's bucket.
pub async fn verify_regions(config: &Config) -> Vec<RegionCheck> {
    let checks = config.regions.iter().map(|(name, cfg)| async move {
        let mut check = RegionCheck {
            region: name.clone(),
            bucket: cfg.bucket.clone(),
            reported: None,
            ok: false,
            error: None,
        };
        match S3Backend::new(name, cfg, "").await {
            Err(e) => {
                check.error = Some(e.to_string());
                check
            }
            Ok(s3) => check_region(&s3).await,
        }
    });
    futures::future::join_all(checks).await
}

/// Ask the server where one region's bucket is and compare it with where
/// the config declares it (used here and whenever a tenant's pair opens).
pub async fn check_region(s3: &S3Backend) -> RegionCheck {
    let (region, bucket) = (s3.region().to_string(), s3.bucket().to_string());
    match s3.bucket_region().await {
        Ok(actual) => RegionCheck {
            ok: actual == region,
            error: (actual != region)
                .then(|| format!("bucket {bucket} is in region {actual}, declared in {region}")),
            reported: Some(actual),
            region,
            bucket,
        },
        Err(e) => RegionCheck {
            region,
            bucket,
            reported: None,
            ok: false,
            error: Some(e.to_string()),
        },
    }
}

/// A tenant's objects in one region.
#[derive(Debug, Default, Serialize)]
pub struct Holding {
    /// Number of objects.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Where one tenant's objects are.
#[derive(Debug, Serialize)]
pub struct TenantReport {
    /// The tenant.
    pub tenant: String,
    /// Its pair (primary, secondary); empty for a local-repository tenant.
    pub pair: Vec<String>,
    /// Objects per region, for every region that holds any.
    pub regions: BTreeMap<String, Holding>,
    /// Regions outside the pair holding the tenant's objects.
    pub violations: Vec<String>,
    /// Whether both regions of the pair hold the same number of objects.
    pub in_sync: bool,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One entry per tenant asked about.
    pub tenants: Vec<TenantReport>,
    /// Objects under a prefix no configured tenant owns, per region.
    pub unowned: BTreeMap<String, Holding>,
    /// Regions that could not be listed (the report is then incomplete).
    pub unreachable: BTreeMap<String, String>,
}

impl Report {
    /// Whether the report proves every tenant's data is inside its pair.
    pub fn ok(&self) -> bool {
        self.unreachable.is_empty() && self.tenants.iter().all(|t| t.violations.is_empty())
    }
}

/// List every configured region and group what is there by tenant. Each
/// bucket's real region is checked first: a tenant's objects in a bucket
/// that is not where it is declared count as outside the pair.
pub async fn report(config: &Config, only: Option<&str>) -> Report {
    let mut mislocated: BTreeMap<String, String> = BTreeMap::new();
    let mut unchecked: BTreeMap<String, String> = BTreeMap::new();
    for c in verify_regions(config).await {
        match (c.ok, c.reported) {
            (true, _) => {}
            (false, Some(actual)) => {
                mislocated.insert(c.region, actual);
            }
            (false, None) => {
                unchecked.insert(c.region, c.error.unwrap_or_default());
            }
        }
    }
    let mislocated_ref = &mislocated;
    let lists = config.regions.iter().map(|(name, cfg)| async move {
        // A bucket that is really elsewhere only answers requests signed
        // for where it really is: list it there, to see what it holds.
        let sign_as = mislocated_ref.get(name).unwrap_or(name);
        let mut cfg = cfg.clone();
        if sign_as != name {
            // A regional endpoint naming the declared region (AWS's
            // s3.<region>.amazonaws.com) must name the real one too.
            cfg.endpoint = cfg
                .endpoint
                .replace(&format!(".{name}."), &format!(".{sign_as}."));
        }
        let listing = match S3Backend::new(sign_as, &cfg, "").await {
            Ok(s3) => {
                let prefix = match cfg.prefix.trim_matches('/') {
                    "" => String::new(),
                    p => format!("{p}/"),
                };
                s3.list_keys(&prefix, true)
                    .await
                    .map(|keys| (prefix, keys))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        (name.clone(), listing)
    });
    let mut by_tenant: BTreeMap<String, BTreeMap<String, Holding>> = BTreeMap::new();
    let mut unowned: BTreeMap<String, Holding> = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    for (region, listing) in futures::future::join_all(lists).await {
        let (prefix, keys) = match listing {
            Ok(l) => l,
            Err(e) => {
                unreachable.insert(region, e);
                continue;
            }
        };
        for (key, size) in keys {
            let rel = key.strip_prefix(&prefix).unwrap_or(&key);
            let owner = rel.split('/').next().unwrap_or_default();
            let slot = if config.tenants.contains_key(owner) {
                by_tenant
                    .entry(owner.to_string())
                    .or_default()
                    .entry(region.clone())
                    .or_default()
            } else {
                unowned.entry(region.clone()).or_default()
            };
            slot.objects += 1;
            slot.bytes += size;
        }
    }
    for (region, why) in unchecked {
        unreachable
            .entry(region)
            .or_insert_with(|| format!("its bucket's region could not be checked: {why}"));
    }
    let complete = unreachable.is_empty();
    let mut tenants = Vec::new();
    for name in config.tenants.keys() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let pair: Vec<String> = match config.placement(name) {
            Ok(crate::config::Placement::Pair {
                primary, secondary, ..
            }) => vec![primary, secondary],
            _ => Vec::new(),
        };
        let regions = by_tenant.remove(name).unwrap_or_default();
        let violations: Vec<String> = regions
            .keys()
            .filter_map(|r| match mislocated.get(r) {
                Some(actual) => Some(format!("{r} (its bucket is really in {actual})")),
                None => (!pair.contains(r)).then(|| r.clone()),
            })
            .collect();
        let count = |r: &String| regions.get(r).map_or(0, |h| h.objects);
        let in_sync = complete && pair.len() == 2 && count(&pair[0]) == count(&pair[1]);
        tenants.push(TenantReport {
            tenant: name.clone(),
            pair,
            regions,
            violations,
            in_sync,
        });
    }
    Report {
        tenants,
        unowned,
        unreachable,
    }
}
