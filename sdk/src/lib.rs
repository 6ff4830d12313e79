//! Write Cairn backup adapters in Rust.
//!
//! An adapter is a WebAssembly component (built for `wasm32-wasip2`) that
//! decides what to back up from one data service and how to restore it. The
//! Cairn host moves the bytes: chunking, deduplication, compression,
//! encryption and storage all happen natively outside the sandbox.
//!
//! Implement [`Adapter`] and export it with [`export_adapter!`]:
//!
//! ```no_run
//! use cairn_sdk::{Adapter, BackupSummary, Error, Info, Metadata, RestoreSummary, VerifyReport};
//! use std::io::Write;
//!
//! struct Hello;
//!
//! #[derive(serde::Deserialize)]
//! struct Config { greeting: String }
//!
//! impl Adapter for Hello {
//!     type BackupConfig = Config;
//!     type RestoreConfig = serde_json::Value;
//!     type VerifyConfig = serde_json::Value;
//!
//!     fn info() -> Info {
//!         Info::new("hello", env!("CARGO_PKG_VERSION"), "Backs up one greeting.")
//!     }
//!
//!     fn backup(config: Config) -> Result<BackupSummary, Error> {
//!         let mut file = cairn_sdk::archive::begin_stream("/hello.txt", &Metadata::with_mode(0o644))?;
//!         file.write_all(config.greeting.as_bytes())?;
//!         file.finish()?;
//!         Ok(BackupSummary { files: 1, ..Default::default() })
//!     }
//!
//!     fn restore(_: serde_json::Value) -> Result<RestoreSummary, Error> {
//!         let mut summary = RestoreSummary::default();
//!         while let Some(entry) = cairn_sdk::snapshot::next_entry()? {
//!             let mut text = String::new();
//!             std::io::Read::read_to_string(&mut cairn_sdk::snapshot::open(&entry.path)?, &mut text)?;
//!             cairn_sdk::log::info(&format!("{} says {text}", entry.path));
//!             summary.files += 1;
//!         }
//!         Ok(summary)
//!     }
//!
//!     fn verify(_: serde_json::Value) -> Result<VerifyReport, Error> {
//!         Ok(VerifyReport::default())
//!     }
//! }
//!
//! cairn_sdk::export_adapter!(Hello);
//! ```

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "adapter",
        pub_export_macro: true,
        export_macro_name: "__export_cairn_adapter",
        default_bindings_module: "cairn_sdk::wit",
        generate_all,
    });
}

use wit::cairn::adapter::types as t;

pub use t::{
    BackupSummary, Capability, EntryKind, Metadata, RestoreSummary, Timestamp, VerifyReport,
};

/// Who the adapter is and what it needs.
pub type Info = t::AdapterInfo;

impl Info {
    /// An adapter that needs nothing but its own logic; add needs with
    /// [`Info::needs`].
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        t::AdapterInfo {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            needs: Vec::new(),
        }
    }

    /// Declare the capabilities the adapter needs.
    pub fn needs(mut self, needs: &[Capability]) -> Self {
        self.needs = needs.to_vec();
        self
    }
}

impl Metadata {
    /// Metadata with only permission bits set.
    pub fn with_mode(mode: u32) -> Self {
        Metadata {
            mode,
            mtime: None,
            atime: None,
            ctime: None,
            uid: None,
            gid: None,
            size: None,
            inode: None,
            device: None,
            links: None,
        }
    }
}

impl Default for BackupSummary {
    fn default() -> Self {
        BackupSummary {
            files: 0,
            directories: 0,
            symlinks: 0,
            skipped: 0,
        }
    }
}

impl Default for RestoreSummary {
    fn default() -> Self {
        RestoreSummary {
            files: 0,
            directories: 0,
            symlinks: 0,
            bytes: 0,
        }
    }
}

impl Default for VerifyReport {
    fn default() -> Self {
        VerifyReport {
            entries: 0,
            bytes: 0,
            problems: Vec::new(),
        }
    }
}

