//! Cairn's PostgreSQL adapter. It runs the PostgreSQL client programs its
//! job grants (`pg_dump`, `pg_dumpall`, `pg_restore`, `psql`) and lets the
//! host pump their bytes: no dump passes through the adapter's memory on
//! backup or restore.
//!
//! A snapshot holds, under `/postgres`:
//! - `globals.sql`: roles and tablespaces (`pg_dumpall --globals-only`);
//! - `<database>.dump` for each database: `pg_dump --format=custom
//!   --compress=0`, uncompressed so that repeated backups deduplicate (the
//!   host compresses what is new). A `/` or `%` in a name is written `%2F`,
//!   `%25`;
//! - `<database>.settings`: the session settings the dump printed values
//!   with (time zone, `bytea_output`, `lc_monetary`) and its encoding, for
//!   verify.
//!
//! Restore feeds each dump to `pg_restore` in one transaction (or with
//! `--create` for a database that does not exist yet under its own name),
//! optionally under another name, or only one schema or table. Verify
//! restores each dump into a scratch database and compares every table's
//! row count and content checksum, every sequence's value and every large
//! object's content with the dump's own data, then drops the scratch
//! database.
//!
//! With `mode = "physical"` the adapter takes the whole cluster with
//! `pg_basebackup` instead, the base of point-in-time recovery: see
//! [`physical`].

mod physical;

use cairn_sdk::check::{RowSum, StreamSum};
use cairn_sdk::hooks::HeldSession;
use cairn_sdk::process::{Child, Command, Stdio};
use cairn_sdk::{
    Adapter, BackupSummary, Error, Info, Metadata, RestoreSummary, VerifyReport, archive, log,
    snapshot,
};
use std::collections::BTreeMap;

struct Postgres;

/// Where the server is and what to back up or restore.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// `logical` (the default): dumps of databases, restorable one by one
    /// into any server. `physical`: the whole cluster's files, restorable
    /// into an empty data directory and recoverable to a point in time
    /// with the cluster's WAL.
    #[serde(default)]
    mode: Mode,
    /// Physical restore: the empty directory the cluster goes into (set by
    /// `cairn restore --target`).
    #[serde(default)]
    target: Option<String>,
    /// Physical backup: ask for an immediate checkpoint (`true`, the
    /// default: the copy starts at once, at the cost of a burst of
    /// writes) or let the server spread it over its
    /// `checkpoint_completion_target` (`false`: gentler, but the backup
    /// may wait minutes to start).
    #[serde(default)]
    fast_checkpoint: Option<bool>,
    /// Server host name or address (the job must grant the programs; they
    /// connect by themselves).
    #[serde(default = "default_host")]
    host: String,
    /// Server port.
    #[serde(default = "default_port")]
    port: u16,
    /// The role to connect as.
    #[serde(default = "default_user")]
    user: String,
    /// The job's secret holding the password, passed to the programs as
    /// `PGPASSWORD` (the adapter never sees it). Unset: no password.
    #[serde(default)]
    password_secret: Option<String>,
    /// Databases to back up (or restore, or verify); empty: every database
    /// that accepts connections, templates left out.
    #[serde(default)]
    databases: Vec<String>,
    /// Back up (and on a whole restore, restore) roles and tablespaces
    /// (unset: yes).
    #[serde(default)]
    globals: Option<bool>,
    /// SQL run before the dumps start, for a cold-backup window (on
    /// `hook-database`), in a session held open until `release-sql` runs
    /// in it, so its locks last over the dumps; a failure stops the backup
    /// before any dump.
    #[serde(default)]
    quiesce_sql: Option<String>,
    /// SQL run once the dumps are done, also when they failed, whenever
    /// `quiesce-sql` ran (in its session).
    #[serde(default)]
    release_sql: Option<String>,
    /// The database the hooks run in (`postgres` when unset); in physical
    /// mode, the database `psql` connects to for the WAL positions.
    #[serde(default)]
    hook_database: Option<String>,
    /// Restore: the one database selected goes under this name instead.
    #[serde(default)]
    target_database: Option<String>,
    /// Restore: only this schema's objects (the others are not touched).
    #[serde(default)]
    schema: Option<String>,
    /// Restore: only this table's rows (with `schema`, that schema's
    /// table), replacing the rows of the existing table in one transaction.
    #[serde(default)]
    table: Option<String>,
}

