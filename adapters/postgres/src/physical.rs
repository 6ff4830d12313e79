//! `mode = "physical"`: the whole cluster as `pg_basebackup` writes it, the
//! base of point-in-time recovery.
//!
//! A snapshot holds, under `/postgres`:
//! - `base.tar`: `pg_basebackup --format=tar --wal-method=none` of the
//!   cluster, pumped by the host from the program's standard output (no
//!   byte passes through the adapter). It holds no WAL: the cluster's WAL
//!   archive (Cairn's WAL stream, or the operator's own) supplies it, and
//!   the snapshot alone does not start a server;
//! - `basebackup.json`: the server's identity and the WAL positions and
//!   server times read just before and just after the copy, bounds of
//!   the backup's start and end. The host tags the snapshot from it and
//!   from the `backup_label` at the start of `base.tar` (the exact start).
//!
//! Restore extracts `base.tar` with a granted `tar` into an empty target
//! directory (`--target`) that the job's grants make writable, then gives
//! the directory the owner of the files in it and mode 0700, as
//! PostgreSQL requires. Recovery settings are not written here: a restore
//! to a point in time is the host's (`cairn restore --until`).
//!
//! Verify reads all of `base.tar` through `tar --list` (every byte is
//! authenticated by the host on the way) and checks the members a data
//! directory cannot do without.

use crate::Config;
use cairn_sdk::process::Stdio;
use cairn_sdk::{
    BackupSummary, Error, Metadata, RestoreSummary, VerifyReport, archive, fs, log, snapshot,
};

/// The cluster's files, as one tar.
pub const BASE_TAR: &str = "/postgres/base.tar";
/// What the backup read from the server around the copy.
pub const BASE_JSON: &str = "/postgres/basebackup.json";

/// Members without which an extracted `base.tar` is no data directory.
const REQUIRED: [&str; 4] = [
    "backup_label",
    "backup_manifest",
    "PG_VERSION",
    "global/pg_control",
];

/// The server's identity and the bounds of one base backup, as
/// `basebackup.json` holds them (format 1). Positions are PostgreSQL's
/// `X/Y`; times are the server's clock, UTC, RFC 3339.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
pub struct BaseBackup {
    /// 1.
    pub format: u32,
    /// The label given to `pg_basebackup`.
    pub label: String,
    /// The cluster's system identifier, in decimal.
    pub system: String,
    /// The timeline the server was on (the same before and after).
    pub timeline: u32,
    /// The WAL position before the copy began: at or before its start.
    pub start_lsn: String,
    /// The WAL position after the copy ended: at or after its end.
    pub stop_lsn: String,
    /// The server's time before the copy.
    pub start_time: String,
    /// The server's time after it.
    pub stop_time: String,
    /// `pg_current_snapshot()` after the copy: transactions it lists as
    /// running, or at or above its xmax, had not committed by then.
    pub xact_snapshot_at_stop: String,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// `server_version_num`.
    pub server_version_num: u32,
}

/// What the server says about itself and its WAL at one moment.
struct Position {
    lsn: String,
    timeline: u32,
    time: String,
}

/// The server's current WAL position, timeline and time (UTC).
fn position(config: &Config) -> Result<(Position, Vec<String>), Error> {
    let row = config.query(
        config.hook_database(),
        "SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn()), \
         to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         pg_current_snapshot()",
    )?;
    let fields = fields(&row, 4, "the WAL position")?;
    let timeline = fields[1]
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| Error::Other(format!("postgres: {:?} is not a WAL file name", fields[1])))?;
    Ok((
        Position {
            lsn: fields[0].clone(),
            timeline,
            time: fields[2].clone(),
        },
        fields,
    ))
}

/// The `|`-separated fields of a one-row answer with `n` columns.
fn fields(rows: &[String], n: usize, what: &str) -> Result<Vec<String>, Error> {
    match rows {
        [row] if row.split('|').count() == n => Ok(row.split('|').map(str::to_string).collect()),
        _ => Err(Error::Other(format!(
            "postgres: unexpected answer reading {what}: {rows:?}"
        ))),
    }
}