/// An adapter's error; each case maps to the WIT `adapter-error` case of the
/// same name, and the message should name the thing it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is invalid. Retrying will not help.
    InvalidConfig(String),
    /// A path or entry does not exist.
    NotFound(String),
    /// The job does not grant this path, program or endpoint.
    Denied(String),
    /// An I/O error; a retry may help.
    Io(String),
    /// The repository's data is damaged or missing.
    Corrupt(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::Denied(m) => write!(f, "denied: {m}"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
            Error::Corrupt(m) => write!(f, "damaged data: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<t::AdapterError> for Error {
    fn from(e: t::AdapterError) -> Self {
        match e {
            t::AdapterError::InvalidConfig(m) => Error::InvalidConfig(m),
            t::AdapterError::NotFound(m) => Error::NotFound(m),
            t::AdapterError::Denied(m) => Error::Denied(m),
            t::AdapterError::Io(m) => Error::Io(m),
            t::AdapterError::Corrupt(m) => Error::Corrupt(m),
            t::AdapterError::Other(m) => Error::Other(m),
        }
    }
}

impl From<Error> for t::AdapterError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => t::AdapterError::InvalidConfig(m),
            Error::NotFound(m) => t::AdapterError::NotFound(m),
            Error::Denied(m) => t::AdapterError::Denied(m),
            Error::Io(m) => t::AdapterError::Io(m),
            Error::Corrupt(m) => t::AdapterError::Corrupt(m),
            Error::Other(m) => t::AdapterError::Other(m),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // An io::Error built by this SDK from a host error carries it inside.
        match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
            Some(inner) => inner.clone(),
            None => Error::Io(e.to_string()),
        }
    }
}

fn io_error(e: Error) -> std::io::Error {
    let kind = match &e {
        Error::NotFound(_) => std::io::ErrorKind::NotFound,
        Error::Denied(_) => std::io::ErrorKind::PermissionDenied,
        Error::Corrupt(_) => std::io::ErrorKind::InvalidData,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e)
}

/// The behaviour of an adapter. Configurations arrive as JSON and are parsed
/// into the associated types; a parse failure is reported as
/// [`Error::InvalidConfig`] naming the offending key.
pub trait Adapter {
    /// Configuration of a backup.
    type BackupConfig: DeserializeOwned;
    /// Configuration of a restore.
    type RestoreConfig: DeserializeOwned;
    /// Configuration of a verification.
    type VerifyConfig: DeserializeOwned;

    /// Describe the adapter.
    fn info() -> Info;
    /// Back up: emit entries through [`archive`].
    fn backup(config: Self::BackupConfig) -> Result<BackupSummary, Error>;
    /// Restore the entries [`snapshot::next_entry`] yields.
    fn restore(config: Self::RestoreConfig) -> Result<RestoreSummary, Error>;
    /// Check the entries [`snapshot::next_entry`] yields.
    fn verify(config: Self::VerifyConfig) -> Result<VerifyReport, Error>;
}

#[doc(hidden)]
pub fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, t::AdapterError> {
    serde_json::from_str(json).map_err(|e| t::AdapterError::InvalidConfig(e.to_string()))
}

/// Export a type implementing [`Adapter`] as the component's adapter.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[doc(hidden)]
        struct __CairnAdapterExport;

        impl $crate::wit::Guest for __CairnAdapterExport {
            fn info() -> $crate::Info {
                <$adapter as $crate::Adapter>::info()
            }
            fn backup(config: String) -> Result<$crate::BackupSummary, $crate::wit::cairn::adapter::types::AdapterError> {
                let config = $crate::parse_config(&config)?;
                <$adapter as $crate::Adapter>::backup(config).map_err(Into::into)
            }
            fn restore(config: String) -> Result<$crate::RestoreSummary, $crate::wit::cairn::adapter::types::AdapterError> {
                let config = $crate::parse_config(&config)?;
                <$adapter as $crate::Adapter>::restore(config).map_err(Into::into)
            }
            fn verify(config: String) -> Result<$crate::VerifyReport, $crate::wit::cairn::adapter::types::AdapterError> {
                let config = $crate::parse_config(&config)?;
                <$adapter as $crate::Adapter>::verify(config).map_err(Into::into)
            }
        }

        $crate::wit::__export_cairn_adapter!(__CairnAdapterExport with_types_in $crate::wit);
    };
}

/// Logging into the host's log, tagged with the adapter's name.
pub mod log {
    use crate::wit::cairn::adapter::log::{Level, write};

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
}

/// Emitting the entries of a backup, depth-first.
pub mod archive {
    use crate::wit::cairn::adapter::archive as host;
    use crate::{Error, Metadata, io_error};

    /// How much a [`EntryWriter`] buffers before crossing into the host.
    const BUFFER: usize = 512 * 1024;

