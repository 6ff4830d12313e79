//! The PostgreSQL adapter against the real server on 127.0.0.1:5432,
//! checked with the server's own tools: a plain `pg_dump` of the database
//! before the backup and after the restore must be equal, and the roles
//! come back as `pg_dumpall --globals-only` printed them.
//!
//! Each test uses databases and roles of its own (`cairn_t<N>_...`), so
//! the tests can run at once.

use crate::common::{Scratch, random_bytes, stderr, text};
use std::path::PathBuf;
use std::process::{Command, Stdio};

const PROGRAMS: &str = r#"["pg_dump", "pg_dumpall", "pg_restore", "psql"]"#;

/// Held while a test runs verify or looks for scratch databases verify
/// left behind: a scratch database of another test's verify in progress
/// is not a leftover.
fn verify_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `sql` (from stdin: it may be large) on `db` as postgres, in one
/// transaction; its unaligned output.
pub(crate) fn psql(db: &str, sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-At"])
        .args(["-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql (is postgresql-client installed?)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown: String = sql.chars().take(300).collect();
    assert!(out.status.success(), "psql {shown}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A plain-text `pg_dump` of `db`: the independent record to compare.
fn plain_dump(db: &str) -> String {
    let out = Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--format=plain",
            "-d",
            db,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump {db}: {}", text(&out));
    // `\restrict KEY` lines carry a random key of each run.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two plain dumps are equal; otherwise the first line that differs, cut short.
fn assert_same_dump(expected: &str, actual: &str, what: &str) {
    if expected == actual {
        return;
    }
    let short = |l: Option<&&str>| l.map_or(String::new(), |l| l.chars().take(200).collect());
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let first = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    panic!(
        "{what}: dumps differ at line {first} ({} lines against {}):\n- {}\n+ {}",
        e.len(),
        a.len(),
        short(e.get(first)),
        short(a.get(first)),
    );
}

/// The lines of `pg_dumpall --globals-only` that mention `role`.
fn role_lines(role: &str) -> Vec<String> {
    let out = Command::new("pg_dumpall")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--globals-only"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dumpall: {}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(role))
        .map(str::to_string)
        .collect()
}

fn drop_database(db: &str) {
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

/// A config file `file` with tenant `acme` and job `pg` backing up
/// `databases` with `extra` added to the job's adapter config.
fn write_config(
    s: &Scratch,
    file: &str,
    databases: &[&str],
    extra: &str,
    programs: &str,
) -> PathBuf {
    let dbs: Vec<String> = databases.iter().map(|d| format!("{d:?}")).collect();
    let config = format!(
        "host = \"127.0.0.1\", port = 5432, user = \"postgres\", databases = [{}]{extra}",
        dbs.join(", ")
    );
    s.write_job_config(file, "pg", "postgres", &config, programs)
}

/// A database with the awkward parts: several schemas, bytea, jsonb,
/// arrays, utf-8 text, timestamps, a sequence, a view, a function, a large
/// object, and a table owned by a role of its own.
fn make_database(db: &str, role: &str) {
    drop_database(db);
    psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
    psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 7"),
    );
    psql("postgres", &format!("CREATE DATABASE {db}"));
    let big = hex(&random_bytes(3 << 20, 11));
    let sql = format!(
        "CREATE SCHEMA tenant_a;
         CREATE SCHEMA tenant_b AUTHORIZATION {role};
         CREATE SEQUENCE public.ticket START 40;
         CREATE TABLE public.items (
             id bigint PRIMARY KEY DEFAULT nextval('public.ticket'),
             name text NOT NULL,
             blob bytea,
             doc jsonb,
             tags text[],
             price numeric(12,3),
             ratio double precision,
             seen timestamptz,
             span interval);
         INSERT INTO public.items (name, blob, doc, tags, price, ratio, seen, span) VALUES
             ('plain', '\\x00ff10', '{{\"a\": [1, 2, {{\"b\": null}}]}}', ARRAY['x', 'y,z', NULL], 12.5, 0.1, '2024-02-29 12:34:56.789+02', '1 day 02:03:04'),
             ('ünïcödé ✓ \"quoted\" tab\tnew
line', '\\x{big}', '[]', '{{}}', -0.001, 'NaN', 'infinity', '-3 months'),
             ('null row', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         INSERT INTO public.items (name) SELECT 'row ' || g FROM generate_series(1, 5000) g;
         CREATE TABLE tenant_a.orders (id serial PRIMARY KEY, item bigint REFERENCES public.items(id), qty int CHECK (qty > 0));
         INSERT INTO tenant_a.orders (item, qty) SELECT id, 1 + id % 5 FROM public.items WHERE id < 200;
         CREATE TABLE tenant_b.notes (id int PRIMARY KEY, body text);
         ALTER TABLE tenant_b.notes OWNER TO {role};
         INSERT INTO tenant_b.notes VALUES (1, 'b one'), (2, 'b two');
         CREATE VIEW tenant_a.totals AS SELECT i.name, sum(o.qty) AS qty FROM tenant_a.orders o JOIN public.items i ON i.id = o.item GROUP BY i.name;
         CREATE FUNCTION public.double_it(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
         GRANT SELECT ON public.items TO {role};
         SELECT lo_from_bytea(0, '\\xdeadbeef'::bytea);"
    );
    psql(db, &sql);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn postgres_round_trip_with_awkward_types_roles_and_one_schema_restored_alone() {
    let (db, role) = ("cairn_t1_shop", "cairn_t1_owner");
    make_database(db, role);
    let before = plain_dump(db);
    let roles_before = role_lines(role);
    assert!(!roles_before.is_empty());
    assert!(before.contains("lo_open"), "the fixture has a large object");

    let s = Scratch::new();
    let config = write_config(&s, "cairn.toml", &[db], "", PROGRAMS);
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    let out = s.cairn_config_ok(&config, &["backup", "--job", "pg", "--json"]);
    let summary = crate::common::last_json(&out);
    assert_eq!(
        summary["files"], 3,
        "globals, one dump and its settings: {summary}"
    );
    // restic reads it too: the dump is an ordinary file in the snapshot.
    let listing = s.restic_ok(&["ls", "latest"]);
    assert!(
        listing.contains(&format!("/postgres/{db}.dump")),
        "{listing}"
    );

    // Drop everything, then restore into the job's server under the
    // original names: database and role come back.
    drop_database(db);
    psql("postgres", &format!("DROP ROLE {role}"));
    // `restore --job pg latest` with `--set` for each of `sets`.
    let restore = |sets: &[&str]| {
        let mut args = vec!["restore", "--job", "pg", "latest"];
        for set in sets {
            args.extend(["--set", set]);
        }
        s.cairn_config(&config, &args)
    };
    let restored = |sets: &[&str]| {
        let out = restore(sets);
        assert!(out.status.success(), "restore {sets:?}: {}", text(&out));
    };
    restored(&[]);
    assert_same_dump(&before, &plain_dump(db), "the restored database");
    assert_eq!(role_lines(role), roles_before, "the role differs");
    let out = {
        let _verifying = verify_lock();
        s.cairn_config_ok(&config, &["verify", "--job", "pg", "latest"])
    };
    assert!(out.contains("0 problems"), "{out}");

    // One tenant's schema alone: tenant_a goes back to the snapshot,
    // tenant_b keeps what changed since.
    psql(
        db,
        "DELETE FROM tenant_a.orders WHERE id > 10; UPDATE tenant_b.notes SET body = 'b changed' WHERE id = 1",
    );
    restored(&["schema=tenant_a"]);
    assert_eq!(
        psql(db, "SELECT count(*) FROM tenant_a.orders").trim(),
        "160"
    );
    assert_eq!(
        psql(db, "SELECT body FROM tenant_b.notes WHERE id = 1").trim(),
        "b changed",
        "another schema was touched"
    );

    // One table's rows alone: tenant_b.notes gets the snapshot's rows back
    // and keeps its primary key; another table keeps its change.
    psql(
        db,
        "DELETE FROM tenant_b.notes WHERE id = 2; INSERT INTO tenant_b.notes VALUES (3, 'new'); DELETE FROM tenant_a.orders WHERE id = 10",
    );
    let notes = || {
        psql(
            db,
            "SELECT string_agg(id || ':' || body, ',' ORDER BY id) FROM tenant_b.notes",
        )
    };
    let table_restore = |table: &str| restore(&["schema=tenant_b", &format!("table={table}")]);
    let out = table_restore("notes");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes().trim(), "1:b one,2:b two");
    assert_eq!(
        psql(
            db,
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'tenant_b' AND tablename = 'notes'"
        )
        .trim(),
        "notes_pkey",
        "the table lost its index"
    );
    assert_eq!(
        psql(db, "SELECT count(*) FROM tenant_a.orders").trim(),
        "159"
    );
    // A table that others reference cannot be emptied: the restore fails,
    // changing nothing; a table the snapshot lacks is named.
    let items = psql(db, "SELECT count(*), max(id) FROM public.items");
    let out = restore(&["table=items"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot truncate a table referenced in a foreign key constraint"),
        "{}",
        text(&out)
    );
    assert_eq!(
        psql(db, "SELECT count(*), max(id) FROM public.items"),
        items
    );
    let out = table_restore("nosuch");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("table nosuch is not in the snapshot's dump"),
        "{}",
        text(&out)
    );
    assert_eq!(notes().trim(), "1:b one,2:b two");

    // Under another name, with --set: the copy equals the original.
    let copy = "cairn_t1_copy";
    drop_database(copy);
    restored(&[&format!("target-database={copy}")]);
    assert_eq!(
        psql(copy, "SELECT count(*), sum(length(blob)) FROM public.items"),
        psql(db, "SELECT count(*), sum(length(blob)) FROM public.items")
    );
    drop_database(copy);

    // Damage in the repository: the restore's pg_restore is killed before
    // it sees the end of its input, so the database stays as it was; verify
    // and restore both fail saying so.
    psql(
        db,
        "UPDATE tenant_b.notes SET body = 'b changed' WHERE id = 1",
    );
    let state = plain_dump(db);
    let biggest = crate::common::packs(&s.repo())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&biggest, bytes).unwrap();
    let out = restore(&["globals=false"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("damaged"), "{}", text(&out));
    assert_same_dump(
        &state,
        &plain_dump(db),
        "a failed restore changed the database",
    );
    let _verifying = verify_lock();
    let out = s.cairn_config(&config, &["verify", "--job", "pg", "latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let leftover = psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'cairn_verify_%'",
    );
    assert_eq!(leftover.trim(), "0", "verify left a scratch database");

    drop_database(db);
    psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
}

/// Hold an exclusive lock on `table` of `db` until the returned child is
/// killed, so a pg_dump of `db` waits, mid-dump, for as long as we like.
fn hold_lock(db: &str, table: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-d", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 1;"
    )
    .unwrap();
    stdin.flush().unwrap();
    // The lock is held once the server shows it granted.
    for _ in 0..100 {
        let held = psql(
            db,
            &format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = '{db}' AND l.mode = 'AccessExclusiveLock' AND l.granted AND l.relation = '{table}'::regclass::oid"
            ),
        );
        if held.trim() != "0" {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the lock on {table} was never granted");
}

/// Start `backup --job pg` of config file `config` in the background.
fn spawn_backup(s: &Scratch, config: &std::path::Path) -> std::process::Child {
    s.cairn_cmd(&[
        "--config",
        config.to_str().unwrap(),
        "backup",
        "--job",
        "pg",
    ])
    .env_remove("CAIRN_REPOSITORY")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Wait until a pg_dump of `db` is blocked on the lock; its backend's pid.
fn wait_for_blocked_dump(db: &str) -> String {
    for _ in 0..300 {
        let pid = psql(
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'pg_dump' AND wait_event_type = 'Lock'"
            ),
        );
        if !pid.trim().is_empty() {
            return pid.trim().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no pg_dump of {db} got blocked");
}

/// The pid of the pg_dump client process dumping `db`.
fn pg_dump_process(db: &str) -> i32 {
    let wanted = format!("--dbname=dbname='{db}'");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_dump = args
            .first()
            .is_some_and(|a| a.ends_with(b"/pg_dump") || *a == b"pg_dump");
        if is_dump && args.contains(&wanted.as_bytes()) {
            return pid;
        }
    }
    panic!("no pg_dump process for {db}");
}

#[test]
fn postgres_dump_failures_fail_the_backup_loudly_with_no_snapshot() {
    let db = "cairn_t2_fail";
    drop_database(db);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let s = Scratch::new();
    let config = write_config(&s, "cairn.toml", &[db], "", PROGRAMS);
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);

    let expect_failure = |args: &[&str], needle: &str| {
        let out = s.cairn_config(&config, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in: {}",
            text(&out)
        );
        assert!(err.contains("no snapshot was written"), "{}", text(&out));
        assert_eq!(s.snapshot_count(), 0, "a failed dump left a snapshot");
    };
    // The same job with one key of its config changed (`--set` may not
    // change where a job connects or as whom).
    let variant = |file: &str, from: &str, to: &str| -> PathBuf {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(from), "{from} not in the config");
        let path = s.path(file);
        std::fs::write(&path, text.replace(from, to)).unwrap();
        path
    };
    // Authentication: a role that does not exist.
    let nobody = variant(
        "nobody.toml",
        "user = \"postgres\"",
        "user = \"cairn_t2_nobody\"",
    );
    let expect_failure_with = |config: &PathBuf, needle: &str| {
        let out = s.cairn_config(config, &["backup", "--job", "pg"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "expected {needle:?} in: {}",
            text(&out)
        );
        assert!(err.contains("no snapshot was written"), "{}", text(&out));
        assert_eq!(s.snapshot_count(), 0, "a failed dump left a snapshot");
    };
    expect_failure_with(&nobody, "role \"cairn_t2_nobody\" does not exist");
    // A database that does not exist: pg_dump's exit code and stderr.
    expect_failure(
        &[
            "backup",
            "--job",
            "pg",
            "--set",
            "databases=[\"cairn_t2_missing\"]",
        ],
        "pg_dump of database cairn_t2_missing exited with code 1",
    );
    // Nothing listens there (granted, so the connection is tried).
    let port9 = variant("port9.toml", "port = 5432", "port = 9");
    let port9_text = std::fs::read_to_string(&port9)
        .unwrap()
        .replace("127.0.0.1:5432", "127.0.0.1:9");
    std::fs::write(&port9, port9_text).unwrap();
    expect_failure_with(&port9, "Connection refused");

    // A program the job does not grant.
    let narrow = write_config(&s, "narrow.toml", &[db], "", r#"["psql", "pg_dumpall"]"#);
    let out = s.cairn_config(&narrow, &["backup", "--job", "pg"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("program pg_dump: this job does not grant it"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);

    // The server ends pg_dump's session mid-dump.
    let lock = hold_lock(db, "t");
    let backup = spawn_backup(&s, &config);
    let backend = wait_for_blocked_dump(db);
    psql(
        "postgres",
        &format!("SELECT pg_terminate_backend({backend})"),
    );
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("pg_dump of database cairn_t2_fail exited with code 1"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("terminating connection"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);

    // pg_dump killed by a signal.
    let backup = spawn_backup(&s, &config);
    wait_for_blocked_dump(db);
    let pid = pg_dump_process(db);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("was killed by signal 9"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);

    // The quiesce session dies while the dump runs (its advisory lock goes
    // with it): the dump itself succeeds, but the backup must not pass as
    // taken inside the window.
    let windowed = write_config(
        &s,
        "windowed.toml",
        &[db],
        r#", quiesce-sql = "SELECT pg_advisory_lock(4243)""#,
        PROGRAMS,
    );
    // A killed pg_dump's backend may still wait on the lock: count them.
    let blocked = || {
        psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'pg_dump' AND wait_event_type = 'Lock'"
            ),
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    let blocked_before = blocked();
    let backup = spawn_backup(&s, &windowed);
    let mut hook = String::new();
    for _ in 0..300 {
        hook = psql(
            "postgres",
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4243 AND granted",
        );
        if !hook.trim().is_empty() && blocked() > blocked_before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!hook.trim().is_empty(), "no quiesce session found");
    assert!(blocked() > blocked_before, "the dump never started");
    psql(
        "postgres",
        &format!("SELECT pg_terminate_backend({})", hook.trim()),
    );
    let mut lock = lock;
    let _ = lock.kill();
    let _ = lock.wait();
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("release failed after the backup"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);

    // Quiesce and release hooks: release runs after a failed dump too, in
    // the session quiesce ran in (the advisory lock it took is still held
    // there), and the dump sees the quiesced state but not the release.
    psql(db, "CREATE TABLE hooks (what text)");
    let hooked = write_config(
        &s,
        "hooked.toml",
        &[db],
        r#", quiesce-sql = "SELECT pg_advisory_lock(4242); INSERT INTO hooks VALUES ('quiesced')", release-sql = "INSERT INTO hooks SELECT CASE WHEN pg_advisory_unlock(4242) THEN 'released' ELSE 'lock lost' END", hook-database = "cairn_t2_fail""#,
        PROGRAMS,
    );
    let out = s.cairn_config(
        &hooked,
        &[
            "backup",
            "--job",
            "pg",
            "--set",
            "databases=[\"cairn_t2_missing\"]",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let hooks = || psql(db, "SELECT string_agg(what, ',' ORDER BY what) FROM hooks");
    assert_eq!(
        hooks().trim(),
        "quiesced,released",
        "release must follow a failed dump"
    );

    // With the lock gone the job works, and the repository is sound.
    s.cairn_config_ok(&hooked, &["backup", "--job", "pg"]);
    assert_eq!(s.snapshot_count(), 1);
    assert_eq!(hooks().trim(), "quiesced,quiesced,released,released");
    let copy = "cairn_t2_copy";
    drop_database(copy);
    s.cairn_config_ok(
        &hooked,
        &[
            "restore",
            "--job",
            "pg",
            "latest",
            "--set",
            &format!("target-database={copy}"),
        ],
    );
    assert_eq!(
        psql(
            copy,
            "SELECT string_agg(what, ',' ORDER BY what) FROM hooks"
        )
        .trim(),
        "quiesced,quiesced,released",
        "the dump ran inside the quiesce window"
    );
    drop_database(copy);
    s.restic_ok(&["check", "--read-data"]);
    drop_database(db);
}

/// Where `program` is on this machine's PATH.
fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(path.starts_with('/'), "{program} is not on PATH");
    path
}

#[test]
fn postgres_verify_reports_rows_sequences_and_large_objects_a_restore_lost() {
    let (db, role) = ("cairn_t3_shop", "cairn_t3_owner");
    make_database(db, role);
    // pg_dump prints timestamps in the session's time zone, here the
    // database's own; verify must print the scratch copy the same way.
    psql(
        "postgres",
        &format!("ALTER DATABASE {db} SET timezone = 'Asia/Tokyo'"),
    );
    let s = Scratch::new();
    let config = write_config(&s, "cairn.toml", &[db], "", PROGRAMS);
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    s.cairn_config_ok(&config, &["backup", "--job", "pg"]);
    let _verifying = verify_lock();
    let out = s.cairn_config_ok(&config, &["verify", "--job", "pg", "latest"]);
    assert!(out.contains(" 0 problems"), "{out}");

    // A restore drill of the job: its verify restores into a scratch
    // database, compares and drops it; the result is recorded.
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!("\n[agent]\nstate-dir = {:?}\n", s.path("state")));
    std::fs::write(&config, toml).unwrap();
    let out = s.cairn_config_ok(&config, &["--json", "drill", "pg"]);
    let record = crate::common::last_json(&out);
    assert_eq!(record["passed"], true, "{record}");
    assert!(record["entries"].as_u64().unwrap() > 0, "{record}");
    let recorded = std::fs::read_to_string(s.path("state/drills.jsonl")).unwrap();
    assert_eq!(recorded.lines().count(), 1);

    // A pg_restore that, after restoring into the scratch database, loses a
    // row, changes another, moves the sequence and alters the large object:
    // what a faulty restore tool or a lossy server would do.
    let bin = s.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("pg_restore");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
{pg_restore} "$@" || exit $?
for arg in "$@"; do
  case "$arg" in
    "--dbname=dbname='cairn_verify_"*)
      scratch=${{arg#--dbname=dbname=\'}}; scratch=${{scratch%\'}}
      {psql} -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 -d "$scratch" -c "
        DELETE FROM tenant_a.orders WHERE id = (SELECT min(id) FROM tenant_a.orders);
        UPDATE tenant_b.notes SET body = 'tampered' WHERE id = 2;
        SELECT setval('public.ticket', 999999);
        SELECT lo_put(oid, 0, '\x00') FROM pg_largeobject_metadata;" >/dev/null || exit 1;;
  esac
done
"#,
            pg_restore = which("pg_restore"),
            psql = which("psql"),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = s
        .cairn_cmd(&[
            "--config",
            config.to_str().unwrap(),
            "verify",
            "--job",
            "pg",
            "latest",
        ])
        .env_remove("CAIRN_REPOSITORY")
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    for expected in [
        "table tenant_a.orders (id, item, qty): 160 rows in the snapshot, 159 restored",
        "table tenant_b.notes (id, body): the restored content differs",
        "sequence 'public.ticket': the restored content differs",
        "large object",
        "4 problems",
    ] {
        assert!(said.contains(expected), "{expected:?} not reported: {said}");
    }
    assert!(
        !said.contains("table public.items"),
        "an intact table reported: {said}"
    );
    let leftover = psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'cairn_verify_%'",
    );
    assert_eq!(leftover.trim(), "0", "verify left a scratch database");

    // A LATIN1 database: the scratch copy is UTF8, and its text must still
    // compare equal to the dump's LATIN1 bytes.
    let latin1 = "cairn_t3_latin1";
    drop_database(latin1);
    psql(
        "postgres",
        &format!(
            "CREATE DATABASE {latin1} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ),
    );
    psql(
        latin1,
        "CREATE TABLE t (v text, b bytea); INSERT INTO t VALUES ('café crème', '\\x00ff'), ('naïve', NULL)",
    );
    let only = format!("databases=[\"{latin1}\"]");
    s.cairn_config_ok(&config, &["backup", "--job", "pg", "--set", &only]);
    let out = s.cairn_config_ok(
        &config,
        &["verify", "--job", "pg", "latest", "--set", &only],
    );
    assert!(out.contains(" 0 problems"), "{out}");
    drop_database(latin1);
    drop_database(db);
    psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
}
