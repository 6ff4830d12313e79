//! The three adapters written in other languages than Rust, each built
//! from `adapters/` by its own build script and run against the real
//! service on this machine: sqlite (Python) with a writer writing during
//! the backup, rabbitmq (TypeScript) against the local broker, and command
//! (C) with real programs. Each restore is compared with an independent
//! tool: `sqlite3 .dump`, `rabbitmqctl export_definitions`, `diff` and
//! `cmp`.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Build `adapters/<name>` once per test process into a directory beside
/// the Rust adapters' builds, returning the component's path. A file lock
/// keeps test processes (nextest) from building into it at once.
fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let mut done = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = done.get(name) {
        return p.clone();
    }
    let out = Path::new(cairn::runtime::bundled::FAULTY_PATH)
        .ancestors()
        .nth(3)
        .unwrap()
        .join("language-adapters")
        .join(name);
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adapters")
        .join(name)
        .join("build");
    let run = Command::new(&script)
        .env("OUT", &out)
        .env("CAIRN", cairn_bin())
        .output()
        .expect("run the adapter's build script");
    assert!(
        run.status.success(),
        "{} failed: {}",
        script.display(),
        text(&run)
    );
    let wasm = out.join(format!("{name}.wasm"));
    assert!(
        wasm.is_file(),
        "{} wrote no {}",
        script.display(),
        wasm.display()
    );
    lock.unlock().unwrap();
    done.insert(name.into(), wasm.clone());
    wasm
}

