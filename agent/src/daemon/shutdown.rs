//! The agent's life: start the API and the scheduler, reload on SIGHUP,
//! and on SIGTERM or SIGINT stop taking runs, give running ones their
//! grace period, then abort them.

use super::{Agent, api, runner};
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

impl Agent {
    /// Stop: no new runs; running ones get `grace` to finish, then are
    /// aborted (no snapshot) and waited for.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.send_replace(true);
        // Streams never end by themselves: they stop first, beside the
        // runs' grace period (a last flush takes seconds).
        let streams = self.stop_streams(runner::STOP_GRACE + Duration::from_secs(10));
        let mut active = self.active.subscribe();
        let n = *active.borrow();
        if n > 0 {
            tracing::info!(
                running = n,
                grace_secs = grace.as_secs(),
                "Stopping: waiting for running jobs."
            );
        }
        if tokio::time::timeout(grace, active.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                "The grace period ran out: aborting the running jobs (they record no snapshot)."
            );
            self.abort.send_replace(true);
            // Stopped commands get their SIGTERM grace, and a group its
            // release hook, which must run: it ends the cold-backup window.
            let hooks = self
                .loaded()
                .config
                .groups
                .values()
                .map(|g| g.hook_timeout_secs)
                .max()
                .unwrap_or(0);
            let wait = runner::STOP_GRACE + Duration::from_secs(hooks + 10);
            if tokio::time::timeout(wait, active.wait_for(|n| *n == 0))
                .await
                .is_err()
            {
                tracing::error!("Runs did not end after being stopped; exiting anyway.");
            }
        }
        streams.await;
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let agent = Agent::new(config_path).await?;
    let loaded = agent.loaded();
    let server = match &loaded.config.agent.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("agent: cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(address = %local, "API listening.");
            Some(tokio::spawn(api::serve(agent.clone(), listener)))
        }
        None => None,
    };
    tokio::spawn(agent.clone().schedule());
    agent.sync_streams();
    tracing::info!(
        config = %config_path.display(),
        jobs = loaded.config.jobs.len(),
        groups = loaded.config.groups.len(),
        "Agent started."
    );
    loop {
        tokio::select! {
            // The new config's adapters check its jobs' settings: that
            // runs beside this loop, so a stop is never held behind it.
            _ = hup.recv() => {
                let (agent, path) = (agent.clone(), config_path.to_path_buf());
                tokio::spawn(async move {
                    match agent.reload().await {
                        Ok(()) => {
                            tracing::info!(config = %path.display(), "Reloaded the config.");
                            agent.sync_streams();
                        }
                        Err(e) => tracing::error!(config = %path.display(), error = %format!("{e:#}"), "The new config is refused; the old one stays in force."),
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = Duration::from_secs(agent.loaded().config.agent.shutdown_grace_secs);
    tracing::info!("Stopping.");
    agent.shutdown(grace).await;
    if let Some(s) = server {
        s.abort();
    }
    tracing::info!("Stopped.");
    Ok(())
}
