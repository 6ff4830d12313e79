//! Cairn's Redis adapter, pure Wasm: it speaks RESP itself over the TCP
//! endpoint its job grants (no redis-cli). Backup writes, per database, one
//! stream entry `/redis/db<N>` holding a record per key: the key, its
//! remaining time to live and its `DUMP` payload, whatever the key's type.
//! Restore replays them with `RESTORE ... REPLACE` (keeping TTLs); verify
//! compares key counts and every key's `DUMP` payload with the server.
//!
//! A server with a password is reached with `AUTH`, the password read from
//! a secret the job grants (`password-secret`). `pause-writes` holds every
//! client's writes (`CLIENT PAUSE ... WRITE`) while the keys are dumped, so
//! the snapshot is one point in time; the pause is a lease the adapter
//! renews, so a crashed agent cannot leave the server paused for longer
//! than `pause-lease-ms`, and it is always lifted when the backup ends.
//!
//! Record format (little-endian): `u32` key length, key, `i64` TTL in ms
//! (-1: none), `u64` payload length, payload.

use cairn_sdk::{
    Adapter, BackupSummary, Error, Footprint, Info, Metadata, RestoreSummary, VerifyReport,
    archive, log, snapshot,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Redis;

/// Where the server is, and which databases.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// `ip:port` of the server (must be granted to the job).
    address: String,
    /// The ACL user to log in as (`AUTH user password`); unset: the
    /// default user (`AUTH password`).
    #[serde(default)]
    username: Option<String>,
    /// The job's secret holding the password; unset: no `AUTH`.
    #[serde(default)]
    password_secret: Option<String>,
    /// Backup: hold every client's writes while the keys are dumped
    /// (`CLIENT PAUSE <lease> WRITE`, renewed while the dump runs, then
    /// `CLIENT UNPAUSE`), so the snapshot is one point in time.
    #[serde(default)]
    pause_writes: bool,
    /// How long one grant of the pause lasts, in ms: the longest writes stay
    /// held if the agent dies mid-backup. The adapter renews it at a third
    /// of this; a backup that could not renew it in time fails, since its
    /// keys may no longer be from one point in time.
    #[serde(default = "default_pause_lease_ms")]
    pause_lease_ms: u64,
    /// Databases to back up or restore; empty means every one that holds keys.
    #[serde(default)]
    databases: Vec<u32>,
    /// Restore and verify only the keys matching this glob (`*`, `?`, as
    /// Redis's own patterns without classes); default: every key.
    #[serde(default)]
    pattern: Option<String>,
    /// Restore and verify: a spare database to use instead of the
    /// snapshot's own (a restore drill's scratch target). Restore refuses
    /// unless it is empty, and empties it again if it fails; verify
    /// compares against it and then empties it. Takes one database.
    #[serde(default)]
    scratch_database: Option<u32>,
}

fn default_pause_lease_ms() -> u64 {
    30_000
}

/// Whether `key` matches `pattern` (`*` any run, `?` any one byte).
fn glob(pattern: &[u8], key: &[u8]) -> bool {
    match (pattern.split_first(), key.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob(rest, key) || (!key.is_empty() && glob(pattern, &key[1..])),
        (Some((b'?', rest)), Some((_, k))) => glob(rest, k),
        (Some((p, rest)), Some((k, krest))) if p == k => glob(rest, krest),
        _ => false,
    }
}

