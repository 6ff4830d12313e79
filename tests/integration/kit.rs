//! The adapter author's side: `cairn adapter check` (the conformance kit),
//! a trap explained by what the guest printed, and the snapshot saying
//! which component made it.

use crate::common::{Scratch, text};

/// A bundled adapter as a component file, as an author would hold one.
fn component(s: &Scratch, name: &str, bytes: &[u8]) -> String {
    let path = s.path(&format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn adapter_check_passes_the_filesystem_adapter_with_a_restore_compared_to_the_fixture() {
    let s = Scratch::new();
    let wasm = component(&s, "filesystem", cairn::runtime::bundled::FILESYSTEM);
    let out = s.cairn(&["adapter", "check", &wasm, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "load",
            "link",
            "info",
            "configuration.check",
            "bad configuration",
            "backup",
            "restore and compare",
            "verify",
            "memory"
        ]
    );
    assert!(
        report["adapter"]
            .as_str()
            .unwrap()
            .starts_with("filesystem ")
    );
    let mib = report["smallest_memory_limit_mib"].as_u64().unwrap();
    assert!((1..512).contains(&mib), "{report:#}");
    // The limit it names works, and one far below it does not.
    assert!(
        report["steps"][8]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("--memory-limit {mib} works"))
    );
}

#[test]
fn adapter_check_of_a_service_adapter_runs_its_verify() {
    let s = Scratch::new();
    let wasm = component(&s, "redis", cairn::runtime::bundled::REDIS);
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-n", "13", "SET", "kit:key", "value"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
    let out = s.cairn(&[
        "adapter",
        "check",
        &wasm,
        "--adapter-config",
        r#"{"address": "127.0.0.1:6379", "databases": [13]}"#,
        "--grant-connect",
        "127.0.0.1:6379",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("verify compared"), "{t}");
    assert!(t.contains("redis "), "{t}");
}

#[test]
fn adapter_check_names_every_failure_and_exits_non_zero() {
    let s = Scratch::new();
    // A component that exports nothing.
    let empty = component(&s, "empty", b"\0asm\x0d\x00\x01\x00");
    let out = s.cairn(&["adapter", "check", &empty]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("does not export info, backup, restore, verify"),
        "{t}"
    );
    assert!(t.contains("failed 1 of 2 checks: link"), "{t}");

    // One that traps in its backup: the trap and what it printed.
    let out = s.cairn(&[
        "adapter",
        "check",
        cairn::runtime::bundled::FAULTY_PATH,
        "--adapter-config",
        r#"{"fault": "panic"}"#,
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("FAIL backup"), "{t}");
    assert!(
        t.contains("the faulty adapter panicked on request"),
        "the guest's own words must explain the trap: {t}"
    );
    assert!(t.contains("failed 1 of"), "{t}");
    // Not a file: named.
    let out = s.cairn(&["adapter", "check", "/nonexistent.wasm"]);
    assert!(text(&out).contains("/nonexistent.wasm is not a file"));
}

#[test]
fn a_trap_is_explained_by_the_end_of_the_guests_standard_error() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    s.cairn_ok(&["init"]);
    let out = s.cairn(&[
        "backup",
        src.to_str().unwrap(),
        "--adapter",
        cairn::runtime::bundled::FAULTY_PATH,
        "--adapter-config",
        r#"{"fault": "panic"}"#,
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("its standard error ended with:"), "{t}");
    assert!(t.contains("the faulty adapter panicked on request"), "{t}");
    assert!(t.contains("no snapshot was written"), "{t}");
}

#[test]
fn a_snapshot_names_the_component_that_made_it() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    s.cairn_ok(&["init"]);
    let wasm = component(&s, "myfs", cairn::runtime::bundled::FILESYSTEM);
    s.cairn_ok(&["backup", src.to_str().unwrap(), "--adapter", &wasm]);
    let listed: serde_json::Value =
        serde_json::from_str(&s.cairn_ok(&["snapshots", "--json"])).unwrap();
    let made = &listed[0]["cairn_component"];
    assert_eq!(made["name"], "filesystem", "{listed:#}");
    let sha = hex_sha256(cairn::runtime::bundled::FILESYSTEM);
    assert_eq!(made["sha256"], sha.as_str());
    // Without --adapter, restore says which component it needs.
    let out = s.cairn(&[
        "restore",
        "latest",
        "--target",
        s.path("out").to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("component filesystem") && t.contains(&sha),
        "{t}"
    );
    // What `snapshots --json` shows is enough to restore: the component
    // whose sha256 it names, found among the author's builds.
    let other = component(&s, "other", cairn::runtime::bundled::REDIS);
    let found = [other, wasm.clone()]
        .into_iter()
        .find(|p| {
            std::fs::read(p).is_ok_and(|b| hex_sha256(&b) == made["sha256"].as_str().unwrap())
        })
        .expect("the component the snapshot names");
    let out_dir = s.path("out");
    s.cairn_ok(&[
        "restore",
        "latest",
        "--target",
        out_dir.to_str().unwrap(),
        "--adapter",
        &found,
    ]);
    let restored = out_dir.join(src.strip_prefix("/").unwrap()).join("f");
    assert_eq!(std::fs::read(&restored).unwrap(), b"x");
    // restic reads the snapshot with the extra field.
    let restic: serde_json::Value =
        serde_json::from_str(&s.restic_ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(restic.as_array().unwrap().len(), 1, "{restic:#}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Red-team finding: a drill's `set` made the drill restore with the job's
/// own settings, over the job's live data, when the adapter named no
/// scratch target. A drill restores only into a target its adapter names.
#[test]
fn a_drill_restores_only_into_a_scratch_target_its_adapter_names() {
    let s = Scratch::new();
    let password = s.path("password");
    std::fs::write(&password, crate::common::PASSWORD).unwrap();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = s.path("cairn.toml");
    let write = |drill: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate-dir = {state:?}\n[tenants.acme]\nrepository = {repo:?}\npassword-file = {password:?}\n\n[jobs.odd]\ntenant = \"acme\"\nadapter = {faulty:?}\npaths = [{src:?}]\nconfig = {{ fault = \"none\" }}\n{drill}\n",
                state = s.path("state"),
                repo = s.repo(),
                faulty = cairn::runtime::bundled::FAULTY_PATH,
            ),
        )
        .unwrap();
    };
    // An empty set would restore with the job's own settings.
    write("drill = { set = {} }");
    let out = s.cairn_config(&config, &["agent", "--check-config"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("job odd: drill.set is empty"),
        "{}",
        text(&out)
    );
    // A set the adapter accepts but names no target for.
    write("drill = { set = { anything = 1 } }");
    s.cairn_config_ok(&config, &["init", "--tenant", "acme"]);
    s.cairn_config_ok(&config, &["backup", "--job", "odd"]);
    let out = s.cairn_config(&config, &["drill", "odd"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("names no scratch target"), "{t}");
}

/// Run a project's build script (componentize-py, npm, clang or cargo,
/// which tests/run installs) with `env`, failing with its output.
fn build(project: &std::path::Path, env: &[(&str, &std::ffi::OsStr)]) {
    let out = std::process::Command::new(project.join("build"))
        .envs(env.iter().copied())
        .output()
        .expect("run the project's build script");
    assert!(out.status.success(), "build failed: {}", text(&out));
}

/// `cairn adapter check --json` of a file-adapter template passes, under
/// its name, with its restore compared to the fixture.
fn passes_the_check(s: &Scratch, wasm: &std::path::Path, name: &str) {
    let out = s.cairn(&["adapter", "check", wasm.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{name}: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{name}: {report:#}");
    assert_eq!(report["adapter"], format!("{name} 0.1.0"));
    let compared = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "restore and compare")
        .expect("a file adapter's restore is compared");
    assert_eq!(compared["ok"], true, "{name}: {report:#}");
}

/// A backup with `wasm` into a fresh repository, which must fail with exit
/// code 1 (the adapter's error); its output.
fn failing_backup(s: &Scratch, wasm: &std::path::Path) -> String {
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    s.cairn_ok(&["init"]);
    let out = s.cairn(&[
        "backup",
        src.to_str().unwrap(),
        "--adapter",
        wasm.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    t
}

#[test]
fn a_new_python_adapter_builds_and_passes_the_check_and_a_python_exception_names_its_line() {
    let s = Scratch::new();
    let project = s.path("pyfiles");
    let out = s.cairn_ok(&[
        "adapter",
        "new",
        "--lang",
        "python",
        "pyfiles",
        project.to_str().unwrap(),
    ]);
    assert!(out.contains("wrote the pyfiles adapter"), "{out}");
    // A second time into the same directory is refused, naming it.
    let again = s.cairn(&[
        "adapter",
        "new",
        "--lang",
        "python",
        "pyfiles",
        project.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("exists and is not empty"),
        "{}",
        text(&again)
    );
    build(&project, &[]);
    let wasm = project.join("pyfiles.wasm");
    passes_the_check(&s, &wasm, "pyfiles");

    // An exception the adapter does not catch reaches the host as an
    // error with its traceback, not a bare trap.
    let app = project.join("app.py");
    let code = std::fs::read_to_string(&app).unwrap().replace(
        "        summary = kit.backup_summary()\n",
        "        summary = kit.backup_summary()\n        {}[\"no-such-key\"]\n",
    );
    std::fs::write(&app, code).unwrap();
    build(&project, &[]);
    let t = failing_backup(&s, &wasm);
    assert!(t.contains("Traceback (most recent call last)"), "{t}");
    assert!(t.contains("KeyError: 'no-such-key'"), "{t}");
    assert!(t.contains("app.py\", line"), "{t}");
    assert!(!t.contains("unreachable"), "{t}");
    assert!(t.contains("no snapshot was written"), "{t}");
}

#[test]
fn new_javascript_and_typescript_adapters_build_and_pass_the_check_and_a_throw_carries_its_stack() {
    let s = Scratch::new();
    for (lang, name) in [("javascript", "jsfiles"), ("typescript", "tsfiles")] {
        let project = s.path(name);
        s.cairn_ok(&[
            "adapter",
            "new",
            "--lang",
            lang,
            name,
            project.to_str().unwrap(),
        ]);
        build(&project, &[]);
        passes_the_check(&s, &project.join(format!("{name}.wasm")), name);
    }

    // A plain `throw new Error()` (which alone would trap) reaches the host
    // as an error with its message and stack.
    let project = s.path("jsfiles");
    let source = project.join("src/adapter.js");
    let code = std::fs::read_to_string(&source).unwrap().replace(
        "    for (const root of grantedPaths()) this.backUp(root, summary);\n",
        "    throw new RangeError('thrown on purpose');\n",
    );
    std::fs::write(&source, code).unwrap();
    build(&project, &[]);
    let t = failing_backup(&s, &project.join("jsfiles.wasm"));
    assert!(t.contains("RangeError: thrown on purpose"), "{t}");
    assert!(t.contains("adapter.js:"), "the stack names the line: {t}");
    assert!(!t.contains("unreachable"), "{t}");
}

#[test]
fn a_new_rust_adapter_builds_with_the_sdk_it_carries_and_passes_the_check() {
    let s = Scratch::new();
    let project = s.path("rs-files");
    s.cairn_ok(&[
        "adapter",
        "new",
        "--lang",
        "rust",
        "rs-files",
        project.to_str().unwrap(),
    ]);
    // The project's own build, sharing the adapters' target directory so
    // its dependencies are compiled once.
    let shared = std::path::Path::new(cairn::runtime::bundled::FAULTY_PATH)
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf();
    build(&project, &[("CARGO_TARGET_DIR", shared.as_os_str())]);
    passes_the_check(&s, &project.join("rs-files.wasm"), "rs-files");
    // A name an adapter cannot have is refused, naming it.
    let out = s.cairn(&["adapter", "new", "--lang", "rust", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("name \"Bad_Name\""), "{}", text(&out));
}

#[test]
fn adapter_stderr_streams_live_and_adapter_compile_warms_the_cache() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    s.cairn_ok(&["init"]);
    let out = s.cairn(&[
        "--adapter-stderr",
        "backup",
        src.to_str().unwrap(),
        "--adapter",
        cairn::runtime::bundled::FAULTY_PATH,
        "--adapter-config",
        r#"{"fault": "panic"}"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l
                .starts_with("cairn_test_adapter_faulty: the faulty adapter panicked on request")),
        "{err}"
    );
    // A fresh cache: compile fills it, and the check then loads from it.
    let cache = s.path("cache");
    let wasm = component(&s, "fs", cairn::runtime::bundled::FILESYSTEM);
    let out = s
        .cairn_cmd(&["adapter", "compile", &wasm])
        .env("CAIRN_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("later runs read it from the cache"),
        "{}",
        text(&out)
    );
    let cached = std::fs::read_dir(cache.join("components")).unwrap().count();
    assert_eq!(cached, 1);
    let out = s.cairn(&["adapter", "compile", "/nonexistent.wasm"]);
    assert!(text(&out).contains("/nonexistent.wasm is not a file"));
}

#[test]
fn a_new_c_adapter_builds_with_clang_and_cairn_and_passes_the_check_and_a_crash_shows_its_stderr() {
    let s = Scratch::new();
    let project = s.path("cfiles");
    s.cairn_ok(&[
        "adapter",
        "new",
        "--lang",
        "c",
        "cfiles",
        project.to_str().unwrap(),
    ]);
    // The bindings were generated from the WIT this binary links.
    let header = std::fs::read_to_string(project.join("kit/bindings/adapter.h")).unwrap();
    assert!(header.contains("exports_cairn_adapter_0_3_0_configuration_check"));
    let cairn = crate::common::cairn_bin();
    let env = [("CAIRN", cairn.as_os_str())];
    build(&project, &env);
    let wasm = project.join("cfiles.wasm");
    passes_the_check(&s, &wasm, "cfiles");
    // componentize refuses a truncated core module (wit-component panics
    // on it), and writes through no symlink planted at its partial file
    // (red-team findings).
    let core = std::fs::read(project.join("target/cfiles.core.wasm")).unwrap();
    let cut = s.path("cut.core.wasm");
    std::fs::write(&cut, &core[..5000]).unwrap();
    let out = s.path("cut.wasm");
    let r = s.cairn(&[
        "adapter",
        "componentize",
        cut.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("not a valid core module"), "{}", text(&r));
    let victim = s.path("victim");
    std::fs::write(&victim, b"keep").unwrap();
    std::os::unix::fs::symlink(&victim, s.path("again.wasm.partial")).unwrap();
    let again = s.path("again.wasm");
    let core_path = project.join("target/cfiles.core.wasm");
    s.cairn_ok(&[
        "adapter",
        "componentize",
        core_path.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&wasm).unwrap()
    );

    // C has no exceptions: a crash traps, and the host shows what the
    // adapter wrote to standard error before it.
    let source = project.join("src/adapter.c");
    let code = std::fs::read_to_string(&source).unwrap().replace(
        "    char **paths = cairn_granted_paths();\n",
        "    fprintf(stderr, \"the ledger is inconsistent\\n\");\n    abort();\n    char **paths = cairn_granted_paths();\n",
    );
    let code = code.replace(
        "#include <stdlib.h>\n",
        "#include <stdio.h>\n#include <stdlib.h>\n",
    );
    std::fs::write(&source, code).unwrap();
    build(&project, &env);
    let t = failing_backup(&s, &wasm);
    assert!(t.contains("the ledger is inconsistent"), "{t}");
    assert!(t.contains("no snapshot was written"), "{t}");
}
