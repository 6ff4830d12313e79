//! The `process` and `secrets` interfaces (WIT 0.2.0): programs the job
//! grants, started natively, with their standard output pumped into an
//! entry and an entry pumped into their standard input without the bytes
//! crossing into the sandbox.
//!
//! A process gets a clean environment, the root directory as its working
//! directory, and its own process group, so killing it reaches whatever it
//! started. Its standard error is always drained by the host into a tail
//! buffer (a full stderr pipe would otherwise stall it). Dropping a
//! [`ChildState`], which the store does when the job ends however it ends,
//! kills the group.

use super::{AdapterError, HostResult, HostState, Job, MAX_READ, WriterState, fault, grant_error};
use crate::pipeline::chunker::Chunker;
use crate::read::ContentReader;
use crate::repo::RepoError;
use crate::runtime::Grants;
use crate::runtime::bindings::cairn::adapter0_2_0::process;
use crate::runtime::host::ReaderState;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use wasmtime::component::Resource;

/// How much of a process's standard error is kept.
const STDERR_TAIL: usize = 64 * 1024;
/// Bytes read from a process's standard output per step of a pump.
const PUMP_READ: usize = 1024 * 1024;
/// The buffer of the pipes to and from a process.
const PIPE_SIZE: usize = 1024 * 1024;
/// A pump read shorter than this (or than a quarter of the pipe, if the
/// pipe could not be widened) means the producer is slower than the host:
/// the pump then waits [`PUMP_PAUSE`] before reading again, so that the
/// pipe fills and one read takes a batch, instead of a wake-up for every
/// few KiB the producer writes.
const PUMP_SHORT_READ: usize = 256 * 1024;
/// See [`PUMP_SHORT_READ`]; with a [`PIPE_SIZE`] pipe this still lets a
/// producer write 1 GiB/s without blocking.
const PUMP_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// The `PATH` a process gets: wrappers (Debian's `pg_wrapper`, say) find
/// the real programs through it.
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The `HOME` a process gets: a directory that does not exist.
const CHILD_HOME: &str = "/nonexistent";

/// How a background stdin pump ended.
enum PumpEnd {
    /// Fed everything (or the process stopped reading: its status says why).
    Done,
    /// The content is damaged or unreadable. The process's stdin is held
    /// open here, so it cannot take a truncated input for a whole one,
    /// until the process is killed.
    Failed(AdapterError, Option<ChildStdin>),
    /// The repository failed in a way the adapter cannot handle; stdin is
    /// held open as for `Failed`.
    Fault(String, Option<ChildStdin>),
}

/// A process an adapter started.
pub struct ChildState {
    program: String,
    pid: u32,
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    pump: Option<JoinHandle<PumpEnd>>,
    /// A stdin pump's failure, reported by `wait` (and a pending read).
    failure: Option<AdapterError>,
    /// Set once the process has been waited for.
    status: Option<process::ExitStatus>,
    /// Set the moment the process is reaped (before `status`, which may
    /// never be set if a pump fault follows): its id, and its group's, may
    /// then belong to another process, so nothing may signal them.
    reaped: bool,
    /// A pump read shorter than this pauses before the next (0: never).
    short_read: usize,
    /// Set once the adapter has seen the process end (it was reaped) or
    /// ended it itself (`kill`); shared with the job, which fails a call
    /// that returns success while a process it started is unsettled.
    settled: Arc<AtomicBool>,
}

/// A process a job started, as the job keeps track of it.
pub struct Started {
    /// The program's granted name.
    pub program: String,
    /// Its process id.
    pub pid: u32,
    /// Whether the adapter waited for it or killed it.
    pub settled: Arc<AtomicBool>,
}

