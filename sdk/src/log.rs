//! Logging into the host's log, tagged with the adapter's name.

use crate::wit::cairn::adapter0_1_0::log::{Level, write};

/// Log at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}
/// Log at info level.
pub fn info(message: &str) {
    write(Level::Info, message);
}
/// Log a warning.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}
/// Log an error.
pub fn error(message: &str) {
    write(Level::Error, message);
}
