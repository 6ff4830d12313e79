//! Native filesystem operations confined to the job's grants.

use crate::wit::cairn::adapter0_1_0::fs as host;
use crate::{Error, Metadata};

pub use host::FileStat;

/// The paths the job grants.
pub fn granted_paths() -> Vec<String> {
    host::granted_paths()
}
/// Metadata of a path, not following a final symlink.
pub fn stat(path: &str) -> Result<FileStat, Error> {
    Ok(host::stat(path)?)
}
/// Sorted names inside a directory.
pub fn list_dir(path: &str) -> Result<Vec<String>, Error> {
    Ok(host::list_dir(path)?)
}
/// Create a directory and missing parents.
pub fn create_dir(path: &str) -> Result<(), Error> {
    Ok(host::create_dir(path)?)
}
/// Create (or replace) a symbolic link.
pub fn create_symlink(path: &str, target: &str) -> Result<(), Error> {
    Ok(host::create_symlink(path, target)?)
}
/// Apply mode, ownership and times.
pub fn set_metadata(path: &str, meta: &Metadata) -> Result<(), Error> {
    Ok(host::set_metadata(path, *meta)?)
}
