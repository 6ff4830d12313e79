//! `cairn adapter`: tools for adapter authors. `check` runs the
//! conformance kit ([`crate::ops::conformance`]) on a component.

use super::job::AdapterFlags;
use super::{Global, Outcome, out};
use crate::ops::authoring::WIT;
use anyhow::{Context, bail};
use std::path::PathBuf;

/// `cairn adapter` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check that a component is a working Cairn adapter: it links against
    /// the interfaces this host offers, `info` answers, a bad configuration
    /// gives invalid-config, a backup into a scratch repository restores
    /// and compares equal (a file adapter, on a fixture tree) or verifies
    /// (a service adapter, given --adapter-config), and the smallest memory
    /// limit that runs it. Exits non-zero naming every failure.
    Check(CheckArgs),
    /// Write a new adapter project that builds with one command and passes
    /// `cairn adapter check` as it is: a file adapter to change into yours.
    New(NewArgs),
    /// Compile a component into the cache, so that its first backup does
    /// not pay for it (a Python or JavaScript component takes seconds).
    Compile(CompileArgs),
    /// Make a component of a core WebAssembly module built for wasm32-wasi
    /// (preview 1, reactor) that carries the adapter world's type, as a C
    /// project's build does (`cairn adapter new --lang c`).
    Componentize(ComponentizeArgs),
    /// Write the C bindings of the adapter world this binary links
    /// (adapter.h, adapter.c, adapter_component_type.o) into DIR, as
    /// `adapter new --lang c` writes them into kit/bindings: run it after
    /// upgrading cairn.
    Bindings(BindingsArgs),
}

/// Flags of `adapter bindings`.
#[derive(clap::Args, Debug)]
pub struct BindingsArgs {
    /// The language; only C needs generated bindings from Cairn (the other
    /// kits' toolchains generate their own).
    #[arg(long, value_parser = ["c"])]
    lang: String,
    /// The directory to write them into (created when missing).
    dir: PathBuf,
}

/// Flags of `adapter componentize`.
#[derive(clap::Args, Debug)]
pub struct ComponentizeArgs {
    /// The core module (`.wasm`).
    core: PathBuf,
    /// Where to write the component.
    #[arg(short, long)]
    output: PathBuf,
}

/// Flags of `adapter compile`.
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The component file (`.wasm`).
    component: PathBuf,
}

/// Languages `adapter new` writes a project in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with Cairn's SDK (copied into the project), built by cargo.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Javascript,
    /// TypeScript: tsc, then componentize-js.
    Typescript,
    /// C, built with clang for wasm32-wasi, then `cairn adapter componentize`.
    C,
}

/// Flags of `adapter new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The language of the project.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The adapter's name: lowercase letters, digits and `-`, starting
    /// with a letter.
    name: String,
    /// Where to write the project (default: ./NAME); it must not exist or
    /// be empty.
    dir: Option<PathBuf>,
}

/// Flags of `adapter check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The component file (`.wasm`).
    component: PathBuf,
    /// What the adapter may reach, and its configuration: without
    /// --adapter-config the adapter is checked as a file adapter, on a
    /// fixture tree the kit writes.
    #[command(flatten)]
    adapter_flags: AdapterFlags,
    /// Memory limit of the runs, in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    memory_limit: u32,
    /// Deadline of each adapter run, in seconds: a step that passes it
    /// fails, naming the deadline.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,
}

/// Run an `adapter` subcommand.
pub async fn run(g: &Global, c: Command) -> anyhow::Result<Outcome> {
    match c {
        Command::Check(a) => check(g, a).await,
        Command::New(a) => new(a),
        Command::Compile(a) => compile(a),
        Command::Componentize(a) => componentize(a),
        Command::Bindings(a) => {
            bindings(&a.dir).context("adapter bindings")?;
            out(format!("wrote the C bindings into {}", a.dir.display()));
            Ok(Outcome::Ok)
        }
    }
}

/// Write the C bindings into `dir`.
fn bindings(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in crate::ops::authoring::c_bindings()? {
        let file = dir.join(name);
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

fn componentize(a: ComponentizeArgs) -> anyhow::Result<Outcome> {
    let core = std::fs::read(&a.core)
        .with_context(|| format!("adapter componentize: reading {}", a.core.display()))?;
    let component = crate::ops::authoring::componentize(&core)
        .with_context(|| format!("adapter componentize: {}", a.core.display()))?;
    // Written beside, then renamed: a failed write leaves no half component.
    // Whatever sits at the partial path (a planted symlink, a stale file)
    // is removed, not written through: the file is created anew.
    let partial = a.output.with_extension("wasm.partial");
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)?;
        std::io::Write::write_all(&mut file, &component)?;
        std::fs::rename(&partial, &a.output)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(e)
            .with_context(|| format!("adapter componentize: writing {}", a.output.display()));
    }
    out(format!(
        "wrote {} ({} bytes)",
        a.output.display(),
        component.len()
    ));
    Ok(Outcome::Ok)
}

