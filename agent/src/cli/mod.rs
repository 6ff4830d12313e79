//! The command line, following restic's conventions: `init`, `backup`,
//! `snapshots`, `ls`, `restore`, `verify`, `check`, `forget`, `prune`.
//!
//! With `--config`, commands act on a tenant (`--tenant`, or the tenant of
//! `backup --job`), whose repository is a local directory or a pair of S3
//! regions behind the residency checks; `residency`, `replicate`, `repair`
//! and `tenant shred` exist only there.
//!
//! Exit codes: 0 success; 1 failure; 3 backup incomplete (some entries
//! could not be read; the snapshot holds everything else); 4 degraded (the
//! work is stored in one region of the tenant's pair only; the other lags
//! until `cairn replicate`).

mod adapter;
mod agent;
mod backup;
mod check;
mod drill;
mod forget;
mod global;
mod init;
mod job;
mod ls;
mod prune;
mod rebuild_index;
mod replicate;
mod residency;
mod restore;
mod snapshots;
mod tenant;
mod wal;

pub use global::Global;
use global::Opened;

use crate::ops::protocol::{self, Exit, Message};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tracing_subscriber::prelude::*;

/// Cairn: sandboxed, restic-compatible backups.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// Repository location: a local directory, or `s3:https://host[:port]/bucket/prefix`.
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", global = true)]
    repo: Option<String>,
    /// The configuration file (regions, regimes, tenants, jobs).
    #[arg(long, env = "CAIRN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The tenant whose repository to use (needs --config).
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Read the repository password from this file (else $CAIRN_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(long, env = "CAIRN_LOG_FORMAT", global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The repository's key file to try first (a unique prefix of its
    /// name): for a repository holding more key files than are tried.
    #[arg(long, env = "CAIRN_KEY_HINT", global = true)]
    key_hint: Option<String>,
    /// Read without writing a lock (restore, verify, check, ls, snapshots,
    /// drill): for read-only storage credentials. A command that reads also
    /// falls back to this, with a warning, when the storage refuses the lock.
    #[arg(long, global = true)]
    no_lock: bool,
    /// When another process holds the repository's lock, try again for up
    /// to this long (`30s`, `5m`, `1h`) instead of failing at once, as
    /// restic's `--retry-lock`: forget and prune beside a running
    /// `wal-stream`, whose flushes lock for a moment every few seconds.
    #[arg(long, global = true, value_parser = parse_retry)]
    retry_lock: Option<std::time::Duration>,
    /// Do not keep a local copy of the repository's index, snapshots and
    /// trees (kept by default for repositories on object storage, under
    /// `$CAIRN_CACHE_DIR/repos/` or `~/.cache/cairn/repos/`).
    #[arg(long, env = "CAIRN_NO_CACHE", global = true)]
    no_cache: bool,
    /// Requests to the storage in flight at once when reading (restore,
    /// verify, ls, snapshots, check). Default: the region's `concurrency`
    /// (8), which also bounds a tenant's requests whatever this says.
    #[arg(long, env = "CAIRN_CONNECTIONS", global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    connections: Option<u16>,
    /// Print what the adapter writes to its standard error on ours, live,
    /// line by line (escaped), besides logging it: for adapter authors.
    #[arg(long, global = true)]
    adapter_stderr: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new repository.
    Init(init::Args),
    /// Back up paths through the filesystem adapter (or another adapter).
    Backup(backup::Args),
    /// List snapshots.
    Snapshots(snapshots::Args),
    /// List the entries of a snapshot.
    Ls(ls::Args),
    /// Restore a snapshot into a target directory.
    Restore(restore::Args),
    /// Read back a snapshot through its adapter's verify.
    Verify(restore::VerifyArgs),
    /// Check the repository's structure, and with --read-data all data.
    Check(check::Args),
    /// Remove snapshots by a retention policy (restic's --keep-* rules) or by id.
    Forget(forget::Args),
    /// Remove the data no snapshot references; repack partly used packs.
    Prune(prune::Args),
    /// Prove where tenants' data is: check bucket regions, list every region.
    #[command(subcommand)]
    Residency(residency::Command),
    /// Copy what one region of a tenant's pair lacks from the other.
    Replicate(replicate::Args),
    /// Rewrite damaged or missing objects of one region from the other.
    Repair(replicate::RepairArgs),
    /// Build a new index from the packs themselves, replacing every index
    /// file (a damaged or missing index file, say).
    RebuildIndex(rebuild_index::Args),
    /// Tenant operations.
    #[command(subcommand)]
    Tenant(tenant::Command),
    /// Run the agent: the config's jobs on their schedules, drills,
    /// retention, and the REST API.
    Agent(agent::Args),
    /// Restore a job's latest snapshot into a scratch target, verify it,
    /// remove the scratch target, and record the result.
    Drill(drill::Args),
    /// Tools for adapter authors: check a component.
    #[command(subcommand)]
    Adapter(adapter::Command),
    /// Stream a PostgreSQL job's WAL into its repository until SIGTERM or
    /// SIGINT (`[jobs.J.wal]`; point-in-time recovery).
    WalStream(wal::StreamArgs),
    /// Fetch one WAL file for a recovering PostgreSQL server: its
    /// `restore_command` (`cairn wal-fetch --socket S %f %p`, written by
    /// `restore --until --start`; or `--job J` to read the archive
    /// directly). Exits 0 with the file written, 1 if the archive has none.
    WalFetch(wal::FetchArgs),
}

/// A `--retry-lock` duration: a number and `s`, `m` or `h`.
fn parse_retry(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?}: give a duration like 30s, 5m or 1h");
    let (n, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// What a command ended with, beyond plain failure.
pub enum Outcome {
    /// Everything worked.
    Ok,
    /// The backup is stored but some entries were not read.
    Incomplete,
    /// Stored in one region of the pair only.
    Degraded,
}

fn init_logging(verbose: u8, json: bool, agent: bool) {
    let default = match verbose {
        // The agent says what it runs; a command only what goes wrong.
        0 if agent => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The AWS signer traces canonical requests (session tokens included) and
    // the HTTP stack traces headers. A second filter, which no CAIRN_LOG
    // directive can widen, keeps the signer silent and the rest at warn.
    let guard = tracing_subscriber::filter::filter_fn(|meta| {
        const NOISY: [&str; 6] = [
            "aws_smithy",
            "aws_config",
            "hyper",
            "h2",
            "rustls",
            "aws_sdk",
        ];
        let target = meta.target();
        if target.starts_with("aws_sigv4") {
            return false;
        }
        !NOISY.iter().any(|p| target.starts_with(p)) || *meta.level() <= tracing::Level::WARN
    });
    // Colour codes only on a terminal: never in a file or a pipe (the agent's
    // children, journald, a test reading stderr).
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        tracing_subscriber::registry()
            .with(layer.json().with_filter(filter).with_filter(guard))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer.with_filter(filter).with_filter(guard))
            .init();
    }
}

/// Wait for SIGTERM or SIGINT; returns its name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Print a line to stdout; a closed pipe ends the program quietly.
///
/// In a process the agent started, standard output carries the protocol's
/// messages alone: the text (which may hold names from the storage or an
/// adapter's words, a newline included) is not printed, so no line of it
/// can pass for a message.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    if protocol::is_child() {
        return;
    }
    if writeln!(std::io::stdout(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// What stopping a command by a signal means for its work.
fn stop_note(command: &Command) -> &'static str {
    match command {
        Command::Backup(_) => "no snapshot was written",
        Command::Restore(_) => {
            "the restore is incomplete (a file being written was removed); run it again to resume"
        }
        Command::Drill(_) => "the drill was not recorded as passed",
        Command::Forget(_) | Command::Prune(_) => {
            "what was removed so far stays removed; the repository still checks"
        }
        Command::Replicate(_) | Command::Repair(_) | Command::RebuildIndex(_) => {
            "what was written so far stays; run it again to finish"
        }
        _ => "nothing was changed",
    }
}

/// Run the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.log_format == "json",
        matches!(cli.command, Command::Agent(_)),
    );
    if let Some(h) = &cli.key_hint {
        crate::repo::keys::name_key(h);
    }
    if cli.adapter_stderr {
        crate::runtime::stream_adapter_stderr();
    }
    let global = Global {
        repo: cli.repo,
        password_file: cli.password_file,
        config_path: cli.config,
        tenant: cli.tenant,
        json: cli.json,
        no_lock: cli.no_lock,
        retry_lock: cli.retry_lock,
        no_cache: cli.no_cache,
        connections: cli.connections,
        env_password: crate::util::take_env_secret("CAIRN_PASSWORD").map(Arc::from),
        opened: Arc::new(Mutex::new(Opened::default())),
    };
    // At least two workers: an adapter call stuck in the kernel holds one,
    // and the deadline, the signals and the lock refresh need another.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed.code());
        }
    };
    // The commands that write to the repository, by name.
    let writer = match &cli.command {
        Command::Init(_) => Some("init"),
        Command::Backup(_) => Some("backup"),
        Command::Replicate(_) => Some("replicate"),
        Command::Repair(_) => Some("repair"),
        Command::Forget(_) => Some("forget"),
        Command::Prune(_) => Some("prune"),
        Command::RebuildIndex(_) => Some("rebuild-index"),
        _ => None,
    };
    let wrote = writer.is_some();
    let g = global.clone();
    // The agent (grace period, reload) and wal-stream (a last flush)
    // handle their own signals.
    let ended = |runtime: tokio::runtime::Runtime, result: anyhow::Result<()>| {
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cairn: {e:#}");
                ExitCode::from(Exit::Failed.code())
            }
        }
    };
    let command = match cli.command {
        // restore_command: 0 with the file written, 1 when the archive
        // has none. PostgreSQL reads any code up to 125 as "not there" and
        // would end recovery early, quietly; so a failure to find out
        // (the restore serving the WAL killed, the repository failing) is
        // 126, which stops recovery instead.
        Command::WalFetch(a) => {
            let result = match &a.socket {
                Some(_) => wal::fetch_over_socket(&a),
                None => runtime.block_on(wal::fetch(&global, a)),
            };
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            return match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("cairn wal-fetch: {e:#}");
                    ExitCode::from(126)
                }
            };
        }
        Command::Agent(a) => {
            let result = runtime.block_on(agent::run(&global, a));
            return ended(runtime, result);
        }
        Command::WalStream(a) => {
            let result = runtime.block_on(wal::stream(&global, a));
            return ended(runtime, result);
        }
        other => other,
    };
    if let (true, Some(name)) = (cli.no_lock, writer) {
        eprintln!(
            "cairn: --no-lock is for commands that only read (restore, verify, check, ls, snapshots, drill); {name} writes and must lock"
        );
        return ExitCode::from(Exit::Failed.code());
    }
    let stopped = stop_note(&command);
    let command = async move {
        match command {
            Command::Init(a) => init::run(&global, a).await,
            Command::Backup(a) => backup::run(&global, a).await,
            Command::Snapshots(a) => snapshots::run(&global, a).await,
            Command::Ls(a) => ls::run(&global, a).await,
            Command::Restore(a) => restore::run(&global, a).await,
            Command::Verify(a) => restore::verify(&global, a).await,
            Command::Check(a) => check::run(&global, a).await,
            Command::Forget(a) => forget::run(&global, a).await,
            Command::Prune(a) => prune::run(&global, a).await,
            Command::Residency(c) => residency::run(&global, c).await,
            Command::Replicate(a) => replicate::run(&global, a).await,
            Command::Repair(a) => replicate::repair(&global, a).await,
            Command::RebuildIndex(a) => rebuild_index::run(&global, a).await,
            Command::Tenant(c) => tenant::run(&global, c).await,
            Command::Drill(a) => drill::run(&global, a).await,
            Command::Adapter(c) => adapter::run(&global, c).await,
            Command::Agent(_) | Command::WalStream(_) | Command::WalFetch(_) => {
                unreachable!("handled above")
            }
        }
    };
    // The command runs as a task of its own, so that SIGTERM or SIGINT is
    // seen even while it is stuck in a blocking call: the command is then
    // abandoned where it is (a backup records no snapshot), the locks this
    // process holds are removed, and the process exits, ending any thread
    // still blocked.
    let task = runtime.spawn(command);
    let abort = task.abort_handle();
    let result = runtime.block_on(async move {
        tokio::select! {
            r = task => match r {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(anyhow::anyhow!("the command panicked: {e}")),
                Err(e) => Err(anyhow::anyhow!("the command was cancelled: {e}")),
            },
            signal = stop_signal() => {
                // Packers first: dropping the command drops its lock guards,
                // whose removal starts at once, and nothing may be written
                // once a lock is gone (red-team finding on issue 14).
                crate::pipeline::stop_packers();
                abort.abort();
                Err(anyhow::anyhow!("stopped by {signal}; {stopped}"))
            }
        }
    });
    // A command stopped where it stood may have left a packer running:
    // nothing may be written once its locks are gone.
    crate::pipeline::stop_packers();
    runtime.block_on(crate::repo::release_held_locks());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // A restore stopped in the middle leaves no file half-written; with
    // the runtime gone, no task can start another one now.
    let removed = crate::read::write::remove_unfinished_files();
    if removed > 0 {
        tracing::info!(
            files = removed,
            "Removed files a stopped restore had half-written."
        );
    }
    let damage = g.damage();
    let result = result.map(|o| g.finish(o, wrote));
    // The damaged snapshot or index files passed over (a command that did
    // its job with what could be read says what could not, and ends
    // incomplete); then the failure, if any, last.
    for d in &damage {
        note(format!(
            "passed over a damaged file: {d} (run `cairn check`; `cairn rebuild-index` rebuilds a damaged index)"
        ));
    }
    let exit = match &result {
        Ok(Outcome::Ok) if !damage.is_empty() => Exit::Incomplete,
        Ok(Outcome::Ok) => Exit::Ok,
        Ok(Outcome::Incomplete) => Exit::Incomplete,
        Ok(Outcome::Degraded) => Exit::Degraded,
        Err(_) => Exit::Failed,
    };
    // Every line said here may carry names from the storage or an
    // adapter's words: made safe to print.
    let error = result.err().map(|e| {
        let message = crate::util::indented(&format!("{e:#}"));
        eprintln!("cairn: {message}");
        protocol::Failure {
            kind: e
                .downcast_ref::<crate::ops::Error>()
                .map_or(protocol::ErrorKind::Other, crate::ops::Error::kind),
            message,
        }
    });
    to_agent(Message::End(protocol::End {
        exit,
        error,
        notes: std::mem::take(&mut *crate::util::lock(&NOTES)),
        residency_refusals: crate::telemetry::residency_refusals(),
        storage_retries: crate::telemetry::storage_retries(),
    }));
    ExitCode::from(exit.code())
}

/// What this command said about work it left out (see [`note`]).
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Say, on stderr, something the command left out or could not finish (an
/// entry not read, a region lagging, a damaged file passed over); the
/// agent that started this process gets these lines too. The line may
/// carry names from the storage or an adapter's words: made safe to print.
pub fn note(line: impl std::fmt::Display) {
    let line = crate::util::indented(&line.to_string());
    eprintln!("cairn: {line}");
    crate::util::lock(&NOTES).push(line);
}

/// Send a message to the agent that started this process, if one did.
pub fn to_agent(message: Message) {
    if protocol::is_child() {
        protocol::send(&message);
    }
}

/// Print a report as one JSON line (`--json`).
pub fn emit(report: &impl serde::Serialize) {
    match serde_json::to_value(report) {
        Ok(v) => out(v),
        Err(e) => eprintln!("cairn: cannot print the report as JSON: {e}"),
    }
}
