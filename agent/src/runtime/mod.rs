//! The adapter runtime: wasmtime with the component model and WASI 0.2.
//!
//! One [`Engine`](wasmtime::Engine) per process, compiled components cached
//! on disk, one [`Store`](wasmtime::Store) per job holding only what the job
//! grants. A job's limits (memory cap, deadline) are enforced by the store's
//! resource limiter and by epoch interruption with a ticking epoch.

mod grants;
mod host;
mod meta;
mod output;
mod probe;
mod source;

pub use grants::{GrantError, Grants};
pub use host::{BackupOutcome, BackupRequest, RestoreOutcome, RestoreProgress, RestoreRequest};
pub(crate) use host::{Spawn, spawn_confined};
pub use output::stream_adapter_stderr;
pub use probe::{AdapterFailure, AdapterInfo, Footprint, Inspected};
pub use source::AdapterSource;

use anyhow::{Context, anyhow};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// The bundled adapter components, built by `build.rs`.
pub mod bundled {
    include!(concat!(env!("OUT_DIR"), "/adapters.rs"));

    /// The bytes of a bundled adapter by name.
    pub fn get(name: &str) -> Option<&'static [u8]> {
        ALL.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes)
    }

    /// The bundled adapters' names, for messages.
    pub fn names() -> String {
        ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }
}

#[allow(missing_docs)]
mod bindings {
    // The newest world includes every older one, so these bindings link
    // components built against any version the host supports.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cairn:adapter/adapter@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "cairn:adapter/archive@0.1.0.entry-writer": crate::runtime::host::WriterState,
            "cairn:adapter/snapshot@0.1.0.entry-reader": crate::runtime::host::ReaderState,
            "cairn:adapter/process@0.2.0.child": crate::runtime::host::ChildState,
        },
    });
}

/// The imports WIT 0.4.0 adds (`object-store`, `parent`), over the same
/// types as the bindings above; only their linker functions are used, so
/// a component of any version instantiates through [`bindings::Adapter`].
#[allow(missing_docs)]
mod bindings_0_4 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cairn:adapter/adapter@0.4.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "cairn:adapter/types@0.1.0": super::bindings::cairn::adapter0_1_0::types,
            "cairn:adapter/log@0.1.0": super::bindings::cairn::adapter0_1_0::log,
            "cairn:adapter/archive@0.1.0": super::bindings::cairn::adapter0_1_0::archive,
            "cairn:adapter/snapshot@0.1.0": super::bindings::cairn::adapter0_1_0::snapshot,
            "cairn:adapter/fs@0.1.0": super::bindings::cairn::adapter0_1_0::fs,
            "cairn:adapter/process@0.2.0": super::bindings::cairn::adapter0_2_0::process,
            "cairn:adapter/secrets@0.2.0": super::bindings::cairn::adapter0_2_0::secrets,
        },
    });
}

use bindings::cairn::adapter0_1_0::types::AdapterError;

/// How often the epoch ticks; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(50);

/// Limits applied to one adapter job.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest linear memory the adapter may grow to, in bytes.
    pub memory: usize,
    /// Wall-clock budget for the whole job.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 512 << 20,
            timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// The process-wide runtime.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<host::HostState>>,
    cache_dir: Option<PathBuf>,
    _ticker: std::thread::JoinHandle<()>,
}