/// Keys that only a logical backup or restore reads: refused in physical
/// mode, so a setting is never silently ignored.
pub fn refuse_logical_keys(config: &Config) -> Result<(), Error> {
    let set = [
        ("databases", !config.databases.is_empty()),
        ("globals", config.globals.is_some()),
        ("quiesce-sql", config.quiesce_sql.is_some()),
        ("release-sql", config.release_sql.is_some()),
        ("target-database", config.target_database.is_some()),
        ("schema", config.schema.is_some()),
        ("table", config.table.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((key, _)) => Err(Error::InvalidConfig(format!(
            "{key}: a physical backup copies the whole cluster; {key} is for mode = \"logical\""
        ))),
        None => Ok(()),
    }
}

/// Back up the whole cluster.
pub fn backup(config: &Config) -> Result<BackupSummary, Error> {
    refuse_logical_keys(config)?;
    let about = config.query(
        config.hook_database(),
        "SELECT pg_is_in_recovery(), system_identifier, \
         (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
         current_setting('server_version_num') FROM pg_control_system()",
    )?;
    let about = fields(&about, 4, "the server's identity")?;
    if about[0] == "t" {
        return Err(Error::InvalidConfig(format!(
            "postgres {}:{} is a standby: physical backups are taken from the primary",
            config.host, config.port
        )));
    }
    let number = |i: usize| {
        about[i]
            .parse::<u64>()
            .map_err(|_| Error::Other(format!("postgres: {:?} is not a number", about[i])))
    };
    let (wal_segment_size, server_version_num) = (number(2)?, number(3)? as u32);
    let (before, _) = position(config)?;
    let label = format!("cairn {}", before.time);
    let bytes = config
        .command("pg_basebackup")
        .args([
            "--pgdata=-",
            "--format=tar",
            "--wal-method=none",
            &format!(
                "--checkpoint={}",
                if config.fast_checkpoint.unwrap_or(true) {
                    "fast"
                } else {
                    "spread"
                }
            ),
            &format!("--label={label}"),
        ])
        .stream_into(BASE_TAR, &Metadata::with_mode(0o600), "pg_basebackup")?;
    let (after, row) = position(config)?;
    if after.timeline != before.timeline {
        return Err(Error::Other(format!(
            "postgres {}:{} changed timeline during the backup ({} to {}); run it again",
            config.host, config.port, before.timeline, after.timeline
        )));
    }
    let record = BaseBackup {
        format: 1,
        label,
        system: about[1].clone(),
        timeline: before.timeline,
        start_lsn: before.lsn,
        stop_lsn: after.lsn,
        start_time: before.time,
        stop_time: after.time,
        xact_snapshot_at_stop: row[3].clone(),
        wal_segment_size,
        server_version_num,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Other(e.to_string()))?;
    let mut entry = archive::begin_stream(BASE_JSON, &Metadata::with_mode(0o600))?;
    std::io::Write::write_all(&mut entry, &json)?;
    entry.finish()?;
    log::info(&format!(
        "base backup of system {}: {bytes} bytes, timeline {}, WAL {} to {}; it needs the WAL archive to be restored",
        record.system, record.timeline, record.start_lsn, record.stop_lsn
    ));
    Ok(BackupSummary {
        files: 2,
        ..Default::default()
    })
}

/// Restore the cluster's files into `config.target`.
pub fn restore(config: &Config) -> Result<RestoreSummary, Error> {
    refuse_logical_keys(config)?;
    let Some(target) = &config.target else {
        return Err(Error::InvalidConfig(
            "target: a physical snapshot is restored into a directory; give --target".into(),
        ));
    };
    let present = fs::list_dir(target)?;
    if !present.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "target {target} is not empty ({} entries, {:?} first): a cluster is restored into an empty directory",
            present.len(),
            present[0]
        )));
    }
    // `--no-same-permissions`: no set-user-ID, set-group-ID or sticky bit
    // comes out of a snapshot (a data directory has none, and tar runs
    // as root); nor can a device node, since granted programs cannot make
    // one.
    let mut tar = cairn_sdk::process::Command::new("tar")
        .args([
            "--extract",
            "--no-same-permissions",
            "--file=-",
            "--directory",
            target,
        ])
        .stdin(Stdio::Pipe)
        .spawn()?;
    tar.pump_stdin(snapshot::open(BASE_TAR)?)?;
    if let Err(e) = tar
        .wait()?
        .check(&format!("tar extracting {BASE_TAR} into {target}"))
    {
        return Err(Error::Other(format!(
            "{e}; {target} holds a partial extraction: empty it before restoring again"
        )));
    }
    // PostgreSQL starts only in a directory its owner alone may enter,
    // owned like the files in it (tar, run as root, kept their owner).
    let owner = fs::stat(&format!("{target}/PG_VERSION"))?.meta;
    let mut meta = Metadata::with_mode(0o700);
    meta.uid = owner.uid;
    meta.gid = owner.gid;
    fs::set_metadata(target, &meta)?;
    log::info(&format!(
        "cluster files restored into {target}; recover it with the WAL archive (cairn restore --until) before starting it"
    ));
    Ok(RestoreSummary {
        files: 1,
        ..Default::default()
    })
}

