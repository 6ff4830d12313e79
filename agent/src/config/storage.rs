//! Where data may go: regions (an S3 bucket each), residency regimes,
//! tenants and their region pairs.

use serde::Deserialize;
use std::path::PathBuf;

/// One S3 bucket in one region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegionConfig {
    /// The S3 endpoint URL. `https://` unless the host is loopback or
    /// `allow-http` is set.
    pub endpoint: String,
    /// The bucket holding this region's repositories.
    pub bucket: String,
    /// A key prefix inside the bucket; each tenant's repository sits under
    /// `<prefix>/<tenant>/`.
    #[serde(default)]
    pub prefix: String,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`.
    #[serde(default)]
    pub path_style: bool,
    /// Allow a plain-http endpoint that is not on loopback.
    #[serde(default)]
    pub allow_http: bool,
    /// Name of the environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// Name of the environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// An AWS shared credentials file to read this region's keys from.
    pub credentials_file: Option<PathBuf>,
    /// The profile to use in `credentials-file` (default `default`).
    pub profile: Option<String>,
    /// Attempts per request, the first included, before giving up.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Give up on one request (all its attempts) after this many seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Requests in flight at once to this region.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Objects at least this large are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold_mib: u64,
    /// Size of each part of a multipart upload (at least 5).
    #[serde(default = "default_part_size")]
    pub part_size_mib: u64,
}

impl RegionConfig {
    /// A region at `endpoint` with `bucket` and every other key at its
    /// default (as if the config named only those two).
    pub fn new(endpoint: &str, bucket: &str) -> RegionConfig {
        RegionConfig {
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            path_style: false,
            allow_http: false,
            access_key_id_env: None,
            secret_access_key_env: None,
            credentials_file: None,
            profile: None,
            max_attempts: default_max_attempts(),
            request_timeout_secs: default_request_timeout(),
            concurrency: default_concurrency(),
            multipart_threshold_mib: default_multipart_threshold(),
            part_size_mib: default_part_size(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}
fn default_request_timeout() -> u64 {
    300
}
fn default_concurrency() -> usize {
    8
}
fn default_multipart_threshold() -> u64 {
    32
}
fn default_part_size() -> u64 {
    16
}

/// A residency regime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegimeConfig {
    /// The regions where data under this regime may live.
    pub regions: Vec<String>,
}

/// A tenant: one repository per region of its pair, or one local repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantConfig {
    /// The tenant's regime (S3 tenants).
    pub regime: Option<String>,
    /// The region backups are written to and read from first.
    pub primary: Option<String>,
    /// The region holding the replica.
    pub secondary: Option<String>,
    /// A local repository directory instead of a region pair.
    pub repository: Option<PathBuf>,
    /// The file holding the tenant's repository password.
    pub password_file: PathBuf,
    /// Fail a backup unless both regions of the pair took it.
    #[serde(default)]
    pub require_both: bool,
}

pub(super) fn validate_endpoint(label: &str, r: &RegionConfig) -> Result<(), String> {
    let (scheme, rest) = r
        .endpoint
        .split_once("://")
        .ok_or_else(|| format!("{label}: endpoint {:?} is not a URL", r.endpoint))?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!(
                    "{label}: endpoint {:?} has no valid port ({port})",
                    r.endpoint
                ));
            }
            h
        }
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{label}: endpoint {:?} has no host", r.endpoint));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || r.allow_http {
                Ok(())
            } else {
                Err(format!(
                    "{label}: endpoint {} is plain http to a non-loopback host; use https or set allow-http = true",
                    r.endpoint
                ))
            }
        }
        other => Err(format!(
            "{label}: endpoint scheme {other:?} is not http or https"
        )),
    }
}