impl Config {
    /// Fail, naming them, if databases the config asks for were not in the
    /// snapshot (`seen`).
    fn all_found(&self, seen: &[u32]) -> Result<(), Error> {
        let missing: Vec<String> = self
            .databases
            .iter()
            .filter(|d| !seen.contains(d))
            .map(|d| format!("db{d}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::NotFound(format!(
            "not in the snapshot: {} (it has: {})",
            missing.join(", "),
            seen.iter()
                .map(|d| format!("db{d}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Whether restore and verify take `key`: it matches the pattern, and
    /// it is not a drill's scratch mark (which backup never records
    /// either, so a restore can never carry it into live data).
    fn wants(&self, key: &[u8]) -> bool {
        key != SCRATCH_MARKER
            && self
                .pattern
                .as_deref()
                .is_none_or(|p| glob(p.as_bytes(), key))
    }
}

/// One RESP reply.
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A RESP connection.
struct Conn {
    address: String,
    /// Reads are buffered; writes go straight to the stream underneath
    /// (`get_mut`). WASI streams cannot be cloned into two halves.
    reader: BufReader<TcpStream>,
}

fn io_err(address: &str, e: std::io::Error) -> Error {
    Error::Io(format!("redis {address}: {e}"))
}

impl Conn {
    /// Connect to the configured server and log in if the config says how.
    fn open(config: &Config) -> Result<Conn, Error> {
        let address = &config.address;
        let stream = TcpStream::connect(address)
            .map_err(|e| Error::Io(format!("connecting to redis {address}: {e}")))?;
        let mut conn = Conn {
            address: address.to_string(),
            reader: BufReader::with_capacity(1 << 20, stream),
        };
        if let Some(secret) = &config.password_secret {
            let password = cairn_sdk::secrets::reveal(secret)?;
            let mut args: Vec<&[u8]> = vec![b"AUTH".as_slice()];
            if let Some(user) = &config.username {
                args.push(user.as_bytes());
            }
            args.push(&password);
            // The error names the command only, never its arguments.
            conn.call(&args)?;
        } else if config.username.is_some() {
            return Err(Error::InvalidConfig(
                "username is set but password-secret is not".into(),
            ));
        }
        Ok(conn)
    }

    /// Send one command and read its reply; a server error is an error.
    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, Error> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&req)
            .map_err(|e| io_err(&self.address, e))?;
        match self.read()? {
            Reply::Error(e) => Err(Error::Other(format!(
                "redis {}: {} failed: {e}",
                self.address,
                String::from_utf8_lossy(args[0])
            ))),
            r => Ok(r),
        }
    }

    /// A reply that is not what the protocol promises, naming the server.
    fn unexpected(&self, what: &str) -> Error {
        Error::Other(format!("redis {}: {what}", self.address))
    }

    fn line(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| io_err(&self.address, e))?;
        if !line.ends_with("\r\n") {
            return Err(Error::Io(format!(
                "redis {}: connection closed mid-reply",
                self.address
            )));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> Result<Reply, Error> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let num = || -> Result<i64, Error> {
            rest.parse()
                .map_err(|_| self.unexpected(&format!("bad reply {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num()?),
            "$" => match num()? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.reader
                        .read_exact(&mut buf)
                        .map_err(|e| io_err(&self.address, e))?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            },
            "*" => match num()? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)),
            },
            _ => return Err(self.unexpected(&format!("unknown reply {line:?}"))),
        })
    }

    /// Hold every client's writes for `lease` (or extend the hold).
    fn pause_writes(&mut self, lease: Duration) -> Result<(), Error> {
        let ms = lease.as_millis().to_string();
        self.call(&[b"CLIENT", b"PAUSE", ms.as_bytes(), b"WRITE"])
            .map(|_| ())
    }

    fn select(&mut self, db: u32) -> Result<(), Error> {
        self.call(&[b"SELECT", db.to_string().as_bytes()])
            .map(|_| ())
    }

    /// Databases holding keys, from `INFO keyspace`.
    fn databases(&mut self) -> Result<Vec<u32>, Error> {
        let Reply::Bulk(Some(info)) = self.call(&[b"INFO", b"keyspace"])? else {
            return Err(self.unexpected("INFO gave no text"));
        };
        Ok(String::from_utf8_lossy(&info)
            .lines()
            .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
            .collect())
    }

    /// Every key of the selected database (SCAN, so the server never
    /// blocks), calling `tick` between batches.
    fn keys(&mut self, tick: &mut dyn FnMut() -> Result<(), Error>) -> Result<Vec<Vec<u8>>, Error> {
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            tick()?;
            let Reply::Array(Some(mut parts)) =
                self.call(&[b"SCAN", &cursor, b"COUNT", b"1000"])?
            else {
                return Err(self.unexpected("SCAN gave no array"));
            };
            let batch = parts.pop();
            let next = parts.pop();
            if let Some(Reply::Array(Some(items))) = batch {
                for i in items {
                    if let Reply::Bulk(Some(k)) = i {
                        keys.push(k);
                    }
                }
            }
            match next {
                Some(Reply::Bulk(Some(c))) if c != b"0" => cursor = c,
                _ => break,
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// A key's TTL (ms, -1 none) and DUMP payload; None if it vanished.
    fn dump(&mut self, key: &[u8]) -> Result<Option<(i64, Vec<u8>)>, Error> {
        let ttl = match self.call(&[b"PTTL", key])? {
            Reply::Int(-2) => return Ok(None),
            Reply::Int(t) => t,
            _ => return Err(self.unexpected("PTTL gave no integer")),
        };
        match self.call(&[b"DUMP", key])? {
            Reply::Bulk(Some(p)) => Ok(Some((ttl, p))),
            _ => Ok(None),
        }
    }
}

impl Conn {
    /// The members of a set, or the field/value pairs of a hash, sorted; `None`
    /// for other types (their DUMP is in a stable order).
    fn unordered_content(&mut self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>, Error> {
        let command: &[u8] = match self.call(&[b"TYPE", key])? {
            Reply::Simple(t) if t == "set" => b"SMEMBERS",
            Reply::Simple(t) if t == "hash" => b"HGETALL",
            _ => return Ok(None),
        };
        let Reply::Array(Some(items)) = self.call(&[command, key])? else {
            return Err(self.unexpected("SMEMBERS/HGETALL gave no array"));
        };
        let mut flat: Vec<Vec<u8>> = items
            .into_iter()
            .filter_map(|i| match i {
                Reply::Bulk(Some(b)) => Some(b),
                _ => None,
            })
            .collect();
        if command == b"HGETALL" {
            // Pairs, kept together while sorting.
            let mut pairs: Vec<Vec<u8>> = flat
                .chunks(2)
                .map(|p| [&(p[0].len() as u64).to_le_bytes()[..], &p.concat()].concat())
                .collect();
            pairs.sort();
            return Ok(Some(pairs));
        }
        flat.sort();
        Ok(Some(flat))
    }

    /// Whether live `key` holds what the snapshot's `payload` holds, when
    /// the two DUMPs differ in bytes: a set or hash stored as a hash table
    /// dumps its members in table order, which a restore may change. The
    /// payload is restored under a scratch key that expires within a
    /// minute, compared member by member, and deleted.
    fn same_unordered(&mut self, key: &[u8], payload: &[u8]) -> Result<bool, Error> {
        let Some(live) = self.unordered_content(key)? else {
            return Ok(false);
        };
        // A fresh random name, and no REPLACE: an existing key is never
        // overwritten.
        let scratch = cairn_sdk::database::scratch_name("cairn:verify").into_bytes();
        self.call(&[b"RESTORE", &scratch, b"60000", payload])?;
        let stored = self.unordered_content(&scratch);
        self.call(&[b"DEL", &scratch])?;
        Ok(stored? == Some(live))
    }
}

/// Dump every chosen database into its entry, calling `tick` between keys
/// (the write pause's renewal).
fn dump_all(
    config: &Config,
    tick: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<BackupSummary, Error> {
    let mut conn = Conn::open(config)?;
    let dbs = if config.databases.is_empty() {
        conn.databases()?
    } else {
        config.databases.clone()
    };
    let mut files = 0;
    for db in dbs {
        conn.select(db)?;
        let mut w = archive::begin_stream(&format!("/redis/db{db}"), &Metadata::with_mode(0o600))?;
        for key in conn.keys(tick)? {
            tick()?;
            if key == SCRATCH_MARKER {
                continue;
            }
            let Some((ttl, payload)) = conn.dump(&key)? else {
                continue; // expired or deleted while we scanned
            };
            w.write_all(&(key.len() as u32).to_le_bytes())?;
            w.write_all(&key)?;
            w.write_all(&ttl.to_le_bytes())?;
            w.write_all(&(payload.len() as u64).to_le_bytes())?;
            w.write_all(&payload)?;
            files += 1;
        }
        w.finish()?;
    }
    Ok(BackupSummary {
        files,
        ..Default::default()
    })
}

/// Every client's writes held for the length of a backup, on a connection
/// of its own. The hold is a lease: granted for `lease`, renewed at a third
/// of it, so it ends by itself soon after the agent dies.
struct Pause {
    conn: Conn,
    lease: Duration,
    /// When the current grant was asked for (before the request was sent,
    /// so the hold is never assumed to last longer than it does).
    granted: Instant,
}

impl Pause {
    fn start(config: &Config) -> Result<Pause, Error> {
        if config.pause_lease_ms < 1_000 {
            return Err(Error::InvalidConfig(format!(
                "pause-lease-ms = {}: give at least 1000",
                config.pause_lease_ms
            )));
        }
        let lease = Duration::from_millis(config.pause_lease_ms);
        let mut conn = Conn::open(config)?;
        let granted = Instant::now();
        conn.pause_writes(lease)?;
        log::info(&format!(
            "redis {}: writes paused for the backup",
            config.address
        ));
        Ok(Pause {
            conn,
            lease,
            granted,
        })
    }

    /// Fail if the hold may have ended since it was last granted.
    fn still_held(&self) -> Result<(), Error> {
        let held = self.granted.elapsed();
        if held >= self.lease {
            return Err(Error::Other(format!(
                "redis {}: the write pause lapsed ({} ms without renewal, lease {} ms), so the keys are not from one point in time; raise pause-lease-ms",
                self.conn.address,
                held.as_millis(),
                self.lease.as_millis()
            )));
        }
        Ok(())
    }

    /// Extend the hold once a third of the lease has gone.
    fn renew_if_due(&mut self) -> Result<(), Error> {
        if self.granted.elapsed() < self.lease / 3 {
            return Ok(());
        }
        self.still_held()?;
        let asked = Instant::now();
        self.conn.pause_writes(self.lease)?;
        // The renewal took effect somewhere before its reply: the hold was
        // unbroken only if the previous grant still ran then.
        self.still_held()?;
        self.granted = asked;
        Ok(())
    }

    /// Let writes go on (`CLIENT UNPAUSE`), on a new connection if the
    /// pause's own one broke.
    fn lift(mut self, config: &Config) -> Result<(), Error> {
        const UNPAUSE: [&[u8]; 2] = [b"CLIENT", b"UNPAUSE"];
        if let Err(first) = self.conn.call(&UNPAUSE) {
            log::warn(&format!(
                "{first}; lifting the write pause on a new connection"
            ));
            Conn::open(config)?.call(&UNPAUSE)?;
        }
        log::info(&format!("redis {}: writes resumed", config.address));
        Ok(())
    }
}

fn db_of(path: &str) -> Option<u32> {
    path.strip_prefix("/redis/db")?.parse().ok()
}

/// One key as stored.
struct Record {
    key: Vec<u8>,
    /// Remaining time to live in ms; -1 for none.
    ttl: i64,
    /// The `DUMP` payload.
    payload: Vec<u8>,
}

/// Read the next record of an entry; None at its end.
fn read_record(r: &mut impl Read) -> Result<Option<Record>, Error> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Io(e.to_string())),
    }
    let io = |e: std::io::Error| Error::Corrupt(format!("redis record: {e}"));
    let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut key).map_err(io)?;
    let mut ttl = [0u8; 8];
    r.read_exact(&mut ttl).map_err(io)?;
    let mut plen = [0u8; 8];
    r.read_exact(&mut plen).map_err(io)?;
    let mut payload = vec![0u8; u64::from_le_bytes(plen) as usize];
    r.read_exact(&mut payload).map_err(io)?;
    Ok(Some(Record {
        key,
        ttl: i64::from_le_bytes(ttl),
        payload,
    }))
}

/// The next database entry of the snapshot that the config asks for, with
/// that database selected on the server and the entry open.
fn next_database(
    conn: &mut Conn,
    config: &Config,
    used_scratch: &mut bool,
) -> Result<Option<(u32, snapshot::EntryReader)>, Error> {
    while let Some(entry) = snapshot::next_entry()? {
        let Some(db) = db_of(&entry.path) else {
            continue;
        };
        if !config.databases.is_empty() && !config.databases.contains(&db) {
            continue;
        }
        match config.scratch_database {
            Some(scratch) => {
                if db == scratch {
                    return Err(Error::InvalidConfig(format!(
                        "scratch-database {scratch} is the snapshot's own database; a drill needs a spare one"
                    )));
                }
                if *used_scratch {
                    return Err(Error::InvalidConfig(format!(
                        "scratch-database takes one database, and the snapshot has more: choose one with databases = [{db}]"
                    )));
                }
                *used_scratch = true;
                conn.select(scratch)?;
            }
            None => conn.select(db)?,
        }
        return Ok(Some((db, snapshot::open(&entry.path)?)));
    }
    Ok(None)
}

/// The key a drill sets in the spare database before restoring into it:
/// only a database holding it is ever emptied.
const SCRATCH_MARKER: &[u8] = b"cairn:drill-scratch";

/// Whether the selected database holds the scratch marker.
fn has_marker(conn: &mut Conn) -> Result<bool, Error> {
    match conn.call(&[b"EXISTS", SCRATCH_MARKER])? {
        Reply::Int(n) => Ok(n > 0),
        _ => Err(conn.unexpected("EXISTS gave no integer")),
    }
}

/// Empty the scratch database after a verify or a failed restore, if a
/// drill's restore marked it; a database without the marker is left alone
/// (`verify --set scratch-database=0` must not wipe database 0).
fn clear_scratch(config: &Config) -> Result<(), Error> {
    let Some(scratch) = config.scratch_database else {
        return Ok(());
    };
    let mut conn = Conn::open(config)?;
    conn.select(scratch)?;
    if has_marker(&mut conn)? {
        conn.call(&[b"FLUSHDB"])?;
    } else {
        log::warn(&format!(
            "scratch database {scratch} holds no drill marker; it is left as it is"
        ));
    }
    Ok(())
}

impl Adapter for Redis {
    type BackupConfig = Config;
    type RestoreConfig = Config;
    type VerifyConfig = Config;

