//! Bad input and faults: each ends in a clear error naming the thing, a
//! non-zero exit, and a repository that still checks.

use crate::common::*;
use std::process::Command;

#[test]
fn wrong_password_is_refused() {
    let s = Scratch::new();
    s.init();
    let out = s
        .cairn_cmd(&["snapshots"])
        .env("CAIRN_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("wrong password"), "{}", text(&out));
    assert!(
        stderr(&out).contains(s.repo().to_str().unwrap()),
        "must name the repository: {}",
        text(&out)
    );
}

#[test]
fn missing_repository_and_non_repository_are_named() {
    let s = Scratch::new();
    let out = s.cairn(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("not a Cairn/restic repository"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(s.repo().to_str().unwrap()),
        "{}",
        text(&out)
    );

    std::fs::create_dir_all(s.path("plain")).unwrap();
    let out = s
        .cairn_cmd(&["snapshots"])
        .env("CAIRN_REPOSITORY", s.path("plain"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("not a Cairn/restic repository"),
        "{}",
        text(&out)
    );

    // init twice is refused and changes nothing.
    s.init();
    let out = s.cairn(&["init"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("already exists"), "{}", text(&out));
    s.cairn_ok(&["check"]);
}

#[test]
fn missing_backup_path_is_named() {
    let s = Scratch::new();
    s.init();
    let missing = s.path("no-such-dir");
    let out = s.cairn(&["backup", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);
}

#[test]
fn flipped_byte_in_a_pack_is_found_and_never_restored() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), random_bytes(2 * 1024 * 1024, 11)).unwrap();
    s.init();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    s.cairn_ok(&["check", "--read-data"]);

    // The largest pack holds the file's data; flip one byte in its middle.
    let pack = packs(&s.repo()).remove(0);
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();

    // Without --read-data the structure still checks; with it the pack and
    // the blob are named.
    s.cairn_ok(&["check"]);
    let out = s.cairn(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("pack {pack_id}")),
        "must name the pack:\n{}",
        text(&out)
    );
    assert!(
        report.contains("blob "),
        "must name the blob:\n{}",
        text(&out)
    );

    let target = s.path("out");
    let out = s.cairn(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("data.bin"),
        "must name the file: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(&pack_id),
        "must name the pack: {}",
        text(&out)
    );
    let restored = target.join(src.strip_prefix("/").unwrap()).join("data.bin");
    assert!(
        !restored.exists(),
        "a damaged file must not be left looking restored"
    );

    // restic agrees that the pack is damaged.
    let out = s.restic(&["check", "--read-data"]);
    assert!(
        !out.status.success(),
        "restic must also see the damage: {}",
        text(&out)
    );
}

#[test]
fn an_invalid_component_is_refused() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let bogus = s.path("bogus.wasm");
    std::fs::write(&bogus, b"\0asm this is not a component").unwrap();
    s.init();
    let out = s.cairn(&[
        "backup",
        src.to_str().unwrap(),
        "--adapter",
        bogus.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("adapter bogus"),
        "must name the adapter: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("not a valid WebAssembly component"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0);
}

fn faulty(s: &Scratch, fault: &str, extra: &[&str]) -> std::process::Output {
    faulty_with(s, &serde_json::json!({ "fault": fault }), extra)
}

/// Back up with the faulty adapter and this adapter config.
fn faulty_with(s: &Scratch, config: &serde_json::Value, extra: &[&str]) -> std::process::Output {
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = config.to_string();
    let mut args = vec![
        "backup",
        src.to_str().unwrap(),
        "--adapter",
        cairn::runtime::bundled::FAULTY_PATH,
        "--adapter-config",
        &config,
    ];
    args.extend_from_slice(extra);
    s.cairn(&args)
}

/// A connection waiting on `listener` within a few seconds, with what the
/// peer sent, or None.
fn accepted(listener: &std::net::TcpListener) -> Option<Vec<u8>> {
    use std::io::Read;
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).unwrap();
                return Some(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn an_adapter_reaches_only_the_endpoints_its_job_grants() {
    let s = Scratch::new();
    s.init();
    let granted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let g = granted.local_addr().unwrap().to_string();
    let o = other.local_addr().unwrap().to_string();

    // Granted: it connects and says hello.
    let out = faulty_with(
        &s,
        &serde_json::json!({"fault": "connect", "address": g}),
        &["--grant-connect", &g],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(accepted(&granted).as_deref(), Some(&b"hello"[..]));

    // Another port: denied, the address named, nothing reached.
    let out = faulty_with(
        &s,
        &serde_json::json!({"fault": "connect", "address": o}),
        &["--grant-connect", &g],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&o),
        "must name the address: {}",
        text(&out)
    );
    assert_eq!(accepted(&other), None, "an ungranted port was reached");

    // No listening: not on a chosen address or port, nor on the wildcard
    // address and an ephemeral port (the bind a connect makes).
    for address in ["127.0.0.1:0", "0.0.0.0:7420", "0.0.0.0:0"] {
        let out = faulty_with(
            &s,
            &serde_json::json!({"fault": "listen", "address": address}),
            &["--grant-connect", &g],
        );
        assert_eq!(out.status.code(), Some(1), "{address}: {}", text(&out));
        assert!(
            stderr(&out).contains(&format!("listening on {address}: ")),
            "{address}: {}",
            text(&out)
        );
        assert!(
            !stderr(&out).contains("the host allowed it"),
            "{address}: {}",
            text(&out)
        );
    }

    // No grant at all: no network.
    let out = faulty_with(
        &s,
        &serde_json::json!({"fault": "connect", "address": g}),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        accepted(&granted),
        None,
        "reached the network with no grant"
    );
    assert_eq!(
        s.snapshot_count(),
        1,
        "only the granted run made a snapshot"
    );

    // The same from a config file: a tenant with a local repository, a job
    // with the adapter's own config and its grants.
    let password = s.path("password");
    std::fs::write(&password, crate::common::PASSWORD).unwrap();
    let config = s.path("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[tenants.acme]\nrepository = {:?}\npassword-file = {:?}\n[jobs.probe]\ntenant = \"acme\"\nadapter = {:?}\npaths = [{:?}]\nconfig = {{ fault = \"connect\", address = {g:?} }}\ngrants = {{ connect = [{g:?}] }}\n",
            s.repo(),
            password,
            cairn::runtime::bundled::FAULTY_PATH,
            s.path("src"),
        ),
    )
    .unwrap();
    let out = s
        .cairn_cmd(&[
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--job",
            "probe",
        ])
        .env_remove("CAIRN_REPOSITORY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(accepted(&granted).as_deref(), Some(&b"hello"[..]));
    assert_eq!(s.snapshot_count(), 2);
}

/// A misbehaving adapter fails the job, named, with no snapshot, and the
/// repository still checks.
fn assert_contained(s: &Scratch, out: &std::process::Output, reason: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let err = stderr(out);
    assert!(
        err.contains("adapter cairn_test_adapter_faulty"),
        "must name the adapter: {err}"
    );
    assert!(err.contains(reason), "must say why ({reason}): {err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    assert_eq!(s.snapshot_count(), 0);
    s.cairn_ok(&["check", "--read-data"]);
}

#[test]
fn a_trapping_adapter_writes_no_snapshot() {
    let s = Scratch::new();
    s.init();
    let out = faulty(&s, "trap", &[]);
    assert_contained(&s, &out, "trapped");
    // The control: the same adapter without a fault does write one.
    let ok = faulty(&s, "none", &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(s.snapshot_count(), 1);
}

#[test]
fn a_looping_adapter_hits_its_deadline() {
    let s = Scratch::new();
    s.init();
    let started = std::time::Instant::now();
    let out = faulty(&s, "loop", &["--timeout", "2"]);
    assert_contained(&s, &out, "timed out after 2s");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the deadline must stop the loop"
    );
}

#[test]
fn an_adapter_exhausting_memory_is_stopped() {
    let s = Scratch::new();
    s.init();
    let out = faulty(&s, "oom", &["--memory-limit", "64"]);
    assert_contained(&s, &out, "exceeded its memory limit of 64 MiB");
}

#[test]
fn an_adapter_error_is_reported_with_its_message() {
    let s = Scratch::new();
    s.init();
    let out = faulty(&s, "error", &[]);
    assert_contained(&s, &out, "the faulty adapter was asked to fail");
}

#[test]
fn an_unreadable_file_makes_the_backup_incomplete() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret.txt"), b"locked").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    s.init();
    // root reads anything: drop the capabilities that let it, as an
    // unprivileged operator would run.
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(crate::common::cairn_bin());
        c
    } else {
        Command::new(crate::common::cairn_bin())
    };
    let out = cmd
        .args(["backup", src.to_str().unwrap(), "--json"])
        .env("CAIRN_REPOSITORY", s.repo())
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("secret.txt"),
        "must name the file: {}",
        text(&out)
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["complete"], false, "{summary}");
    assert_eq!(
        summary["skipped"][0]["path"],
        format!("{}/secret.txt", src.display()),
        "{summary}"
    );
    // The snapshot says it is incomplete and what is missing; the file is
    // left out rather than stored as something it is not.
    let snaps = s.cairn_json(&["snapshots"]);
    let skipped = snaps[0]["cairn_skipped"]
        .as_array()
        .expect("skipped entries recorded");
    assert_eq!(skipped.len(), 1, "{snaps}");
    assert!(
        skipped[0].as_str().unwrap().contains("secret.txt"),
        "{snaps}"
    );
    let listing = s.cairn_ok(&["ls", "latest"]);
    assert!(!listing.contains("secret.txt"), "{listing}");
    s.cairn_ok(&[
        "restore",
        "latest",
        "--target",
        s.path("out").to_str().unwrap(),
    ]);
    let out_dir = s.path("out").join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(out_dir.join("readable.txt")).unwrap(),
        b"fine"
    );
    assert!(!out_dir.join("secret.txt").exists());
}

