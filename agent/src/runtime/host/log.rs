//! The `log` interface: an adapter's log lines, into the host's log with
//! the adapter named (escaped, so no line can be forged).

use super::*;

impl wit::log::Host for HostState {
    async fn write(&mut self, level: wit::log::Level, message: String) -> wasmtime::Result<()> {
        let adapter = self.adapter.as_str();
        // A newline or an escape sequence must not forge a log line.
        let message = crate::util::escaped(&message);
        match level {
            wit::log::Level::Trace => tracing::trace!(adapter, "{message}"),
            wit::log::Level::Debug => tracing::debug!(adapter, "{message}"),
            wit::log::Level::Info => tracing::info!(adapter, "{message}"),
            wit::log::Level::Warn => tracing::warn!(adapter, "{message}"),
            wit::log::Level::Error => tracing::error!(adapter, "{message}"),
        }
        Ok(())
    }
}
