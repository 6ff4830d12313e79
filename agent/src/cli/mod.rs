//! The command line, following restic's conventions: `init`, `backup`,
//! `snapshots`, `ls`, `restore`, `verify`, `check`.
//!
//! Exit codes: 0 success; 1 failure; 3 backup incomplete (some entries
//! could not be read; the snapshot holds everything else).

mod backup;
mod check;
mod init;
mod ls;
mod restore;
mod snapshots;

use crate::repo::Repository;
use crate::storage::Backend;
use crate::storage::local::LocalBackend;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code when the command failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when a backup completed but some entries could not be read.
pub const EXIT_INCOMPLETE: u8 = 3;

/// Cairn: sandboxed, restic-compatible backups.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// Repository location (a local directory).
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", global = true)]
    repo: Option<String>,
    /// Read the repository password from this file (else $CAIRN_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
}

/// What a command ended with, beyond plain failure.
pub enum Outcome {
    /// Everything worked.
    Ok,
    /// The backup is stored but some entries were not read.
    Incomplete,
}

/// Shared options for commands.
pub struct Global {
    repo: Option<String>,
    password_file: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl Global {
    fn backend(&self) -> anyhow::Result<Arc<dyn Backend>> {
        let Some(repo) = &self.repo else {
            bail!("no repository given: use -r/--repo or set CAIRN_REPOSITORY");
        };
        let path = repo.strip_prefix("local:").unwrap_or(repo);
        if path.contains("://") || path.starts_with("s3:") {
            bail!("repository {repo:?}: only local directories are supported in this version");
        }
        Ok(Arc::new(LocalBackend::new(path)))
    }

    fn password(&self, confirm: bool) -> anyhow::Result<String> {
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the password file {}", file.display()))?;
            let pw = text.lines().next().unwrap_or_default().to_string();
            if pw.is_empty() {
                bail!("the password file {} is empty", file.display());
            }
            return Ok(pw);
        }
        if let Ok(pw) = std::env::var("CAIRN_PASSWORD") {
            if pw.is_empty() {
                bail!("CAIRN_PASSWORD is set but empty");
            }
            return Ok(pw);
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "no password given: use --password-file or CAIRN_PASSWORD (stdin is not a terminal)"
            );
        }
        let pw = rpassword::prompt_password("enter password for repository: ")?;
        if confirm && rpassword::prompt_password("enter password again: ")? != pw {
            bail!("the passwords do not match");
        }
        if pw.is_empty() {
            bail!("an empty password is not allowed");
        }
        Ok(pw)
    }

    /// Open the repository and load its index.
    pub async fn open(&self) -> anyhow::Result<Arc<Repository>> {
        let repo = self.open_without_index().await?;
        repo.load_index().await?;
        Ok(repo)
    }

    /// Open the repository without reading its index (`check` reads index
    /// files one by one so it can report a damaged one).
    pub async fn open_without_index(&self) -> anyhow::Result<Arc<Repository>> {
        let backend = self.backend()?;
        let password = self.password(false)?;
        Ok(Arc::new(Repository::open(backend, &password).await?))
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Print a line to stdout; a closed pipe ends the program quietly.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    if writeln!(std::io::stdout(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Run the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let global = Global {
        repo: cli.repo,
        password_file: cli.password_file,
        json: cli.json,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Init(a) => init::run(&global, a).await,
            Command::Backup(a) => backup::run(&global, a).await,
            Command::Snapshots(a) => snapshots::run(&global, a).await,
            Command::Ls(a) => ls::run(&global, a).await,
            Command::Restore(a) => restore::run(&global, a).await,
            Command::Verify(a) => restore::verify(&global, a).await,
            Command::Check(a) => check::run(&global, a).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Incomplete) => ExitCode::from(EXIT_INCOMPLETE),
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
