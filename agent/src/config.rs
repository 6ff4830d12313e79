//! The agent's configuration file: storage regions, residency regimes,
//! tenants and jobs. Every table rejects unknown keys (naming them), and
//! [`Config::validate`] refuses a config whose tenants could put data outside
//! their regime before any command touches storage.
//!
//! docs/configuration.md documents every key; keep the two in step.

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

/// The `[agent]` table: how `cairn agent` serves and runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// Address of the REST API and `/metrics` (`127.0.0.1:7420`); unset:
    /// no API.
    pub listen: Option<String>,
    /// File holding the API's bearer token (required with `listen`).
    pub api_token_file: Option<PathBuf>,
    /// Where the agent keeps its run history and drill records.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Jobs (or groups) running at once on this node.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_jobs: usize,
    /// On SIGTERM, how long running jobs may go on before they are aborted.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Timezone of schedules that name none (an IANA name; default UTC).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Directory under which `POST /v1/restores` may restore files.
    pub restore_root: Option<PathBuf>,
    /// API requests per second one client may make (bursts of twice this).
    #[serde(default = "default_rate")]
    pub api_rate_per_sec: u32,
    /// API requests per second all clients together may make (bursts of
    /// twice this; default five times `api-rate-per-sec`): many client
    /// addresses do not multiply the limit.
    pub api_rate_total_per_sec: Option<u32>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: None,
            api_token_file: None,
            state_dir: default_state_dir(),
            max_concurrent_jobs: default_max_concurrent(),
            shutdown_grace_secs: default_grace(),
            timezone: default_timezone(),
            restore_root: None,
            api_rate_per_sec: default_rate(),
            api_rate_total_per_sec: None,
        }
    }
}

impl AgentConfig {
    /// API requests per second of all clients together.
    pub fn api_rate_total(&self) -> u32 {
        self.api_rate_total_per_sec
            .unwrap_or(self.api_rate_per_sec.saturating_mul(5))
    }

    /// Where API restores may write: `restore-root`, else
    /// `<state-dir>/restores`.
    pub fn restore_root(&self) -> PathBuf {
        self.restore_root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("restores"))
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/cairn/agent")
}
fn default_max_concurrent() -> usize {
    2
}
fn default_grace() -> u64 {
    60
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_rate() -> u32 {
    10
}

/// A group: jobs run in order inside one run, between the group's
/// quiesce and release hooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GroupConfig {
    /// The jobs, in the order they run.
    pub jobs: Vec<String>,
    /// When the group runs (cron: 5 fields, or 6 with seconds first, or
    /// `@hourly`, `@daily`...).
    pub schedule: String,
    /// Delay each run by a fixed per-node amount of up to this many seconds.
    #[serde(default)]
    pub schedule_spread_secs: u64,
    /// The schedule's timezone (default: the agent's).
    pub timezone: Option<String>,
    /// A command (program and arguments) run before the first job; if it
    /// fails, no job of the group runs.
    #[serde(default)]
    pub quiesce: Vec<String>,
    /// A command run after the last job, also when a job or the quiesce
    /// hook failed.
    #[serde(default)]
    pub release: Vec<String>,
    /// Seconds each hook may take before it is killed.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    300
}

/// A job's retention: restic's `forget` rules, applied after each
/// successful scheduled backup to the job's own snapshots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionConfig {
    /// Keep the N newest snapshots.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the N newest hours.
    #[serde(default)]
    pub keep_hourly: u32,
    /// ... days.
    #[serde(default)]
    pub keep_daily: u32,
    /// ... ISO weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// ... months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// ... years.
    #[serde(default)]
    pub keep_yearly: u32,
    /// Keep every snapshot less than this (`1y2m3d4h`) older than the newest.
    pub keep_within: Option<String>,
    /// Prune after forgetting (repack and remove unused data).
    #[serde(default)]
    pub prune: bool,
}

impl RetentionConfig {
    /// The policy as `cairn forget` flags.
    pub fn forget_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if n > 0 {
                flags.push(flag.to_string());
                flags.push(n.to_string());
            }
        }
        if let Some(w) = &self.keep_within {
            flags.push("--keep-within".into());
            flags.push(w.clone());
        }
        flags
    }
}

/// A job's restore drill.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DrillConfig {
    /// When the drill runs (cron, as a job's schedule).
    pub schedule: Option<String>,
    /// Adapter configuration keys that point the drill's restore at a
    /// scratch target (a spare Redis database: `{ scratch-database = 15 }`).
    pub set: Option<toml::Table>,
    /// Seconds the drill may take before it is aborted.
    pub timeout_secs: Option<u64>,
}

