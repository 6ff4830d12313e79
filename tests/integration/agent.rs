//! `cairn agent`, started as operators start it, driven over real HTTP
//! (ureq) and real signals: schedules seconds apart, group order and
//! hooks, overlap skipped, retention and prune, drills, the API's tokens
//! and limits, SIGHUP reload, SIGTERM grace and abort, a stale lock left
//! by a killed agent.

use crate::common::{PASSWORD, Scratch, assert_same_tree, cache_dir, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

/// A running agent and the files around it.
pub(crate) struct Agent {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

/// The config's fixed part: tenant `acme` on the scratch repository, the
/// API on a port the system chooses (the agent logs the one it got),
/// `extra` appended (jobs, groups, agent keys).
fn write_config(s: &Scratch, agent_extra: &str, extra: &str) -> PathBuf {
    std::fs::write(s.path("password"), PASSWORD).unwrap();
    std::fs::write(s.path("token"), TOKEN).unwrap();
    let config = s.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "audit-log = {audit:?}\n[agent]\nlisten = \"127.0.0.1:0\"\napi-token-file = {token:?}\nstate-dir = {state:?}\n{grace}{agent_extra}\n\n[tenants.acme]\nrepository = {repo:?}\npassword-file = {pw:?}\n\n{extra}",
            audit = s.path("audit.jsonl"),
            token = s.path("token"),
            state = s.path("state"),
            repo = s.repo(),
            pw = s.path("password"),
            grace = if agent_extra.contains("shutdown-grace-secs") {
                ""
            } else {
                "shutdown-grace-secs = 20\n"
            },
        ),
    )
    .unwrap();
    config
}

