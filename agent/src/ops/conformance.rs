//! `cairn adapter check`: the conformance kit an adapter author runs on a
//! component before anyone depends on it. Each step is run whatever the
//! earlier ones found (where it can be), and named with what it found.
//!
//! The steps: the component loads and links against the interfaces the
//! host offers (naming any import the host lacks and any export it needs);
//! `info` answers; `configuration.check` (WIT 0.3.0) answers and refuses a
//! configuration that is not JSON with `invalid-config`; so does `backup`;
//! a backup into a scratch repository succeeds with every entry finished;
//! the snapshot restores and compares equal to what was backed up (a file
//! adapter, run on a fixture tree the kit writes) or the adapter's own
//! verify finds no problem (a service adapter, run with `--config`); and
//! the smallest memory limit that runs the backup.

use super::{Error, Store};
use crate::repo::Repository;
use crate::runtime::{AdapterSource, Grants, Limits, Runtime};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to check.
pub struct Options {
    /// The component file.
    pub component: PathBuf,
    /// The adapter configuration for its backup (a service adapter's
    /// server, say); `None`: a file adapter, run on a fixture tree.
    pub config: Option<serde_json::Value>,
    /// What the adapter may reach, beyond the fixture and the restore
    /// target the kit grants itself.
    pub grants: Box<dyn Fn() -> anyhow::Result<Grants> + Send + Sync>,
    /// Memory limit of the runs (the smallest that works is searched
    /// below it).
    pub memory: usize,
    /// Deadline of each adapter run: a step that passes it fails.
    pub timeout: std::time::Duration,
    /// Called with each step as it ends, so a long check shows progress.
    pub on_step: Option<OnStep>,
}

/// What is called with each step as it ends.
pub type OnStep = Box<dyn Fn(&Step) + Send + Sync>;

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it found.
    pub detail: String,
    /// Seconds it took.
    pub seconds: f64,
}

/// The whole check (`cairn adapter check --json` prints it).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "message_type", rename = "adapter_check")]
pub struct Report {
    /// The component checked.
    pub component: String,
    /// Its SHA-256.
    pub sha256: String,
    /// The adapter's name and version as `info` gives them.
    pub adapter: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Most linear memory the backup used, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// The smallest `--memory-limit` (MiB) the backup ran with.
    pub smallest_memory_limit_mib: Option<u64>,
    /// Whether every step passed.
    pub passed: bool,
}

/// Run every step; the report says what passed and what did not.
pub async fn run(o: Options) -> Report {
    let mut k = Kit {
        on_step: o.on_step.as_deref(),
        report: Report {
            component: o.component.display().to_string(),
            sha256: String::new(),
            adapter: None,
            steps: Vec::new(),
            peak_memory_bytes: None,
            smallest_memory_limit_mib: None,
            passed: false,
        },
    };
    let _ = k.all(&o).await;
    k.report.passed = k.report.steps.iter().all(|s| s.ok);
    k.report
}

struct Kit<'a> {
    report: Report,
    on_step: Option<&'a (dyn Fn(&Step) + Send + Sync)>,
}

/// A step that failed in a way that stops the later ones.
struct Stop;

