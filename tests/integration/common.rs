//! Shared test helpers: a scratch repository, running `cairn` and `restic`,
//! building fixture trees, and comparing trees with an independent tool.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

/// The `cairn` binary under test: this build's, or `$CAIRN_TEST_BIN` (an
/// earlier build, to show that a regression test fails on the code
/// before its fix).
pub fn cairn_bin() -> PathBuf {
    std::env::var_os("CAIRN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn")))
}

/// A scratch directory holding a repository and test data.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("cairn-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// A `cairn` command with the repository and password set.
    pub fn cairn_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cairn_bin());
        c.args(args)
            .env("CAIRN_REPOSITORY", self.repo())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", cache_dir())
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_LOG");
        c
    }

    /// Run `cairn`, returning its output whatever the exit code.
    pub fn cairn(&self, args: &[&str]) -> Output {
        self.cairn_cmd(args).output().expect("run cairn")
    }

    /// Run `cairn` and require success.
    pub fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run `cairn ... --json` and parse the last line of its output.
    pub fn cairn_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        last_json(&self.cairn_ok(&all))
    }

    pub fn init(&self) {
        self.cairn_ok(&["init"]);
    }

    /// A `restic` command on the same repository.
    pub fn restic(&self, args: &[&str]) -> Output {
        Command::new("restic")
            .args(args)
            .env("RESTIC_REPOSITORY", self.repo())
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_CACHE_DIR", self.path("restic-cache"))
            .output()
            .expect("run restic: is it installed? (tests/run installs it)")
    }

    pub fn restic_ok(&self, args: &[&str]) -> String {
        let out = self.restic(args);
        assert!(
            out.status.success(),
            "restic {args:?} failed: {}\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A scratch with an initialised repository and the fixture tree in
    /// `src`; returns the fixture's path too.
    pub fn with_fixture() -> (Self, PathBuf) {
        let s = Scratch::new();
        let src = s.path("src");
        make_fixture(&src);
        s.init();
        (s, src)
    }

    /// `cairn restore latest` into `target`; returns where `src` landed.
    pub fn restore_latest(&self, target: &str, src: &Path) -> PathBuf {
        let dir = self.path(target);
        self.cairn_ok(&[
            "restore",
            "latest",
            "--target",
            dir.to_str().expect("utf-8"),
        ]);
        dir.join(src.strip_prefix("/").expect("absolute"))
    }

    /// Write config file `file`: tenant `acme` on this scratch's repository
    /// and job `job` running `adapter` with `config` (the inside of a TOML
    /// inline table) and `programs` (a TOML array) granted, with the local
    /// server of a database adapter as the one endpoint they may reach.
    pub fn write_job_config(
        &self,
        file: &str,
        job: &str,
        adapter: &str,
        config: &str,
        programs: &str,
    ) -> PathBuf {
        let password = self.path("password");
        std::fs::write(&password, PASSWORD).expect("write the password file");
        let path = self.path(file);
        let connect = match adapter {
            "postgres" => r#"["127.0.0.1:5432"]"#,
            "mariadb" => r#"["127.0.0.1:3306"]"#,
            _ => "[]",
        };
        std::fs::write(
            &path,
            format!(
                "[tenants.acme]\nrepository = {:?}\npassword-file = {:?}\n\n[jobs.{job}]\ntenant = \"acme\"\nadapter = {adapter:?}\nconfig = {{ {config} }}\ngrants = {{ programs = {programs}, connect = {connect} }}\n",
                self.repo(),
                password,
            ),
        )
        .expect("write the config file");
        path
    }

    /// `cairn --config F ARGS`, the repository chosen by the tenant.
    pub fn cairn_config(&self, config: &Path, args: &[&str]) -> Output {
        let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
        all.extend(args);
        self.cairn_cmd(&all)
            .env_remove("CAIRN_REPOSITORY")
            .output()
            .expect("run cairn")
    }

    /// The same, requiring success; its stdout.
    pub fn cairn_config_ok(&self, config: &Path, args: &[&str]) -> String {
        let out = self.cairn_config(config, args);
        assert!(out.status.success(), "cairn {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The number of snapshots, according to cairn.
    pub fn snapshot_count(&self) -> usize {
        self.cairn_json(&["snapshots"])
            .as_array()
            .expect("array")
            .len()
    }
}

/// The last line of a command's `--json` output, parsed.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().last().expect("some JSON output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

/// Compiled components are cached across tests (that cache is itself tested).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .expect("open");
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .expect("set times");
}

/// A tree with the awkward cases: empty, large, sparse and compressible
/// files, nested directories, symlinks (one pointing out of the tree),
/// hard links, odd names, unusual modes and fixed mtimes.
pub fn make_fixture(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
    };
    w("empty", b"");
    // Same bytes as an empty directory's tree: blobs are keyed by id *and*
    // type, or one of the two would go missing.
    w("looks-like-an-empty-tree.json", b"{\"nodes\":[]}\n");
    w("one", b"1");
    w("docs/readme.txt", b"hello, restore\n");
    w("docs/nested/deeper/leaf.bin", &random_bytes(70_000, 1));
    w("large-random.bin", &random_bytes(6 * 1024 * 1024 + 123, 2));
    w(
        "large-text.txt",
        "compressible line of text\n".repeat(200_000).as_bytes(),
    );
    w("names/with space", b"space");
    w("names/ünïcødé ☃", b"unicode");
    w("names/new\nline", b"newline");
    w("names/quote\"and\\backslash", b"quote");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    // Sparse: 64 MiB with one byte at the end.
    let sparse = std::fs::File::create(root.join("sparse.img")).expect("create");
    sparse.set_len(64 * 1024 * 1024).expect("set_len");
    drop(sparse);
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse.img"))
        .and_then(|mut f| {
            use std::io::{Seek, SeekFrom, Write};
            f.seek(SeekFrom::Start(64 * 1024 * 1024 - 1))?;
            f.write_all(b"!")
        })
        .expect("sparse write");
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link-relative")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-out")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    std::fs::hard_link(root.join("one"), root.join("hardlink-to-one")).expect("hard link");
    std::fs::set_permissions(
        root.join("docs/readme.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    std::fs::set_permissions(root.join("one"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    std::fs::set_permissions(
        root.join("docs/nested"),
        std::fs::Permissions::from_mode(0o2750),
    )
    .expect("chmod");
    for (i, rel) in [
        "empty",
        "one",
        "docs/readme.txt",
        "large-random.bin",
        "names/new\nline",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(
            &root.join(rel),
            1_600_000_000 + i as i64 * 1000,
            123_456_789,
        );
    }
    // Directory times last, after their content is written.
    for rel in [
        "docs/nested/deeper",
        "docs/nested",
        "docs",
        "names",
        "empty-dir",
    ] {
        set_mtime(&root.join(rel), 1_500_000_000, 5);
    }
}

/// Compare two trees with `diff -r --no-dereference` (an independent tool)
/// and compare modes, mtimes, sizes and link targets entry by entry.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(expected)
        .arg(actual)
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "diff -r found differences:\n{}",
        text(&out)
    );
    compare_metadata(expected, actual, Path::new(""));
}

