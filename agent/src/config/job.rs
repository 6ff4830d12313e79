//! Backup jobs: their adapter, paths, grants and adapter configuration,
//! and the keys of that configuration a run may not override.

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// A continuous WAL archive beside the job's base backups (PostgreSQL
    /// jobs with `mode = "physical"`): `cairn wal-stream --job J`.
    pub wal: Option<WalConfig>,
}

/// A job's WAL stream (`[jobs.J.wal]`, docs/design/pitr.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WalConfig {
    /// The segment being received is stored at least this often, in
    /// seconds (1..=60): the bound on what a lost node loses.
    #[serde(default = "default_flush_secs")]
    pub flush_secs: u64,
    /// A window snapshot closes after this many seconds, at the next
    /// segment boundary (5..=86400).
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// The replication slot `pg_receivewal` streams from (a-z, 0-9, `_`;
    /// default `cairn_<job>` with `-` made `_`). A second slot,
    /// `<slot>_stored`, holds the WAL the repository does not have yet.
    pub slot: Option<String>,
    /// Where `pg_receivewal` writes (an absolute path; default
    /// `<state-dir>/wal/<job>`). Files leave it once the repository holds
    /// them.
    pub spool: Option<PathBuf>,
    /// How far back point-in-time recovery must reach, in seconds (0, the
    /// default, for no such promise; 604800 for a week): `forget` never
    /// removes the newest base backup that ended before the window
    /// begins, whatever its keep-rules say, so every moment of the window
    /// stays recoverable (and the WAL from it on is kept with it).
    #[serde(default)]
    pub pitr_window_secs: u64,
}

fn default_flush_secs() -> u64 {
    5
}
fn default_window_secs() -> u64 {
    3600
}

impl WalConfig {
    /// The slot of job `job`.
    pub fn slot(&self, job: &str) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("cairn_{}", job.replace('-', "_")))
    }

    /// The spool of job `job`, with the agent's state directory `state`.
    pub fn spool(&self, job: &str, state: &std::path::Path) -> PathBuf {
        self.spool
            .clone()
            .unwrap_or_else(|| state.join("wal").join(job))
    }

    /// Check the settings of job `name` (whose adapter and config are given).
    pub fn validate(&self, name: &str, job: &JobConfig) -> Result<(), String> {
        let mode = job
            .config
            .as_ref()
            .and_then(|c| c.get("mode"))
            .and_then(|m| m.as_str());
        if job.adapter != "postgres" || mode != Some("physical") {
            return Err(format!(
                "job {name}: [jobs.{name}.wal] streams PostgreSQL WAL: the job needs adapter = \"postgres\" and config.mode = \"physical\""
            ));
        }
        for program in ["pg_receivewal", "psql"] {
            if !job
                .grants
                .programs
                .iter()
                .any(|p| p == program || p.ends_with(&format!("/{program}")))
            {
                return Err(format!(
                    "job {name}: the WAL stream runs {program}; add it to grants.programs"
                ));
            }
        }
        if !(1..=60).contains(&self.flush_secs) {
            return Err(format!("job {name}: wal.flush-secs must be 1..=60"));
        }
        if !(5..=86_400).contains(&self.window_secs) {
            return Err(format!("job {name}: wal.window-secs must be 5..=86400"));
        }
        // Ten years at most: a window longer than any retention means a
        // typo, not a promise.
        if self.pitr_window_secs > 10 * 366 * 86_400 {
            return Err(format!(
                "job {name}: wal.pitr-window-secs must be at most 316224000 (ten years)"
            ));
        }
        let slot = self.slot(name);
        if slot.is_empty()
            || slot.len() > 56
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "job {name}: wal.slot {slot:?}: a slot name uses a-z, 0-9 and '_', at most 56 characters (\"_stored\" is added for the second slot)"
            ));
        }
        if let Some(spool) = &self.spool
            && !spool.is_absolute()
        {
            return Err(format!(
                "job {name}: wal.spool {} is not an absolute path",
                spool.display()
            ));
        }
        Ok(())
    }
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
    /// S3 (or S3-compatible) buckets the adapter may list, read and, when
    /// `write = true`, write, by grant name. Only the host reads their
    /// credentials.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketGrant>,
}

