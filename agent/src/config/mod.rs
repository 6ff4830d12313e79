//! The agent's configuration file: storage regions, residency regimes,
//! tenants and jobs. Every table rejects unknown keys (naming them), and
//! [`Config::validate`] refuses a config whose tenants could put data outside
//! their regime before any command touches storage.
//!
//! docs/configuration.md documents every key; keep the two in step.

mod agent;
mod job;
pub mod schedule;
mod storage;

pub use agent::*;
pub use job::*;
pub use storage::*;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Append-only audit log of every object written or deleted (JSON lines).
    #[serde(default = "default_audit_log")]
    pub audit_log: PathBuf,
    /// Storage regions by name (the name is the S3 region the bucket lives in).
    #[serde(default)]
    pub regions: BTreeMap<String, RegionConfig>,
    /// Residency regimes: sets of regions that are legally equivalent.
    #[serde(default)]
    pub regimes: BTreeMap<String, RegimeConfig>,
    /// Tenants: whose data it is and where it may live.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Backup jobs.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobConfig>,
    /// Groups of jobs run one after another in one window.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
    /// The long-running agent (`cairn agent`).
    #[serde(default)]
    pub agent: AgentConfig,
}

fn default_audit_log() -> PathBuf {
    PathBuf::from("/var/lib/cairn/audit.jsonl")
}

/// Where a tenant's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A local repository directory.
    Local(PathBuf),
    /// A pair of S3 regions inside one regime.
    Pair {
        /// The regime the pair belongs to.
        regime: String,
        /// Written and read first.
        primary: String,
        /// The replica.
        secondary: String,
    },
}

/// A configuration that cannot be used, naming what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or missing keys.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// The file parses but its content is inconsistent or unsafe.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tenant, region or job.
        message: String,
    },
}

