//! `cairn check`: verify the repository.

use super::{Global, Outcome, out};
use anyhow::bail;

/// Flags of `check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Read every pack and authenticate every blob.
    #[arg(long)]
    read_data: bool,
}

/// Run `check`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let store = g.uncached().open_without_index().await?;
    let report = crate::ops::check::run(&store, a.read_data).await?;
    if g.json {
        out(serde_json::to_value(&report)?);
    } else {
        for e in &report.errors {
            out(format!("error: {e}"));
        }
        if !report.unreferenced_packs.is_empty() {
            out(format!(
                "{} packs are in no index (left by an interrupted backup; harmless, `prune` will remove them)",
                report.unreferenced_packs.len()
            ));
        }
        out(format!(
            "checked {} snapshots, {} trees, {} packs{}",
            report.snapshots,
            report.trees,
            report.packs,
            if a.read_data {
                format!(" ({} read in full)", report.packs_read)
            } else {
                String::new()
            }
        ));
    }
    if !report.errors.is_empty() {
        bail!("the repository has {} errors", report.errors.len());
    }
    if !g.json {
        out("no errors were found");
    }
    Ok(Outcome::Ok)
}
