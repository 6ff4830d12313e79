//! `cairn wal-stream`: a PostgreSQL job's continuous WAL archive, in the
//! foreground until SIGTERM or SIGINT, which end it after a last flush
//! (docs/design/pitr.md §5).

use super::Global;
use super::job::AdapterFlags;
use crate::pitr::stream::{Connection, Options, Status};
use anyhow::{Context, bail};

/// `wal-stream` flags.
#[derive(clap::Args, Debug)]
pub struct StreamArgs {
    /// The job (its `[jobs.J.wal]` table says how to stream).
    #[arg(long)]
    pub job: String,
}

/// Run `wal-stream` until a signal says stop.
pub async fn stream(g: &Global, a: StreamArgs) -> anyhow::Result<()> {
    let (job, g) = super::job::load(g, &a.job)?;
    let Some(wal) = job.wal.clone() else {
        bail!(
            "job {}: it has no [jobs.{}.wal] table, so no WAL stream",
            a.job,
            a.job
        );
    };
    let config = g.config()?;
    let mut flags = AdapterFlags::default();
    flags.add_job(&a.job, &job)?;
    let grants = flags.grants(&job.grants.env)?;
    let adapter = job.config.clone().unwrap_or_default();
    let text = |key: &str, default: &str| -> anyhow::Result<String> {
        match adapter.get(key) {
            None => Ok(default.to_string()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(v) => bail!("job {}: config.{key} = {v} is not a string", a.job),
        }
    };
    let port = match adapter.get("port") {
        None => 5432,
        Some(toml::Value::Integer(p)) => u16::try_from(*p)
            .with_context(|| format!("job {}: config.port {p} is out of range", a.job))?,
        Some(v) => bail!("job {}: config.port = {v} is not a number", a.job),
    };
    let connection = Connection {
        host: text("host", "127.0.0.1")?,
        port,
        user: text("user", "postgres")?,
        password_secret: adapter
            .get("password-secret")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    };
    let store = g.open_without_index().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("Stopping the WAL stream after a last flush.");
        let _ = stop_tx.send(true);
    });
    let json = g.json;
    let job_name = a.job.clone();
    let options = Options {
        slot: wal.slot(&a.job),
        spool: wal.spool(&a.job, &config.agent.state_dir),
        job: a.job.clone(),
        host: crate::util::hostname(),
        grants,
        connection,
        flush: std::time::Duration::from_secs(wal.flush_secs),
        window: std::time::Duration::from_secs(wal.window_secs),
        compression: job.compression,
        stop: stop_rx,
        on_status: Box::new(move |s: &Status| {
            if json {
                super::emit(s);
            } else {
                super::out(format!(
                    "wal-stream {job_name}: {} timeline {} stored {} server {} lag {} bytes, {} files stored, {} receiver restarts{}",
                    s.state,
                    s.timeline.map_or("-".into(), |t| t.to_string()),
                    s.stored_lsn.as_deref().unwrap_or("-"),
                    s.server_lsn.as_deref().unwrap_or("-"),
                    s.lag_bytes.map_or("-".into(), |b| b.to_string()),
                    s.files_stored,
                    s.receiver_restarts,
                    s.error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" (last error: {e})")),
                ));
            }
        }),
    };
    crate::pitr::stream::run(&store, options)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}
