//! PostgreSQL physical base backups (the base of point-in-time recovery)
//! against the real server on 127.0.0.1:5432. The independent checks are
//! PostgreSQL's own: `pg_verifybackup` on the restored directory, and a
//! server started on it that recovers with WAL copied from the source's
//! `pg_wal` and holds exactly the rows committed before the backup.

use crate::common::{Scratch, last_json, text};
use crate::postgres::psql;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &str = r#"["pg_basebackup", "psql", "tar"]"#;
/// What a streamed job needs at least.
const PROGRAMS_STREAM: &str = r#"["pg_basebackup", "pg_receivewal", "psql", "tar"]"#;

/// A PostgreSQL server program (Debian keeps `pg_ctl` and
/// `pg_verifybackup` out of the PATH).
pub(crate) fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (is postgresql installed?)")
        .filter_map(|v| Some(v.ok()?.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} is not in /usr/lib/postgresql/*/bin"))
}

/// Run `program args` as the postgres user; its output, which must be a success.
fn as_postgres(program: &Path, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("run runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server started on a restored directory, stopped when dropped.
pub(crate) struct Recovered {
    pub(crate) data: PathBuf,
    pub(crate) sockets: PathBuf,
    pub(crate) port: u16,
}

impl Recovered {
    /// Start a server on the restored data directory `data` (in `s`,
    /// whose root the postgres user may traverse) on `port`, reached by a
    /// socket only, recovering with `recovery` (restore_command, target)
    /// and promoting at the end; wait until it is promoted.
    fn start(s: &Scratch, data: &Path, port: u16, recovery: &str) -> Recovered {
        let sockets = s.path(&format!("sockets-{port}"));
        std::fs::create_dir_all(&sockets).unwrap();
        let hba = data.join("cairn_test_hba.conf");
        std::fs::write(&hba, "local all all trust\n").unwrap();
        let conf = data.join("cairn_test.conf");
        std::fs::write(
            &conf,
            format!(
                "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nhba_file = '{}'\n\
                 {recovery}recovery_target_action = 'promote'\narchive_mode = off\nhot_standby = off\n",
                sockets.display(),
                hba.display()
            ),
        )
        .unwrap();
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        for path in [data, &sockets] {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path)
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {}", text(&out));
        }
        let server = Recovered {
            data: data.to_path_buf(),
            sockets,
            port,
        };
        let log = data.join("recovery.log");
        let started = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["start", "-w", "-t", "120", "-D"])
            .arg(data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-c config_file={}", conf.display()))
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start: {}\nlog:\n{}",
            text(&started),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Connections are refused until recovery ends and the copy is promoted.
        let mut last = None;
        for _ in 0..600 {
            let out = server.psql("postgres", "SELECT pg_is_in_recovery()");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
                last = None;
                break;
            }
            last = Some(text(&out));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            last.is_none(),
            "not promoted after 60 s: {last:?}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        server
    }

    fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-h"])
            .arg(&self.sockets)
            .args([
                "-p",
                &self.port.to_string(),
                "-X",
                "-At",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap()
    }

    /// Run `sql` on `db`; its output, which must be a success.
    pub(crate) fn query(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Recovered {
    fn drop(&mut self) {
        stop_server(&self.data);
    }
}

/// Stop the server of data directory `data`, if it runs (for drops: no panic).
fn stop_server(data: &Path) {
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("pg_ctl"))
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(data)
        .output();
}

/// A physical replication slot holding the source's WAL, dropped when
/// this is (also when the test fails: a forgotten slot fills the disk).
struct Slot(&'static str);

impl Slot {
    /// Drop slot `name` when this is dropped (one Cairn creates).
    fn dropped_later(name: &'static str) -> Slot {
        Slot(name)
    }

    fn create(name: &'static str) -> Slot {
        psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{name}';
                 SELECT pg_create_physical_replication_slot('{name}', true);"
            ),
        );
        Slot(name)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!("SELECT pg_drop_replication_slot('{}')", self.0))
            .output();
    }
}

/// Database `db` on the main cluster, new and empty.
fn fresh_database(db: &str) {
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {db}"));
}

/// What a table holds, as one line: row count and a digest of its rows in order.
fn table_digest(query: impl Fn(&str) -> String, table: &str) -> String {
    query(&format!(
        "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || body, ',' ORDER BY id), '')) FROM {table}"
    ))
    .trim()
    .to_string()
}

#[test]
fn a_physical_base_backup_restores_and_recovers_to_exactly_the_rows_committed_before_it() {
    let s = Scratch::new();
    s.init();
    // The postgres user must reach the restored directory and the socket.
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let db = "cairn_t_pitr_base";
    let slot = "cairn_t_pitr_base_keep";
    fresh_database(db);
    // 200,000 rows: base.tar is several chunks, not one.
    psql(
        db,
        "CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO items SELECT i, md5(i::text) || repeat('x', i % 300) FROM generate_series(1, 200000) i;",
    );
    // The source keeps its WAL from here on, so the test can feed the
    // restored copy from the source's pg_wal.
    let _slot = Slot::create(slot);
    let before = table_digest(|q| psql(db, q), "items");
    assert!(before.starts_with("200000 "), "{before}");

    let config = s.write_job_config(
        "pitr.toml",
        "pg",
        "postgres",
        r#"host = "127.0.0.1", port = 5432, user = "postgres", mode = "physical""#,
        PROGRAMS,
    );
    // A user's tag may not pose as Cairn's own.
    let out = s.cairn_config(&config, &["backup", "--job", "pg", "--tag", "pg-stop=0/1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pg-stop=0/1"), "{}", text(&out));

    let out = s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]);
    let report = last_json(&out);
    let id = report["snapshot_id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    // Written after the backup ended: not in it.
    psql(db, "INSERT INTO items VALUES (-1, 'after the backup')");

    let snaps =
        last_json(&s.cairn_config_ok(&config, &["--tenant", "acme", "snapshots", "--json"]));
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"].as_str() == Some(&id))
        .unwrap_or_else(|| panic!("snapshot {id} not listed: {snaps}"));
    let tags: Vec<String> = snap["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let tag = |key: &str| {
        tags.iter()
            .find_map(|t| t.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} tag in {tags:?}"))
            .to_string()
    };
    assert!(tags.contains(&"pg-basebackup".to_string()), "{tags:?}");
    let system = psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    );
    assert_eq!(tag("pg-system"), system.trim());
    assert_eq!(tag("pg-segment-size"), "16777216");
    let tli = psql(
        "postgres",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    );
    assert_eq!(tag("pg-tli"), tli.trim());

    // The snapshot verifies (every byte of base.tar read through tar).
    s.cairn_config_ok(&config, &["verify", "--job", "pg", &id]);

    // Restore refuses a directory that is not empty, and names it.
    let full = s.path("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), "mine").unwrap();
    let out = s.cairn_config(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            &id,
            "--target",
            full.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "mine");

    let data = s.path("data");
    s.cairn_config_ok(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            &id,
            "--target",
            data.to_str().unwrap(),
        ],
    );
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    let pg_version = std::fs::metadata(data.join("PG_VERSION")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (pg_version.uid(), pg_version.gid())
    );
    assert_ne!(
        meta.uid(),
        0,
        "the cluster's files belong to the server's user"
    );
    // PostgreSQL's own check of every file against the backup's manifest.
    as_postgres(
        &pg_bin("pg_verifybackup"),
        &["--no-parse-wal", data.to_str().unwrap()],
    );
    // The tag's start is backup_label's.
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(
        label.contains(&format!("START WAL LOCATION: {} ", tag("pg-start"))),
        "{label}\n{tags:?}"
    );

    // Recover it with the source's WAL and compare what it holds.
    let source_wal = psql("postgres", "SHOW data_directory").trim().to_string() + "/pg_wal";
    let server = Recovered::start(
        &s,
        &data,
        5439,
        &format!("restore_command = 'cp {source_wal}/%f %p'\nrecovery_target = 'immediate'\n"),
    );
    assert_eq!(
        table_digest(|q| server.query(db, q), "items"),
        before,
        "rows of the recovered copy"
    );

    drop(server);
    psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
}

/// Insert `n` marker rows, one transaction each, numbered after the last.
fn insert_markers(db: &str, n: usize) {
    for _ in 0..n {
        psql(db, "INSERT INTO marker (at) VALUES (clock_timestamp())");
    }
}

/// Let a flush store the partial (they come every second), then stop the
/// stream with SIGTERM; it must end well, saying so. Its output.
pub(crate) fn stop_stream(stream: std::process::Child) -> String {
    std::thread::sleep(std::time::Duration::from_millis(2500));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(stream.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = stream.wait_with_output().unwrap();
    assert!(out.status.success(), "wal-stream: {}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = printed.lines().last().unwrap_or_default();
    assert!(last.contains("stopped"), "{printed}");
    printed
}

/// Restore base backup `base_id` of job `pg` into a new directory and
/// start it on `port`, recovering with the WAL restic put in `wal`.
fn recover_from_wal(s: &Scratch, config: &Path, base_id: &str, wal: &Path, port: u16) -> Recovered {
    let data = s.path(&format!("data-{port}"));
    s.cairn_config_ok(
        config,
        &[
            "restore",
            "--job",
            "pg",
            base_id,
            "--target",
            data.to_str().unwrap(),
        ],
    );
    Recovered::start(
        s,
        &data,
        port,
        &format!(
            "restore_command = 'cp {}/postgres-wal/*/%f %p'\n",
            wal.display()
        ),
    )
}

