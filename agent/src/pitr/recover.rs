//! Recovery of a restored base backup (docs/design/pitr.md §8, steps 3
//! to 6): the settings Cairn writes, the server started as the data
//! directory's owner, and what it reached, read from its log and asked of
//! it over its private socket.

use super::lsn::Lsn;
use super::plan::Target;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// What the server does at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Stay in recovery, paused, readable (hot standby).
    Pause,
    /// End recovery and open for writes on a new timeline.
    Promote,
    /// Stop.
    Shutdown,
}

impl Action {
    /// PostgreSQL's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Promote => "promote",
            Action::Shutdown => "shutdown",
        }
    }
}

/// The user who owns a data directory.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Their uid.
    pub uid: u32,
    /// Their gid.
    pub gid: u32,
    /// Their name (the role the checks connect as).
    pub name: String,
    /// Their groups (the server may need one to read its key, say).
    pub groups: Vec<u32>,
}

impl Owner {
    /// The owner of data directory `data` (of its `PG_VERSION`).
    pub fn of(data: &Path) -> Result<Owner, String> {
        let meta = std::fs::metadata(data.join("PG_VERSION"))
            .map_err(|e| format!("{}: not a PostgreSQL data directory ({e})", data.display()))?;
        let name = user_name(meta.uid()).ok_or_else(|| {
            format!(
                "{}: its owner, uid {}, has no user name",
                data.display(),
                meta.uid()
            )
        })?;
        let groups = group_list(&name, meta.gid());
        Ok(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            name,
            groups,
        })
    }

    /// `command` runs as this user (from root; as itself otherwise), in a
    /// session of its own, with no way to gain privileges.
    fn apply(&self, command: &mut std::process::Command) -> Result<(), String> {
        let me = rustix::process::getuid().as_raw();
        if me != self.uid && me != 0 {
            return Err(format!(
                "the data directory belongs to {} (uid {}): run the restore as root or as {}",
                self.name, self.uid, self.name
            ));
        }
        let switch = (me != self.uid).then(|| (self.uid, self.gid, self.groups.clone()));
        // SAFETY: system calls only (setgroups, setgid, setuid, setsid,
        // prctl) on memory allocated before the fork, as a forked child
        // may.
        unsafe {
            command.pre_exec(move || {
                if let Some((uid, gid, groups)) = &switch
                    && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(*gid) != 0
                        || libc::setuid(*uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .current_dir("/");
        Ok(())
    }
}

/// The groups of user `name`, whose primary group is `gid`.
fn group_list(name: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: groups holds n entries; getgrouplist writes at most n
        // and says how many it has.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= before {
            n = before * 2;
        }
        if n > 65536 {
            return vec![gid];
        }
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buf, pwd and result live for the call; the name is copied
    // out before they go.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Quote `s` for a PostgreSQL configuration file.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quote `s` for the shell that runs `restore_command`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The recovery settings.
pub struct Settings<'a> {
    /// The command that fetches WAL (`%f %p` at its end).
    pub restore_command: String,
    /// Where to stop.
    pub target: &'a Target,
    /// The timeline to follow.
    pub timeline: u32,
    /// What to do there.
    pub action: Action,
    /// Starts every line the server logs (`log_line_prefix`): a client
    /// cannot write a line that starts with it (a role name with a
    /// newline, say), so the restore believes only lines that do.
    pub log_nonce: String,
}

impl Settings<'_> {
    /// The lines appended to `postgresql.auto.conf`.
    pub fn lines(&self) -> String {
        let mut s = format!(
            "# Point-in-time recovery settings written by cairn {} ({})\n",
            env!("CARGO_PKG_VERSION"),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        s.push_str(&format!(
            "restore_command = {}\n",
            conf_quote(&self.restore_command)
        ));
        match self.target {
            Target::Time(t) => s.push_str(&format!(
                "recovery_target_time = {}\n",
                conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            )),
            Target::Lsn(l) => s.push_str(&format!("recovery_target_lsn = '{l}'\n")),
            Target::Xid(x) => s.push_str(&format!("recovery_target_xid = '{x}'\n")),
            Target::Latest => {}
        }
        if *self.target != Target::Latest {
            s.push_str("recovery_target_inclusive = on\n");
            s.push_str(&format!(
                "recovery_target_action = '{}'\n",
                self.action.name()
            ));
        }
        // A number, never 'latest': a target before a fork must not
        // follow a newer timeline.
        s.push_str(&format!("recovery_target_timeline = '{}'\n", self.timeline));
        // The copy never pushes WAL into the source's archive.
        s.push_str("archive_mode = off\n");
        s.push_str(&format!(
            "log_line_prefix = '{} %m [%p] '\n",
            self.log_nonce
        ));
        s
    }

    /// Write them into data directory `data` (appended to
    /// `postgresql.auto.conf`, which PostgreSQL reads last) and create
    /// `recovery.signal`, both owned like the directory.
    pub fn write(&self, data: &Path, owner: &Owner) -> Result<(), String> {
        let io = |what: &Path, e: std::io::Error| format!("writing {}: {e}", what.display());
        let auto = data.join("postgresql.auto.conf");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&auto)
            .map_err(|e| io(&auto, e))?;
        file.write_all(format!("\n{}", self.lines()).as_bytes())
            .map_err(|e| io(&auto, e))?;
        file.sync_all().map_err(|e| io(&auto, e))?;
        let signal = data.join("recovery.signal");
        std::fs::write(&signal, "").map_err(|e| io(&signal, e))?;
        for path in [&auto, &signal] {
            std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                .map_err(|e| io(path, e))?;
        }
        Ok(())
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Where the server is and how to reach it.
#[derive(Clone, Debug)]
pub struct Server {
    /// Its data directory.
    pub data: PathBuf,
    /// The directory of its socket (private to the owner).
    pub socket_dir: PathBuf,
    /// Its port (the socket's name; TCP only with `--port`).
    pub port: u16,
    /// Its log.
    pub log: PathBuf,
    /// Its owner.
    pub owner: Owner,
    /// What its own log lines start with.
    pub log_nonce: String,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
}

/// How to start it.
pub struct Start<'a> {
    /// `pg_ctl`.
    pub pg_ctl: &'a Path,
    /// A configuration file to start with (else the data directory's
    /// `postgresql.conf`, else a minimal one Cairn writes).
    pub conf: Option<&'a Path>,
    /// A TCP port on 127.0.0.1 (else a unix socket only).
    pub port: Option<u16>,
    /// The private directory of its socket.
    pub socket_dir: &'a Path,
    /// What its log lines start with (see [`Settings::log_nonce`]).
    pub log_nonce: &'a str,
}

/// Start the server on restored data directory `data` as its owner.
pub fn start(data: &Path, owner: &Owner, how: &Start<'_>) -> Result<Server, String> {
    for p in [data, how.socket_dir] {
        if p.to_str()
            .is_none_or(|s| s.contains(['\'', '"', '\\', '\n']))
        {
            return Err(format!(
                "{}: a path with quotes, backslashes or newlines cannot be given to pg_ctl",
                p.display()
            ));
        }
    }
    let conf = match how.conf {
        Some(c) => Some(c.to_path_buf()),
        None if data.join("postgresql.conf").exists() => None,
        None => {
            // Debian keeps a cluster's configuration in /etc: its base
            // backups have none. The owner alone, over the socket.
            let hba = data.join("cairn-recovery-hba.conf");
            let ident = data.join("cairn-recovery-ident.conf");
            let conf = data.join("cairn-recovery.conf");
            let files = [
                (&hba, format!("local all {} peer\n", owner.name)),
                (&ident, String::new()),
                (
                    &conf,
                    format!(
                        "# Written by cairn restore: the minimal configuration of a recovered copy.\nhba_file = {}\nident_file = {}\n",
                        conf_quote(hba.to_str().unwrap_or_default()),
                        conf_quote(ident.to_str().unwrap_or_default())
                    ),
                ),
            ];
            for (path, text) in files {
                std::fs::write(path, text)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Some(conf)
        }
    };
    let port = how.port.unwrap_or(5432);
    let log = data.join("cairn-recovery.log");
    let mut options = format!(
        "-c port={port} -c unix_socket_directories='{}' -c hot_standby=on -c lc_messages=C -c logging_collector=off -c log_destination=stderr -c cluster_name=cairn-recovery",
        how.socket_dir.display()
    );
    options.push_str(if how.port.is_some() {
        " -c listen_addresses=127.0.0.1"
    } else {
        " -c listen_addresses=''"
    });
    if let Some(c) = &conf {
        if c.to_str()
            .is_none_or(|s| s.contains(['\'', '"', '\\', '\n']))
        {
            return Err(format!(
                "{}: a path with quotes or backslashes cannot be given to pg_ctl",
                c.display()
            ));
        }
        options.push_str(&format!(
            " -c config_file='{}' -c data_directory='{}' -c external_pid_file=''",
            c.display(),
            data.display()
        ));
    }
    let mut command = std::process::Command::new(how.pg_ctl);
    command
        .args(["start", "--no-wait", "-D"])
        .arg(data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&options)
        .stdin(std::process::Stdio::null());
    owner.apply(&mut command)?;
    let out = command
        .output()
        .map_err(|e| format!("starting {}: {e}", how.pg_ctl.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} start: {}{}\nits log ({}):\n{}",
            how.pg_ctl.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log.display(),
            tail(&log)
        ));
    }
    Ok(Server {
        data: data.to_path_buf(),
        socket_dir: how.socket_dir.to_path_buf(),
        port,
        log,
        owner: owner.clone(),
        log_nonce: how.log_nonce.to_string(),
        pg_ctl: how.pg_ctl.to_path_buf(),
    })
}

/// The last 30 lines of `log`.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Where recovery ended up.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reached {
    /// `paused`, `promoted` or `shut down`.
    pub state: String,
    /// The log's "recovery stopping …" line, if the target stopped it.
    pub stopped: Option<String>,
    /// The commit time of the last transaction replayed.
    pub commit_time: Option<String>,
    /// The last WAL position replayed.
    pub lsn: Option<String>,
    /// The timeline promotion chose.
    pub new_timeline: Option<u32>,
}

