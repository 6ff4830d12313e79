//! The options every command shares, and opening what they name: the
//! config, the tenant's storage (a local directory, or its region pair
//! behind the residency checks), the password, the repository.

use super::{Outcome, note};
use crate::config::{Config, Placement, RegionConfig};
use crate::ops::Store;
use crate::repo::Repository;
use crate::residency::Policy;
use crate::residency::audit::AuditLog;
use crate::residency::pair::PairBackend;
use crate::storage::Backend;
use crate::storage::local::LocalBackend;
use crate::storage::s3::S3Backend;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Shared options for commands.
#[derive(Clone)]
pub struct Global {
    pub(super) repo: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) config_path: Option<PathBuf>,
    pub(super) tenant: Option<String>,
    /// Print JSON.
    pub json: bool,
    /// Read without a lock (`--no-lock`).
    pub(super) no_lock: bool,
    /// `--retry-lock`.
    pub(super) retry_lock: Option<std::time::Duration>,
    /// No local metadata cache (`--no-cache`).
    pub(super) no_cache: bool,
    /// `--connections`.
    pub(super) connections: Option<u16>,
    /// `$CAIRN_PASSWORD`, taken out of the environment at start.
    pub(super) env_password: Option<Arc<str>>,
    /// What the command opened, for what it met on the way (damaged
    /// files passed over, copies healed, regions lagging), said at its end.
    pub(super) opened: Arc<Mutex<Opened>>,
}

/// The repositories and region pairs a command opened.
#[derive(Default)]
pub(super) struct Opened {
    repos: Vec<Arc<Repository>>,
    pairs: Vec<Arc<PairBackend>>,
}

impl Global {
    /// The configuration file, loaded and validated.
    pub fn config(&self) -> anyhow::Result<Config> {
        let Some(path) = &self.config_path else {
            bail!("this command needs --config (or CAIRN_CONFIG)");
        };
        Ok(Config::load(path)?)
    }

