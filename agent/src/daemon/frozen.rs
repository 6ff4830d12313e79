//! The config as the agent accepted it: validated, with its API token
//! read, and frozen into the copy the agent's commands read (so an edit on
//! disk takes effect only through a reload that accepts it).

use super::Target;
use crate::config::Config;
use crate::config::schedule::Schedule;
use anyhow::Context;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// A config the agent accepted, with what it derived from it.
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// The copy the agent's commands read (`<state-dir>/config-<hash>.toml`).
    pub frozen: PathBuf,
    /// The API's bearer token.
    pub token: Option<String>,
    /// When it was accepted.
    pub loaded_at: DateTime<Utc>,
}

impl Loaded {
    /// [`Loaded::load`], then every job's settings checked by its adapter
    /// (see [`crate::ops::settings`]): a refusal refuses the config; a job
    /// that could not be checked is logged and fails when it runs.
    ///
    /// With `refuse_refused` (`--check-config`), a job whose own settings
    /// its adapter refuses refuses the config too.
    pub async fn load_checked(
        path: &Path,
        freeze: bool,
        refuse_refused: bool,
    ) -> anyhow::Result<Loaded> {
        let loaded = Loaded::load(path, freeze)?;
        let checked = crate::ops::settings::check(&loaded.config)
            .await
            .with_context(|| format!("config {}", path.display()))?;
        for why in &checked.unchecked {
            tracing::warn!(reason = %why, "Could not check a job's settings before it runs.");
        }
        for why in &checked.refused {
            tracing::error!(reason = %why, "A job's adapter refuses its settings: the job will fail when it runs.");
        }
        if refuse_refused && !checked.refused.is_empty() {
            anyhow::bail!("config {}: {}", path.display(), checked.refused.join("; "));
        }
        Ok(loaded)
    }

    /// Read and validate the config at `path` (and its token file); with
    /// `freeze`, also write the copy the agent's commands read.
    pub fn load(path: &Path, freeze: bool) -> anyhow::Result<Loaded> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config {}", path.display()))?;
        let config = Config::parse(path, &text)?;
        let token = match &config.agent.api_token_file {
            Some(file) => {
                let t = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the API token file {}", file.display()))?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    anyhow::bail!(
                        "the API token in {} is shorter than 16 characters",
                        file.display()
                    );
                }
                Some(t)
            }
            None => None,
        };
        let dir = &config.agent.state_dir;
        if !freeze {
            return Ok(Loaded {
                frozen: path.to_path_buf(),
                config,
                token,
                loaded_at: Utc::now(),
            });
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let hash = crate::repo::Id::hash(text.as_bytes()).to_hex();
        let frozen = dir.join(format!("config-{}.toml", &hash[..16]));
        if !frozen.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = dir.join(format!(".config-{}.tmp", &hash[..16]));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &frozen)
                .with_context(|| format!("writing {}", frozen.display()))?;
        }
        Ok(Loaded {
            config,
            frozen,
            token,
            loaded_at: Utc::now(),
        })
    }

    /// Every schedule the config declares.
    pub(super) fn schedules(&self) -> Vec<(Target, Schedule)> {
        let c = &self.config;
        let tz = |t: &Option<String>| t.clone().unwrap_or_else(|| c.agent.timezone.clone());
        let mut out = Vec::new();
        for (name, job) in &c.jobs {
            if let Some(s) = &job.schedule
                && let Ok(s) = Schedule::parse(s, &tz(&job.timezone), job.schedule_spread_secs)
            {
                out.push((Target::Backup(name.clone()), s));
            }
            if let Some(s) = job.drill.as_ref().and_then(|d| d.schedule.as_ref())
                && let Ok(s) = Schedule::parse(s, &tz(&job.timezone), job.schedule_spread_secs)
            {
                out.push((Target::Drill(name.clone()), s));
            }
        }
        for (name, g) in &c.groups {
            if let Ok(s) = Schedule::parse(&g.schedule, &tz(&g.timezone), g.schedule_spread_secs) {
                out.push((Target::Group(name.clone()), s));
            }
        }
        out
    }
}
