//! PostgreSQL physical base backups (the base of point-in-time recovery)
//! against the real server on 127.0.0.1:5432. The independent checks are
//! PostgreSQL's own: `pg_verifybackup` on the restored directory, and a
//! server started on it that recovers with WAL copied from the source's
//! `pg_wal` and holds exactly the rows committed before the backup.

use crate::common::{Scratch, last_json, text};
use crate::postgres::psql;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &str = r#"["pg_basebackup", "psql", "tar"]"#;

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
struct Recovered {
    data: PathBuf,
}

impl Drop for Recovered {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .output();
    }
}

/// A physical replication slot holding the source's WAL, dropped when
/// this is (also when the test fails: a forgotten slot fills the disk).
struct Slot(&'static str);

impl Slot {
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
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {db}"));
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
    let sockets = s.path("sockets");
    std::fs::create_dir(&sockets).unwrap();
    Command::new("chown")
        .args(["postgres:postgres", sockets.to_str().unwrap()])
        .status()
        .unwrap();
    let hba = data.join("cairn_test_hba.conf");
    std::fs::write(&hba, "local all all trust\n").unwrap();
    let conf = data.join("cairn_test.conf");
    std::fs::write(
        &conf,
        format!(
            "port = 5439\nlisten_addresses = ''\nunix_socket_directories = '{}'\nhba_file = '{}'\n\
             restore_command = 'cp {source_wal}/%f %p'\nrecovery_target = 'immediate'\n\
             recovery_target_action = 'promote'\narchive_mode = off\nhot_standby = off\n",
            sockets.display(),
            hba.display()
        ),
    )
    .unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    Command::new("chown")
        .args(["-R", "postgres:postgres", data.to_str().unwrap()])
        .status()
        .unwrap();
    let _server = Recovered { data: data.clone() };
    let log = data.join("recovery.log");
    let started = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("pg_ctl"))
        .args([
            "start",
            "-w",
            "-t",
            "120",
            "-D",
            data.to_str().unwrap(),
            "-l",
        ])
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
    let query = |sql: &str| {
        let sock = sockets.to_str().unwrap().to_string();
        as_postgres(
            Path::new("/usr/bin/psql"),
            &["-h", &sock, "-p", "5439", "-X", "-At", "-d", db, "-c", sql],
        )
    };
    // Connections are refused until recovery ends and the copy is promoted.
    let mut last = None;
    for _ in 0..600 {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-h"])
            .arg(&sockets)
            .args([
                "-p",
                "5439",
                "-X",
                "-At",
                "-d",
                db,
                "-c",
                "SELECT pg_is_in_recovery()",
            ])
            .output()
            .unwrap();
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
    assert_eq!(
        table_digest(query, "items"),
        before,
        "rows of the recovered copy"
    );

    drop(_server);
    psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
}
