//! How a repository's files are named and laid out in any store, restic's
//! way: a folder per kind of file (`keys/`, `snapshots/`, `index/`,
//! `locks/`), packs under `data/` in a subfolder named by the first two
//! hex digits of their name, the one `config` at the root, and every file
//! but `config` named by the SHA-256 of its bytes.

use super::FileType;
use sha2::{Digest, Sha256};

/// The path of a repository file relative to the repository's root,
/// `/`-separated (an S3 key under the root, or a path under a directory).
pub fn path(t: FileType, name: &str) -> String {
    match t {
        FileType::Config => "config".to_string(),
        FileType::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or("00")),
        _ => format!("{}/{name}", t.dir()),
    }
}

/// The SHA-256 a file's name states: the name itself for every file but
/// the config, when it is 64 hex digits.
pub fn named_hash(t: FileType, name: &str) -> Option<[u8; 32]> {
    if t == FileType::Config || name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(out)
}

/// The SHA-256 of a repository file's bytes. Every file but the config is
/// named by it, so it is read from the name instead of computed again; a
/// store that sends it along (S3's checksum) thereby has the server check
/// the bytes against their name.
pub fn content_sha256(t: FileType, name: &str, data: &[u8]) -> [u8; 32] {
    named_hash(t, name).unwrap_or_else(|| Sha256::digest(data).into())
}

/// Whether `data` is what a file called `name` must hold (every
/// repository file but `config` is named by the SHA-256 of its bytes; a
/// name that is no hash says nothing).
pub fn matches_name(t: FileType, name: &str, data: &[u8]) -> bool {
    if t == FileType::Config || name.len() != 64 {
        return true;
    }
    // 64 characters that are not hex name no content at all.
    named_hash(t, name).is_some_and(|hash| <[u8; 32]>::from(Sha256::digest(data)) == hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_sit_under_their_two_digit_prefix_and_the_rest_in_their_folder() {
        let id = "ab".repeat(32);
        assert_eq!(path(FileType::Pack, &id), format!("data/ab/{id}"));
        assert_eq!(path(FileType::Snapshot, &id), format!("snapshots/{id}"));
        assert_eq!(path(FileType::Config, "config"), "config");
    }

    #[test]
    fn a_file_matches_its_name_only_with_the_bytes_it_names() {
        let data = b"an index file";
        let name = hex::encode(Sha256::digest(data));
        assert!(matches_name(FileType::Index, &name, data));
        assert!(!matches_name(FileType::Index, &name, b"an index fil3"));
        // The config, and a name that is no hash, are not checked by name.
        assert!(matches_name(FileType::Config, "config", b"anything"));
        assert!(matches_name(FileType::Lock, "not-a-hash", b"anything"));
        assert_eq!(
            content_sha256(FileType::Index, &name, b"ignored"),
            <[u8; 32]>::from(Sha256::digest(data))
        );
    }
}
