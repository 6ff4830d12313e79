//! Process-wide counters a command reports to the agent that started it:
//! residency refusals and storage retries happen deep in the storage
//! stack, and a run that fails because of one still has to be counted.

use std::sync::atomic::{AtomicU64, Ordering};

static RESIDENCY_REFUSALS: AtomicU64 = AtomicU64::new(0);
static STORAGE_RETRIES: AtomicU64 = AtomicU64::new(0);

/// A request the residency policy refused (never sent).
pub fn residency_refused() {
    RESIDENCY_REFUSALS.fetch_add(1, Ordering::Relaxed);
}

/// A storage request that is being tried again.
pub fn storage_retried() {
    STORAGE_RETRIES.fetch_add(1, Ordering::Relaxed);
}

/// The counters as one JSON object, as the agent reads them.
pub fn report() -> serde_json::Value {
    serde_json::json!({
        "message_type": "telemetry",
        "residency_refusals": RESIDENCY_REFUSALS.load(Ordering::Relaxed),
        "storage_retries": STORAGE_RETRIES.load(Ordering::Relaxed),
    })
}

/// Set by `cairn agent` on the commands it runs: they then print progress
/// and a final telemetry line on stdout.
pub const AGENT_CHILD_ENV: &str = "CAIRN_AGENT_CHILD";

/// Whether this process was started by `cairn agent`.
pub fn is_agent_child() -> bool {
    std::env::var_os(AGENT_CHILD_ENV).is_some()
}