impl Runtime {
    /// Create the engine, the linker and the epoch ticker.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| anyhow!("creating the wasm engine: {e}"))?;
        let mut linker = Linker::<host::HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("linking WASI: {e}"))?;
        bindings::Adapter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("linking the Cairn host: {e}"))?;
        bindings_0_4::cairn::adapter0_4_0::object_store::add_to_linker::<
            _,
            wasmtime::component::HasSelf<_>,
        >(&mut linker, |s| s)
        .map_err(|e| anyhow!("linking the Cairn host's object store: {e}"))?;
        bindings_0_4::cairn::adapter0_4_0::parent::add_to_linker::<
            _,
            wasmtime::component::HasSelf<_>,
        >(&mut linker, |s| s)
        .map_err(|e| anyhow!("linking the Cairn host's parent snapshot: {e}"))?;
        let ticker_engine = engine.weak();
        let ticker = std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker_engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .context("spawning the epoch thread")?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache_dir: crate::util::cache_dir(),
            _ticker: ticker,
        })
    }

    /// Load (from the cache when possible) and compile an adapter.
    pub fn load(&self, source: &AdapterSource) -> anyhow::Result<Component> {
        self.load_identified(source).map(|(c, _)| c)
    }

    /// [`Runtime::load`], with the SHA-256 (hex) of the component's bytes.
    pub fn load_identified(&self, source: &AdapterSource) -> anyhow::Result<(Component, String)> {
        let name = source.name();
        let bytes: Vec<u8> = match source {
            AdapterSource::Bundled(n) => bundled::get(n)
                .ok_or_else(|| {
                    anyhow!("unknown adapter {n:?}: the bundled adapters are: {} (for another adapter, pass its component with --adapter PATH)", bundled::names())
                })?
                .to_vec(),
            AdapterSource::File(p, pin) => {
                let bytes =
                    std::fs::read(p).with_context(|| format!("reading adapter {}", p.display()))?;
                if let Some(pin) = pin {
                    let actual = crate::repo::Id::hash(&bytes).to_hex();
                    if actual != *pin {
                        anyhow::bail!(
                            "adapter {} has SHA-256 {actual}, but the job pins {pin}; refusing to run it",
                            p.display()
                        );
                    }
                }
                bytes
            }
        };
        let sha256 = crate::repo::Id::hash(&bytes).to_hex();
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            format!("{sha256}-{:016x}", h.finish())
        };
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join("components").join(format!("{key}.cwasm")));
        if let Some(path) = &cached
            && path.exists()
            && cache_is_private(path)
        {
            // SAFETY: the file was written by `Component::serialize` of
            // this engine configuration (its name carries the engine's
            // compatibility hash and the source's SHA-256), in a cache
            // directory owned by the user running Cairn.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    tracing::debug!(adapter = %name, "Loaded compiled adapter from cache.");
                    return Ok((c, sha256));
                }
                Err(e) => {
                    tracing::warn!(adapter = %name, error = %e, "Ignoring an unusable cached component.")
                }
            }
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| anyhow!("adapter {name}: not a valid WebAssembly component: {e}"))?;
        if let Some(path) = cached
            && let Ok(serialized) = component.serialize()
        {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = path
                .parent()
                .map(std::fs::create_dir_all)
                .transpose()
                .is_ok()
                && std::fs::write(&tmp, serialized).is_ok()
                && std::fs::rename(&tmp, &path).is_ok();
            if !written {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(path = %path.display(), "Could not cache the compiled adapter.");
            }
        }
        Ok((component, sha256))
    }

    fn store(&self, state: host::HostState, limits: &Limits) -> Store<host::HostState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every tick, running Wasm yields to the executor: a guest that
        // computes without calling the host still lets the task notice a
        // cancellation (SIGTERM, the agent's abort) and the other tasks run.
        // At the deadline it traps.
        let deadline = std::time::Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    async fn instantiate(
        &self,
        component: &Component,
        store: &mut Store<host::HostState>,
        adapter: &str,
    ) -> anyhow::Result<bindings::Adapter> {
        bindings::Adapter::instantiate_async(&mut *store, component, &self.linker)
            .await
            .map_err(|e| anyhow!("adapter {adapter}: cannot be instantiated: {e}"))
    }
}

/// Whether a cached component (and its folder) belongs to this user and no
/// one else can write it: loading it runs its code, so a cache another user
/// can write would be a way to run code as us.
fn cache_is_private(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let private = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == me && m.mode() & 0o022 == 0)
    };
    let ok = private(path) && path.parent().is_some_and(private);
    if !ok {
        tracing::warn!(path = %path.display(), "Ignoring a cached component not private to this user; recompiling.");
    }
    ok
}

