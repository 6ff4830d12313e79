//! Object keys as snapshot paths, keys as restore paths, and key globs.
//!
//! An S3 key may hold `//`, a trailing `/`, `.` and `..` segments and bytes
//! no file name may hold; a snapshot path may not. Each key becomes
//! `/objects/` + its segments, each escaped: `%` as `%25`, NUL as `%00`, an
//! empty segment as a lone `%`, `.` as `%2E` and `..` as `%2E%2E`. A key
//! that is also a "directory" of another key (`a` beside `a/b`) gets a `%`
//! after its last segment, which no escaped segment can end with. The
//! manifest records each key with its path, so restore never has to undo
//! the escaping; ordinary keys stay readable in `restic ls`.

use std::collections::BTreeSet;

/// Where the objects live in the snapshot.
pub const ROOT: &str = "/objects";

fn escape_segment(s: &str) -> String {
    match s {
        "" => "%".into(),
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        s => s.replace('%', "%25").replace('\0', "%00"),
    }
}

/// The escaped segments of a key's path under [`ROOT`].
pub fn segments(key: &str) -> Vec<String> {
    key.split('/').map(escape_segment).collect()
}

/// Snapshot paths for `keys`: one per key, in the archive's order (the
/// order the host needs: by path segments), as (key index, path).
pub fn paths(keys: &[&str]) -> Vec<(usize, String)> {
    let segs: Vec<Vec<String>> = keys.iter().map(|k| segments(k)).collect();
    // Every directory some key's path needs.
    let mut dirs: BTreeSet<Vec<String>> = BTreeSet::new();
    for s in &segs {
        for n in 1..s.len() {
            dirs.insert(s[..n].to_vec());
        }
    }
    let mut out: Vec<(usize, Vec<String>)> = segs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            if dirs.contains(&s)
                && let Some(last) = s.last_mut()
            {
                last.push('%');
            }
            (i, s)
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.into_iter()
        .map(|(i, s)| (i, format!("{ROOT}/{}", s.join("/"))))
        .collect()
}

/// Why a key cannot be a path under a restore directory (`None`: it can):
/// it must be relative segments with no empty, `.` or `..` one (a trailing
/// `/` is a directory marker and is allowed), no NUL, and each segment
/// short enough for a file name.
pub fn unsafe_as_path(key: &str) -> Option<&'static str> {
    let body = key.strip_suffix('/').unwrap_or(key);
    if body.is_empty() {
        return Some("it is empty or only '/'");
    }
    if key.contains('\0') {
        return Some("it holds a NUL byte");
    }
    for s in body.split('/') {
        match s {
            "" => return Some("it has an empty segment ('//' or a leading '/')"),
            "." | ".." => return Some("it has a '.' or '..' segment"),
            s if s.len() > 255 => return Some("a segment is longer than a file name may be"),
            _ => {}
        }
    }
    None
}

/// Whether `key` matches `glob`: `*` is any run of characters but `/`,
/// `**` any run at all, `?` one character but `/`; anything else matches
/// itself.
pub fn glob_match(glob: &str, key: &str) -> bool {
    enum Tok {
        Star,
        Stars,
        One,
        Lit(char),
    }
    let g: Vec<char> = glob.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < g.len() {
        toks.push(match g[i] {
            '*' if g.get(i + 1) == Some(&'*') => {
                i += 1;
                Tok::Stars
            }
            '*' => Tok::Star,
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
        i += 1;
    }
    let k: Vec<char> = key.chars().collect();
    // ok[j]: the tokens from t on match k[j..]; filled from the last token
    // back, one row per token: time and memory linear in each length.
    let mut ok = vec![false; k.len() + 1];
    ok[k.len()] = true;
    for t in toks.iter().rev() {
        let mut row = vec![false; k.len() + 1];
        for j in (0..=k.len()).rev() {
            row[j] = match t {
                Tok::Stars => ok[j] || (j < k.len() && row[j + 1]),
                Tok::Star => ok[j] || (j < k.len() && k[j] != '/' && row[j + 1]),
                Tok::One => j < k.len() && k[j] != '/' && ok[j + 1],
                Tok::Lit(c) => j < k.len() && k[j] == *c && ok[j + 1],
            };
        }
        ok = row;
    }
    ok[0]
}

/// A 64-bit FNV-1a hash of an ETag: the "inode" the host compares for an
/// unchanged object (with its size and Last-Modified). Never 0.
pub fn etag_inode(etag: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in etag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_distinct_ordered_paths() {
        let keys = [
            "a/b", "a", "a-c", "a/", "a//b", "./x", "../y", "100%", "dir/.", "", "x\0y",
        ];
        let p = paths(&keys);
        let by_key: std::collections::HashMap<&str, &str> =
            p.iter().map(|(i, s)| (keys[*i], s.as_str())).collect();
        assert_eq!(by_key["a/b"], "/objects/a/b");
        assert_eq!(by_key["a"], "/objects/a%");
        assert_eq!(by_key["a/"], "/objects/a/%%");
        assert_eq!(by_key["a//b"], "/objects/a/%/b");
        assert_eq!(by_key["./x"], "/objects/%2E/x");
        assert_eq!(by_key["../y"], "/objects/%2E%2E/y");
        assert_eq!(by_key["100%"], "/objects/100%25");
        assert_eq!(by_key["dir/."], "/objects/dir/%2E");
        assert_eq!(by_key[""], "/objects/%");
        assert_eq!(by_key["x\0y"], "/objects/x%00y");
        let all: BTreeSet<&str> = p.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(all.len(), keys.len(), "paths are distinct");
        let segs: Vec<Vec<&str>> = p.iter().map(|(_, s)| s.split('/').collect()).collect();
        assert!(segs.windows(2).all(|w| w[0] < w[1]), "ordered by segments");
    }

    #[test]
    fn unsafe_keys_are_named() {
        for k in ["a//b", "/a", "../a", "a/./b", "", "/", "a\0"] {
            assert!(unsafe_as_path(k).is_some(), "{k:?}");
        }
        for k in ["a", "a/b", "dir/", "spaces in name.txt", "ünï/cödé", "a..b"] {
            assert!(unsafe_as_path(k).is_none(), "{k:?}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("photos/*", "photos/a.jpg"));
        assert!(!glob_match("photos/*", "photos/2024/a.jpg"));
        assert!(glob_match("photos/**", "photos/2024/a.jpg"));
        assert!(glob_match("**.jpg", "x/y/z.jpg"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "a/c"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("a/**/z", "a/b/c/z"));
        assert!(glob_match("**", ""));
        // Linear, not exponential: this took minutes with backtracking.
        let long = "L".repeat(200);
        assert!(!glob_match("**L**L**L**L**L**L**X", &long));
        assert!(glob_match("**L**L**L**L**L**L**", &long));
    }
}