    /// The same options acting on `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Global {
        let mut g = self.clone();
        g.tenant = Some(tenant.to_string());
        g
    }

    /// Say what the tenant's pair healed and which region lags. A lagging
    /// region turns a successful write into [`Outcome::Degraded`].
    pub(super) fn finish(&self, outcome: Outcome, wrote: bool) -> Outcome {
        let pairs = self.opened.lock().expect("opened").pairs.clone();
        let mut lagged = false;
        for pair in pairs {
            lagged |= Self::say_pair(&pair);
        }
        match outcome {
            Outcome::Ok if wrote && lagged => Outcome::Degraded,
            o => o,
        }
    }

    /// Say what a pair healed and which region lags; true if one does.
    pub(super) fn say_pair(pair: &PairBackend) -> bool {
        for h in pair.healed() {
            note(format!(
                "healed {}: the copy in {} was bad ({}); used the copy in {}",
                h.key, h.bad_region, h.reason, h.from_region
            ));
        }
        let lagging = pair.lagging();
        for (region, why) in &lagging {
            note(format!(
                "tenant {}: region {region} is lagging ({why}); run `cairn replicate --tenant {}` when it is back",
                pair.tenant(),
                pair.tenant()
            ));
        }
        !lagging.is_empty()
    }

    /// Open the tenant's region pair (residency checks and audit log on).
    pub async fn open_pair(
        &self,
        config: &Config,
        tenant: &str,
    ) -> anyhow::Result<Arc<PairBackend>> {
        self.open_pair_with(config, tenant, false).await
    }

    /// Open the tenant's region pair; `allow_shredded` only for `tenant shred`.
    pub async fn open_pair_with(
        &self,
        config: &Config,
        tenant: &str,
        allow_shredded: bool,
    ) -> anyhow::Result<Arc<PairBackend>> {
        let audit = AuditLog::open(&config.audit_log).map_err(anyhow::Error::msg)?;
        let policy = Arc::new(Policy::from_config(config));
        let pair = Arc::new(
            PairBackend::open(config, tenant, policy, Arc::new(audit), allow_shredded).await?,
        );
        self.opened.lock().expect("opened").pairs.push(pair.clone());
        Ok(pair)
    }

    /// The storage the options name, and the region pair behind it when
    /// it is a tenant's pair.
    pub(super) async fn backend(
        &self,
    ) -> anyhow::Result<(Arc<dyn Backend>, Option<Arc<PairBackend>>)> {
        if let Some(tenant) = &self.tenant {
            if self.repo.is_some() {
                bail!("give either -r/--repo or --tenant, not both");
            }
            let config = self.config()?;
            return match config.placement(tenant).map_err(anyhow::Error::msg)? {
                Placement::Local(dir) => Ok((Arc::new(LocalBackend::new(dir)), None)),
                Placement::Pair { .. } => {
                    let pair = self.open_pair(&config, tenant).await?;
                    Ok((pair.clone(), Some(pair)))
                }
            };
        }
        let Some(repo) = &self.repo else {
            if self.config_path.is_some() {
                bail!("no tenant given: use --tenant (or backup --job)");
            }
            bail!("no repository given: use -r/--repo or set CAIRN_REPOSITORY");
        };
        if let Some(url) = repo.strip_prefix("s3:") {
            if self.config_path.is_some() {
                bail!(
                    "-r s3:... bypasses the residency checks of --config; use --tenant to reach a tenant's S3 repository"
                );
            }
            return Ok((Arc::new(s3_from_url(url, self.connections).await?), None));
        }
        let path = repo.strip_prefix("local:").unwrap_or(repo);
        if path.contains("://") {
            bail!("repository {repo:?}: use a local directory or s3:https://host/bucket/prefix");
        }
        Ok((Arc::new(LocalBackend::new(path)), None))
    }

    pub(super) fn password(&self, confirm: bool) -> anyhow::Result<String> {
        if let Some(tenant) = &self.tenant {
            let config = self.config()?;
            let t = config
                .tenants
                .get(tenant)
                .with_context(|| format!("tenant {tenant} is not in the config"))?;
            return read_password_file(&t.password_file)
                .with_context(|| format!("tenant {tenant}"));
        }
        if let Some(file) = &self.password_file {
            return read_password_file(file);
        }
        if let Some(pw) = &self.env_password {
            if pw.is_empty() {
                bail!("CAIRN_PASSWORD is set but empty");
            }
            return Ok(pw.to_string());
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "no password given: use --password-file or CAIRN_PASSWORD (stdin is not a terminal)"
            );
        }
        let pw = rpassword::prompt_password("enter password for repository: ")?;
        if confirm && rpassword::prompt_password("enter password again: ")? != pw {
            bail!("the passwords do not match");
        }
        if pw.is_empty() {
            bail!("an empty password is not allowed");
        }
        Ok(pw)
    }

    /// Open the repository and load its index.
    pub async fn open(&self) -> anyhow::Result<Store> {
        let store = self.open_without_index().await?;
        store.repo.load_index().await?;
        Ok(store)
    }

    /// Open the repository without reading its index (an operation that
    /// locks first reads it under its lock; `check` reads index files one
    /// by one so it can report a damaged one).
    pub async fn open_without_index(&self) -> anyhow::Result<Store> {
        let (backend, pair) = self.backend().await?;
        let password = self.password(false)?;
        let mut repo = Repository::open(backend, &password).await?;
        self.tune(&mut repo);
        let repo = Arc::new(repo);
        self.opened.lock().expect("opened").repos.push(repo.clone());
        Ok(Store {
            repo,
            pair: pair.map(|p| p as Arc<dyn crate::residency::pair::Replicated>),
            no_lock: self.no_lock,
        })
    }

    /// The same options without the metadata cache: `check` reads what the
    /// storage holds, as restic's does.
    pub fn uncached(&self) -> Global {
        let mut g = self.clone();
        g.no_cache = true;
        g
    }

    /// Apply `--connections` and the metadata cache (for a repository not
    /// on a local disk, unless `--no-cache`) to a repository just opened.
    pub fn tune(&self, repo: &mut Repository) {
        if let Some(d) = self.retry_lock {
            repo.set_lock_retry(d);
        }
        if let Some(n) = self.connections {
            repo.set_connections(n.into());
        }
        if self.no_cache || !repo.backend().remote() {
            return;
        }
        let Some(base) = crate::util::cache_dir() else {
            return;
        };
        match crate::repo::cache::Cache::open(&base, &repo.config().id) {
            Ok(c) => repo.set_cache(c),
            Err(e) => eprintln!(
                "cairn: warning: no metadata cache in {} ({e}); reading everything from the repository",
                base.join("repos").join(&repo.config().id).display()
            ),
        }
    }

    /// The damaged files the opened repositories passed over.
    pub(super) fn damage(&self) -> Vec<String> {
        let mut all = Vec::new();
        for repo in self.opened.lock().expect("opened").repos.iter() {
            for d in repo.damage() {
                if !all.contains(&d) {
                    all.push(d);
                }
            }
        }
        all
    }
}

fn read_password_file(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the password file {}", file.display()))?;
    let pw = text.lines().next().unwrap_or_default().to_string();
    if pw.is_empty() {
        bail!("the password file {} is empty", file.display());
    }
    Ok(pw)
}

/// A backend for `-r s3:https://host[:port]/bucket/prefix`, restic's form.
/// The region comes from AWS_REGION / AWS_DEFAULT_REGION (default
/// us-east-1) and credentials from the standard AWS chain.
async fn s3_from_url(url: &str, connections: Option<u16>) -> anyhow::Result<S3Backend> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("https", url),
    };
    let mut parts = rest.splitn(3, '/');
    let host = parts.next().unwrap_or_default();
    let bucket = parts.next().unwrap_or_default();
    let prefix = parts.next().unwrap_or_default().trim_matches('/');
    if host.is_empty() || bucket.is_empty() {
        bail!("repository s3:{url}: expected s3:https://host[:port]/bucket[/prefix]");
    }
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".into());
    let mut cfg = RegionConfig::new(&format!("{scheme}://{host}"), bucket);
    cfg.path_style = !host.ends_with("amazonaws.com");
    if let Some(n) = connections {
        cfg.concurrency = n.into();
    }
    let check = Config {
        regions: [(region.clone(), cfg.clone())].into(),
        ..Default::default()
    };
    check.validate().map_err(anyhow::Error::msg)?;
    Ok(S3Backend::new(&region, &cfg, prefix).await?)
}
