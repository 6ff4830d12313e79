//! `cairn init`: create a repository.

use super::{Global, Outcome, out};
use crate::repo::Repository;

/// Flags of `init`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `init`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let (backend, pair) = g.backend().await?;
    // Both regions of a pair, or none: a repository started in one region
    // alone could meet a different one started later in the other.
    if let Some((region, why)) = pair.and_then(|p| p.lagging().into_iter().next()) {
        anyhow::bail!(
            "init needs both regions of the tenant's pair; region {region} is not usable: {why}"
        );
    }
    let password = g.password(true)?;
    let location = backend.location();
    let repo = Repository::init(backend, &password).await?;
    if g.json {
        out(
            serde_json::json!({"message_type": "initialized", "id": repo.config().id, "repository": location}),
        );
    } else {
        out(format!(
            "created Cairn repository {} at {location}",
            &repo.config().id[..10]
        ));
        out(
            "Please note that knowledge of your password is required to access the repository. Losing it means your data is irrecoverably lost.",
        );
    }
    Ok(Outcome::Ok)
}