/// Restore the WAL windows `windows` (restic's JSON) with restic into
/// `wal`, check that their complete segments follow each other with no
/// gap, rename the newest partial to its full name (as PostgreSQL's docs
/// say, it then replays) and give the tree to the postgres user. Returns
/// the complete segments' names and files.
fn restic_wal(s: &Scratch, windows: &[serde_json::Value], wal: &Path) -> Vec<(String, PathBuf)> {
    for w in windows {
        let id = w["short_id"].as_str().unwrap();
        s.restic_ok(&["restore", id, "--target", wal.to_str().unwrap()]);
    }
    let mut files = Vec::new();
    let mut partials = Vec::new();
    for folder in std::fs::read_dir(wal.join("postgres-wal")).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() || folder.ends_with("history") {
            continue;
        }
        for file in std::fs::read_dir(&folder).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            match name.strip_suffix(".partial") {
                Some(stem) => partials.push((stem.to_string(), file)),
                None => files.push((name, file)),
            }
        }
    }
    files.sort();
    let segno = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&name[16..], 16).unwrap()
    };
    let numbers: Vec<u64> = files.iter().map(|(n, _)| segno(n)).collect();
    assert!(numbers.len() >= 3, "{numbers:X?}");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "segments with a gap: {numbers:X?}"
    );
    partials.sort();
    let (stem, newest) = partials
        .pop()
        .expect("the segment being received is in a window");
    assert_eq!(
        segno(&stem),
        numbers[numbers.len() - 1] + 1,
        "the partial follows the last segment"
    );
    std::fs::rename(&newest, newest.with_file_name(&stem)).unwrap();
    // The window's folders are private (0700): the server's user reads them.
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(wal)
        .output()
        .unwrap();
    assert!(out.status.success(), "chown: {}", text(&out));
    files
}

/// Wait until slot `slot` is in use by a receiver (`active`) or free.
fn wait_slot_active(slot: &str, active: bool) {
    let want = if active { "t" } else { "f" };
    for _ in 0..300 {
        let a = psql(
            "postgres",
            &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        );
        if a.trim() == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("slot {slot} is not active = {active} after 30 s");
}

/// Wait until the receiver of slot `slot` has everything the server had
/// flushed when this was called (other tests write WAL all the while).
/// `sql` runs a query on the server's `postgres` database.
pub(crate) fn wait_caught_up(slot: &str, sql: impl Fn(&str) -> String) {
    let target = sql("SELECT pg_current_wal_flush_lsn()");
    let target = target.trim();
    for _ in 0..300 {
        let caught = sql(&format!(
            "SELECT restart_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        if caught.trim() == "t" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the receiver of slot {slot} did not reach {target} in 30 s");
}

#[test]
fn streamed_wal_and_a_base_backup_recover_every_committed_row_through_restic_alone() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let db = "cairn_t_pitr_wal";
    fresh_database(db);
    psql(
        db,
        "CREATE TABLE marker (id serial PRIMARY KEY, at timestamptz NOT NULL)",
    );
    let (slot, hold) = ("cairn_t_pitrw", "cairn_t_pitrw_stored");
    let _slots = (Slot::dropped_later(slot), Slot::dropped_later(hold));
    // The server keeps its own copy of every segment, for the comparison.
    let _keep = Slot::create("cairn_t_pitrw_keep");
    let config = s.write_job_config(
        "pitr.toml",
        "pg",
        "postgres",
        r#"host = "127.0.0.1", port = 5432, user = "postgres", mode = "physical""#,
        r#"["pg_basebackup", "pg_receivewal", "psql", "tar"]"#,
    );
    let spool = s.path("spool");
    let mut text_config = std::fs::read_to_string(&config).unwrap();
    text_config.push_str(&format!(
        "wal = {{ flush-secs = 1, slot = \"{slot}\", spool = {:?} }}\n",
        spool
    ));
    std::fs::write(&config, text_config).unwrap();

    // A config that cannot stream is refused, naming the job and the key.
    let bad = s.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("flush-secs = 1", "flush-secs = 0"),
    )
    .unwrap();
    let out = s.cairn_config(&bad, &["wal-stream", "--job", "pg"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("flush-secs"), "{}", text(&out));

    let start_stream = || {
        let child = spawn_stream(&s, &config);
        wait_slot_active(slot, true);
        child
    };
    let stream = start_stream();
    // A second stream of the same job is refused while the first runs.
    let out = s.cairn_config(&config, &["wal-stream", "--job", "pg"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("another wal-stream"), "{}", text(&out));

    insert_markers(db, 30);
    psql("postgres", "SELECT pg_switch_wal()");
    let base = last_json(&s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]));
    let base_id = base["snapshot_id"].as_str().unwrap().to_string();
    // Killed outright: its receiver goes with it (the slot is released),
    // and what it had not stored stays on the server, held by the slots.
    // Let a flush store the newest segment first.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut killed = stream;
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_slot_active(slot, false);
    // And its spool is lost too (a new disk): the next stream must not go
    // on from where the receiver's slot says the spool had got to.
    for f in std::fs::read_dir(&spool).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "streamer.lock" {
            std::fs::remove_file(f).unwrap();
        }
    }
    insert_markers(db, 30);
    psql("postgres", "SELECT pg_switch_wal()");
    let stream = start_stream();
    // Prune takes the repository's exclusive lock: flushes wait for it,
    // and the stream goes on.
    for _ in 0..3 {
        insert_markers(db, 5);
        s.cairn_config_ok(
            &config,
            &["--tenant", "acme", "--retry-lock", "60s", "prune"],
        );
    }
    // These stay in the segment being received: only the partial has them.
    insert_markers(db, 5);
    wait_caught_up(slot, |q| psql("postgres", q));
    stop_stream(stream);
    let expected = psql(db, "SELECT count(*), max(id) FROM marker");
    assert_eq!(expected.trim(), "80|80");

    // restic reads the window and finds nothing wrong.
    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(windows.len(), 1, "one window: {listed}");
    s.restic_ok(&["check", "--read-data"]);
    let wal = s.path("wal");
    let files = restic_wal(&s, &windows, &wal);
    // Every complete segment restic gave back is the server's own, byte for byte.
    let source_wal = PathBuf::from(psql("postgres", "SHOW data_directory").trim()).join("pg_wal");
    let mut compared = 0;
    for (name, file) in &files {
        let theirs = source_wal.join(name);
        if theirs.exists() {
            assert!(
                std::fs::read(file).unwrap() == std::fs::read(&theirs).unwrap(),
                "segment {name} differs from the server's"
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 2,
        "{compared} segments compared with the server's pg_wal"
    );

    // The base backup recovers with nothing but what restic restored, to the last row.
    let server = recover_from_wal(&s, &config, &base_id, &wal, 5438);
    assert_eq!(
        server
            .query(db, "SELECT count(*), max(id) FROM marker")
            .trim(),
        "80|80"
    );
    drop(server);
    psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
}

/// This build's cairn, copied under `dir` where the postgres user may run
/// it (restore_command runs it as the cluster's owner; the build's own
/// binary is under root's home).
pub(crate) fn cairn_for_postgres(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cairn = bin.join("cairn");
    std::fs::copy(crate::common::cairn_bin(), &cairn).unwrap();
    std::fs::set_permissions(&cairn, std::fs::Permissions::from_mode(0o755)).unwrap();
    cairn
}

/// Every program a streamed job needs, `pg_ctl` (for `restore --start`)
/// included, as a TOML array.
pub(crate) fn stream_programs() -> String {
    format!(
        "[\"pg_basebackup\", \"pg_receivewal\", \"psql\", \"tar\", {:?}]",
        pg_bin("pg_ctl")
    )
}

/// Config file `file` in `s`: tenant acme on the scratch repository, and
/// job `pg` taking physical base backups of the cluster on `port`, granted
/// `programs` (a TOML array), streaming its WAL with `wal` (the keys of
/// its inline table).
fn stream_config(s: &Scratch, file: &str, port: u16, programs: &str, wal: &str) -> PathBuf {
    let config = s.path(file);
    std::fs::write(s.path("password"), crate::common::PASSWORD).unwrap();
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate-dir = {:?}\n\n[tenants.acme]\nrepository = {:?}\npassword-file = {:?}\n\n{}wal = {{ {wal} }}\n",
            s.path("state"),
            s.repo(),
            s.path("password"),
            stream_job(port, programs),
        ),
    )
    .unwrap();
    config
}