fn default_audit_log() -> PathBuf {
    PathBuf::from("/var/lib/cairn/audit.jsonl")
}

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

/// A backup job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobConfig {
    /// The tenant whose repository the job writes to.
    pub tenant: String,
    /// The adapter: a bundled name or a path to a `.wasm` component.
    #[serde(default = "default_adapter")]
    pub adapter: String,
    /// Paths granted to the adapter (read-only for backup).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Globs the filesystem adapter leaves out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leave out temporary files (TEMP.*, tmp/, *.tmp, *.swp).
    #[serde(default = "default_true")]
    pub exclude_temporary: bool,
    /// Tags added to every snapshot of the job.
    #[serde(default)]
    pub tags: Vec<String>,
    /// zstd level for new data (0 stores it uncompressed).
    #[serde(default = "default_compression")]
    pub compression: i32,
    /// The adapter's own configuration (adapters other than filesystem),
    /// passed to it as a JSON object.
    pub config: Option<toml::Table>,
    /// What the adapter may reach beyond its paths.
    #[serde(default)]
    pub grants: JobGrants,
    /// The SHA-256 (hex) a component file adapter must have; a file that
    /// differs is refused before it runs.
    pub adapter_sha256: Option<String>,
    /// When `cairn agent` runs the job (cron: 5 fields, or 6 with seconds
    /// first, or `@hourly`, `@daily`...); unset: only by hand, API or group.
    pub schedule: Option<String>,
    /// Delay each run by a fixed per-node amount of up to this many seconds.
    #[serde(default)]
    pub schedule_spread_secs: u64,
    /// The schedule's timezone (default: the agent's).
    pub timezone: Option<String>,
    /// Abort a run (no snapshot) that takes longer than this many seconds.
    pub timeout_secs: Option<u64>,
    /// What the agent forgets after each successful backup.
    pub retention: Option<RetentionConfig>,
    /// The job's restore drill.
    pub drill: Option<DrillConfig>,
}