/// Names of tenants, regions, regimes and jobs: they become key prefixes and
/// appear in logs, so keep them to a safe alphabet.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !s.starts_with('-')
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Check everything that can be checked without touching storage.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in &self.regions {
            if !valid_name(name) {
                return Err(format!(
                    "region {name:?}: names use a-z, 0-9, '-' and '_' only"
                ));
            }
            validate_region(&format!("region {name}"), r)?;
        }
        let mut buckets: BTreeMap<(String, &str), &str> = BTreeMap::new();
        for (name, r) in &self.regions {
            let at = (
                r.endpoint.trim_end_matches('/').to_ascii_lowercase(),
                r.bucket.as_str(),
            );
            if let Some(other) = buckets.insert(at, name) {
                return Err(format!(
                    "regions {other} and {name} declare the same bucket {} at {}; one bucket is in one region",
                    r.bucket, r.endpoint
                ));
            }
        }
        let mut region_regime: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, regime) in &self.regimes {
            if !valid_name(name) {
                return Err(format!(
                    "regime {name:?}: names use a-z, 0-9, '-' and '_' only"
                ));
            }
            if regime.regions.is_empty() {
                return Err(format!("regime {name}: lists no regions"));
            }
            for r in &regime.regions {
                if !self.regions.contains_key(r) {
                    return Err(format!(
                        "regime {name}: region {r} is not declared under [regions]"
                    ));
                }
                if let Some(other) = region_regime.insert(r, name)
                    && other != name
                {
                    return Err(format!(
                        "region {r} is in two regimes ({other} and {name}); a region belongs to one regime"
                    ));
                }
            }
        }
        for name in self.tenants.keys() {
            if !valid_name(name) {
                return Err(format!(
                    "tenant {name:?}: names use a-z, 0-9, '-' and '_' only"
                ));
            }
            self.placement(name)?;
        }
        for (name, job) in &self.jobs {
            if !valid_name(name) {
                return Err(format!(
                    "job {name:?}: names use a-z, 0-9, '-' and '_' only"
                ));
            }
            if !self.tenants.contains_key(&job.tenant) {
                return Err(format!(
                    "job {name}: tenant {} is not declared under [tenants]",
                    job.tenant
                ));
            }
            if !(0..=22).contains(&job.compression) {
                return Err(format!("job {name}: compression must be 0..=22"));
            }
            for (grant, b) in &job.grants.buckets {
                if !valid_name(grant) {
                    return Err(format!(
                        "job {name}: grants.buckets.{grant:?}: names use a-z, 0-9, '-' and '_' only"
                    ));
                }
                b.validate(&format!("job {name}: grants.buckets.{grant}"))?;
            }
            if job.adapter == "filesystem" && job.paths.is_empty() {
                return Err(format!("job {name}: the filesystem adapter needs paths"));
            }
            if let Some(pin) = &job.adapter_sha256
                && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(format!(
                    "job {name}: adapter-sha256 {pin:?} is not 64 hex digits"
                ));
            }
            let tz = job.timezone.as_deref().unwrap_or(&self.agent.timezone);
            if let Some(s) = &job.schedule {
                schedule::Schedule::parse(s, tz, 0)
                    .map_err(|e| format!("job {name}: schedule {s:?}: {e}"))?;
            }
            if let Some(s) = job.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
                schedule::Schedule::parse(s, tz, 0)
                    .map_err(|e| format!("job {name}: drill schedule {s:?}: {e}"))?;
            }
            if let Some(w) = job.retention.as_ref().and_then(|r| r.keep_within.as_ref()) {
                w.parse::<crate::retention::Span>()
                    .map_err(|e| format!("job {name}: retention keep-within: {e}"))?;
            }
            if job
                .retention
                .as_ref()
                .is_some_and(|r| r.forget_flags().is_empty())
            {
                return Err(format!(
                    "job {name}: retention keeps nothing; give at least one keep-* rule"
                ));
            }
            if let Some(set) = job.drill.as_ref().and_then(|d| d.set.as_ref()) {
                self.validate_drill_set(name, set)?;
            }
            if job.timeout_secs == Some(0) {
                return Err(format!("job {name}: timeout-secs must be positive"));
            }
            if let Some(wal) = &job.wal {
                wal.validate(name, job)?;
            }
        }
        let mut grouped: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, group) in &self.groups {
            if !valid_name(name) {
                return Err(format!(
                    "group {name:?}: names use a-z, 0-9, '-' and '_' only"
                ));
            }
            if self.jobs.contains_key(name) {
                return Err(format!("group {name}: a job has the same name"));
            }
            if group.jobs.is_empty() {
                return Err(format!("group {name}: lists no jobs"));
            }
            for j in &group.jobs {
                let Some(job) = self.jobs.get(j) else {
                    return Err(format!(
                        "group {name}: job {j} is not declared under [jobs]"
                    ));
                };
                if job.schedule.is_some() {
                    return Err(format!(
                        "group {name}: job {j} has its own schedule; a job in a group runs with the group"
                    ));
                }
                if let Some(other) = grouped.insert(j, name) {
                    return Err(format!("job {j} is in two groups ({other} and {name})"));
                }
            }
            let tz = group.timezone.as_deref().unwrap_or(&self.agent.timezone);
            schedule::Schedule::parse(&group.schedule, tz, 0)
                .map_err(|e| format!("group {name}: schedule {:?}: {e}", group.schedule))?;
        }
        let a = &self.agent;
        if let Some(listen) = &a.listen {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("agent: listen {listen:?} is not an ip:port address ({e})"))?;
            if a.api_token_file.is_none() {
                return Err(
                    "agent: listen needs api-token-file (the API has no unauthenticated mode)"
                        .into(),
                );
            }
        }
        if a.max_concurrent_jobs == 0 {
            return Err("agent: max-concurrent-jobs must be at least 1".into());
        }
        if a.api_rate_total_per_sec == Some(0) {
            return Err("agent: api-rate-total-per-sec must be at least 1".into());
        }
        if a.api_rate_per_sec == 0 {
            return Err("agent: api-rate-per-sec must be at least 1".into());
        }
        schedule::parse_timezone(&a.timezone).map_err(|e| format!("agent: timezone: {e}"))?;
        Ok(())
    }

    /// The group a job belongs to, if any.
    pub fn group_of(&self, job: &str) -> Option<&str> {
        self.groups
            .iter()
            .find(|(_, g)| g.jobs.iter().any(|j| j == job))
            .map(|(n, _)| n.as_str())
    }

    /// Where a tenant's data lives, after checking the tenant's pair stays
    /// inside its regime.
    pub fn placement(&self, tenant: &str) -> Result<Placement, String> {
        let t = self
            .tenants
            .get(tenant)
            .ok_or_else(|| format!("tenant {tenant} is not declared under [tenants]"))?;
        let s3 = t.regime.is_some() || t.primary.is_some() || t.secondary.is_some();
        match (&t.repository, s3) {
            (Some(_), true) => Err(format!(
                "tenant {tenant}: give either repository (local) or regime/primary/secondary, not both"
            )),
            (Some(dir), false) => Ok(Placement::Local(dir.clone())),
            (None, false) => Err(format!(
                "tenant {tenant}: give regime, primary and secondary (or a local repository)"
            )),
            (None, true) => {
                let (Some(regime), Some(primary), Some(secondary)) =
                    (&t.regime, &t.primary, &t.secondary)
                else {
                    return Err(format!(
                        "tenant {tenant}: regime, primary and secondary are all required"
                    ));
                };
                let Some(rg) = self.regimes.get(regime) else {
                    return Err(format!(
                        "tenant {tenant}: regime {regime} is not declared under [regimes]"
                    ));
                };
                if primary == secondary {
                    return Err(format!(
                        "tenant {tenant}: primary and secondary are both {primary}; a pair needs two regions"
                    ));
                }
                for (role, region) in [("primary", primary), ("secondary", secondary)] {
                    if !rg.regions.contains(region) {
                        return Err(format!(
                            "tenant {tenant}: {role} region {region} is outside regime {regime} ({}); refusing to place the tenant's data there",
                            rg.regions.join(", ")
                        ));
                    }
                }
                Ok(Placement::Pair {
                    regime: regime.clone(),
                    primary: primary.clone(),
                    secondary: secondary.clone(),
                })
            }
        }
    }
}

