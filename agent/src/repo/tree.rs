//! Trees: one JSON document per directory listing its nodes, exactly in the
//! shape restic reads (`internal/restic/node.go`).

use super::id::Id;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// Go's `os.FileMode` type bits, which restic stores in `mode`.
pub mod go_mode {
    /// A directory.
    pub const DIR: u32 = 1 << 31;
    /// A symbolic link.
    pub const SYMLINK: u32 = 1 << 27;
    /// A device.
    pub const DEVICE: u32 = 1 << 26;
    /// A named pipe.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// A socket.
    pub const SOCKET: u32 = 1 << 24;
    /// Setuid.
    pub const SETUID: u32 = 1 << 23;
    /// Setgid.
    pub const SETGID: u32 = 1 << 22;
    /// A character device.
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Sticky.
    pub const STICKY: u32 = 1 << 20;

    /// Convert Unix permission bits (mask 0o7777) and a type bit to Go's form.
    pub fn from_unix(perm: u32, type_bits: u32) -> u32 {
        let mut m = (perm & 0o777) | type_bits;
        if perm & 0o4000 != 0 {
            m |= SETUID;
        }
        if perm & 0o2000 != 0 {
            m |= SETGID;
        }
        if perm & 0o1000 != 0 {
            m |= STICKY;
        }
        m
    }

    /// Unix permission bits (mask 0o7777) of a Go mode.
    pub fn to_unix_perm(mode: u32) -> u32 {
        let mut p = mode & 0o777;
        if mode & SETUID != 0 {
            p |= 0o4000;
        }
        if mode & SETGID != 0 {
            p |= 0o2000;
        }
        if mode & STICKY != 0 {
            p |= 0o1000;
        }
        p
    }
}

/// One entry of a directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    /// The entry's name (one path component). restic stores it escaped
    /// with Go's `strconv.Quote` (without the quotes) inside the JSON string.
    #[serde(with = "go_quoted")]
    pub name: String,
    /// `file`, `dir`, `symlink`, `dev`, `chardev`, `fifo` or `socket`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Go `os.FileMode`: permissions plus type bits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u32,
    /// Modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<DateTime<FixedOffset>>,
    /// Access time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<DateTime<FixedOffset>>,
    /// Status change time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<DateTime<FixedOffset>>,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Owner's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Group's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Inode number.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub inode: u64,
    /// Device of the containing filesystem.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub device_id: u64,
    /// Content size of a file.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub size: u64,
    /// Hard link count.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub links: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub device: u64,
    /// Data blobs of a file, in order; restic requires a list (maybe empty)
    /// for files and writes `null` for everything else.
    #[serde(default)]
    pub content: Option<Vec<Id>>,
    /// The tree of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero64(v: &u64) -> bool {
    *v == 0
}

impl Node {
    /// An empty node of a kind, to be filled in.
    pub fn new(name: impl Into<String>, kind: &str) -> Self {
        Node {
            name: name.into(),
            kind: kind.into(),
            mode: 0,
            mtime: None,
            atime: None,
            ctime: None,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            linktarget: String::new(),
            device: 0,
            content: None,
            subtree: None,
        }
    }
}

/// A directory listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tree {
    /// Nodes sorted by name.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serialise as restic does: JSON plus a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("tree serialises");
        v.push(b'\n');
        v
    }
}

/// restic's node-name encoding: Go's `strconv.Quote` without the surrounding
/// quotes, then JSON. Writing escapes what Go's `Unquote` requires (`\`, `"`,
/// control characters); reading accepts every Go escape.
mod go_quoted {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&quote(name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let raw = String::deserialize(d)?;
        unquote(&raw).map_err(|e| serde::de::Error::custom(format!("node name {raw:?}: {e}")))
    }

    pub(super) fn quote(name: &str) -> String {
        let mut out = String::with_capacity(name.len());
        for c in name.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out
    }

    pub(super) fn unquote(s: &str) -> Result<String, String> {
        let mut bytes: Vec<u8> = Vec::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
                   n: usize|
         -> Result<u32, String> {
            let digits: String = (0..n).filter_map(|_| chars.next()).collect();
            if digits.len() != n {
                return Err("truncated escape".into());
            }
            u32::from_str_radix(&digits, 16).map_err(|_| format!("bad escape digits {digits:?}"))
        };
        while let Some(c) = chars.next() {
            if c != '\\' {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            let esc = chars.next().ok_or("trailing backslash")?;
            let push_char = |bytes: &mut Vec<u8>, v: u32| -> Result<(), String> {
                let c = char::from_u32(v).ok_or(format!("invalid code point {v:#x}"))?;
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                Ok(())
            };
            match esc {
                'a' => bytes.push(7),
                'b' => bytes.push(8),
                'f' => bytes.push(12),
                'n' => bytes.push(b'\n'),
                'r' => bytes.push(b'\r'),
                't' => bytes.push(b'\t'),
                'v' => bytes.push(11),
                '\\' => bytes.push(b'\\'),
                '"' => bytes.push(b'"'),
                '\'' => bytes.push(b'\''),
                'x' => bytes.push(hex(&mut chars, 2)? as u8),
                'u' => push_char(&mut bytes, hex(&mut chars, 4)?)?,
                'U' => push_char(&mut bytes, hex(&mut chars, 8)?)?,
                '0'..='7' => {
                    let rest: String = (0..2).filter_map(|_| chars.next()).collect();
                    let v = u32::from_str_radix(&format!("{esc}{rest}"), 8)
                        .map_err(|_| "bad octal escape")?;
                    bytes.push(u8::try_from(v).map_err(|_| "octal escape out of range")?);
                }
                other => return Err(format!("unknown escape \\{other}")),
            }
        }
        // restic keeps names that are not UTF-8 as \x escapes; Cairn's
        // names are strings, so such a name is restored with U+FFFD in
        // place of the bad bytes rather than making the whole tree unreadable.
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                tracing::warn!(name = %lossy, "A name in the snapshot is not UTF-8; it is restored with replacement characters.");
                lossy
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::go_quoted::{quote, unquote};

    #[test]
    fn names_round_trip_through_go_quoting() {
        for name in [
            "plain",
            "with space",
            "new\nline",
            "quote\"back\\slash",
            "tab\tbell\x07",
            "ünïcødé ☃",
            "del\x7f",
        ] {
            assert_eq!(unquote(&quote(name)).unwrap(), name);
        }
        assert_eq!(quote("a\nb"), "a\\nb");
        // Escapes Go writes for non-printable runes.
        assert_eq!(
            unquote("\\u00a0x\\U0001F600\\101").unwrap(),
            "\u{a0}x\u{1F600}A"
        );
    }
}
