//! The `[agent]` table and what a job or group schedules with it: groups,
//! retention, drills.

use serde::Deserialize;
use std::path::PathBuf;

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