impl Drop for ChildState {
    fn drop(&mut self) {
        if !self.reaped {
            // The group, not only the process: a wrapper's children too.
            // Not reaped yet, so the id is still ours.
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

impl ChildState {
    /// The process ended or must end: kill it (its group) now.
    fn kill(&mut self) {
        if !self.reaped
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }

    /// Take note of how the stdin pump ended. A damaged input kills the
    /// process before its stdin is closed. Returns the failure, if any.
    fn pump_ended(
        &mut self,
        end: Result<PumpEnd, tokio::task::JoinError>,
    ) -> wasmtime::Result<Option<AdapterError>> {
        match end {
            Ok(PumpEnd::Done) => Ok(None),
            Ok(PumpEnd::Failed(e, stdin)) => {
                self.kill();
                drop(stdin);
                self.failure.get_or_insert(e.clone());
                Ok(Some(e))
            }
            Ok(PumpEnd::Fault(m, stdin)) => {
                self.kill();
                drop(stdin);
                Err(fault(m))
            }
            Err(e) => {
                self.kill();
                Err(fault(format!(
                    "feeding {}'s standard input failed: {e}",
                    self.program
                )))
            }
        }
    }

    /// Read the next bytes of standard output into `buf`, watching the
    /// stdin pump meanwhile: if it fails, the read fails (the process,
    /// killed, will write no more).
    async fn read_stdout(
        &mut self,
        buf: &mut [u8],
    ) -> wasmtime::Result<Result<usize, AdapterError>> {
        if let Some(e) = &self.failure {
            return Ok(Err(e.clone()));
        }
        loop {
            let Some(stdout) = self.stdout.as_mut() else {
                return Ok(Err(AdapterError::Other(format!(
                    "{}: standard output is not a pipe (spawn it with stdout = pipe), or was pumped already",
                    self.program
                ))));
            };
            let pump = &mut self.pump;
            tokio::select! {
                read = stdout.read(buf) => {
                    return Ok(read.map_err(|e| AdapterError::Io(format!(
                        "reading {}'s standard output: {e}", self.program
                    ))));
                }
                end = async { pump.as_mut().expect("guarded by the condition").await }, if pump.is_some() => {
                    self.pump = None;
                    if let Some(e) = self.pump_ended(end)? {
                        return Ok(Err(e));
                    }
                }
            }
        }
    }

    async fn wait(&mut self) -> wasmtime::Result<Result<process::ExitStatus, AdapterError>> {
        if let Some(s) = &self.status {
            return Ok(Ok(s.clone()));
        }
        self.stdin = None;
        let status = loop {
            let pump = &mut self.pump;
            tokio::select! {
                end = async { pump.as_mut().expect("guarded by the condition").await }, if pump.is_some() => {
                    self.pump = None;
                    self.pump_ended(end)?;
                }
                status = self.child.wait() => {
                    self.reaped = status.is_ok();
                    self.settled.store(self.reaped, Ordering::Relaxed);
                    break status;
                }
            }
        };
        // The process is gone: a pump still writing meets a closed pipe.
        if let Some(p) = self.pump.take() {
            let end = p.await;
            self.pump_ended(end)?;
        }
        let status = status.map_err(|e| fault(format!("waiting for {}: {e}", self.program)))?;
        // A grandchild may hold stderr open: do not wait on it for long.
        let tail = match self.stderr.take() {
            Some(h) => match tokio::time::timeout(std::time::Duration::from_secs(2), h).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            },
            None => String::new(),
        };
        let s = process::ExitStatus {
            code: status.code(),
            signal: status.signal(),
            stderr_tail: tail,
        };
        self.status = Some(s.clone());
        match &self.failure {
            Some(e) => Ok(Err(e.clone())),
            None => Ok(Ok(s)),
        }
    }
}

/// Give a pipe [`PIPE_SIZE`] of buffer (best effort; Linux allows it up
/// to `/proc/sys/fs/pipe-max-size`, 1 MiB by default): a program writing in
/// 4 KiB pieces then wakes the host once per batch, not once per piece.
fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
}

/// The read size below which a pump pauses (see [`PUMP_SHORT_READ`]): a
/// quarter of the pipe's real buffer, which may have stayed small (a lower
/// `pipe-max-size`, a user over `pipe-user-pages-soft`), so a pause can
/// never hold a fast producer to a small pipe's pace.
fn short_read(stdout: Option<&ChildStdout>) -> usize {
    stdout
        .and_then(|fd| rustix::pipe::fcntl_getpipe_size(fd).ok())
        .map_or(0, |size| (size / 4).min(PUMP_SHORT_READ))
}

/// Keep the last [`STDERR_TAIL`] bytes a process writes to standard error.
async fn drain_tail(mut stderr: tokio::process::ChildStderr) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
    }
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
    tail
}

