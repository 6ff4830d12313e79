//! The drill of a job that streams its WAL (docs/design/pitr.md §11):
//! prove that the archive restores the cluster to a point in time.
//!
//! 1. Two markers go into the live cluster, two seconds apart: rows of
//!    `cairn_pitr_drill` in its `postgres` database (created if missing;
//!    each drill adds two rows of a random token and the time).
//! 2. The drill waits until the repository holds the second (the hold slot
//!    `<slot>_stored` has passed it); that wait is the recovery point
//!    achieved (the stream's lag then).
//! 3. A random pair of successive markers written within the window the
//!    kept base backups cover is chosen, and the moment halfway between
//!    them is the target.
//! 4. The base backup is restored into a scratch directory under
//!    `<state-dir>/drills/` and recovered there to the target, paused
//!    (`restore --until … --start --action pause`, socket only).
//! 5. It passes when the copy holds the earlier marker and not the later.
//!    The server is stopped and the scratch directory removed. The time
//!    from the drill's start is the recovery time.

use super::drill::{Found, Options};
use super::{Store, pitr_restore, restore};
use crate::pitr::plan::Target;
use crate::pitr::recover::{self, Action, Owner};
use crate::pitr::stream::{Connection, Pg};
use crate::runtime::{AdapterSource, Limits};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

/// The marker table, in the live cluster's `postgres` database.
const TABLE: &str = "cairn_pitr_drill";
/// How long the drill waits for the stream to store its marker.
const STORED_WITHIN: Duration = Duration::from_secs(120);

/// One marker row.
#[derive(Clone, Debug)]
struct Marker {
    id: i64,
    token: String,
    at: DateTime<Utc>,
}