/// Read the whole tar and check its members and record.
pub fn verify() -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut snapshot::open(BASE_JSON)?, &mut text)?;
    match serde_json::from_str::<BaseBackup>(&text) {
        Ok(b) if b.format == 1 => {}
        Ok(b) => report.problems.push(format!(
            "{BASE_JSON}: format {} is not one this adapter reads",
            b.format
        )),
        Err(e) => report.problems.push(format!("{BASE_JSON}: {e}")),
    }
    report.entries += 1;
    report.bytes += text.len() as u64;
    let mut tar = cairn_sdk::process::Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--file=-"])
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .spawn()?;
    let size = size_of(BASE_TAR)?;
    tar.pump_stdin(snapshot::open(BASE_TAR)?)?;
    let mut members = std::collections::BTreeSet::new();
    tar.for_each_line(|line| {
        let line = String::from_utf8_lossy(line);
        let Some((name, problem)) = member(&line) else {
            report
                .problems
                .push(format!("{BASE_TAR}: unreadable listing line {line:?}"));
            return Ok(());
        };
        if let Some(problem) = problem {
            report
                .problems
                .push(format!("{BASE_TAR}: {name}: {problem}"));
        }
        members.insert(name);
        Ok(())
    })?;
    if let Err(e) = tar.wait()?.check(&format!("tar reading {BASE_TAR}")) {
        report.problems.push(e.to_string());
    }
    for name in REQUIRED {
        if !members.contains(name) {
            report.problems.push(format!(
                "{BASE_TAR}: {name} is missing: this is no complete base backup"
            ));
        }
    }
    report.entries += members.len() as u64;
    report.bytes += size;
    log::info(&format!("{BASE_TAR}: {} members read", members.len()));
    Ok(report)
}

/// A line of `tar --list --verbose --numeric-owner`: the member's name,
/// and what is wrong with it for a data directory (PostgreSQL writes
/// regular files and directories into a tar on standard output: no link,
/// no device, no set-ID or sticky bit).
fn member(line: &str) -> Option<(String, Option<String>)> {
    let mut fields = line.splitn(6, ' ').filter(|f| !f.is_empty());
    let mode = fields.next()?;
    // owner, size, date, time, then the name (and `-> target` for a link).
    let rest = line.split_whitespace().nth(4).and_then(|time| {
        let at = line.find(&format!(" {time} "))?;
        Some(&line[at + time.len() + 2..])
    })?;
    let (name, _) = rest.split_once(" -> ").unwrap_or((rest, ""));
    let name = name
        .trim_start_matches("./")
        .trim_end_matches('/')
        .to_string();
    let kind = mode.chars().next()?;
    let problem = match kind {
        '-' | 'd' => None,
        // `pg_basebackup` writes to standard output only for a cluster
        // without tablespaces, so not even pg_tblspc holds a link.
        'l' => Some("a symbolic link".to_string()),
        'h' => Some("a hard link".to_string()),
        other => Some(format!("not a regular file or directory (type {other:?})")),
    };
    let problem = problem.or_else(|| {
        mode.chars()
            .any(|c| matches!(c, 's' | 'S' | 't' | 'T'))
            .then(|| format!("mode {mode} has a set-ID or sticky bit"))
    });
    Some((name, problem))
}

