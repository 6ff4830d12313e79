//! Cairn: a per-node backup agent.
//!
//! A host process runs one sandboxed WebAssembly adapter component per data
//! service ([`runtime`]). The adapter decides what to back up and how to
//! restore it; the host moves the bytes natively through content-defined
//! chunking, deduplication, zstd and encryption ([`pipeline`]) into a
//! restic-format repository ([`repo`]) on a [`storage::Backend`]: a local
//! directory or S3, where [`residency`] keeps each tenant's data inside its
//! region pair ([`config`] declares regions, regimes, tenants and jobs).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod ops;
pub mod pipeline;
pub mod pitr;
pub mod read;
pub mod repo;
pub mod residency;
pub mod retention;
pub mod runtime;
pub mod storage;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod util;
