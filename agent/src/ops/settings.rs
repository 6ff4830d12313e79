//! Every job's adapter settings, checked by the adapter itself before any
//! job runs (`configuration.check`, WIT 0.3.0), and the one rule the host
//! keeps across jobs: a drill never writes what a job backs up.
//!
//! The host knows no service. Each adapter says what a job's settings read
//! and what its drill writes, as resource names of its choosing
//! (`redis://10.0.0.5:6379/3`); the host only compares names, where one
//! ending in `/` covers every name that starts with it.

use crate::config::{Config, JobConfig};
use crate::runtime::{AdapterSource, Footprint, Runtime};
use anyhow::anyhow;

/// What checking a config found that does not refuse it.
#[derive(Debug, Default)]
pub struct Checked {
    /// Jobs whose adapter checked their settings.
    pub checked: Vec<String>,
    /// Jobs whose adapter could not be asked, and why: a component file
    /// that is missing or not the pinned one (the job fails when it runs),
    /// one built before WIT 0.3.0 (it checks its settings when it runs),
    /// or one that failed while checking (a trap, its deadline).
    pub unchecked: Vec<String>,
    /// Jobs whose adapter refuses their settings, and why: each fails when
    /// it runs, as it would have without the check; the other jobs run.
    pub refused: Vec<String>,
}

/// What one job's adapter said of its settings.
enum Asked {
    /// They are valid, and touch this.
    Valid(Footprint),
    /// The adapter could not be asked, or failed while answering; why.
    Unchecked(String),
    /// The adapter refused the job's own settings (`invalid-config`...).
    Refused(anyhow::Error),
    /// It accepts the job's settings but refuses its drill's.
    DrillRefused(anyhow::Error),
}

/// Whether an adapter call failed with the adapter's own error (its
/// answer), rather than a trap, a timeout or a link failure.
fn answered(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::runtime::AdapterFailure>().is_some()
}

/// Ask each job's adapter about the job's settings, then about its
/// drill's (apart, so that the answer says which is refused).
async fn ask(config: &Config) -> Result<Vec<(&str, Asked)>, super::Error> {
    let runtime = Runtime::new().map_err(super::Error::Local)?;
    let mut asked = Vec::new();
    for (name, job) in &config.jobs {
        let source = AdapterSource::parse(&job.adapter).pinned(job.adapter_sha256.as_deref());
        let adapter = source.name();
        let (component, (settings, drill_set)) = match (runtime.load(&source), settings(job)) {
            (Err(e), _) => {
                asked.push((
                    name.as_str(),
                    Asked::Unchecked(format!("job {name}: {e:#}")),
                ));
                continue;
            }
            (_, Err(e)) => {
                asked.push((name.as_str(), Asked::Refused(e)));
                continue;
            }
            (Ok(c), Ok(s)) => (c, s),
        };
        let own = runtime
            .check_config(&adapter, &component, &settings, None)
            .await;
        let answer = match own {
            Ok(None) => Asked::Unchecked(format!(
                "job {name}: adapter {adapter} predates WIT 0.3.0 and checks its settings only when it runs"
            )),
            Err(e) if answered(&e) => Asked::Refused(e),
            Err(e) => Asked::Unchecked(format!("job {name}: {e:#}")),
            Ok(Some(f)) => match &drill_set {
                None => Asked::Valid(f),
                Some(set) => match runtime
                    .check_config(&adapter, &component, &settings, Some(set))
                    .await
                {
                    Ok(f) => Asked::Valid(f.unwrap_or_default()),
                    Err(e) if answered(&e) => Asked::DrillRefused(e),
                    Err(e) => Asked::Unchecked(format!("job {name}: {e:#}")),
                },
            },
        };
        asked.push((name.as_str(), answer));
    }
    Ok(asked)
}

/// Ask each job's adapter to check the job's settings. A job whose own
/// settings are refused is reported (it fails when it runs, the others
/// run); a drill the adapter refuses, or one that writes what any job
/// backs up, refuses the config, naming the job (and the other job).
pub async fn check(config: &Config) -> Result<Checked, super::Error> {
    let mut checked = Checked::default();
    let mut footprints = Vec::new();
    for (name, answer) in ask(config).await? {
        match answer {
            Asked::Valid(f) => {
                checked.checked.push(name.to_string());
                footprints.push((name, f));
            }
            Asked::Unchecked(why) => checked.unchecked.push(why),
            Asked::Refused(e) => checked.refused.push(format!("job {name}: {e:#}")),
            Asked::DrillRefused(e) => return Err(invalid(name, e)),
        }
    }
    apart(&footprints, None)?;
    Ok(checked)
}

