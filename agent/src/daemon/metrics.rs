//! `/metrics` in Prometheus's text format, written by hand: a few dozen
//! series do not need a metrics library.

use super::Agent;
use super::state::JobStats;
use super::streams::StreamState;
use crate::ops::drills::{self, DrillRecord};
use crate::util::lock;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Escape a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// A per-job series: its name, type, help, and its value from the job's
/// counters (`None`: no sample yet).
type JobSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JobStats) -> Option<f64>,
);

/// A per-job series broken down by one label (`reason`, `status`).
type LabelledSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JobStats) -> &BTreeMap<String, u64>,
);

const JOB_SERIES: [JobSeries; 6] = [
    (
        "cairn_job_last_success_timestamp_seconds",
        "gauge",
        "End of the job's last successful backup (Unix time); absent before the first.",
        |s| s.last_success.map(|t| t.timestamp() as f64),
    ),
    (
        "cairn_job_last_duration_seconds",
        "gauge",
        "Duration of the job's last backup run.",
        |s| s.last_duration,
    ),
    (
        "cairn_job_read_bytes_total",
        "counter",
        "Bytes the job's backups read.",
        |s| Some(s.bytes_read as f64),
    ),
    (
        "cairn_job_new_bytes_total",
        "counter",
        "Bytes the job's backups found new (not deduplicated).",
        |s| Some(s.bytes_new as f64),
    ),
    (
        "cairn_job_uploaded_bytes_total",
        "counter",
        "Bytes the job's backups stored (compressed, encrypted).",
        |s| Some(s.bytes_stored as f64),
    ),
    (
        "cairn_job_dedup_ratio",
        "gauge",
        "Bytes read per new byte in the job's last successful backup.",
        |s| s.dedup_ratio,
    ),
];

const LABELLED_SERIES: [LabelledSeries; 2] = [
    (
        "cairn_job_failures_total",
        "reason",
        "Runs of the job (or group) that did not succeed, by reason.",
        |s| &s.failures,
    ),
    (
        "cairn_job_runs_total",
        "status",
        "Ended runs of the job (or group), by status.",
        |s| &s.ended,
    ),
];

/// A series of the last drill per job.
type DrillSeries = (&'static str, &'static str, fn(&DrillRecord) -> Option<f64>);

const DRILL_SERIES: [DrillSeries; 4] = [
    (
        "cairn_drill_passed",
        "1 if the job's last restore drill passed, else 0.",
        |r| Some(if r.passed { 1.0 } else { 0.0 }),
    ),
    (
        "cairn_drill_rpo_seconds",
        "Age of the snapshot the last drill restored (achieved recovery point).",
        |r| r.rpo_seconds,
    ),
    (
        "cairn_drill_rto_seconds",
        "Time the last drill took to restore and verify (achieved recovery time).",
        |r| Some(r.rto_seconds),
    ),
    (
        "cairn_drill_last_timestamp_seconds",
        "End of the job's last drill (Unix time).",
        |r| Some(r.finished.timestamp() as f64),
    ),
];

/// A series of each WAL stream.
type WalSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StreamState) -> Option<f64>,
);

/// A stream's position as a number (bytes since 0/0).
fn lsn(s: Option<&String>) -> Option<f64> {
    s.and_then(|l| l.parse::<crate::pitr::lsn::Lsn>().ok())
        .map(|l| l.0 as f64)
}

