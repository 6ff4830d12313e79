//! Starting the programs the job grants (`pg_dump`, `mariadb`, ...).
//!
//! The host runs them natively. [`Child::pump_stdout`] appends a process's
//! output to an entry and [`Child::pump_stdin`] feeds an entry to a
//! process, neither copying the bytes through the adapter; reading and
//! writing the pipes yourself ([`Child`] implements [`std::io::Read`] on
//! standard output) is for small outputs such as a query's result.
//!
//! ```no_run
//! use cairn_sdk::process::{Command, Stdio};
//! # fn main() -> Result<(), cairn_sdk::Error> {
//! let mut entry = cairn_sdk::archive::begin_stream("/postgres/shop.dump", &cairn_sdk::Metadata::with_mode(0o600))?;
//! let mut dump = Command::new("pg_dump")
//!     .args(["--format=custom", "--dbname=shop"])
//!     .secret_env("PGPASSWORD", "pg-password")
//!     .stdout(Stdio::Pipe)
//!     .spawn()?;
//! dump.pump_stdout(&mut entry)?;
//! dump.wait()?.check("pg_dump")?;
//! entry.finish()?;
//! # Ok(())
//! # }
//! ```

use crate::wit::cairn::adapter0_2_0::process as host;
use crate::{Error, archive::EntryWriter, io_error, snapshot::EntryReader};

pub use host::ExitStatus;

/// What a standard stream is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Nothing.
    Null,
    /// A pipe the adapter drives.
    Pipe,
}

impl From<Stdio> for host::Stdio {
    fn from(s: Stdio) -> Self {
        match s {
            Stdio::Null => host::Stdio::Null,
            Stdio::Pipe => host::Stdio::Pipe,
        }
    }
}

/// A program to start, built like [`std::process::Command`].
#[derive(Debug, Clone)]
pub struct Command {
    program: String,
    args: Vec<String>,
    secret_env: Vec<(String, String)>,
    stdin: Stdio,
    stdout: Stdio,
}

impl Command {
    /// The program, by the name the job grants it under.
    pub fn new(program: &str) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            secret_env: Vec::new(),
            stdin: Stdio::Null,
            stdout: Stdio::Null,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set variable `var` to the value of the job's secret `secret`; the
    /// adapter never sees the value.
    pub fn secret_env(mut self, var: &str, secret: &str) -> Self {
        self.secret_env.push((var.into(), secret.into()));
        self
    }

    /// Connect standard input (default: [`Stdio::Null`]).
    pub fn stdin(mut self, s: Stdio) -> Self {
        self.stdin = s;
        self
    }

    /// Connect standard output (default: [`Stdio::Null`]).
    pub fn stdout(mut self, s: Stdio) -> Self {
        self.stdout = s;
        self
    }

    /// Start it.
    pub fn spawn(&self) -> Result<Child, Error> {
        let inner = host::spawn(&host::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            secret_env: self.secret_env.clone(),
            stdin: self.stdin.into(),
            stdout: self.stdout.into(),
        })?;
        Ok(Child {
            inner,
            program: self.program.clone(),
        })
    }

    /// Run it with its standard output pumped natively into a new
    /// stream entry at `path` (a database dump, say). The entry is
    /// recorded only if the program exits with code 0; otherwise it is
    /// cancelled and the error names `what`, with the end of the
    /// program's standard error. Returns the bytes stored.
    pub fn stream_into(self, path: &str, meta: &crate::Metadata, what: &str) -> Result<u64, Error> {
        let mut entry = crate::archive::begin_stream(path, meta)?;
        let outcome = (|| {
            let mut child = self.stdout(Stdio::Pipe).spawn()?;
            let pumped = child.pump_stdout(&mut entry);
            // Wait whatever the pump did, so the status explains it.
            let status = child.wait();
            let n = pumped?;
            status?.check(what)?;
            Ok(n)
        })();
        match outcome {
            Ok(n) => {
                entry.finish()?;
                Ok(n)
            }
            Err(e) => {
                entry.cancel();
                Err(e)
            }
        }
    }

    /// Run it to the end with standard output collected in memory (for
    /// small outputs); fails unless it exits with code 0, with its
    /// standard error in the message.
    pub fn output(self) -> Result<Vec<u8>, Error> {
        let mut child = self.stdout(Stdio::Pipe).spawn()?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut child, &mut out)?;
        child.wait()?.check(&child.program)?;
        Ok(out)
    }
}

/// A started process. Dropping it kills the process if it still runs.
pub struct Child {
    inner: host::Child,
    program: String,
}

impl Child {
    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// The program's name, as spawned.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Write to standard input.
    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Ok(self.inner.write_stdin(bytes)?)
    }

    /// Close standard input.
    pub fn close_stdin(&mut self) {
        self.inner.close_stdin();
    }

    /// Append all of standard output to `entry`, natively; returns the
    /// bytes appended.
    pub fn pump_stdout(&mut self, entry: &mut EntryWriter) -> Result<u64, Error> {
        let writer = entry.flushed()?;
        Ok(self.inner.pump_stdout(writer)?)
    }

    /// Feed `entry`'s content to standard input natively, in the
    /// background, then close it. A damage in the content kills the
    /// process and fails [`Child::wait`].
    pub fn pump_stdin(&mut self, entry: EntryReader) -> Result<(), Error> {
        Ok(self.inner.pump_stdin(entry.into_host())?)
    }

    /// Wait for the process to end.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        Ok(self.inner.wait()?)
    }

    /// Kill it.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Call `each` with every line of standard output (without its
    /// newline) until the end; for outputs the adapter must read, such
    /// as a query's rows.
    pub fn for_each_line(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, self);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            each(&line)?;
        }
    }
}

impl std::io::Read for Child {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(1 << 20) as u32;
        let bytes = self
            .inner
            .read_stdout(want)
            .map_err(|e| io_error(e.into()))?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `Ok` on success; otherwise an error naming `what` with how it
    /// ended and the end of its standard error.
    pub fn check(&self, what: &str) -> Result<(), Error> {
        if self.success() {
            return Ok(());
        }
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            (None, None) => "ended abnormally".to_string(),
        };
        let tail = self.stderr_tail.trim();
        // The last lines say what went wrong; keep the message readable.
        let lines: Vec<&str> = tail.lines().collect();
        let shown = lines[lines.len().saturating_sub(12)..].join("\n");
        Err(Error::Other(if shown.is_empty() {
            format!("{what} {how}")
        } else {
            format!("{what} {how}: {shown}")
        }))
    }
}

/// The programs the job grants.
pub fn granted_programs() -> Vec<String> {
    host::granted_programs()
}