/// Before a drill of `job`: refuse it unless its adapter accepts the
/// job's and the drill's settings and the drill writes nothing any job
/// backs up. Returns what the drill's adapter said the settings touch
/// (`None`: a component built before WIT 0.3.0, which cannot say). Other
/// jobs' own faults are theirs.
pub async fn check_drill(config: &Config, job: &str) -> Result<Option<Footprint>, super::Error> {
    let mut footprints = Vec::new();
    let mut own = None;
    let mut old = false;
    for (name, answer) in ask(config).await? {
        match answer {
            Asked::Valid(f) => {
                if name == job {
                    own = Some(f.clone());
                }
                footprints.push((name, f));
            }
            Asked::Refused(e) | Asked::DrillRefused(e) if name == job => {
                return Err(invalid(name, e));
            }
            Asked::Unchecked(why) if name == job => {
                if !why.contains("predates WIT 0.3.0") {
                    return Err(super::Error::Invalid(format!(
                        "{why}; a drill runs only once its adapter has checked its settings"
                    )));
                }
                old = true;
            }
            _ => {}
        }
    }
    apart(&footprints, Some(job))?;
    Ok(if old { None } else { own })
}

fn invalid(job: &str, e: anyhow::Error) -> super::Error {
    super::Error::Invalid(format!("job {job}: {e:#}"))
}

/// The job's adapter configuration and its drill's overrides, as the JSON
/// the adapter reads.
fn settings(job: &JobConfig) -> anyhow::Result<(String, Option<String>)> {
    let json = |t: &toml::Table| {
        serde_json::to_string(t).map_err(|e| anyhow!("its settings cannot be given as JSON: {e}"))
    };
    let config = match &job.config {
        Some(c) => json(c)?,
        None => "{}".into(),
    };
    let drill_set = match &job.drill {
        Some(d) => Some(json(&d.set.clone().unwrap_or_default())?),
        None => None,
    };
    Ok((config, drill_set))
}

/// Whether resource names `a` and `b` name anything in common.
fn overlap(a: &str, b: &str) -> bool {
    a == b || (a.ends_with('/') && b.starts_with(a)) || (b.ends_with('/') && a.starts_with(b))
}