    fn info() -> Info {
        Info::new(
            "redis",
            env!("CARGO_PKG_VERSION"),
            "Every key of every Redis database, as DUMP payloads with TTLs.",
        )
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        if !config.pause_writes {
            return dump_all(&config, &mut || Ok(()));
        }
        let pause = std::cell::RefCell::new(None);
        cairn_sdk::hooks::within_window(
            || {
                *pause.borrow_mut() = Some(Pause::start(&config)?);
                Ok(())
            },
            || {
                let mut held = pause.borrow_mut();
                let Some(p) = held.as_mut() else {
                    return Err(Error::Other("the write pause was not started".into()));
                };
                let summary = dump_all(&config, &mut || p.renew_if_due())?;
                p.still_held()?;
                Ok(summary)
            },
            || {
                pause
                    .borrow_mut()
                    .take()
                    .map_or(Ok(()), |p| p.lift(&config))
            },
        )
    }

    fn restore(config: Config) -> Result<RestoreSummary, Error> {
        if let Some(scratch) = config.scratch_database {
            // Only an empty spare database is a scratch target: one with
            // keys may be live data, and is never written over.
            let mut conn = Conn::open(&config)?;
            conn.select(scratch)?;
            match conn.call(&[b"DBSIZE"])? {
                Reply::Int(0) => {}
                // What an interrupted drill left: its own keys.
                Reply::Int(_) if has_marker(&mut conn)? => {
                    conn.call(&[b"FLUSHDB"])?;
                }
                Reply::Int(n) => {
                    return Err(Error::InvalidConfig(format!(
                        "scratch database {scratch} is not empty ({n} keys); a drill restores only into an empty spare database"
                    )));
                }
                _ => return Err(conn.unexpected("DBSIZE gave no integer")),
            }
            conn.call(&[b"SET", SCRATCH_MARKER, b"1"])?;
            let result = restore_keys(&config);
            if result.is_err() {
                clear_scratch(&config)?;
            }
            return result;
        }
        restore_keys(&config)
    }

