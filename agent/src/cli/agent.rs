//! `cairn agent`: run the per-node agent (see [`crate::daemon`]).

use super::Global;
use anyhow::bail;

/// Flags of `agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Check the config (schedules, groups, the API's token file, each job's
    /// settings as its adapter reads them) and exit.
    #[arg(long)]
    check_config: bool,
}

/// Run `agent`.
pub async fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let Some(path) = &g.config_path else {
        bail!("the agent needs --config (or CAIRN_CONFIG)");
    };
    if a.check_config {
        let loaded = crate::daemon::Loaded::load_checked(path, false, true).await?;
        println!(
            "config {} is valid: {} jobs, {} groups",
            path.display(),
            loaded.config.jobs.len(),
            loaded.config.groups.len()
        );
        return Ok(());
    }
    crate::daemon::run(path).await
}