/// What a backup takes.
#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// `pg_dump` of each database, plus roles and tablespaces.
    #[default]
    Logical,
    /// `pg_basebackup` of the whole cluster.
    Physical,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".into()
}

const ROOT: &str = "/postgres";
const GLOBALS: &str = "/postgres/globals.sql";

/// The entry of database `db`.
fn dump_path(db: &str) -> String {
    cairn_sdk::database::entry_path(ROOT, db, ".dump")
}

/// The database an entry holds, if it is a dump.
fn db_of(path: &str) -> Option<String> {
    cairn_sdk::database::database_of(path, ROOT, ".dump")
}

/// The `--dbname` option for database `db`, as a connection string: a
/// name with `=` in it is then never read as connection options, and one
/// starting with `-` never as a program option.
fn dbname(db: &str) -> String {
    format!("--dbname=dbname={}", conninfo_value(db))
}

/// A value of a libpq connection string, quoted.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The entry holding the session settings database `db` was dumped with.
fn settings_path(db: &str) -> String {
    cairn_sdk::database::entry_path(ROOT, db, ".settings")
}

/// An SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Config {
    /// A command for one of the client programs, connected to the server.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program).args([
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--username={}", self.user),
            "--no-password".to_string(),
        ]);
        if let Some(secret) = &self.password_secret {
            cmd = cmd.secret_env("PGPASSWORD", secret);
        }
        cmd
    }

    /// `psql` on database `db`, quiet, unaligned, stopping at the first error,
    /// reading no `~/.psqlrc`.
    fn psql(&self, db: &str) -> Command {
        self.command("psql").args([
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            &dbname(db),
        ])
    }

    /// Run one SQL statement on `db`; its output's lines.
    fn query(&self, db: &str, sql: &str) -> Result<Vec<String>, Error> {
        let out = self
            .psql(db)
            .args(["--command", sql])
            .output()
            .map_err(|e| Error::Other(format!("postgres {}:{}: {e}", self.host, self.port)))?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn database_exists(&self, db: &str) -> Result<bool, Error> {
        let sql = format!("SELECT 1 FROM pg_database WHERE datname = {}", literal(db));
        Ok(!self.query("postgres", &sql)?.is_empty())
    }

    /// The databases to back up.
    fn backup_databases(&self) -> Result<Vec<String>, Error> {
        if !self.databases.is_empty() {
            return Ok(self.databases.clone());
        }
        self.query(
            "postgres",
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
        )
    }

    /// Whether the restore takes only part of a database.
    fn selective(&self) -> bool {
        self.schema.is_some() || self.table.is_some()
    }

    /// The database hooks (and, in physical mode, WAL queries) run in.
    fn hook_database(&self) -> &str {
        self.hook_database.as_deref().unwrap_or("postgres")
    }

    /// Roles and tablespaces are backed up and restored.
    fn globals(&self) -> bool {
        self.globals.unwrap_or(true)
    }

    /// A logical backup or restore has no directory target.
    fn refuse_physical_keys(&self) -> Result<(), Error> {
        if self.fast_checkpoint.is_some() {
            return Err(Error::InvalidConfig(
                "fast-checkpoint: dumps take no checkpoint; it is for mode = \"physical\"".into(),
            ));
        }
        if self.target.is_some() {
            return Err(Error::InvalidConfig(
                "target: dumps are restored into the server, not a directory; a directory target is for physical snapshots (mode = \"physical\")".into(),
            ));
        }
        Ok(())
    }
}