/// WASI context for a job: its grants preopened at the same paths as on the
/// host, TCP connections only to the granted endpoints (no listening, no
/// UDP, no name lookup), no environment, no arguments; standard output and
/// error into the host's log (see [`output`]). Returns the standard error,
/// whose tail explains a trap.
fn wasi_ctx(
    grants: &Grants,
    writable: bool,
    adapter: &str,
) -> anyhow::Result<(WasiCtx, output::GuestOutput)> {
    let mut b = WasiCtx::builder();
    let stderr = output::GuestOutput::new(adapter, output::Stream::Stderr);
    b.stdout(output::GuestOutput::new(adapter, output::Stream::Stdout))
        .stderr(stderr.clone());
    b.allow_tcp(!grants.connect().is_empty())
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let allowed: Vec<std::net::SocketAddr> = grants.connect().to_vec();
    b.socket_addr_check(move |addr, used| {
        use wasmtime_wasi::sockets::SocketAddrUse;
        let ok = match used {
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            // The bind a connect does first (wasi-libc binds to the
            // wildcard address and port 0). No other bind, and no listen
            // (checked as its own use, refused below) on any address.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            _ => false,
        };
        if !ok {
            tracing::warn!(%addr, ?used, "Denied the adapter a network address its job does not grant.");
        }
        Box::pin(async move { ok })
    });
    let perms = if writable {
        FsPerms::ReadWrite
    } else {
        FsPerms::ReadOnly
    };
    for p in grants.paths() {
        if std::path::Path::new(&p).is_dir() {
            b.preopened_dir(&p, &p, perms)
                .map_err(|e| anyhow!("preopening {p}: {e}"))?;
        }
    }
    Ok((b.build(), stderr))
}

/// The error of a job that reached its deadline.
fn timed_out(adapter: &str, limits: &Limits) -> anyhow::Error {
    anyhow!("adapter {adapter}: timed out after {:?}", limits.timeout)
}

/// Turn what a call into an adapter produced into one error naming the
/// adapter and the reason: a trap, an exhausted limit, or its own error.
fn explain<T>(
    adapter: &str,
    limits: &Limits,
    result: wasmtime::Result<Result<T, AdapterError>>,
    stderr: &output::GuestOutput,
) -> anyhow::Result<T> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::Error::new(AdapterFailure {
            case: meta::case_name(&e),
            message: format!("adapter {adapter}: {}", meta::describe_error(&e)),
        })),
        Err(trap) => {
            if let Some(host_fault) = trap.downcast_ref::<host::HostFault>() {
                return Err(anyhow!(
                    "host fault while running adapter {adapter}: {host_fault}"
                ));
            }
            if let Some(oom) = trap.downcast_ref::<MemoryLimitExceeded>() {
                return Err(anyhow!("adapter {adapter}: {oom}"));
            }
            let msg = match trap.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => format!(
                    "timed out after {:?} (deadline reached while running)",
                    limits.timeout
                ),
                Some(wasmtime::Trap::OutOfFuel) => "ran out of fuel".into(),
                _ if format!("{trap:?}").contains("memory")
                    && format!("{trap:?}").contains("limit") =>
                {
                    format!("exceeded its memory limit of {} MiB", limits.memory >> 20)
                }
                Some(t) => format!("trapped: {t}"),
                // The trap's text can carry the guest's own strings.
                None => format!("failed: {}", crate::util::indented(&format!("{trap:#}"))),
            };
            // What the guest printed last says why (a Python traceback).
            let tail = stderr.tail();
            if tail.is_empty() {
                return Err(anyhow!("adapter {adapter}: {msg}"));
            }
            Err(anyhow!(
                "adapter {adapter}: {msg}; its standard error ended with:\n    {}",
                crate::util::indented(&tail)
            ))
        }
    }
}

/// Fail a call that succeeded while a process the adapter started was
/// left unsettled (see [`host::HostState::unsettled_processes`]).
fn settled(adapter: &str, state: &host::HostState) -> anyhow::Result<()> {
    let left = state.unsettled_processes();
    if left.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "adapter {adapter} returned success without waiting for {}: killed, so its work may be incomplete",
        left.join(", ")
    ))
}