/// Job `pg` of tenant acme: physical base backups of the cluster on
/// `port`, granted `programs` (the `wal` line is the caller's).
pub(crate) fn stream_job(port: u16, programs: &str) -> String {
    format!(
        "[jobs.pg]\ntenant = \"acme\"\nadapter = \"postgres\"\n\
         config = {{ host = \"127.0.0.1\", port = {port}, user = \"postgres\", mode = \"physical\" }}\n\
         grants = {{ programs = {programs}, connect = [\"127.0.0.1:{port}\"] }}\n"
    )
}

/// `cairn wal-stream --job pg` with `config`, its output piped, once its
/// receiver streams from `cluster`.
fn start_stream(s: &Scratch, config: &Path, cluster: &Cluster) -> std::process::Child {
    let child = spawn_stream(s, config);
    cluster.wait_slot(true);
    child
}

/// `cairn wal-stream --job pg` with `config`, its output piped.
fn spawn_stream(s: &Scratch, config: &Path) -> std::process::Child {
    s.cairn_cmd(&[
        "--config",
        config.to_str().unwrap(),
        "wal-stream",
        "--job",
        "pg",
    ])
    .env_remove("CAIRN_REPOSITORY")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// A throw-away cluster of this test's own (initdb), on `port`, that a
/// test may restart; stopped when dropped.
pub(crate) struct Cluster {
    data: PathBuf,
    port: u16,
    /// `-c config_file=…` when its configuration is kept outside the
    /// data directory, as Debian keeps it.
    options: Option<String>,
}

impl Cluster {
    pub(crate) fn create(s: &Scratch, name: &str, port: u16) -> Cluster {
        Cluster::create_with(s, name, port, false)
    }

    /// A cluster whose configuration files are outside its data
    /// directory (as on Debian): its base backups carry none.
    fn create_debian_like(s: &Scratch, name: &str, port: u16) -> Cluster {
        Cluster::create_with(s, name, port, true)
    }

    fn create_with(s: &Scratch, name: &str, port: u16, conf_outside: bool) -> Cluster {
        let data = s.path(name);
        std::fs::create_dir(&data).unwrap();
        let out = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {}", text(&out));
        as_postgres(
            &pg_bin("initdb"),
            &["--auth=trust", "--no-sync", "-D", data.to_str().unwrap()],
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            data.display()
        );
        let mut all = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        all.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), all).unwrap();
        let mut options = None;
        if conf_outside {
            let etc = s.path(&format!("{name}-etc"));
            std::fs::create_dir(&etc).unwrap();
            for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
                std::fs::rename(data.join(f), etc.join(f)).unwrap();
            }
            let mut conf = std::fs::read_to_string(etc.join("postgresql.conf")).unwrap();
            conf.push_str(&format!(
                "data_directory = '{}'\nhba_file = '{}/pg_hba.conf'\nident_file = '{}/pg_ident.conf'\n",
                data.display(),
                etc.display(),
                etc.display()
            ));
            std::fs::write(etc.join("postgresql.conf"), conf).unwrap();
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&etc)
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {}", text(&out));
            options = Some(format!("-c config_file={}/postgresql.conf", etc.display()));
        }
        let cluster = Cluster {
            data,
            port,
            options,
        };
        cluster.pg_ctl(&["start"]);
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.data.join("server.log");
        let mut all = args.to_vec();
        all.extend([
            "-w",
            "-t",
            "60",
            "-D",
            self.data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
        ]);
        if let Some(o) = &self.options {
            all.extend(["-o", o.as_str()]);
        }
        as_postgres(&pg_bin("pg_ctl"), &all);
    }

    /// Wait until the stream's slot `cairn_pg` is in use (`active`) or free.
    pub(crate) fn wait_slot(&self, active: bool) {
        let want = if active { "t" } else { "f" };
        for _ in 0..300 {
            let a = self.sql(
                "postgres",
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'cairn_pg'",
            );
            if a.trim() == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("slot cairn_pg is not active = {active} after 30 s");
    }

    /// Create table `marker` (a serial id, a time) in `postgres`.
    pub(crate) fn create_markers(&self) {
        self.sql(
            "postgres",
            "CREATE TABLE marker (id serial PRIMARY KEY, at timestamptz NOT NULL)",
        );
    }

    /// Insert `n` marker rows, one transaction each.
    pub(crate) fn insert_markers(&self, n: usize) {
        for _ in 0..n {
            self.sql(
                "postgres",
                "INSERT INTO marker (at) VALUES (clock_timestamp())",
            );
        }
    }

    pub(crate) fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "-At",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_server(&self.data);
    }
}

#[test]
fn the_stream_rides_out_a_server_restart_and_rapid_segment_switches_with_no_gap() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&s, "source", 5441);
    source.create_markers();
    let insert = |n: usize| {
        source.insert_markers(n);
    };
    let config = stream_config(
        &s,
        "pitr.toml",
        5441,
        r#"["pg_basebackup", "pg_receivewal", "psql", "tar"]"#,
        "flush-secs = 1",
    );
    let stream = start_stream(&s, &config, &source);
    insert(10);
    let base = last_json(&s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]));
    let base_id = base["snapshot_id"].as_str().unwrap().to_string();
    insert(10);
    // The server goes away and comes back: the receiver is started again.
    source.pg_ctl(&["restart", "-m", "fast"]);
    insert(10);
    source.wait_slot(true);
    // Segments completing faster than the stream looks at the spool.
    for _ in 0..12 {
        insert(1);
        source.sql("postgres", "SELECT pg_switch_wal()");
    }
    // A segment lost from the spool before it was stored: the stream
    // fetches it again from the server (the hold slot kept it), and the
    // archive has no gap.
    let streamer = rustix::process::Pid::from_raw(stream.id() as i32).unwrap();
    rustix::process::kill_process(streamer, rustix::process::Signal::STOP).unwrap();
    for _ in 0..2 {
        insert(1);
        source.sql("postgres", "SELECT pg_switch_wal()");
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let spool = s.path("state/wal/pg");
    let mut complete: Vec<PathBuf> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    complete.sort();
    assert!(complete.len() >= 2, "{complete:?}");
    std::fs::remove_file(&complete[complete.len() - 2]).unwrap();
    // And the newest damaged behind its intact header (a bad disk): the
    // record check refuses it, and it too is fetched again.
    let newest = complete.last().unwrap();
    damage_last_record(newest, &source);
    rustix::process::kill_process(streamer, rustix::process::Signal::CONT).unwrap();
    insert(5);
    // Caught up means the repository holds it all (the hold slot): the
    // lost segment was fetched again and stored, however long that took.
    wait_caught_up("cairn_pg_stored", |q| source.sql("postgres", q));
    let printed = stop_stream(stream);
    let last = printed.lines().last().unwrap_or_default();
    assert!(
        !last.contains(" 0 receiver restarts"),
        "the restart was not seen: {printed}"
    );
    assert!(
        last.contains("damaged files not stored"),
        "the damaged segment was not seen: {printed}"
    );
    assert_eq!(
        source.sql("postgres", "SELECT count(*) FROM marker").trim(),
        "49"
    );

    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    s.restic_ok(&["check", "--read-data"]);
    let wal = s.path("wal");
    let files = restic_wal(&s, &windows, &wal);
    assert!(files.len() >= 12, "{} segments", files.len());
    let server = recover_from_wal(&s, &config, &base_id, &wal, 5442);
    assert_eq!(
        server
            .query("postgres", "SELECT count(*), max(id) FROM marker")
            .trim(),
        "49|49"
    );
}

/// Change one byte of the last whole record of the complete segment at
/// `path` (so its CRC fails) of `cluster`'s WAL, leaving its headers as
/// they were.
fn damage_last_record(path: &Path, cluster: &Cluster) {
    use cairn::pitr::lsn::{SegmentSize, WalFile};
    use cairn::pitr::records::{Extent, verify_file};
    let size = SegmentSize::DEFAULT;
    let Some(WalFile::Segment(seg)) =
        WalFile::parse(path.file_name().unwrap().to_str().unwrap(), size)
    else {
        panic!("{} is not a segment", path.display());
    };
    let system: u64 = cluster
        .sql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .trim()
        .parse()
        .unwrap();
    let v = verify_file(path, seg, size, system, Extent::Complete).unwrap();
    let at = v.end.unwrap().0 - 1 - size.start(seg.segno).0;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
    assert!(verify_file(path, seg, size, system, Extent::Complete).is_err());
}

