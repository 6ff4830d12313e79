//! Key files: the master key, encrypted under a key derived from the
//! password with scrypt, stored in plain JSON under `keys/`.

use super::b64;
use super::crypto::{Key, KeyJson};
use chrono::{DateTime, Local};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// scrypt cost used for new key files: restic's usual calibration result
/// (N = 2^15, r = 8, p = 1), about 32 MiB and a tenth of a second.
pub const DEFAULT_LOG_N: u8 = 15;

/// The largest key file read: a real one is well under a kilobyte.
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// The most memory a key file's scrypt may ask for (128 * r * N bytes).
/// restic calibrates new keys to at most 60 MiB; anything above this bound
/// is a planted key meant to exhaust memory, skipped before deriving.
pub const MAX_SCRYPT_MEMORY: u64 = 256 << 20;
/// The most work a key file's scrypt may ask for (N * r * p): 16 times
/// the default cost, a few seconds at most.
pub const MAX_SCRYPT_WORK: u64 = 16 * (1 << DEFAULT_LOG_N) * 8;

/// The most key files whose key is derived (scrypt) when opening a
/// repository (restic's limit): the one that opened it last time first.
pub const MAX_KEYS_TRIED: usize = 20;
/// The most key files read when opening a repository (files that are no
/// key, or ask too much, are passed over without deriving).
pub const MAX_KEY_FILES_READ: usize = 1000;

/// Where the name of the key file that last opened the repository at
/// `location` is kept (not a secret: only which file to try first).
fn hint_file(location: &str) -> Option<std::path::PathBuf> {
    let dir = crate::util::cache_dir()?;
    let id = super::Id::hash(location.as_bytes()).to_hex();
    Some(dir.join("key-hints").join(&id[..32]))
}

/// A key file named by the operator (`--key-hint`), tried first.
static NAMED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Try the key file `name` (or a unique prefix of it) first, in every
/// repository this process opens.
pub fn name_key(name: &str) {
    let _ = NAMED.set(name.to_string());
}

/// The key file to try first: the one the operator named, else the one
/// that opened the repository at `location` last time.
pub fn hint(location: &str) -> Option<String> {
    if let Some(named) = NAMED.get() {
        return Some(named.clone());
    }
    let text = std::fs::read_to_string(hint_file(location)?).ok()?;
    let name = text.trim();
    super::Id::parse(name).map(|_| name.to_string())
}

/// Remember which key file opened the repository (best effort).
pub fn remember(location: &str, name: &str) {
    let Some(file) = hint_file(location) else {
        return;
    };
    let written = file
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::write(&file, name));
    if let Err(e) = written {
        tracing::debug!(file = %file.display(), error = %e, "Could not remember the repository's key.");
    }
}

/// A key file as restic writes it.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    created: DateTime<Local>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    hostname: String,
    kdf: String,
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
    #[serde(with = "b64")]
    salt: Vec<u8>,
    #[serde(with = "b64")]
    data: Vec<u8>,
}

/// Why a key file did not open.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is not valid JSON of the expected shape.
    #[error("malformed key file: {0}")]
    Malformed(String),
    /// The password does not open this key file.
    #[error("wrong password")]
    WrongPassword,
    /// The key file asks scrypt for more memory or work than Cairn spends.
    #[error(
        "its scrypt parameters (N={n}, r={r}, p={p}) ask for {mib} MiB and {work} units of work; Cairn spends at most {max_mib} MiB and {max_work}"
    )]
    TooCostly {
        /// scrypt's N.
        n: u64,
        /// scrypt's r.
        r: u32,
        /// scrypt's p.
        p: u32,
        /// The memory asked for, in MiB (saturating).
        mib: u64,
        /// N * r * p (saturating).
        work: u64,
        /// [`MAX_SCRYPT_MEMORY`] in MiB.
        max_mib: u64,
        /// [`MAX_SCRYPT_WORK`].
        max_work: u64,
    },
}