    fn verify(config: Config) -> Result<VerifyReport, Error> {
        let result = verify_keys(&config);
        clear_scratch(&config)?;
        result
    }

    fn check(
        config: &serde_json::Value,
        drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Footprint, Error> {
        footprint(config, drill_set)
    }
}

/// The databases a job's settings read, and the spare database its drill
/// writes: `redis://<address>/<n>`, or `redis://<address>/` for every
/// database of the server.
fn footprint(
    config: &serde_json::Value,
    drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Footprint, Error> {
    let own: Config = cairn_sdk::parse_value(config)?;
    let server = format!("redis://{}/", own.address);
    let reads = if own.databases.is_empty() {
        vec![server.clone()]
    } else {
        own.databases
            .iter()
            .map(|d| format!("{server}{d}"))
            .collect()
    };
    let footprint = Footprint::reading(reads);
    let Some(set) = drill_set else {
        return Ok(footprint);
    };
    if let Some(k) = set.keys().find(|k| *k != "scratch-database") {
        return Err(Error::InvalidConfig(format!(
            "a Redis drill's set takes scratch-database only, not {k}"
        )));
    }
    let drill: Config = cairn_sdk::parse_value(&cairn_sdk::drill_config(config, set))?;
    let Some(scratch) = drill.scratch_database else {
        return Err(Error::InvalidConfig(
            "a Redis drill restores into a spare database: give drill.set = { scratch-database = N }"
                .into(),
        ));
    };
    if own.databases.is_empty() {
        return Err(Error::InvalidConfig(
            "a Redis drill needs the job's databases listed (databases), so the scratch database cannot be one of them".into(),
        ));
    }
    if own.databases.contains(&scratch) {
        return Err(Error::InvalidConfig(format!(
            "drill scratch-database {scratch} is one of the job's own databases"
        )));
    }
    Ok(footprint.writing([format!("{server}{scratch}")]))
}

fn restore_keys(config: &Config) -> Result<RestoreSummary, Error> {
    let mut conn = Conn::open(config)?;
    let mut summary = RestoreSummary::default();
    let mut seen = Vec::new();
    let mut used_scratch = false;
    while let Some((db, mut r)) = next_database(&mut conn, config, &mut used_scratch)? {
        seen.push(db);
        while let Some(Record { key, ttl, payload }) = read_record(&mut r)? {
            if !config.wants(&key) {
                continue;
            }
            let ttl = ttl.max(0).to_string();
            conn.call(&[b"RESTORE", &key, ttl.as_bytes(), &payload, b"REPLACE"])?;
            summary.files += 1;
            summary.bytes += payload.len() as u64;
        }
    }
    config.all_found(&seen)?;
    if summary.files == 0
        && let Some(pattern) = &config.pattern
    {
        return Err(Error::NotFound(format!(
            "no key of the snapshot matches pattern {pattern:?}"
        )));
    }
    Ok(summary)
}

fn verify_keys(config: &Config) -> Result<VerifyReport, Error> {
    let mut conn = Conn::open(config)?;
    let mut report = VerifyReport::default();
    let mut seen = Vec::new();
    let mut used_scratch = false;
    while let Some((db, mut r)) = next_database(&mut conn, config, &mut used_scratch)? {
        seen.push(db);
        let mut count = 0u64;
        while let Some(Record { key, payload, .. }) = read_record(&mut r)? {
            if !config.wants(&key) {
                continue;
            }
            count += 1;
            report.entries += 1;
            report.bytes += payload.len() as u64;
            match conn.dump(&key)? {
                Some((_, live)) if live == payload => {}
                Some(_) if conn.same_unordered(&key, &payload)? => {}
                Some(_) => report.problems.push(format!(
                    "db{db}: key {:?} differs from the snapshot",
                    String::from_utf8_lossy(&key)
                )),
                None => report.problems.push(format!(
                    "db{db}: key {:?} is missing",
                    String::from_utf8_lossy(&key)
                )),
            }
        }
        // Keys on the server that the snapshot does not have: all of
        // the database's, or those matching the pattern.
        // A drill's scratch database also holds the marker.
        let marker = u64::from(config.scratch_database.is_some() && has_marker(&mut conn)?);
        let live = match &config.pattern {
            None => match conn.call(&[b"DBSIZE"])? {
                Reply::Int(n) => (n as u64).saturating_sub(marker),
                _ => return Err(conn.unexpected("DBSIZE gave no integer")),
            },
            Some(_) => conn
                .keys(&mut || Ok(()))?
                .iter()
                .filter(|k| config.wants(k) && (marker == 0 || k.as_slice() != SCRATCH_MARKER))
                .count() as u64,
        };
        if live != count {
            report.problems.push(format!(
                "db{db}: the snapshot has {count} keys{}, the server {live}",
                config
                    .pattern
                    .as_ref()
                    .map(|p| format!(" matching {p:?}"))
                    .unwrap_or_default()
            ));
        }
    }
    config.all_found(&seen)?;
    Ok(report)
}

cairn_sdk::export_adapter!(Redis);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        config: serde_json::Value,
        set: Option<serde_json::Value>,
    ) -> Result<Footprint, Error> {
        let set = set.map(|s| s.as_object().cloned().unwrap_or_default());
        footprint(&config, set.as_ref())
    }