impl Kit<'_> {
    fn step(&mut self, name: &str, clock: Instant, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let step = Step {
            name: name.into(),
            ok,
            detail: result.unwrap_or_else(|e| e),
            seconds: clock.elapsed().as_secs_f64(),
        };
        if let Some(f) = self.on_step {
            f(&step);
        }
        self.report.steps.push(step);
        ok
    }

    async fn all(&mut self, o: &Options) -> Result<(), Stop> {
        let runtime = Runtime::new().map_err(|e| {
            self.step("load", Instant::now(), Err(format!("{e:#}")));
            Stop
        })?;
        let source = AdapterSource::File(o.component.clone(), None);
        let name = source.name();
        let clock = Instant::now();
        let (component, sha256) = match runtime.load_identified(&source) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.step("load", clock, Err(format!("{e:#}")));
                return Err(Stop);
            }
        };
        self.report.sha256 = sha256;
        self.step(
            "load",
            clock,
            Ok("compiled (or read from the cache)".into()),
        );

        // Links: every import the host offers, every export it calls.
        let clock = Instant::now();
        let seen = runtime.inspect(&component);
        let wanted = ["info", "backup", "restore", "verify"];
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !seen.exports.iter().any(|e| e == *w))
            .copied()
            .collect();
        let versions: std::collections::BTreeSet<&str> = seen
            .imports
            .iter()
            .filter_map(|i| i.strip_prefix("cairn:adapter/"))
            .filter_map(|i| i.split_once('@').map(|(_, v)| v))
            .collect();
        let linked = match (&seen.link_error, missing.is_empty()) {
            (Some(e), _) => Err(format!("does not link against this host: {e}")),
            (None, false) => Err(format!("does not export {}", missing.join(", "))),
            (None, true) => Ok(format!(
                "links; imports cairn:adapter {}",
                if versions.is_empty() {
                    "nothing".to_string()
                } else {
                    versions.into_iter().collect::<Vec<_>>().join(", ")
                }
            )),
        };
        if !self.step("link", clock, linked) {
            return Err(Stop);
        }

        let clock = Instant::now();
        let info = match runtime.info(&name, &component).await {
            Ok(i) => i,
            Err(e) => {
                self.step("info", clock, Err(format!("{e:#}")));
                return Err(Stop);
            }
        };
        self.report.adapter = Some(format!("{} {}", info.name, info.version));
        let described = if info.name.is_empty() || info.version.is_empty() {
            Err("info gives an empty name or version".to_string())
        } else {
            Ok(format!(
                "{} {}: {} (needs: {})",
                info.name,
                info.version,
                info.description,
                info.needs.join(", ")
            ))
        };
        self.step("info", clock, described);

        let files = o.config.is_none();
        let config = o.config.clone().unwrap_or_else(|| serde_json::json!({}));
        let clock = Instant::now();
        let checked = if seen
            .exports
            .iter()
            .any(|e| e == "cairn:adapter/configuration@0.3.0")
        {
            let good = runtime
                .check_config(&name, &component, &config.to_string(), None)
                .await;
            let bad = runtime
                .check_config(&name, &component, "not json", None)
                .await;
            match (good, bad) {
                (Err(e), _) => Err(format!("refuses the configuration given: {e:#}")),
                (_, Ok(_)) => Err("accepts a configuration that is not JSON".into()),
                (_, Err(e)) if !invalid_config(&e) => Err(format!(
                    "answers a configuration that is not JSON with something other than invalid-config: {e:#}"
                )),
                (Ok(f), Err(_)) => {
                    let reads = f.unwrap_or_default().reads;
                    Ok(format!(
                        "accepts the configuration (reads: {}); refuses one that is not JSON with invalid-config",
                        if reads.is_empty() {
                            "nothing it names".to_string()
                        } else {
                            reads.join(", ")
                        }
                    ))
                }
            }
        } else {
            Ok("no configuration export (built before WIT 0.3.0): the agent cannot check a job's settings before it runs".into())
        };
        self.step("configuration.check", clock, checked);

        // A scratch repository, removed with the directory.
        let scratch = tempfile::Builder::new()
            .prefix("cairn-adapter-check-")
            .tempdir()
            .map_err(|e| {
                self.step(
                    "backup",
                    Instant::now(),
                    Err(format!("a scratch directory: {e}")),
                );
                Stop
            })?;
        let repo = self.repository(scratch.path()).await?;
        let store = Store {
            repo,
            pair: None,
            no_lock: false,
        };
        let fixture = scratch.path().join("fixture");
        if files && let Err(e) = write_fixture(&fixture) {
            self.step(
                "backup",
                Instant::now(),
                Err(format!("writing the fixture: {e}")),
            );
            return Err(Stop);
        }
        let grants = |extra: &[(&Path, bool)]| -> Result<Grants, String> {
            let mut g = (o.grants)().map_err(|e| format!("{e:#}"))?;
            for (p, w) in extra {
                let p = p.to_str().ok_or("a scratch path is not UTF-8")?;
                g.add(p, *w).map_err(|e| e.to_string())?;
            }
            Ok(g)
        };
        let backup = |config: serde_json::Value, memory: usize| {
            let granted = if files {
                grants(&[(&fixture, false)])
            } else {
                grants(&[])
            };
            let paths = if files {
                vec![fixture.display().to_string()]
            } else {
                Vec::new()
            };
            let store = &store;
            async move {
                let options = super::backup::Options {
                    source: AdapterSource::File(o.component.clone(), None),
                    paths,
                    grants: granted.map_err(|e| (e.clone(), Error::Invalid(e)))?,
                    config,
                    excludes: Vec::new(),
                    tags: Vec::new(),
                    host: "adapter-check".into(),
                    time: None,
                    force: true,
                    job: None,
                    compression: 3,
                    limits: Limits {
                        memory,
                        timeout: o.timeout,
                    },
                    on_progress: None,
                    began: (chrono::Utc::now().fixed_offset(), Instant::now()),
                };
                super::backup::run(store, options)
                    .await
                    .map_err(|e| (format!("{e:#}"), e))
            }
        };

        let clock = Instant::now();
        let refused = match backup(serde_json::json!("not a JSON object"), o.memory).await {
            Ok(_) => Err("backs up with a configuration that is not a JSON object".into()),
            Err((m, Error::Adapter(e))) if invalid_config(&e) => {
                Ok(format!("refused with invalid-config: {m}"))
            }
            Err((m, _)) => Err(format!(
                "a configuration that is not a JSON object must give invalid-config, not: {m}"
            )),
        };
        self.step("bad configuration", clock, refused);

        let clock = Instant::now();
        let done = match backup(config.clone(), o.memory).await {
            Ok(r) => r,
            Err((m, _)) => {
                self.step("backup", clock, Err(m));
                return Err(Stop);
            }
        };
        self.report.peak_memory_bytes = Some(done.adapter_memory_bytes);
        let backed_up = if done.complete {
            Ok(format!(
                "snapshot {}: {} files, {} directories, {} bytes, every entry finished",
                &done.snapshot_id[..8],
                done.files,
                done.directories,
                done.bytes_read
            ))
        } else {
            Err(format!(
                "left entries out: {}",
                done.skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.path, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        };
        self.step("backup", clock, backed_up);

        let (id, snap) = store
            .repo
            .find_snapshot(&done.snapshot_id)
            .await
            .map_err(|e| {
                self.step("restore", Instant::now(), Err(format!("{e}")));
                Stop
            })?;
        let restore_options = |config: serde_json::Value, grants: Grants| super::restore::Options {
            snapshot: id,
            tree: snap.tree,
            source: AdapterSource::File(o.component.clone(), None),
            grants,
            config,
            include: Vec::new(),
            overwrite: false,
            limits: Limits {
                memory: o.memory,
                timeout: o.timeout,
            },
            target: "adapter check".into(),
        };
        let clock = Instant::now();
        if files {
            let target = scratch.path().join("restored");
            let result = async {
                std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
                let mut c = config.clone();
                if let Some(obj) = c.as_object_mut() {
                    obj.insert("target".into(), target.display().to_string().into());
                }
                let g = grants(&[(&target, true)])?;
                let r = super::restore::run(&store, restore_options(c, g))
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                // The fixture's path is recorded whole under the target,
                // in real directories: a symbolic link on the way would
                // compare the fixture with itself.
                let restored = target.join(fixture.strip_prefix("/").unwrap_or(&fixture));
                let mut walked = target.clone();
                for part in restored.strip_prefix(&target).map_err(|e| e.to_string())? {
                    walked.push(part);
                    let real =
                        std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_dir());
                    if !real {
                        return Err(format!(
                            "{} was not restored as a directory (a symbolic link or nothing)",
                            walked.display()
                        ));
                    }
                }
                let differences = compare_dirs(&fixture, &restored);
                if differences.is_empty() {
                    Ok(format!(
                        "{} files restored under {}; every byte, mode and link equals the fixture",
                        r.files,
                        target.display()
                    ))
                } else {
                    Err(format!(
                        "the restored tree differs from the fixture: {}",
                        differences.join("; ")
                    ))
                }
            }
            .await;
            self.step("restore and compare", clock, result);
        }
        // The adapter's own verify: a file adapter's too; a service
        // adapter's against its service (its restore is not run: it would
        // write into the live service).
        let clock = Instant::now();
        let result = async {
            let g = grants(&[])?;
            let r = super::restore::verify(&store, restore_options(config.clone(), g))
                .await
                .map_err(|e| format!("{e:#}"))?;
            if r.problems.is_empty() {
                Ok(format!(
                    "verify compared {} entries ({} bytes): no problem",
                    r.entries, r.bytes
                ))
            } else {
                Err(format!("verify found: {}", r.problems.join("; ")))
            }
        }
        .await;
        self.step("verify", clock, result);

        // The smallest limit: the peak rounded up to a MiB, then proven by
        // a second backup that runs under it.
        let clock = Instant::now();
        let mib = done.adapter_memory_bytes.div_ceil(1 << 20).max(1);
        let proven = match backup(config.clone(), (mib as usize) << 20).await {
            Ok(_) => {
                self.report.smallest_memory_limit_mib = Some(mib);
                Ok(format!(
                    "peak {:.1} MiB of linear memory; --memory-limit {mib} works for this fixture (more data may need more)",
                    done.adapter_memory_bytes as f64 / f64::from(1 << 20)
                ))
            }
            Err((m, _)) => Err(format!(
                "the backup used {mib} MiB at most but fails under --memory-limit {mib}: {m}"
            )),
        };
        self.step("memory", clock, proven);
        Ok(())
    }

    async fn repository(&mut self, dir: &Path) -> Result<Arc<Repository>, Stop> {
        let backend = Arc::new(crate::storage::local::LocalBackend::new(dir.join("repo")));
        // A scratch repository: a cheap key derivation is enough.
        match Repository::init_with_cost(backend, "adapter-check", 10).await {
            Ok(r) => Ok(Arc::new(r)),
            Err(e) => {
                self.step(
                    "backup",
                    Instant::now(),
                    Err(format!("a scratch repository: {e}")),
                );
                Err(Stop)
            }
        }
    }
}