/// Wait for `child` and fail, with its standard error, unless it succeeded.
fn finish(mut child: Child, what: &str) -> Result<(), Error> {
    child.wait()?.check(what)
}

/// The dumps and globals of the snapshot, in the order they are listed.
fn snapshot_entries() -> Result<(bool, Vec<String>), Error> {
    let mut globals = false;
    let mut dbs = Vec::new();
    while let Some(entry) = snapshot::next_entry()? {
        if entry.path == GLOBALS {
            globals = true;
        } else if let Some(db) = db_of(&entry.path) {
            dbs.push(db);
        }
    }
    Ok((globals, dbs))
}

/// The largest `globals.sql` restore reads (it passes through the
/// adapter to be made idempotent; roles and tablespaces are small).
const MAX_GLOBALS: u64 = 64 << 20;

/// Restore `globals.sql` with psql stopping at the first error. Roles and
/// tablespaces that exist already are kept (their attributes are still
/// set): each `CREATE ROLE` runs in a block that tolerates exactly that,
/// each `CREATE TABLESPACE` only when none of that name exists.
fn restore_globals(config: &Config) -> Result<(), Error> {
    use std::io::Read;
    let mut sql = Vec::new();
    snapshot::open(GLOBALS)?
        .take(MAX_GLOBALS + 1)
        .read_to_end(&mut sql)?;
    if sql.len() as u64 > MAX_GLOBALS {
        return Err(Error::Other(format!(
            "{GLOBALS} is larger than {} MiB; restore it with psql yourself",
            MAX_GLOBALS >> 20
        )));
    }
    let tablespaces = config.query("postgres", "SELECT spcname FROM pg_catalog.pg_tablespace")?;
    let mut script = String::with_capacity(sql.len() + 4096);
    for line in String::from_utf8_lossy(&sql).lines() {
        script.push_str(&idempotent_global(line, &tablespaces));
        script.push('\n');
    }
    let mut child = config
        .psql("postgres")
        .arg("--file=-")
        .stdin(Stdio::Pipe)
        .spawn()?;
    let sent = script
        .as_bytes()
        .chunks(1 << 20)
        .try_for_each(|piece| child.write_stdin(piece));
    child.close_stdin();
    child
        .wait()?
        .check("psql restoring roles and tablespaces")?;
    sent
}

/// One line of `pg_dumpall --globals-only`, made safe to run where the
/// role or tablespace it creates exists already (`tablespaces` are the
/// server's). No psql meta-command is added: the dump's `\restrict`
/// mode forbids them.
fn idempotent_global(line: &str, tablespaces: &[String]) -> String {
    if line.starts_with("CREATE ROLE ") && line.ends_with(';') {
        return format!(
            "DO $cairn_role$ BEGIN {line} EXCEPTION WHEN duplicate_object THEN NULL; END $cairn_role$;"
        );
    }
    if let Some(rest) = line.strip_prefix("CREATE TABLESPACE ")
        && leading_identifier(rest).is_some_and(|name| tablespaces.contains(&name))
    {
        // It exists: CREATE TABLESPACE cannot be made conditional in a
        // block, so it is left out; the ALTER and GRANT lines still run.
        return String::new();
    }
    line.to_string()
}

/// The identifier at the start of `s`, as pg_dumpall prints one: bare, or
/// in double quotes with `""` for a quote.
fn leading_identifier(s: &str) -> Option<String> {
    let Some(quoted) = s.strip_prefix('"') else {
        return s.split_whitespace().next().map(str::to_string);
    };
    let mut name = String::new();
    let mut chars = quoted.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('"', Some('"')) => {
                name.push('"');
                chars.next();
            }
            ('"', _) => return Some(name),
            (c, _) => name.push(c),
        }
    }
    None
}