    #[test]
    fn the_footprint_names_the_databases_read_and_the_scratch_written() {
        let f = check(
            serde_json::json!({"address": "10.0.0.5:6379", "databases": [0, 2]}),
            None,
        )
        .unwrap();
        assert_eq!(
            f.reads,
            ["redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/2"]
        );
        assert!(f.writes.is_empty());
        let f = check(serde_json::json!({"address": "10.0.0.5:6379"}), None).unwrap();
        assert_eq!(f.reads, ["redis://10.0.0.5:6379/"]);
        let f = check(
            serde_json::json!({"address": "10.0.0.5:6379", "databases": [0]}),
            Some(serde_json::json!({"scratch-database": 15})),
        )
        .unwrap();
        assert_eq!(f.writes, ["redis://10.0.0.5:6379/15"]);
    }

    #[test]
    fn a_drill_must_name_a_spare_database_not_its_own() {
        let job = serde_json::json!({"address": "10.0.0.5:6379", "databases": [0]});
        let e = check(job.clone(), Some(serde_json::json!({}))).unwrap_err();
        assert!(
            e.to_string()
                .contains("give drill.set = { scratch-database = N }"),
            "{e}"
        );
        let e = check(
            job.clone(),
            Some(serde_json::json!({"scratch-database": 0})),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("one of the job's own databases"),
            "{e}"
        );
        let e = check(
            job,
            Some(serde_json::json!({"scratch-database": 1, "pattern": "a*"})),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("scratch-database only, not pattern"),
            "{e}"
        );
        let every = serde_json::json!({"address": "10.0.0.5:6379"});
        let e = check(every, Some(serde_json::json!({"scratch-database": 15}))).unwrap_err();
        assert!(e.to_string().contains("databases listed"), "{e}");
        let e = check(serde_json::json!({"databases": [0]}), None).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(m) if m.contains("address")));
    }

    #[test]
    fn glob_matches_runs_and_single_bytes() {
        assert!(glob(b"*", b""));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"user:*", b"user:42"));
        assert!(!glob(b"user:*", b"session:42"));
        assert!(glob(b"user:?", b"user:4"));
        assert!(!glob(b"user:?", b"user:42"));
        assert!(glob(b"*:*:end", b"a:b:c:end"));
        assert!(!glob(b"a*b", b"a"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"x"));
    }

    #[test]
    fn glob_compares_bytes_not_text() {
        assert!(glob(b"caf\xc3\xa9", "café".as_bytes()));
        assert!(glob(b"k?", b"k\xff"));
    }
}
