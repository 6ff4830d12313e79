//! `cairn init`: create a repository.

use super::{Global, Outcome, out};

/// Flags of `init`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `init`.
pub async fn run(g: &Global, _: Args) -> anyhow::Result<Outcome> {
    let (backend, pair) = g.backend().await?;
    let made = crate::ops::init(
        backend,
        pair.as_deref()
            .map(|p| p as &dyn crate::residency::pair::Replicated),
        || g.password(true),
    )
    .await?;
    if g.json {
        out(
            serde_json::json!({"message_type": "initialized", "id": made.id, "repository": made.repository}),
        );
    } else {
        out(format!(
            "created Cairn repository {} at {}",
            &made.id[..10.min(made.id.len())],
            made.repository
        ));
        out(
            "Please note that knowledge of your password is required to access the repository. Losing it means your data is irrecoverably lost.",
        );
    }
    Ok(Outcome::Ok)
}
