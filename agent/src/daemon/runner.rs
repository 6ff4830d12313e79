//! Running one command of the agent's work (a backup, a drill, a restore,
//! a forget) as a child process of this same binary, against the config
//! file the agent validated.
//!
//! A child per run keeps runs apart: a run that panics, leaks or is killed
//! cannot take the agent or another run with it, and stopping a run is a
//! signal, which every command already handles (SIGTERM: stop where it is,
//! record no snapshot, remove its locks). Children sit in their own process
//! group, so a Ctrl-C at the agent's terminal reaches the agent alone, and
//! die with SIGTERM if the agent itself dies.

use crate::ops::protocol::{self, End, Exit, Message};
use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a child may take to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// Lines of a child's stderr kept for the run's error message.
const STDERR_TAIL: usize = 20;

/// Why a child was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It ran past its timeout.
    Timeout,
    /// The agent is shutting down and the grace period ran out.
    Abort,
}

/// What a child did.
#[derive(Debug, Default)]
pub struct Finished {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Why the agent stopped it, if it did.
    pub stopped: Option<Stopped>,
    /// The messages it sent (its report), progress aside.
    pub messages: Vec<Message>,
    /// Its last message, saying how it ended (`None`: it died first).
    pub end: Option<End>,
    /// The end of its stderr.
    pub stderr: Vec<String>,
}

impl Finished {
    /// How it ended, by the meaning of its exit code.
    pub fn exit(&self) -> Option<Exit> {
        Exit::from_code(self.code)
    }

    /// Why it failed or what it left out, as it said; else (it died
    /// before it could say) the last line of its stderr, else its exit.
    pub fn error(&self) -> String {
        if let Some(e) = self.end.as_ref().and_then(End::explanation) {
            return e;
        }
        match self.stderr.last() {
            Some(l) => l.clone(),
            None => match self.code {
                Some(c) => format!("exited with code {c}"),
                None => "killed by a signal".into(),
            },
        }
    }

    /// Residency refusals it counted.
    pub fn residency_refusals(&self) -> u64 {
        self.end.as_ref().map_or(0, |e| e.residency_refusals)
    }
}