/// Restore the rows of one table (`table`, in `schema` if given) from the
/// dump of `db` into the existing table of the same name in `target`,
/// replacing its rows in one transaction. The table's definition, indexes,
/// constraints, defaults and triggers stay as they are: `pg_restore
/// --table` alone would drop the table and create it bare.
fn restore_table(config: &Config, db: &str, target: &str, table: &str) -> Result<(), Error> {
    use std::io::BufRead;
    let mut rows = Command::new("pg_restore")
        .args(["--data-only", "--file=-", &format!("--table={table}")])
        .args(config.schema.iter().map(|s| format!("--schema={s}")))
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .spawn()?;
    rows.pump_stdin(snapshot::open(&dump_path(db))?)?;
    let mut load = config
        .psql(target)
        .arg("--file=-")
        .stdin(Stdio::Pipe)
        .spawn()?;
    let outcome = (|| {
        // psql commits only on the COMMIT written last, after everything
        // else succeeded: if this stops early, psql reaches the end of its
        // input inside the transaction and the server rolls it back.
        let mut out = b"BEGIN;\n".to_vec();
        let mut tables = 0;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut rows);
        let mut line = Vec::new();
        // Inside a COPY block every line is a row, whatever it says.
        let mut in_rows = false;
        while {
            line.clear();
            reader.read_until(b'\n', &mut line)? > 0
        } {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if in_rows {
                in_rows = text != b"\\.";
            } else if let Some(target) = copy_target(text) {
                // pg_dump printed the name quoted as needed.
                out.extend_from_slice(b"TRUNCATE ONLY ");
                out.extend_from_slice(target);
                out.extend_from_slice(b";\n");
                tables += 1;
                in_rows = true;
            }
            out.extend_from_slice(&line);
            if out.len() >= 1 << 20 {
                load.write_stdin(&out)?;
                out.clear();
            }
        }
        drop(reader);
        rows.wait()?.check(&format!(
            "pg_restore reading table {table} of database {db}"
        ))?;
        if tables == 0 {
            return Err(Error::NotFound(format!(
                "table {table} is not in the snapshot's dump of database {db}"
            )));
        }
        out.extend_from_slice(b"COMMIT;\n");
        load.write_stdin(&out)?;
        load.close_stdin();
        load.wait()?.check(&format!(
            "psql restoring table {table} into database {target}"
        ))
    })();
    match outcome {
        Ok(()) => Ok(()),
        // psql stopped reading: its own error says why.
        Err(Error::Io(e)) if e.contains("standard input") => {
            load.wait()?.check(&format!(
                "psql restoring table {table} into database {target}"
            ))?;
            Err(Error::Io(e))
        }
        Err(e) => {
            load.kill();
            Err(e)
        }
    }
}

/// The table of a `COPY <table> [(<columns>)] FROM stdin;` line, as
/// printed (a quoted name may hold spaces).
fn copy_target(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"COPY ")?;
    if !line.ends_with(b" FROM stdin;") {
        return None;
    }
    let mut quoted = false;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b' ' if !quoted => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Restore the dump of `db` into `target`.
fn restore_database(config: &Config, db: &str, target: &str) -> Result<(), Error> {
    let exists = config.database_exists(target)?;
    if let Some(table) = &config.table {
        if !exists {
            return Err(Error::NotFound(format!(
                "database {target} does not exist: a table is restored into an existing one (restore the whole database, or its schema, first)"
            )));
        }
        return restore_table(config, db, target, table);
    }
    let mut cmd = config.command("pg_restore").arg("--exit-on-error");
    if !exists && target == db && !config.selective() {
        // Under its own name the dump recreates the database with its
        // encoding, locale and settings.
        cmd = cmd.args(["--create", "--dbname=postgres"]);
    } else {
        if !exists {
            config.query(
                "postgres",
                &format!("CREATE DATABASE {} TEMPLATE template0", ident(target)),
            )?;
        }
        // One transaction: a failure leaves the database as it was. What
        // the dump holds replaces what is there.
        cmd = cmd.args([
            "--single-transaction",
            "--clean",
            "--if-exists",
            &dbname(target),
        ]);
        if let Some(schema) = &config.schema {
            // The schema itself may be gone: make sure it exists, so its
            // objects have a home.
            config.query(
                target,
                &format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)),
            )?;
            cmd = cmd.arg(format!("--schema={schema}"));
        }
    }
    let mut child = cmd.stdin(Stdio::Pipe).spawn()?;
    child.pump_stdin(snapshot::open(&dump_path(db))?)?;
    finish(child, &format!("pg_restore of database {db} into {target}"))
}

