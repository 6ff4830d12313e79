//! Cairn's filesystem adapter: backs up directory trees and restores them.
//!
//! Backup walks the configured roots depth-first in name order. Files are
//! pumped by the host (their bytes never enter this component), unchanged
//! files are re-used from the parent snapshot, symlinks are stored and never
//! followed. Restore recreates entries under a target directory and applies
//! directory metadata last, so restored files do not disturb directory times.

use cairn_sdk::{
    Adapter, BackupSummary, Capability, EntryKind, Error, Info, Metadata, RestoreSummary,
    VerifyReport, archive, fs, log, snapshot,
};
use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

struct Filesystem;

/// Configuration of a backup.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BackupConfig {
    /// Absolute paths to back up; by default every granted path.
    #[serde(default)]
    paths: Vec<String>,
    /// Glob patterns to leave out. A pattern with a `/` matches the whole
    /// path; one without matches an entry's name at any depth.
    #[serde(default)]
    exclude: Vec<String>,
    /// Leave out temporary files: names starting `TEMP.`, directories named
    /// `tmp`, files ending `.tmp` or `.swp`. On by default.
    #[serde(default = "yes")]
    exclude_temporary: bool,
}

fn yes() -> bool {
    true
}

/// Configuration of a restore.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RestoreConfig {
    /// The directory entries are restored under (it must be granted).
    target: String,
}

/// Configuration of a verification (none yet).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct VerifyConfig {}

struct Excludes {
    by_path: GlobSet,
    by_name: GlobSet,
    temporary: bool,
}

