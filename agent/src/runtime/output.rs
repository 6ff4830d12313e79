//! An adapter's standard output and error: each line into the host's log,
//! tagged with the adapter and escaped (no line can forge another), and
//! the tail of standard error kept, so that a trap is explained by what
//! the guest printed last (a Python traceback, a JavaScript stack).
//!
//! Bounded: a line is cut at [`LINE`] bytes, a job logs at most [`LOGGED`]
//! bytes of each stream (then says once that the rest is not logged), and
//! the tail holds at most [`TAIL`] bytes, whatever the guest writes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line logged; the rest of a longer line starts a new one.
const LINE: usize = 4096;
/// Most bytes of one stream a job logs.
const LOGGED: usize = 1 << 20;
/// Most lines of one stream a job logs (short lines are many records).
const LOGGED_LINES: usize = 10_000;
/// Most bytes, and lines, of standard error kept to explain a trap.
const TAIL: usize = 16 << 10;
const TAIL_LINES: usize = 200;

/// Whether standard error lines are also printed on ours, live.
static LIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Print every adapter's standard error on this process's, line by line
/// as it comes (escaped, prefixed with the adapter's name), besides
/// logging it (`--adapter-stderr`).
pub fn stream_adapter_stderr() {
    LIVE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Which stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, logged at info.
    Stdout,
    /// Standard error, logged at warn: an adapter prints there what went
    /// wrong.
    Stderr,
}

#[derive(Default)]
struct State {
    partial: Vec<u8>,
    logged: usize,
    lines: usize,
    silenced: bool,
    tail: VecDeque<String>,
    tail_bytes: usize,
}

/// One stream of one job's adapter. Clones share the same state.
#[derive(Clone)]
pub struct GuestOutput {
    adapter: Arc<str>,
    stream: Stream,
    state: Arc<Mutex<State>>,
}

impl GuestOutput {
    /// A stream of `adapter`'s, logged and (for standard error) kept.
    pub fn new(adapter: &str, stream: Stream) -> Self {
        GuestOutput {
            adapter: adapter.into(),
            stream,
            state: Arc::default(),
        }
    }

    /// What the guest wrote last (standard error: its tail), with the line
    /// it had not ended yet; empty if nothing.
    pub fn tail(&self) -> String {
        let mut s = crate::util::lock(&self.state);
        let partial = std::mem::take(&mut s.partial);
        if !partial.is_empty() {
            self.line(&mut s, &partial);
        }
        s.tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_matches('\n')
            .to_string()
    }

    fn take(&self, bytes: &[u8]) {
        let mut s = crate::util::lock(&self.state);
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut s.partial);
                self.line(&mut s, &line);
            } else {
                s.partial.push(b);
                if s.partial.len() >= LINE {
                    let line = std::mem::take(&mut s.partial);
                    self.line(&mut s, &line);
                }
            }
        }
    }

    fn line(&self, s: &mut State, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = crate::util::escaped(text.trim_end_matches('\r')).into_owned();
        if self.stream == Stream::Stderr && !text.trim().is_empty() {
            s.tail_bytes += text.len();
            s.tail.push_back(text.clone());
            while (s.tail_bytes > TAIL || s.tail.len() > TAIL_LINES) && s.tail.len() > 1 {
                let gone = s.tail.pop_front().map_or(0, |l| l.len());
                s.tail_bytes -= gone;
            }
        }
        if self.stream == Stream::Stderr && LIVE.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{}: {text}", crate::util::escaped(&self.adapter));
        }
        if s.silenced || text.trim().is_empty() {
            return;
        }
        s.logged += raw.len() + 1;
        s.lines += 1;
        let adapter = &*self.adapter;
        if s.logged > LOGGED || s.lines > LOGGED_LINES {
            s.silenced = true;
            tracing::warn!(adapter, stream = ?self.stream, "The adapter wrote more than {} MiB or {LOGGED_LINES} lines; the rest of this stream is not logged.", LOGGED >> 20);
            return;
        }
        match self.stream {
            Stream::Stdout => tracing::info!(adapter, stream = "stdout", "{text}"),
            Stream::Stderr => tracing::warn!(adapter, stream = "stderr", "{text}"),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_and_the_unfinished_one() {
        let err = GuestOutput::new("a", Stream::Stderr);
        err.take(
            b"Traceback (most recent call last):\n  File \"app.py\", line 3\r\nValueError: bo",
        );
        err.take(b"om");
        assert_eq!(
            err.tail(),
            "Traceback (most recent call last):\n  File \"app.py\", line 3\nValueError: boom"
        );
    }

    #[test]
    fn whatever_the_guest_writes_the_tail_stays_bounded_and_escaped() {
        let err = GuestOutput::new("a", Stream::Stderr);
        for i in 0..100_000 {
            err.take(format!("line {i}\x1b[31m\n").as_bytes());
        }
        err.take(&vec![b'x'; 3 * LINE]);
        let tail = err.tail();
        assert!(tail.len() <= TAIL + LINE, "{}", tail.len());
        assert!(tail.contains("line 99999\\u{1b}[31m"), "{tail}");
        assert!(!tail.contains('\x1b'));
        assert!(tail.ends_with(&"x".repeat(LINE)));
        // Many short or blank lines: bounded by lines as well as bytes
        // (red-team finding: 1 MiB of two-byte lines was 512K records).
        let err = GuestOutput::new("a", Stream::Stderr);
        for _ in 0..50_000 {
            err.take(b"x\n\n");
        }
        assert!(crate::util::lock(&err.state).silenced);
        assert_eq!(err.tail().lines().count(), TAIL_LINES);
        // Standard output keeps no tail.
        let out = GuestOutput::new("a", Stream::Stdout);
        out.take(b"hello\n");
        assert_eq!(out.tail(), "");
    }
}