pub(super) async fn drill(store: &Store, o: &Options, found: &mut Found) -> anyhow::Result<()> {
    let (name, job) = (&o.job_name, &o.job);
    let wal = job.wal.as_ref().context("the job has no [wal] table")?;
    let grants = (o.grants)()?;
    let pg_ctl = pitr_restore::granted(&grants, "pg_ctl").with_context(|| {
        format!("job {name}: its PITR drill starts a scratch server: grant pg_ctl (its path, /usr/lib/postgresql/15/bin/pg_ctl on Debian)")
    })?;
    let psql = pitr_restore::granted(&grants, "psql")
        .with_context(|| format!("job {name}: grant psql"))?;
    let conn = Connection::of_job(name, job).map_err(anyhow::Error::msg)?;
    let pg = Pg {
        grants: &grants,
        conn: &conn,
        job: name,
    };
    let began = Instant::now();

    // 1. Two markers, the second two seconds after the first.
    pg.query(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, token text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ))
    .await
    .context("creating the drill's marker table in the live cluster")?;
    let mut last_lsn = None;
    for n in 0..2 {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let token = hex::encode(rand::random::<[u8; 8]>());
        pg.query(&format!("INSERT INTO {TABLE} (token) VALUES ('{token}')"))
            .await
            .context("writing the drill's marker")?;
        last_lsn = Some(
            pg.query("SELECT pg_current_wal_insert_lsn()")
                .await?
                .trim()
                .parse::<crate::pitr::lsn::Lsn>()
                .map_err(|e| anyhow::anyhow!("the server's WAL position: {e}"))?,
        );
    }
    let written = Instant::now();
    let last_lsn = last_lsn.expect("two markers");

    // 2. Until the repository holds it.
    let hold = format!("{}_stored", wal.slot(name));
    loop {
        if pg.slot_lsn(&hold).await?.is_some_and(|l| l >= last_lsn) {
            break;
        }
        if written.elapsed() > STORED_WITHIN {
            bail!(
                "the WAL stream of job {name} did not store the drill's marker ({last_lsn}) within {} s: is it running (`cairn_wal_stream_up`)?",
                STORED_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    found.rpo = Some(written.elapsed().as_secs_f64());

    // 3. A random pair within the window the kept base backups cover.
    let bases: Vec<crate::pitr::basebackup::BaseBackup> = store
        .repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|(_, s)| s.cairn_job.as_deref() == Some(name.as_str()))
        .filter_map(|(_, s)| crate::pitr::basebackup::BaseBackup::from_tags(&s.tags))
        .collect();
    let window_start = bases
        .iter()
        .map(|b| b.stop_time)
        .min()
        .with_context(|| format!("job {name} has no physical base backup to drill"))?;
    let listed = pg
        .query(&format!(
            "SELECT id, token, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {TABLE} ORDER BY id"
        ))
        .await?;
    let markers: Vec<Marker> = listed
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some(Marker {
                id: f.next()?.parse().ok()?,
                token: f.next()?.to_string(),
                at: f.next()?.parse().ok()?,
            })
        })
        .collect();
    let pairs: Vec<(&Marker, &Marker)> = markers
        .windows(2)
        .map(|w| (&w[0], &w[1]))
        .filter(|(a, b)| {
            a.at > window_start + chrono::Duration::seconds(1)
                && b.at - a.at >= chrono::Duration::seconds(1)
        })
        .collect();
    let (before, after) = *pairs
        .get(rand::random::<u64>() as usize % pairs.len().max(1))
        .with_context(|| {
            format!("job {name}: no two markers in {TABLE} were written within the recovery window (the drill's own are missing?)")
        })?;
    let target = before.at + (after.at - before.at) / 2;

    // 4. Restore the base backup and recover it to the target.
    let planned = pitr_restore::plan(store, name, Target::Time(target), None, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = planned.plan.base.id.0;
    let (_, base_snap) = store.repo.find_snapshot(&base.to_hex()).await?;
    found.snapshot = Some((base, base_snap.clone()));
    found.chosen = Some(Utc::now());
    let drills = o.state_dir.join("drills");
    std::fs::create_dir_all(&drills).with_context(|| format!("creating {}", drills.display()))?;
    let scratch = drills.join(format!(
        "{name}-pitr-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let checked = async {
        let abs = scratch.to_str().context("the state directory is not UTF-8")?;
        let mut restore_grants = (o.grants)()?;
        restore_grants.add(abs, true)?;
        let mut config = match o.config.clone().map_err(anyhow::Error::msg)? {
            Some(serde_json::Value::Object(c)) => c,
            _ => serde_json::Map::new(),
        };
        config.insert("target".into(), abs.into());
        restore::run(
            store,
            restore::Options {
                snapshot: base,
                tree: base_snap.tree,
                source: AdapterSource::parse(&job.adapter).pinned(job.adapter_sha256.as_deref()),
                grants: restore_grants,
                config: serde_json::Value::Object(config),
                include: Vec::new(),
                overwrite: false,
                limits: Limits::default(),
                target: abs.to_string(),
            },
        )
        .await
        .context("restoring the base backup into the drill's scratch directory")?;
        let owner = Owner::of(&scratch).map_err(anyhow::Error::msg)?;
        recover::owner_can_enter(&owner, &scratch).map_err(anyhow::Error::msg)?;
        let report = pitr_restore::recover(
            &planned,
            &scratch,
            &pitr_restore::Recovery {
                job: name.clone(),
                start: true,
                port: None,
                pg_conf: None,
                action: Action::Pause,
                exe: std::env::current_exe().context("finding this program's path")?,
                config: None,
                pg_ctl: Some(pg_ctl.clone()),
                psql: Some(psql.clone()),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("recovering to {target}: {e}"))?;
        let socket_dir = std::path::PathBuf::from(report.socket_dir.clone().unwrap_or_default());
        // 5. The earlier marker, and not the later.
        let held = recover::query(
            &psql,
            &socket_dir,
            report.port.unwrap_or(5432),
            &owner,
            "postgres",
            &format!(
                "SELECT token FROM {TABLE} WHERE id IN ({}, {}) ORDER BY id",
                before.id, after.id
            ),
        );
        let stopped = recover::stop(&pg_ctl, &scratch, &owner, "immediate");
        let _ = std::fs::remove_dir_all(&socket_dir);
        let held = held.map_err(anyhow::Error::msg)?;
        stopped.map_err(anyhow::Error::msg)?;
        found.entries = 2;
        let tokens: Vec<&str> = held.lines().collect();
        if tokens != [before.token.as_str()] {
            found.problems.push(format!(
                "recovered to {} (between marker {} at {} and marker {} at {}), the copy holds markers {tokens:?}; expected only {}",
                target.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                before.id,
                before.at,
                after.id,
                after.at,
                before.token
            ));
        }
        tracing::info!(job = %name, target = %target, base = %base.short(), seconds = began.elapsed().as_secs_f64(), "PITR drill recovered the scratch copy.");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = std::fs::remove_dir_all(&scratch);
    checked?;
    removed.with_context(|| format!("removing the scratch directory {}", scratch.display()))?;
    Ok(())
}
