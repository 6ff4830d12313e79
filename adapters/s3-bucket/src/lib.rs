//! Cairn's S3 bucket adapter: every object under a granted bucket and
//! prefix, with its headers and user metadata.
//!
//! The adapter lists and decides; the host (WIT 0.4.0 `object-store`) signs
//! every request and moves every object byte natively, several objects at
//! once. Each object becomes one file entry under `/objects/` (see
//! [`keys`]); `/objects.jsonl` records, per object, its key, entry path,
//! size, ETag, Last-Modified and headers.
//!
//! - Incremental: an object whose key, size, ETag and Last-Modified match
//!   the parent snapshot's manifest is not downloaded again.
//! - Consistent: each GET carries the listing's ETag as `If-Match`; an
//!   object changed or deleted since it was listed is left out and named,
//!   and the backup is incomplete (exit 3), never half old, half new.
//! - Restore: into the same bucket, another granted bucket (`bucket`), or
//!   another prefix (`prefix`), only keys matching `include` globs, with
//!   their headers; an existing object is kept unless `overwrite`. Or into
//!   a directory (`target`): keys become paths; a key that cannot be a safe
//!   path is refused, named, and the rest goes on.
//! - Verify: every object of the snapshot is read back (authenticated) and
//!   compared, by size and ETag, with the live bucket, naming each
//!   difference.

mod keys;

use cairn_sdk::object_store::{self as store, BucketGrant, Fetch, ObjectHead, Store};
use cairn_sdk::{
    Adapter, BackupSummary, Capability, Error, Footprint, Info, Metadata, RestoreSummary,
    Timestamp, VerifyReport,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};

/// The manifest's path in the snapshot.
const MANIFEST: &str = "/objects.jsonl";
/// The manifest's format, in its first line.
const FORMAT: u32 = 1;
/// Objects handed to the host per call. A call returns once its last
/// object is done, so slots idle at its end; the host starts the largest
/// first, and a large batch gives the other slots small objects to take
/// meanwhile.
const BATCH: usize = 1000;

/// The adapter's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The bucket grant to use, by name (default: the only one, or the one
    /// whose bucket is `bucket`).
    grant: Option<String>,
    /// Choose the grant by its bucket (restore into another bucket:
    /// `--set bucket=...`).
    bucket: Option<String>,
    /// Backup: only keys starting with this (inside the grant's prefix;
    /// default the grant's prefix). Restore: write the keys under this
    /// prefix instead of the one they were backed up from.
    prefix: Option<String>,
    /// Objects in flight at once (default 8, at most 64).
    #[serde(default)]
    concurrency: u32,
    /// Restore: only keys matching one of these globs (`*`, `**`, `?`).
    #[serde(default)]
    include: Vec<String>,
    /// Restore: replace objects the bucket already has.
    #[serde(default)]
    overwrite: bool,
    /// Restore into this directory instead of a bucket (keys become paths).
    target: Option<String>,
}

/// The manifest's first line: where the objects came from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Header {
    cairn_s3_bucket: u32,
    grant: String,
    endpoint: String,
    bucket: String,
    /// The listing's prefix.
    prefix: String,
    /// Objects listed but left out of this snapshot (changed or deleted
    /// while it ran, unreadable), with the reason: verify names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    left_out: Vec<(String, String)>,
}

/// One object of the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Object {
    key: String,
    path: String,
    size: u64,
    etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<(i64, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    metadata: Vec<(String, String)>,
}

impl Object {
    /// An object as the listing gives it: key, size, ETag, Last-Modified
    /// (which the next backup compares with its own listing), no headers.
    fn listed(o: &store::ObjectSummary, path: String) -> Object {
        Object {
            key: o.key.clone(),
            path,
            size: o.size,
            etag: o.etag.clone(),
            last_modified: o.last_modified.map(|t| (t.seconds, t.nanoseconds)),
            content_type: None,
            content_encoding: None,
            cache_control: None,
            content_disposition: None,
            content_language: None,
            expires: None,
            metadata: Vec::new(),
        }
    }

    /// The same object with the headers a GET returned (its size, ETag and
    /// Last-Modified stay the listing's: a GET's Last-Modified is whole
    /// seconds, a listing's may hold milliseconds).
    fn with_headers(self, head: &ObjectHead) -> Object {
        Object {
            content_type: head.content_type.clone(),
            content_encoding: head.content_encoding.clone(),
            cache_control: head.cache_control.clone(),
            content_disposition: head.content_disposition.clone(),
            content_language: head.content_language.clone(),
            expires: head.expires.clone(),
            metadata: head.user_metadata.clone(),
            ..self
        }
    }