impl Excludes {
    fn new(patterns: &[String], temporary: bool) -> Result<Self, Error> {
        let mut by_path = GlobSetBuilder::new();
        let mut by_name = GlobSetBuilder::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::InvalidConfig(format!("exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                by_path.add(glob)
            } else {
                by_name.add(glob)
            };
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::InvalidConfig(format!("exclude patterns: {e}")))
        };
        Ok(Excludes {
            by_path: build(by_path)?,
            by_name: build(by_name)?,
            temporary,
        })
    }

    fn excluded(&self, path: &str, name: &str, is_dir: bool) -> bool {
        if self.temporary
            && (name.starts_with("TEMP.")
                || (is_dir && name == "tmp")
                || (!is_dir && (name.ends_with(".tmp") || name.ends_with(".swp"))))
        {
            return true;
        }
        self.by_name.is_match(name) || self.by_path.is_match(path)
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

struct Walk {
    excludes: Excludes,
    summary: BackupSummary,
}

impl Walk {
    /// Back up one path; `name` is set for entries found inside a root, which
    /// the exclude rules apply to.
    fn entry(&mut self, path: &str, name: Option<&str>) -> Result<(), Error> {
        let stat = match fs::stat(path) {
            Ok(s) => s,
            Err(e @ Error::Denied(_)) => return Err(e),
            Err(e) => {
                self.skip(path, &e);
                return Ok(());
            }
        };
        if let Some(name) = name
            && self
                .excludes
                .excluded(path, name, stat.kind == Some(EntryKind::Directory))
        {
            log::debug(&format!("excluded {path}"));
            return Ok(());
        }
        match stat.kind {
            Some(EntryKind::Directory) => {
                archive::add_directory(path, &stat.meta)?;
                self.summary.directories += 1;
                let names = match fs::list_dir(path) {
                    Ok(n) => n,
                    Err(e) => {
                        self.skip(path, &e);
                        return Ok(());
                    }
                };
                for name in names {
                    self.entry(&join(path, &name), Some(&name))?;
                }
            }
            Some(EntryKind::Symlink) => {
                let target = stat.link_target.clone().unwrap_or_default();
                archive::add_symlink(path, &target, &stat.meta)?;
                self.summary.symlinks += 1;
            }
            Some(EntryKind::File) => {
                if archive::reuse_unchanged(path, &stat.meta)? {
                    self.summary.files += 1;
                    return Ok(());
                }
                let mut writer = archive::begin_file(path, &stat.meta)?;
                match writer.pump_file(path) {
                    Ok(_) => {
                        writer.finish()?;
                        self.summary.files += 1;
                    }
                    Err(Error::Io(reason)) | Err(Error::NotFound(reason)) => {
                        // Unreadable now: leave it out of the snapshot and
                        // mark the backup incomplete rather than failing it.
                        writer.cancel();
                        archive::skip(path, &reason);
                        self.summary.skipped += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(EntryKind::Stream) | None => {
                log::info(&format!(
                    "{path}: not a regular file, directory or symlink; left out"
                ));
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: &str, e: &Error) {
        archive::skip(path, &e.to_string());
        self.summary.skipped += 1;
    }
}

/// Roots sorted, with any root inside another root dropped.
fn normalise_roots(mut roots: Vec<String>) -> Result<Vec<String>, Error> {
    for r in &mut roots {
        if !r.starts_with('/') {
            return Err(Error::InvalidConfig(format!("path {r:?} is not absolute")));
        }
        while r.len() > 1 && r.ends_with('/') {
            r.pop();
        }
    }
    roots.sort();
    roots.dedup();
    let mut out: Vec<String> = Vec::new();
    for r in roots {
        if out
            .iter()
            .any(|o| o == "/" || r.starts_with(&format!("{o}/")))
        {
            continue;
        }
        out.push(r);
    }
    Ok(out)
}

/// The restore path of an entry under `target`, refusing anything that could
/// leave it.
fn target_path(target: &str, entry: &str) -> Result<String, Error> {
    let mut out = target.trim_end_matches('/').to_string();
    for comp in entry.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(Error::Corrupt(format!(
                "entry {entry:?} would escape the restore target"
            )));
        }
        out.push('/');
        out.push_str(comp);
    }
    Ok(out)
}

impl Adapter for Filesystem {
    type BackupConfig = BackupConfig;
    type RestoreConfig = RestoreConfig;
    type VerifyConfig = VerifyConfig;

    fn check(
        config: &serde_json::Value,
        drill_set: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<cairn_sdk::Footprint, Error> {
        cairn_sdk::check_own_scratch::<BackupConfig>(
            config,
            drill_set,
            "its drill restores into a scratch directory of the agent's own",
        )
    }

    fn info() -> Info {
        Info::new(
            "filesystem",
            env!("CARGO_PKG_VERSION"),
            "Backs up and restores directory trees.",
        )
        .needs(&[Capability::ReadPaths, Capability::WritePaths])
    }

    fn backup(config: BackupConfig) -> Result<BackupSummary, Error> {
        let roots = if config.paths.is_empty() {
            fs::granted_paths()
        } else {
            config.paths
        };
        let roots = normalise_roots(roots)?;
        if roots.is_empty() {
            return Err(Error::InvalidConfig("no paths to back up".into()));
        }
        let mut walk = Walk {
            excludes: Excludes::new(&config.exclude, config.exclude_temporary)?,
            summary: BackupSummary::default(),
        };
        for root in roots {
            walk.entry(&root, None)?;
        }
        Ok(walk.summary)
    }

    fn restore(config: RestoreConfig) -> Result<RestoreSummary, Error> {
        let mut summary = RestoreSummary::default();
        // Directory metadata is applied last, deepest first, so writing
        // their content does not change their restored mtimes.
        let mut dirs: Vec<(String, Metadata)> = Vec::new();
        // Directories that could not be created: nothing below them is.
        let mut failed: Vec<String> = Vec::new();
        fs::create_dir(&config.target)?;
        while let Some(entry) = snapshot::next_entry()? {
            if failed
                .iter()
                .any(|d| entry.path.starts_with(&format!("{d}/")))
            {
                continue;
            }
            let dest = target_path(&config.target, &entry.path)?;
            let done = match entry.kind {
                EntryKind::Directory => fs::create_dir(&dest).map(|()| {
                    dirs.push((dest.clone(), entry.meta));
                    summary.directories += 1;
                }),
                EntryKind::Symlink => {
                    let target = entry.link_target.clone().unwrap_or_default();
                    fs::create_symlink(&dest, &target)
                        .and_then(|()| fs::set_metadata(&dest, &entry.meta))
                        .map(|()| summary.symlinks += 1)
                }
                EntryKind::File | EntryKind::Stream => snapshot::open(&entry.path)
                    .and_then(|mut r| r.pump_to_file(&dest))
                    .and_then(|n| {
                        fs::set_metadata(&dest, &entry.meta)?;
                        summary.bytes += n;
                        summary.files += 1;
                        Ok(())
                    }),
            };
            match done {
                Ok(()) => {}
                // The target refused this entry (a name too long for it,
                // say): the host records it, the restore goes on without
                // it, and ends incomplete, as restic's does.
                Err(Error::Io(reason)) | Err(Error::NotFound(reason)) => {
                    log::warn(&format!("{}: not restored: {reason}", entry.path));
                    if entry.kind == EntryKind::Directory {
                        failed.push(entry.path.clone());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        for (dest, meta) in dirs.iter().rev() {
            fs::set_metadata(dest, meta)?;
        }
        Ok(summary)
    }

    fn verify(_: VerifyConfig) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        while let Some(entry) = snapshot::next_entry()? {
            report.entries += 1;
            if !matches!(entry.kind, EntryKind::File | EntryKind::Stream) {
                continue;
            }
            match snapshot::open(&entry.path).and_then(|mut r| r.discard()) {
                Ok(n) => {
                    report.bytes += n;
                    if let Some(size) = entry.meta.size.filter(|s| *s != n) {
                        report.problems.push(format!(
                            "{}: holds {n} bytes, recorded size is {size}",
                            entry.path
                        ));
                    }
                }
                Err(e) => report.problems.push(format!("{}: {e}", entry.path)),
            }
        }
        Ok(report)
    }
}

cairn_sdk::export_adapter!(Filesystem);
