//! restic's authenticated encryption: AES-256-CTR with a Poly1305-AES MAC.
//!
//! Every encrypted object is `IV (16 bytes) || ciphertext || MAC (16 bytes)`.
//! The MAC is Poly1305 over the ciphertext alone, keyed with `r` and with
//! `s = AES-128_k(IV)`, exactly as restic's `internal/crypto` does, so restic
//! and Cairn read each other's objects.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher, generic_array::GenericArray};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes added to every plaintext by [`Key::encrypt`]: the IV and the MAC.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 16;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Why a ciphertext could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The ciphertext is shorter than an IV plus a MAC.
    #[error("ciphertext too short ({0} bytes)")]
    TooShort(usize),
    /// The MAC did not match: wrong key, or the bytes were damaged.
    #[error("ciphertext verification failed (wrong key or damaged data)")]
    Authentication,
}

/// A restic master (or key-file-derived) key: an AES-256 key and a Poly1305-AES key.
#[derive(Clone)]
pub struct Key {
    encrypt: [u8; 32],
    mac_k: [u8; 16],
    mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// How restic serialises a master key inside a key file's `data`.
#[derive(Serialize, Deserialize)]
pub struct KeyJson {
    mac: MacJson,
    #[serde(with = "crate::repo::b64")]
    encrypt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct MacJson {
    #[serde(with = "crate::repo::b64")]
    k: Vec<u8>,
    #[serde(with = "crate::repo::b64")]
    r: Vec<u8>,
}

impl Key {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut key = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        rng.fill_bytes(&mut key.encrypt);
        rng.fill_bytes(&mut key.mac_k);
        rng.fill_bytes(&mut key.mac_r);
        key
    }

    /// Build a key from 64 bytes laid out as restic's KDF output:
    /// encryption key (32), then MAC `k` (16), then MAC `r` (16).
    pub fn from_kdf_output(bytes: &[u8; 64]) -> Self {
        let mut key = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        key.encrypt.copy_from_slice(&bytes[..32]);
        key.mac_k.copy_from_slice(&bytes[32..48]);
        key.mac_r.copy_from_slice(&bytes[48..]);
        key
    }

    /// The JSON form stored (encrypted) in a key file.
    pub fn to_json(&self) -> KeyJson {
        KeyJson {
            mac: MacJson {
                k: self.mac_k.to_vec(),
                r: self.mac_r.to_vec(),
            },
            encrypt: self.encrypt.to_vec(),
        }
    }

    /// Parse the JSON form; `None` when a field has the wrong length.
    pub fn from_json(json: &KeyJson) -> Option<Self> {
        Some(Key {
            encrypt: json.encrypt.as_slice().try_into().ok()?,
            mac_k: json.mac.k.as_slice().try_into().ok()?,
            mac_r: json.mac.r.as_slice().try_into().ok()?,
        })
    }

    /// Encrypt `plaintext` under a random IV; the result is
    /// `plaintext.len() + OVERHEAD` bytes long.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, &mut out);
        out
    }

    /// Encrypt `plaintext` under a random IV, appending the
    /// `plaintext.len() + OVERHEAD` bytes to `out` (a reused buffer: no
    /// fresh allocation per blob).
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let mut cipher = Aes256Ctr::new((&self.encrypt).into(), (&iv).into());
        cipher.apply_keystream(&mut out[at + IV_LEN..]);
        let mac = self.mac(&iv, &out[at + IV_LEN..]);
        out.extend_from_slice(&mac);
    }

    /// Whether `data` carries a valid MAC for this key, without decrypting
    /// it (a replicated backend uses this to pick a good copy).
    pub fn authentic(&self, data: &[u8]) -> bool {
        if data.len() < OVERHEAD {
            return false;
        }
        let (iv, rest) = data.split_at(IV_LEN);
        let (ciphertext, mac) = rest.split_at(rest.len() - MAC_LEN);
        constant_time_eq(&self.mac(iv, ciphertext), mac)
    }

    /// Authenticate and decrypt `IV || ciphertext || MAC`.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < OVERHEAD {
            return Err(CryptoError::TooShort(data.len()));
        }
        let (iv, rest) = data.split_at(IV_LEN);
        let (ciphertext, mac) = rest.split_at(rest.len() - MAC_LEN);
        let expected = self.mac(iv, ciphertext);
        if !constant_time_eq(&expected, mac) {
            return Err(CryptoError::Authentication);
        }
        let mut plaintext = ciphertext.to_vec();
        let mut cipher = Aes256Ctr::new((&self.encrypt).into(), iv.into());
        cipher.apply_keystream(&mut plaintext);
        Ok(plaintext)
    }

    fn mac(&self, iv: &[u8], ciphertext: &[u8]) -> [u8; 16] {
        // Poly1305-AES: the one-time key is r || AES-128_k(nonce). Poly1305
        // clamps r itself, which is what restic's explicit mask does.
        let mut s = GenericArray::clone_from_slice(iv);
        aes::Aes128::new((&self.mac_k).into()).encrypt_block(&mut s);
        let mut one_time = [0u8; 32];
        one_time[..16].copy_from_slice(&self.mac_r);
        one_time[16..].copy_from_slice(&s);
        let poly = poly1305::Poly1305::new((&one_time).into());
        let tag = poly.compute_unpadded(ciphertext);
        tag.into()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = Key::random();
        let ct = key.encrypt(b"hello restic");
        assert_eq!(ct.len(), 12 + OVERHEAD);
        assert_eq!(key.decrypt(&ct).unwrap(), b"hello restic");
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert_eq!(key.decrypt(&bad), Err(CryptoError::Authentication));
        assert_eq!(Key::random().decrypt(&ct), Err(CryptoError::Authentication));
        // Appended after what the buffer holds, and as readable.
        let mut buf = b"prefix".to_vec();
        key.encrypt_into(b"hello restic", &mut buf);
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(key.decrypt(&buf[6..]).unwrap(), b"hello restic");
    }

    /// Poly1305-AES test vector from D. J. Bernstein's paper (the one restic's
    /// own tests use): k, r, nonce, message, expected tag.
    #[test]
    fn poly1305_aes_vector() {
        let key = Key {
            encrypt: [0; 32],
            mac_k: hex16("ec074c835580741701425b623235add6"),
            mac_r: hex16("851fc40c3467ac0be05cc20404f3f700"),
        };
        let nonce = hex16("fb447350c4e868c52ac3275cf9d4327e");
        assert_eq!(
            key.mac(&nonce, &[0xf3, 0xf6]),
            hex16("f4c633c3044fc145f84f335cb81953de")
        );
    }

    fn hex16(s: &str) -> [u8; 16] {
        hex::decode(s).unwrap().try_into().unwrap()
    }
}
