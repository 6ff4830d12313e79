//! The repository config: format version, repository id and the chunker
//! polynomial (restic's Rabin chunker uses it; Cairn keys its FastCDC gear
//! table with it, so chunk boundaries cannot be predicted without the key).

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The repository format Cairn writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// The decrypted contents of the `config` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Repository format version (1 or 2; Cairn writes 2).
    pub version: u32,
    /// Random repository id, 64 hex digits.
    pub id: String,
    /// An irreducible polynomial of degree 53 over GF(2).
    pub chunker_polynomial: Polynomial,
}

impl RepoConfig {
    /// A fresh config for a new repository.
    pub fn generate() -> Self {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        RepoConfig {
            version: FORMAT_VERSION,
            id: hex::encode(id),
            chunker_polynomial: Polynomial::random_irreducible(),
        }
    }
}

/// A polynomial over GF(2), bit `i` standing for `x^i`; restic writes it as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polynomial(pub u64);

impl Serialize for Polynomial {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Polynomial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16)
            .map(Polynomial)
            .map_err(|_| serde::de::Error::custom(format!("invalid chunker polynomial {s:?}")))
    }
}

fn degree(x: u128) -> i32 {
    127 - x.leading_zeros() as i32
}

/// `x mod g` in GF(2)[x].
fn reduce(mut x: u128, g: u64) -> u64 {
    let dg = degree(g as u128);
    while x != 0 && degree(x) >= dg {
        x ^= (g as u128) << (degree(x) - dg);
    }
    x as u64
}

/// Carry-less product of two polynomials below degree 64.
fn clmul(a: u64, b: u64) -> u128 {
    let mut out = 0u128;
    for i in 0..64 {
        if b >> i & 1 == 1 {
            out ^= (a as u128) << i;
        }
    }
    out
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = reduce(a as u128, b);
        a = b;
        b = r;
    }
    a
}

impl Polynomial {
    /// Whether the polynomial is irreducible (Ben-Or's test, as restic does).
    pub fn is_irreducible(&self) -> bool {
        let g = self.0;
        let d = degree(g as u128);
        if d < 1 {
            return false;
        }
        // x^(2^i) mod g, for i = 1..=d/2; g is irreducible iff
        // gcd(g, x^(2^i) - x) == 1 for each of them.
        let mut power = reduce(2, g);
        for _ in 1..=d / 2 {
            power = reduce(clmul(power, power), g);
            if gcd(g, power ^ reduce(2, g)) != 1 {
                return false;
            }
        }
        true
    }

    /// A random irreducible polynomial of degree 53, as restic generates.
    pub fn random_irreducible() -> Self {
        let mut rng = rand::rngs::OsRng;
        loop {
            let candidate = (rng.next_u64() & ((1 << 54) - 1)) | (1 << 53) | 1;
            let p = Polynomial(candidate);
            if p.is_irreducible() {
                return p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_polynomials() {
        // restic's test suite lists 0x3DA3358B4DC173 as irreducible.
        assert!(Polynomial(0x3DA3358B4DC173).is_irreducible());
        // x^2 + 1 = (x + 1)^2 and x^53 + x are reducible.
        assert!(!Polynomial(0b101).is_irreducible());
        assert!(!Polynomial((1 << 53) | 2).is_irreducible());
        let p = Polynomial::random_irreducible();
        assert_eq!(degree(p.0 as u128), 53);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Polynomial>(&json).unwrap(), p);
    }
}