const WAL_SERIES: [WalSeries; 11] = [
    (
        "cairn_wal_stream_up",
        "gauge",
        "1 while the job's WAL stream runs, else 0.",
        |s| Some(if s.up { 1.0 } else { 0.0 }),
    ),
    (
        "cairn_wal_lag_bytes",
        "gauge",
        "WAL the server has written and the repository does not hold yet, as of the last flush.",
        |s| s.status.as_ref()?.lag_bytes.map(|b| b as f64),
    ),
    (
        "cairn_wal_lag_seconds",
        "gauge",
        "How old, at most, the oldest WAL not yet in the repository was at the last flush.",
        |s| s.status.as_ref()?.lag_seconds,
    ),
    (
        "cairn_wal_server_lsn",
        "gauge",
        "The server's WAL position at the last flush (bytes).",
        |s| lsn(s.status.as_ref()?.server_lsn.as_ref()),
    ),
    (
        "cairn_wal_stored_lsn",
        "gauge",
        "The WAL position the repository holds without a gap (bytes).",
        |s| lsn(s.status.as_ref()?.stored_lsn.as_ref()),
    ),
    (
        "cairn_wal_timeline",
        "gauge",
        "The timeline being archived.",
        |s| s.status.as_ref()?.timeline.map(f64::from),
    ),
    (
        "cairn_wal_files_stored_total",
        "counter",
        "WAL files (segments, partial versions, history files) stored by the agent's streams.",
        |s| Some(s.files_stored() as f64),
    ),
    (
        "cairn_wal_receiver_restarts_total",
        "counter",
        "Times pg_receivewal was started again after it exited (a server restart, say).",
        |s| Some(s.receiver_restarts() as f64),
    ),
    (
        "cairn_wal_damaged_files_total",
        "counter",
        "Spool files that failed the record check (page headers, lengths, CRCs) and were not stored; a complete segment is fetched again.",
        |s| Some(s.damaged_files() as f64),
    ),
    (
        "cairn_wal_stream_restarts_total",
        "counter",
        "Times the stream was started again after it ended.",
        |s| Some(s.restarts as f64),
    ),
    (
        "cairn_wal_spool_bytes",
        "gauge",
        "Bytes in the stream's spool.",
        |s| s.status.as_ref().map(|x| x.spool_bytes as f64),
    ),
];

/// The agent's metrics.
pub fn render(agent: &Agent) -> String {
    let loaded = agent.loaded();
    let config = &loaded.config;
    let runs = lock(&agent.runs);
    let mut o = Out(String::new());
    let none = JobStats::default();
    let stats = |name: &str| runs.stats.get(name).unwrap_or(&none);

    for (metric, kind, help, value) in JOB_SERIES {
        o.family(metric, kind, help);
        for (job, j) in &config.jobs {
            if let Some(v) = value(stats(job)) {
                o.sample(metric, &[("job", job), ("tenant", &j.tenant)], v);
            }
        }
    }
    let names: Vec<&String> = config.jobs.keys().chain(config.groups.keys()).collect();
    for (metric, label, help, counts) in LABELLED_SERIES {
        o.family(metric, "counter", help);
        for name in &names {
            for (key, n) in counts(stats(name)) {
                o.sample(metric, &[("job", name), (label, key)], *n as f64);
            }
        }
    }
    o.family(
        "cairn_job_skipped_runs_total",
        "counter",
        "Scheduled runs skipped because the previous run was still going.",
    );
    for name in &names {
        o.sample(
            "cairn_job_skipped_runs_total",
            &[("job", name), ("reason", "overlap")],
            stats(name).skipped_overlap as f64,
        );
    }
    for (metric, kind, help, value) in [
        (
            "cairn_jobs_running",
            "gauge",
            "Runs in progress on this node.",
            *agent.active.borrow() as f64,
        ),
        (
            "cairn_residency_refusals_total",
            "counter",
            "Storage requests refused by the residency policy (never sent).",
            runs.residency_refusals as f64,
        ),
        (
            "cairn_storage_retries_total",
            "counter",
            "S3 request attempts that were retries, and downloads re-read after a failed body.",
            runs.storage_retries as f64,
        ),
        (
            "cairn_config_loaded_timestamp_seconds",
            "gauge",
            "When the config in force was loaded.",
            loaded.loaded_at.timestamp() as f64,
        ),
    ] {
        o.family(metric, kind, help);
        o.sample(metric, &[], value);
    }
    drop(runs);

    let streams = agent.stream_states();
    for (metric, kind, help, value) in WAL_SERIES {
        o.family(metric, kind, help);
        for (job, s) in &streams {
            let tenant = config.jobs.get(job).map_or("", |j| j.tenant.as_str());
            if let Some(v) = value(s) {
                o.sample(metric, &[("job", job), ("tenant", tenant)], v);
            }
        }
    }

    let records = drills::read(&config.agent.state_dir).unwrap_or_default();
    let mut latest: BTreeMap<&str, &DrillRecord> = BTreeMap::new();
    for r in &records {
        latest.insert(&r.job, r);
    }
    for (metric, help, value) in DRILL_SERIES {
        o.family(metric, "gauge", help);
        for (job, r) in &latest {
            if let Some(v) = value(r) {
                o.sample(metric, &[("job", job)], v);
            }
        }
    }
    o.0
}
