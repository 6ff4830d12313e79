//! `cairn adapter`: tools for adapter authors. `check` runs the
//! conformance kit ([`crate::ops::conformance`]) on a component.

use super::job::AdapterFlags;
use super::{Global, Outcome, out};
use anyhow::{Context, bail};
use std::path::PathBuf;

/// `cairn adapter` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check that a component is a working Cairn adapter: it links against
    /// the interfaces this host offers, `info` answers, a bad configuration
    /// gives invalid-config, a backup into a scratch repository restores
    /// and compares equal (a file adapter, on a fixture tree) or verifies
    /// (a service adapter, given --adapter-config), and the smallest memory
    /// limit that runs it. Exits non-zero naming every failure.
    Check(CheckArgs),
}

/// Flags of `adapter check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The component file (`.wasm`).
    component: PathBuf,
    /// What the adapter may reach, and its configuration: without
    /// --adapter-config the adapter is checked as a file adapter, on a
    /// fixture tree the kit writes.
    #[command(flatten)]
    adapter_flags: AdapterFlags,
    /// Memory limit of the runs, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_limit: usize,
}

/// Run an `adapter` subcommand.
pub async fn run(g: &Global, c: Command) -> anyhow::Result<Outcome> {
    match c {
        Command::Check(a) => check(g, a).await,
    }
}

async fn check(g: &Global, a: CheckArgs) -> anyhow::Result<Outcome> {
    if !a.component.is_file() {
        bail!("adapter check: {} is not a file", a.component.display());
    }
    let config = a.adapter_flags.config().context("adapter check")?;
    let flags = a.adapter_flags;
    let report = crate::ops::conformance::run(crate::ops::conformance::Options {
        component: a.component.clone(),
        config,
        grants: Box::new(move || flags.grants(&Default::default())),
        memory: a.memory_limit << 20,
    })
    .await;
    if g.json {
        out(serde_json::to_value(&report)?);
    } else {
        out(format!(
            "adapter check of {} (sha256 {}){}",
            report.component,
            report.sha256,
            report
                .adapter
                .as_ref()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        ));
        for s in &report.steps {
            out(format!(
                "  {} {:<22} {:>6.2}s  {}",
                if s.ok { "ok  " } else { "FAIL" },
                s.name,
                s.seconds,
                crate::util::indented(&s.detail)
            ));
        }
    }
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "adapter {} failed {} of {} checks: {}",
            a.component.display(),
            failed.len(),
            report.steps.len(),
            failed.join(", ")
        );
    }
    Ok(Outcome::Ok)
}