/// Run an adapter call (which owns its store) as a task of its own, under
/// the job's deadline. A host call stuck in the kernel (a read of a file
/// that never answers) then cannot hold the deadline back: the task is
/// abandoned where it is, the job fails, and the command exits, which ends
/// the stuck thread. Returns the store with the call's result, or `None`
/// when the deadline passed first.
async fn with_deadline<T: Send + 'static>(
    adapter: &str,
    limits: &Limits,
    call: impl std::future::Future<Output = (Store<host::HostState>, wasmtime::Result<T>)>
    + Send
    + 'static,
) -> anyhow::Result<Option<(Store<host::HostState>, wasmtime::Result<T>)>> {
    let mut task = tokio::spawn(call);
    // If the command itself is stopped (a signal), the call stops with it.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(task.abort_handle());
    match tokio::time::timeout(limits.timeout, &mut task).await {
        Ok(Ok(done)) => Ok(Some(done)),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => Err(anyhow!("adapter {adapter}: its task was cancelled: {e}")),
        // The guard aborts the task on the way out.
        Err(_) => Ok(None),
    }
}

impl Runtime {
    /// Run an adapter's `backup` and write its snapshot content through the
    /// pipeline. No snapshot is written here; the caller writes it only
    /// after this returns `Ok`.
    pub async fn backup(
        &self,
        source: &AdapterSource,
        req: BackupRequest,
        limits: &Limits,
    ) -> anyhow::Result<BackupOutcome> {
        let adapter = source.name();
        let (component, sha256) = self.load_identified(source)?;
        let (wasi, stderr) = wasi_ctx(&req.grants, false, &adapter)?;
        let state = host::HostState::for_backup(adapter.clone(), wasi, limits, req);
        let mut store = self.store(state, limits);
        let instance = self.instantiate(&component, &mut store, &adapter).await?;
        let config = store.data().config_json();
        let call = async move {
            // The snapshot records who made it, as the adapter names itself.
            let info = match instance
                .call_info(&mut store)
                .await
                .and_then(probe::bounded)
            {
                Ok(info) => info,
                Err(trap) => return (store, Err(trap)),
            };
            let r = instance
                .call_backup(&mut store, &config)
                .await
                .map(|r| r.map(|summary| (summary, info)));
            (store, r)
        };
        let Some((store, result)) = with_deadline(&adapter, limits, call).await? else {
            // The store (and with it the pipeline) goes with the task; if
            // the task is stuck, its packer is stopped here, before the
            // caller removes its lock: nothing of this run is indexed or
            // recorded.
            crate::pipeline::stop_packers();
            return Err(timed_out(&adapter, limits));
        };
        let summary = explain(&adapter, limits, result, &stderr)
            .and_then(|s| settled(&adapter, store.data()).map(|()| s));
        let memory_peak = store.data().limits.used as u64;
        let (summary, info) = match summary {
            Ok((s, info)) => (Ok(s), Some(info)),
            Err(e) => (Err(e), None),
        };
        let state = store.into_data();
        let mut outcome = state.finish_backup(summary).await?;
        outcome.component = info.map(|i| crate::repo::snapshot::ComponentId {
            name: i.name,
            version: i.version,
            sha256,
        });
        outcome.memory_peak = memory_peak;
        Ok(outcome)
    }

