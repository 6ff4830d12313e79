//! The MariaDB adapter against the real server on 127.0.0.1:3306, checked
//! with the server's own tools: `mariadb-dump` of a database before the
//! backup and after the restore must be equal, and so must `CHECKSUM TABLE`.

use crate::common::{Scratch, random_bytes, stderr, text};
use std::process::{Command, Stdio};

const PROGRAMS: &str = r#"["mariadb-dump", "mariadb"]"#;

/// Run `sql` (from stdin: it may be large) as root; the output's lines.
fn sql(sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
        ])
        .args(["--protocol=TCP", "--batch", "--skip-column-names", "--raw"])
        .arg("--default-character-set=utf8mb4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mariadb (is mariadb-client installed?)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown: String = sql.chars().take(300).collect();
    assert!(out.status.success(), "mariadb {shown}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// An independent record of `db`: its dump (schema, routines, triggers,
/// events, data) and every table's `CHECKSUM TABLE`.
fn record(db: &str) -> (String, String) {
    let out = Command::new("mariadb-dump")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
        ])
        .args(["--protocol=TCP", "--routines", "--events", "--triggers"])
        .args(["--hex-blob", "--skip-dump-date", db])
        .output()
        .unwrap();
    assert!(out.status.success(), "mariadb-dump {db}: {}", text(&out));
    let checksums = sql(&format!("CHECKSUM TABLE {db}.items, {db}.notes EXTENDED"))
        .replace(&format!("{db}."), "");
    (String::from_utf8(out.stdout).unwrap(), checksums)
}