/// What a data-only SQL text of a database holds, one fingerprint per
/// object: every table's rows (`table <COPY target>`), every sequence's
/// value (`sequence <name>`) and every large object's content (`large
/// object <oid>`). The snapshot's side comes from `pg_restore --data-only`,
/// the restored side from `pg_dump --data-only`: both print them the same
/// way.
fn data_sums(child: &mut Child) -> Result<BTreeMap<String, RowSum>, Error> {
    let mut sums: BTreeMap<String, RowSum> = BTreeMap::new();
    // The table whose COPY rows are being read.
    let mut table: Option<(String, RowSum)> = None;
    // The large object being written, and its content so far.
    let mut object: Option<(String, StreamSum)> = None;
    child.for_each_line(|line| {
        if let Some((_, sum)) = &mut table {
            if line != b"\\." {
                sum.add(line);
            } else if let Some((name, sum)) = table.take() {
                sums.insert(name, sum);
            }
            return Ok(());
        }
        if let Some(target) = line
            .strip_prefix(b"COPY ")
            .and_then(|l| l.strip_suffix(b" FROM stdin;"))
        {
            let name = format!("table {}", String::from_utf8_lossy(target));
            table = Some((name, RowSum::default()));
        } else if let Some(args) = line
            .strip_prefix(b"SELECT pg_catalog.setval(")
            .and_then(|l| l.strip_suffix(b");"))
        {
            // ('schema.name', value, is_called): the name is the literal
            // before the value, which holds no comma.
            let args = String::from_utf8_lossy(args);
            let name = args.rsplitn(3, ", ").last().unwrap_or(&args).to_string();
            sums.entry(format!("sequence {name}"))
                .or_default()
                .add(args.as_bytes());
        } else if let Some(oid) = line
            .strip_prefix(b"SELECT pg_catalog.lo_open('")
            .and_then(|l| l.split(|&b| b == b'\'').next())
        {
            let name = format!("large object {}", String::from_utf8_lossy(oid));
            object = Some((name, StreamSum::default()));
        } else if let Some(data) = line.strip_prefix(b"SELECT pg_catalog.lowrite(0, ") {
            // Hex text, '\x...' (or E'\\x...' without standard strings):
            // without its prefix, the pieces' concatenation is the whole
            // object's, however pg_dump cut it. A form not recognised is
            // fingerprinted as it stands, so it is still compared.
            let hex = data
                .strip_prefix(b"'\\x")
                .or_else(|| data.strip_prefix(b"E'\\\\x"))
                .and_then(|h| h.strip_suffix(b"');"))
                .unwrap_or(data);
            if let Some((_, sum)) = &mut object {
                sum.update(hex);
            }
        } else if line == b"SELECT pg_catalog.lo_close(0);"
            && let Some((name, sum)) = object.take()
        {
            sums.entry(name).or_default().add(&sum.digest());
        }
        Ok(())
    })?;
    Ok(sums)
}

/// The fingerprints of what the snapshot's dump of `db` holds.
fn dump_sums(db: &str) -> Result<BTreeMap<String, RowSum>, Error> {
    let mut child = Command::new("pg_restore")
        .args(["--data-only", "--file=-"])
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .spawn()?;
    child.pump_stdin(snapshot::open(&dump_path(db))?)?;
    let sums = data_sums(&mut child)?;
    finish(
        child,
        &format!("pg_restore reading the dump of database {db}"),
    )?;
    Ok(sums)
}

