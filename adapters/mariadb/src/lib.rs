//! Cairn's MariaDB (and MySQL) adapter. It runs the client programs its job
//! grants (`mariadb-dump`, `mariadb`) and lets the host pump their bytes:
//! no dump passes through the adapter's memory on backup or restore.
//!
//! A snapshot holds, under `/mariadb`, for each database:
//! - `<database>.sql`: `mariadb-dump --single-transaction --routines
//!   --events --triggers --hex-blob --skip-dump-date`, without `CREATE
//!   DATABASE`/`USE`, so that it restores under any name (and two backups
//!   of unchanged data are the same bytes, so they deduplicate);
//! - `<database>.charset`: the database's default character set and
//!   collation, to create it again the same way.
//!
//! A `/` or `%` in a name is written `%2F`, `%25`. Restore feeds a dump to
//! the `mariadb` client; verify restores it into a scratch database and
//! compares every table's rows with the snapshot's.

use cairn_sdk::check::RowSum;
use cairn_sdk::hooks::HeldSession;
use cairn_sdk::process::{Command, Stdio};
use cairn_sdk::{
    Adapter, BackupSummary, Error, Info, Metadata, RestoreSummary, VerifyReport, archive, log,
    snapshot,
};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

struct Mariadb;

/// Where the server is and what to back up or restore.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Server host name or address.
    #[serde(default = "default_host")]
    host: String,
    /// Server port.
    #[serde(default = "default_port")]
    port: u16,
    /// The account to connect as.
    #[serde(default = "default_user")]
    user: String,
    /// The job's secret holding the password, passed to the programs as
    /// `MYSQL_PWD` (the adapter never sees it). Unset: no password.
    #[serde(default)]
    password_secret: Option<String>,
    /// Databases to back up (or restore, or verify); empty: every database
    /// but the server's own (`mysql`, `sys`, `information_schema`,
    /// `performance_schema`).
    #[serde(default)]
    databases: Vec<String>,
    /// SQL run before the dumps, for a cold-backup window, in a session
    /// held open until `release-sql` runs in it (so `FLUSH TABLES WITH READ
    /// LOCK` holds over the dumps).
    #[serde(default)]
    quiesce_sql: Option<String>,
    /// SQL run after the dumps, also when they failed (in quiesce-sql's
    /// session).
    #[serde(default)]
    release_sql: Option<String>,
    /// Restore: the one database selected goes under this name instead.
    #[serde(default)]
    target_database: Option<String>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    3306
}
fn default_user() -> String {
    "root".into()
}

const ROOT: &str = "/mariadb";
const SYSTEM: [&str; 4] = ["information_schema", "performance_schema", "sys", "mysql"];

fn dump_path(db: &str) -> String {
    cairn_sdk::database::entry_path(ROOT, db, ".sql")
}

fn charset_path(db: &str) -> String {
    cairn_sdk::database::entry_path(ROOT, db, ".charset")
}

fn db_of(path: &str) -> Option<String> {
    cairn_sdk::database::database_of(path, ROOT, ".sql")
}

/// An identifier, quoted with backticks.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal (the server's default `sql_mode` lets `\` escape).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Refuse a database name a client program could take for an option.
fn check_name(db: &str) -> Result<(), Error> {
    if db.is_empty() || db.starts_with('-') {
        return Err(Error::InvalidConfig(format!(
            "database name {db:?}: empty, or starts with '-'"
        )));
    }
    Ok(())
}

