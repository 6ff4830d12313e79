//! `cairn snapshots`: list snapshots.

use super::{Global, Outcome, out};

/// Flags of `snapshots`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `snapshots`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let repo = g.open().await?;
    let snaps = repo.snapshots().await?;
    if g.json {
        let list: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["id"] = serde_json::json!(id.to_hex());
                v["short_id"] = serde_json::json!(id.short());
                v
            })
            .collect();
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
