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
    let connection = Connection::of_job(&a.job, &job).map_err(anyhow::Error::msg)?;
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
            // Under the agent, the state goes to it (its metrics and API).
            if crate::ops::protocol::is_child() {
                super::to_agent(crate::ops::protocol::Message::WalStatus(s.clone()));
            } else if json {
                super::emit(s);
            } else {
                super::out(format!(
                    "wal-stream {job_name}: {} timeline {} stored {} server {} lag {} bytes, {} files stored, {} receiver restarts{}{}",
                    s.state,
                    s.timeline.map_or("-".into(), |t| t.to_string()),
                    s.stored_lsn.as_deref().unwrap_or("-"),
                    s.server_lsn.as_deref().unwrap_or("-"),
                    s.lag_bytes.map_or("-".into(), |b| b.to_string()),
                    s.files_stored,
                    s.receiver_restarts,
                    if s.damaged_files > 0 {
                        format!(", {} damaged files not stored", s.damaged_files)
                    } else {
                        String::new()
                    },
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

/// `wal-fetch` flags: PostgreSQL's `restore_command`, `… %f %p`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// The socket of a running `cairn restore --start`, which serves the
    /// WAL (its restore_command names it).
    #[arg(long, conflicts_with = "job", required_unless_present = "job")]
    pub socket: Option<std::path::PathBuf>,
    /// Fetch from this job's archive directly (the config, the password
    /// and the repository must be readable by the user running it).
    #[arg(long)]
    pub job: Option<String>,
    /// With --job: the cluster's system identifier (default: the cluster
    /// of the job's newest WAL window).
    #[arg(long, requires = "job")]
    pub system: Option<u64>,
    /// The file PostgreSQL asks for (`%f`): a segment or history file name.
    pub name: String,
    /// Where to write it (`%p`).
    pub path: std::path::PathBuf,
}

/// `wal-fetch --socket`: ask the restore serving the WAL. Whether the
/// archive has the file.
pub fn fetch_over_socket(a: &FetchArgs) -> anyhow::Result<bool> {
    let socket = a.socket.as_ref().context("give --socket or --job")?;
    crate::pitr::fetch::fetch_over_socket(socket, &a.name, &a.path)
        .map(|f| f == crate::pitr::fetch::Fetched::Written)
        .map_err(|e| anyhow::anyhow!(e))
}

/// `wal-fetch --job`: read the job's archive directly. Whether it has
/// the file.
pub async fn fetch(g: &Global, a: FetchArgs) -> anyhow::Result<bool> {
    let job = a.job.as_deref().context("give --socket or --job")?;
    if !crate::pitr::fetch::valid_request(&a.name) {
        eprintln!(
            "cairn wal-fetch: {:?} is not a WAL segment or history file name",
            a.name
        );
        return Ok(false);
    }
    let (_, g) = super::job::load(g, job)?;
    let store = g.open().await?;
    let _lock = store.read_lock().await?;
    let Some(catalog) =
        crate::pitr::fetch::Catalog::load_for_job(store.repo.clone(), job, a.system).await?
    else {
        bail!("job {job} has no archived WAL (does `cairn wal-stream --job {job}` run?)");
    };
    Ok(catalog.fetch_to(&a.name, &a.path).await?)
}