#[test]
fn kill_9_mid_backup_leaves_a_repository_that_checks() {
    let s = Scratch::new();
    let small = s.path("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("keep.txt"), b"earlier snapshot").unwrap();
    let big = s.path("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..12 {
        std::fs::write(
            big.join(format!("part-{i}.bin")),
            random_bytes(16 * 1024 * 1024, 100 + i),
        )
        .unwrap();
    }
    s.init();
    s.cairn_ok(&["backup", small.to_str().unwrap()]);
    let packs_before = packs(&s.repo()).len();

    let mut child = s
        .cairn_cmd(&["backup", big.to_str().unwrap()])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while packs(&s.repo()).len() < packs_before + 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no pack was written in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let locks = std::fs::read_dir(s.repo().join("locks")).unwrap().count();
    assert_eq!(locks, 1, "the killed backup leaves its lock behind");

    // The repository checks; the killed process's lock is recognised as
    // stale and removed by the next command; the earlier snapshot is intact.
    s.cairn_ok(&["check", "--read-data"]);
    assert_eq!(
        std::fs::read_dir(s.repo().join("locks")).unwrap().count(),
        0,
        "stale lock removed"
    );
    assert_eq!(s.snapshot_count(), 1);
    s.restic_ok(&["check", "--read-data"]);
    let orphans = packs(&s.repo()).len() - packs_before;
    let done = s.cairn_json(&["backup", big.to_str().unwrap()]);
    assert_eq!(done["complete"], true, "{done}");
    // The killed run's packs are indexed and reused, not uploaded again.
    assert_eq!(done["packs_adopted"], orphans, "{done}");
    let total = 12 * 16 * 1024 * 1024u64;
    assert!(
        done["bytes_new"].as_u64().unwrap() < total,
        "the killed run's data was stored again: {done}"
    );
    s.cairn_ok(&[
        "restore",
        "latest",
        "--target",
        s.path("out").to_str().unwrap(),
    ]);
    assert_same_tree(&big, &s.path("out").join(big.strip_prefix("/").unwrap()));
    s.cairn_ok(&[
        "restore",
        "--include",
        small.to_str().unwrap(),
        s.cairn_json(&["snapshots"])[0]["id"].as_str().unwrap(),
        "--target",
        s.path("out-small").to_str().unwrap(),
    ]);
    assert_same_tree(
        &small,
        &s.path("out-small").join(small.strip_prefix("/").unwrap()),
    );
}

/// A hostile repository (written by hand, not by Cairn) whose tree names an
/// entry `..`: restore must pass it over, say so, and write nothing
/// outside the target.
#[test]
fn restore_refuses_entries_that_would_escape_the_target() {
    let s = Scratch::new();
    s.init();
    crate::common::hand_made_snapshot(&s, vec![("..", b"escaped!")], None);
    let target = s.path("jail/target");
    let out = s.cairn(&["restore", "latest", "--target", target.to_str().unwrap()]);
    // The entry is passed over and named; the restore is incomplete.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("/sub/..: a name that would leave its directory; not restored"),
        "{}",
        text(&out)
    );
    let outside: Vec<_> = std::fs::read_dir(s.path("jail"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["target"], "nothing may appear beside the target");
    let inside: Vec<_> = std::fs::read_dir(target.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        inside.is_empty(),
        "nothing restored from the hostile entry: {inside:?}"
    );
}

#[test]
fn an_adapter_that_returns_without_waiting_for_its_process_fails() {
    let s = Scratch::new();
    s.init();
    let out = faulty_with(
        &s,
        &serde_json::json!({"fault": "orphan"}),
        &["--grant-program", "sleep"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("returned success without waiting for sleep (pid"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 0, "a snapshot was written");
}