    fn head(&self) -> ObjectHead {
        ObjectHead {
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified.map(|(seconds, nanoseconds)| Timestamp {
                seconds,
                nanoseconds,
            }),
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            cache_control: self.cache_control.clone(),
            content_disposition: self.content_disposition.clone(),
            content_language: self.content_language.clone(),
            expires: self.expires.clone(),
            user_metadata: self.metadata.clone(),
        }
    }

    /// The entry's metadata: the host's "unchanged" rule (size, mtime,
    /// inode equal) then means same size, Last-Modified and ETag.
    fn meta(&self) -> Metadata {
        let mut m = Metadata::with_mode(0o644).sized(self.size);
        if let Some((s, ns)) = self.last_modified {
            m = m.modified(s, ns);
        }
        m.inode = Some(keys::etag_inode(&self.etag));
        m
    }
}

/// The grant the settings choose, among the job's.
fn choose_grant(config: &Config) -> Result<BucketGrant, Error> {
    let grants = store::granted_buckets();
    let names = || {
        grants
            .iter()
            .map(|g| format!("{} (bucket {})", g.name, g.bucket))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found: Vec<&BucketGrant> = grants
        .iter()
        .filter(|g| config.grant.as_ref().is_none_or(|n| *n == g.name))
        .filter(|g| config.bucket.as_ref().is_none_or(|b| *b == g.bucket))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] if grants.is_empty() => Err(Error::Denied(
            "this job grants no bucket: add [jobs.NAME.grants.buckets.NAME] (or --grant-bucket)"
                .into(),
        )),
        [] => Err(Error::InvalidConfig(format!(
            "no granted bucket matches{}{}; granted: {} (choose one with --set grant=NAME or --set bucket=BUCKET)",
            config
                .grant
                .as_ref()
                .map(|g| format!(" grant {g}"))
                .unwrap_or_default(),
            config
                .bucket
                .as_ref()
                .map(|b| format!(" bucket {b}"))
                .unwrap_or_default(),
            names()
        ))),
        _ => Err(Error::InvalidConfig(format!(
            "several granted buckets match; choose one with grant = NAME: {}",
            names()
        ))),
    }
}

/// Every object under `prefix`, all pages.
fn list_all(grant: &str, prefix: &str) -> Result<Vec<store::ObjectSummary>, Error> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store::list_objects(grant, prefix, after.as_deref())?;
        out.extend(page.objects);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The manifest of a snapshot: its header and objects.
fn read_manifest(reader: impl std::io::Read) -> Result<(Header, Vec<Object>), Error> {
    let mut lines = std::io::BufReader::new(reader).lines();
    let bad =
        |n: usize, e: &dyn std::fmt::Display| Error::Corrupt(format!("{MANIFEST} line {n}: {e}"));
    let first = lines
        .next()
        .ok_or_else(|| Error::Corrupt(format!("{MANIFEST} is empty")))??;
    let header: Header = serde_json::from_str(&first).map_err(|e| bad(1, &e))?;
    if header.cairn_s3_bucket != FORMAT {
        return Err(Error::Corrupt(format!(
            "{MANIFEST}: format {} is not one this adapter reads ({FORMAT})",
            header.cairn_s3_bucket
        )));
    }
    let mut objects = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        objects.push(serde_json::from_str(&line).map_err(|e| bad(i + 2, &e))?);
    }
    Ok((header, objects))
}

