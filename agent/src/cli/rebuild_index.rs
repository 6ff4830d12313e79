//! `cairn rebuild-index`: build the index anew from the packs' headers
//! (restic's `repair index`, once called `rebuild-index`), under the
//! exclusive lock. It mends a damaged or lost index file.

use super::{Global, Outcome, out};

/// Flags of `rebuild-index`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `rebuild-index`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let store = g.open_without_index().await?;
    let report = crate::ops::rebuild_index(&store).await?;
    for p in &report.unreadable_packs {
        super::note(format!("not indexed: {p}"));
    }
    for p in &report.kept_from_old_index {
        super::note(format!(
            "indexed as the old index had it (its header is unreadable; run `cairn check --read-data`): {p}"
        ));
    }
    if g.json {
        out(serde_json::to_value(&report)?);
    } else {
        out(format!(
            "indexed {} packs ({} blobs) in {} new index files; removed {} old index files",
            report.packs, report.blobs, report.index_files_written, report.index_files_removed
        ));
    }
    Ok(
        if report.unreadable_packs.is_empty() && report.kept_from_old_index.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Incomplete
        },
    )
}