fn compare_metadata(a_root: &Path, b_root: &Path, rel: &Path) {
    let a = a_root.join(rel);
    let b = b_root.join(rel);
    let ma = std::fs::symlink_metadata(&a).expect("stat expected");
    let mb =
        std::fs::symlink_metadata(&b).unwrap_or_else(|e| panic!("{} missing: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", rel.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(&a).unwrap(),
            std::fs::read_link(&b).unwrap(),
            "link {}",
            rel.display()
        );
        return;
    }
    assert_eq!(
        ma.mode() & 0o7777,
        mb.mode() & 0o7777,
        "mode of {}",
        rel.display()
    );
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {}",
        rel.display()
    );
    if ma.is_file() {
        assert_eq!(ma.len(), mb.len(), "size of {}", rel.display());
    }
    if ma.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            compare_metadata(a_root, b_root, &rel.join(n));
        }
    }
}

/// Every pack file of a local repository, largest first.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(repo.join("data")).expect("data dir") {
        for f in std::fs::read_dir(sub.expect("entry").path()).expect("subdir") {
            out.push(f.expect("entry").path());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    out
}

/// A snapshot written by hand through the library into the scratch's
/// (existing) repository, as anyone holding the password could: one
/// directory `sub` holding files `nodes` (names as given, valid or not),
/// made by adapter `adapter`. Returns its id.
pub fn hand_made_snapshot(s: &Scratch, nodes: Vec<(&str, &[u8])>, adapter: Option<&str>) -> String {
    use cairn::pipeline::{Pipeline, PipelineOptions};
    use cairn::repo::snapshot::Snapshot;
    use cairn::repo::tree::{Node, Tree, go_mode};
    use cairn::repo::{Id, Repository};
    use cairn::storage::local::LocalBackend;
    use std::sync::Arc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Arc::new(
            Repository::open(Arc::new(LocalBackend::new(s.repo())), PASSWORD)
                .await
                .unwrap(),
        );
        repo.load_index().await.unwrap();
        let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
        let mut files = Vec::new();
        for (name, data) in nodes {
            let blob = pipeline
                .add_data(data.to_vec())
                .await
                .unwrap()
                .get()
                .await
                .unwrap();
            let mut n = Node::new(name, "file");
            n.mode = 0o644;
            n.size = data.len() as u64;
            n.content = Some(vec![blob]);
            files.push(n);
        }
        let inner = Tree { nodes: files }.to_bytes();
        let inner_id = Id::hash(&inner);
        pipeline.add_tree(inner_id, inner).await.unwrap();
        let mut dir = Node::new("sub", "dir");
        dir.mode = go_mode::DIR | 0o755;
        dir.subtree = Some(inner_id);
        let root = Tree { nodes: vec![dir] }.to_bytes();
        let root_id = Id::hash(&root);
        pipeline.add_tree(root_id, root).await.unwrap();
        pipeline.finish().await.unwrap();
        repo.save_snapshot(&Snapshot {
            time: chrono::Local::now().fixed_offset(),
            parent: None,
            tree: root_id,
            paths: vec!["/sub".into()],
            hostname: "hostile".into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: vec![],
            original: None,
            program_version: String::new(),
            cairn_adapter: adapter.map(str::to_string),
            cairn_component: None,
            cairn_job: None,
            cairn_skipped: vec![],
        })
        .await
        .unwrap()
        .to_hex()
    })
}

/// What a command run under [`bounded`] did.
pub struct Bounded {
    pub out: Output,
    pub took: Duration,
}

/// The resident memory of process `pid`, in MiB (0 once it is gone).
pub fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Run `cmd` to its end, but kill it and fail the test if it runs longer
/// than `limit` or its memory grows past `max_rss_mib` (faults that hang
/// forever or eat the machine).
pub fn bounded(mut cmd: Command, limit: Duration, max_rss_mib: u64) -> Bounded {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let rss = rss_mib(pid);
        if rss > max_rss_mib {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: its memory grew to {rss} MiB (the bound is {max_rss_mib} MiB)");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    Bounded {
        out: Output {
            status,
            stdout: out_reader.join().unwrap(),
            stderr: err_reader.join().unwrap(),
        },
        took,
    }
}

/// Unmounts a tmpfs when dropped.
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mount a tmpfs of `size` (`mount -o size=`) on the new directory `dir`.
pub fn mount_tmpfs(dir: &Path, size: &str) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "this test needs to mount a small tmpfs (run the suite as root): {}",
        text(&mounted)
    );
    Mounted(dir.to_path_buf())
}
