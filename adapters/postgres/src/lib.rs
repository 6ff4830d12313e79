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
//!   `%25`.
//!
//! Restore feeds each dump to `pg_restore` in one transaction (or with
//! `--create` for a database that does not exist yet under its own name),
//! optionally under another name, or only one schema or table. Verify
//! restores each dump into a scratch database and compares every table's
//! row count and content checksum with the dump's own data, then drops the
//! scratch database.

use cairn_sdk::check::RowSum;
use cairn_sdk::process::{Child, Command, Stdio};
use cairn_sdk::{
    Adapter, BackupSummary, Error, Info, Metadata, RestoreSummary, VerifyReport, log, snapshot,
};
use std::collections::BTreeMap;

struct Postgres;

/// Where the server is and what to back up or restore.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
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
    /// Back up (and on a whole restore, restore) roles and tablespaces.
    #[serde(default = "default_true")]
    globals: bool,
    /// SQL run before the dumps start, for a cold-backup window (on
    /// `hook-database`); a failure stops the backup before any dump.
    #[serde(default)]
    quiesce_sql: Option<String>,
    /// SQL run once the dumps are done, also when they failed, whenever
    /// `quiesce-sql` ran.
    #[serde(default)]
    release_sql: Option<String>,
    /// The database the hooks run in.
    #[serde(default = "default_hook_database")]
    hook_database: String,
    /// Restore: the one database selected goes under this name instead.
    #[serde(default)]
    target_database: Option<String>,
    /// Restore: only this schema's objects (the others are not touched).
    #[serde(default)]
    schema: Option<String>,
    /// Restore: only this table (with `schema`, that schema's table).
    #[serde(default)]
    table: Option<String>,
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
fn default_hook_database() -> String {
    "postgres".into()
}
fn default_true() -> bool {
    true
}

const ROOT: &str = "/postgres";
const GLOBALS: &str = "/postgres/globals.sql";

/// The entry of database `db`.
fn dump_path(db: &str) -> String {
    let name = db.replace('%', "%25").replace('/', "%2F");
    format!("{ROOT}/{name}.dump")
}

/// The database an entry holds, if it is a dump.
fn db_of(path: &str) -> Option<String> {
    let name = path
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_suffix(".dump")?;
    Some(name.replace("%2F", "/").replace("%25", "%"))
}

/// The `--dbname` option for database `db`, as a connection string: a
/// name with `=` in it is then never read as connection options, and one
/// starting with `-` never as a program option.
fn dbname(db: &str) -> String {
    format!(
        "--dbname=dbname='{}'",
        db.replace('\\', "\\\\").replace('\'', "\\'")
    )
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

    fn wants(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }

    /// Whether the restore takes only part of a database.
    fn selective(&self) -> bool {
        self.schema.is_some() || self.table.is_some()
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

/// Restore `globals.sql`. Roles that exist already are fine (the statements
/// that set their attributes still run); any other error fails.
fn restore_globals(config: &Config) -> Result<(), Error> {
    let mut child = config
        .command("psql")
        .args(["--no-psqlrc", "--quiet", "--dbname=postgres", "--file=-"])
        .stdin(Stdio::Pipe)
        .spawn()?;
    child.pump_stdin(snapshot::open(GLOBALS)?)?;
    let status = child.wait()?;
    status.check("psql restoring roles and tablespaces")?;
    let errors: Vec<&str> = status
        .stderr_tail
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .collect();
    if !errors.is_empty() {
        return Err(Error::Other(format!(
            "restoring roles and tablespaces failed: {}",
            errors.join("; ")
        )));
    }
    Ok(())
}

/// Restore the dump of `db` into `target`.
fn restore_database(config: &Config, db: &str, target: &str) -> Result<(), Error> {
    let exists = config.database_exists(target)?;
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
            if config.table.is_none() {
                // The schema itself may be gone: make sure it exists, so
                // its objects have a home.
                config.query(
                    target,
                    &format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)),
                )?;
            }
            cmd = cmd.arg(format!("--schema={schema}"));
        }
        if let Some(table) = &config.table {
            cmd = cmd.arg(format!("--table={table}"));
        }
    }
    let mut child = cmd.stdin(Stdio::Pipe).spawn()?;
    child.pump_stdin(snapshot::open(&dump_path(db))?)?;
    finish(child, &format!("pg_restore of database {db} into {target}"))
}

/// Every table's sums as the dump of `db` holds them: the data section of
/// `pg_restore --file=-`, keyed by the COPY target (`schema.table (cols)`).
fn dump_sums(db: &str) -> Result<BTreeMap<String, RowSum>, Error> {
    let mut child = Command::new("pg_restore")
        .args(["--data-only", "--file=-"])
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .spawn()?;
    child.pump_stdin(snapshot::open(&dump_path(db))?)?;
    let mut sums = BTreeMap::new();
    let mut current: Option<(String, RowSum)> = None;
    child.for_each_line(|line| {
        match &mut current {
            Some((_, sum)) if line != b"\\." => sum.add(line),
            Some(_) => {
                let (table, sum) = current.take().expect("inside a COPY block");
                sums.insert(table, sum);
            }
            None => {
                if let Some(target) = line
                    .strip_prefix(b"COPY ")
                    .and_then(|l| l.strip_suffix(b" FROM stdin;"))
                {
                    current = Some((
                        String::from_utf8_lossy(target).into_owned(),
                        RowSum::default(),
                    ));
                }
            }
        }
        Ok(())
    })?;
    finish(
        child,
        &format!("pg_restore reading the dump of database {db}"),
    )?;
    Ok(sums)
}

