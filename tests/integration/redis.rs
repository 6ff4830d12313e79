//! The Redis adapter against the real server on 127.0.0.1:6379, checked with
//! redis-cli (an independent client): every key's DUMP before and after.

use crate::common::{Scratch, random_bytes, stderr, text};
use std::collections::BTreeMap;
use std::process::Command;

const ADDRESS: &str = "127.0.0.1:6379";

/// `redis-cli -n DB --raw ARGS...`, its stdout; arguments may be binary.
fn cli(db: u32, args: &[&[u8]]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "-n",
            &db.to_string(),
            "--raw",
        ])
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .output()
        .expect("run redis-cli (is redis-tools installed?)");
    assert!(out.status.success(), "redis-cli {args:?}: {}", text(&out));
    out.stdout
}

/// `redis-cli -n DB -x ARGS...`: the last argument is `data`, from stdin
/// (arguments cannot hold NUL bytes).
fn cli_with(db: u32, args: &[&[u8]], data: &[u8]) {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "-n", &db.to_string(), "-x"])
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "redis-cli -x {args:?}: {}",
        text(&out)
    );
}

/// Every key of the database with its DUMP payload, via redis-cli. A set
/// stored as a hash table dumps its members in hash-table order, which a
/// restore may change: a set is represented by its sorted members instead.
fn dumps(db: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys = cli(db, &[b"--scan"]);
    let mut out = BTreeMap::new();
    for key in keys.split(|&b| b == b'\n').filter(|k| !k.is_empty()) {
        let value = if cli(db, &[b"TYPE", key]) == b"set\n" {
            let members = cli(db, &[b"SMEMBERS", key]);
            let mut sorted: Vec<&[u8]> = members.split(|&b| b == b'\n').collect();
            sorted.sort();
            [b"set:".as_slice(), &sorted.concat()].concat()
        } else {
            cli(db, &[b"DUMP", key])
        };
        out.insert(key.to_vec(), value);
    }
    out
}

#[test]
fn redis_round_trip_keeps_every_type_ttls_and_binary_keys() {
    // A database of its own; nothing else on this server uses it.
    let db = 14;
    let s = Scratch::new();
    s.init();
    cli(db, &[b"FLUSHDB"]);
    cli(db, &[b"SET", b"string", b"hello"]);
    cli_with(db, &[b"SET", b"bin\xff\x01key"], b"\x00\x01\x02\xff");
    cli(db, &[b"HSET", b"hash", b"f1", b"v1", b"f2", b"v2"]);
    cli(db, &[b"RPUSH", b"list", b"a", b"b", b"c"]);
    cli(db, &[b"SADD", b"set", b"x", b"y"]);
    cli(db, &[b"ZADD", b"zset", b"1", b"a", b"2.5", b"b"]);
    cli(db, &[b"XADD", b"stream", b"*", b"field", b"value"]);
    cli(db, &[b"SET", b"expiring", b"soon", b"PX", b"600000"]);
    // A value of a few MiB: several reads and writes across the boundary.
    let big = random_bytes(3 << 20, 5);
    cli_with(db, &[b"SET", b"big"], &big);
    let before = dumps(db);
    assert_eq!(before.len(), 9);

    let config = format!("{{\"address\": \"{ADDRESS}\", \"databases\": [{db}]}}");
    let grant = ["--grant-connect", ADDRESS];
    let mut args = vec!["backup", "--adapter", "redis", "--adapter-config", &config];
    args.extend(grant);
    let summary = s.cairn_json(&args);
    assert_eq!(summary["files"], 9, "{summary}");

    cli(db, &[b"FLUSHDB"]);
    let mut args = vec!["restore", "latest", "--adapter-config", &config];
    args.extend(grant);
    s.cairn_ok(&args);
    assert_same_keys(&before, &dumps(db));
    let ttl: i64 = String::from_utf8_lossy(&cli(db, &[b"PTTL", b"expiring"]))
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "TTL not kept: {ttl}");

    let mut args = vec!["verify", "latest", "--adapter-config", &config];
    args.extend(grant);
    s.cairn_ok(&args);
    cli(db, &[b"SET", b"string", b"changed"]);
    let out = s.cairn(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout_and_err(&out).contains("\"string\" differs"),
        "{}",
        text(&out)
    );

    // Without the grant, the adapter cannot reach the server.
    let out = s.cairn(&["backup", "--adapter", "redis", "--adapter-config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains(ADDRESS), "{}", text(&out));
    cli(db, &[b"FLUSHDB"]);
}

/// The same keys with the same DUMP payloads; otherwise the keys that differ.
fn assert_same_keys(before: &BTreeMap<Vec<u8>, Vec<u8>>, after: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let differ: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        differ.is_empty(),
        "restored keys differ from the originals: {differ:?}"
    );
}

fn stdout_and_err(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn redis_restores_one_key_pattern_and_values_of_100_mb() {
    let db = 15;
    let s = Scratch::new();
    s.init();
    cli(db, &[b"FLUSHDB"]);
    cli(db, &[b"SET", b"tenant:a:1", b"one"]);
    cli(db, &[b"HSET", b"tenant:a:2", b"f", b"v"]);
    cli(db, &[b"SET", b"tenant:b:1", b"other tenant"]);
    let huge = random_bytes(100 << 20, 6);
    cli_with(db, &[b"SET", b"huge"], &huge);
    let before = dumps(db);

    let config = format!("{{\"address\": \"{ADDRESS}\", \"databases\": [{db}]}}");
    let summary = s.cairn_json(&[
        "backup",
        "--adapter",
        "redis",
        "--adapter-config",
        &config,
        "--grant-connect",
        ADDRESS,
    ]);
    assert_eq!(summary["files"], 4, "{summary}");

    // Only tenant a's keys come back; tenant b's current value is untouched.
    cli(db, &[b"FLUSHDB"]);
    cli(db, &[b"SET", b"tenant:b:1", b"changed since"]);
    let only_a = format!(
        "{{\"address\": \"{ADDRESS}\", \"databases\": [{db}], \"pattern\": \"tenant:a:*\"}}"
    );
    s.cairn_ok(&[
        "restore",
        "latest",
        "--adapter-config",
        &only_a,
        "--grant-connect",
        ADDRESS,
    ]);
    let after = dumps(db);
    assert_eq!(after.len(), 3, "{:?}", after.keys().collect::<Vec<_>>());
    for k in [&b"tenant:a:1"[..], b"tenant:a:2"] {
        assert_eq!(
            after.get(k),
            before.get(k),
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(cli(db, &[b"GET", b"tenant:b:1"]), b"changed since\n");

    // Everything, the 100 MB value included.
    cli(db, &[b"FLUSHDB"]);
    s.cairn_ok(&[
        "restore",
        "latest",
        "--adapter-config",
        &config,
        "--grant-connect",
        ADDRESS,
    ]);
    assert_same_keys(&before, &dumps(db));
    s.cairn_ok(&[
        "verify",
        "latest",
        "--adapter-config",
        &config,
        "--grant-connect",
        ADDRESS,
    ]);
    cli(db, &[b"FLUSHDB"]);
}