/// `cmd` with the adapter file `wasm`, its `config` and its `grants`.
fn with_adapter<'a>(
    cmd: &[&'a str],
    wasm: &'a str,
    config: &'a str,
    grants: &[&'a str],
) -> Vec<&'a str> {
    let mut args = cmd.to_vec();
    args.extend(["--adapter", wasm, "--adapter-config", config]);
    args.extend(grants);
    args
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

// ---- command (C) ---------------------------------------------------------

#[test]
fn command_adapter_backs_up_a_programs_output_and_restores_it_into_another() {
    let (s, src) = Scratch::with_fixture();
    let wasm = built("command");
    let wasm = wasm.to_str().unwrap();
    let dst = s.path("unpacked");
    std::fs::create_dir(&dst).unwrap();
    let config = serde_json::json!({
        "command": ["tar", "-c", "-C", src.to_str().unwrap(), "."],
        "restore-command": ["tar", "-x", "-C", dst.to_str().unwrap()],
        "path": "/tree.tar",
    })
    .to_string();
    let summary = s.cairn_json(&with_adapter(
        &["backup"],
        wasm,
        &config,
        &["--grant-program", "tar"],
    ));
    assert_eq!(summary["files"], 1, "{summary}");
    // The restore program decides where the bytes go: a --target the
    // adapter would not read is refused, not reported as where they went
    // (red-team finding), and no directory is made for it.
    let ignored = s.path("ignored-target");
    let out = s.cairn(&with_adapter(
        &["restore", "latest", "--target", ignored.to_str().unwrap()],
        wasm,
        &config,
        &["--grant-program", "tar"],
    ));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("leave --target out"), "{}", text(&out));
    assert!(!ignored.exists());
    // A program the job does not grant is refused by the host.
    let out = s.cairn(&with_adapter(&["restore", "latest"], wasm, &config, &[]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("program tar: this job does not grant it"),
        "{}",
        text(&out)
    );
    s.cairn_ok(&with_adapter(
        &["restore", "latest"],
        wasm,
        &config,
        &["--grant-program", "tar"],
    ));
    // diff, not Cairn, says the trees are the same.
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", text(&diff));
    let verify = s.cairn_json(&with_adapter(
        &["verify", "latest"],
        wasm,
        &config,
        &["--grant-program", "tar"],
    ));
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

#[test]
fn command_adapter_pumps_a_large_output_natively_and_restic_reads_it() {
    let s = Scratch::new();
    s.init();
    let big = s.path("big.bin");
    std::fs::write(&big, random_bytes(96 << 20, 7)).unwrap();
    let copy = s.path("copy.bin");
    let wasm = built("command");
    let config = serde_json::json!({
        "command": ["cat", big.to_str().unwrap()],
        "restore-command": ["dd", format!("of={}", copy.display()), "bs=1M", "status=none"],
    })
    .to_string();
    let grants = ["--grant-program", "cat", "--grant-program", "dd"];
    let wasm = wasm.to_str().unwrap();
    let summary = s.cairn_json(&with_adapter(&["backup"], wasm, &config, &grants));
    // 96 MiB went through; the adapter's memory stayed small, because the
    // host pumped the pipe into the repository.
    let memory = summary["adapter_memory_bytes"].as_u64().unwrap();
    assert!(
        memory < 8 << 20,
        "the adapter held {memory} bytes: {summary}"
    );
    s.cairn_ok(&with_adapter(
        &["restore", "latest"],
        wasm,
        &config,
        &grants,
    ));
    run("cmp", &[big.to_str().unwrap(), copy.to_str().unwrap()]);
    // restic, not Cairn, reads the entry back.
    let dumped = s.restic(&["dump", "latest", "/stdout"]);
    assert!(dumped.status.success(), "{}", text(&dumped));
    assert!(
        dumped.stdout == std::fs::read(&big).unwrap(),
        "restic dump differs"
    );
}

#[test]
fn command_adapter_fails_the_backup_when_its_program_fails_and_writes_no_snapshot() {
    let s = Scratch::new();
    s.init();
    let wasm = built("command");
    let config = serde_json::json!({
        "command": ["sh", "-c", "echo half an output; echo disk on fire >&2; exit 3"],
    })
    .to_string();
    let out = s.cairn(&with_adapter(
        &["backup"],
        wasm.to_str().unwrap(),
        &config,
        &["--grant-program", "sh"],
    ));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("sh exited with status 3"), "{t}");
    assert!(t.contains("disk on fire"), "{t}");
    assert!(t.contains("no snapshot was written"), "{t}");
    assert_eq!(s.snapshot_count(), 0);
    // A config the adapter does not know is refused, naming the key.
    let out = s.cairn(&[
        "backup",
        "--adapter",
        wasm.to_str().unwrap(),
        "--adapter-config",
        r#"{"comand": ["ls"]}"#,
    ]);
    assert!(
        text(&out).contains("unknown key \"comand\""),
        "{}",
        text(&out)
    );
}

// ---- sqlite (Python) -----------------------------------------------------

/// The writer: two tables written in one transaction per row, so a
/// consistent copy has as many rows in each; it runs until killed.
const WRITER: &str = r#"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
i = 0
while True:
    i += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO orders(id, item) VALUES (?, ?)", (i, "item %d" % i))
    db.execute("INSERT INTO ledger(id, amount) VALUES (?, ?)", (i, i * 1.5))
    db.execute("COMMIT")
    if i % 200 == 0:
        print(i, flush=True)
        time.sleep(0.01)
"#;

fn sqlite(db: &Path, sql: &str) -> String {
    run("sqlite3", &[db.to_str().unwrap(), sql])
}

#[test]
fn sqlite_adapter_copies_a_database_consistently_while_a_writer_writes() {
    let s = Scratch::new();
    s.init();
    let data = s.path("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("shop.db");
    sqlite(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT NOT NULL); \
         CREATE TABLE ledger(id INTEGER PRIMARY KEY, amount REAL NOT NULL); \
         CREATE INDEX ledger_amount ON ledger(amount); \
         CREATE VIEW totals AS SELECT count(*) AS n, sum(amount) AS total FROM ledger;",
    );
    let mut writer = Command::new("python3")
        .args(["-c", WRITER, db.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get going, so the backup copies a database in motion.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(writer.stdout.take().unwrap()));
    lines.next().unwrap().unwrap();

    let wasm = built("sqlite");
    let wasm = wasm.to_str().unwrap();
    let target = s.path("restored");
    let config = serde_json::json!({ "databases": [db.to_str().unwrap()] }).to_string();
    let summary = s.cairn_json(&with_adapter(
        &["backup", data.to_str().unwrap()],
        wasm,
        &config,
        &["--grant-program", "sqlite3"],
    ));
    assert_eq!(summary["files"], 1, "{summary}");
    let rows_after_backup: u64 = sqlite(&db, "SELECT count(*) FROM orders")
        .trim()
        .parse()
        .unwrap();
    writer.kill().unwrap();
    writer.wait().unwrap();

    s.cairn_ok(&with_adapter(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        wasm,
        &config,
        &["--grant-program", "sqlite3"],
    ));
    let restored = target.join(db.strip_prefix("/").unwrap());
    // Consistent: every transaction whole, none half.
    let counts = sqlite(
        &restored,
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM ledger), (SELECT max(id) FROM orders)",
    );
    let parts: Vec<u64> = counts
        .trim()
        .split('|')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        parts[0], parts[1],
        "a transaction was copied in half: {counts}"
    );
    assert_eq!(parts[0], parts[2], "{counts}");
    // The writer wrote before the copy and went on after it: the database
    // was in use, not quiesced.
    assert!(
        parts[0] >= 200 && parts[0] < rows_after_backup,
        "{counts} vs {rows_after_backup}"
    );
    // sqlite3 .dump of the restored database equals that of the original
    // cut back to the same transaction: schema, index, view and every row.
    let cut = s.path("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    let _ = std::fs::copy(db.with_extension("db-wal"), cut.with_extension("db-wal"));
    sqlite(
        &cut,
        &format!(
            "DELETE FROM orders WHERE id > {n}; DELETE FROM ledger WHERE id > {n};",
            n = parts[0]
        ),
    );
    assert_eq!(sqlite(&restored, ".dump"), sqlite(&cut, ".dump"));
    let verify = s.cairn_json(&with_adapter(
        &["verify", "latest"],
        wasm,
        &config,
        &["--grant-program", "sqlite3"],
    ));
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");

    // A second restore into the same target refuses to overwrite, naming it.
    let out = s.cairn(&with_adapter(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        wasm,
        &config,
        &["--grant-program", "sqlite3"],
    ));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("exists; restore into an empty target"),
        "{}",
        text(&out)
    );
    // A database outside the job's granted paths is refused by the host.
    let elsewhere = serde_json::json!({ "databases": [cut.to_str().unwrap()] }).to_string();
    let out = s.cairn(&with_adapter(
        &["backup", data.to_str().unwrap()],
        wasm,
        &elsewhere,
        &["--grant-program", "sqlite3"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cut.db"), "{}", text(&out));
}

// ---- rabbitmq (TypeScript) -----------------------------------------------

fn rabbitmqctl(args: &[&str]) -> String {
    run("rabbitmqctl", args)
}

/// The definitions that name `vhost` or `user`, each section sorted, so two
/// exports compare equal when those objects are the same.
fn definitions_of(doc: &serde_json::Value, vhost: &str, user: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for section in [
        "users",
        "vhosts",
        "permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
        "parameters",
    ] {
        let mut items: Vec<serde_json::Value> = doc[section]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| {
                i["vhost"] == vhost || i["name"] == vhost || i["name"] == user || i["user"] == user
            })
            .collect();
        items.sort_by_key(|i| i.to_string());
        out.insert(section.into(), serde_json::Value::Array(items));
    }
    serde_json::Value::Object(out)
}

#[test]
fn rabbitmq_adapter_restores_definitions_into_a_broker_that_lost_them() {
    let s = Scratch::new();
    s.init();
    let vhost = format!("cairn-test-{}", std::process::id());
    let user = format!("cairn-user-{}", std::process::id());
    let fixture = serde_json::json!({
        "users": [{"name": user, "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"], "limits": {}}],
        "vhosts": [{"name": vhost, "metadata": {"description": "Cairn's test", "tags": []}, "limits": []}],
        "permissions": [{"user": user, "vhost": vhost, "configure": "^orders", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": vhost, "name": "ttl", "pattern": "^orders\\.", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 1}],
        "exchanges": [{"name": "orders", "vhost": vhost, "type": "topic", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "orders.eu", "vhost": vhost, "durable": true, "auto_delete": false,
                    "arguments": {"x-queue-type": "classic"}},
                   {"name": "orders.audit", "vhost": vhost, "durable": true, "auto_delete": false,
                    "arguments": {"x-max-length": 1000}}],
        "bindings": [{"source": "orders", "vhost": vhost, "destination": "orders.eu",
                      "destination_type": "queue", "routing_key": "eu.#", "arguments": {}},
                     {"source": "orders", "vhost": vhost, "destination": "orders.audit",
                      "destination_type": "queue", "routing_key": "#", "arguments": {}}],
    });
    let file = s.path("fixture.json");
    std::fs::write(&file, fixture.to_string()).unwrap();
    rabbitmqctl(&["-q", "import_definitions", file.to_str().unwrap()]);
    let export = || -> serde_json::Value {
        serde_json::from_str(&rabbitmqctl(&[
            "-q",
            "export_definitions",
            "-",
            "--format",
            "json",
        ]))
        .unwrap()
    };
    let before = definitions_of(&export(), &vhost, &user);
    assert_eq!(before["queues"].as_array().unwrap().len(), 2, "{before:#}");
    assert_eq!(
        before["bindings"].as_array().unwrap().len(),
        2,
        "{before:#}"
    );

    let wasm = built("rabbitmq");
    let config = rabbit_job(&s, &wasm);
    let summary = last_json(&s.cairn_config_ok(&config, &["backup", "--job", "broker", "--json"]));
    assert_eq!(summary["files"], 1, "{summary}");

    // The broker loses them.
    rabbitmqctl(&["-q", "delete_vhost", &vhost]);
    rabbitmqctl(&["-q", "delete_user", &user]);
    assert_eq!(
        definitions_of(&export(), &vhost, &user)["vhosts"],
        serde_json::json!([])
    );

    s.cairn_config_ok(&config, &["restore", "--job", "broker", "latest"]);
    let after = definitions_of(&export(), &vhost, &user);
    rabbitmqctl(&["-q", "delete_vhost", &vhost]);
    rabbitmqctl(&["-q", "delete_user", &user]);
    assert_eq!(after, before);

    let verify =
        last_json(&s.cairn_config_ok(&config, &["verify", "--job", "broker", "latest", "--json"]));
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    // A config key the adapter does not know is refused, naming it.
    let out = s.cairn(&[
        "adapter",
        "check",
        wasm.to_str().unwrap(),
        "--adapter-config",
        r#"{"nodes": "x"}"#,
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown key 'nodes'"), "{}", text(&out));
}

/// A job running the adapter with what rabbitmqctl needs: the program,
/// the local Erlang port mapper and node it talks to, and an Erlang flag
/// that keeps its own node from listening (the confinement refuses
/// `listen`; the CLI has no need to be reached).
fn rabbit_job(s: &Scratch, wasm: &Path) -> PathBuf {
    let password = s.path("password");
    std::fs::write(&password, PASSWORD).unwrap();
    let path = s.path("rabbit.toml");
    std::fs::write(
        &path,
        format!(
            "[tenants.acme]\nrepository = {:?}\npassword-file = {:?}\n\n[jobs.broker]\ntenant = \"acme\"\nadapter = {:?}\nconfig = {{}}\n\
             [jobs.broker.grants]\nprograms = [\"rabbitmqctl\"]\nconnect = [\"127.0.0.1:4369\", \"127.0.0.1:25672\"]\n\
             env = {{ RABBITMQ_CTL_ERL_ARGS = \"-dist_listen false\" }}\n",
            s.repo(),
            password,
            wasm,
        ),
    )
    .unwrap();
    path
}

/// Red-team findings: a database's writer can shape what `.dump` prints
/// (its schema's text, through `PRAGMA writable_schema`), and the sqlite3
/// shell that loads a dump obeys dot-commands and runs any SQL, even in
/// safe mode: `.shell` (refused there), `.trace FILE` (overwrites a file),
/// `.exit 0` (ends the load "successfully" with nothing committed), and the
/// shell's `fsdir` (reads the host's files). The adapter passes only the
/// statements `.dump` writes: verify and restore refuse the entry, name
/// what it holds, and nothing runs.
#[test]
fn sqlite_adapter_never_runs_a_command_a_database_planted_in_its_dump() {
    let s = Scratch::new();
    let secret = s.path("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), b"do not copy").unwrap();
    let victim = s.path("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let pwned = s.path("PWNED");
    let plants = [
        (
            format!("\n.shell touch {}\nSELECT 1", pwned.display()),
            ".shell",
        ),
        (format!("\n.trace {}\nSELECT 1", victim.display()), ".trace"),
        ("\n.exit 0\n".to_string(), ".exit"),
        // Third red team: lines the shell, not SQL, reads as a statement's
        // end, and a `#` comment line that hides a quote from a checker.
        ("\n/\n.exit 0\n".to_string(), "end of a statement (/)"),
        (
            "\n#''\n.exit 0\n'' INSERT INTO t VALUES(9)".to_string(),
            "a shell comment line",
        ),
        (
            format!(
                " CREATE TABLE stolen AS SELECT name FROM fsdir(''{}'')",
                secret.display()
            ),
            "CREATE TABLE ... AS SELECT",
        ),
    ];
    let wasm = built("sqlite");
    let wasm = wasm.to_str().unwrap();
    for (n, (plant, named)) in plants.iter().enumerate() {
        let s = Scratch::new();
        s.init();
        let data = s.path("data");
        std::fs::create_dir(&data).unwrap();
        let db = data.join("planted.db");
        sqlite(&db, "CREATE TABLE t(a); INSERT INTO t VALUES (1);");
        sqlite(
            &db,
            &format!(
                "PRAGMA writable_schema=ON; UPDATE sqlite_schema SET sql='CREATE TABLE t(a);{plant}' WHERE name='t';"
            ),
        );
        let config = serde_json::json!({ "databases": [db.to_str().unwrap()] }).to_string();
        s.cairn_ok(&with_adapter(
            &["backup", data.to_str().unwrap()],
            wasm,
            &config,
            &["--grant-program", "sqlite3"],
        ));
        let out = s.cairn(&with_adapter(
            &["verify", "latest"],
            wasm,
            &config,
            &["--grant-program", "sqlite3"],
        ));
        assert!(!out.status.success(), "plant {n}: {}", text(&out));
        assert!(
            text(&out).contains("which Cairn does not load"),
            "plant {n}: {}",
            text(&out)
        );
        assert!(text(&out).contains(named), "plant {n}: {}", text(&out));
        let target = s.path("restored");
        let out = s.cairn(&with_adapter(
            &["restore", "latest", "--target", target.to_str().unwrap()],
            wasm,
            &config,
            &["--grant-program", "sqlite3"],
        ));
        assert!(!out.status.success(), "plant {n}: {}", text(&out));
        assert!(
            text(&out).contains("does not load"),
            "plant {n}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("remove it before restoring again"),
            "plant {n}: {}",
            text(&out)
        );
        assert!(!pwned.exists(), "plant {n}: the planted command ran");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched", "plant {n}");
        let restored = target.join(db.strip_prefix("/").unwrap());
        if restored.exists() {
            assert_eq!(
                sqlite(
                    &restored,
                    "SELECT count(*) FROM sqlite_schema WHERE name='stolen'"
                )
                .trim(),
                "0"
            );
        }
    }
}