/// The same sums for one table of a live database.
fn live_sum(config: &Config, db: &str, target: &str) -> Result<RowSum, Error> {
    // The settings pg_dump uses, so values print the way the dump has them.
    let mut child = config
        .psql(db)
        .args([
            "--command=SET datestyle TO ISO",
            "--command=SET intervalstyle TO postgres",
            "--command=SET extra_float_digits TO 3",
            &format!("--command=COPY {target} TO STDOUT"),
        ])
        .stdout(Stdio::Pipe)
        .spawn()?;
    let mut sum = RowSum::default();
    child.for_each_line(|line| {
        sum.add(line);
        Ok(())
    })?;
    finish(child, &format!("psql reading {target} in {db}"))?;
    Ok(sum)
}

/// A scratch database, dropped when this goes out of scope.
struct Scratch<'a> {
    config: &'a Config,
    name: String,
}

impl<'a> Scratch<'a> {
    fn create(config: &'a Config, db: &str) -> Result<Self, Error> {
        use std::hash::{BuildHasher, Hasher};
        // WASI's random source seeds the hasher: a fresh name each run.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(db.as_bytes());
        let name = format!("cairn_verify_{:016x}", h.finish());
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

/// Verify the dump of `db`: restore it into a scratch database and compare
/// every table with the dump's data.
fn verify_database(config: &Config, db: &str, report: &mut VerifyReport) -> Result<(), Error> {
    let expected = dump_sums(db)?;
    let scratch = Scratch::create(config, db)?;
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
    for (target, want) in &expected {
        report.entries += 1;
        let got = live_sum(config, &scratch.name, target)?;
        if got.rows != want.rows {
            report.problems.push(format!(
                "database {db}: table {target}: {} rows in the snapshot, {} restored",
                want.rows, got.rows
            ));
        } else if got != *want {
            report.problems.push(format!(
                "database {db}: table {target}: the restored rows differ from the snapshot's"
            ));
        }
        report.bytes += want.bytes;
    }
    log::info(&format!(
        "database {db}: {} tables compared in scratch database {}",
        expected.len(),
        scratch.name
    ));
    Ok(())
}

/// Dump the globals and every database, each into its entry.
fn dump_all(config: &Config) -> Result<BackupSummary, Error> {
    let mut summary = BackupSummary::default();
    let databases = config.backup_databases()?;
    if config.globals {
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
        summary.files += 1;
    }
    Ok(summary)
}

impl Adapter for Postgres {
    type BackupConfig = Config;
    type RestoreConfig = Config;
    type VerifyConfig = Config;

    fn info() -> Info {
        Info::new(
            "postgres",
            env!("CARGO_PKG_VERSION"),
            "PostgreSQL databases as pg_dump custom-format dumps, plus roles and tablespaces.",
        )
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        let hook = |sql: &Option<String>| match sql {
            Some(sql) => config.query(&config.hook_database, sql).map(|_| ()),
            None => Ok(()),
        };
        cairn_sdk::hooks::within_window(
            || hook(&config.quiesce_sql),
            || dump_all(&config),
            || hook(&config.release_sql),
        )
    }

    fn restore(config: Config) -> Result<RestoreSummary, Error> {
        let (has_globals, in_snapshot) = snapshot_entries()?;
        let chosen: Vec<String> = in_snapshot
            .into_iter()
            .filter(|d| config.wants(d))
            .collect();
        if chosen.is_empty() {
            return Err(Error::NotFound(format!(
                "no database of the snapshot matches {:?}",
                config.databases
            )));
        }
        if let Some(missing) = config.databases.iter().find(|d| !chosen.contains(d)) {
            return Err(Error::NotFound(format!(
                "database {missing} is not in the snapshot"
            )));
        }
        if config.target_database.is_some() && chosen.len() != 1 {
            return Err(Error::InvalidConfig(format!(
                "target-database renames one database, but {} are selected ({}); choose one with databases = [...]",
                chosen.len(),
                chosen.join(", ")
            )));
        }
        let mut summary = RestoreSummary::default();
        let whole = config.target_database.is_none() && !config.selective();
        if has_globals && config.globals && whole {
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
        let (_, in_snapshot) = snapshot_entries()?;
        let mut report = VerifyReport::default();
        for db in in_snapshot.iter().filter(|d| config.wants(d)) {
            verify_database(&config, db, &mut report)?;
        }
        if report.entries == 0 && in_snapshot.is_empty() {
            report
                .problems
                .push("the snapshot holds no database dump".into());
        }
        Ok(report)
    }
}

cairn_sdk::export_adapter!(Postgres);