/// A job's grants beyond its paths.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobGrants {
    /// TCP endpoints (`ip:port` or `host:port`) the adapter and its
    /// programs may connect to, and local sockets (absolute paths) its
    /// programs may connect to.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Programs the adapter may start: bare names (found on the agent's
    /// `PATH`) or absolute paths.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Secrets the adapter may name, each a file holding the value.
    #[serde(default)]
    pub secrets: BTreeMap<String, PathBuf>,
    /// Environment variables every process of the job gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_adapter() -> String {
    "filesystem".into()
}
fn default_true() -> bool {
    true
}
fn default_compression() -> i32 {
    3
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
            validate_endpoint(name, r)?;
            if r.bucket.is_empty() {
                return Err(format!("region {name}: bucket is empty"));
            }
            if r.prefix.starts_with('/') || r.prefix.contains("..") {
                return Err(format!(
                    "region {name}: prefix {:?} must be relative and must not contain '..'",
                    r.prefix
                ));
            }
            if r.access_key_id_env.is_some() != r.secret_access_key_env.is_some() {
                return Err(format!(
                    "region {name}: set both access-key-id-env and secret-access-key-env, or neither"
                ));
            }
            if r.access_key_id_env.is_some() && r.credentials_file.is_some() {
                return Err(format!(
                    "region {name}: choose environment variables or a credentials-file, not both"
                ));
            }
            if r.max_attempts == 0 || r.max_attempts > 20 {
                return Err(format!("region {name}: max-attempts must be 1..=20"));
            }
            if r.concurrency == 0 || r.concurrency > 256 {
                return Err(format!("region {name}: concurrency must be 1..=256"));
            }
            if r.part_size_mib < 5 || r.part_size_mib > 5 * 1024 {
                return Err(format!(
                    "region {name}: part-size-mib must be 5..=5120 (S3's limits)"
                ));
            }
            if r.multipart_threshold_mib > 5 * 1024 {
                return Err(format!(
                    "region {name}: multipart-threshold-mib must be at most 5120 (a single PUT is at most 5 GiB)"
                ));
            }
            if r.multipart_threshold_mib < r.part_size_mib {
                return Err(format!(
                    "region {name}: multipart-threshold-mib must be at least part-size-mib"
                ));
            }
            if r.request_timeout_secs == 0 {
                return Err(format!(
                    "region {name}: request-timeout-secs must be positive"
                ));
            }
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
                crate::daemon::schedule::Schedule::parse(s, tz, 0)
                    .map_err(|e| format!("job {name}: schedule {s:?}: {e}"))?;
            }
            if let Some(s) = job.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
                crate::daemon::schedule::Schedule::parse(s, tz, 0)
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
            match job.drill.as_ref().and_then(|d| d.set.as_ref()) {
                Some(set) => self.validate_drill_set(name, job, set)?,
                // Without a scratch target, a Redis "drill" would verify the
                // live server and restore nothing.
                None if job.drill.is_some() && job.adapter == "redis" => {
                    return Err(format!(
                        "job {name}: a Redis drill restores into a spare database: give drill.set = {{ scratch-database = N }}"
                    ));
                }
                None => {}
            }
            if job.timeout_secs == Some(0) {
                return Err(format!("job {name}: timeout-secs must be positive"));
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
            crate::daemon::schedule::Schedule::parse(&group.schedule, tz, 0)
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
        crate::daemon::schedule::parse_timezone(&a.timezone)
            .map_err(|e| format!("agent: timezone: {e}"))?;
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

/// The Redis databases a job backs up, by address (empty: all of them).
fn redis_databases(job: &JobConfig) -> (Option<&str>, Vec<i64>) {
    let c = job.config.as_ref();
    let address = c.and_then(|c| c.get("address")).and_then(|a| a.as_str());
    let dbs = c
        .and_then(|c| c.get("databases"))
        .and_then(|d| d.as_array())
        .map(|d| d.iter().filter_map(|v| v.as_integer()).collect())
        .unwrap_or_default();
    (address, dbs)
}

impl Config {
    /// A drill restores into what `drill.set` points at: it must be a
    /// scratch target, never the job's own data nor another job's.
    fn validate_drill_set(
        &self,
        name: &str,
        job: &JobConfig,
        set: &toml::Table,
    ) -> Result<(), String> {
        validate_drill_set(name, job, set)?;
        if job.adapter != "redis" {
            return Ok(());
        }
        let scratch = set.get("scratch-database").and_then(|v| v.as_integer());
        let (address, _) = redis_databases(job);
        for (other, o) in self
            .jobs
            .iter()
            .filter(|(n, o)| *n != name && o.adapter == "redis")
        {
            let (o_address, o_dbs) = redis_databases(o);
            if o_address != address {
                continue;
            }
            if o_dbs.is_empty() {
                return Err(format!(
                    "job {name}: job {other} backs up every database of {}, the drill's scratch database too; list its databases",
                    address.unwrap_or("the server")
                ));
            }
            if scratch.is_some_and(|s| o_dbs.contains(&s)) {
                return Err(format!(
                    "job {name}: drill scratch-database {} is a database job {other} backs up",
                    scratch.unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

/// The per-adapter rules for `drill.set`.
fn validate_drill_set(name: &str, job: &JobConfig, set: &toml::Table) -> Result<(), String> {
    for k in set.keys() {
        check_override_key(k).map_err(|e| format!("job {name}: drill.set {e}"))?;
    }
    match job.adapter.as_str() {
        "redis" => {
            let Some(scratch) = set.get("scratch-database").and_then(|v| v.as_integer()) else {
                return Err(format!(
                    "job {name}: a Redis drill restores into a spare database: give drill.set = {{ scratch-database = N }}"
                ));
            };
            let own = job
                .config
                .as_ref()
                .and_then(|c| c.get("databases"))
                .and_then(|d| d.as_array())
                .map(|d| d.iter().filter_map(|v| v.as_integer()).collect::<Vec<_>>())
                .unwrap_or_default();
            if own.is_empty() {
                return Err(format!(
                    "job {name}: a Redis drill needs the job's databases listed (config.databases), so the scratch database cannot be one of them"
                ));
            }
            if own.contains(&scratch) {
                return Err(format!(
                    "job {name}: drill scratch-database {scratch} is one of the job's own databases"
                ));
            }
            if set.keys().any(|k| k != "scratch-database") {
                return Err(format!(
                    "job {name}: a Redis drill's set takes scratch-database only"
                ));
            }
            Ok(())
        }
        "filesystem" | "postgres" | "mariadb" => Err(format!(
            "job {name}: drill.set is not used with the {} adapter (its drill restores into a scratch target of its own)",
            job.adapter
        )),
        // A component of its own: its author says which keys name a
        // scratch target.
        _ => Ok(()),
    }
}

fn validate_endpoint(name: &str, r: &RegionConfig) -> Result<(), String> {
    let (scheme, rest) = r
        .endpoint
        .split_once("://")
        .ok_or_else(|| format!("region {name}: endpoint {:?} is not a URL", r.endpoint))?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!(
            "region {name}: endpoint {:?} has no host",
            r.endpoint
        ));
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
                    "region {name}: endpoint {} is plain http to a non-loopback host; use https or set allow-http = true",
                    r.endpoint
                ))
            }
        }
        other => Err(format!(
            "region {name}: endpoint scheme {other:?} is not http or https"
        )),
    }
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
        let text = include_str!("../../deploy/examples/agent.toml");
        let c = Config::parse(Path::new("deploy/examples/agent.toml"), text).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.groups["acme-app"].jobs, ["acme-pg", "acme-files"]);
    }

    #[test]
    fn a_redis_drill_must_name_a_spare_database_not_its_own() {
        let job = |drill: &str| {
            format!(
                "[tenants.t]\nrepository = \"/r\"\npassword-file = \"/k\"\n[jobs.j]\ntenant = \"t\"\nadapter = \"redis\"\nconfig = {{ address = \"127.0.0.1:6379\", databases = [0] }}\n{drill}\n"
            )
        };
        let e = parse(&job("drill = { set = { scratch-database = 0 } }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of the job's own databases"), "{e}");
        let e = parse(&job(
            "drill = { schedule = \"@daily\", set = { target = 1 } }",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("scratch-database"), "{e}");
        parse(&job("drill = { set = { scratch-database = 15 } }")).unwrap();
        let e = parse(&job("drill = { schedule = \"@daily\" }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spare database"), "{e}");
        // Another job on the same server backing up every database would
        // back up the scratch one too.
        let other = "[jobs.k]\ntenant = \"t\"\nadapter = \"redis\"\nconfig = { address = \"127.0.0.1:6379\" }\n";
        let e = parse(&format!(
            "{}{other}",
            job("drill = { set = { scratch-database = 15 } }")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("job k backs up every database"), "{e}");
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

/// Refuse an adapter configuration key that says where a job connects, as
/// whom, or which SQL its hooks run, naming it. Such keys come from the
/// job's config only: `--set`, the API's `set` and `drill.set` may not change them, so
/// that whoever may start a restore cannot send the job's credentials or
/// data anywhere else. Adapter authors follow the same names (see
/// docs/adapters.md); the network confinement of granted programs holds
/// whatever an adapter calls its keys.
pub fn check_override_key(key: &str) -> Result<(), String> {
    if is_connection_key(key) {
        return Err(format!(
            "{key}: this key says where the job connects, as whom, or which SQL it runs; it comes from the job's config only"
        ));
    }
    Ok(())
}

/// See [`check_override_key`].
fn is_connection_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('_', "-");
    const EXACT: &[&str] = &[
        "host",
        "hosts",
        "hostaddr",
        "port",
        "address",
        "addresses",
        "socket",
        "endpoint",
        "endpoints",
        "url",
        "uri",
        "dsn",
        "server",
        "servers",
        "service",
        "user",
        "username",
        "password",
        "passfile",
        "connection",
        "connection-string",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslmode",
    ];
    const SUFFIXES: &[&str] = &[
        "-secret",
        "-sql",
        "-host",
        "-port",
        "-address",
        "-user",
        "-username",
        "-password",
        "-endpoint",
        "-url",
        "-socket",
    ];
    EXACT.contains(&k.as_str()) || SUFFIXES.iter().any(|s| k.ends_with(s))
}

#[cfg(test)]
mod connection_key_tests {
    use super::is_connection_key;

    #[test]
    fn keys_that_say_where_or_as_whom_are_connection_keys() {
        for k in [
            "host",
            "port",
            "Port",
            "address",
            "user",
            "username",
            "password-secret",
            "password_secret",
            "quiesce-sql",
            "release-sql",
            "hook-host",
            "dsn",
        ] {
            assert!(is_connection_key(k), "{k}");
        }
        for k in [
            "target",
            "target-database",
            "databases",
            "schema",
            "table",
            "pattern",
            "scratch-database",
            "globals",
        ] {
            assert!(!is_connection_key(k), "{k}");
        }
    }
}
