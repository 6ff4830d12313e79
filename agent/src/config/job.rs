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