/// Refuse a drill (of `only`, or of any job) that writes what a job backs
/// up, naming both jobs.
fn apart(footprints: &[(&str, Footprint)], only: Option<&str>) -> Result<(), super::Error> {
    for (drilled, f) in footprints {
        if only.is_some_and(|j| j != *drilled) {
            continue;
        }
        for written in &f.writes {
            for (other, o) in footprints {
                if let Some(read) = o.reads.iter().find(|r| overlap(written, r)) {
                    let whose = if other == drilled {
                        "the job's own backup".to_string()
                    } else {
                        format!("job {other}")
                    };
                    return Err(super::Error::Invalid(format!(
                        "job {drilled}: its drill writes {written}, which {whose} reads ({read}); give the drill a scratch target no job backs up"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jobs: &str) -> Config {
        Config::parse(
            std::path::Path::new("test.toml"),
            &format!("[tenants.t]\nrepository = \"/r\"\npassword-file = \"/k\"\n{jobs}"),
        )
        .unwrap()
    }

    fn redis(name: &str, databases: &str, drill: &str) -> String {
        format!(
            "[jobs.{name}]\ntenant = \"t\"\nadapter = \"redis\"\nconfig = {{ address = \"127.0.0.1:6379\"{databases} }}\n{drill}\n"
        )
    }

    fn refusal(jobs: &str) -> String {
        crate::testing::runtime()
            .block_on(check(&config(jobs)))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_overlap_by_equality_or_a_covering_prefix() {
        assert!(overlap("redis://h:1/3", "redis://h:1/3"));
        assert!(overlap("redis://h:1/", "redis://h:1/3"));
        assert!(overlap("redis://h:1/3", "redis://h:1/"));
        assert!(!overlap("redis://h:1/3", "redis://h:1/30"));
        assert!(!overlap("redis://h:1/3", "redis://h:2/"));
    }

    #[test]
    fn a_redis_drill_must_name_a_spare_database_not_its_own() {
        let own = ", databases = [0]";
        let e = refusal(&redis(
            "j",
            own,
            "drill = { set = { scratch-database = 0 } }",
        ));
        assert!(
            e.starts_with("job j: adapter redis: invalid configuration")
                && e.contains("one of the job's own databases"),
            "{e}"
        );
        let e = refusal(&redis("j", own, "drill = { set = { target = 1 } }"));
        assert!(e.contains("scratch-database only"), "{e}");
        let e = refusal(&redis("j", own, "drill = { schedule = \"@daily\" }"));
        assert!(e.contains("spare database"), "{e}");
        let ok = crate::testing::runtime()
            .block_on(check(&config(&redis(
                "j",
                own,
                "drill = { set = { scratch-database = 15 } }",
            ))))
            .unwrap();
        assert_eq!(ok.checked, ["j"]);
    }

    #[test]
    fn a_drill_may_not_write_what_another_job_backs_up() {
        let drilled = redis(
            "j",
            ", databases = [0]",
            "drill = { set = { scratch-database = 15 } }",
        );
        // Another job on the same server backing up every database would
        // back up the scratch one too.
        let e = refusal(&format!("{drilled}{}", redis("k", "", "")));
        assert!(
            e.contains("job j: its drill writes redis://127.0.0.1:6379/15, which job k reads (redis://127.0.0.1:6379/)"),
            "{e}"
        );
        let e = refusal(&format!(
            "{drilled}{}",
            redis("k", ", databases = [15]", "")
        ));
        assert!(
            e.contains("which job k reads (redis://127.0.0.1:6379/15)"),
            "{e}"
        );
        // A job backing up other databases is no obstacle.
        crate::testing::runtime()
            .block_on(check(&config(&format!(
                "{drilled}{}",
                redis("k", ", databases = [1]", "")
            ))))
            .unwrap();
    }

    #[test]
    fn a_drill_set_is_refused_by_adapters_whose_drill_has_its_own_scratch() {
        let e = refusal(
            "[jobs.db]\ntenant = \"t\"\nadapter = \"postgres\"\nconfig = { databases = [\"app\"] }\ndrill = { set = { target-database = \"x\" } }\n",
        );
        assert!(
            e.starts_with("job db: adapter postgres: invalid configuration")
                && e.contains("drill.set (target-database) is not used"),
            "{e}"
        );
    }

    #[test]
    fn a_job_whose_settings_are_refused_is_named_and_the_others_still_run() {
        let c = config(&format!(
            "[jobs.files]\ntenant = \"t\"\npaths = [\"/srv\"]\nconfig = {{ colour = 1 }}\n{}",
            redis("k", ", databases = [1]", "")
        ));
        let checked = crate::testing::runtime().block_on(check(&c)).unwrap();
        assert_eq!(checked.checked, ["k"]);
        assert_eq!(checked.refused.len(), 1, "{checked:?}");
        let e = &checked.refused[0];
        assert!(
            e.starts_with("job files: adapter filesystem: invalid configuration"),
            "{e}"
        );
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn a_drill_is_refused_for_its_own_job_only() {
        let drilled = redis(
            "j",
            ", databases = [0]",
            "drill = { set = { scratch-database = 15 } }",
        );
        let broken = "[jobs.b]\ntenant = \"t\"\nadapter = \"redis\"\nconfig = { adress = \"x\" }\n";
        let c = config(&format!("{drilled}{broken}"));
        let rt = crate::testing::runtime();
        let f = rt.block_on(check_drill(&c, "j")).unwrap().unwrap();
        assert_eq!(f.writes, ["redis://127.0.0.1:6379/15"]);
        let e = rt.block_on(check_drill(&c, "b")).unwrap_err().to_string();
        assert!(
            e.starts_with("job b: adapter redis: invalid configuration") && e.contains("adress"),
            "{e}"
        );
        let c = config(&format!("{drilled}{}", redis("k", "", "")));
        let e = rt.block_on(check_drill(&c, "j")).unwrap_err().to_string();
        assert!(e.contains("which job k reads"), "{e}");
        rt.block_on(check_drill(&c, "k")).unwrap();
    }

    #[test]
    fn a_component_without_the_check_runs_unchecked() {
        // An empty component: the binary header of a component, nothing
        // exported, as any component built before WIT 0.3.0 lacks `check`.
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.wasm");
        std::fs::write(&old, b"\0asm\x0d\x00\x01\x00").unwrap();
        let ok = crate::testing::runtime()
            .block_on(check(&config(&format!(
                "[jobs.x]\ntenant = \"t\"\nadapter = {:?}\ndrill = {{ set = {{ anything = 1 }} }}\n",
                old.display()
            ))))
            .unwrap();
        assert!(ok.checked.is_empty());
        assert!(
            ok.unchecked[0].contains("adapter old predates WIT 0.3.0"),
            "{:?}",
            ok.unchecked
        );
    }

    #[test]
    fn a_missing_component_file_is_reported_not_refused() {
        let ok = crate::testing::runtime()
            .block_on(check(&config(
                "[jobs.x]\ntenant = \"t\"\nadapter = \"/nonexistent/x.wasm\"\n",
            )))
            .unwrap();
        assert!(ok.checked.is_empty());
        assert!(
            ok.unchecked[0].starts_with("job x: reading adapter /nonexistent/x.wasm"),
            "{:?}",
            ok.unchecked
        );
    }
}
