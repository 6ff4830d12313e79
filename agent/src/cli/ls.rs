//! `cairn ls`: list a snapshot's entries.

use super::{Global, Outcome, out};
use crate::read::Walker;

/// Flags of `ls`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or unique prefix), or `latest`.
    snapshot: String,
}

/// Run `ls`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<Outcome> {
    let repo = g.open().await?.repo;
    let (id, snap) = repo.find_snapshot(&a.snapshot).await?;
    let mut walker = Walker::new(repo.clone(), snap.tree, Vec::new()).await?;
    if !g.json {
        out(format!(
            "snapshot {} of {:?} at {}:",
            id.short(),
            snap.paths,
            snap.time
        ));
    }
    while let Some(e) = walker.next().await? {
        if g.json {
            out(serde_json::json!({
                "path": e.path, "type": e.node.kind, "size": e.node.size,
                "mode": e.node.mode, "mtime": e.node.mtime, "uid": e.node.uid, "gid": e.node.gid,
                "linktarget": (!e.node.linktarget.is_empty()).then_some(&e.node.linktarget),
            }));
        } else {
            // Names may hold newlines or escape sequences: quoted then.
            out(crate::util::escaped(&e.path));
        }
    }
    for skipped in walker.skipped() {
        super::note(skipped);
    }
    Ok(if walker.skipped().is_empty() {
        Outcome::Ok
    } else {
        Outcome::Incomplete
    })
}