/// `restore --job pg --start ARGS` with `bin` (a copy of cairn) into
/// scratch directory `name`, which must succeed: its report, and the
/// server it started.
fn restore_started(
    s: &Scratch,
    bin: &Path,
    config: &Path,
    name: &str,
    args: &[&str],
) -> (serde_json::Value, Recovered) {
    let data = s.path(name);
    let mut all = vec![
        "--json",
        "restore",
        "--job",
        "pg",
        "--target",
        data.to_str().unwrap(),
        "--start",
    ];
    all.extend(args);
    let out = cairn_copy(s, bin, config, &all);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    let r = last_json(&String::from_utf8_lossy(&out.stdout));
    let server = Recovered {
        data,
        sockets: PathBuf::from(r["socket_dir"].as_str().unwrap()),
        port: r["port"].as_u64().unwrap() as u16,
    };
    (r, server)
}

/// Run `bin` (a copy of cairn) with `--config config ARGS`, as
/// `Scratch::cairn_config` runs this build's.
fn cairn_copy(s: &Scratch, bin: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let template = s.cairn_cmd(&[]);
    let mut c = Command::new(bin);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CAIRN_REPOSITORY")
        .output()
        .expect("run cairn")
}

/// One marker row as its writer saw it.
#[derive(Clone, Debug)]
struct Marker {
    id: u64,
    xid: u64,
    /// The WAL insert position read after its commit.
    lsn_after: String,
    sent: chrono::DateTime<chrono::Utc>,
    acked: chrono::DateTime<chrono::Utc>,
}

