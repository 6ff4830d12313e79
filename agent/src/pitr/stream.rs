//! `cairn wal-stream`: a granted `pg_receivewal` writes the WAL into a
//! spool; every flush stores what changed into the job's open window
//! ([`super::archive`]) and then lets the spool go (docs/design/pitr.md §5).
//!
//! Two slots keep WAL on the server until the repository holds it: the
//! receiver's (`<slot>`, which follows what the receiver fsynced into the
//! spool) and a hold slot (`<slot>_stored`) that this loop advances only
//! to what a saved snapshot holds. So neither a killed agent nor a lost
//! spool opens a gap while the server lives; the cost is WAL kept on the
//! server while the repository is unreachable.
//!
//! `--no-loop` leaves retries to this loop: every exit of the receiver is
//! logged with its standard error's tail and it starts again after 1, 2,
//! 4 ... 30 seconds. Flushes take the repository's shared lock, so prune
//! (exclusive) waits for a flush and a flush for a prune; after a prune
//! the index is read again before anything is deduplicated against it.

use super::PitrError;
use super::archive::{Stream, WindowWriter};
use super::lsn::{Lsn, Segment, SegmentSize, WalFile};
use super::spool::Spool;
use crate::ops::Store;
use crate::runtime::{Grants, Spawn, spawn_confined};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Where the server is and how the job reaches it (the adapter config's
/// keys of the same names).
#[derive(Clone, Debug)]
pub struct Connection {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The role (it needs REPLICATION).
    pub user: String,
    /// The granted secret holding the password, if any.
    pub password_secret: Option<String>,
}

impl Connection {
    /// The server job `job` names: its adapter config's `host`, `port`,
    /// `user` and `password-secret`.
    pub fn of_job(name: &str, job: &crate::config::JobConfig) -> Result<Connection, String> {
        let adapter = job.config.clone().unwrap_or_default();
        let text = |key: &str, default: &str| -> Result<String, String> {
            match adapter.get(key) {
                None => Ok(default.to_string()),
                Some(toml::Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(format!("job {name}: config.{key} = {v} is not a string")),
            }
        };
        let port = match adapter.get("port") {
            None => 5432,
            Some(toml::Value::Integer(p)) => u16::try_from(*p)
                .map_err(|_| format!("job {name}: config.port {p} is out of range"))?,
            Some(v) => return Err(format!("job {name}: config.port = {v} is not a number")),
        };
        Ok(Connection {
            host: text("host", "127.0.0.1")?,
            port,
            user: text("user", "postgres")?,
            password_secret: adapter
                .get("password-secret")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// The options every PostgreSQL client program takes to reach the server.
    fn args(&self) -> Vec<String> {
        vec![
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--username={}", self.user),
            "--no-password".into(),
        ]
    }

    /// The password, by reference to the granted secret.
    fn secret_env(&self) -> Vec<(String, String)> {
        self.password_secret
            .iter()
            .map(|s| ("PGPASSWORD".to_string(), s.clone()))
            .collect()
    }
}

/// What a stream needs.
pub struct Options {
    /// The job.
    pub job: String,
    /// The host name recorded in window snapshots.
    pub host: String,
    /// The job's grants (`pg_receivewal`, `psql`, the server's endpoint, the secret).
    pub grants: Grants,
    /// The server.
    pub connection: Connection,
    /// The receiver's slot; the hold slot is `<slot>_stored`.
    pub slot: String,
    /// The spool directory.
    pub spool: PathBuf,
    /// Store the partial at least this often.
    pub flush: Duration,
    /// Close a window after this long.
    pub window: Duration,
    /// zstd level.
    pub compression: i32,
    /// Resolves when the stream is to stop (after a last flush).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Called after every flush and receiver event.
    pub on_status: Box<dyn Fn(&Status) + Send + Sync>,
}

/// The stream's state, after each flush.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// `starting`, `streaming`, `waiting-lock`, `receiver-restarting` or
    /// `stopped`.
    pub state: String,
    /// The timeline being archived.
    pub timeline: Option<u32>,
    /// The server's WAL position when last asked.
    pub server_lsn: Option<String>,
    /// What the repository holds up to.
    pub stored_lsn: Option<String>,
    /// Bytes between the two.
    pub lag_bytes: Option<u64>,
    /// How old, at most, the oldest WAL not yet in the repository is: the
    /// time since the server was last seen at a position the repository
    /// now holds (0 when it holds all the server had). Its resolution is
    /// the flush interval.
    pub lag_seconds: Option<f64>,
    /// When a flush last stored something (RFC 3339).
    pub last_stored_at: Option<String>,
    /// Files stored so far by this stream.
    pub files_stored: u64,
    /// Times the receiver was started again.
    pub receiver_restarts: u64,
    /// Spool files found damaged when read record by record (not stored;
    /// a complete one is fetched again).
    #[serde(default)]
    pub damaged_files: u64,
    /// The receiver's last error.
    pub error: Option<String>,
    /// Bytes in the spool.
    pub spool_bytes: u64,
}

/// A running `pg_receivewal`.
struct Receiver {
    child: tokio::process::Child,
    tail: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Receiver {
    /// Stop it: SIGINT (pg_receivewal fsyncs and exits 0), SIGKILL after 10 s.
    async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Run the stream until `o.stop` says so. Returns the last status.
pub async fn run(store: &Store, mut o: Options) -> Result<Status, PitrError> {
    let fail = |what: &str, e: std::io::Error| {
        PitrError::Archive(format!("WAL spool {}: {what}: {e}", o.spool.display()))
    };
    claim_spool(&o.spool, &o.job)?;
    // streamer.lock marks the directory as a spool; the lock itself is
    // on the directory, which emptying the spool cannot remove.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(o.spool.join("streamer.lock"))
        .map_err(|e| fail("opening streamer.lock", e))?;
    let lock_file = std::fs::File::open(&o.spool).map_err(|e| fail("opening it", e))?;
    rustix::fs::flock(
        &lock_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(|_| {
        PitrError::Archive(format!(
            "job {}: another wal-stream holds the spool {}",
            o.job,
            o.spool.display()
        ))
    })?;
    let pg = Pg {
        grants: &o.grants,
        conn: &o.connection,
        job: &o.job,
    };
    let identity = pg
        .query("SELECT system_identifier, (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), pg_is_in_recovery() FROM pg_control_system()")
        .await?;
    let fields: Vec<&str> = identity.trim().split('|').collect();
    let (system, size) = match fields.as_slice() {
        [system, size, "f"] => (
            system.parse::<u64>().ok(),
            size.parse::<u64>()
                .ok()
                .and_then(|s| SegmentSize::new(s).ok()),
        ),
        [_, _, "t"] => {
            return Err(PitrError::Archive(format!(
                "job {}: {}:{} is a standby; stream from the primary",
                o.job, o.connection.host, o.connection.port
            )));
        }
        _ => (None, None),
    };
    let (Some(system), Some(size)) = (system, size) else {
        return Err(PitrError::Archive(format!(
            "job {}: unexpected answer from the server: {identity:?}",
            o.job
        )));
    };
    ensure_slots(&pg, &o.slot).await?;
    let hold = format!("{}_stored", o.slot);
    let repo = store.repo.clone();
    {
        let _lock = repo.lock(false).await?;
        repo.load_index().await?;
        repo.adopt_unindexed_packs().await?;
    }
    let mut index_files = index_names(&repo).await?;
    let mut writer = {
        let _lock = repo.lock(false).await?;
        WindowWriter::resume(
            repo.clone(),
            Stream {
                job: o.job.clone(),
                host: o.host.clone(),
                system,
                size,
                compression: o.compression,
            },
        )
        .await?
    };
    // A spool that lost its files (a new disk, a wiped state directory)
    // would let the receiver go on from its slot, past WAL the repository
    // lacks: it starts after the newest stored segment instead.
    // Short empty partials go first: they are not WAL, and would hide an
    // empty spool.
    clear_short_partials(&o.spool, size, &o.job)?;
    // Segments a previous streamer refused are fetched again.
    writer.load_refused(&o.spool);
    let present = Spool::scan(&o.spool, size).map_err(|e| fail("reading it", e))?;
    if present.complete.is_empty()
        && present.partial.is_empty()
        && let Some(seg) = writer.seed(&o.spool).await?
    {
        tracing::info!(job = %o.job, segment = %seg.name(size), "Seeded the empty spool with the newest stored segment.");
    }
    let mut status = Status {
        state: "starting".into(),
        ..Default::default()
    };
    let mut receiver: Option<Receiver> = None;
    let mut next_start = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut started_at = Instant::now();
    let mut last_flush = Instant::now() - o.flush;
    let mut flushed_partial: Option<(WalFile, super::spool::Seen)> = None;
    let mut opened = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut stored_tag = writer.resumed_stored();
    let mut stopping = false;
    // The gap the receiver was last started again for, and when.
    let mut refetching: Option<(Segment, Instant)> = None;
    // The server's position as seen at each flush, oldest first: how old
    // the WAL not yet stored is.
    let mut seen: std::collections::VecDeque<(Instant, Lsn)> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = o.stop.changed(), if !stopping => stopping = true,
        }
        stopping |= *o.stop.borrow();
        // The receiver: started, watched, restarted with backoff.
        if let Some(r) = &mut receiver
            && let Ok(Some(exit)) = r.child.try_wait()
        {
            let tail = r
                .tail
                .lock()
                .expect("tail")
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ");
            tracing::warn!(job = %o.job, %exit, stderr = %tail, "pg_receivewal exited; it starts again after a pause.");
            // (The server's message, in its language; in English this
            // one means the archive cannot continue without a gap.)
            let hint = if tail.contains("has already been removed") {
                ": the server no longer has WAL the archive lacks; point-in-time recovery cannot cross this gap, so take a new base backup (and check max_slot_wal_keep_size and the slots)"
            } else {
                ""
            };
            status.error = Some(format!("pg_receivewal {exit}: {tail}{hint}"));
            status.state = "receiver-restarting".into();
            if started_at.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            next_start = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            receiver = None;
            (o.on_status)(&status);
        }
        if receiver.is_none() && !stopping && Instant::now() >= next_start {
            clear_short_partials(&o.spool, size, &o.job)?;
            // A failover's new primary has neither slot yet.
            if status.state == "receiver-restarting"
                && let Err(e) = ensure_slots(&pg, &o.slot).await
            {
                tracing::warn!(job = %o.job, error = %e, "Could not make sure the slots exist.");
            }
            // A server whose history left the archive's timeline before
            // the WAL the archive holds of it ends: that timeline is
            // frozen, and the receiver starts at the fork.
            match find_fork(&pg, &writer, &o.spool, size, system).await {
                Ok(Lineage::Continues) => {}
                Ok(Lineage::Forked(fork)) => {
                    // (A prune holds the repository: again at the next tick.)
                    let Some(_lock) = lock_waiting(&repo, &o.job, false).await? else {
                        continue;
                    };
                    let spool = Spool::scan(&o.spool, size).map_err(|e| fail("reading it", e))?;
                    let flushed = writer
                        .freeze(&o.spool, &spool, stored_tag, fork.tli)
                        .await?;
                    status.files_stored += flushed.files.len() as u64;
                    seed_at_fork(&o.spool, size, &spool, &fork)
                        .map_err(|e| fail("seeding it at a fork", e))?;
                    let why = format!(
                        "the server's history (timeline {}) left timeline {} at {}, before the end of the WAL the archive holds of it: that timeline is kept as it is (restore it with --timeline {}) and the stream goes on from {} on the server's timeline",
                        fork.server_tli, fork.tli, fork.at, fork.tli, fork.at
                    );
                    tracing::warn!(job = %o.job, "{why}");
                    status.error = Some(why);
                }
                // A server of another lineage: the stream stops, saying so.
                Ok(Lineage::Foreign(why)) => return Err(PitrError::Archive(why)),
                // The receiver says what is wrong with the server, if
                // anything.
                Err(e) => {
                    tracing::warn!(job = %o.job, error = %e, "Could not read the server's timeline history.");
                }
            }
            receiver = Some(start_receiver(&o)?);
            if status.state == "receiver-restarting" {
                status.receiver_restarts += 1;
            }
            status.state = "streaming".into();
            started_at = Instant::now();
        }
        if stopping && let Some(r) = receiver.take() {
            r.stop().await;
        }
        let receiving = |spool: &Spool| {
            spool.receiving().and_then(|s| {
                spool
                    .partial
                    .get(&s)
                    .map(|seen| (WalFile::Partial(s), *seen))
            })
        };
        let look = Spool::scan(&o.spool, size).map_err(|e| fail("reading it", e))?;
        let new_file = look.complete.keys().any(|s| !writer.is_stored(*s))
            || look.history.keys().any(|t| !writer.has_history(*t));
        let partial_due = receiving(&look) != flushed_partial && last_flush.elapsed() >= o.flush;
        if !(new_file || partial_due || stopping) {
            continue;
        }
        // What the receiver has fsynced, read before the spool is looked
        // at again: what is stored then covers at least this.
        let received = pg.slot_lsn(&o.slot).await.unwrap_or(None);
        let spool = Spool::scan(&o.spool, size).map_err(|e| fail("reading it", e))?;
        let partial = receiving(&spool);
        // The window's own age (a restarted streamer goes on with it).
        let age = writer
            .opened()
            .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or_else(|| opened.elapsed());
        let close = new_file && age >= o.window;
        let _lock = match lock_waiting(&repo, &o.job, stopping).await? {
            Some(lock) => lock,
            // Forget or prune holds the repository: the spool (and the
            // slots) hold the WAL meanwhile; try again at the next tick.
            None => {
                if status.state != "waiting-lock" {
                    status.state = "waiting-lock".into();
                    (o.on_status)(&status);
                }
                continue;
            }
        };
        if status.state == "waiting-lock" {
            status.state = "streaming".into();
        }
        // A forget may have removed the open window: build on nothing of it.
        if writer.check_open().await? {
            status.error = Some("the open WAL window was removed from the repository; a new window started from what the spool holds".into());
        }
        // A prune or index rebuild since the last flush removed index
        // files: read the index again before deduplicating against it.
        let names = index_names(&repo).await?;
        if index_files.iter().any(|n| !names.contains(n)) {
            repo.load_index().await?;
        }
        // The version order of the window (wal-stored) never goes back.
        stored_tag = stored_tag
            .max(writer.stored_end())
            .max(received.unwrap_or_default());
        let flushed = writer.flush(&o.spool, &spool, stored_tag, close).await?;
        // What was listed before this flush: the next one asks whether any
        // of it went (this flush's own index file only adds).
        index_files = names;
        drop(_lock);
        if close {
            opened = Instant::now();
        }
        last_flush = Instant::now();
        flushed_partial = partial;
        status.files_stored += flushed.files.len() as u64;
        if writer.damaged() > status.damaged_files {
            status.damaged_files = writer.damaged();
            status.error = writer.last_damage().map(str::to_string);
        }
        if !flushed.files.is_empty() {
            status.last_stored_at =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        // The hold slot follows what the repository holds without a gap:
        // the gapless run of complete segments, and into the partial
        // right after it as far as the receiver had fsynced before the
        // scan (so at least that much was in the partial stored).
        let contiguous_end = writer.stored_end();
        // Only if the partial stored is the one looked at after `received`
        // was read (not one a rename race left behind).
        let scanned = partial.and_then(|(f, seen)| match f {
            WalFile::Partial(seg) => Some((seg, seen)),
            _ => None,
        });
        let in_partial = match (writer.partial_seen(), writer.contiguous(), received) {
            (Some((p, seen)), Some(c), Some(r))
                if Some((p, seen)) == scanned && p.segno == c.segno + 1 && r > contiguous_end =>
            {
                Some(r.min(size.end(p.segno)))
            }
            _ => None,
        };
        // No further than the last whole record the check read in it.
        let in_partial = in_partial.map(|r| match writer.partial_checked() {
            Some((p, end)) if Some(p) == writer.partial_seen().map(|(s, _)| s) => r.min(end),
            _ => contiguous_end,
        });
        let stored = in_partial.unwrap_or(contiguous_end);
        if stored > Lsn(0)
            && let Err(e) = pg
                .query(&format!(
                    "SELECT pg_replication_slot_advance('{hold}', GREATEST(restart_lsn, '{stored}'::pg_lsn)) FROM pg_replication_slots WHERE slot_name = '{hold}' AND restart_lsn IS NOT NULL"
                ))
                .await
        {
            // The server is away (a restart): the slot is advanced at a
            // later flush; the receiver's restart is handled above.
            tracing::warn!(job = %o.job, error = %e, "Could not advance the hold slot.");
            status.error = Some(e.to_string());
        }
        // Stored complete segments leave the spool, but the newest: the
        // receiver resumes after the newest complete file it finds.
        let newest = spool.complete.keys().next_back().copied();
        for seg in spool
            .complete
            .keys()
            .filter(|s| Some(**s) != newest && writer.is_stored(**s))
        {
            let path = o.spool.join(seg.name(size));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(fail(&format!("removing {}", path.display()), e));
            }
        }
        // A gap the spool will not fill (a segment lost from it, a
        // receiver that skipped ahead): the receiver starts again right
        // after the gapless run, from WAL the hold slot kept.
        // (Not again while the receiver fetches it: a minute for that.)
        if let Some(gap) = writer.gap()
            && !spool.complete.contains_key(&gap)
            && !stopping
            && refetching.is_none_or(|(g, t)| g != gap || t.elapsed() > Duration::from_secs(60))
        {
            refetching = Some((gap, Instant::now()));
            let name = gap.name(size);
            tracing::error!(job = %o.job, segment = %name, "A WAL segment is missing from the spool and the repository; the receiver starts again from it.");
            status.error = Some(format!(
                "WAL segment {name} was missing from the spool and the repository: fetched again from the server (the hold slot kept it)"
            ));
            if let Some(r) = receiver.take() {
                r.stop().await;
            }
            let now = Spool::scan(&o.spool, size).map_err(|e| fail("reading it", e))?;
            let after = now
                .complete
                .keys()
                .chain(now.partial.keys())
                .filter(|s| s.tli == gap.tli && s.segno >= gap.segno)
                .copied()
                .collect::<Vec<_>>();
            for s in after {
                for file in [s.name(size), format!("{}.partial", s.name(size))] {
                    let path = o.spool.join(&file);
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(fail(&format!("removing {}", path.display()), e));
                    }
                }
            }
            let before = Segment {
                tli: gap.tli,
                segno: gap.segno - 1,
            };
            if !now.complete.contains_key(&before) {
                let _lock = repo.lock(false).await?;
                // The end of the gapless run, from the repository; or, when
                // the gap is where the run would start (a first segment
                // refused), an empty partial of the gap's segment.
                if writer.seed(&o.spool).await?.is_none() {
                    writer
                        .placeholder(&o.spool, gap)
                        .map_err(|e| fail("seeding it at a gap", e))?;
                }
            }
            status.receiver_restarts += 1;
            next_start = Instant::now();
        }
        let server = pg.query("SELECT pg_current_wal_lsn()").await.ok();
        let server: Option<Lsn> = server.and_then(|s| s.trim().parse().ok());
        status.timeline = writer.timeline();
        status.stored_lsn = Some(stored.to_string());
        status.server_lsn = server.map(|s| s.to_string());
        status.lag_bytes = server.map(|s| s.0.saturating_sub(stored.0));
        if let Some(s) = server {
            seen.push_back((Instant::now(), s));
        }
        status.lag_seconds = lag_seconds(&mut seen, stored);
        status.spool_bytes = Spool::scan(&o.spool, size).map(|s| s.bytes()).unwrap_or(0);
        if stopping {
            status.state = "stopped".into();
            (o.on_status)(&status);
            return Ok(status);
        }
        (o.on_status)(&status);
    }
}

/// How the server's history relates to the WAL the archive holds.
enum Lineage {
    /// The receiver can go on where the archive ends.
    Continues,
    /// The server's history left the archive's timeline before that.
    Forked(Fork),
    /// The server's timeline does not descend from the archive's.
    Foreign(String),
}

/// Where the server's history left a timeline the archive holds WAL of
/// past that point.
struct Fork {
    /// The archive's timeline.
    tli: u32,
    /// Where the server's history left it.
    at: Lsn,
    /// The server's timeline.
    server_tli: u32,
}

/// Whether the server's history left the newest timeline the archive (or
/// the spool) holds before the WAL held of it ends: a restored copy that
/// was promoted while the original went on, or a new primary that never
/// got what the old one had already sent. `pg_receivewal` would ask it
/// for WAL it never had, and fail for ever.
async fn find_fork(
    pg: &Pg<'_>,
    writer: &WindowWriter,
    dir: &std::path::Path,
    size: SegmentSize,
    system: u64,
) -> Result<Lineage, PitrError> {
    let spool = Spool::scan(dir, size)
        .map_err(|e| PitrError::Archive(format!("WAL spool {}: {e}", dir.display())))?;
    let ours = spool
        .complete
        .keys()
        .chain(spool.partial.keys())
        .map(|s| s.tli)
        .chain(writer.newest_timeline())
        .max();
    let Some(ours) = ours else {
        return Ok(Lineage::Continues);
    };
    let ident = pg.replication("IDENTIFY_SYSTEM").await?;
    let server_tli: u32 = ident
        .trim()
        .split('|')
        .nth(1)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            PitrError::Archive(format!(
                "job {}: unexpected answer to IDENTIFY_SYSTEM: {ident:?}",
                pg.job
            ))
        })?;
    if ours > server_tli {
        return Ok(Lineage::Foreign(format!(
            "job {}: the server is on timeline {server_tli}, but the archive has gone on to timeline {ours} (a fork or promotion the stream followed): a server of the older branch cannot continue this archive; point the job at the newer one, or give the old branch a job of its own",
            pg.job
        )));
    }
    if ours == server_tli {
        return Ok(Lineage::Continues);
    }
    // How far the WAL held of timeline `ours` reaches: where the
    // receiver would ask the server to go on from.
    let held = writer
        .newest_held()
        .filter(|s| s.tli == ours)
        .map(|s| size.end(s.segno));
    let spooled = spool
        .complete
        .keys()
        .filter(|s| s.tli == ours)
        .map(|s| size.end(s.segno))
        .chain(
            // A partial reaches as far as its last whole record.
            spool.partial.keys().filter(|s| s.tli == ours).map(|s| {
                let path = dir.join(format!("{}.partial", s.name(size)));
                super::records::verify_file(
                    &path,
                    *s,
                    size,
                    system,
                    super::records::Extent::Partial,
                )
                .ok()
                .and_then(|v| v.end)
                .unwrap_or(size.start(s.segno))
            }),
        )
        .max();
    let Some(reach) = held.max(spooled) else {
        return Ok(Lineage::Continues);
    };
    let answer = pg
        .replication(&format!("TIMELINE_HISTORY {server_tli}"))
        .await?;
    let text = history_content(&answer).ok_or_else(|| {
        PitrError::Archive(format!(
            "job {}: unexpected answer to TIMELINE_HISTORY {server_tli}: {answer:?}",
            pg.job
        ))
    })?;
    let path = super::history::Path::parse(server_tli, &text)
        .map_err(|e| PitrError::Archive(format!("job {}: {e}", pg.job)))?;
    let Some(end) = path.end(ours) else {
        return Ok(Lineage::Foreign(format!(
            "job {}: the server's timeline {server_tli} does not descend from timeline {ours}, which the archive holds: is the job pointed at a copy that forked from another branch?",
            pg.job
        )));
    };
    Ok(if reach > end {
        Lineage::Forked(Fork {
            tli: ours,
            at: end,
            server_tli,
        })
    } else {
        Lineage::Continues
    })
}

/// The history file's text from `psql`'s answer to `TIMELINE_HISTORY`
/// (`name|content`, the content as text or as `\x` hex).
fn history_content(answer: &str) -> Option<String> {
    let (name, content) = answer.split_once('|')?;
    if !name.trim().ends_with(".history") {
        return None;
    }
    let content = content.trim_end_matches('\n');
    match content.strip_prefix("\\x") {
        Some(hex) => {
            let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        }
        None => Some(content.to_string()),
    }
}

/// Empty the spool of WAL (history files stay) and leave in it one file
/// named for the segment before the fork on the archive's timeline: the
/// receiver goes on from the fork's segment, which the server has on its
/// way to its own timeline. The file's content is never read (the
/// receiver looks at names and sizes; the timeline is frozen, so the
/// writer stores none of it): it is sparse zeros.
fn seed_at_fork(
    dir: &std::path::Path,
    size: SegmentSize,
    spool: &Spool,
    fork: &Fork,
) -> std::io::Result<()> {
    for seg in spool.complete.keys() {
        remove_if_there(&dir.join(seg.name(size)))?;
    }
    for seg in spool.partial.keys() {
        remove_if_there(&dir.join(format!("{}.partial", seg.name(size))))?;
    }
    let seed = Segment {
        tli: fork.tli,
        segno: size.segno(fork.at).saturating_sub(1),
    };
    let name = seed.name(size);
    let tmp = dir.join(format!("{name}.seeding"));
    let file = std::fs::File::create(&tmp)?;
    file.set_len(size.bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

fn remove_if_there(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// How old, at most, the oldest WAL past `stored` is, from the server's
/// positions `seen` (oldest first): the time since the newest sighting the
/// repository covers. Sightings older than that one are dropped.
fn lag_seconds(seen: &mut std::collections::VecDeque<(Instant, Lsn)>, stored: Lsn) -> Option<f64> {
    let (_, newest) = *seen.back()?;
    if newest <= stored {
        seen.clear();
        seen.push_back((Instant::now(), newest));
        return Some(0.0);
    }
    while seen.len() > 1 && seen[1].1 <= stored {
        seen.pop_front();
    }
    // Bounded: a stream that stores nothing for long keeps its first
    // sighting and a day of the rest at most.
    while seen.len() > 100_000 {
        seen.remove(1);
    }
    let (at, _) = seen.front()?;
    Some(at.elapsed().as_secs_f64())
}

/// Create the receiver's slot (pg_receivewal exits 0 when it exists) and
/// the hold slot `<slot>_stored`, where missing.
async fn ensure_slots(pg: &Pg<'_>, slot: &str) -> Result<(), PitrError> {
    pg.run(
        "pg_receivewal",
        &[
            "--create-slot",
            "--if-not-exists",
            &format!("--slot={slot}"),
        ],
    )
    .await?;
    let hold = format!("{slot}_stored");
    pg.query(&format!(
        "SELECT pg_create_physical_replication_slot('{hold}', true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{hold}')"
    ))
    .await?;
    Ok(())
}

/// Make `spool` this job's spool: a new directory (created 0700), or one
/// that is empty or already a spool (it holds `streamer.lock`). Anything
/// else (`/`, a data directory, the server's pg_wal) is refused, never
/// changed: the streamer deletes the segments it stored from its spool.
fn claim_spool(spool: &std::path::Path, job: &str) -> Result<(), PitrError> {
    let refuse = |why: String| {
        PitrError::Archive(format!("job {job}: wal.spool {}: {why}", spool.display()))
    };
    match std::fs::symlink_metadata(spool) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = spool.parent() {
                std::fs::create_dir_all(parent).map_err(|e| refuse(e.to_string()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(spool)
                .map_err(|e| refuse(e.to_string()))
        }
        Err(e) => Err(refuse(e.to_string())),
        Ok(m) if !m.is_dir() => Err(refuse("not a directory".into())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(spool).map_err(|e| refuse(e.to_string()))?;
            if entries.next().is_none() || spool.join("streamer.lock").exists() {
                Ok(())
            } else {
                Err(refuse(
                    "this directory holds files but is no WAL spool (it has no streamer.lock); give a new or empty directory".into(),
                ))
            }
        }
    }
}

/// Remove a `.partial` that `pg_receivewal` left short (killed while it
/// zero-filled a new segment, or out of disk): it refuses to start
/// beside one. It holds no WAL yet (the receiver writes data only once
/// the file has its full size), which is checked: one with data is an
/// error that names it.
fn clear_short_partials(
    dir: &std::path::Path,
    size: SegmentSize,
    job: &str,
) -> Result<(), PitrError> {
    let spool = Spool::scan(dir, size).map_err(|e| {
        PitrError::Archive(format!(
            "job {job}: reading the spool {}: {e}",
            dir.display()
        ))
    })?;
    for (seg, seen) in &spool.partial {
        if seen.size == 0 || seen.size == size.bytes() {
            continue;
        }
        let path = dir.join(WalFile::Partial(*seg).name(size));
        let bytes = std::fs::read(&path).map_err(|e| {
            PitrError::Archive(format!("job {job}: reading {}: {e}", path.display()))
        })?;
        if bytes.iter().any(|b| *b != 0) {
            return Err(PitrError::Archive(format!(
                "job {job}: {} is {} bytes, not a whole segment, and holds data; pg_receivewal cannot go on beside it (move it away once the WAL is safe)",
                path.display(),
                bytes.len()
            )));
        }
        std::fs::remove_file(&path).map_err(|e| {
            PitrError::Archive(format!("job {job}: removing {}: {e}", path.display()))
        })?;
        tracing::warn!(%job, file = %path.display(), bytes = bytes.len(), "Removed a short, empty partial segment the receiver left.");
    }
    Ok(())
}

/// The repository's shared lock; `None` while someone holds it
/// exclusively (forget, prune). A stopping stream waits up to a minute
/// for its last flush; otherwise the next look tries again.
async fn lock_waiting(
    repo: &Arc<crate::repo::Repository>,
    job: &str,
    stopping: bool,
) -> Result<Option<crate::repo::lock::LockGuard>, PitrError> {
    let wait = Duration::from_secs(if stopping { 60 } else { 0 });
    match repo.lock_within(false, wait).await {
        Ok(lock) => Ok(Some(lock)),
        Err(crate::repo::RepoError::Locked(who)) if stopping => Err(PitrError::Archive(format!(
            "job {job}: the repository stayed locked ({who}); the last flush was not stored, the slots keep the WAL for the next stream"
        ))),
        Err(crate::repo::RepoError::Locked(who)) => {
            tracing::info!(%job, holder = %who, "The repository is locked exclusively; the flush waits.");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The names of the repository's index files.
async fn index_names(
    repo: &crate::repo::Repository,
) -> Result<std::collections::BTreeSet<String>, PitrError> {
    Ok(repo
        .backend()
        .list(crate::storage::FileType::Index)
        .await
        .map_err(crate::repo::RepoError::from)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Start `pg_receivewal` into the spool.
fn start_receiver(o: &Options) -> Result<Receiver, PitrError> {
    let mut args = o.connection.args();
    args.extend([
        format!("--directory={}", o.spool.display()),
        format!("--slot={}", o.slot),
        "--synchronous".into(),
        "--no-loop".into(),
        "--verbose".into(),
    ]);
    let secret_env = o.connection.secret_env();
    let (mut child, pid) = spawn_confined(
        &o.grants,
        Spawn {
            program: "pg_receivewal",
            args: &args,
            secret_env: &secret_env,
            stdin: std::process::Stdio::null(),
            stdout: std::process::Stdio::null(),
            label: &format!("wal-stream {}", o.job),
            // A killed streamer must not leave its receiver holding the slot.
            die_with_parent: true,
        },
    )
    .map_err(|e| PitrError::Archive(format!("job {}: {e}", o.job)))?;
    tracing::info!(job = %o.job, pid, "Started pg_receivewal.");
    let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    if let Some(stderr) = child.stderr.take() {
        let tail = tail.clone();
        let job = o.job.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(%job, line = %line, "pg_receivewal");
                let mut t = tail.lock().expect("tail");
                t.push_back(line);
                if t.len() > 5 {
                    t.pop_front();
                }
            }
        });
    }
    Ok(Receiver { child, tail })
}

/// The job's programs against its server.
/// The job's server, reached with its granted client programs.
pub(crate) struct Pg<'a> {
    pub(crate) grants: &'a Grants,
    pub(crate) conn: &'a Connection,
    pub(crate) job: &'a str,
}

impl Pg<'_> {
    /// Run `program` with the connection options and `args`; its output.
    async fn run(&self, program: &str, args: &[&str]) -> Result<String, PitrError> {
        let mut all = self.conn.args();
        all.extend(args.iter().map(|a| a.to_string()));
        let secret_env = self.conn.secret_env();
        let (child, _) = spawn_confined(
            self.grants,
            Spawn {
                program,
                args: &all,
                secret_env: &secret_env,
                stdin: std::process::Stdio::null(),
                stdout: std::process::Stdio::piped(),
                label: &format!("wal-stream {}", self.job),
                die_with_parent: false,
            },
        )
        .map_err(|e| PitrError::Archive(format!("job {}: {e}", self.job)))?;
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| PitrError::Archive(format!("job {}: {program} took over 60 s", self.job)))?
            .map_err(|e| PitrError::Archive(format!("job {}: {program}: {e}", self.job)))?;
        if !out.status.success() {
            return Err(PitrError::Archive(format!(
                "job {}: {program} {}: {}",
                self.job,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One SQL statement in the `postgres` database.
    pub(crate) async fn query(&self, sql: &str) -> Result<String, PitrError> {
        self.psql("--dbname=postgres", sql).await
    }

    /// One replication command (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY n`)
    /// over a physical replication connection, as `pg_receivewal` makes.
    pub(crate) async fn replication(&self, command: &str) -> Result<String, PitrError> {
        self.psql("--dbname=dbname=postgres replication=true", command)
            .await
    }

    /// `psql` with `dbname` (its `--dbname=` option) running `command`;
    /// its unaligned rows.
    async fn psql(&self, dbname: &str, command: &str) -> Result<String, PitrError> {
        self.run(
            "psql",
            &[
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
                dbname,
                "--command",
                command,
            ],
        )
        .await
    }

    /// The position slot `slot` holds WAL from (for the receiver's slot:
    /// what the receiver has fsynced).
    pub(crate) async fn slot_lsn(&self, slot: &str) -> Result<Option<Lsn>, PitrError> {
        let out = self
            .query(&format!(
                "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        Ok(out.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lag_is_the_age_of_the_newest_sighting_the_repository_covers() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let mut seen: std::collections::VecDeque<(Instant, Lsn)> = [
            (ago(30), Lsn(100)),
            (ago(20), Lsn(200)),
            (ago(10), Lsn(300)),
        ]
        .into();
        // Stored up to 200: everything after was written since 20 s ago.
        let lag = lag_seconds(&mut seen, Lsn(250)).unwrap();
        assert!((20.0..21.0).contains(&lag), "{lag}");
        assert_eq!(seen.len(), 2, "older sightings go");
        // Nothing covered yet: since the oldest sighting.
        let mut none: std::collections::VecDeque<(Instant, Lsn)> =
            [(ago(5), Lsn(100)), (ago(1), Lsn(200))].into();
        let lag = lag_seconds(&mut none, Lsn(50)).unwrap();
        assert!((5.0..6.0).contains(&lag), "{lag}");
        // All stored: no lag.
        assert_eq!(lag_seconds(&mut seen, Lsn(300)), Some(0.0));
        assert_eq!(
            lag_seconds(&mut std::collections::VecDeque::new(), Lsn(1)),
            None
        );
    }

    #[test]
    fn only_a_new_empty_or_earlier_spool_is_taken_and_nothing_else_is_changed() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("state/wal/pgw");
        claim_spool(&fresh, "pgw").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // An earlier spool (it holds streamer.lock) and an empty directory.
        std::fs::write(fresh.join("streamer.lock"), "").unwrap();
        std::fs::write(fresh.join("000000010000000000000003"), "x").unwrap();
        claim_spool(&fresh, "pgw").unwrap();
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
        claim_spool(&empty, "pgw").unwrap();
        // An existing directory's mode is left alone.
        let mode = std::fs::metadata(&empty).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // A directory with files that is no spool (a pg_wal, say), or a file.
        let other = root.path().join("pg_wal");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("000000010000000000000003"), "x").unwrap();
        let err = claim_spool(&other, "pgw").unwrap_err().to_string();
        assert!(
            err.contains("job pgw") && err.contains("no WAL spool"),
            "{err}"
        );
        let file = root.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        assert!(
            claim_spool(&file, "pgw")
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn a_short_empty_partial_is_removed_and_one_with_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let size = SegmentSize::new(1 << 20).unwrap();
        let short = dir.path().join("000000010000000000000007.partial");
        let whole = dir.path().join("000000010000000000000006.partial");
        std::fs::write(&short, vec![0u8; 300_000]).unwrap();
        std::fs::write(&whole, vec![1u8; 1 << 20]).unwrap();
        clear_short_partials(dir.path(), size, "pgw").unwrap();
        assert!(!short.exists());
        assert!(whole.exists(), "a whole partial is the receiver's");
        let mut data = vec![0u8; 300_000];
        data[10] = 7;
        std::fs::write(&short, data).unwrap();
        let err = clear_short_partials(dir.path(), size, "pgw")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds data") && err.contains("000000010000000000000007.partial"),
            "{err}"
        );
        assert!(short.exists());
    }
}