/// Feed `content` into `stdin`; see [`PumpEnd`].
async fn feed(mut content: ContentReader, mut stdin: ChildStdin, entry: String) -> PumpEnd {
    loop {
        let blob = match content.next_blob().await {
            Ok(Some(b)) => b,
            Ok(None) => return PumpEnd::Done,
            Err(e @ (RepoError::Corrupt { .. } | RepoError::BlobNotFound(_))) => {
                return PumpEnd::Failed(
                    AdapterError::Corrupt(format!("{entry}: {e}")),
                    Some(stdin),
                );
            }
            Err(e) => return PumpEnd::Fault(format!("reading {entry}: {e}"), Some(stdin)),
        };
        match stdin.write_all(&blob).await {
            Ok(()) => {}
            // It stopped reading (exited, or closed its input): its exit
            // status tells the adapter why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return PumpEnd::Done,
            Err(e) => {
                return PumpEnd::Failed(
                    AdapterError::Io(format!("writing {entry} to the process: {e}")),
                    Some(stdin),
                );
            }
        }
    }
}

fn stdio(s: process::Stdio) -> std::process::Stdio {
    match s {
        process::Stdio::Null => std::process::Stdio::null(),
        process::Stdio::Pipe => std::process::Stdio::piped(),
    }
}

impl process::Host for HostState {
    async fn granted_programs(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.grants.program_names())
    }

    async fn spawn(&mut self, cmd: process::Command) -> HostResult<Resource<ChildState>> {
        let spawn = Spawn {
            program: &cmd.program,
            args: &cmd.args,
            secret_env: &cmd.secret_env,
            stdin: stdio(cmd.stdin),
            stdout: stdio(cmd.stdout),
            label: &self.adapter,
            die_with_parent: false,
        };
        let (mut child, pid) = match spawn_confined(&self.grants, spawn) {
            Ok(c) => c,
            Err(SpawnError::Adapter(e)) => return Ok(Err(e)),
            Err(SpawnError::Fault(e)) => return Err(fault(e)),
        };
        // Arguments may carry names, never secrets (those go by reference).
        tracing::info!(adapter = %self.adapter, program = %crate::util::escaped(&cmd.program), pid, args = ?cmd.args, "Started a process.");
        let stderr = child.stderr.take().map(|e| tokio::spawn(drain_tail(e)));
        let stdout = child.stdout.take().inspect(widen_pipe);
        let state = ChildState {
            short_read: short_read(stdout.as_ref()),
            program: cmd.program,
            pid,
            stdin: child.stdin.take().inspect(widen_pipe),
            stdout,
            child,
            stderr,
            pump: None,
            failure: None,
            status: None,
            reaped: false,
            settled: Arc::new(AtomicBool::new(false)),
        };
        self.started.push(Started {
            program: state.program.clone(),
            pid,
            settled: state.settled.clone(),
        });
        Ok(Ok(self.table.push(state)?))
    }
}

/// A granted program to start (see [`spawn_confined`]).
pub(crate) struct Spawn<'a> {
    /// The program's granted name.
    pub program: &'a str,
    /// Its arguments.
    pub args: &'a [String],
    /// Environment variables whose values are granted secrets: (variable, secret name).
    pub secret_env: &'a [(String, String)],
    /// Its standard input.
    pub stdin: std::process::Stdio,
    /// Its standard output.
    pub stdout: std::process::Stdio,
    /// Who starts it, for the logs (the adapter, or a host task).
    pub label: &'a str,
    /// Send it SIGTERM when the thread that started it ends (the agent
    /// killed, say): for programs that outlive a call, which would
    /// otherwise run on as orphans.
    pub die_with_parent: bool,
}

/// Why a program did not start.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// Refused or failed in a way the caller may report and handle (not
    /// granted, not found, the OS refused).
    Adapter(AdapterError),
    /// The confinement could not be set up: nothing may run.
    Fault(String),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Adapter(e) => write!(f, "{e}"),
            SpawnError::Fault(e) => write!(f, "{e}"),
        }
    }
}