/// Insert a marker row every 100 ms into `marker` of the cluster on
/// `port`, one transaction each, until `stop`; what each was.
fn mark(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<Marker> {
    let mut markers = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let sent = chrono::Utc::now();
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
            .args([
                "-c",
                "INSERT INTO marker (at) VALUES (clock_timestamp()) RETURNING id, txid_current()",
                "-c",
                "SELECT pg_current_wal_insert_lsn()",
            ])
            .output()
            .unwrap();
        let acked = chrono::Utc::now();
        assert!(out.status.success(), "marker: {}", text(&out));
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = printed.lines();
        let (id, xid) = lines.next().unwrap().split_once('|').unwrap();
        markers.push(Marker {
            id: id.parse().unwrap(),
            xid: xid.parse().unwrap(),
            lsn_after: lines.next().unwrap().trim().to_string(),
            sent,
            acked,
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    markers
}

/// The moment halfway between marker `i`'s ack and marker `i + 1`'s send.
fn between(markers: &[Marker], i: usize) -> chrono::DateTime<chrono::Utc> {
    let (a, b) = (markers[i].acked, markers[i + 1].sent);
    a + (b - a) / 2
}

#[test]
fn restores_to_a_time_a_position_a_transaction_and_the_end_hold_exactly_the_rows_committed_by_then()
{
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    // Its configuration outside the data directory, as on Debian: the
    // restore starts the copy with a minimal one of its own.
    let source = Cluster::create_debian_like(&s, "source", 5443);
    source.create_markers();
    // restore_command runs cairn as the cluster's owner: this build's
    // binary, copied where postgres may run it.
    let cairn = cairn_for_postgres(&s.path(""));
    let config = stream_config(&s, "pitr.toml", 5443, &stream_programs(), "flush-secs = 1");
    let stream = start_stream(&s, &config, &source);
    // Markers all along, through both base backups.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || mark(5443, stop))
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    let base = |s: &Scratch| {
        let b = last_json(&s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]));
        (
            b["snapshot_id"].as_str().unwrap().to_string(),
            chrono::Utc::now(),
        )
    };
    let b1_began = chrono::Utc::now();
    let (b1, b1_done) = base(&s);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let b2_began = chrono::Utc::now();
    let (b2, b2_done) = base(&s);
    std::thread::sleep(std::time::Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let markers = writer.join().unwrap();
    assert!(markers.len() > 40, "{} markers", markers.len());
    assert!(
        markers
            .iter()
            .enumerate()
            .all(|(i, m)| m.id == i as u64 + 1),
        "ids 1..: {markers:?}"
    );
    wait_caught_up("cairn_pg", |q| source.sql("postgres", q));
    stop_stream(stream);
    let short = |id: &str| id[..8].to_string();

    // Restore, start, and read what the copy holds.
    let mut n = 0;
    let mut restore = |args: &[&str]| -> (serde_json::Value, Recovered) {
        n += 1;
        let data = s.path(&format!("restored-{n}"));
        let mut all = vec![
            "--json",
            "restore",
            "--job",
            "pg",
            "--target",
            data.to_str().unwrap(),
            "--start",
        ];
        all.extend(args);
        let out = cairn_copy(&s, &cairn, &config, &all);
        assert!(out.status.success(), "restore {args:?}: {}", text(&out));
        let report = last_json(&String::from_utf8_lossy(&out.stdout));
        let server = Recovered {
            data: data.clone(),
            sockets: PathBuf::from(report["socket_dir"].as_str().unwrap()),
            port: report["port"].as_u64().unwrap() as u16,
        };
        (report, server)
    };
    let rows = |server: &Recovered| {
        server
            .query(
                "postgres",
                "SELECT count(*) || '|' || coalesce(max(id), 0) FROM marker",
            )
            .trim()
            .to_string()
    };
    let check_time =
        |report: &serde_json::Value, i: usize, target: chrono::DateTime<chrono::Utc>| {
            let reached: chrono::DateTime<chrono::Utc> = report["reached_commit_time"]
                .as_str()
                .unwrap_or_else(|| panic!("no reached_commit_time: {report}"))
                .parse()
                .unwrap();
            assert!(
                reached >= markers[i].sent && reached <= target,
                "reached {reached}, marker {} sent {} and the target {target}: {report}",
                markers[i].id,
                markers[i].sent
            );
        };

    // 1. A moment between the two base backups: the first one, replayed
    // to exactly the markers acknowledged by then.
    let i = markers
        .iter()
        .rposition(|m| m.acked < b2_began - chrono::Duration::milliseconds(500))
        .unwrap();
    assert!(
        markers[i].sent > b1_done,
        "no marker between the base backups"
    );
    let target = between(&markers, i);
    let (report, server) = restore(&["--until", &target.to_rfc3339(), "--action", "pause"]);
    assert_eq!(
        report["base_snapshot"].as_str().map(short),
        Some(short(&b1)),
        "{report}"
    );
    assert_eq!(report["state"], "paused", "{report}");
    assert_eq!(
        rows(&server),
        format!("{}|{}", i + 1, i + 1),
        "target {target}: {report}"
    );
    check_time(&report, i, target);
    drop(server);

    // 2. After the second base backup, in PostgreSQL's own notation: the second one.
    let i = markers
        .iter()
        .position(|m| m.sent > b2_done + chrono::Duration::milliseconds(500))
        .unwrap();
    let target = between(&markers, i);
    let (report, server) = restore(&[
        "--until",
        &target.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        "--action",
        "pause",
    ]);
    assert_eq!(
        report["base_snapshot"].as_str().map(short),
        Some(short(&b2)),
        "{report}"
    );
    assert_eq!(
        rows(&server),
        format!("{}|{}", i + 1, i + 1),
        "target {target}: {report}"
    );
    check_time(&report, i, target);
    drop(server);

    // 3. Near the end, where only the partial of the segment being
    // received may hold it; promoted this time.
    let i = markers.len() - 4;
    let target = between(&markers, i);
    let (report, server) = restore(&["--until", &target.to_rfc3339()]);
    assert_eq!(report["state"], "promoted", "{report}");
    assert_eq!(report["new_timeline"], 2, "{report}");
    assert_eq!(
        rows(&server),
        format!("{}|{}", i + 1, i + 1),
        "target {target}: {report}"
    );
    // Promoted: it takes writes.
    server.query("postgres", "INSERT INTO marker (at) VALUES (now())");
    drop(server);

    // 4. A WAL position read after a commit, and 5. a transaction: the
    // rows up to that marker, no more.
    let i = markers.len() / 2;
    let (report, server) = restore(&["--until-lsn", &markers[i].lsn_after, "--action", "pause"]);
    assert_eq!(
        rows(&server),
        format!("{}|{}", i + 1, i + 1),
        "lsn {}: {report}",
        markers[i].lsn_after
    );
    drop(server);
    let i = markers.len() / 3;
    let (report, server) = restore(&[
        "--until-xid",
        &markers[i].xid.to_string(),
        "--action",
        "pause",
    ]);
    assert_eq!(
        report["base_snapshot"].as_str().map(short),
        Some(short(&b1)),
        "the oldest base reaches every transaction: {report}"
    );
    assert_eq!(
        rows(&server),
        format!("{}|{}", i + 1, i + 1),
        "xid {}: {report}",
        markers[i].xid
    );
    drop(server);

    // 6. The end of the archive: every acknowledged marker.
    let (report, server) = restore(&["--until", "latest"]);
    assert_eq!(report["state"], "promoted", "{report}");
    assert_eq!(
        rows(&server),
        format!("{}|{}", markers.len(), markers.len()),
        "{report}"
    );
    assert!(
        report["wal_files_served"].as_u64().unwrap() >= 2,
        "{report}"
    );
    // The last markers were only in the partial of the segment being
    // received: it was served under its full name and replayed.
    assert_eq!(report["wal_to_partial"], true, "{report}");
    drop(server);

    // Refused before anything is written, each saying why: a moment
    // before the first base backup ended, a time without a zone, --start
    // without pg_ctl granted.
    let early = b1_began - chrono::Duration::seconds(1);
    let empty = s.path("never");
    for (args, says) in [
        (
            vec!["--until".to_string(), early.to_rfc3339()],
            "no base backup can recover to time",
        ),
        (
            vec!["--until".into(), "2026-12-07 10:00:00".into()],
            "time zone",
        ),
    ] {
        let mut all = vec![
            "restore",
            "--job",
            "pg",
            "--target",
            empty.to_str().unwrap(),
        ];
        all.extend(args.iter().map(String::as_str));
        let out = s.cairn_config(&config, &all);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(!empty.exists(), "{args:?} made the target");
    }
    let no_pg_ctl = stream_config(
        &s,
        "no-pg-ctl.toml",
        5443,
        r#"["pg_basebackup", "pg_receivewal", "psql", "tar"]"#,
        "flush-secs = 1",
    );
    let out = s.cairn_config(
        &no_pg_ctl,
        &[
            "restore",
            "--job",
            "pg",
            "--until",
            "latest",
            "--start",
            "--target",
            empty.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("does not grant pg_ctl"),
        "{}",
        text(&out)
    );
    assert!(!empty.exists());

    // `wal-fetch --job` reads the archive directly: the bytes restic
    // restores; a name the archive lacks exits 1, as restore_command must.
    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let wal = s.path("wal");
    let files = restic_wal(&s, &windows, &wal);
    let (name, file) = &files[files.len() / 2];
    let fetched = s.path("fetched");
    s.cairn_config_ok(
        &config,
        &["wal-fetch", "--job", "pg", name, fetched.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&fetched).unwrap() == std::fs::read(file).unwrap(),
        "{name} fetched differs from restic's"
    );
    for name in [
        "0000000900000000000000FF",
        "00000009.history",
        "../../etc/passwd",
    ] {
        let out = s.cairn_config(
            &config,
            &["wal-fetch", "--job", "pg", name, fetched.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
    }
    // A destination that is not a regular file is refused and left alone
    // (exit 126: PostgreSQL stops recovery rather than go on without it).
    let fifo = s.path("fifo");
    let out = Command::new("mkfifo").arg(&fifo).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = s.cairn_config(
        &config,
        &["wal-fetch", "--job", "pg", name, fifo.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // Over a socket: none there (the restore ended and removed it) is
    // "missing", exit 1; one nobody answers (the restore was killed) is
    // "cannot tell", 126, so that recovery stops instead of ending early.
    let gone = s.path("gone.sock");
    let out = s.cairn(&[
        "wal-fetch",
        "--socket",
        gone.to_str().unwrap(),
        name,
        fetched.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    drop(std::os::unix::net::UnixListener::bind(&gone).unwrap());
    let out = s.cairn(&[
        "wal-fetch",
        "--socket",
        gone.to_str().unwrap(),
        name,
        fetched.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    // A transaction id past 32 bits would silently mean another one.
    let out = s.cairn_config(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            "--until-xid",
            "4294968033",
            "--target",
            empty.to_str().unwrap(),
        ],
    );
    assert!(text(&out).contains("32-bit"), "{}", text(&out));
    assert!(!empty.exists());
}

/// The pid of the `wal-stream` child whose command line names `config_dir`
/// (the agent's frozen config is under its state directory).
fn stream_child(config_dir: &Path) -> Option<i32> {
    let want = config_dir.to_str().unwrap();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.iter().any(|a| a == "wal-stream") && args.iter().any(|a| a.starts_with(want)))
            .then_some(pid)
    })
}

#[test]
fn the_agent_keeps_a_wal_stream_running_reports_its_lag_and_restarts_it_when_it_is_killed() {
    let s = Scratch::new();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&s, "source", 5444);
    source.create_markers();
    let insert = |n: usize| {
        source.insert_markers(n);
    };
    let cairn = cairn_for_postgres(&s.path(""));
    let jobs = format!(
        "{}wal = {{ flush-secs = 1 }}\n",
        stream_job(5444, &stream_programs())
    );
    let mut agent = crate::agent::start_agent(&s, "", &jobs);
    let wal = |agent: &crate::agent::Agent| {
        let jobs = agent.get("/v1/jobs");
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "pg")
            .unwrap()
            .clone()
    };
    let wait_for =
        |agent: &crate::agent::Agent, what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
            for _ in 0..600 {
                let job = wal(agent);
                if ok(&job) {
                    return job;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            panic!("{what}: {}\n{}", wal(agent), agent.log());
        };
    wait_for(&agent, "the stream runs and stores", &|j| {
        j["wal"]["state"] == "streaming" && j["wal"]["stored_lsn"].is_string()
    });
    insert(10);
    let base = agent.run_job("pg");
    assert_eq!(base["status"], "succeeded", "{base}");
    insert(10);
    let series = |name: &str| format!("{name}{{job=\"pg\",tenant=\"acme\"}}");
    let metrics = agent.metrics();
    assert_eq!(
        crate::agent::metric(&metrics, &series("cairn_wal_stream_up")),
        Some(1.0),
        "{metrics}"
    );
    for name in [
        "cairn_wal_lag_bytes",
        "cairn_wal_lag_seconds",
        "cairn_wal_stored_lsn",
        "cairn_wal_server_lsn",
        "cairn_wal_files_stored_total",
    ] {
        assert!(
            crate::agent::metric(&metrics, &series(name)).is_some(),
            "{name}: {metrics}"
        );
    }
    assert!(
        crate::agent::metric(&metrics, &series("cairn_wal_lag_seconds")).unwrap() < 30.0,
        "{metrics}"
    );

    // The stream's child killed outright: the agent starts another, and
    // the run of the first says how it ended.
    let child = stream_child(&s.path("state")).expect("the agent's wal-stream child");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    insert(10);
    let job = wait_for(&agent, "the stream restarted", &|j| {
        j["wal"]["restarts"].as_u64() >= Some(1)
            && j["wal"]["up"] == true
            && j["wal"]["state"] == "streaming"
    });
    let runs = job["recent_runs"].as_array().unwrap();
    assert!(
        runs.iter()
            .any(|r| r["kind"] == "stream" && r["status"] == "failed"),
        "{job}"
    );
    assert_ne!(stream_child(&s.path("state")), Some(child));
    // The PITR drill: markers into the live cluster, stored by the stream,
    // a scratch copy recovered between two of them holds the earlier only.
    for _ in 0..2 {
        let out = cairn_copy(
            &s,
            &cairn,
            &s.path("agent.toml"),
            &["--json", "drill", "pg"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let record = last_json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(record["passed"], true, "{record}");
        assert_eq!(record["entries"], 2, "{record}");
        assert_eq!(
            record["snapshot_id"], base["summary"]["snapshot_id"],
            "{record}\n{base}"
        );
        let rpo = record["rpo_seconds"].as_f64().unwrap();
        assert!((0.0..30.0).contains(&rpo), "{record}");
    }
    assert_eq!(
        source
            .sql("postgres", "SELECT count(*) FROM cairn_pitr_drill")
            .trim(),
        "4"
    );
    assert!(
        std::fs::read_dir(s.path("state/drills"))
            .unwrap()
            .next()
            .is_none(),
        "the scratch copy was left behind"
    );
    let metrics = agent.metrics();
    assert_eq!(
        crate::agent::metric(&metrics, "cairn_drill_passed{job=\"pg\"}"),
        Some(1.0),
        "{metrics}"
    );
    insert(5);
    wait_caught_up("cairn_pg", |q| source.sql("postgres", q));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // A point-in-time recovery asked for through the API: the base backup
    // and the recovery settings, prepared in the restore root.
    let token = Some(crate::agent::TOKEN);
    let (status, body) = agent.call(
        "POST",
        "/v1/restores",
        token,
        Some(r#"{"job": "pg", "until": "latest", "target": "pitr"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let run = agent.wait_run(body["run"]["id"].as_str().unwrap());
    assert_eq!(run["status"], "succeeded", "{run}\n{}", agent.log());
    let prepared = s.path("state/restores/pitr");
    assert!(prepared.join("PG_VERSION").is_file(), "{run}");
    assert!(prepared.join("recovery.signal").is_file(), "{run}");
    let settings = std::fs::read_to_string(prepared.join("postgresql.auto.conf")).unwrap();
    assert!(settings.contains("restore_command"), "{settings}");
    for (request, says) in [
        (
            r#"{"job": "pg", "until": "latest", "target": "p2", "include": ["/x"]}"#,
            "include",
        ),
        (
            r#"{"job": "pg", "until": "yesterday", "target": "p2"}"#,
            "yesterday",
        ),
        (r#"{"job": "pg", "until": "latest"}"#, "target"),
        (r#"{"job": "pg", "target": "p2", "start": true}"#, "until"),
        (
            r#"{"job": "pg", "until_lsn": "0/1", "until_xid": 5, "target": "p2"}"#,
            "one of",
        ),
    ] {
        let (status, body) = agent.call("POST", "/v1/restores", token, Some(request));
        assert_eq!(status, 422, "{request}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{request}: {body}"
        );
    }
    // SIGTERM: the agent stops its stream after a last flush, and exits 0.
    assert_eq!(agent.terminate(std::time::Duration::from_secs(60)), Some(0));
    assert!(
        stream_child(&s.path("state")).is_none(),
        "the stream outlived the agent"
    );

    // Every row, through the archive the agent's streams wrote.
    let data = s.path("restored");
    let out = cairn_copy(
        &s,
        &cairn,
        &s.path("agent.toml"),
        &[
            "--json",
            "restore",
            "--job",
            "pg",
            "--until",
            "latest",
            "--start",
            "--target",
            data.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json(&String::from_utf8_lossy(&out.stdout));
    let server = Recovered {
        data,
        sockets: PathBuf::from(report["socket_dir"].as_str().unwrap()),
        port: report["port"].as_u64().unwrap() as u16,
    };
    assert_eq!(
        server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim(),
        "35|35",
        "{report}"
    );
}

/// The name of the segment holding position `lsn` (`X/Y`) on timeline 1,
/// 16 MiB segments.
fn segment_of(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let pos = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let segno = pos >> 24;
    format!("00000001{:08X}{:08X}", segno >> 8, segno & 0xFF)
}

#[test]
fn retention_keeps_exactly_the_wal_from_the_oldest_kept_base_backup_which_still_recovers() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&s, "source", 5445);
    source.create_markers();
    let insert_and_switch = |n: usize| {
        source.insert_markers(n);
        source.sql("postgres", "SELECT pg_switch_wal()");
    };
    let cairn = cairn_for_postgres(&s.path(""));
    let config = stream_config(
        &s,
        "pitr.toml",
        5445,
        &stream_programs(),
        "flush-secs = 1, window-secs = 5",
    );
    let stream = start_stream(&s, &config, &source);
    let base = || {
        let b = last_json(&s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]));
        b["snapshot_id"].as_str().unwrap().to_string()
    };
    // Windows close every 5 s (at the next segment): B1 and B2 fall in
    // different windows, and the windows around B2's start close too.
    insert_and_switch(3);
    let b1 = base();
    // (8 s apart, as below: a window closes at the first new segment
    // after 5 s, whenever its first flush came.)
    for _ in 0..2 {
        insert_and_switch(3);
        std::thread::sleep(std::time::Duration::from_secs(8));
    }
    let b2 = base();
    // Each switch closes a window: a window opens at the flush after the
    // previous one closed, and the switches come 8 s apart (> 5 s + a
    // flush).
    for _ in 0..4 {
        insert_and_switch(3);
        std::thread::sleep(std::time::Duration::from_secs(8));
    }
    // The last rows stay in the segment being received (its partial).
    source.insert_markers(2);
    wait_caught_up("cairn_pg", |q| source.sql("postgres", q));
    stop_stream(stream);
    let rows = source.sql("postgres", "SELECT count(*) || '|' || max(id) FROM marker");
    let b2_start = {
        let listed = s.restic_ok(&["snapshots", "--json", "--tag", "pg-basebackup"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        let b = all
            .iter()
            .find(|v| b2.starts_with(v["short_id"].as_str().unwrap()))
            .unwrap();
        b["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|t| t.as_str()?.strip_prefix("pg-start="))
            .unwrap()
            .to_string()
    };
    let first_kept = segment_of(&b2_start);
    let windows_before: Vec<serde_json::Value> =
        serde_json::from_str(&s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"])).unwrap();
    assert!(
        windows_before.len() >= 3,
        "{} windows",
        windows_before.len()
    );

    // A dry run says what it would do, and does nothing.
    let forget = |extra: &[&str]| {
        let mut args = vec!["--tenant", "acme", "--json", "forget", "--keep-last", "1"];
        args.extend(extra);
        let out = s.cairn_config_ok(&config, &args);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("wal").is_some())
            .unwrap_or_else(|| panic!("no WAL report: {out}"))
    };
    let dry = forget(&["--dry-run"]);
    let windows = dry["wal"][0]["windows"].as_array().unwrap().clone();
    assert!(!windows.is_empty(), "{dry}");
    assert!(windows.iter().any(|w| w["action"] == "removed"), "{dry}");
    let after_dry: Vec<serde_json::Value> =
        serde_json::from_str(&s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"])).unwrap();
    assert_eq!(after_dry.len(), windows_before.len());
    // A point-in-time recovery window that begins after B1 ended (and
    // before B2 did) pins B1, whatever keep-last says, and its WAL with it.
    let b1_stop: chrono::DateTime<chrono::Utc> = {
        let listed = s.restic_ok(&["snapshots", "--json", "--tag", "pg-basebackup"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        let b = all
            .iter()
            .find(|v| b1.starts_with(v["short_id"].as_str().unwrap()))
            .unwrap();
        b["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|t| t.as_str()?.strip_prefix("pg-stop-time="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let window = (chrono::Utc::now() - b1_stop).num_seconds() - 2;
    let windowed = stream_config(
        &s,
        "pitr-window.toml",
        5445,
        &stream_programs(),
        &format!("flush-secs = 1, window-secs = 5, pitr-window-secs = {window}"),
    );
    let out = s.cairn_config_ok(
        &windowed,
        &[
            "--tenant",
            "acme",
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--dry-run",
        ],
    );
    assert!(
        out.contains("point-in-time recovery window"),
        "B1 is not pinned: {out}"
    );
    let pinned = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("wal").is_some())
        .unwrap();
    assert_eq!(pinned["wal"][0]["kept_base_backups"], 2, "{pinned}");

    // The policy keeps B2; the WAL step keeps exactly what B2 needs.
    let report = forget(&["--prune"]);
    assert_eq!(report["wal"][0]["kept_base_backups"], 1, "{report}");
    let bases: Vec<serde_json::Value> =
        serde_json::from_str(&s.restic_ok(&["snapshots", "--json", "--tag", "pg-basebackup"]))
            .unwrap();
    assert_eq!(bases.len(), 1);
    assert!(b2.starts_with(bases[0]["short_id"].as_str().unwrap()));
    assert!(!b1.starts_with(bases[0]["short_id"].as_str().unwrap()));
    s.restic_ok(&["check", "--read-data"]);
    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let wal = s.path("wal");
    let files = restic_wal(&s, &windows, &wal);
    assert_eq!(
        files[0].0, first_kept,
        "the archive starts at B2's start segment ({b2_start})"
    );

    // B2, the oldest kept, recovers to the last row.
    let data = s.path("restored");
    let out = cairn_copy(
        &s,
        &cairn,
        &config,
        &[
            "--json",
            "restore",
            "--job",
            "pg",
            "--until",
            "latest",
            "--start",
            "--target",
            data.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = last_json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        b2.starts_with(&r["base_snapshot"].as_str().unwrap()[..8]),
        "{r}"
    );
    let server = Recovered {
        data,
        sockets: PathBuf::from(r["socket_dir"].as_str().unwrap()),
        port: r["port"].as_u64().unwrap() as u16,
    };
    assert_eq!(
        server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim(),
        rows.trim()
    );
    // Restoring to before B2 now fails, naming why, before anything is written.
    let out = s.cairn_config(
        &config,
        &[
            "restore",
            "--job",
            "pg",
            b1.as_str(),
            "--until",
            "latest",
            "--target",
            s.path("never").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn after_a_failover_the_archive_follows_the_promoted_standby_s_timeline_and_restores_across_it() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let primary = Cluster::create(&s, "primary", 5446);
    primary.create_markers();
    // A streaming standby of it, on 5447.
    let standby_data = s.path("standby");
    std::fs::create_dir(&standby_data).unwrap();
    let out = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&standby_data)
        .output()
        .unwrap();
    assert!(out.status.success(), "chown: {}", text(&out));
    as_postgres(
        &pg_bin("pg_basebackup"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "5446",
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-D",
            standby_data.to_str().unwrap(),
        ],
    );
    std::fs::set_permissions(&standby_data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let conf = standby_data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).unwrap();
    settings.push_str(&format!(
        "\nport = 5447\nunix_socket_directories = '{}'\n",
        standby_data.display()
    ));
    std::fs::write(&conf, settings).unwrap();
    let standby = Cluster {
        data: standby_data,
        port: 5447,
        options: None,
    };
    standby.pg_ctl(&["start"]);
    let insert = |c: &Cluster, n: usize| {
        c.insert_markers(n);
    };
    let cairn = cairn_for_postgres(&s.path(""));
    let write_config =
        |port: u16| stream_config(&s, "pitr.toml", port, &stream_programs(), "flush-secs = 1");
    let config = write_config(5446);
    let stream = start_stream(&s, &config, &primary);
    insert(&primary, 5);
    let base = last_json(&s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]));
    let base_id = base["snapshot_id"].as_str().unwrap().to_string();
    insert(&primary, 10);
    let before_failover = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The standby has every commit; so has the archive.
    let target = primary.sql("postgres", "SELECT pg_current_wal_flush_lsn()");
    for _ in 0..300 {
        let replayed = standby.sql(
            "postgres",
            &format!(
                "SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
                target.trim()
            ),
        );
        if replayed.trim() == "t" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_caught_up("cairn_pg", |q| primary.sql("postgres", q));
    stop_stream(stream);
    // Failover: the primary stops, the standby is promoted (timeline 2)
    // and takes writes; the job is pointed at it.
    primary.pg_ctl(&["stop", "-m", "fast"]);
    standby.pg_ctl(&["promote"]);
    for _ in 0..300 {
        if standby.sql("postgres", "SELECT pg_is_in_recovery()").trim() == "f" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    insert(&standby, 7);
    write_config(5447);
    let stream = start_stream(&s, &config, &standby);
    insert(&standby, 3);
    wait_caught_up("cairn_pg", |q| standby.sql("postgres", q));
    stop_stream(stream);
    // (Sequences skip ahead at a promotion: the ids are not 1..=25.)
    let expected = standby.sql("postgres", "SELECT count(*) || '|' || max(id) FROM marker");
    assert!(expected.starts_with("25|"), "{expected}");
    // The archive has both timelines and the history file.
    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let tlis: std::collections::BTreeSet<String> = windows
        .iter()
        .flat_map(|w| w["tags"].as_array().unwrap().iter())
        .filter_map(|t| t.as_str()?.strip_prefix("pg-tli=").map(str::to_string))
        .collect();
    assert_eq!(tlis.len(), 2, "{listed}");

    let restore = |n: &str, args: &[&str]| restore_started(&s, &cairn, &config, n, args);
    // The end of the archive: the base backup on timeline 1, followed
    // across the switch to timeline 2.
    let (r, server) = restore("latest", &["--until", "latest"]);
    assert_eq!(r["timeline"], 2, "{r}");
    assert!(
        base_id.starts_with(&r["base_snapshot"].as_str().unwrap()[..8]),
        "{r}"
    );
    assert_eq!(r["new_timeline"], 3, "{r}");
    assert_eq!(
        server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim(),
        expected.trim(),
        "{r}"
    );
    drop(server);
    // A moment before the failover: the rows of timeline 1 only.
    let (r, server) = restore(
        "before",
        &[
            "--until",
            &before_failover.to_rfc3339(),
            "--action",
            "pause",
        ],
    );
    assert_eq!(
        server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim(),
        "15|15",
        "{r}"
    );
}

/// What `pg_waldump` lists of the WAL in `dir` from segment `first` to `last`:
/// each record's start and total length. Its error, if it ends with one
/// (it always does at the end of the files; the position is what counts).
fn waldump(dir: &Path, first: &str, last: &str) -> (Vec<(u64, u64)>, Option<u64>, String) {
    let out = Command::new(pg_bin("pg_waldump"))
        .arg("-p")
        .arg(dir)
        .args([first, last])
        .output()
        .unwrap();
    let lsn = |s: &str| -> u64 {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let mut records = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((_, after)) = line.split_once("lsn: ") else {
            continue;
        };
        let at = lsn(after.split(',').next().unwrap().trim());
        let (_, len) = line.split_once("len (rec/tot):").unwrap();
        let total: u64 = len
            .split(',')
            .next()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        records.push((at, total));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .split_once("error in WAL record at ")
        .map(|(_, rest)| lsn(rest.split(':').next().unwrap().trim()));
    (records, error, stderr.into_owned())
}

/// The stream's record check, read against real WAL with `pg_waldump` as
/// the independent reader: every segment a busy server wrote passes, with
/// the records pg_waldump lists; a changed byte in a record, or a page
/// zeroed behind its intact header, fails where pg_waldump fails; a
/// partial passes up to where its data ends, and not with a hole.
#[test]
fn the_record_check_passes_real_wal_and_fails_where_pg_waldump_does() {
    use cairn::pitr::lsn::{SegmentSize, WalFile};
    use cairn::pitr::records::{Extent, verify_file};
    let s = Scratch::new();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&s, "walsrc", 5449);
    // A slot keeps every segment from here on out of recycling.
    source.sql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('keep', true)",
    );
    source.sql("postgres", "CREATE TABLE t (id int, pad text)");
    source.sql(
        "postgres",
        "INSERT INTO t SELECT g, repeat(md5(g::text), 1 + g % 20) FROM generate_series(1, 60000) g",
    );
    source.sql("postgres", "CHECKPOINT");
    // Full-page images after the checkpoint, records across pages.
    source.sql("postgres", "UPDATE t SET id = id + 1 WHERE id % 3 = 0");
    source.sql("postgres", "SELECT pg_switch_wal()");
    source.sql(
        "postgres",
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20000) g",
    );
    let current = source
        .sql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .trim()
        .to_string();
    let system: u64 = source
        .sql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .trim()
        .parse()
        .unwrap();
    source.pg_ctl(&["stop", "-m", "fast"]);
    let size = SegmentSize::DEFAULT;
    let wal = s.path("wal");
    std::fs::create_dir(&wal).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(source.data.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 && n.as_str() < current.as_str())
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(source.data.join("pg_wal").join(n), wal.join(n)).unwrap();
    }
    assert!(names.len() >= 4, "{names:?} before {current}");
    let (listed, _, said) = waldump(&wal, &names[0], names.last().unwrap());
    let seg_of = |name: &str| match WalFile::parse(name, size) {
        Some(WalFile::Segment(seg)) => seg,
        other => panic!("{name}: {other:?}"),
    };
    let mut switched = 0;
    let mut busiest = (0, String::new());
    for name in &names {
        let seg = seg_of(name);
        let v = verify_file(&wal.join(name), seg, size, system, Extent::Complete)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let starting = listed
            .iter()
            .filter(|(at, _)| at / size.bytes() == seg.segno)
            .count() as u64;
        // pg_waldump lists the record that runs on into the next segment
        // too; the check reads it whole only with that segment.
        assert!(
            v.records == starting || v.records + 1 == starting,
            "{name}: {} records checked, pg_waldump lists {starting}: {said}",
            v.records
        );
        if v.switched {
            switched += 1;
            assert_eq!(v.records, starting, "{name}");
        } else if v.records > busiest.0 {
            busiest = (v.records, name.clone());
        }
    }
    assert!(switched >= 1, "no segment ended with a switch");
    let name = busiest.1;
    let seg = seg_of(&name);
    let base = size.start(seg.segno).0;
    let clean = std::fs::read(wal.join(&name)).unwrap();
    let damaged = s.path("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let check_damaged = |bytes: &[u8], extent: Extent| {
        std::fs::write(damaged.join(&name), bytes).unwrap();
        verify_file(&damaged.join(&name), seg, size, system, extent)
    };
    // A record in the middle, whole on its page, one byte changed.
    let in_seg: Vec<(u64, u64)> = listed
        .iter()
        .copied()
        .filter(|(at, total)| {
            at / size.bytes() == seg.segno && *total >= 64 && at % 8192 + total < 8192
        })
        .collect();
    let (at, total) = in_seg[in_seg.len() / 2];
    let mut bytes = clean.clone();
    bytes[(at - base + total / 2) as usize] ^= 0x10;
    let err = check_damaged(&bytes, Extent::Complete).unwrap_err();
    let record = cairn::pitr::lsn::Lsn(at).to_string();
    assert!(
        err.contains(&format!("record at {record} fails its CRC")),
        "{err}"
    );
    // (pg_waldump names the last good record, and the bad one in its
    // message.)
    let (_, pg_error, said) = waldump(&damaged, &name, &name);
    assert!(pg_error.is_some_and(|e| e < at), "{said}");
    assert!(
        said.contains(&format!("checksum in record at {record}")),
        "{said}"
    );
    // A page's body zeroed behind its header.
    let mut bytes = clean.clone();
    let page = 600 * 8192;
    bytes[page + 24..page + 8192].fill(0);
    let err = check_damaged(&bytes, Extent::Complete).unwrap_err();
    let (_, pg_error, _) = waldump(&damaged, &name, &name);
    let pg_error =
        pg_error.unwrap_or_else(|| panic!("pg_waldump passed what the check refused: {err}"));
    assert!(pg_error < base + page as u64 + 8192, "{pg_error:X}: {err}");
    // A partial: everything after a record's end is zero.
    let (at, total) = in_seg[in_seg.len() / 3];
    let end = at + total;
    let mut bytes = clean.clone();
    bytes[(end - base) as usize..].fill(0);
    let v = check_damaged(&bytes, Extent::Partial).unwrap();
    // (Its end, or the one before if its last bytes happen to be zero.)
    let reached = v.end.unwrap().0;
    assert!(
        reached == end || (at - 8..=at).contains(&reached),
        "{reached:X}, not {end:X}"
    );
    // ... but with a hole before more data it is damaged.
    bytes[(end - base) as usize + 100..(end - base) as usize + 200].fill(1);
    check_damaged(&bytes, Extent::Partial).unwrap_err();
    let mut holed = clean.clone();
    holed[page + 24..page + 8192].fill(0);
    check_damaged(&holed, Extent::Partial).unwrap_err();
}

/// A restored copy promoted while the original goes on writing, and the
/// job pointed at the copy (the issue's "promote a restored copy, keep
/// writing, restore again to a moment on the new timeline"): the stream
/// sees that the copy's history left timeline 1 before the archive's end
/// of it, keeps timeline 1 as it is, and goes on from the fork on
/// timeline 2. Both restore: the copy's rows by default and to a moment
/// on timeline 2, the original's with `--timeline 1`.
#[test]
fn a_restored_copy_promoted_while_the_original_goes_on_is_archived_from_its_fork() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let original = Cluster::create(&s, "original", 5450);
    original.create_markers();
    let cairn = cairn_for_postgres(&s.path(""));
    let write_config =
        |port: u16| stream_config(&s, "pitr.toml", port, &stream_programs(), "flush-secs = 1");
    let config = write_config(5450);
    let rows = |c: &Cluster| c.sql("postgres", "SELECT count(*) || '|' || max(id) FROM marker");
    let stream = start_stream(&s, &config, &original);
    original.insert_markers(5);
    s.cairn_config_ok(&config, &["--json", "backup", "--job", "pg"]);
    original.insert_markers(10);
    original.sql("postgres", "SELECT pg_switch_wal()");
    original.insert_markers(1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let fork_time = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The original goes on past the fork, into later segments.
    original.insert_markers(10);
    original.sql("postgres", "SELECT pg_switch_wal()");
    original.insert_markers(5);
    let original_rows = rows(&original);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let original_later = chrono::Utc::now();
    // (A commit after the target, for recovery to stop at.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    original.insert_markers(1);
    wait_caught_up("cairn_pg", |q| original.sql("postgres", q));
    stop_stream(stream);
    // A copy restored to the fork moment and promoted (timeline 2).
    let copy_data = s.path("copy");
    let out = cairn_copy(
        &s,
        &cairn,
        &config,
        &[
            "--json",
            "restore",
            "--job",
            "pg",
            "--target",
            copy_data.to_str().unwrap(),
            "--until",
            &fork_time.to_rfc3339(),
            "--start",
            "--port",
            "5451",
            "--action",
            "promote",
        ],
    );
    assert!(out.status.success(), "restore: {}", text(&out));
    let r = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["new_timeline"], 2, "{r}");
    let copy = Cluster {
        data: copy_data,
        port: 5451,
        options: None,
    };
    assert_eq!(rows(&copy).trim(), "16|16", "{r}");
    // The job now points at the copy, which takes writes.
    write_config(5451);
    copy.insert_markers(4);
    let stream = start_stream(&s, &config, &copy);
    copy.insert_markers(3);
    let copy_rows_then = rows(&copy);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let on_copy = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    copy.insert_markers(2);
    let copy_rows = rows(&copy);
    wait_caught_up("cairn_pg", |q| copy.sql("postgres", q));
    let printed = stop_stream(stream);
    assert!(
        printed.contains("left timeline 1 at"),
        "the fork was not reported: {printed}"
    );
    assert!(copy_rows.starts_with("25|"), "{copy_rows}");

    let restore = |n: &str, args: &[&str]| {
        let mut all = vec!["--action", "pause"];
        all.extend(args);
        let (r, server) = restore_started(&s, &cairn, &config, n, &all);
        let got = server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim()
            .to_string();
        (r, got)
    };
    // The end: the copy's timeline, every row it committed.
    let (r, got) = restore("latest", &["--until", "latest"]);
    assert_eq!(r["timeline"], 2, "{r}");
    assert_eq!(got, copy_rows.trim(), "{r}");
    // A moment on timeline 2.
    let (r, got) = restore("on-copy", &["--until", &on_copy.to_rfc3339()]);
    assert_eq!(r["timeline"], 2, "{r}");
    assert_eq!(got, copy_rows_then.trim(), "{r}");
    // The original's WAL past the fork is still there, on timeline 1.
    let (r, got) = restore(
        "original-restored",
        &["--until", &original_later.to_rfc3339(), "--timeline", "1"],
    );
    assert_eq!(r["timeline"], 1, "{r}");
    assert_eq!(got, original_rows.trim(), "{r}");
    // A recovery is of the whole cluster: --include is refused, not
    // ignored.
    let out = cairn_copy(
        &s,
        &cairn,
        &config,
        &[
            "restore",
            "--job",
            "pg",
            "--until",
            "latest",
            "--target",
            s.path("partial").to_str().unwrap(),
            "--include",
            "/base",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--include does not apply"),
        "{}",
        text(&out)
    );
    assert!(!s.path("partial").exists());
    // The job pointed back at the original, an older branch than the
    // archive's: the stream stops and says so, and moves no slot.
    write_config(5450);
    let hold = || {
        original.sql(
            "postgres",
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'cairn_pg_stored'",
        )
    };
    let held = hold();
    original.insert_markers(2);
    let mut back = spawn_stream(&s, &config);
    let mut ended = None;
    for _ in 0..600 {
        if let Some(status) = back.try_wait().unwrap() {
            ended = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if ended.is_none() {
        let _ = back.kill();
    }
    let out = back.wait_with_output().unwrap();
    assert!(
        ended.is_some_and(|e| !e.success()),
        "the stream went on with the older branch: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("cannot continue this archive"),
        "{}",
        text(&out)
    );
    assert_eq!(hold(), held);
}

/// The first segment a new stream would store fails the record check
/// (damaged in the spool): it is a gap at the start of the run, the hold
/// slot does not pass it, and it is fetched again, byte for byte the
/// server's.
#[test]
fn a_damaged_first_segment_is_fetched_again_before_the_hold_slot_passes_it() {
    let s = Scratch::new();
    s.init();
    std::fs::set_permissions(s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&s, "first", 5452);
    source.create_markers();
    let config = stream_config(&s, "pitr.toml", 5452, PROGRAMS_STREAM, "flush-secs = 1");
    let first = source
        .sql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .trim()
        .to_string();
    let stream = start_stream(&s, &config, &source);
    let streamer = rustix::process::Pid::from_raw(stream.id() as i32).unwrap();
    rustix::process::kill_process(streamer, rustix::process::Signal::STOP).unwrap();
    for _ in 0..3 {
        source.insert_markers(3);
        source.sql("postgres", "SELECT pg_switch_wal()");
    }
    let spooled = s.path("state/wal/pg").join(&first);
    for _ in 0..100 {
        if spooled.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    damage_last_record(&spooled, &source);
    rustix::process::kill_process(streamer, rustix::process::Signal::CONT).unwrap();
    source.insert_markers(2);
    wait_caught_up("cairn_pg_stored", |q| source.sql("postgres", q));
    let printed = stop_stream(stream);
    assert!(
        printed.contains("damaged files not stored"),
        "the damaged segment was not seen: {printed}"
    );
    let listed = s.restic_ok(&["snapshots", "--json", "--tag", "cairn-wal"]);
    let windows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let wal = s.path("wal");
    let files = restic_wal(&s, &windows, &wal);
    let (name, path) = &files[0];
    assert_eq!(
        name, &first,
        "the archive starts at the stream's first segment"
    );
    assert!(
        std::fs::read(path).unwrap()
            == std::fs::read(source.data.join("pg_wal").join(&first)).unwrap(),
        "the archived {first} is not the server's"
    );
}
