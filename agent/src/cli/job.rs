//! What `backup`, `restore` and `verify` share: the flags that give an
//! adapter its grants and configuration, and how a config file's job fills
//! them in (`--job`), with `--set key=value` overriding the job's adapter
//! configuration for one run.

use super::Global;
use crate::config::JobConfig;
use crate::runtime::Grants;
use anyhow::{Context, bail};

/// Grants and adapter configuration from the command line.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AdapterFlags {
    /// Let the adapter connect to this TCP endpoint, `ip:port` or
    /// `host:port` (repeatable); it reaches nothing else on the network.
    #[arg(long = "grant-connect", value_name = "ENDPOINT")]
    pub grant_connect: Vec<String>,
    /// Let the adapter start this program: a bare name found on PATH, or
    /// an absolute path (repeatable).
    #[arg(long = "grant-program", value_name = "PROGRAM")]
    pub grant_program: Vec<String>,
    /// Let the adapter name the secret NAME, whose value is FILE's content
    /// (repeatable). The adapter passes it to processes by reference.
    #[arg(long = "grant-secret", value_name = "NAME=FILE")]
    pub grant_secret: Vec<String>,
    /// Let the adapter use the bucket NAME at URL:
    /// `http[s]://HOST[:PORT]/BUCKET[/PREFIX]?region=R[&write][&path-style]
    /// [&credentials-file=FILE][&profile=P]` (repeatable). Only the host
    /// reads the credentials.
    #[arg(long = "grant-bucket", value_name = "NAME=URL")]
    pub grant_bucket: Vec<String>,
    /// Buckets a config file's job grants, by name.
    #[arg(skip)]
    pub buckets: std::collections::BTreeMap<String, crate::config::BucketGrant>,
    /// Adapter configuration as a JSON object (adapters other than filesystem).
    #[arg(long)]
    pub adapter_config: Option<String>,
    /// Override one key of the adapter configuration for this run; VALUE is
    /// JSON (`5433`, `["shop"]`, `true`) or else a plain string; `null` is
    /// the string "null", never an unset (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl AdapterFlags {
    /// Add what `job` grants and configures; `--adapter-config` cannot
    /// replace a job's `config`.
    pub fn add_job(&mut self, job_name: &str, job: &JobConfig) -> anyhow::Result<()> {
        self.grant_connect
            .extend(job.grants.connect.iter().cloned());
        self.grant_program
            .extend(job.grants.programs.iter().cloned());
        for (name, file) in &job.grants.secrets {
            if name.contains('=') {
                bail!("grants.secrets: secret name {name:?} may not contain '='");
            }
            self.grant_secret.push(format!("{name}={}", file.display()));
        }
        self.buckets.extend(
            job.grants
                .buckets
                .iter()
                .map(|(n, b)| (n.clone(), b.clone())),
        );
        // The job's config says where it connects and as whom: a command
        // line may change keys of it (`--set`, which refuses those), not
        // replace it whole while keeping the job's grants and secrets.
        if self.adapter_config.is_some() {
            bail!(
                "--adapter-config replaces a job's whole configuration (job {job_name}); with --job, change single keys with --set"
            );
        }
        if let Some(c) = &job.config {
            self.adapter_config = Some(serde_json::to_string(c)?);
        }
        Ok(())
    }

    /// The grants these flags (and `env`, a job's variables) describe.
    pub fn grants(
        &self,
        env: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Grants> {
        let mut grants = Grants::default();
        for endpoint in &self.grant_connect {
            grants
                .add_connect(endpoint)
                .with_context(|| format!("--grant-connect {endpoint}"))?;
        }
        for program in &self.grant_program {
            grants
                .add_program(program)
                .with_context(|| format!("granting program {program}"))?;
        }
        for spec in &self.grant_secret {
            let Some((name, file)) = spec.split_once('=') else {
                bail!("--grant-secret {spec:?}: expected NAME=FILE");
            };
            grants
                .add_secret(name, std::path::Path::new(file))
                .with_context(|| format!("granting secret {name}"))?;
        }
        let mut buckets = self.buckets.clone();
        for spec in &self.grant_bucket {
            let Some((name, url)) = spec.split_once('=') else {
                bail!("--grant-bucket {spec:?}: expected NAME=URL");
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                bail!("--grant-bucket {name:?}: names use a-z, 0-9, '-' and '_' only");
            }
            let grant = crate::config::BucketGrant::from_url(url)
                .map_err(|e| anyhow::anyhow!("--grant-bucket {name}: {e}"))?;
            grant
                .validate(&format!("--grant-bucket {name}"))
                .map_err(anyhow::Error::msg)?;
            if buckets.insert(name.to_string(), grant).is_some() {
                bail!("--grant-bucket {name}: the bucket grant {name} is given twice");
            }
        }
        for (name, grant) in buckets {
            grants
                .add_bucket(&name, grant)
                .with_context(|| format!("granting bucket {name}"))?;
        }
        for (name, value) in env {
            grants
                .add_env(name, value)
                .with_context(|| format!("granting environment variable {name}"))?;
        }
        Ok(grants)
    }

    /// The adapter configuration: `--adapter-config` (or the job's) with
    /// every `--set` applied; `None` when neither is given.
    pub fn config(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let mut config = match &self.adapter_config {
            Some(json) => Some(
                serde_json::from_str::<serde_json::Value>(json)
                    .context("--adapter-config is not valid JSON")?,
            ),
            None => None,
        };
        if self.set.is_empty() {
            return Ok(config);
        }
        let object = config
            .get_or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .context("the adapter configuration is not a JSON object, so --set cannot change it")?;
        for spec in &self.set {
            let Some((key, value)) = spec.split_once('=') else {
                bail!("--set {spec:?}: expected KEY=VALUE");
            };
            if key.is_empty() {
                bail!("--set {spec:?}: the key is empty");
            }
            if let Err(e) = crate::config::check_override_key(key) {
                bail!("--set {e} (use --adapter-config without a job for a one-off)");
            }
            // JSON `null` would unset the key and fall back to the
            // adapter's default (`target-database=null` restoring over the
            // original database, say): it is the string "null" here.
            let value = match serde_json::from_str(value) {
                Ok(serde_json::Value::Null) | Err(_) => {
                    serde_json::Value::String(value.to_string())
                }
                Ok(v) => v,
            };
            object.insert(key.to_string(), value);
        }
        Ok(config)
    }
}

/// The limits of an adapter run.
#[derive(clap::Args, Debug)]
pub struct LimitFlags {
    /// Adapter memory cap in MiB.
    #[arg(long, default_value_t = 512)]
    memory_limit: usize,
    /// Stop the adapter after this many seconds (default: 24 hours).
    #[arg(long)]
    timeout: Option<u64>,
}

impl LimitFlags {
    /// The limits these flags set.
    pub fn limits(&self) -> crate::runtime::Limits {
        use crate::runtime::Limits;
        Limits {
            memory: self.memory_limit << 20,
            timeout: self
                .timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(Limits::default().timeout),
        }
    }
}

/// A config file's job, looked up by name, and the options acting on its
/// tenant. Refuses a `--tenant` that is not the job's.
pub fn load(g: &Global, name: &str) -> anyhow::Result<(JobConfig, Global)> {
    let config = g.config()?;
    let job = config
        .jobs
        .get(name)
        .with_context(|| format!("job {name} is not in the config"))?
        .clone();
    if let Some(t) = g.tenant.as_ref().filter(|t| **t != job.tenant) {
        bail!("job {name} belongs to tenant {}, not {t}", job.tenant);
    }
    let g = g.for_tenant(&job.tenant);
    Ok((job, g))
}