/// The recorded size of the snapshot's file `path`.
fn size_of(path: &str) -> Result<u64, Error> {
    while let Some(entry) = snapshot::next_entry()? {
        if entry.path == path {
            return Ok(entry.meta.size.unwrap_or(0));
        }
    }
    Err(Error::NotFound(format!("{path} is not in the snapshot")))
}

/// Whether the snapshot being restored holds a physical backup.
pub fn in_snapshot() -> Result<bool, Error> {
    match snapshot::open(BASE_TAR) {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Result<Config, Error> {
        cairn_sdk::parse_value(&json)
    }

    #[test]
    fn logical_keys_are_refused_in_physical_mode_by_name() {
        for (key, value) in [
            ("databases", serde_json::json!(["shop"])),
            ("globals", serde_json::json!(true)),
            ("quiesce-sql", serde_json::json!("SELECT 1")),
            ("table", serde_json::json!("t")),
        ] {
            let c = config(serde_json::json!({ "mode": "physical", key: value })).unwrap();
            let err = refuse_logical_keys(&c).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let c = config(serde_json::json!({ "mode": "physical", "target": "/x" })).unwrap();
        assert!(refuse_logical_keys(&c).is_ok());
        assert!(config(serde_json::json!({ "mode": "incremental" })).is_err());
    }

    #[test]
    fn listing_lines_are_read_and_what_no_data_directory_holds_is_named() {
        let ok = member("-rw------- 108/114 3 2026-12-07 19:16 global/pg_control").unwrap();
        assert_eq!(ok, ("global/pg_control".to_string(), None));
        let dir = member("drwx------ 108/114 0 2026-12-07 19:16 pg_wal/").unwrap();
        assert_eq!(dir, ("pg_wal".to_string(), None));
        let spaced = member("-rw------- 108/114 3 2026-12-07 19:16 a name  with spaces").unwrap();
        assert_eq!(spaced.0, "a name  with spaces");
        let tblspc =
            member("lrwxrwxrwx 108/114 0 2026-12-07 19:16 pg_tblspc/16384 -> /etc").unwrap();
        assert_eq!(tblspc.0, "pg_tblspc/16384");
        assert!(tblspc.1.is_some_and(|p| p.contains("symbolic link")));
        for (line, problem) in [
            ("brw-rw-rw- 0/0 7,0 1970-01-01 00:00 dev_sda", "type 'b'"),
            ("prw-rw-rw- 0/0 0 1970-01-01 00:00 fifo", "type 'p'"),
            ("-rwsr-xr-x 0/0 10 1970-01-01 00:00 suid_sh", "set-ID"),
            (
                "lrwxrwxrwx 0/0 0 1970-01-01 00:00 base/1/x -> /etc/passwd",
                "symbolic link",
            ),
            ("hrw------- 0/0 0 1970-01-01 00:00 a link to b", "hard link"),
        ] {
            let (_, found) = member(line).unwrap();
            assert!(
                found.as_deref().is_some_and(|f| f.contains(problem)),
                "{line}: {found:?}"
            );
        }
        assert!(member("garbage").is_none());
    }

    #[test]
    fn answers_are_split_into_exactly_the_fields_asked_for() {
        let row = vec![
            "0/7000028|000000010000000000000007|2026-12-07T15:40:55.512927Z|745:745:".to_string(),
        ];
        assert_eq!(fields(&row, 4, "x").unwrap()[1], "000000010000000000000007");
        assert!(fields(&row, 3, "x").is_err());
        assert!(fields(&[], 4, "x").is_err());
        assert!(fields(&[row[0].clone(), row[0].clone()], 4, "x").is_err());
    }
}