fn derive(password: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<Key, KeyError> {
    let params = scrypt::Params::new(log_n, r, p, 64)
        .map_err(|e| KeyError::Malformed(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out)
        .map_err(|e| KeyError::Malformed(format!("scrypt: {e}")))?;
    Ok(Key::from_kdf_output(&out))
}

impl KeyFile {
    /// Wrap `master` under `password` with scrypt cost `2^log_n`.
    pub fn create(master: &Key, password: &str, log_n: u8) -> Result<Self, KeyError> {
        let mut salt = vec![0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let (r, p) = (8, 1);
        let user_key = derive(password, &salt, log_n, r, p)?;
        let plaintext = serde_json::to_vec(&master.to_json())
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        Ok(KeyFile {
            created: Local::now(),
            username: whoami::username(),
            hostname: crate::util::hostname(),
            kdf: "scrypt".into(),
            n: 1u64 << log_n,
            r,
            p,
            salt,
            data: user_key.encrypt(&plaintext),
        })
    }

    /// Parse a stored key file.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::Malformed(e.to_string()))
    }

    /// Refuse parameters whose cost is out of bounds, before any work: a
    /// key file with N = 2^40 would otherwise abort every command.
    pub fn check_cost(&self) -> Result<(), KeyError> {
        let memory = 128u64.saturating_mul(self.r as u64).saturating_mul(self.n);
        let work = self
            .n
            .saturating_mul(self.r as u64)
            .saturating_mul(self.p as u64);
        if memory > MAX_SCRYPT_MEMORY || work > MAX_SCRYPT_WORK || self.r == 0 || self.p == 0 {
            return Err(KeyError::TooCostly {
                n: self.n,
                r: self.r,
                p: self.p,
                mib: memory >> 20,
                work,
                max_mib: MAX_SCRYPT_MEMORY >> 20,
                max_work: MAX_SCRYPT_WORK,
            });
        }
        Ok(())
    }

    /// Open the master key with `password`.
    pub fn open(&self, password: &str) -> Result<Key, KeyError> {
        self.check_cost()?;
        if self.kdf != "scrypt" {
            return Err(KeyError::Malformed(format!(
                "unsupported kdf {:?}",
                self.kdf
            )));
        }
        if !self.n.is_power_of_two() || self.n < 2 {
            return Err(KeyError::Malformed(format!(
                "scrypt N {} is not a power of two",
                self.n
            )));
        }
        let user_key = derive(
            password,
            &self.salt,
            self.n.trailing_zeros() as u8,
            self.r,
            self.p,
        )?;
        let plaintext = user_key
            .decrypt(&self.data)
            .map_err(|_| KeyError::WrongPassword)?;
        let json: KeyJson =
            serde_json::from_slice(&plaintext).map_err(|e| KeyError::Malformed(e.to_string()))?;
        Key::from_json(&json)
            .ok_or_else(|| KeyError::Malformed("master key has wrong length".into()))
    }

    /// Serialised bytes, as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_open() {
        let master = Key::random();
        let file = KeyFile::create(&master, "secret", 10).unwrap();
        let parsed = KeyFile::parse(&file.to_bytes()).unwrap();
        let opened = parsed.open("secret").unwrap();
        let ct = master.encrypt(b"x");
        assert_eq!(opened.decrypt(&ct).unwrap(), b"x");
        assert!(matches!(parsed.open("wrong"), Err(KeyError::WrongPassword)));
    }

    #[test]
    fn a_key_asking_for_too_much_memory_or_work_is_refused_before_deriving() {
        let master = Key::random();
        let mut file = KeyFile::create(&master, "secret", 10).unwrap();
        file.check_cost().unwrap();
        for (n, r, p) in [
            (1u64 << 40, 8, 1),
            (1 << 22, 8, 1),
            (1 << 15, 8, 64),
            (1 << 15, 0, 1),
        ] {
            file.n = n;
            file.r = r;
            file.p = p;
            assert!(
                matches!(file.open("secret"), Err(KeyError::TooCostly { .. })),
                "N={n} r={r} p={p} must be refused"
            );
        }
        // restic's default cost passes.
        file.n = 1 << DEFAULT_LOG_N;
        file.r = 8;
        file.p = 1;
        file.check_cost().unwrap();
    }
}