    /// Writes one file's or stream's bytes. Implements [`std::io::Write`]
    /// with a large buffer, so small writes are cheap. Call
    /// [`EntryWriter::finish`] to seal it; dropping it unfinished fails the backup.
    pub struct EntryWriter {
        inner: host::EntryWriter,
        buf: Vec<u8>,
    }

    impl EntryWriter {
        fn new(inner: host::EntryWriter) -> Self {
            EntryWriter {
                inner,
                buf: Vec::with_capacity(BUFFER),
            }
        }

        fn flush_buffer(&mut self) -> Result<(), Error> {
            if !self.buf.is_empty() {
                self.inner.write(&self.buf)?;
                self.buf.clear();
            }
            Ok(())
        }

        /// Append a whole file inside the job's grants; the host reads it
        /// natively. Returns the bytes appended.
        pub fn pump_file(&mut self, path: &str) -> Result<u64, Error> {
            self.flush_buffer()?;
            Ok(self.inner.pump_file(path)?)
        }

        /// Seal the entry; returns its size.
        pub fn finish(mut self) -> Result<u64, Error> {
            self.flush_buffer()?;
            Ok(self.inner.finish()?)
        }
    }

    impl std::io::Write for EntryWriter {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.buf.len() + data.len() > BUFFER {
                self.flush_buffer().map_err(io_error)?;
            }
            if data.len() >= BUFFER {
                self.inner.write(data).map_err(|e| io_error(e.into()))?;
            } else {
                self.buf.extend_from_slice(data);
            }
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.flush_buffer().map_err(io_error)
        }
    }

    /// Start a regular file.
    pub fn begin_file(path: &str, meta: &Metadata) -> Result<EntryWriter, Error> {
        Ok(EntryWriter::new(host::begin_file(path, *meta)?))
    }

    /// Start a stream of unknown length.
    pub fn begin_stream(path: &str, meta: &Metadata) -> Result<EntryWriter, Error> {
        Ok(EntryWriter::new(host::begin_stream(path, *meta)?))
    }

    /// Add a directory.
    pub fn add_directory(path: &str, meta: &Metadata) -> Result<(), Error> {
        Ok(host::add_directory(path, *meta)?)
    }

    /// Add a symbolic link (stored, never followed).
    pub fn add_symlink(path: &str, target: &str, meta: &Metadata) -> Result<(), Error> {
        Ok(host::add_symlink(path, target, *meta)?)
    }

    /// Re-add an unchanged file from the parent snapshot without reading it;
    /// false when there is no such unchanged file.
    pub fn reuse_unchanged(path: &str, meta: &Metadata) -> Result<bool, Error> {
        Ok(host::reuse_unchanged(path, *meta)?)
    }

    /// Record an entry that could not be read; the backup ends incomplete.
    pub fn skip(path: &str, reason: &str) {
        host::skip(path, reason);
    }
}

/// Reading the entries of the snapshot being restored or verified.
pub mod snapshot {
    use crate::wit::cairn::adapter::snapshot as host;
    use crate::{Error, io_error};

    pub use host::Entry;

    /// The largest read crossing into the host at once.
    const MAX_READ: usize = 1024 * 1024;

    /// Reads one file's content; implements [`std::io::Read`].
    pub struct EntryReader {
        inner: host::EntryReader,
    }

    impl EntryReader {
        /// Write all remaining content into a file inside the job's grants,
        /// natively. Returns the bytes written.
        pub fn pump_to_file(&mut self, path: &str) -> Result<u64, Error> {
            Ok(self.inner.pump_to_file(path)?)
        }

        /// Read and authenticate the rest without handing it out.
        pub fn discard(&mut self) -> Result<u64, Error> {
            Ok(self.inner.discard()?)
        }
    }

    impl std::io::Read for EntryReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = buf.len().min(MAX_READ) as u32;
            let bytes = self.inner.read(want).map_err(|e| io_error(e.into()))?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    /// The next entry, depth-first; `None` at the end.
    pub fn next_entry() -> Result<Option<Entry>, Error> {
        Ok(host::next_entry()?)
    }

    /// Open a file's content.
    pub fn open(path: &str) -> Result<EntryReader, Error> {
        Ok(EntryReader {
            inner: host::open(path)?,
        })
    }
}

/// Native filesystem operations confined to the job's grants.
pub mod fs {
    use crate::wit::cairn::adapter::fs as host;
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
}
