//! What an adapter author's build needs from the host, for languages whose
//! toolchains do not make components themselves (C): bindings generated
//! from the WIT package this binary links, and a core WebAssembly module
//! turned into a component.
//!
//! Both use the Bytecode Alliance's own libraries (wit-bindgen's C
//! generator, wit-component, and the WASI preview 1 reactor adapter that
//! ships with this wasmtime), so an author needs a C compiler and this
//! binary, nothing else: no 8-minute `cargo install wit-bindgen-cli`, no
//! Node.js for `jco new`.

use anyhow::{Context, bail};

/// The WIT package this binary links, by file, oldest version first: what
/// `adapter new` writes into each project and what the C bindings are
/// generated from.
pub const WIT: &[(&str, &str)] = &[
    (
        "wit/deps/adapter-0.1.0/adapter.wit",
        include_str!("../../../wit/deps/adapter-0.1.0/adapter.wit"),
    ),
    (
        "wit/deps/adapter-0.2.0/adapter.wit",
        include_str!("../../../wit/deps/adapter-0.2.0/adapter.wit"),
    ),
    (
        "wit/deps/adapter-0.3.0/adapter.wit",
        include_str!("../../../wit/deps/adapter-0.3.0/adapter.wit"),
    ),
    ("wit/adapter.wit", include_str!("../../../wit/adapter.wit")),
];

/// C bindings of the newest `adapter` world: `(file name, contents)` for
/// `adapter.h`, `adapter.c` and `adapter_component_type.o` (the world's
/// type, which the linker carries into the core module so that
/// [`componentize`] knows what it exports).
pub fn c_bindings() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut resolve = wit_parser::Resolve::default();
    let mut newest = None;
    for (path, text) in WIT {
        newest = Some(
            resolve
                .push_str(path, text)
                .with_context(|| format!("reading the embedded {path}"))?,
        );
    }
    let Some(package) = newest else {
        bail!("this binary embeds no WIT package");
    };
    let world = resolve
        .select_world(&[package], Some("adapter"))
        .context("finding the adapter world in the embedded WIT")?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating the C bindings")?;
    Ok(files
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect())
}

/// A core module built for `wasm32-wasi` (preview 1, reactor) that carries
/// its world's type (C: linked with `adapter_component_type.o`), as a
/// component: its WASI preview 1 imports are satisfied by the reactor
/// adapter of the wasmtime this binary runs.
pub fn componentize(core: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !core.starts_with(b"\0asm\x01\0\0\0") {
        if core.starts_with(b"\0asm") {
            bail!("it is already a component (or not a core module of WebAssembly 1.0)");
        }
        bail!("it is not a WebAssembly module");
    }
    // wit-component panics on some malformed modules (a truncated one):
    // a panic here is a refused input, not a crash. Without the world's
    // type the encoder makes a component that exports nothing: refuse it
    // here, where the cause is known, not at the first backup.
    let decoded = std::panic::catch_unwind(|| wit_component::metadata::decode(core))
        .map_err(|_| anyhow::anyhow!("it is not a valid core module (truncated or malformed)"))?;
    let (_, bindgen) = decoded.context("reading the core module's component-type section")?;
    let world = &bindgen.resolve.worlds[bindgen.world];
    if !world
        .exports
        .keys()
        .any(|k| bindgen.resolve.name_world_key(k) == "backup")
    {
        bail!(
            "the core module carries no adapter world (no export `backup` in a component-type section): link it with the adapter_component_type.o that `cairn adapter bindings --lang c` writes"
        );
    }
    let encode = || {
        wit_component::ComponentEncoder::default()
            .validate(true)
            .module(core)
            .context("reading the core module (was it linked with adapter_component_type.o?)")?
            .adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .context("adding the WASI preview 1 reactor adapter")?
            .encode()
            .context("making the component")
    };
    std::panic::catch_unwind(encode)
        .map_err(|_| anyhow::anyhow!("it is not a valid core module (truncated or malformed)"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_bindings_name_the_newest_world_and_its_type_object() {
        let files = c_bindings().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"adapter.h"), "{names:?}");
        assert!(names.contains(&"adapter.c"), "{names:?}");
        assert!(names.contains(&"adapter_component_type.o"), "{names:?}");
        let header = &files.iter().find(|(n, _)| n == "adapter.h").unwrap().1;
        let header = String::from_utf8_lossy(header);
        assert!(header.contains("exports_cairn_adapter_0_3_0_configuration_check"));
        assert!(header.contains("cairn_adapter_0_2_0_process_spawn"));
    }

    #[test]
    fn componentize_refuses_what_is_not_a_core_module() {
        let e = componentize(b"not wasm").unwrap_err();
        assert!(e.to_string().contains("not a WebAssembly module"), "{e}");
        let e = componentize(b"\0asm\x0d\0\x01\0").unwrap_err();
        assert!(e.to_string().contains("already a component"), "{e}");
        // A valid core module (empty) that carries no adapter world.
        let e = componentize(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(
            format!("{e:#}").contains("carries no adapter world"),
            "{e:#}"
        );
    }
}