impl Config {
    /// A client program, connected to the server, reading no option files.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program).args([
            "--no-defaults".to_string(),
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--user={}", self.user),
            "--protocol=TCP".to_string(),
            "--default-character-set=utf8mb4".to_string(),
        ]);
        if let Some(secret) = &self.password_secret {
            cmd = cmd.secret_env("MYSQL_PWD", secret);
        }
        cmd
    }

    /// Run `sql`; its output's lines (tab-separated columns, raw).
    fn query(&self, sql: &str) -> Result<Vec<String>, Error> {
        let out = self
            .command("mariadb")
            .args(["--batch", "--skip-column-names", "--raw", "--execute", sql])
            .output()
            .map_err(|e| Error::Other(format!("mariadb {}:{}: {e}", self.host, self.port)))?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn backup_databases(&self) -> Result<Vec<String>, Error> {
        if !self.databases.is_empty() {
            return Ok(self.databases.clone());
        }
        let system: Vec<String> = SYSTEM.iter().map(|s| literal(s)).collect();
        self.query(&format!(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ({}) ORDER BY schema_name",
            system.join(", ")
        ))
    }

    /// `mariadb-dump` of `db` with the options every dump of a snapshot uses.
    fn dump(&self, db: &str) -> Command {
        self.command("mariadb-dump").args([
            "--single-transaction",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--skip-dump-date",
            db,
        ])
    }

    /// Create `db` (if missing) with the character set the snapshot recorded.
    fn create_database(&self, db: &str, charset: &str) -> Result<(), Error> {
        let mut sql = format!("CREATE DATABASE IF NOT EXISTS {}", ident(db));
        let mut parts = charset.split_whitespace();
        if let (Some(cs), Some(coll)) = (parts.next(), parts.next()) {
            sql += &format!(" CHARACTER SET {cs} COLLATE {coll}");
        }
        self.query(&sql).map(|_| ())
    }

    /// Feed the snapshot's dump of `db` to the client, into database `into`.
    fn load(&self, db: &str, into: &str) -> Result<(), Error> {
        let mut child = self
            .command("mariadb")
            .args(["--binary-mode", &format!("--database={into}")])
            .stdin(Stdio::Pipe)
            .spawn()?;
        child.pump_stdin(snapshot::open(&dump_path(db))?)?;
        child.wait()?.check(&format!(
            "mariadb loading the dump of database {db} into {into}"
        ))
    }
}