/// Start a program `grants` grants, natively, the way every granted
/// program starts: a clean environment (`PATH`, `LC_ALL=C`, no home, the
/// job's variables and the secrets named), `/` as its working directory,
/// its own process group, standard error piped (the caller drains it),
/// killed when dropped, and confined (it reaches only the endpoints and
/// sockets the job grants, gains no privilege, cannot read the agent's
/// memory). Returns the child and its process id.
pub(crate) fn spawn_confined(
    grants: &Grants,
    cmd: Spawn<'_>,
) -> Result<(tokio::process::Child, u32), SpawnError> {
    let Some(path) = grants.program(cmd.program).map(|p| p.to_path_buf()) else {
        tracing::warn!(by = %cmd.label, program = %crate::util::escaped(cmd.program), "Denied a program the job does not grant.");
        return Err(SpawnError::Adapter(AdapterError::Denied(format!(
            "program {}: this job does not grant it (granted: {})",
            cmd.program,
            grants.program_names().join(", ")
        ))));
    };
    let mut command = tokio::process::Command::new(&path);
    command
        .args(cmd.args)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("LC_ALL", "C")
        // No home: the agent user's own password files (~/.pgpass,
        // ~/.my.cnf) are not the job's to use.
        .env("HOME", CHILD_HOME)
        .envs(grants.env())
        .current_dir("/")
        .stdin(cmd.stdin)
        .stdout(cmd.stdout)
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (var, secret) in cmd.secret_env {
        super::super::grants::check_env_name(var)
            .map_err(|e| SpawnError::Adapter(grant_error(e)))?;
        let value = grants
            .secret(secret)
            .map_err(|e| SpawnError::Adapter(grant_error(e)))?;
        command.env(var, std::ffi::OsStr::from_bytes(&value));
    }
    if cmd.die_with_parent {
        let parent = rustix::process::getpid();
        // SAFETY: prctl and getppid only, on no memory of the parent's.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the line above.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other("the agent ended"));
                }
                Ok(())
            });
        }
    }
    // The program runs outside the sandbox: it reaches only the
    // endpoints the job grants, and cannot read the agent's memory.
    let confinement = super::confine::Confinement::new().map_err(|e| {
        SpawnError::Fault(format!(
            "cannot prepare the confinement of program {}: {e}",
            cmd.program
        ))
    })?;
    // SAFETY: the hook only makes system calls (prctl, seccomp,
    // sendmsg, close) with memory it owns, as a forked child must.
    unsafe {
        command.pre_exec(confinement.child_hook());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpawnError::Adapter(AdapterError::NotFound(format!(
                "program {} ({}): {e}",
                cmd.program,
                path.display()
            ))));
        }
        Err(e) => {
            return Err(SpawnError::Adapter(AdapterError::Io(format!(
                "starting {} ({}): {e}",
                cmd.program,
                path.display()
            ))));
        }
    };
    let pid = child.id().unwrap_or_default();
    let allowed = super::confine::Allowed::for_job(grants.connect(), grants.sockets());
    if let Err(e) = confinement.supervise(
        allowed,
        format!("{} (pid {pid})", crate::util::escaped(cmd.program)),
    ) {
        let _ = child.start_kill();
        return Err(SpawnError::Fault(format!(
            "cannot supervise the network use of program {}: {e}",
            cmd.program
        )));
    }
    Ok((child, pid))
}

use std::os::unix::ffi::OsStrExt;

