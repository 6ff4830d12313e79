//! `cairn drill <job>`: prove a job's latest snapshot restores (see
//! [`crate::ops::drill`]), print the result and append it to the agent's
//! drill record, which retention reads.

use super::job::AdapterFlags;
use super::{Global, Outcome, out};
use crate::ops::drill;
use crate::ops::protocol::Message;
use anyhow::bail;

/// Flags of `drill`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job of the config file whose snapshot to drill.
    job: String,
    /// The snapshot to drill (default: the job's latest).
    #[arg(long, default_value = "latest")]
    snapshot: String,
}

/// Run `drill`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let config = g.config()?;
    let (job, jg) = super::job::load(g, &a.job)?;
    // A job whose grants or drill settings cannot be used fails its drill,
    // recorded like any other failure.
    let mut flags = AdapterFlags::default();
    let adapter_config = (|| {
        flags.add_job(&a.job, &job)?;
        if let Some(set) = job.drill.as_ref().and_then(|d| d.set.as_ref()) {
            for (k, v) in set {
                flags.set.push(format!("{k}={}", serde_json::to_string(v)?));
            }
        }
        flags.config()
    })()
    .map_err(|e| format!("{e:#}"));
    // The adapters say whether this drill would write what a job backs up.
    let restores = job.drill.as_ref().is_some_and(|d| d.set.is_some());
    let adapter_config = match adapter_config {
        Ok(c) => match crate::ops::settings::check_drill(&config, &a.job).await {
            // A drill restores only into a target its adapter names.
            Ok(Some(f)) if restores && f.writes.is_empty() => Err(format!(
                "job {}: its adapter {} names no scratch target that the drill's set makes it write, so the drill does not restore (leave drill.set out)",
                a.job, job.adapter
            )),
            Ok(_) => Ok(c),
            Err(e) => Err(e.to_string()),
        },
        refused => refused,
    };
    let env = job.grants.env.clone();
    let options = drill::Options {
        job_name: a.job.clone(),
        job,
        snapshot: a.snapshot.clone(),
        state_dir: config.agent.state_dir.clone(),
        grants: Box::new(move || flags.grants(&env)),
        config: adapter_config,
    };
    let (record, recorded) = drill::run(jg.open(), options).await;
    super::to_agent(Message::Drill(record.clone()));
    if g.json {
        out(serde_json::to_value(&record)?);
    } else {
        for p in &record.problems {
            out(format!("problem: {}", crate::util::escaped(p)));
        }
        let snapshot = match (&record.snapshot_id, record.rpo_seconds) {
            (Some(id), Some(rpo)) => format!("snapshot {} ({rpo:.0}s old)", &id[..8.min(id.len())]),
            _ => "no snapshot".into(),
        };
        out(format!(
            "drill of job {}: {} — {snapshot}, {} entries restored and checked in {:.1}s",
            a.job,
            if record.passed { "passed" } else { "FAILED" },
            record.entries,
            record.rto_seconds
        ));
    }
    recorded?;
    if let Some(e) = &record.error {
        bail!("drill of job {}: {e}", a.job);
    }
    if !record.passed {
        bail!(
            "drill of job {} failed: {} problems",
            a.job,
            record.problems.len()
        );
    }
    Ok(Outcome::Ok)
}