/// What the log says so far.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogState {
    stopped: Option<String>,
    last_commit: Option<String>,
    paused: bool,
    new_timeline: Option<u32>,
    ready: bool,
    shut_down: bool,
    fatal: Option<String>,
}

/// What the server's own lines of `text` (those starting with `nonce`)
/// say.
fn read_log(text: &str, nonce: &str) -> LogState {
    let mut s = LogState::default();
    for line in text.lines() {
        let Some(line) = line.strip_prefix(nonce) else {
            continue;
        };
        let msg = line.split_once(" LOG:  ").map(|(_, m)| m);
        if let Some(m) = msg {
            if m.starts_with("recovery stopping ") {
                s.stopped = Some(m.to_string());
            } else if let Some(t) = m.strip_prefix("last completed transaction was at log time ") {
                s.last_commit = Some(t.to_string());
            } else if m.starts_with("pausing at the end of recovery")
                || m.starts_with("recovery has paused")
            {
                s.paused = true;
            } else if let Some(t) = m.strip_prefix("selected new timeline ID: ") {
                s.new_timeline = t.trim().parse().ok();
            } else if m.starts_with("database system is ready to accept connections") {
                s.ready = true;
            } else if m.starts_with("shutdown at recovery target")
                || m.starts_with("database system is shut down")
            {
                s.shut_down = true;
            }
        }
        for level in [" FATAL:  ", " PANIC:  "] {
            if let Some((_, m)) = line.split_once(level) {
                s.fatal = Some(m.to_string());
            }
        }
    }
    s
}