/// One JSON line.
fn line<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let mut out =
        serde_json::to_vec(v).map_err(|e| Error::Other(format!("writing the manifest: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

fn write_manifest(header: &Header, objects: &[Object]) -> Result<(), Error> {
    let mut entry = cairn_sdk::archive::begin_stream(MANIFEST, &Metadata::with_mode(0o644))?;
    let mut buf = line(header)?;
    for o in objects {
        buf.extend(line(o)?);
        if buf.len() >= 1 << 20 {
            entry.write_all(&buf)?;
            buf.clear();
        }
    }
    entry.write_all(&buf)?;
    entry.finish()?;
    Ok(())
}

/// Objects of the parent snapshot, by key, when there is a parent.
fn parent_objects(grant: &BucketGrant, prefix: &str) -> HashMap<String, Object> {
    let reader = match cairn_sdk::parent::open(MANIFEST) {
        Ok(Some(r)) => r,
        Ok(None) => return HashMap::new(),
        Err(e) => {
            cairn_sdk::log::warn(&format!(
                "the parent snapshot's {MANIFEST} cannot be read ({e}); every object is read again"
            ));
            return HashMap::new();
        }
    };
    match read_manifest(reader) {
        // Only a parent of the same bucket and prefix says what is unchanged.
        Ok((h, objects))
            if h.endpoint == grant.endpoint && h.bucket == grant.bucket && h.prefix == prefix =>
        {
            objects.into_iter().map(|o| (o.key.clone(), o)).collect()
        }
        Ok((h, _)) => {
            cairn_sdk::log::info(&format!(
                "the parent snapshot is of bucket {} prefix {:?} at {}; every object is read again",
                h.bucket, h.prefix, h.endpoint
            ));
            HashMap::new()
        }
        Err(e) => {
            cairn_sdk::log::warn(&format!(
                "the parent snapshot's manifest is unreadable ({e}); every object is read again"
            ));
            HashMap::new()
        }
    }
}

/// What the backup made of each object so far.
struct Backup<'a> {
    grant: &'a str,
    concurrency: u32,
    objects: Vec<Object>,
    /// Objects to GET, as listed.
    pending: Vec<Object>,
    /// The folder every pending object is in, if they share one.
    pending_folder: Option<String>,
    summary: BackupSummary,
    fetched: u64,
    /// Keys left out, and why.
    left_out: Vec<(String, String)>,
}

impl Backup<'_> {
    /// Queue an object to GET.
    fn push(&mut self, o: Object) {
        let f = folder(&o.path);
        if self.pending.is_empty() {
            self.pending_folder = Some(f.to_string());
        } else if self.pending_folder.as_deref() != Some(f) {
            self.pending_folder = None;
        }
        self.pending.push(o);
    }

    /// Whether every pending object (if any) is in `folder`.
    fn pending_only_in(&self, folder: &str) -> bool {
        self.pending.is_empty() || self.pending_folder.as_deref() == Some(folder)
    }

    /// GET the pending objects into their entries.
    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let fetches: Vec<Fetch> = pending
            .iter()
            .map(|o| Fetch {
                key: o.key.clone(),
                if_match: Some(o.etag.clone()),
                path: o.path.clone(),
                meta: o.meta(),
            })
            .collect();
        let results = store::fetch_objects(self.grant, &fetches, self.concurrency);
        for (listed, r) in pending.into_iter().zip(results) {
            match r {
                Ok(head) => {
                    self.summary.files += 1;
                    self.fetched += 1;
                    self.objects.push(listed.with_headers(&head));
                }
                // Changed or deleted since it was listed, or unreadable by
                // its state (archived, SSE-C): left out, named; the backup
                // is incomplete.
                Err(Error::NotFound(why) | Error::Denied(why)) => {
                    let reason = format!("object {:?}: {why}", listed.key);
                    cairn_sdk::archive::skip(&listed.path, &reason);
                    self.summary.skipped += 1;
                    self.left_out.push((listed.key, why));
                }
                Err(e) => {
                    return Err(Error::Io(format!("object {:?}: {e}", listed.key)));
                }
            }
        }
        Ok(())
    }
}

/// The folder of a snapshot path (`/objects/a/b` -> `/objects/a`).
fn folder(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(f, _)| f)
}