/// The session settings that change how values print and that `pg_dump`
/// takes from the server, the database or the role rather than setting
/// itself; recorded with each dump so verify prints values the same way.
const PRINT_SETTINGS: &str = "'TimeZone', 'bytea_output', 'lc_monetary', 'server_encoding'";

/// The fingerprints of what database `db` (the scratch copy) holds, printed
/// with the session `settings` (`name=value` lines) the dump was taken with.
fn live_sums(config: &Config, db: &str, settings: &str) -> Result<BTreeMap<String, RowSum>, Error> {
    // libpq's `options`: space-separated server options, `\` escaping.
    // The dump is in its database's encoding; the scratch database may have
    // another, so pg_dump converts to the original's.
    let mut options = Vec::new();
    let mut encoding = None;
    for (name, value) in settings.lines().filter_map(|l| l.split_once('=')) {
        if name == "server_encoding" {
            encoding = Some(format!("--encoding={value}"));
        } else {
            let value = value.replace('\\', "\\\\").replace(' ', "\\ ");
            options.push(format!("-c {name}={value}"));
        }
    }
    let conninfo = format!(
        "--dbname=dbname={} options={}",
        conninfo_value(db),
        conninfo_value(&options.join(" "))
    );
    let mut child = config
        .command("pg_dump")
        .args(["--data-only", "--format=plain", &conninfo])
        .args(encoding)
        .stdout(Stdio::Pipe)
        .spawn()?;
    let sums = data_sums(&mut child)?;
    finish(child, &format!("pg_dump of the scratch database {db}"))?;
    Ok(sums)
}

/// A scratch database, dropped when this goes out of scope.
struct Scratch<'a> {
    config: &'a Config,
    name: String,
}

impl<'a> Scratch<'a> {
    fn create(config: &'a Config) -> Result<Self, Error> {
        let name = cairn_sdk::database::scratch_name("cairn_verify");
        config.query(
            "postgres",
            &format!("CREATE DATABASE {} TEMPLATE template0", ident(&name)),
        )?;
        Ok(Scratch { config, name })
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name));
        if let Err(e) = self.config.query("postgres", &sql) {
            log::error(&format!(
                "could not drop the scratch database {}: {e}",
                self.name
            ));
        }
    }
}

