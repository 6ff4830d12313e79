//! `cairn snapshots`: list snapshots.

use super::{Global, Outcome, out};

/// Flags of `snapshots`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// A snapshot as JSON, as restic prints it: its fields, `id` and
/// `short_id`.
pub(super) fn snapshot_json(
    id: &crate::repo::Id,
    snap: &crate::repo::snapshot::Snapshot,
) -> serde_json::Value {
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    v["id"] = serde_json::json!(id.to_hex());
    v["short_id"] = serde_json::json!(id.short());
    v
}

/// Run `snapshots`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let repo = g.open_without_index().await?;
    let snaps = repo.snapshots().await?;
    if g.json {
        let list: Vec<_> = snaps.iter().map(|(id, s)| snapshot_json(id, s)).collect();
        out(serde_json::Value::Array(list));
        return Ok(Outcome::Ok);
    }
    out(format!(
        "{:<10} {:<20} {:<16} {:<12} {}",
        "ID", "Time", "Host", "Tags", "Paths"
    ));
    for (id, s) in &snaps {
        out(format!(
            "{:<10} {:<20} {:<16} {:<12} {}",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            s.tags.join(","),
            s.paths.join(", ")
        ));
    }
    out(format!("{} snapshots", snaps.len()));
    Ok(Outcome::Ok)
}
