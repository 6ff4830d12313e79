//! `cairn prune`: remove the data no snapshot references (see
//! [`crate::ops::prune`]), under the repository's exclusive lock.

use super::{Global, Outcome, out};

/// Flags of `prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Say what would be removed and repacked; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// Run `prune`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let store = g.open_without_index().await?;
    let report = crate::ops::prune::run(&store, a.dry_run).await?;
    if g.json {
        out(serde_json::to_value(&report)?);
        return Ok(Outcome::Ok);
    }
    print_report(&report, a.dry_run);
    Ok(Outcome::Ok)
}

/// Say what a prune did (or, for a dry run, would do).
pub(super) fn print_report(report: &crate::ops::prune::PruneReport, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    out(format!(
        "{} snapshots use {} blobs; {} packs kept as they are",
        report.snapshots, report.blobs_used, report.packs_kept
    ));
    out(format!(
        "{verb} {} unused packs and {} packs no index lists; {} repacked ({} blobs into {} new packs)",
        report.packs_removed,
        report.packs_unreferenced,
        report.packs_repacked,
        report.blobs_repacked,
        report.packs_written
    ));
    out(format!(
        "{verb} {}",
        indicatif::HumanBytes(report.bytes_freed)
    ));
    if report.temporary_files_removed > 0 {
        out(format!(
            "removed {} temporary files writers left behind",
            report.temporary_files_removed
        ));
    }
}