fn compile(a: CompileArgs) -> anyhow::Result<Outcome> {
    if !a.component.is_file() {
        bail!("adapter compile: {} is not a file", a.component.display());
    }
    let runtime = crate::runtime::Runtime::new()?;
    let clock = std::time::Instant::now();
    let source = crate::runtime::AdapterSource::File(a.component.clone(), None);
    let (_, sha256) = runtime.load_identified(&source)?;
    out(format!(
        "compiled {} (sha256 {sha256}) in {:.1}s; later runs read it from the cache",
        a.component.display(),
        clock.elapsed().as_secs_f64()
    ));
    Ok(Outcome::Ok)
}

/// The Python project: the kit, the template and its build script.
const PYTHON: &[(&str, &str)] = &[
    (
        "cairn_kit/__init__.py",
        include_str!("../../../sdk/python/cairn_kit/__init__.py"),
    ),
    (
        "app.py",
        include_str!("../../../sdk/python/template/app.py"),
    ),
    ("build", include_str!("../../../sdk/python/template/build")),
    (
        "README.md",
        include_str!("../../../sdk/python/template/README.md"),
    ),
];

/// The Rust project: the template and the SDK's sources, built against
/// the project's `wit/` (the SDK reads `../wit`).
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../sdk/template-rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../sdk/template-rust/src/lib.rs"),
    ),
    ("build", include_str!("../../../sdk/template-rust/build")),
    (
        "README.md",
        include_str!("../../../sdk/template-rust/README.md"),
    ),
    (
        "cairn-sdk/Cargo.toml",
        include_str!("../../../sdk/template-rust/cairn-sdk.toml"),
    ),
    (
        "cairn-sdk/src/lib.rs",
        include_str!("../../../sdk/src/lib.rs"),
    ),
    (
        "cairn-sdk/src/archive.rs",
        include_str!("../../../sdk/src/archive.rs"),
    ),
    (
        "cairn-sdk/src/snapshot.rs",
        include_str!("../../../sdk/src/snapshot.rs"),
    ),
    (
        "cairn-sdk/src/fs.rs",
        include_str!("../../../sdk/src/fs.rs"),
    ),
    (
        "cairn-sdk/src/process.rs",
        include_str!("../../../sdk/src/process.rs"),
    ),
    (
        "cairn-sdk/src/secrets.rs",
        include_str!("../../../sdk/src/secrets.rs"),
    ),
    (
        "cairn-sdk/src/object_store.rs",
        include_str!("../../../sdk/src/object_store.rs"),
    ),
    (
        "cairn-sdk/src/parent.rs",
        include_str!("../../../sdk/src/parent.rs"),
    ),
    (
        "cairn-sdk/src/log.rs",
        include_str!("../../../sdk/src/log.rs"),
    ),
    (
        "cairn-sdk/src/check.rs",
        include_str!("../../../sdk/src/check.rs"),
    ),
    (
        "cairn-sdk/src/database.rs",
        include_str!("../../../sdk/src/database.rs"),
    ),
    (
        "cairn-sdk/src/hooks.rs",
        include_str!("../../../sdk/src/hooks.rs"),
    ),
];

/// The C project: the kit (its generated bindings are written beside it).
const C: &[(&str, &str)] = &[
    ("kit/cairn.h", include_str!("../../../sdk/c/cairn.h")),
    ("kit/cairn.c", include_str!("../../../sdk/c/cairn.c")),
    (
        "kit/cairn_config.c",
        include_str!("../../../sdk/c/cairn_config.c"),
    ),
    (
        "kit/cairn_internal.h",
        include_str!("../../../sdk/c/cairn_internal.h"),
    ),
    (
        "src/adapter.c",
        include_str!("../../../sdk/c/template/src/adapter.c"),
    ),
    ("build", include_str!("../../../sdk/c/template/build")),
    (
        "README.md",
        include_str!("../../../sdk/c/template/README.md"),
    ),
];

