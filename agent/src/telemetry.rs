//! Process-wide counters a command reports to the agent that started it
//! (in the end message of the agent protocol): residency refusals and
//! storage retries happen deep in the storage stack, and a run that fails
//! because of one still has to be counted.

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

/// Residency refusals so far.
pub fn residency_refusals() -> u64 {
    RESIDENCY_REFUSALS.load(Ordering::Relaxed)
}

/// Storage retries so far.
pub fn storage_retries() -> u64 {
    STORAGE_RETRIES.load(Ordering::Relaxed)
}
