//! `cairn snapshots`: list snapshots.

use super::{Global, Outcome, out};
use crate::repo::snapshot::Listed;

/// Flags of `snapshots`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `snapshots`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let repo = g.open_without_index().await?.repo;
    let snaps = repo.snapshots().await?;
    if g.json || crate::ops::protocol::is_child() {
        let list: Vec<Listed> = snaps
            .iter()
            .map(|(id, s)| Listed::new(*id, s.clone()))
            .collect();
        if g.json {
            super::emit(&list);
        }
        super::to_agent(crate::ops::protocol::Message::Snapshots(list));
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
