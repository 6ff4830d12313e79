//! `/metrics` in Prometheus's text format, written by hand: a few dozen
//! series do not need a metrics library.

use super::Agent;
use super::drills;
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

/// The agent's metrics.
pub fn render(agent: &Agent) -> String {
    let loaded = agent.loaded();
    let config = &loaded.config;
    let runs = agent.runs.lock().expect("runs");
    let mut o = Out(String::new());
    let jobs: Vec<(&String, &str)> = config
        .jobs
        .iter()
        .map(|(n, j)| (n, j.tenant.as_str()))
        .collect();
    let stats = |name: &str| runs.stats.get(name).cloned().unwrap_or_default();

    o.family(
        "cairn_job_last_success_timestamp_seconds",
        "gauge",
        "End of the job's last successful backup (Unix time); absent before the first.",
    );
    for (job, tenant) in &jobs {
        if let Some(t) = stats(job).last_success {
            o.sample(
                "cairn_job_last_success_timestamp_seconds",
                &[("job", job), ("tenant", tenant)],
                t.timestamp() as f64,
            );
        }
    }
    o.family(
        "cairn_job_last_duration_seconds",
        "gauge",
        "Duration of the job's last backup run.",
    );
    for (job, tenant) in &jobs {
        if let Some(d) = stats(job).last_duration {
            o.sample(
                "cairn_job_last_duration_seconds",
                &[("job", job), ("tenant", tenant)],
                d,
            );
        }
    }
    for (metric, help, pick) in [
        (
            "cairn_job_read_bytes_total",
            "Bytes the job's backups read.",
            0,
        ),
        (
            "cairn_job_new_bytes_total",
            "Bytes the job's backups found new (not deduplicated).",
            1,
        ),
        (
            "cairn_job_uploaded_bytes_total",
            "Bytes the job's backups stored (compressed, encrypted).",
            2,
        ),
    ] {
        o.family(metric, "counter", help);
        for (job, tenant) in &jobs {
            let s = stats(job);
            let v = [s.bytes_read, s.bytes_new, s.bytes_stored][pick];
            o.sample(metric, &[("job", job), ("tenant", tenant)], v as f64);
        }
    }
    o.family(
        "cairn_job_dedup_ratio",
        "gauge",
        "Bytes read per new byte in the job's last successful backup.",
    );
    for (job, tenant) in &jobs {
        if let Some(r) = stats(job).dedup_ratio {
            o.sample(
                "cairn_job_dedup_ratio",
                &[("job", job), ("tenant", tenant)],
                r,
            );
        }
    }
    o.family(
        "cairn_job_failures_total",
        "counter",
        "Runs of the job (or group) that did not succeed, by reason.",
    );
    let names: Vec<&String> = config.jobs.keys().chain(config.groups.keys()).collect();
    for name in &names {
        for (reason, n) in &stats(name).failures {
            o.sample(
                "cairn_job_failures_total",
                &[("job", name), ("reason", reason)],
                *n as f64,
            );
        }
    }
    o.family(
        "cairn_job_runs_total",
        "counter",
        "Ended runs of the job (or group), by status.",
    );
    for name in &names {
        for (status, n) in &stats(name).ended {
            o.sample(
                "cairn_job_runs_total",
                &[("job", name), ("status", status)],
                *n as f64,
            );
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
    o.family(
        "cairn_jobs_running",
        "gauge",
        "Runs in progress on this node.",
    );
    o.sample("cairn_jobs_running", &[], *agent.active.borrow() as f64);
    o.family(
        "cairn_residency_refusals_total",
        "counter",
        "Storage requests refused by the residency policy (never sent).",
    );
    o.sample(
        "cairn_residency_refusals_total",
        &[],
        runs.residency_refusals as f64,
    );
    o.family(
        "cairn_storage_retries_total",
        "counter",
        "S3 request attempts that were retries, and downloads re-read after a failed body.",
    );
    o.sample(
        "cairn_storage_retries_total",
        &[],
        runs.storage_retries as f64,
    );
    drop(runs);

    let records = drills::read(&config.agent.state_dir).unwrap_or_default();
    let mut latest: std::collections::BTreeMap<&str, &drills::DrillRecord> = Default::default();
    for r in &records {
        latest.insert(&r.job, r);
    }
    o.family(
        "cairn_drill_passed",
        "gauge",
        "1 if the job's last restore drill passed, else 0.",
    );
    for (job, r) in &latest {
        o.sample(
            "cairn_drill_passed",
            &[("job", job)],
            if r.passed { 1.0 } else { 0.0 },
        );
    }
    o.family(
        "cairn_drill_rpo_seconds",
        "gauge",
        "Age of the snapshot the last drill restored (achieved recovery point).",
    );
    for (job, r) in &latest {
        if let Some(rpo) = r.rpo_seconds {
            o.sample("cairn_drill_rpo_seconds", &[("job", job)], rpo);
        }
    }
    o.family(
        "cairn_drill_rto_seconds",
        "gauge",
        "Time the last drill took to restore and verify (achieved recovery time).",
    );
    for (job, r) in &latest {
        o.sample("cairn_drill_rto_seconds", &[("job", job)], r.rto_seconds);
    }
    o.family(
        "cairn_drill_last_timestamp_seconds",
        "gauge",
        "End of the job's last drill (Unix time).",
    );
    for (job, r) in &latest {
        o.sample(
            "cairn_drill_last_timestamp_seconds",
            &[("job", job)],
            r.finished.timestamp() as f64,
        );
    }
    o.family(
        "cairn_config_loaded_timestamp_seconds",
        "gauge",
        "When the config in force was loaded.",
    );
    o.sample(
        "cairn_config_loaded_timestamp_seconds",
        &[],
        loaded.loaded_at.timestamp() as f64,
    );
    o.0
}