fn make_database(db: &str) {
    let blob = hex(&random_bytes(2 << 20, 21));
    sql(&format!(
        "DROP DATABASE IF EXISTS {db};
         CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
         USE {db};
         CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(200) NOT NULL,
             data LONGBLOB, doc JSON, price DECIMAL(12,3), seen DATETIME(6), flag BIT(3)) ENGINE=InnoDB;
         CREATE TABLE notes (body TEXT) ENGINE=InnoDB;
         CREATE TABLE audit (item INT, what VARCHAR(20));
         CREATE TABLE hidden (a INT, `odd) name` INT INVISIBLE DEFAULT 5);
         INSERT INTO hidden (a, `odd) name`) VALUES (1, 7), (2, 8);
         CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW INSERT INTO audit VALUES (NEW.id, 'insert');
         CREATE PROCEDURE double_it(IN x INT, OUT y INT) SET y = x * 2;
         CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit;
         CREATE VIEW priced AS SELECT name, price FROM items WHERE price IS NOT NULL;
         INSERT INTO items (name, data, doc, price, seen, flag) VALUES
           ('plain', X'00ff10', '{{\"a\": [1, null]}}', 12.5, '2024-02-29 12:34:56.789012', b'101'),
           ('emoji 🦀 ünïcödé ''quoted'' back\\\\slash (paren),', X'{blob}', '[]', -0.001, NULL, b'000'),
           ('nulls', NULL, NULL, NULL, NULL, NULL);
         INSERT INTO items (name) SELECT CONCAT('row ', seq) FROM seq_1_to_3000;
         INSERT INTO notes VALUES ('no key here'), ('no key here'), ('tab\\there');"
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn mariadb_round_trip_keeps_blobs_text_triggers_and_restores_one_database_alone() {
    let (db, other) = ("cairn_t3_shop", "cairn_t3_other");
    make_database(db);
    sql(&format!(
        "DROP DATABASE IF EXISTS {other}; CREATE DATABASE {other}; CREATE TABLE {other}.t (v INT); INSERT INTO {other}.t VALUES (1)"
    ));
    let before = record(db);
    assert!(before.0.contains("TRIGGER"), "the fixture has a trigger");

    let s = Scratch::new();
    let config = s.write_job_config(
        "cairn.toml",
        "db",
        "mariadb",
        &format!("host = \"127.0.0.1\", port = 3306, user = \"root\", databases = [\"{db}\", \"{other}\"]"),
        PROGRAMS,
    );
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    s.cairn_config_ok(&config, &["backup", "--job", "db"]);
    let listing = s.restic_ok(&["ls", "latest"]);
    assert!(listing.contains(&format!("/mariadb/{db}.sql")), "{listing}");

    // Dropped, then restored under its own name: equal to the original.
    sql(&format!("DROP DATABASE {db}; UPDATE {other}.t SET v = 2"));
    s.cairn_config_ok(
        &config,
        &[
            "restore",
            "--job",
            "db",
            "latest",
            "--set",
            &format!("databases=[\"{db}\"]"),
        ],
    );
    let after = record(db);
    assert_eq!(
        after.1, before.1,
        "CHECKSUM TABLE differs after the restore"
    );
    assert!(after.0 == before.0, "the restored database's dump differs");
    assert_eq!(
        sql(&format!("SELECT v FROM {other}.t")).trim(),
        "2",
        "a database that was not selected was touched"
    );
    assert_eq!(
        sql(&format!(
            "SELECT DEFAULT_COLLATION_NAME FROM information_schema.schemata WHERE schema_name = '{db}'"
        ))
        .trim(),
        "utf8mb4_unicode_ci"
    );
    let out = s.cairn_config_ok(&config, &["verify", "--job", "db", "latest"]);
    assert!(out.contains("0 problems"), "{out}");

    // Under another name.
    let copy = "cairn_t3_copy";
    sql(&format!("DROP DATABASE IF EXISTS {copy}"));
    s.cairn_config_ok(
        &config,
        &[
            "restore",
            "--job",
            "db",
            "latest",
            "--set",
            &format!("databases=[\"{db}\"]"),
            "--set",
            &format!("target-database={copy}"),
        ],
    );
    assert_eq!(
        sql(&format!("CHECKSUM TABLE {copy}.items EXTENDED")).replace(copy, db),
        sql(&format!("CHECKSUM TABLE {db}.items EXTENDED"))
    );
    let leftover = sql(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE 'cairn_verify_%'",
    );
    assert_eq!(leftover.trim(), "0", "verify left a scratch database");

    // Failures: no snapshot, the reason named.
    let count = s.snapshot_count();
    let fails = |args: &[&str], needle: &str| {
        let out = s.cairn_config(&config, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: expected {needle:?}: {}",
            text(&out)
        );
        assert_eq!(s.snapshot_count(), count);
    };
    // The job with another user in its config (`--set` may not change as
    // whom a job connects).
    let nobody = s.path("nobody.toml");
    let text_of = std::fs::read_to_string(&config).unwrap();
    assert!(text_of.contains("user = \"root\""), "{text_of}");
    std::fs::write(
        &nobody,
        text_of.replace("user = \"root\"", "user = \"cairn_t3_nobody\""),
    )
    .unwrap();
    let out = s.cairn_config(&nobody, &["backup", "--job", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("Access denied for user 'cairn_t3_nobody'"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), count);
    fails(
        &[
            "backup",
            "--job",
            "db",
            "--set",
            "databases=[\"cairn_t3_missing\"]",
        ],
        "database cairn_t3_missing does not exist",
    );
    let narrow = s.write_job_config(
        "narrow.toml",
        "db",
        "mariadb",
        &format!("databases = [\"{db}\"]"),
        r#"["mariadb"]"#,
    );
    let out = s.cairn_config(&narrow, &["backup", "--job", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("program mariadb-dump: this job does not grant it"),
        "{}",
        text(&out)
    );
    // A cold-backup window: a read lock on one table and a named lock taken
    // by quiesce-sql hold over the dumps and are released, in the same
    // session, by release-sql (a table lock, not FLUSH TABLES WITH READ
    // LOCK, so other tests on this server are not held up).
    let hooked = s.write_job_config(
        "hooked.toml",
        "db",
        "mariadb",
        &format!(
            "databases = [\"{db}\"], quiesce-sql = \"LOCK TABLES {db}.audit READ; DO GET_LOCK('cairn_t3', 0)\", release-sql = \"UNLOCK TABLES; INSERT INTO {db}.notes SELECT IF(RELEASE_LOCK('cairn_t3') = 1, 'held over the dump', 'lock lost')\""
        ),
        PROGRAMS,
    );
    s.cairn_config_ok(&hooked, &["backup", "--job", "db"]);
    assert_eq!(
        sql(&format!(
            "SELECT body FROM {db}.notes WHERE body LIKE '%lock%' OR body LIKE '%held%'"
        ))
        .trim(),
        "held over the dump"
    );
    // quiesce-sql failing: nothing is dumped, no snapshot.
    let count = s.snapshot_count();
    let failing = s.write_job_config(
        "failing-hook.toml",
        "db",
        "mariadb",
        &format!("databases = [\"{db}\"], quiesce-sql = \"SELECT * FROM {db}.no_such_table\""),
        PROGRAMS,
    );
    let out = s.cairn_config(&failing, &["backup", "--job", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("quiesce failed") && stderr(&out).contains("no_such_table"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), count);
    s.restic_ok(&["check", "--read-data"]);

    sql(&format!(
        "DROP DATABASE {db}; DROP DATABASE {other}; DROP DATABASE {copy}"
    ));
}