/// Whether an adapter run failed with the adapter's own `invalid-config`.
fn invalid_config(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::runtime::AdapterFailure>()
        .is_some_and(|f| f.case == "invalid-config")
}

/// A small tree with what file adapters get wrong: nested and empty
/// directories, empty and large files, names with spaces and non-ASCII
/// letters, modes, and a relative symbolic link.
fn write_fixture(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("nested/deeper"))?;
    std::fs::create_dir_all(root.join("empty dir"))?;
    std::fs::write(root.join("empty"), b"")?;
    std::fs::write(root.join("café ☕.txt"), "unicode name\n")?;
    std::fs::write(root.join("nested/with space.txt"), "a name with a space\n")?;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = vec![0u8; 3 << 20];
    for b in noise.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    std::fs::write(root.join("nested/deeper/noise.bin"), &noise)?;
    std::fs::write(root.join("nested/repeated.txt"), "cairn ".repeat(200_000))?;
    for i in 0..50 {
        std::fs::write(root.join(format!("nested/small-{i:02}")), format!("{i}\n"))?;
    }
    let private = root.join("nested/private");
    std::fs::write(&private, "mode 0600\n")?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::symlink("nested/with space.txt", root.join("link"))?;
    Ok(())
}

/// Every difference between tree `a` and tree `b`: an entry missing from
/// either, another kind, other bytes, another mode or link target.
fn compare_dirs(a: &Path, b: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let names = |d: &Path| -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let (left, right) = (names(a), names(b));
    for n in right.difference(&left) {
        found.push(format!("{} is not in the fixture", b.join(n).display()));
    }
    for n in &left {
        let (x, y) = (a.join(n), b.join(n));
        let (Ok(mx), Ok(my)) = (std::fs::symlink_metadata(&x), std::fs::symlink_metadata(&y))
        else {
            found.push(format!("{} was not restored", y.display()));
            continue;
        };
        let (tx, ty) = (mx.file_type(), my.file_type());
        if tx.is_symlink() || ty.is_symlink() {
            if std::fs::read_link(&x).ok() != std::fs::read_link(&y).ok() {
                found.push(format!("{}: another link target", y.display()));
            }
        } else if tx.is_dir() != ty.is_dir() {
            found.push(format!("{}: another kind of entry", y.display()));
        } else if tx.is_dir() {
            found.extend(compare_dirs(&x, &y));
        } else if std::fs::read(&x).ok() != std::fs::read(&y).ok() {
            found.push(format!("{}: other content", y.display()));
        }
        if !tx.is_symlink() && mx.permissions().mode() & 0o7777 != my.permissions().mode() & 0o7777
        {
            found.push(format!(
                "{}: mode {:o}, the fixture has {:o}",
                y.display(),
                my.permissions().mode() & 0o7777,
                mx.permissions().mode() & 0o7777
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_names_every_difference() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_fixture(&a).unwrap();
        write_fixture(&b).unwrap();
        assert!(compare_dirs(&a, &b).is_empty());
        std::fs::write(b.join("nested/small-07"), "changed\n").unwrap();
        std::fs::remove_file(b.join("empty")).unwrap();
        std::fs::write(b.join("extra"), "").unwrap();
        let found = compare_dirs(&a, &b).join("\n");
        assert!(found.contains("small-07: other content"), "{found}");
        assert!(found.contains("empty was not restored"), "{found}");
        assert!(found.contains("extra is not in the fixture"), "{found}");
    }
}