fn backup(config: Config) -> Result<BackupSummary, Error> {
    let grant = choose_grant(&config)?;
    let prefix = config
        .prefix
        .clone()
        .unwrap_or_else(|| grant.prefix.clone());
    let listed = list_all(&grant.name, &prefix)?;
    let parent = parent_objects(&grant, &prefix);
    let key_refs: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    let paths = keys::paths(&key_refs);
    let mut b = Backup {
        grant: &grant.name,
        concurrency: config.concurrency,
        objects: Vec::with_capacity(listed.len()),
        pending: Vec::new(),
        pending_folder: None,
        summary: BackupSummary {
            files: 0,
            directories: 0,
            symlinks: 0,
            skipped: 0,
        },
        fetched: 0,
        left_out: Vec::new(),
    };
    for (i, path) in paths {
        let o = Object::listed(&listed[i], path);
        // Same key, size, ETag and Last-Modified as last time: the host
        // keeps the parent's content, and the parent's manifest its headers.
        if let Some(old) = parent
            .get(&o.key)
            .filter(|p| p.size == o.size && p.etag == o.etag && p.last_modified == o.last_modified)
        {
            // Entries go in depth-first: the objects waiting for a fetch
            // are added before this one, unless they all share its folder
            // (where order does not matter): then the batch goes on, and an
            // incremental backup of a folder with scattered changes keeps
            // its fetches concurrent.
            if !b.pending_only_in(folder(&o.path)) {
                b.flush()?;
            }
            if cairn_sdk::archive::reuse_unchanged(&o.path, &o.meta())? {
                b.objects.push(Object {
                    path: o.path,
                    ..old.clone()
                });
                b.summary.files += 1;
                continue;
            }
        }
        b.push(o);
        if b.pending.len() >= BATCH {
            b.flush()?;
        }
    }
    b.flush()?;
    let header = Header {
        cairn_s3_bucket: FORMAT,
        grant: grant.name.clone(),
        endpoint: grant.endpoint.clone(),
        bucket: grant.bucket.clone(),
        prefix,
        left_out: std::mem::take(&mut b.left_out),
    };
    write_manifest(&header, &b.objects)?;
    cairn_sdk::log::info(&format!(
        "bucket {}: {} objects listed, {} downloaded, {} unchanged, {} left out (changed, deleted or unreadable since listed)",
        grant.bucket,
        listed.len(),
        b.fetched,
        b.objects.len() as u64 - b.fetched,
        b.summary.skipped
    ));
    b.summary.files += 1;
    Ok(b.summary)
}

/// The snapshot's objects that `include` selects.
/// The snapshot's manifest.
fn manifest() -> Result<(Header, Vec<Object>), Error> {
    match cairn_sdk::snapshot::open(MANIFEST) {
        Ok(r) => read_manifest(r),
        Err(Error::NotFound(_)) => Err(Error::NotFound(format!(
            "this snapshot has no {MANIFEST}: it was not made by the s3-bucket adapter"
        ))),
        Err(e) => Err(e),
    }
}

fn selected(config: &Config) -> Result<(Header, Vec<Object>), Error> {
    let (header, objects) = manifest()?;
    let objects = objects
        .into_iter()
        .filter(|o| {
            config.include.is_empty() || config.include.iter().any(|g| keys::glob_match(g, &o.key))
        })
        .collect();
    Ok((header, objects))
}

/// Walk the snapshot's entries in order (so the host reads small files
/// ahead of the walk) and hand each object of `objects` to `f` as its entry
/// comes. Returns the objects the walk did not reach (`cairn restore
/// --include` leaves entries out).
fn walk_objects<'a>(
    objects: &'a [Object],
    mut f: impl FnMut(&'a Object) -> Result<(), Error>,
) -> Result<Vec<&'a Object>, Error> {
    let mut by_path: HashMap<&str, &Object> =
        objects.iter().map(|o| (o.path.as_str(), o)).collect();
    while let Some(entry) = cairn_sdk::snapshot::next_entry()? {
        if let Some(o) = by_path.remove(entry.path.as_str()) {
            f(o)?;
        }
    }
    Ok(by_path.into_values().collect())
}

fn restore_to_directory(target: &str, objects: &[Object]) -> Result<RestoreSummary, Error> {
    let target = target.trim_end_matches('/');
    let mut summary = RestoreSummary {
        files: 0,
        directories: 0,
        symlinks: 0,
        bytes: 0,
    };
    let mut refused = Vec::new();
    let write = |o: &Object, summary: &mut RestoreSummary| -> Result<(), Error> {
        let path = format!("{target}/{}", o.key);
        if let Some(dir) = o.key.strip_suffix('/') {
            // A directory marker (its bytes, if any, are not a file's).
            cairn_sdk::fs::create_dir(&format!("{target}/{dir}"))?;
            summary.directories += 1;
            if o.size > 0 {
                return Err(Error::Other(format!(
                    "a key ending in '/' holding {} bytes: restored as a directory, its bytes are not",
                    o.size
                )));
            }
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            cairn_sdk::fs::create_dir(parent)?;
        }
        summary.bytes += cairn_sdk::snapshot::open(&o.path)?.pump_to_file(&path)?;
        cairn_sdk::fs::set_metadata(&path, &o.meta())?;
        summary.files += 1;
        Ok(())
    };
    let outside = walk_objects(objects, |o| {
        if let Some(why) = keys::unsafe_as_path(&o.key) {
            cairn_sdk::log::warn(&format!(
                "object {:?}: not restored as a path: {why}",
                o.key
            ));
            refused.push(format!("{:?} ({why})", o.key));
            return Ok(());
        }
        match write(o, &mut summary) {
            Ok(()) => Ok(()),
            // Damaged data is the restore's failure, not a key's.
            Err(e @ Error::Corrupt(_)) => Err(e),
            // A key that is a file here and a directory there (`a` and
            // `a/b`), say: named, and the rest goes on.
            Err(e) => {
                cairn_sdk::log::warn(&format!("object {:?}: not restored: {e}", o.key));
                refused.push(format!("{:?} ({e})", o.key));
                Ok(())
            }
        }
    })?;
    if !outside.is_empty() {
        cairn_sdk::log::info(&format!(
            "{} object(s) outside the restore's --include were left out",
            outside.len()
        ));
    }
    if !refused.is_empty() {
        return Err(Error::Other(format!(
            "{} object(s) not restored as paths: {}; the other {} were restored into {target}",
            refused.len(),
            refused.join(", "),
            summary.files + summary.directories
        )));
    }
    Ok(summary)
}

