//! What the host asks a component about itself, outside any backup or
//! restore: what it imports and exports (`inspect`), who it is (`info`),
//! and whether a job's settings are valid and what they touch
//! (`configuration.check`, WIT 0.3.0). These calls run with no grants, a
//! short deadline and bounded answers.

use super::{
    AdapterError, Grants, Limits, Runtime, bindings, explain, host, timed_out, wasi_ctx,
    with_deadline,
};
use anyhow::anyhow;
use std::time::Duration;
use wasmtime::component::Component;

/// What a job's settings touch outside the repository, as the adapter's
/// `configuration.check` (WIT 0.3.0) names it: resource names, where one
/// ending in `/` covers every name starting with it.
#[derive(
    wasmtime::component::ComponentType,
    wasmtime::component::Lift,
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
)]
#[component(record)]
pub struct Footprint {
    /// What a backup with the settings reads.
    pub reads: Vec<String>,
    /// What the job's drill writes.
    pub writes: Vec<String>,
}

/// An adapter's own error (its WIT `adapter-error`), as the host reports
/// it; found under any context with `anyhow::Error::downcast_ref`.
#[derive(Debug)]
pub struct AdapterFailure {
    /// The WIT case: `invalid-config`, `not-found`, `denied`, `io`,
    /// `corrupt` or `other`.
    pub case: &'static str,
    pub(super) message: String,
}

impl std::fmt::Display for AdapterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdapterFailure {}

/// What a component offers and needs, read from its type.
#[derive(Debug, Clone, Default)]
pub struct Inspected {
    /// Its exports, by name.
    pub exports: Vec<String>,
    /// Its imports, by name.
    pub imports: Vec<String>,
    /// Why it cannot link against this host (an import the host lacks).
    pub link_error: Option<String>,
}

/// What an adapter's `info` says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it backs up.
    pub description: String,
    /// The capabilities it needs (`read-paths`, ...).
    pub needs: Vec<String>,
}

/// An adapter's `info`, refused when its name or version is longer than
/// a snapshot should carry (every snapshot records them) or its
/// description longer than a line.
pub(super) fn bounded(
    info: bindings::cairn::adapter0_1_0::types::AdapterInfo,
) -> wasmtime::Result<bindings::cairn::adapter0_1_0::types::AdapterInfo> {
    if info.name.len() > 64 || info.version.len() > 64 || info.description.len() > 1024 {
        return Err(wasmtime::Error::msg(format!(
            "its info() gives a name of {} bytes, a version of {} and a description of {}; at most 64, 64 and 1024",
            info.name.len(),
            info.version.len(),
            info.description.len()
        )));
    }
    Ok(info)
}

/// The limits of `info` and `configuration.check`, which read settings
/// only: the agent runs them itself, at load and on each reload.
const CHECK_LIMITS: Limits = Limits {
    memory: 256 << 20,
    timeout: Duration::from_secs(10),
};

/// Most resource names a footprint may hold, and their longest length: the
/// host compares every drill's against every job's.
const MAX_NAMES: usize = 1024;
const MAX_NAME: usize = 1024;

/// The export of WIT 0.3.0 that checks a job's settings, by its name.
const CONFIGURATION: &str = "cairn:adapter/configuration@0.3.0";

impl Runtime {
    /// What `component` exports and imports, and whether it links here.
    pub fn inspect(&self, component: &Component) -> Inspected {
        let ty = component.component_type();
        Inspected {
            exports: ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
            imports: ty
                .imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
            link_error: self
                .linker
                .instantiate_pre(component)
                .err()
                .map(|e| format!("{e:#}")),
        }
    }

    /// Call the adapter's `info`, with no grants.
    pub async fn info(&self, adapter: &str, component: &Component) -> anyhow::Result<AdapterInfo> {
        let adapter = adapter.to_string();
        let limits = CHECK_LIMITS;
        let (wasi, stderr) = wasi_ctx(&Grants::default(), false, &adapter)?;
        let state = host::HostState::for_check(adapter.clone(), wasi, &limits);
        let mut store = self.store(state, &limits);
        let instance = self.instantiate(component, &mut store, &adapter).await?;
        let call = async move {
            let r = instance.call_info(&mut store).await.and_then(bounded);
            (store, r.map(Ok))
        };
        let Some((_, result)) = with_deadline(&adapter, &limits, call).await? else {
            return Err(timed_out(&adapter, &limits));
        };
        let info = explain(&adapter, &limits, result, &stderr)?;
        Ok(AdapterInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            // The WIT case names: `ReadPaths` is `read-paths`.
            needs: info
                .needs
                .iter()
                .map(|n| {
                    let debug = format!("{n:?}");
                    let case = debug.rsplit("::").next().unwrap_or(&debug);
                    let mut kebab = String::new();
                    for (i, c) in case.chars().enumerate() {
                        if c.is_ascii_uppercase() && i > 0 {
                            kebab.push('-');
                        }
                        kebab.push(c.to_ascii_lowercase());
                    }
                    kebab
                })
                .collect(),
        })
    }

    /// Ask the adapter to check a job's settings (`configuration.check`,
    /// WIT 0.3.0) with no grants and a short deadline. `Ok(None)`: the
    /// component predates 0.3.0, and checks its settings only when it runs.
    pub async fn check_config(
        &self,
        adapter: &str,
        component: &Component,
        config: &str,
        drill_set: Option<&str>,
    ) -> anyhow::Result<Option<Footprint>> {
        let adapter = adapter.to_string();
        let limits = CHECK_LIMITS;
        let (wasi, stderr) = wasi_ctx(&Grants::default(), false, &adapter)?;
        let state = host::HostState::for_check(adapter.clone(), wasi, &limits);
        let mut store = self.store(state, &limits);
        // Linking checks every import, whichever version the component
        // was built against.
        let instance = self
            .linker
            .instantiate_async(&mut store, component)
            .await
            .map_err(|e| anyhow!("adapter {adapter}: cannot be instantiated: {e}"))?;
        let Some(interface) = instance.get_export_index(&mut store, None, CONFIGURATION) else {
            return Ok(None);
        };
        let check = instance
            .get_export_index(&mut store, Some(&interface), "check")
            .and_then(|f| {
                instance
                    .get_typed_func::<(String, Option<String>), (Result<Footprint, AdapterError>,)>(
                        &mut store, &f,
                    )
                    .ok()
            })
            .ok_or_else(|| {
                anyhow!("adapter {adapter}: its {CONFIGURATION} export has no check function of the right type")
            })?;
        let (config, drill_set) = (config.to_string(), drill_set.map(str::to_string));
        let call = async move {
            let r = check.call_async(&mut store, (config, drill_set)).await;
            (store, r.map(|(r,)| r))
        };
        let Some((_, result)) = with_deadline(&adapter, &limits, call).await? else {
            return Err(timed_out(&adapter, &limits));
        };
        let footprint = explain(&adapter, &limits, result, &stderr)?;
        let names = footprint.reads.iter().chain(&footprint.writes);
        if names.clone().count() > MAX_NAMES || names.clone().any(|n| n.len() > MAX_NAME) {
            anyhow::bail!(
                "adapter {adapter}: its footprint names {} resources; at most {MAX_NAMES}, of at most {MAX_NAME} bytes each",
                names.count()
            );
        }
        Ok(Some(footprint))
    }
}