/// A bucket a job grants (`grants.buckets.NAME`): a region's keys
/// (`endpoint`, `bucket`, `prefix`, `path-style`, credentials, retries,
/// concurrency, multipart sizes, as under `[regions]`), plus the region
/// requests are signed for and whether the job may write.
#[derive(Debug, Clone)]
pub struct BucketGrant {
    /// The region name requests are signed for (`us-east-1`, `garage`).
    pub region: String,
    /// Whether restores may write into the bucket.
    pub write: bool,
    /// Where the bucket is and how to reach it.
    pub s3: RegionConfig,
}

impl<'de> Deserialize<'de> for BucketGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let region = match table.remove("region") {
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("region: expected a string")),
            None => return Err(D::Error::custom("missing field `region`")),
        };
        let write = match table.remove("write") {
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(D::Error::custom("write: expected true or false")),
            None => false,
        };
        let mut s3 =
            RegionConfig::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        // A prefix is a folder: `tenant-a` must not also grant `tenant-ab/`.
        if !s3.prefix.is_empty() && !s3.prefix.ends_with('/') {
            s3.prefix.push('/');
        }
        Ok(BucketGrant { region, write, s3 })
    }
}

/// `%XX` escapes of a URL part decoded; a `#` is refused (a fragment is no
/// part of a grant).
fn percent_decoded(s: &str) -> Result<String, String> {
    if s.contains('#') {
        return Err(format!(
            "{s:?}: '#' has no place in a grant URL (escape it as %23)"
        ));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?}: '%' is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?}: its escapes are not UTF-8"))
}

impl BucketGrant {
    /// Parse `--grant-bucket`'s value: `ENDPOINT/BUCKET[/PREFIX]`, then
    /// `?key=value&...` with any key of the config table (`region` is
    /// required; `write`, `path-style`, `credentials-file`, `profile`...).
    pub fn from_url(spec: &str) -> Result<BucketGrant, String> {
        let (location, query) = spec.split_once('?').unwrap_or((spec, ""));
        let (scheme, rest) = location
            .split_once("://")
            .ok_or_else(|| format!("{location:?} is not a URL (http[s]://HOST/BUCKET[/PREFIX])"))?;
        let mut parts = rest.splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        if host.contains('@') {
            return Err(format!(
                "{scheme}://{host}: give credentials with credentials-file=FILE, not in the URL"
            ));
        }
        let bucket = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default();
        if bucket.is_empty() {
            return Err(format!(
                "{location:?} names no bucket (http[s]://HOST/BUCKET[/PREFIX])"
            ));
        }
        let mut table = toml::Table::new();
        table.insert("endpoint".into(), format!("{scheme}://{host}").into());
        table.insert("bucket".into(), percent_decoded(bucket)?.into());
        table.insert("prefix".into(), percent_decoded(prefix)?.into());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            let v = percent_decoded(v)?;
            let v = v.as_str();
            if table.contains_key(k) {
                return Err(format!(
                    "{k} is given twice (the URL's place names endpoint, bucket and prefix)"
                ));
            }
            const NUMBERS: &[&str] = &[
                "max-attempts",
                "request-timeout-secs",
                "concurrency",
                "multipart-threshold-mib",
                "part-size-mib",
            ];
            let value: toml::Value = match v {
                "true" => true.into(),
                "false" => false.into(),
                v if NUMBERS.contains(&k) => v
                    .parse::<i64>()
                    .map_err(|_| format!("{k}={v:?}: expected a number"))?
                    .into(),
                v => v.to_string().into(),
            };
            table.insert(k.to_string(), value);
        }
        BucketGrant::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("{e} (besides: region, write)"))
    }

    /// Check the grant's settings; messages start with `label`.
    pub fn validate(&self, label: &str) -> Result<(), String> {
        if self.region.is_empty() {
            return Err(format!("{label}: region is empty"));
        }
        super::validate_region(label, &self.s3)
    }
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

impl Config {
    /// `drill.set` may not change where the job connects or as whom. What
    /// else it may set, and whether the drill then writes what a job backs
    /// up, is the adapter's to say (`configuration.check`, see
    /// [`crate::ops::settings`]).
    pub(super) fn validate_drill_set(&self, name: &str, set: &toml::Table) -> Result<(), String> {
        // A drill with a `set` restores with it: an empty one would restore
        // with the job's own settings, over the job's own data.
        if set.is_empty() {
            return Err(format!(
                "job {name}: drill.set is empty; leave it out, or name the scratch target the drill restores into"
            ));
        }
        for k in set.keys() {
            check_override_key(k).map_err(|e| format!("job {name}: drill.set {e}"))?;
        }
        Ok(())
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
