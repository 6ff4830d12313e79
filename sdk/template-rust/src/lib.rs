//! The {{name}} adapter for Cairn.
//!
//! A starting point that works as it is: it backs up the paths its job
//! grants (files, directories, symlinks, with their metadata) and restores
//! them under `target`. Change what it reads and how it restores; keep
//! `cairn adapter check {{name}}.wasm` passing.

use cairn_sdk::{
    Adapter, BackupSummary, Capability, EntryKind, Error, Info, Metadata, RestoreSummary,
    VerifyReport, archive, fs, snapshot,
};

struct {{Class}}Adapter;

/// Settings of a backup (none yet: unknown keys are refused).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BackupConfig {}

/// Settings of a restore.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RestoreConfig {
    /// The directory entries are restored under (it must be granted).
    target: Option<String>,
}

impl Adapter for {{Class}}Adapter {
    type BackupConfig = BackupConfig;
    type RestoreConfig = RestoreConfig;
    type VerifyConfig = serde_json::Value;

    fn info() -> Info {
        Info::new("{{name}}", env!("CARGO_PKG_VERSION"), "Backs up the paths its job grants.")
            .needs(&[Capability::ReadPaths, Capability::WritePaths])
    }

    fn backup(_: BackupConfig) -> Result<BackupSummary, Error> {
        let mut summary = BackupSummary::default();
        for root in fs::granted_paths() {
            back_up(&root, &mut summary)?;
        }
        Ok(summary)
    }

    fn restore(config: RestoreConfig) -> Result<RestoreSummary, Error> {
        let Some(target) = config.target else {
            return Err(Error::InvalidConfig(
                "target: give the directory to restore into".into(),
            ));
        };
        let mut summary = RestoreSummary::default();
        let mut directories: Vec<(String, Metadata)> = Vec::new();
        while let Some(entry) = snapshot::next_entry()? {
            let path = format!("{}{}", target.trim_end_matches('/'), entry.path);
            match entry.kind {
                EntryKind::Directory => {
                    fs::create_dir(&path)?;
                    directories.push((path, entry.meta));
                    summary.directories += 1;
                }
                EntryKind::Symlink => {
                    fs::create_symlink(&path, entry.link_target.as_deref().unwrap_or_default())?;
                    fs::set_metadata(&path, &entry.meta)?;
                    summary.symlinks += 1;
                }
                EntryKind::File | EntryKind::Stream => {
                    // The host writes the file natively, in the background.
                    summary.bytes += snapshot::open(&entry.path)?.pump_to_file(&path)?;
                    fs::set_metadata(&path, &entry.meta)?;
                    summary.files += 1;
                }
            }
        }
        // A directory's times and mode last, once nothing more is written in it.
        for (path, meta) in directories.iter().rev() {
            fs::set_metadata(path, meta)?;
        }
        Ok(summary)
    }

    fn verify(_: serde_json::Value) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        while let Some(entry) = snapshot::next_entry()? {
            report.entries += 1;
            if matches!(entry.kind, EntryKind::File | EntryKind::Stream) {
                report.bytes += snapshot::open(&entry.path)?.discard()?;
            }
        }
        Ok(report)
    }
}

fn back_up(path: &str, summary: &mut BackupSummary) -> Result<(), Error> {
    let found = fs::stat(path)?;
    match found.kind {
        Some(EntryKind::Directory) => {
            archive::add_directory(path, &found.meta)?;
            summary.directories += 1;
            for name in fs::list_dir(path)? {
                back_up(&format!("{}/{name}", path.trim_end_matches('/')), summary)?;
            }
        }
        Some(EntryKind::Symlink) => {
            archive::add_symlink(path, found.link_target.as_deref().unwrap_or_default(), &found.meta)?;
            summary.symlinks += 1;
        }
        Some(EntryKind::File) => {
            // The host reads the file natively: no byte of it enters the sandbox.
            let mut entry = archive::begin_file(path, &found.meta)?;
            entry.pump_file(path)?;
            entry.finish()?;
            summary.files += 1;
        }
        _ => {
            archive::skip(path, "not a file, directory or symbolic link");
            summary.skipped += 1;
        }
    }
    Ok(())
}

cairn_sdk::export_adapter!({{Class}}Adapter);