/// The JavaScript project.
const JAVASCRIPT: &[(&str, &str)] = &[
    (
        "src/cairn-kit.js",
        include_str!("../../../sdk/js/cairn-kit.js"),
    ),
    ("build.mjs", include_str!("../../../sdk/js/build.mjs")),
    (
        "src/adapter.js",
        include_str!("../../../sdk/js/template/src/adapter.js"),
    ),
    (
        "package.json",
        include_str!("../../../sdk/js/template/package.json"),
    ),
    ("build", include_str!("../../../sdk/js/template/build")),
    (
        "README.md",
        include_str!("../../../sdk/js/template/README.md"),
    ),
];

/// The TypeScript project.
const TYPESCRIPT: &[(&str, &str)] = &[
    (
        "src/cairn-kit.js",
        include_str!("../../../sdk/js/cairn-kit.js"),
    ),
    (
        "src/cairn-kit.d.ts",
        include_str!("../../../sdk/js/cairn-kit.d.ts"),
    ),
    ("build.mjs", include_str!("../../../sdk/js/build.mjs")),
    (
        "src/adapter.ts",
        include_str!("../../../sdk/js/template-ts/src/adapter.ts"),
    ),
    (
        "src/globals.d.ts",
        include_str!("../../../sdk/js/template-ts/src/globals.d.ts"),
    ),
    (
        "tsconfig.json",
        include_str!("../../../sdk/js/template-ts/tsconfig.json"),
    ),
    (
        "package.json",
        include_str!("../../../sdk/js/template-ts/package.json"),
    ),
    ("build", include_str!("../../../sdk/js/template-ts/build")),
    (
        "README.md",
        include_str!("../../../sdk/js/template-ts/README.md"),
    ),
];

fn new(a: NewArgs) -> anyhow::Result<Outcome> {
    let name = &a.name;
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "adapter new: name {:?}: use lowercase letters, digits and '-', starting with a letter (at most 64)",
            crate::util::escaped(name)
        );
    }
    let class: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("adapter new: reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "adapter new: {} exists and is not empty; give another directory",
            dir.display()
        );
    }
    let files = match a.lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Javascript => JAVASCRIPT,
        Lang::Typescript => TYPESCRIPT,
        Lang::C => C,
    };
    // C bindings are generated from the WIT this binary links, so they
    // always match it.
    if a.lang == Lang::C {
        bindings(&dir.join("kit/bindings")).context("adapter new")?;
    }
    for (path, text) in WIT.iter().chain(files) {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("adapter new: creating {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{Class}}", &class)
            .replace("{{lib}}", &name.replace('-', "_"));
        std::fs::write(&file, text)
            .with_context(|| format!("adapter new: writing {}", file.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    let build = dir.join("build");
    std::fs::set_permissions(&build, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("adapter new: making {} executable", build.display()))?;
    out(format!(
        "wrote the {name} adapter ({}) in {}: build it with {:?}, then run `cairn adapter check {:?}`",
        format!("{:?}", a.lang).to_lowercase(),
        dir.display(),
        dir.join("build"),
        dir.join(format!("{name}.wasm"))
    ));
    Ok(Outcome::Ok)
}

async fn check(g: &Global, a: CheckArgs) -> anyhow::Result<Outcome> {
    if !a.component.is_file() {
        bail!("adapter check: {} is not a file", a.component.display());
    }
    let config = a.adapter_flags.config().context("adapter check")?;
    let flags = a.adapter_flags;
    if !g.json {
        out(format!("adapter check of {}", a.component.display()));
    }
    let report = crate::ops::conformance::run(crate::ops::conformance::Options {
        component: a.component.clone(),
        config,
        grants: Box::new(move || flags.grants(&Default::default())),
        memory: (a.memory_limit as usize) << 20,
        timeout: std::time::Duration::from_secs(a.timeout),
        on_step: (!g.json).then(
            || -> Box<dyn Fn(&crate::ops::conformance::Step) + Send + Sync> {
                Box::new(|s| {
                    out(format!(
                        "  {} {:<22} {:>6.2}s  {}",
                        if s.ok { "ok  " } else { "FAIL" },
                        s.name,
                        s.seconds,
                        crate::util::indented(&s.detail)
                    ))
                })
            },
        ),
    })
    .await;
    if g.json {
        out(serde_json::to_value(&report)?);
    } else {
        out(format!(
            "component sha256 {}: {}",
            report.sha256,
            report
                .adapter
                .as_deref()
                .map(crate::util::escaped)
                .unwrap_or_default()
        ));
    }
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "adapter {} failed {} of {} checks: {}",
            a.component.display(),
            failed.len(),
            report.steps.len(),
            failed.join(", ")
        );
    }
    Ok(Outcome::Ok)
}