fn restore(config: Config) -> Result<RestoreSummary, Error> {
    let (header, objects) = selected(&config)?;
    if let Some(target) = &config.target {
        return restore_to_directory(target, &objects);
    }
    let grant = choose_grant(&config)?;
    if !grant.writable {
        return Err(Error::Denied(format!(
            "bucket grant {} (bucket {}) is read-only: restoring into it needs write = true in the grant",
            grant.name, grant.bucket
        )));
    }
    // A prefix is a folder, as a grant's is; `..` segments are refused.
    let mut to_prefix = config
        .prefix
        .clone()
        .unwrap_or_else(|| header.prefix.clone());
    if to_prefix.split('/').any(|seg| seg == "..") {
        return Err(Error::InvalidConfig(format!(
            "prefix {to_prefix:?}: a '..' segment is not a folder"
        )));
    }
    if !to_prefix.is_empty() && !to_prefix.ends_with('/') {
        to_prefix.push('/');
    }
    let mut summary = RestoreSummary {
        files: 0,
        directories: 0,
        symlinks: 0,
        bytes: 0,
    };
    let mut kept = Vec::new();
    let mut batch: Vec<Store> = Vec::new();
    let mut flush = |batch: &mut Vec<Store>, summary: &mut RestoreSummary| -> Result<(), Error> {
        let stores = std::mem::take(batch);
        let results =
            store::store_objects(&grant.name, &stores, config.concurrency, config.overwrite);
        for (s, r) in stores.iter().zip(results) {
            match r {
                Ok(n) => {
                    summary.files += 1;
                    summary.bytes += n;
                }
                Err(Error::Denied(why)) if !config.overwrite && why.contains("already has") => {
                    kept.push(s.key.clone());
                }
                Err(e) => return Err(Error::Io(format!("object {:?}: {e}", s.key))),
            }
        }
        Ok(())
    };
    // The walk, not the manifest, says which objects this restore takes
    // (`cairn restore --include` narrows it).
    let outside = walk_objects(&objects, |o| {
        let key = format!(
            "{to_prefix}{}",
            o.key.strip_prefix(&header.prefix).unwrap_or(&o.key)
        );
        if key.is_empty() {
            // The backed-up prefix's own marker, restored to no prefix.
            cairn_sdk::log::info(&format!(
                "object {:?}: the prefix's own marker; nothing to restore without a prefix",
                o.key
            ));
            return Ok(());
        }
        batch.push(Store {
            path: o.path.clone(),
            key,
            head: o.head(),
        });
        if batch.len() >= BATCH {
            flush(&mut batch, &mut summary)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut summary)?;
    if !outside.is_empty() {
        cairn_sdk::log::info(&format!(
            "{} object(s) outside the restore's --include were left out",
            outside.len()
        ));
    }
    if !kept.is_empty() {
        let shown: Vec<String> = kept.iter().take(10).map(|k| format!("{k:?}")).collect();
        return Err(Error::Other(format!(
            "{} object(s) already in bucket {} were kept, not overwritten (set overwrite = true to replace them): {}{}; the other {} were restored",
            kept.len(),
            grant.bucket,
            shown.join(", "),
            if kept.len() > 10 { ", ..." } else { "" },
            summary.files
        )));
    }
    Ok(summary)
}

fn verify(config: Config) -> Result<VerifyReport, Error> {
    let (header, objects) = manifest()?;
    let mut report = VerifyReport {
        entries: 1,
        bytes: 0,
        problems: Vec::new(),
    };
    // Every object's content is read back and authenticated.
    let mut problems = Vec::new();
    let unreached = walk_objects(&objects, |o| {
        let n = cairn_sdk::snapshot::open(&o.path)?.discard()?;
        report.entries += 1;
        report.bytes += n;
        if n != o.size {
            problems.push(format!(
                "{:?}: the snapshot holds {n} bytes, the object had {}",
                o.key, o.size
            ));
        }
        Ok(())
    })?;
    report.problems.extend(problems);
    for o in unreached {
        report.problems.push(format!(
            "{:?}: the manifest lists it at {}, which the snapshot does not hold",
            o.key, o.path
        ));
    }
    // And compared with the live bucket.
    let grant = choose_grant(&Config {
        grant: config.grant.clone().or(Some(header.grant.clone())),
        ..config
    })?;
    if grant.bucket != header.bucket || grant.endpoint != header.endpoint {
        return Err(Error::InvalidConfig(format!(
            "the snapshot is of bucket {} at {}, but grant {} is bucket {} at {}: verify compares a snapshot with the bucket it came from",
            header.bucket, header.endpoint, grant.name, grant.bucket, grant.endpoint
        )));
    }
    for (key, why) in &header.left_out {
        report
            .problems
            .push(format!("{key:?}: left out of this snapshot: {why}"));
    }
    let live: HashMap<String, store::ObjectSummary> = list_all(&grant.name, &header.prefix)?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    for o in &objects {
        match live.get(&o.key) {
            None => report
                .problems
                .push(format!("{:?}: no longer in bucket {}", o.key, grant.bucket)),
            Some(l) if l.size != o.size || l.etag != o.etag => report.problems.push(format!(
                "{:?}: differs in bucket {} (size {} and ETag {} now, {} and {} in the snapshot)",
                o.key, grant.bucket, l.size, l.etag, o.size, o.etag
            )),
            Some(_) => {}
        }
    }
    let in_snapshot: std::collections::HashSet<&str> =
        objects.iter().map(|o| o.key.as_str()).collect();
    let added = live
        .keys()
        .filter(|k| !in_snapshot.contains(k.as_str()))
        .count();
    if added > 0 {
        cairn_sdk::log::info(&format!(
            "bucket {} holds {added} object(s) the snapshot does not (written since it was taken)",
            grant.bucket
        ));
    }
    Ok(report)
}

/// Where the settings read and where a drill writes: `s3://BUCKET/PREFIX`
/// when they name the bucket, else the grant (`s3-grant:NAME/`).
fn footprint(
    config: &serde_json::Value,
    drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Footprint, Error> {
    let own: Config = cairn_sdk::parse_value(config)?;
    let name = |c: &Config| match (&c.bucket, &c.grant) {
        (Some(b), _) => format!("s3://{b}/{}", c.prefix.clone().unwrap_or_default()),
        (None, Some(g)) => format!("s3-grant:{g}/{}", c.prefix.clone().unwrap_or_default()),
        (None, None) => "s3-grant:/".into(),
    };
    let footprint = Footprint::reading([name(&own)]);
    let Some(set) = drill_set else {
        return Ok(footprint);
    };
    let drill: Config = cairn_sdk::parse_value(&cairn_sdk::drill_config(config, set))?;
    // A drill into a bucket could write into the live one under another
    // name (a grant, a prefix): it restores into a scratch directory only.
    let Some(t) = &drill.target else {
        return Err(Error::InvalidConfig(
            "an s3-bucket drill restores into a scratch directory: give drill.set = { target = \"/path\" }".into(),
        ));
    };
    Ok(footprint.writing([format!("file://{}/", t.trim_end_matches('/'))]))
}

struct S3Bucket;

impl Adapter for S3Bucket {
    type BackupConfig = Config;
    type RestoreConfig = Config;
    type VerifyConfig = Config;

    fn info() -> Info {
        Info::new(
            "s3-bucket",
            env!("CARGO_PKG_VERSION"),
            "Every object of a granted S3 bucket (and prefix), with its headers and user metadata; incremental by key, size and ETag; restored into a bucket or a directory.",
        )
        // A restore may go into a directory (`--target`).
        .needs(&[Capability::WritePaths])
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        backup(config)
    }

    fn restore(config: Config) -> Result<RestoreSummary, Error> {
        restore(config)
    }

    fn verify(config: Config) -> Result<VerifyReport, Error> {
        verify(config)
    }

    fn check(
        config: &serde_json::Value,
        drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Footprint, Error> {
        footprint(config, drill_set)
    }
}

cairn_sdk::export_adapter!(S3Bucket);