impl process::HostChild for HostState {
    async fn pid(&mut self, c: Resource<ChildState>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&c)?.pid)
    }

    async fn write_stdin(&mut self, c: Resource<ChildState>, bytes: Vec<u8>) -> HostResult<()> {
        let child = self.table.get_mut(&c)?;
        let Some(stdin) = child.stdin.as_mut() else {
            return Ok(Err(AdapterError::Other(format!(
                "{}: standard input is not a pipe (spawn it with stdin = pipe), or was closed or pumped",
                child.program
            ))));
        };
        Ok(stdin.write_all(&bytes).await.map_err(|e| {
            AdapterError::Io(format!(
                "writing to {}'s standard input: {e}",
                child.program
            ))
        }))
    }

    async fn close_stdin(&mut self, c: Resource<ChildState>) -> wasmtime::Result<()> {
        self.table.get_mut(&c)?.stdin = None;
        Ok(())
    }

    async fn read_stdout(&mut self, c: Resource<ChildState>, max: u32) -> HostResult<Vec<u8>> {
        let child = self.table.get_mut(&c)?;
        let mut buf = vec![0u8; max.clamp(1, MAX_READ) as usize];
        let n = match child.read_stdout(&mut buf).await? {
            Ok(n) => n,
            Err(e) => {
                self.note_damage(&e);
                return Ok(Err(e));
            }
        };
        buf.truncate(n);
        Ok(Ok(buf))
    }

    async fn pump_stdout(
        &mut self,
        c: Resource<ChildState>,
        w: Resource<WriterState>,
    ) -> HostResult<u64> {
        let (sender, params) = match &self.job {
            Job::Backup(job) => (job.pipeline.data_sender(), job.params.clone()),
            Job::Restore(_) | Job::Check => {
                return Ok(Err(AdapterError::Other(
                    "pump-stdout writes an entry: it works only during a backup".into(),
                )));
            }
        };
        let writer = self.table.get_mut(&w)?;
        if let Some(reason) = &writer.refused {
            return Ok(Err(AdapterError::Io(format!(
                "entry {} refused: {reason}",
                crate::util::escaped(&writer.path)
            ))));
        }
        let Some(mut chunker) = writer.chunker.take() else {
            return Ok(Err(AdapterError::Other(format!(
                "entry {} is already finished",
                writer.path
            ))));
        };
        let child = self.table.get_mut(&c)?;
        let mut pending = Vec::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; PUMP_READ];
        let outcome = loop {
            let n = match child.read_stdout(&mut buf).await? {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            total += n as u64;
            for chunk in chunker.push(&buf[..n]) {
                pending.push(sender.add(chunk).await.map_err(fault)?);
            }
            if n < child.short_read {
                tokio::time::sleep(PUMP_PAUSE).await;
            }
        };
        // Nothing more comes from it: a later read would only see the end.
        child.stdout = None;
        let writer = self.table.get_mut(&w)?;
        match outcome {
            Ok(()) => {
                writer.chunker = Some(chunker);
                writer.pending.extend(pending);
                writer.size += total;
                Ok(Ok(total))
            }
            Err(e) => {
                // A half-read stream must not be stored as if whole.
                writer.chunker = Some(Chunker::new(params));
                writer.pending.clear();
                writer.size = 0;
                Ok(Err(e))
            }
        }
    }

    async fn pump_stdin(
        &mut self,
        c: Resource<ChildState>,
        r: Resource<ReaderState>,
    ) -> HostResult<()> {
        let reader = self.table.delete(r)?;
        let child = self.table.get_mut(&c)?;
        if child.pump.is_some() {
            return Ok(Err(AdapterError::Other(format!(
                "{}: its standard input is being pumped already",
                child.program
            ))));
        }
        let Some(stdin) = child.stdin.take() else {
            return Ok(Err(AdapterError::Other(format!(
                "{}: standard input is not a pipe (spawn it with stdin = pipe), or was closed",
                child.program
            ))));
        };
        child.pump = Some(tokio::spawn(feed(reader.reader, stdin, reader.path)));
        Ok(Ok(()))
    }

    async fn wait(&mut self, c: Resource<ChildState>) -> HostResult<process::ExitStatus> {
        let child = self.table.get_mut(&c)?;
        let status = child.wait().await?;
        if let Err(e) = &status {
            self.note_damage(e);
        } else if let Ok(s) = &status {
            let program = &self.table.get(&c)?.program;
            tracing::info!(adapter = %self.adapter, program = %crate::util::escaped(program), code = ?s.code, signal = ?s.signal, "Process ended.");
        }
        Ok(status)
    }

    async fn kill(&mut self, c: Resource<ChildState>) -> wasmtime::Result<()> {
        let child = self.table.get_mut(&c)?;
        child.kill();
        child.settled.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn drop(&mut self, c: Resource<ChildState>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}
