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

/// A Redis server of the test's own, with a password, on a free loopback
/// port; killed when dropped.
struct PasswordServer {
    child: std::process::Child,
    port: u16,
    /// Redis's working directory, removed with the server.
    _dir: tempfile::TempDir,
}

impl PasswordServer {
    fn start(password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--requirepass",
                    password,
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("run redis-server (tests/run installs it)");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return PasswordServer {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a redis-server with a password");
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis-cli` logged in, on database 0; its stdout.
    fn cli(&self, password: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .env("REDISCLI_AUTH", password)
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", text(&out));
        out.stdout
    }

    /// How often the server has run `CLIENT <sub>` (INFO commandstats).
    fn client_calls(&self, password: &str, sub: &str) -> u64 {
        let stats = String::from_utf8(self.cli(password, &["INFO", "commandstats"])).unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_client|{sub}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for PasswordServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn redis_logs_in_with_a_granted_secret_and_pauses_writes_around_the_dump() {
    let password = "s3cr3t with spaces and \u{e9}";
    let server = PasswordServer::start(password);
    let address = server.address();
    let s = Scratch::new();
    s.init();
    server.cli(password, &["SET", "counter", "41"]);
    server.cli(password, &["HSET", "user:1", "name", "ada"]);
    server.cli(password, &["SET", "session", "x", "PX", "600000"]);
    let keys = ["counter", "user:1", "session"];
    let before: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| server.cli(password, &["DUMP", k]))
        .collect();

    let secret = s.path("redis-password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    let wrong = s.path("wrong-password");
    std::fs::write(&wrong, "not it").unwrap();
    let config = |extra: &str| {
        format!(
            "{{\"address\": \"{address}\", \"databases\": [0], \"password-secret\": \"redis-pw\"{extra}}}"
        )
    };
    let backup = |adapter_config: &str, secret_file: &std::path::Path| {
        s.cairn(&[
            "backup",
            "--adapter",
            "redis",
            "--adapter-config",
            adapter_config,
            "--grant-connect",
            &address,
            "--grant-secret",
            &format!("redis-pw={}", secret_file.display()),
            "--json",
        ])
    };

    // No AUTH: the server refuses, the backup fails naming it, no snapshot.
    let no_auth = format!("{{\"address\": \"{address}\", \"databases\": [0]}}");
    let out = s.cairn(&[
        "backup",
        "--adapter",
        "redis",
        "--adapter-config",
        &no_auth,
        "--grant-connect",
        &address,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&address) && stderr(&out).contains("NOAUTH"),
        "{}",
        text(&out)
    );
    // A wrong password: refused, and no password appears in what cairn says.
    let out = backup(&config(""), &wrong);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("WRONGPASS"), "{}", text(&out));
    assert!(!stdout_and_err(&out).contains("not it"), "{}", text(&out));
    // A secret the job does not grant is denied.
    let out = s.cairn(&[
        "backup",
        "--adapter",
        "redis",
        "--adapter-config",
        &config(""),
        "--grant-connect",
        &address,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("redis-pw"), "{}", text(&out));
    assert_eq!(s.snapshot_count(), 0);

    // The right secret, with writes paused around the dump: the server ran
    // CLIENT PAUSE (and renewals) and one CLIENT UNPAUSE.
    let (paused, unpaused) = (
        server.client_calls(password, "pause"),
        server.client_calls(password, "unpause"),
    );
    let out = backup(&config(", \"pause-writes\": true"), &secret);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stdout_and_err(&out).contains(password), "{}", text(&out));
    assert!(server.client_calls(password, "pause") > paused);
    assert_eq!(server.client_calls(password, "unpause"), unpaused + 1);

    // A backup that fails inside the window still lifts the pause: database
    // 99 does not exist on a default server.
    let out = backup(
        &format!(
            "{{\"address\": \"{address}\", \"databases\": [0, 99], \"password-secret\": \"redis-pw\", \"pause-writes\": true}}"
        ),
        &secret,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("out of range"), "{}", text(&out));
    assert_eq!(server.client_calls(password, "unpause"), unpaused + 2);
    assert_eq!(s.snapshot_count(), 1);
    // Writes are not held: a write returns at once, not after the lease.
    let t = std::time::Instant::now();
    server.cli(password, &["SET", "after", "1"]);
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    server.cli(password, &["DEL", "after"]);

    // Restore over an emptied server, logged in the same way; redis-cli's
    // DUMP of each key is what it was; verify passes.
    server.cli(password, &["FLUSHALL"]);
    let restore_args = |verb: &str| {
        vec![
            verb.to_string(),
            "latest".into(),
            "--adapter-config".into(),
            config(""),
            "--grant-connect".into(),
            address.clone(),
            "--grant-secret".into(),
            format!("redis-pw={}", secret.display()),
        ]
    };
    let args = restore_args("restore");
    s.cairn_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let after: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| server.cli(password, &["DUMP", k]))
        .collect();
    assert_eq!(before, after);
    let args = restore_args("verify");
    s.cairn_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Asking for what the snapshot does not have is an error, not an empty
    // success: a pattern that matches no key, a database it lacks.
    let mut args = restore_args("restore");
    args[3] = config(", \"pattern\": \"nomatch:*\"");
    let out = s.cairn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("no key of the snapshot matches pattern \"nomatch:*\""),
        "{}",
        text(&out)
    );
    let mut args = restore_args("verify");
    args[3] = format!(
        "{{\"address\": \"{address}\", \"databases\": [5], \"password-secret\": \"redis-pw\"}}"
    );
    let out = s.cairn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("not in the snapshot: db5"),
        "{}",
        text(&out)
    );
}

#[test]
fn redis_drill_restores_into_an_empty_spare_database_and_empties_it() {
    // Databases of their own: 12 holds the data, 11 is the spare.
    let (db, spare) = (12, 11);
    let s = Scratch::new();
    cli(db, &[b"FLUSHDB"]);
    cli(spare, &[b"FLUSHDB"]);
    for i in 0..50 {
        cli(
            db,
            &[
                b"SET",
                format!("k{i}").as_bytes(),
                format!("value {i}").as_bytes(),
            ],
        );
    }
    cli(db, &[b"HSET", b"h", b"a", b"1"]);
    let password = s.path("password");
    std::fs::write(&password, crate::common::PASSWORD).unwrap();
    let config = s.path("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate-dir = {state:?}\n[tenants.acme]\nrepository = {repo:?}\npassword-file = {password:?}\n\n[jobs.cache]\ntenant = \"acme\"\nadapter = \"redis\"\nconfig = {{ address = \"{ADDRESS}\", databases = [{db}] }}\ngrants = {{ connect = [\"{ADDRESS}\"] }}\ndrill = {{ set = {{ scratch-database = {spare} }} }}\n",
            state = s.path("state"),
            repo = s.repo(),
        ),
    )
    .unwrap();
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    s.cairn_config_ok(&config, &["backup", "--job", "cache"]);
    let out = s.cairn_config_ok(&config, &["--json", "drill", "cache"]);
    let record = crate::common::last_json(&out);
    assert_eq!(record["passed"], true, "{record}");
    assert_eq!(record["entries"], 51, "{record}");
    assert_eq!(
        cli(spare, &[b"DBSIZE"]),
        b"0\n",
        "the spare database is emptied"
    );
    assert_eq!(cli(db, &[b"DBSIZE"]), b"51\n", "the data is untouched");

    // A spare database with keys is not a scratch target: the drill fails
    // and leaves them.
    cli(spare, &[b"SET", b"precious", b"1"]);
    let out = s.cairn_config(&config, &["drill", "cache"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout_and_err(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(cli(spare, &[b"GET", b"precious"]), b"1\n");

    // What a killed drill left (its marker says so) is cleared by the
    // next drill, which then passes.
    cli(spare, &[b"FLUSHDB"]);
    cli(spare, &[b"SET", b"cairn:drill-scratch", b"1"]);
    cli(spare, &[b"SET", b"k1", b"half-restored"]);
    let out = s.cairn_config_ok(&config, &["--json", "drill", "cache"]);
    let record = crate::common::last_json(&out);
    assert_eq!(record["passed"], true, "{record}");
    assert_eq!(cli(spare, &[b"DBSIZE"]), b"0\n");

    // verify pointed at a database without the marker leaves it alone.
    cli(spare, &[b"SET", b"live", b"1"]);
    let _ = s.cairn_config(
        &config,
        &[
            "verify",
            "--job",
            "cache",
            "latest",
            "--set",
            &format!("scratch-database={spare}"),
        ],
    );
    assert_eq!(cli(spare, &[b"GET", b"live"]), b"1\n");
    cli(spare, &[b"FLUSHDB"]);
    cli(db, &[b"FLUSHDB"]);
}