    /// Run an adapter's `restore` (or `verify` when `verify` is set) over a
    /// snapshot. Returns a human summary.
    pub async fn restore(
        &self,
        source: &AdapterSource,
        req: RestoreRequest,
        limits: &Limits,
        verify: bool,
    ) -> anyhow::Result<RestoreResult> {
        let adapter = source.name();
        let component = self.load(source)?;
        let (wasi, stderr) = wasi_ctx(&req.grants, true, &adapter)?;
        let state = host::HostState::for_restore(adapter.clone(), wasi, limits, req).await?;
        let mut store = self.store(state, limits);
        let instance = self.instantiate(&component, &mut store, &adapter).await?;
        let config = store.data().config_json();
        let call = async move {
            let r = if verify {
                instance
                    .call_verify(&mut store, &config)
                    .await
                    .map(|r| r.map(host::RestoreOutcome::Verified))
            } else {
                instance
                    .call_restore(&mut store, &config)
                    .await
                    .map(|r| r.map(host::RestoreOutcome::Restored))
            };
            (store, r)
        };
        let Some((mut store, result)) = with_deadline(&adapter, limits, call).await? else {
            let e = timed_out(&adapter, limits);
            return Err(if verify {
                e
            } else {
                e.context(
                    "files restored whole before the deadline are kept; run the same restore again to resume",
                )
            });
        };
        let outcome = explain(&adapter, limits, result, &stderr);
        let outcome = outcome.and_then(|o| settled(&adapter, store.data()).map(|()| o));
        // Files still being written in the background finish (or fail and
        // are removed) before anything is reported.
        store.data_mut().finish_writes().await;
        // A storage failure met in the background is the cause of whatever
        // the adapter then reported (it was stopped mid-call): said first.
        let outcome = match store.data().restore_fault() {
            Some(f) => Err(anyhow!("{f}")),
            None => outcome,
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) if verify => return Err(e),
            Err(e) => return Err(stopped_restore(e, store.data().restore_progress())),
        };
        let (damaged, left_out) = store.data().restore_findings();
        let outcome = match outcome {
            // The host knows what it handed out damaged: a report must say
            // so even if the adapter did not.
            host::RestoreOutcome::Verified(mut report) => {
                for d in damaged {
                    if !report.problems.iter().any(|p| p.contains(&d)) {
                        report.problems.push(d);
                    }
                }
                host::RestoreOutcome::Verified(report)
            }
            host::RestoreOutcome::Restored(_) if !damaged.is_empty() => {
                anyhow::bail!(
                    "adapter {adapter} finished, but {} entries could not be restored (removed): {}",
                    damaged.len(),
                    damaged.join("; ")
                );
            }
            restored => restored,
        };
        let progress = store.data().restore_progress();
        Ok(RestoreResult {
            outcome,
            left_out,
            unchanged: progress.unchanged,
        })
    }
}

/// A restore that stopped: its cause first, then how far it got and how
/// to go on.
fn stopped_restore(cause: anyhow::Error, p: host::RestoreProgress) -> anyhow::Error {
    let mut said = format!(
        "{cause:#}\nbefore it stopped, {} files ({}) were restored whole",
        p.files,
        indicatif::HumanBytes(p.bytes)
    );
    if p.unchanged > 0 {
        said += &format!(" and {} the target already had were kept", p.unchanged);
    }
    if p.removed > 0 {
        said += &format!(
            "; {} files being written were removed, not left half-written",
            p.removed
        );
    }
    said += "; the rest was not restored. Run the same restore again to resume: files restored whole are kept";
    anyhow!(said)
}

/// What a restore or verify produced.
pub struct RestoreResult {
    /// The adapter's summary or report.
    pub outcome: host::RestoreOutcome,
    /// Entries not restored, each with why: kinds no adapter restores
    /// (devices, fifos, sockets), names no file can have, entries the
    /// target refused (a name too long for it, say).
    pub left_out: Vec<String>,
    /// Files the target already had whole, kept.
    pub unchanged: u64,
}

impl WasiView for host::HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The adapter asked for more memory than its job allows.
#[derive(Debug, thiserror::Error)]
#[error("exceeded its memory limit of {limit_mib} MiB (asked for {desired_mib} MiB)")]
pub struct MemoryLimitExceeded {
    limit_mib: usize,
    desired_mib: usize,
}

/// Caps an adapter's linear memories; growing past the cap traps with
/// [`MemoryLimitExceeded`], which names the limit.
pub(crate) struct JobLimiter {
    memory: usize,
    /// Bytes of linear memory granted so far, across all memories.
    used: usize,
    inner: StoreLimits,
}

impl wasmtime::ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is on the job's total: a component with several memories
        // must not get the cap once per memory.
        let total = self.used + desired.saturating_sub(current);
        if total > self.memory {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit_mib: self.memory >> 20,
                desired_mib: total >> 20,
            }));
        }
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.used = total;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

pub(crate) fn store_limits(limits: &Limits) -> JobLimiter {
    JobLimiter {
        memory: limits.memory,
        used: 0,
        inner: StoreLimitsBuilder::new()
            .instances(16)
            .tables(64)
            .memories(16)
            .table_elements(1_000_000)
            .build(),
    }
}

pub(crate) fn new_table() -> ResourceTable {
    ResourceTable::new()
}
