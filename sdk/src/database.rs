//! Helpers for database adapters: naming each database's entries,
//! choosing what to restore, and naming scratch objects.

use crate::Error;

/// The databases of a snapshot (`in_snapshot`, in its order) that a
/// restore or verify takes: those in `wanted`, or all when `wanted` is
/// empty. Fails, naming it, when a wanted database is not in the
/// snapshot, or when `renaming` (a target name) is asked for with other
/// than exactly one database chosen.
pub fn choose(
    in_snapshot: &[String],
    wanted: &[String],
    renaming: bool,
) -> Result<Vec<String>, Error> {
    if let Some(missing) = wanted.iter().find(|d| !in_snapshot.contains(d)) {
        return Err(Error::NotFound(format!(
            "database {missing} is not in the snapshot (it has: {})",
            in_snapshot.join(", ")
        )));
    }
    let chosen: Vec<String> = in_snapshot
        .iter()
        .filter(|d| wanted.is_empty() || wanted.contains(d))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(Error::NotFound(
            "the snapshot holds no database dump".into(),
        ));
    }
    if renaming && chosen.len() != 1 {
        return Err(Error::InvalidConfig(format!(
            "target-database renames one database, but {} are selected ({}); choose one with databases = [...]",
            chosen.len(),
            chosen.join(", ")
        )));
    }
    Ok(chosen)
}

/// The entry `<root>/<name><suffix>` of database `db`: a `/` or `%` in
/// the name is written `%2F`, `%25`, so any name is one path component.
pub fn entry_path(root: &str, db: &str, suffix: &str) -> String {
    let name = db.replace('%', "%25").replace('/', "%2F");
    format!("{root}/{name}{suffix}")
}

/// The database whose entry ([`entry_path`]) `path` is, if it is one.
pub fn database_of(path: &str, root: &str, suffix: &str) -> Option<String> {
    let name = path
        .strip_prefix(root)?
        .strip_prefix('/')?
        .strip_suffix(suffix)?;
    Some(name.replace("%2F", "/").replace("%25", "%"))
}

/// A fresh name `<prefix>_<16 hex digits>` for a scratch database or
/// key, random each call (WASI's random source seeds it), so that it
/// never names anything that exists.
pub fn scratch_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(prefix.as_bytes());
    format!("{prefix}_{:016x}", h.finish())
}