/// The session settings the snapshot recorded for `db` (`name=value`
/// lines); empty for a snapshot taken before they were recorded.
fn recorded_settings(db: &str) -> Result<String, Error> {
    let mut text = String::new();
    match snapshot::open(&settings_path(db)) {
        Ok(mut r) => {
            std::io::Read::read_to_string(&mut r, &mut text)?;
        }
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(text)
}

/// Verify the dump of `db`: restore it into a scratch database and compare
/// every table, sequence and large object with the dump's data.
fn verify_database(config: &Config, db: &str, report: &mut VerifyReport) -> Result<(), Error> {
    let expected = dump_sums(db)?;
    let settings = recorded_settings(db)?;
    let scratch = Scratch::create(config)?;
    let mut child = config
        .command("pg_restore")
        .args([
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            &dbname(&scratch.name),
        ])
        .stdin(Stdio::Pipe)
        .spawn()?;
    child.pump_stdin(snapshot::open(&dump_path(db))?)?;
    if let Err(e) = finish(
        child,
        &format!("pg_restore of database {db} into a scratch database"),
    ) {
        report
            .problems
            .push(format!("database {db}: does not restore: {e}"));
        return Ok(());
    }
    let restored = live_sums(config, &scratch.name, &settings)?;
    for (object, want) in &expected {
        report.entries += 1;
        report.bytes += want.bytes;
        let got = restored.get(object).copied().unwrap_or_default();
        if object.starts_with("table ") && got.rows != want.rows {
            report.problems.push(format!(
                "database {db}: {object}: {} rows in the snapshot, {} restored",
                want.rows, got.rows
            ));
        } else if !restored.contains_key(object) {
            report
                .problems
                .push(format!("database {db}: {object}: not restored"));
        } else if got != *want {
            report.problems.push(format!(
                "database {db}: {object}: the restored content differs from the snapshot's"
            ));
        }
    }
    for object in restored.keys().filter(|o| !expected.contains_key(*o)) {
        report.problems.push(format!(
            "database {db}: {object}: restored, but not in the snapshot's data"
        ));
    }
    log::info(&format!(
        "database {db}: {} tables, sequences and large objects compared in scratch database {}",
        expected.len(),
        scratch.name
    ));
    Ok(())
}

/// Dump the globals and every database, each into its entry.
fn dump_all(config: &Config) -> Result<BackupSummary, Error> {
    let mut summary = BackupSummary::default();
    let databases = config.backup_databases()?;
    if config.globals() {
        config
            .command("pg_dumpall")
            .arg("--globals-only")
            .stream_into(
                GLOBALS,
                &Metadata::with_mode(0o600),
                "pg_dumpall --globals-only",
            )?;
        summary.files += 1;
    }
    for db in &databases {
        let bytes = config
            .command("pg_dump")
            .args(["--format=custom", "--compress=0", &dbname(db)])
            .stream_into(
                &dump_path(db),
                &Metadata::with_mode(0o600),
                &format!("pg_dump of database {db}"),
            )?;
        log::info(&format!("database {db}: {bytes} bytes dumped"));
        // How this database's sessions print values, for verify.
        let settings = config.query(
            db,
            &format!("SELECT name || '=' || setting FROM pg_settings WHERE name IN ({PRINT_SETTINGS}) ORDER BY name"),
        )?;
        let mut entry = archive::begin_stream(&settings_path(db), &Metadata::with_mode(0o600))?;
        std::io::Write::write_all(&mut entry, (settings.join("\n") + "\n").as_bytes())?;
        entry.finish()?;
        summary.files += 2;
    }
    Ok(summary)
}

impl Adapter for Postgres {
    type BackupConfig = Config;
    type RestoreConfig = Config;
    type VerifyConfig = Config;

    fn check(
        config: &serde_json::Value,
        drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<cairn_sdk::Footprint, Error> {
        cairn_sdk::check_own_scratch::<Config>(
            config,
            drill_set,
            "its drill restores into a scratch database of its own",
        )
    }

    fn info() -> Info {
        Info::new(
            "postgres",
            env!("CARGO_PKG_VERSION"),
            "PostgreSQL databases as pg_dump custom-format dumps, plus roles and tablespaces; or (mode = \"physical\") the whole cluster as pg_basebackup takes it.",
        )
        // A physical snapshot is restored into a directory (`--target`).
        .needs(&[cairn_sdk::Capability::WritePaths])
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        if config.mode == Mode::Physical {
            return physical::backup(&config);
        }
        config.refuse_physical_keys()?;
        // quiesce-sql runs in a psql session held open over the dumps, so
        // a lock it takes lasts until release-sql runs in the same session.
        let session = std::cell::RefCell::new(None);
        cairn_sdk::hooks::within_window(
            || {
                if let Some(sql) = &config.quiesce_sql {
                    let client = config.psql(config.hook_database()).arg("--file=-");
                    *session.borrow_mut() =
                        Some(HeldSession::open(client, sql, "psql running quiesce-sql")?);
                }
                Ok(())
            },
            || dump_all(&config),
            || match session.borrow_mut().take() {
                Some(held) => held.release(config.release_sql.as_deref().unwrap_or("")),
                None => match &config.release_sql {
                    Some(sql) => config.query(config.hook_database(), sql).map(|_| ()),
                    None => Ok(()),
                },
            },
        )
    }

    fn restore(config: Config) -> Result<RestoreSummary, Error> {
        // The snapshot decides: a job's config may say either mode.
        if physical::in_snapshot()? {
            return physical::restore(&config);
        }
        config.refuse_physical_keys()?;
        let (has_globals, in_snapshot) = snapshot_entries()?;
        let chosen = cairn_sdk::database::choose(
            &in_snapshot,
            &config.databases,
            config.target_database.is_some(),
        )?;
        let mut summary = RestoreSummary::default();
        let whole = config.target_database.is_none() && !config.selective();
        if has_globals && config.globals() && whole {
            restore_globals(&config)?;
            summary.files += 1;
        }
        for db in &chosen {
            let target = config.target_database.clone().unwrap_or_else(|| db.clone());
            restore_database(&config, db, &target)?;
            log::info(&format!("database {db}: restored into {target}"));
            summary.files += 1;
        }
        Ok(summary)
    }

    fn verify(config: Config) -> Result<VerifyReport, Error> {
        if physical::in_snapshot()? {
            physical::refuse_logical_keys(&config)?;
            return physical::verify();
        }
        let (has_globals, in_snapshot) = snapshot_entries()?;
        let mut report = VerifyReport::default();
        if has_globals {
            // Roles and tablespaces are not compared (they live in the
            // server, not in a scratch database), but every byte is read
            // and authenticated.
            report.bytes += snapshot::open(GLOBALS)?.discard()?;
            report.entries += 1;
        }
        for db in cairn_sdk::database::choose(&in_snapshot, &config.databases, false)? {
            verify_database(&config, &db, &mut report)?;
        }
        Ok(report)
    }
}

cairn_sdk::export_adapter!(Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_role_is_made_to_tolerate_an_existing_role() {
        let line = idempotent_global("CREATE ROLE shop;", &[]);
        assert!(
            line.starts_with("DO $cairn_role$ BEGIN CREATE ROLE shop;"),
            "{line}"
        );
        assert!(line.contains("duplicate_object"), "{line}");
        // Not a whole statement on one line: left as it is.
        assert_eq!(
            idempotent_global("CREATE ROLE shop", &[]),
            "CREATE ROLE shop"
        );
    }

    #[test]
    fn an_existing_tablespace_is_left_out_and_others_are_kept() {
        let have = vec!["fast".to_string(), "with \"quote\"".to_string()];
        assert_eq!(
            idempotent_global("CREATE TABLESPACE fast OWNER x LOCATION '/f';", &have),
            ""
        );
        assert_eq!(
            idempotent_global(
                "CREATE TABLESPACE \"with \"\"quote\"\"\" LOCATION '/q';",
                &have
            ),
            ""
        );
        let new = "CREATE TABLESPACE slow LOCATION '/s';";
        assert_eq!(idempotent_global(new, &have), new);
        let alter = "ALTER TABLESPACE fast OWNER TO shop;";
        assert_eq!(idempotent_global(alter, &have), alter);
    }

    #[test]
    fn identifiers_are_read_bare_or_quoted() {
        assert_eq!(leading_identifier("fast OWNER x").as_deref(), Some("fast"));
        assert_eq!(
            leading_identifier("\"a \"\"b\"\"\" rest").as_deref(),
            Some("a \"b\"")
        );
        assert_eq!(leading_identifier("\"unterminated"), None);
    }

    #[test]
    fn the_table_of_a_copy_line_is_found_even_when_quoted_with_spaces() {
        assert_eq!(
            copy_target(b"COPY public.items (id, name) FROM stdin;"),
            Some(&b"public.items"[..])
        );
        assert_eq!(
            copy_target(b"COPY public.\"odd name\" (id) FROM stdin;"),
            Some(&b"public.\"odd name\""[..])
        );
        assert_eq!(copy_target(b"COPY public.items TO stdout;"), None);
        assert_eq!(copy_target(b"SELECT 1;"), None);
    }
}