impl Agent {
    fn start(s: &Scratch, config: &Path) -> Agent {
        let log = s.path(&format!("agent-{}.log", rand_suffix()));
        let child = Command::new(crate::common::cairn_bin())
            .args(["agent", "--config", config.to_str().unwrap()])
            .env("CAIRN_CACHE_DIR", cache_dir())
            .env_remove("CAIRN_REPOSITORY")
            .env_remove("CAIRN_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Agent {
            child: Some(child),
            port: 0,
            config: config.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.port == 0 {
                agent.port = agent.listening_port().unwrap_or(0);
            }
            if agent.port != 0 && agent.get_no_token("/readyz").0 == 200 {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not become ready: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port the agent's log says the API listens on.
    fn listening_port(&self) -> Option<u16> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("API listening."))?;
        let address = line.split("address=").nth(1)?.split_whitespace().next()?;
        address.rsplit(':').next()?.parse().ok()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub(crate) fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.call("GET", path, Some(TOKEN), None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn get_no_token(&self, path: &str) -> (u16, serde_json::Value) {
        match ureq::get(&self.url(path))
            .timeout(Duration::from_secs(5))
            .call()
        {
            Ok(r) => (r.status(), serde_json::Value::Null),
            Err(ureq::Error::Status(c, _)) => (c, serde_json::Value::Null),
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    pub(crate) fn metrics(&self) -> String {
        let (status, body) = self.call("GET", "/metrics", Some(TOKEN), None);
        assert_eq!(status, 200);
        body.as_str().unwrap().to_string()
    }

    /// Start a run of `job` through the API and wait for its end.
    pub(crate) fn run_job(&self, job: &str) -> serde_json::Value {
        let (status, body) = self.call("POST", &format!("/v1/jobs/{job}/run"), Some(TOKEN), None);
        assert_eq!(status, 202, "{body}");
        self.wait_run(body["run"]["id"].as_str().unwrap())
    }

    /// Wait until run `id` is `running` (the group's quiesce hook, say,
    /// has started); its record then.
    pub(crate) fn wait_running(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.get(&format!("/v1/runs/{id}"))["run"].clone();
            if run["status"] == "running" {
                return run;
            }
            assert!(
                run["status"] == "queued" && Instant::now() < deadline,
                "run {id} did not start: {run}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait_run(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let run = self.get(&format!("/v1/runs/{id}"))["run"].clone();
            if !["queued", "running"].contains(&run["status"].as_str().unwrap()) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not end: {run}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig)
            .unwrap();
    }

    /// Send SIGTERM and wait for the exit; its code.
    pub(crate) fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal(rustix::process::Signal::TERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent did not exit within {within:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        Instant::now().elapsed().as_nanos()
            ^ std::process::id() as u128
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos())
    )
}

fn init_tenant(s: &Scratch, config: &Path) {
    s.cairn_config_ok(config, &["init", "--tenant", "acme"]);
}

/// Write the config, create the tenant's
/// repository unless it exists, and start the agent.
pub(crate) fn start_agent(s: &Scratch, agent_extra: &str, jobs: &str) -> Agent {
    let config = write_config(s, agent_extra, jobs);
    if !s.repo().join("config").exists() {
        init_tenant(s, &config);
    }
    Agent::start(s, &config)
}

/// The run the agent recorded in its history under `id`.
fn history_run(s: &Scratch, id: &str) -> serde_json::Value {
    std::fs::read_to_string(s.path("state/runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("run {id} is not in the history"))
}

fn snapshots_of(s: &Scratch, config: &Path, job: &str) -> Vec<serde_json::Value> {
    let out = s.cairn_config_ok(config, &["--tenant", "acme", "snapshots", "--json"]);
    crate::common::last_json(&out)
        .as_array()
        .expect("a list of snapshots")
        .iter()
        .filter(|v| v["cairn_job"] == job)
        .cloned()
        .collect()
}

fn lock_files(s: &Scratch) -> usize {
    std::fs::read_dir(s.repo().join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
}

pub(crate) fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn agent_runs_on_schedule_keeps_group_order_skips_overlaps_and_applies_retention() {
    let (s, src) = Scratch::with_fixture();
    let hooks = s.path("hooks.log");
    let mut agent = start_agent(
        &s,
        "",
        &format!(
            r#"
[jobs.files]
tenant = "acme"
paths = [{src:?}]
schedule = "*/2 * * * * *"
retention = {{ keep-last = 2, prune = true }}

[jobs.first]
tenant = "acme"
paths = [{src:?}]
tags = ["first"]
drill = {{ schedule = "*/4 * * * * *" }}

[jobs.second]
tenant = "acme"
paths = [{src:?}]
tags = ["second"]

[groups.app]
jobs = ["first", "second"]
schedule = "*/3 * * * * *"
quiesce = ["sh", "-c", "echo quiesce $(date +%s.%N) >> {hooks}; sleep 4"]
release = ["sh", "-c", "echo release $(date +%s.%N) >> {hooks}"]
"#,
            hooks = hooks.display()
        ),
    );
    let config = agent.config.clone();
    // Wait (on a loaded machine, runs take longer) for three runs of
    // `files`, a whole run of the group and a skipped one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (files, group) = loop {
        let jobs = agent.get("/v1/jobs");
        let files = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "files")
            .unwrap()
            .clone();
        let group = jobs["groups"][0].clone();
        let ended = |v: &serde_json::Value| {
            v["recent_runs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["status"] == "succeeded")
                .count()
        };
        let drilled = agent.get("/v1/drills?job=first")["drills"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["passed"] == true);
        if ended(&files) >= 3
            && ended(&group) >= 1
            && group["skipped_runs"].as_u64().unwrap() >= 1
            && drilled
        {
            break (files, group);
        }
        assert!(
            Instant::now() < deadline,
            "not enough runs: {files}\n{group}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The scheduled drill restored the first job's snapshot and said how
    // old it was and how long it took.
    let metrics = agent.metrics();
    assert_eq!(
        metric(&metrics, "cairn_drill_passed{job=\"first\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(metric(&metrics, "cairn_drill_rpo_seconds{job=\"first\"}").unwrap() >= 0.0);
    assert!(metric(&metrics, "cairn_drill_rto_seconds{job=\"first\"}").unwrap() > 0.0);
    assert_eq!(
        agent.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        agent.log()
    );

    // Runs happen on time: every scheduled run of `files` was asked for
    // shortly after an even second (the bound allows for a machine loaded
    // by the other tests; a schedule read wrongly would be off by whole
    // seconds).
    let runs = files["recent_runs"].as_array().unwrap();
    for r in runs {
        let t = time(&r["queued_at"]);
        assert_eq!(r["trigger"], "schedule");
        let late = (chrono::Timelike::second(&t) % 2) as f64
            + chrono::Timelike::nanosecond(&t) as f64 / 1e9;
        assert!(
            late < 1.5,
            "run queued at {t}, {late:.3}s after a */2 second"
        );
    }
    for pair in runs.windows(2) {
        let gap = time(&pair[0]["queued_at"]) - time(&pair[1]["queued_at"]);
        assert!(
            gap >= chrono::Duration::milliseconds(1500),
            "runs {gap} apart on a */2 schedule: {files}"
        );
    }
    assert!(
        runs.iter()
            .all(|r| ["succeeded", "running", "queued"].contains(&r["status"].as_str().unwrap())),
        "{files}"
    );

    // The group: its jobs in order, inside its hooks; runs that came
    // while it was still in its 4 s quiesce were skipped and counted.
    let group_runs = group["recent_runs"].as_array().unwrap();
    let done = group_runs
        .iter()
        .find(|r| r["status"] == "succeeded")
        .unwrap_or_else(|| panic!("no group run ended: {group}"));
    assert!(
        group["skipped_runs"].as_u64().unwrap() >= 1,
        "no overlap skipped: {group}"
    );
    let ids: Vec<&str> = done["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let (first, second) = (history_run(&s, ids[0]), history_run(&s, ids[1]));
    assert_eq!(
        (first["job"].as_str(), second["job"].as_str()),
        (Some("first"), Some("second"))
    );
    assert!(
        time(&first["finished_at"]) <= time(&second["started_at"]),
        "{first}\n{second}"
    );
    let hook_lines = std::fs::read_to_string(&hooks).unwrap();
    let stamps: Vec<(String, f64)> = hook_lines
        .lines()
        .map(|l| {
            let (what, t) = l.split_once(' ').unwrap();
            (what.to_string(), t.parse().unwrap())
        })
        .collect();
    let epoch = |v: &serde_json::Value| time(v).timestamp_micros() as f64 / 1e6;
    let quiesced = stamps
        .iter()
        .rfind(|(w, t)| w == "quiesce" && *t <= epoch(&first["started_at"]))
        .unwrap();
    let released = stamps
        .iter()
        .find(|(w, t)| w == "release" && *t >= epoch(&second["finished_at"]))
        .unwrap();
    assert!(quiesced.1 + 4.0 <= epoch(&first["started_at"]) + 0.5 && released.1 > quiesced.1);

    // Snapshot times agree: the first job's snapshot is older.
    let first_snap = snapshots_of(&s, &config, "first");
    let second_snap = snapshots_of(&s, &config, "second");
    assert!(time(&first_snap[0]["time"]) < time(&second_snap[0]["time"]));

    // Retention kept the two newest snapshots of `files`, pruned, and the
    // repository is whole for restic.
    let kept = snapshots_of(&s, &config, "files");
    assert_eq!(kept.len(), 2, "{kept:?}");
    s.restic_ok(&["check", "--read-data"]);
    assert_eq!(lock_files(&s), 0);
}

#[test]
fn api_needs_the_token_and_runs_restores_and_reports_drills_and_metrics() {
    let (s, src) = Scratch::with_fixture();
    let agent = start_agent(
        &s,
        "api-rate-per-sec = 25",
        &format!("[jobs.docs]\ntenant = \"acme\"\npaths = [{src:?}]\n"),
    );
    let config = agent.config.clone();

    // Health without a token; everything else needs the right one.
    assert_eq!(agent.get_no_token("/healthz").0, 200);
    let (status, body) = agent.call("GET", "/v1/jobs", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token")),
        "{body}"
    );
    let (status, body) = agent.call("GET", "/v1/jobs", Some("test-token-0123456789abcdeX"), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    let (status, _) = agent.call("GET", "/metrics", Some("nope"), None);
    assert_eq!(status, 401);
    let (status, body) = agent.call("POST", "/v1/jobs/nope/run", Some(TOKEN), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );

    // A run through the API, then its snapshot through the API.
    let run = agent.run_job("docs");
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["summary"]["snapshot_id"].as_str().unwrap().to_string();
    assert!(run["summary"]["bytes_read"].as_u64().unwrap() > 0);
    let (status, body) = agent.call("GET", "/v1/snapshots", Some(TOKEN), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("tenant_required"))
    );
    let snaps = agent.get("/v1/snapshots?tenant=acme");
    assert_eq!(snaps["snapshots"][0]["id"], id.as_str(), "{snaps}");

    // A restore through the API, compared with diff's view of the tree.
    let (status, body) = agent.call(
        "POST",
        "/v1/restores",
        Some(TOKEN),
        Some(r#"{"job": "docs", "target": "r1"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let restored = agent.wait_run(body["run"]["id"].as_str().unwrap());
    assert_eq!(restored["status"], "succeeded", "{restored}");
    let landed = s
        .path("state/restores/r1")
        .join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &landed);
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(&landed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Bad restores: outside the root, not JSON, too big.
    let (status, body) = agent.call(
        "POST",
        "/v1/restores",
        Some(TOKEN),
        Some(r#"{"job": "docs", "target": "/etc/cairn-x"}"#),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = agent.call(
        "POST",
        "/v1/restores",
        Some(TOKEN),
        Some(r#"{"job": "docs", "target": "r1/deeper"}"#),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = agent.call(
        "POST",
        "/v1/restores",
        Some(TOKEN),
        Some(r#"{"job": "docs", "target": "r1"}"#),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "a restore never writes into an existing directory: {body}"
    );
    let (status, body) = agent.call("POST", "/v1/restores", Some(TOKEN), Some("{not json"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{body}"
    );
    let big = format!(r#"{{"job": "docs", "target": "{}"}}"#, "x".repeat(70_000));
    let (status, body) = agent.call("POST", "/v1/restores", Some(TOKEN), Some(&big));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );

    // A drill by hand is recorded where the agent reads it.
    s.cairn_config_ok(&config, &["drill", "docs"]);
    let drills = agent.get("/v1/drills?job=docs");
    let d = &drills["drills"][0];
    assert_eq!(
        (d["passed"].as_bool(), d["snapshot_id"].as_str()),
        (Some(true), Some(id.as_str())),
        "{drills}"
    );
    assert!(d["rpo_seconds"].as_f64().unwrap() >= 0.0 && d["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(d["entries"].as_u64().unwrap() > 5, "{d}");
    assert_eq!(
        std::fs::read_dir(s.path("state/drills")).unwrap().count(),
        0,
        "the scratch directory is removed"
    );

    let metrics = agent.metrics();
    for series in [
        "cairn_job_last_success_timestamp_seconds{job=\"docs\",tenant=\"acme\"}",
        "cairn_job_last_duration_seconds{job=\"docs\",tenant=\"acme\"}",
        "cairn_job_read_bytes_total{job=\"docs\",tenant=\"acme\"}",
        "cairn_job_uploaded_bytes_total{job=\"docs\",tenant=\"acme\"}",
        "cairn_job_dedup_ratio{job=\"docs\",tenant=\"acme\"}",
        "cairn_drill_rpo_seconds{job=\"docs\"}",
        "cairn_drill_rto_seconds{job=\"docs\"}",
        "cairn_drill_passed{job=\"docs\"}",
        "cairn_residency_refusals_total",
        "cairn_storage_retries_total",
    ] {
        assert!(
            metric(&metrics, series).is_some(),
            "{series} missing from:\n{metrics}"
        );
    }
    assert!(
        metric(
            &metrics,
            "cairn_job_read_bytes_total{job=\"docs\",tenant=\"acme\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        metric(&metrics, "cairn_drill_passed{job=\"docs\"}"),
        Some(1.0)
    );

    // The served OpenAPI document is the committed one.
    let served = agent.get("/v1/openapi.json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);

    // A client that floods is slowed down, with a JSON error.
    let codes: Vec<u16> = (0..120)
        .map(|_| agent.call("GET", "/v1/drills", Some(TOKEN), None).0)
        .collect();
    assert!(codes.contains(&429), "no request was limited: {codes:?}");
    let (_, body) = (0..200)
        .map(|_| agent.call("GET", "/v1/drills", Some(TOKEN), None))
        .find(|(c, _)| *c == 429)
        .unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        agent.get_no_token("/healthz").0,
        200,
        "probes are never limited"
    );
}

#[test]
fn sighup_takes_a_valid_config_and_refuses_an_invalid_one() {
    let (s, src) = Scratch::with_fixture();
    let job = |name: &str| format!("[jobs.{name}]\ntenant = \"acme\"\npaths = [{src:?}]\n");
    let mut agent = start_agent(&s, "", &job("alpha"));
    let config = agent.config.clone();
    let names = |agent: &Agent| -> Vec<String> {
        agent.get("/v1/jobs")["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&agent), ["alpha"]);

    // Invalid: refused with the reason logged, the old config stays.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{good}{}schedule = \"not a cron\"\n", job("beta")),
    )
    .unwrap();
    agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains("job beta: schedule"),
        "{}",
        agent.log()
    );
    assert_eq!(names(&agent), ["alpha"]);
    assert_eq!(agent.run_job("alpha")["status"], "succeeded");

    // Valid: the next runs use it.
    std::fs::write(&config, format!("{good}{}", job("beta"))).unwrap();
    agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&agent) != ["alpha", "beta"] {
        assert!(
            Instant::now() < deadline,
            "the new config was not taken:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.run_job("beta")["status"], "succeeded");
    assert_eq!(agent.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(snapshots_of(&s, &agent.config, "beta").len(), 1);
}

/// A job whose adapter never ends (the faulty adapter's busy loop).
fn endless_job(name: &str, extra: &str) -> String {
    format!(
        "[jobs.{name}]\ntenant = \"acme\"\nadapter = {:?}\nconfig = {{ fault = \"loop\" }}\n{extra}\n",
        cairn::runtime::bundled::FAULTY_PATH
    )
}

#[test]
fn timeout_and_sigterm_stop_runs_without_a_snapshot_and_the_agent_exits_0() {
    let s = Scratch::new();
    let mut agent = start_agent(
        &s,
        "shutdown-grace-secs = 2",
        &format!(
            "{}{}",
            endless_job("slow", "timeout-secs = 3"),
            endless_job("endless", "")
        ),
    );

    let run = agent.run_job("slow");
    assert_eq!(run["status"], "timed-out", "{run}");
    assert!(run["error"].as_str().unwrap().contains("timeout"), "{run}");
    assert_eq!(run["reason"], "timeout");
    assert_eq!(
        metric(
            &agent.metrics(),
            "cairn_job_failures_total{job=\"slow\",reason=\"timeout\"}"
        ),
        Some(1.0)
    );

    // A second run while one is going is refused.
    let (status, body) = agent.call("POST", "/v1/jobs/endless/run", Some(TOKEN), None);
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_str().unwrap().to_string();
    let (status, body) = agent.call("POST", "/v1/jobs/endless/run", Some(TOKEN), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_running"))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock_files(&s) == 0 {
        assert!(Instant::now() < deadline, "the run took no lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    assert_eq!(
        agent.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        agent.log()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the grace period was not given"
    );
    let last = history_run(&s, &id);
    assert_eq!(last["status"], "aborted", "{last}");
    // Nothing recorded, nothing locked.
    assert_eq!(s.snapshot_count(), 0);
    assert_eq!(lock_files(&s), 0);
    let out = s.cairn(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_lock_left_by_a_killed_agent_and_its_job_is_cleared_by_the_next_agent() {
    let (s, src) = Scratch::with_fixture();
    let agent = start_agent(
        &s,
        "",
        &format!(
            "{}[jobs.files]\ntenant = \"acme\"\npaths = [{src:?}]\n",
            endless_job("endless", "")
        ),
    );
    let (status, _) = agent.call("POST", "/v1/jobs/endless/run", Some(TOKEN), None);
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock_files(&s) == 0 {
        assert!(Instant::now() < deadline, "the run took no lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent and its job process die at once, as in a power cut.
    let children = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .flat_map(|t| {
            std::fs::read_to_string(t.unwrap().path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    assert!(!children.is_empty());
    for c in &children {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(c.parse().unwrap()).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    agent.signal(rustix::process::Signal::KILL);
    drop(agent);
    assert_eq!(lock_files(&s), 1, "the killed job left its lock");

    // The next agent's backup finds the lock stale (its process is gone)
    // and removes it.
    let mut agent = start_agent(
        &s,
        "",
        &format!("[jobs.files]\ntenant = \"acme\"\npaths = [{src:?}]\n"),
    );
    let run = agent.run_job("files");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", agent.log());
    assert_eq!(agent.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(lock_files(&s), 0, "{}", agent.log());
    let landed = s.restore_latest("restored", &src);
    assert_same_tree(&src, &landed);
}

#[test]
fn the_newest_snapshot_that_passed_a_drill_survives_retention() {
    let (s, src) = Scratch::with_fixture();
    let config = write_config(
        &s,
        "",
        &format!("[jobs.files]\ntenant = \"acme\"\npaths = [{src:?}]\n"),
    );
    s.cairn_config_ok(&config, &["backup", "--job", "files"]);
    let drilled = snapshots_of(&s, &config, "files")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = s.cairn_config_ok(&config, &["--json", "drill", "files"]);
    let record = crate::common::last_json(&out);
    assert_eq!(record["passed"], true, "{record}");
    for i in 0..2 {
        std::fs::write(src.join(format!("new-{i}")), format!("{i}")).unwrap();
        s.cairn_config_ok(&config, &["backup", "--job", "files"]);
    }
    let out = s.cairn_config_ok(
        &config,
        &[
            "--tenant",
            "acme",
            "forget",
            "--keep-last",
            "1",
            "--job",
            "files",
        ],
    );
    assert!(out.contains("restore drill"), "{out}");
    let left: Vec<String> = snapshots_of(&s, &config, "files")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&drilled),
        "the drilled snapshot was forgotten: {left:?}"
    );

    // A drill that finds damage fails and says so: a data pack is cut short.
    let pack = crate::common::packs(&s.repo())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(len / 2).unwrap();
    let out = s.cairn_config(&config, &["drill", "files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(s.path("state/drills.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.last().unwrap()["passed"], false);
    assert!(
        records.last().unwrap()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{:?}",
        records.last()
    );
}

#[test]
fn sigterm_lets_a_running_group_finish_within_the_grace_period() {
    let (s, src) = Scratch::with_fixture();
    let mut agent = start_agent(
        &s,
        "",
        &format!(
            "[jobs.files]\ntenant = \"acme\"\npaths = [{src:?}]\n\n[groups.window]\njobs = [\"files\"]\nschedule = \"@yearly\"\nquiesce = [\"sleep\", \"2\"]\n"
        ),
    );
    let config = agent.config.clone();
    let (status, body) = agent.call("POST", "/v1/jobs/window/run", Some(TOKEN), None);
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_str().unwrap().to_string();
    agent.wait_running(&id);
    // Stopping: no new runs, but the running one finishes (grace: 20 s).
    assert_eq!(
        agent.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        agent.log()
    );
    let group = history_run(&s, &id);
    assert_eq!(group["status"], "succeeded", "{group}");
    assert_eq!(snapshots_of(&s, &config, "files").len(), 1);
    let landed = s.restore_latest("restored", &src);
    assert_same_tree(&src, &landed);
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    // schemathesis (tests/run installs it) generates requests from
    // docs/openapi.json, valid and not, and checks every answer against
    // it: status codes, content types, response schemas, no server errors.
    let (s, src) = Scratch::with_fixture();
    let agent = start_agent(
        &s,
        "api-rate-per-sec = 1000",
        &format!("[jobs.docs]\ntenant = \"acme\"\npaths = [{src:?}]\n"),
    );
    let out = Command::new("schemathesis")
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"),
        ])
        .args(["--url", &agent.url("")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache stays in the scratch directory, not in the checkout.
        .current_dir(s.dir.path())
        .output()
        .expect("run schemathesis (tests/run installs it with pip)");
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log());
}

#[test]
fn a_pinned_adapter_runs_only_with_its_sha256_and_check_config_names_what_is_wrong() {
    use sha2::Digest;
    let s = Scratch::new();
    let component = std::fs::read(cairn::runtime::bundled::FAULTY_PATH).unwrap();
    let right = hex::encode(sha2::Sha256::digest(&component));
    let wrong = "0".repeat(64);
    let job = |pin: &str| {
        format!(
            "[jobs.pinned]\ntenant = \"acme\"\nadapter = {:?}\nadapter-sha256 = \"{pin}\"\nconfig = {{ fault = \"none\" }}\n",
            cairn::runtime::bundled::FAULTY_PATH
        )
    };
    let config = write_config(&s, "", &job(&wrong));
    init_tenant(&s, &config);
    let out = s.cairn_config(&config, &["backup", "--job", "pinned"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("has SHA-256 {right}, but the job pins {wrong}")),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);
    let config = write_config(&s, "", &job(&right));
    s.cairn_config_ok(&config, &["backup", "--job", "pinned"]);
    assert_eq!(s.snapshot_count(), 1);

    // `agent --check-config` validates without starting anything.
    let out = s.cairn_config_ok(&config, &["agent", "--check-config"]);
    assert!(out.contains("is valid: 1 jobs, 0 groups"), "{out}");
    let bad = write_config(
        &s,
        "",
        &format!("{}schedule = \"0 25 * * *\"\n", job(&right)),
    );
    let out = s.cairn_config(&bad, &["agent", "--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("job pinned: schedule \"0 25 * * *\""),
        "{}",
        text(&out)
    );
    // A job whose adapter did not make its snapshot is not drilled with it.
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let other = write_config(
        &s,
        "",
        &format!("[jobs.pinned]\ntenant = \"acme\"\npaths = [{src:?}]\n"),
    );
    let out = s.cairn_config(&other, &["drill", "pinned"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("drill of job pinned")
            && text(&out).contains(
                "was made by adapter cairn_test_adapter_faulty, but job pinned uses filesystem"
            ),
        "{}",
        text(&out)
    );
}

#[test]
fn runs_beyond_the_node_wide_cap_wait_their_turn() {
    let (s, src) = Scratch::with_fixture();
    let mut extra = String::new();
    for g in ["one", "two"] {
        extra.push_str(&format!(
            "[jobs.{g}-files]\ntenant = \"acme\"\npaths = [{src:?}]\n\n[groups.{g}]\njobs = [\"{g}-files\"]\nschedule = \"@yearly\"\nquiesce = [\"sleep\", \"2\"]\n\n"
        ));
    }
    let agent = start_agent(&s, "max-concurrent-jobs = 1", &extra);
    let mut ids = Vec::new();
    for g in ["one", "two"] {
        let (status, body) = agent.call("POST", &format!("/v1/jobs/{g}/run"), Some(TOKEN), None);
        assert_eq!(status, 202, "{body}");
        ids.push(body["run"]["id"].as_str().unwrap().to_string());
    }
    // Whichever got the slot runs (its quiesce hook takes 2 s); the other
    // waits for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids
        .iter()
        .any(|id| agent.get(&format!("/v1/runs/{id}"))["run"]["status"] == "running")
    {
        assert!(
            Instant::now() < deadline,
            "no run started:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let states: Vec<String> = ids
        .iter()
        .map(|id| {
            agent.get(&format!("/v1/runs/{id}"))["run"]["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        states.contains(&"running".to_string()) && states.contains(&"queued".to_string()),
        "one runs, one waits: {states:?}"
    );
    let runs: Vec<serde_json::Value> = ids.iter().map(|id| agent.wait_run(id)).collect();
    for r in &runs {
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let (a, b) = (&runs[0], &runs[1]);
    let apart = time(&a["finished_at"]) <= time(&b["started_at"])
        || time(&b["finished_at"]) <= time(&a["started_at"]);
    assert!(apart, "the runs overlapped under a cap of 1:\n{a}\n{b}");
}