/// The snapshot's recorded character set of `db` ("" if none).
fn charset_of(db: &str) -> Result<String, Error> {
    let mut text = String::new();
    match snapshot::open(&charset_path(db)) {
        Ok(mut r) => {
            r.read_to_string(&mut text)?;
        }
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(text)
}

/// The databases the snapshot holds dumps of, in snapshot order.
fn snapshot_databases() -> Result<Vec<String>, Error> {
    let mut dbs = Vec::new();
    while let Some(entry) = snapshot::next_entry()? {
        if let Some(db) = db_of(&entry.path) {
            dbs.push(db);
        }
    }
    Ok(dbs)
}

/// Per table: the row count and a fingerprint of the rows of a dump's
/// `INSERT` statements. MariaDB's dump puts one value tuple per line after
/// `INSERT INTO `t` VALUES` (newlines inside values are escaped), older
/// ones a whole statement per line: each tuple is fingerprinted without the
/// `,` or `;` that joins it to the next, so how statements are split does
/// not matter.
#[derive(Default)]
struct Tables {
    tables: BTreeMap<String, RowSum>,
    /// The table whose multi-line `INSERT` is being read.
    open: Option<String>,
}

impl Tables {
    fn add_line(&mut self, line: &[u8]) {
        if let Some(table) = &self.open {
            let row = line
                .strip_suffix(b";")
                .or_else(|| line.strip_suffix(b","))
                .unwrap_or(line);
            self.tables.entry(table.clone()).or_default().add(row);
            if line.ends_with(b";") {
                self.open = None;
            }
            return;
        }
        let Some(rest) = line.strip_prefix(b"INSERT INTO `") else {
            return;
        };
        let Some(end) = find_name_end(rest) else {
            return;
        };
        let table = String::from_utf8_lossy(&rest[..end]).replace("``", "`");
        // A column list comes first when the table has invisible columns:
        // INSERT INTO `t` (`a`, `h`) VALUES ...
        let after = skip_column_list(&rest[end + 1..]);
        match after.strip_prefix(b" VALUES") {
            Some(b"") => self.open = Some(table),
            Some(tuples) => {
                let sum = self.tables.entry(table.clone()).or_default();
                for tuple in split_tuples(tuples) {
                    sum.add(tuple);
                }
                // With a column list the first tuple shares the INSERT's
                // line and the others follow one per line.
                if !tuples.ends_with(b";") {
                    self.open = Some(table);
                }
            }
            None => {}
        }
    }

    /// The rows and fingerprint of `table`.
    fn get(&self, table: &str) -> RowSum {
        self.tables.get(table).copied().unwrap_or_default()
    }
}

/// `s` past a leading ` (`col`, ...)`, if it has one.
fn skip_column_list(s: &[u8]) -> &[u8] {
    let Some(list) = s.strip_prefix(b" (") else {
        return s;
    };
    let mut i = 0;
    while i < list.len() {
        match list[i] {
            b'`' => match find_name_end(&list[i + 1..]) {
                Some(end) => i += end + 2,
                None => return s,
            },
            b')' => return &list[i + 1..],
            _ => i += 1,
        }
    }
    s
}

/// Where a backtick-quoted name ends (a doubled backtick is part of it).
fn find_name_end(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'`' {
            if s.get(i + 1) == Some(&b'`') {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The value tuples of ` (...),(...);`, each as written, outside string
/// literals' parentheses and commas.
fn split_tuples(s: &[u8]) -> Vec<&[u8]> {
    let (mut depth, mut in_string, mut escaped, mut start) = (0u32, false, false, 0usize);
    let mut out = Vec::new();
    for (i, &b) in s.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'\'') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'\'' => in_string = true,
            b'(' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push(&s[start..=i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// A scratch database, dropped when this goes out of scope.
struct Scratch<'a> {
    config: &'a Config,
    name: String,
}

impl<'a> Scratch<'a> {
    fn create(config: &'a Config, charset: &str) -> Result<Self, Error> {
        let name = cairn_sdk::database::scratch_name("cairn_verify");
        config.create_database(&name, charset)?;
        Ok(Scratch { config, name })
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", ident(&self.name));
        if let Err(e) = self.config.query(&sql) {
            log::error(&format!(
                "could not drop the scratch database {}: {e}",
                self.name
            ));
        }
    }
}

fn verify_database(config: &Config, db: &str, report: &mut VerifyReport) -> Result<(), Error> {
    let mut expected = Tables::default();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, snapshot::open(&dump_path(db))?);
    let mut line = Vec::new();
    while {
        line.clear();
        reader.read_until(b'\n', &mut line)? > 0
    } {
        expected.add_line(line.strip_suffix(b"\n").unwrap_or(&line));
    }
    let scratch = Scratch::create(config, &charset_of(db)?)?;
    if let Err(e) = config.load(db, &scratch.name) {
        report
            .problems
            .push(format!("database {db}: does not restore: {e}"));
        return Ok(());
    }
    let mut restored = Tables::default();
    let mut child = config
        .command("mariadb-dump")
        .args([
            "--single-transaction",
            "--no-create-info",
            "--skip-triggers",
            "--hex-blob",
            "--skip-dump-date",
            &scratch.name,
        ])
        .stdout(Stdio::Pipe)
        .spawn()?;
    child.for_each_line(|l| {
        restored.add_line(l);
        Ok(())
    })?;
    child
        .wait()?
        .check("mariadb-dump of the scratch database")?;
    let tables = config.query(&format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = {} AND table_type = 'BASE TABLE'",
        literal(&scratch.name)
    ))?;
    for table in &tables {
        report.entries += 1;
        let count = config.query(&format!(
            "SELECT COUNT(*) FROM {}.{}",
            ident(&scratch.name),
            ident(table)
        ))?;
        let live: u64 = count
            .first()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(u64::MAX);
        let (want_sum, got_sum) = (expected.get(table), restored.get(table));
        let want_rows = want_sum.rows;
        report.bytes += want_sum.bytes;
        if live != want_rows {
            report.problems.push(format!(
                "database {db}: table {table}: {want_rows} rows in the snapshot, {live} restored"
            ));
        } else if got_sum != want_sum {
            report.problems.push(format!(
                "database {db}: table {table}: the restored rows differ from the snapshot's"
            ));
        }
    }
    for table in expected.tables.keys().filter(|t| !tables.contains(t)) {
        report.problems.push(format!(
            "database {db}: table {table} has rows in the snapshot but was not restored"
        ));
    }
    log::info(&format!(
        "database {db}: {} tables compared in scratch database {}",
        tables.len(),
        scratch.name
    ));
    Ok(())
}

fn dump_all(config: &Config) -> Result<BackupSummary, Error> {
    let mut summary = BackupSummary::default();
    for db in config.backup_databases()? {
        check_name(&db)?;
        let charset = config.query(&format!(
            "SELECT default_character_set_name, default_collation_name FROM information_schema.schemata WHERE schema_name = {}",
            literal(&db)
        ))?;
        let Some(charset) = charset.first() else {
            return Err(Error::NotFound(format!("database {db} does not exist")));
        };
        let mut entry = archive::begin_stream(&charset_path(&db), &Metadata::with_mode(0o600))?;
        entry.write_all(charset.replace('\t', " ").as_bytes())?;
        entry.finish()?;
        let bytes = config.dump(&db).stream_into(
            &dump_path(&db),
            &Metadata::with_mode(0o600),
            &format!("mariadb-dump of database {db}"),
        )?;
        log::info(&format!("database {db}: {bytes} bytes dumped"));
        summary.files += 2;
    }
    Ok(summary)
}

impl Adapter for Mariadb {
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
            "mariadb",
            env!("CARGO_PKG_VERSION"),
            "MariaDB and MySQL databases as mariadb-dump SQL, one consistent transaction each.",
        )
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        // quiesce-sql runs in a client session held open over the dumps, so
        // a lock it takes (FLUSH TABLES WITH READ LOCK) lasts until
        // release-sql runs in the same session.
        let session = std::cell::RefCell::new(None);
        cairn_sdk::hooks::within_window(
            || {
                if let Some(sql) = &config.quiesce_sql {
                    let client = config.command("mariadb").args([
                        "--batch",
                        "--skip-column-names",
                        "--unbuffered",
                    ]);
                    *session.borrow_mut() = Some(HeldSession::open(
                        client,
                        sql,
                        "mariadb running quiesce-sql",
                    )?);
                }
                Ok(())
            },
            || dump_all(&config),
            || match session.borrow_mut().take() {
                Some(held) => held.release(config.release_sql.as_deref().unwrap_or("")),
                None => match &config.release_sql {
                    Some(sql) => config.query(sql).map(|_| ()),
                    None => Ok(()),
                },
            },
        )
    }

    fn restore(config: Config) -> Result<RestoreSummary, Error> {
        let chosen = cairn_sdk::database::choose(
            &snapshot_databases()?,
            &config.databases,
            config.target_database.is_some(),
        )?;
        let mut summary = RestoreSummary::default();
        for db in &chosen {
            let target = config.target_database.clone().unwrap_or_else(|| db.clone());
            check_name(&target)?;
            config.create_database(&target, &charset_of(db)?)?;
            config.load(db, &target)?;
            log::info(&format!("database {db}: restored into {target}"));
            summary.files += 1;
        }
        Ok(summary)
    }

    fn verify(config: Config) -> Result<VerifyReport, Error> {
        let in_snapshot = snapshot_databases()?;
        let mut report = VerifyReport::default();
        for db in cairn_sdk::database::choose(&in_snapshot, &config.databases, false)? {
            verify_database(&config, &db, &mut report)?;
        }
        Ok(report)
    }
}

cairn_sdk::export_adapter!(Mariadb);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_tuples_split_outside_string_literals() {
        let s = b" (1,'a,b'),(2,'(x)'),(3,'it\\'s'),(4,NULL);";
        let tuples: Vec<&[u8]> = split_tuples(s);
        assert_eq!(
            tuples,
            [
                &b"(1,'a,b')"[..],
                b"(2,'(x)')",
                b"(3,'it\\'s')",
                b"(4,NULL)"
            ]
        );
    }

    #[test]
    fn nested_parentheses_stay_in_one_tuple() {
        let tuples = split_tuples(b" (1,POINT(1,2)),(2,'')");
        assert_eq!(tuples, [&b"(1,POINT(1,2))"[..], b"(2,'')"]);
    }

    #[test]
    fn a_column_list_is_skipped_with_quoted_names_holding_parentheses() {
        assert_eq!(skip_column_list(b" (`a`,`b)`) VALUES"), b" VALUES");
        assert_eq!(skip_column_list(b" (`x``y`) VALUES"), b" VALUES");
        assert_eq!(skip_column_list(b" VALUES (1)"), b" VALUES (1)");
    }

    #[test]
    fn a_backquoted_name_ends_at_a_single_backtick() {
        assert_eq!(find_name_end(b"ab`"), Some(2));
        assert_eq!(find_name_end(b"a``b`"), Some(4));
        assert_eq!(find_name_end(b"unterminated"), None);
    }
}