/// The checks of one S3 location's settings (a region, or a job's bucket
/// grant), each message starting with `label`.
pub(crate) fn validate_region(label: &str, r: &RegionConfig) -> Result<(), String> {
    validate_endpoint(label, r)?;
    if r.bucket.is_empty() {
        return Err(format!("{label}: bucket is empty"));
    }
    if r.prefix.starts_with('/') || r.prefix.contains("..") {
        return Err(format!(
            "{label}: prefix {:?} must be relative and must not contain '..'",
            r.prefix
        ));
    }
    if r.access_key_id_env.is_some() != r.secret_access_key_env.is_some() {
        return Err(format!(
            "{label}: set both access-key-id-env and secret-access-key-env, or neither"
        ));
    }
    if r.access_key_id_env.is_some() && r.credentials_file.is_some() {
        return Err(format!(
            "{label}: choose environment variables or a credentials-file, not both"
        ));
    }
    if r.max_attempts == 0 || r.max_attempts > 20 {
        return Err(format!("{label}: max-attempts must be 1..=20"));
    }
    if r.concurrency == 0 || r.concurrency > 256 {
        return Err(format!("{label}: concurrency must be 1..=256"));
    }
    if r.part_size_mib < 5 || r.part_size_mib > 5 * 1024 {
        return Err(format!(
            "{label}: part-size-mib must be 5..=5120 (S3's limits)"
        ));
    }
    if r.multipart_threshold_mib > 5 * 1024 {
        return Err(format!(
            "{label}: multipart-threshold-mib must be at most 5120 (a single PUT is at most 5 GiB)"
        ));
    }
    if r.multipart_threshold_mib < r.part_size_mib {
        return Err(format!(
            "{label}: multipart-threshold-mib must be at least part-size-mib"
        ));
    }
    if r.request_timeout_secs == 0 {
        return Err(format!("{label}: request-timeout-secs must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
audit-log = "/tmp/audit.jsonl"
[regions.eu-west-1]
endpoint = "http://127.0.0.1:3900"
bucket = "b1"
[regions.eu-central-1]
endpoint = "https://s3.eu-central-1.amazonaws.com"
bucket = "b2"
[regions.us-east-1]
endpoint = "https://s3.us-east-1.amazonaws.com"
bucket = "b3"
[regimes.eu]
regions = ["eu-west-1", "eu-central-1"]
[regimes.us]
regions = ["us-east-1"]
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), &format!("{BASE}{extra}"))
    }

    #[test]
    fn a_pair_inside_its_regime_is_accepted() {
        let c = parse(
            "[tenants.acme]\nregime = \"eu\"\nprimary = \"eu-west-1\"\nsecondary = \"eu-central-1\"\npassword-file = \"/k\"\n",
        )
        .unwrap();
        assert_eq!(
            c.placement("acme").unwrap(),
            Placement::Pair {
                regime: "eu".into(),
                primary: "eu-west-1".into(),
                secondary: "eu-central-1".into()
            }
        );
    }

    #[test]
    fn a_pair_leaving_its_regime_is_refused_naming_tenant_and_region() {
        let e = parse(
            "[tenants.acme]\nregime = \"eu\"\nprimary = \"eu-west-1\"\nsecondary = \"us-east-1\"\npassword-file = \"/k\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tenant acme") && e.contains("us-east-1"), "{e}");
    }

    #[test]
    fn the_example_agent_config_is_valid() {
        let text = include_str!("../../../deploy/examples/agent.toml");
        let c = Config::parse(Path::new("deploy/examples/agent.toml"), text).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.groups["acme-app"].jobs, ["acme-pg", "acme-files"]);
    }

    #[test]
    fn a_drill_may_not_change_where_its_job_connects() {
        let e = parse(
            "[tenants.t]\nrepository = \"/r\"\npassword-file = \"/k\"\n[jobs.j]\ntenant = \"t\"\nadapter = \"redis\"\nconfig = { address = \"127.0.0.1:6379\" }\ndrill = { set = { address = \"10.0.0.9:6379\" } }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("job j: drill.set address"), "{e}");
        let e = parse(
            "[tenants.t]\nrepository = \"/r\"\npassword-file = \"/k\"\n[jobs.j]\ntenant = \"t\"\nadapter = \"postgres\"\nconfig = { database = \"app\" }\ndrill = { set = {} }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("job j: drill.set is empty"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[tenants.acme]\nregime = \"eu\"\npasword-file = \"/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pasword-file"), "{e}");
    }

    #[test]
    fn plain_http_needs_loopback_or_consent() {
        let e = Config::parse(
            Path::new("t"),
            "[regions.x]\nendpoint = \"http://10.0.0.1:3900\"\nbucket = \"b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("region x") && e.contains("allow-http"), "{e}");
        Config::parse(
            Path::new("t"),
            "[regions.x]\nendpoint = \"http://10.0.0.1:3900\"\nbucket = \"b\"\nallow-http = true\n",
        )
        .unwrap();
    }
}
