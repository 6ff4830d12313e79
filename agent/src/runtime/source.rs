//! Which adapter a job runs: a bundled one by name, or a component file
//! (pinned to its SHA-256 when the job says so).

use std::path::PathBuf;

/// Which adapter to run: bundled by name, or a component file.
#[derive(Debug, Clone)]
pub enum AdapterSource {
    /// A bundled adapter.
    Bundled(String),
    /// A `.wasm` component on disk, with the SHA-256 (hex) it must have
    /// if the job pins one.
    File(PathBuf, Option<String>),
}

impl AdapterSource {
    /// `filesystem` names a bundled adapter; anything with a `/` or ending
    /// in `.wasm` is a file.
    pub fn parse(s: &str) -> Self {
        if s.contains('/') || s.ends_with(".wasm") {
            AdapterSource::File(PathBuf::from(s), None)
        } else {
            AdapterSource::Bundled(s.to_string())
        }
    }

    /// The same source, refused at load unless a component file's SHA-256
    /// is `sha256` (when given). Bundled adapters are part of the binary.
    pub fn pinned(self, sha256: Option<&str>) -> Self {
        match self {
            AdapterSource::File(p, _) => {
                AdapterSource::File(p, sha256.map(|s| s.to_ascii_lowercase()))
            }
            b => b,
        }
    }

    /// The adapter's name, for messages.
    pub fn name(&self) -> String {
        match self {
            AdapterSource::Bundled(n) => n.clone(),
            AdapterSource::File(p, _) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
        }
    }
}