/// Whether the server of `data` runs (its postmaster.pid names a live process).
fn running(data: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    pid.lines()
        .next()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

impl Server {
    /// Wait until recovery is done as `action` says (or, for
    /// [`Target::Latest`], promoted); report what it reached. A server
    /// that stops on its own, or a FATAL in its log, fails with the log.
    pub async fn watch(
        &self,
        action: Action,
        latest: bool,
        psql: Option<&Path>,
    ) -> Result<Reached, String> {
        let fail = |why: &str| {
            format!(
                "recovery failed: {why}\nthe server's log ({}):\n{}",
                self.log.display(),
                tail(&self.log)
            )
        };
        let mut seen_running = false;
        let began = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let log = read_log(&text, &self.log_nonce);
            let up = running(&self.data);
            seen_running |= up;
            let done = if latest || action == Action::Promote {
                log.new_timeline.is_some() && log.ready
            } else if action == Action::Pause {
                log.paused
            } else {
                log.shut_down && !up && log.stopped.is_some()
            };
            if done {
                let mut reached = Reached {
                    state: match (latest, action) {
                        (true, _) | (_, Action::Promote) => "promoted",
                        (_, Action::Pause) => "paused",
                        (_, Action::Shutdown) => "shut down",
                    }
                    .to_string(),
                    stopped: log.stopped.clone(),
                    commit_time: log.last_commit.clone(),
                    lsn: None,
                    new_timeline: log.new_timeline,
                };
                if up && let Some(psql) = psql {
                    self.ask(psql, &mut reached).await;
                }
                return Ok(reached);
            }
            // Only the server's end fails the restore: a FATAL of one
            // client's connection is not recovery's.
            if !up && (seen_running || log.shut_down) {
                let why = log
                    .fatal
                    .unwrap_or_else(|| "the server stopped before reaching the target".into());
                return Err(fail(&why));
            }
            if !up && !seen_running && began.elapsed() > std::time::Duration::from_secs(120) {
                return Err(fail("the server did not start within 120 s"));
            }
        }
    }

    /// Stop the server at once (a failed restore leaves no server
    /// running on a half-recovered copy); whether it ran.
    pub fn stop_now(&self) -> bool {
        if !running(&self.data) {
            return false;
        }
        let mut command = std::process::Command::new(&self.pg_ctl);
        command
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.owner.apply(&mut command).is_ok() {
            let _ = command.status();
        }
        true
    }

    /// Ask the server, as its owner, what it replayed last.
    async fn ask(&self, psql: &Path, reached: &mut Reached) {
        let mut command = std::process::Command::new(psql);
        command
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", &self.owner.name])
            .args(["-d", "postgres", "-X", "-A", "-t", "-F", "|", "-c"])
            .arg("SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), pg_last_wal_replay_lsn()");
        if self.owner.apply(&mut command).is_err() {
            return;
        }
        let Ok(Ok(out)) = tokio::task::spawn_blocking(move || command.output()).await else {
            return;
        };
        if !out.status.success() {
            tracing::warn!(
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "Could not ask the recovered server what it replayed last."
            );
            return;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.trim().split('|');
        if let Some(t) = fields.next().filter(|t| !t.is_empty()) {
            reached.commit_time = Some(t.to_string());
        }
        reached.lsn = fields
            .next()
            .and_then(|l| l.parse::<Lsn>().ok())
            .map(|l| l.to_string());
    }
}

/// Make `dir` (new) the private directory of the owner: 0700, theirs.
pub fn private_dir(owner: &Owner) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-pitr-")
        .tempdir()
        .map_err(|e| format!("creating the recovery's socket directory: {e}"))?
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .and_then(|()| std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid)))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Stop the server of data directory `data` as its owner (`mode`: `fast`
/// or `immediate`), waiting for it.
pub fn stop(pg_ctl: &Path, data: &Path, owner: &Owner, mode: &str) -> Result<(), String> {
    let mut command = std::process::Command::new(pg_ctl);
    command
        .args(["stop", "-m", mode, "-w", "-D"])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    owner.apply(&mut command)?;
    let out = command
        .output()
        .map_err(|e| format!("{} stop: {e}", pg_ctl.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} stop -D {}: {}",
            pg_ctl.display(),
            data.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Run `sql` on database `db` of the server whose socket is in
/// `socket_dir` on `port`, as its owner; the rows, `|`-separated.
pub fn query(
    psql: &Path,
    socket_dir: &Path,
    port: u16,
    owner: &Owner,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let mut command = std::process::Command::new(psql);
    command
        .arg("-h")
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-U", &owner.name, "-d", db])
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    owner.apply(&mut command)?;
    let out = command
        .output()
        .map_err(|e| format!("{}: {e}", psql.display()))?;
    if !out.status.success() {
        return Err(format!(
            "psql on the recovered copy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the owner can enter `dir` (the server runs as them).
pub fn owner_can_enter(owner: &Owner, dir: &Path) -> Result<(), String> {
    let mut command = std::process::Command::new("test");
    command.arg("-x").arg(dir);
    owner.apply(&mut command)?;
    match command.status() {
        Ok(s) if s.success() => Ok(()),
        _ => Err(format!(
            "{} cannot enter {}: the server runs as its data directory's owner; make the directories above it traversable for {} (chmod o+x)",
            owner.name,
            dir.display(),
            owner.name
        )),
    }
}

/// Whether the owner can run `program` (restore_command runs it as them).
pub fn owner_can_run(owner: &Owner, program: &Path) -> Result<(), String> {
    let mut command = std::process::Command::new(program);
    command
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    owner.apply(&mut command)?;
    match command.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{} cannot run {} ({}): the server runs restore_command as its owner; install cairn where {} can run it (/usr/local/bin, say)",
            owner.name,
            program.display(),
            String::from_utf8_lossy(&o.stderr).trim(),
            owner.name
        )),
        Err(e) => Err(format!(
            "{} cannot run {} ({e}): the server runs restore_command as its owner; install cairn where {} can run it (/usr/local/bin, say)",
            owner.name,
            program.display(),
            owner.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_target_and_a_numbered_timeline_and_stop_archiving() {
        let t: chrono::DateTime<chrono::Utc> = "2026-12-07T10:04:05.123456Z".parse().unwrap();
        let target = Target::Time(t);
        let s = Settings {
            restore_command: "'/usr/local/bin/cairn' wal-fetch --socket '/tmp/it''s' %f %p".into(),
            target: &target,
            timeline: 2,
            action: Action::Pause,
            log_nonce: "n0nce".into(),
        };
        let lines = s.lines();
        assert!(lines.contains("restore_command = '''/usr/local/bin/cairn'' wal-fetch --socket ''/tmp/it''''s'' %f %p'\n"), "{lines}");
        assert!(
            lines.contains("recovery_target_time = '2026-12-07 10:04:05.123456+00'\n"),
            "{lines}"
        );
        assert!(lines.contains("recovery_target_action = 'pause'\n"));
        assert!(lines.contains("recovery_target_timeline = '2'\n"));
        assert!(lines.contains("archive_mode = off\n"));
        assert!(lines.contains("log_line_prefix = 'n0nce %m [%p] '\n"));
        let latest = Settings {
            target: &Target::Latest,
            ..s
        };
        let lines = latest.lines();
        assert!(!lines.contains("recovery_target_action"), "{lines}");
        assert!(!lines.contains("recovery_target_time ="), "{lines}");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn only_the_server_s_own_log_lines_say_where_recovery_stopped() {
        let log = "n0nce 2026-12-07 15:40:56.001 UTC [9] LOG:  starting point-in-time recovery to 2026-12-07 15:40:55.512751+00
n0nce 2026-12-07 15:40:56.300 UTC [9] LOG:  recovery stopping before commit of transaction 26529, time 2026-12-07 15:40:55.512927+00
n0nce 2026-12-07 15:40:56.300 UTC [9] LOG:  pausing at the end of recovery
";
        let s = read_log(log, "n0nce");
        assert!(s.paused);
        assert_eq!(
            s.stopped.as_deref(),
            Some(
                "recovery stopping before commit of transaction 26529, time 2026-12-07 15:40:55.512927+00"
            )
        );
        let promoted = "n0nce x LOG:  selected new timeline ID: 3\nn0nce x LOG:  last completed transaction was at log time 2026-12-07 15:40:55.5+00\nn0nce x LOG:  database system is ready to accept connections\n";
        let s = read_log(promoted, "n0nce");
        assert_eq!(s.new_timeline, Some(3));
        assert!(s.ready);
        assert_eq!(s.last_commit.as_deref(), Some("2026-12-07 15:40:55.5+00"));
        let failed =
            "n0nce x FATAL:  recovery ended before configured recovery target was reached\n";
        assert_eq!(
            read_log(failed, "n0nce").fatal.as_deref(),
            Some("recovery ended before configured recovery target was reached")
        );
        // A client's role name with a newline writes a line of its own:
        // without the prefix, it says nothing.
        let forged = "n0nce x FATAL:  role \"x\nLOG:  pausing at the end of recovery\" does not exist\nLOG:  pausing at the end of recovery\nother LOG:  selected new timeline ID: 9\n";
        let s = read_log(forged, "n0nce");
        assert!(!s.paused);
        assert_eq!(s.new_timeline, None);
    }
}
