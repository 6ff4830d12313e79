#![expect(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test, with its location"
)]

//! Cairn's integration tests: the real `cairn` binary, the real `restic`
//! binary and real files. One test binary, one module per area.

mod agent;
mod common;
mod faults;
mod filesystem;
mod forget;
mod garage;
mod hardening;
mod kit;
mod languages;
mod mariadb;
mod objects;
mod pitr;
mod postgres;
mod reads;
mod redis;
mod restic;
mod s3;