/// Run `cairn <args>`; `on_live` sees each live message (a backup's
/// progress, a WAL stream's state), which is not kept: a child that runs
/// for weeks says them all the while. The child is stopped (SIGTERM, then
/// SIGKILL after [`STOP_GRACE`]) at `timeout` or when `abort` turns true.
pub async fn run(
    label: &str,
    args: &[String],
    timeout: Option<Duration>,
    mut abort: tokio::sync::watch::Receiver<bool>,
    mut on_live: impl FnMut(&Message),
) -> std::io::Result<Finished> {
    // /proc/self/exe still names this binary after an upgrade replaced
    // the file (current_exe would then end in " (deleted)").
    let exe = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let agent_pid = std::process::id();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .env(protocol::CHILD_ENV, protocol::VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only this (forked)
    // process's own attributes.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died before the line above: no signal will come.
            if libc::getppid() as u32 != agent_pid {
                return Err(std::io::Error::other("the agent is gone"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let label_owned = label.to_string();
    let stderr_task = tokio::spawn(async move {
        let mut tail = VecDeque::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(run = %label_owned, "{line}");
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>()
    });
    let mut out = Finished::default();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let aborted = async {
        loop {
            if *abort.borrow_and_update() {
                return;
            }
            if abort.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(aborted);
    let mut stdout_open = true;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let kill = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next_line(), if stdout_open => match line {
                Ok(Some(line)) => {
                    if let Some(m) = receive(label, &line, &mut out) {
                        on_live(&m);
                    }
                }
                _ => stdout_open = false,
            },
            status = child.wait() => {
                out.code = status?.code();
                break;
            }
            _ = &mut deadline, if out.stopped.is_none() => {
                out.stopped = Some(Stopped::Timeout);
                terminate(pid);
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = &mut aborted, if out.stopped.is_none() => {
                out.stopped = Some(Stopped::Abort);
                terminate(pid);
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = kill => {
                tracing::warn!(run = %label, "The command did not stop within {}s of SIGTERM; killing it.", STOP_GRACE.as_secs());
                // The whole process group: the command and anything it started.
                if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.start_kill();
                kill_at = None;
            }
        }
    }
    // What the child printed after its stdout was last read.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
    {
        receive(label, &line, &mut out);
    }
    out.stderr = tokio::time::timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Ok(out)
}

/// Take one line of a child's output: a message is kept (an end as its
/// end, a report with its messages); a live one (progress, a stream's
/// state) is handed back; anything else is logged and dropped.
fn receive(label: &str, line: &str, out: &mut Finished) -> Option<Message> {
    // The end is the last word: nothing after it counts.
    if out.end.is_some() {
        tracing::warn!(run = %label, line = %crate::util::escaped(line), "Ignoring output after the command's end message.");
        return None;
    }
    match protocol::decode(line) {
        Ok(m @ (Message::Progress(_) | Message::WalStatus(_))) => return Some(m),
        Ok(Message::End(end)) => out.end = Some(end),
        Ok(m) => out.messages.push(m),
        Err(e) => {
            tracing::debug!(run = %label, line = %crate::util::escaped(line), error = %e, "Ignoring a line that is no message.");
        }
    }
    None
}

/// Ask a child (not yet reaped, so its pid is still its own) to stop.
fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Run a hook command (a group's quiesce or release) with a timeout. It
/// gets a plain environment (no storage credentials from the agent's) and
/// its own process group, killed whole at the timeout.
pub async fn hook(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pid = child.id();
    // Dropped (a timeout, an abort) before the hook ended: kill all of it.
    let group = KillGroupOnDrop(pid);
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Read what it says, but do not wait for a pipe a background process
    // it left behind may hold open.
    let said = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        buf
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s.map_err(|e| format!("{program}: {e}"))?,
        Err(_) => {
            return Err(format!(
                "{program} took longer than {}s and was killed",
                timeout.as_secs()
            ));
        }
    };
    // It ended: what it left running in its group is its own business.
    std::mem::forget(group);
    if status.success() {
        said.abort();
        return Ok(());
    }
    let said = tokio::time::timeout(Duration::from_secs(1), said)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Err(format!(
        "{program} failed ({status}): {}",
        String::from_utf8_lossy(&said).trim()
    ))
}

/// Kills a hook's whole process group when dropped.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self
            .0
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::backup::Progress;
    use crate::ops::protocol::{ErrorKind, Failure, encode};

    fn end() -> Message {
        Message::End(End {
            exit: Exit::Failed,
            error: Some(Failure {
                kind: ErrorKind::Adapter,
                message: "adapter x: trapped".into(),
            }),
            notes: vec![],
            residency_refusals: 0,
            storage_retries: 3,
        })
    }

    #[test]
    fn only_messages_before_the_end_count_and_stray_lines_are_dropped() {
        let mut f = Finished::default();
        let progress = Message::Progress(Progress {
            bytes_read: 10,
            bytes_stored: 5,
        });
        assert!(matches!(
            receive("t", &encode(&progress), &mut f),
            Some(Message::Progress(p)) if p.bytes_read == 10
        ));
        assert!(receive("t", "restored 3 files", &mut f).is_none());
        assert!(receive("t", "{\"message_type\":\"summary\"}", &mut f).is_none());
        receive("t", &encode(&end()), &mut f);
        // A line after the end (forged, or anything else) is not read.
        receive("t", &encode(&Message::Snapshots(vec![])), &mut f);
        assert!(f.messages.is_empty(), "{:?}", f.messages);
        let end = f.end.as_ref().expect("the end was kept");
        assert_eq!(end.storage_retries, 3);
        assert_eq!(f.error(), "adapter x: trapped");
    }

    #[test]
    fn a_child_that_died_before_its_end_is_explained_by_its_stderr_or_exit() {
        let f = Finished {
            code: None,
            stderr: vec!["thread 'main' panicked at x".into()],
            ..Default::default()
        };
        assert_eq!(f.error(), "thread 'main' panicked at x");
        assert_eq!(f.exit(), None);
        let f = Finished {
            code: Some(3),
            ..Default::default()
        };
        assert_eq!(f.exit(), Some(Exit::Incomplete));
        assert_eq!(f.error(), "exited with code 3");
    }
}
