//! Consistency hooks around a backup: a cold-backup window.

use crate::Error;
use crate::process::{Child, Command, Stdio};

/// A SQL client session held open across a backup, so that what its
/// quiesce statements take (a table lock, a global read lock, an
/// advisory lock) is held until the release statements run in the same
/// session. If the adapter stops without releasing, the host kills the
/// client and the server drops its locks with the connection.
pub struct HeldSession {
    child: Child,
    what: String,
}

impl HeldSession {
    /// Start `client`, a SQL client that reads statements from standard
    /// input and prints each result on standard output as it comes
    /// (`psql --file=-`, `mariadb --batch --unbuffered`), stopping at
    /// the first error; run `quiesce`, then wait until a marker query
    /// run after it answers, so that `quiesce` has taken effect when
    /// this returns. `what` names the session in errors.
    pub fn open(client: Command, quiesce: &str, what: &str) -> Result<Self, Error> {
        let mut child = client.stdin(Stdio::Pipe).stdout(Stdio::Pipe).spawn()?;
        let marker = crate::database::scratch_name("cairn_quiesced");
        let script = format!("{}\nSELECT '{marker}';\n", statements(quiesce));
        let reached = child
            .write_stdin(script.as_bytes())
            .and_then(|()| read_until_marker(&mut child, &marker));
        match reached {
            Ok(true) => Ok(HeldSession {
                child,
                what: what.to_string(),
            }),
            Ok(false) | Err(_) => {
                // It stopped: its status and standard error say why.
                child.close_stdin();
                child.wait()?.check(what)?;
                Err(reached.err().unwrap_or_else(|| {
                    Error::Other(format!("{what} ended before its statements ran"))
                }))
            }
        }
    }

    /// Run `release` in the session, prove the session was still there
    /// by a marker query after it, and end it. Fails if the session died
    /// meanwhile (its locks were gone before the backup ended), even
    /// with no release statements.
    pub fn release(mut self, release: &str) -> Result<(), Error> {
        let marker = crate::database::scratch_name("cairn_released");
        let script = format!("{}\nSELECT '{marker}';\n", statements(release));
        let reached = self
            .child
            .write_stdin(script.as_bytes())
            .and_then(|()| read_until_marker(&mut self.child, &marker));
        self.child.close_stdin();
        // Whatever else it prints; then the end.
        let drained = std::io::copy(&mut self.child, &mut std::io::sink());
        self.child.wait()?.check(&self.what)?;
        match reached {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Other(format!(
                    "{}: the session ended before the release ran, so what quiesce held was not held to the end",
                    self.what
                )));
            }
            Err(e) => return Err(e),
        }
        drained?;
        Ok(())
    }
}

/// `sql` ending with `;`, so that a statement written after it is not
/// read as its continuation.
fn statements(sql: &str) -> String {
    let sql = sql.trim();
    if sql.is_empty() || sql.ends_with(';') {
        sql.to_string()
    } else {
        format!("{sql};")
    }
}

/// Read `child`'s output lines until one is `marker`: true if it came,
/// false at the end of the output.
fn read_until_marker(child: &mut Child, marker: &str) -> Result<bool, Error> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the marker may be read ahead, and the
    // output before it is a few short lines.
    loop {
        if child.read(&mut byte)? == 0 {
            return Ok(false);
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        if line.trim_ascii() == marker.as_bytes() {
            return Ok(true);
        }
        line.clear();
    }
}

/// Run `quiesce`, then `body`, then `release`, which runs whenever
/// `quiesce` succeeded, also when `body` failed, so a service is never
/// left paused by a failed backup. A failed `quiesce` runs neither
/// (there is nothing to release); a failed `release` fails the whole,
/// its error joined to `body`'s if both failed.
///
/// ```no_run
/// # fn pause() -> Result<(), cairn_sdk::Error> { Ok(()) }
/// # fn dump() -> Result<u64, cairn_sdk::Error> { Ok(0) }
/// # fn resume() -> Result<(), cairn_sdk::Error> { Ok(()) }
/// let bytes = cairn_sdk::hooks::within_window(pause, dump, resume)?;
/// # Ok::<(), cairn_sdk::Error>(())
/// ```
pub fn within_window<T>(
    quiesce: impl FnOnce() -> Result<(), Error>,
    body: impl FnOnce() -> Result<T, Error>,
    release: impl FnOnce() -> Result<(), Error>,
) -> Result<T, Error> {
    quiesce().map_err(|e| Error::Other(format!("quiesce failed, nothing was backed up: {e}")))?;
    let done = body();
    match (done, release()) {
        (done, Ok(())) => done,
        (Ok(_), Err(e)) => Err(Error::Other(format!(
            "release failed after the backup: {e}"
        ))),
        (Err(d), Err(e)) => Err(Error::Other(format!(
            "{d}; and then release failed too: {e}"
        ))),
    }
}
