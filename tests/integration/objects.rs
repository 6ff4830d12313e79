//! The s3-bucket adapter against real S3 servers: a source bucket on one
//! Garage, the tenant's repository on a region pair (that Garage and a
//! second one). Restores are compared with rclone and with the AWS SDK
//! directly; GETs are counted by a proxy in front of the source, which can
//! also hold the first GET while the test changes the bucket.

use crate::common::*;
use crate::garage::{Garage, Put, write};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const EU: &str = "[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n";

/// Two Garages (eu-west-1 holds the source buckets and one half of the
/// pair, eu-central-1 the other half), a scratch dir and a config.
struct World {
    s: Scratch,
    west: Garage,
    central: Garage,
    creds: String,
    config: PathBuf,
}

fn credentials_file(s: &Scratch, name: &str, g: &Garage) -> String {
    write(
        &s.path(name),
        &format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g.key_id, g.secret
        ),
    )
}

impl World {
    fn new(source_buckets: &[&str]) -> World {
        let mut west_buckets = vec!["bk-eu-west-1"];
        west_buckets.extend_from_slice(source_buckets);
        let west = Garage::start("eu-west-1", &west_buckets);
        let central = Garage::start("eu-central-1", &["bk-eu-central-1"]);
        let s = Scratch::new();
        let creds = credentials_file(&s, "west.creds", &west);
        credentials_file(&s, "central.creds", &central);
        let config = s.path("cairn.toml");
        World {
            s,
            west,
            central,
            creds,
            config,
        }
    }

    /// Regions, regime and tenant `media` on the pair.
    fn storage_toml(&self) -> String {
        let region = |name: &str, g: &Garage, creds: &str| {
            format!(
                "[regions.{name}]\nendpoint = {:?}\nbucket = \"bk-{name}\"\npath-style = true\ncredentials-file = {creds:?}\nmax-attempts = 3\n",
                g.endpoint()
            )
        };
        let pw = write(&self.s.path("media.key"), "password of media\n");
        format!(
            "audit-log = {:?}\n{}{}{EU}[tenants.media]\nregime = \"eu\"\nprimary = \"eu-west-1\"\nsecondary = \"eu-central-1\"\npassword-file = {pw:?}\n",
            self.s.path("audit.jsonl"),
            region("eu-west-1", &self.west, &self.creds),
            region(
                "eu-central-1",
                &self.central,
                &self.s.path("central.creds").display().to_string()
            ),
        )
    }

    /// A bucket grant table for `job`.
    fn grant_toml(&self, job: &str, name: &str, port: u16, bucket: &str, extra: &str) -> String {
        format!(
            "[jobs.{job}.grants.buckets.{name}]\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = {bucket:?}\npath-style = true\ncredentials-file = {:?}\n{extra}",
            self.creds
        )
    }

    fn write_config(&self, jobs: &str) {
        std::fs::write(&self.config, format!("{}{jobs}", self.storage_toml())).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cairn_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CAIRN_REPOSITORY")
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_LOG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("CAIRN_CACHE_DIR", cache_dir());
        c
    }

    fn cairn(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(out.status.success(), "cairn {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// restic's view of the tenant's repository in eu-central-1.
    fn restic(&self, args: &[&str]) -> String {
        let out = Command::new("restic")
            .arg("-r")
            .arg(format!(
                "s3:{}/bk-eu-central-1/media",
                self.central.endpoint()
            ))
            .args(["-o", "s3.region=eu-central-1"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.central.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.central.secret)
            .env("RESTIC_PASSWORD", "password of media")
            .env("RESTIC_CACHE_DIR", self.s.path("restic-cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "restic {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A TCP proxy in front of an S3 server that counts object GETs (a GET
/// that is not a listing) and can hold the first one until released.
struct CountingProxy {
    port: u16,
    gets: Arc<AtomicUsize>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct Gate {
    armed: bool,
    arrived: bool,
    open: bool,
}

impl CountingProxy {
    fn start(target: u16) -> CountingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gets = Arc::new(AtomicUsize::new(0));
        let gate: Arc<(Mutex<Gate>, Condvar)> = Arc::default();
        let (g2, gate2) = (gets.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (gets, gate) = (g2.clone(), gate2.clone());
                std::thread::spawn(move || forward(client, target, &gets, &gate));
            }
        });
        CountingProxy { port, gets, gate }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.gets.store(0, Ordering::SeqCst);
    }

    fn arm(&self) {
        *self.gate.0.lock().unwrap() = Gate {
            armed: true,
            ..Gate::default()
        };
    }

    /// Wait until a GET is held (within 60 s).
    fn wait_held(&self) {
        let (m, cv) = &*self.gate;
        let g = m.lock().unwrap();
        let (g, timeout) = cv
            .wait_timeout_while(g, std::time::Duration::from_secs(60), |g| !g.arrived)
            .unwrap();
        assert!(!timeout.timed_out() && g.arrived, "no object GET arrived");
    }

    fn release(&self) {
        let (m, cv) = &*self.gate;
        m.lock().unwrap().open = true;
        cv.notify_all();
    }
}

/// Copy requests from `client` to the server one head at a time (the S3
/// reads this proxy sees carry no body), counting and maybe holding object
/// GETs; replies are copied back as they come.
fn forward(
    mut client: std::net::TcpStream,
    target: u16,
    gets: &AtomicUsize,
    gate: &(Mutex<Gate>, Condvar),
) {
    let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Both);
        d2.store(true, Ordering::SeqCst);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let line = head.lines().next().unwrap_or_default().to_string();
        let length: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut parts = line.split(' ');
        let (method, target_path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if method == "GET"
            && !target_path.contains("list-type")
            && target_path.matches('/').count() >= 2
        {
            gets.fetch_add(1, Ordering::SeqCst);
            let (m, cv) = gate;
            let mut g = m.lock().unwrap();
            if g.armed && !g.arrived {
                g.arrived = true;
                cv.notify_all();
                let _g = cv.wait_while(g, |g| !g.open).unwrap();
            }
        }
        while buf.len() < end + length {
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if server.write_all(&buf[..end + length]).is_err() {
            return;
        }
        buf.drain(..end + length);
    }
}

/// rclone's listing of a bucket (path, size, MD5 when it has one, MIME
/// type, metadata but its times), with the source's credentials.
fn rclone_listing(w: &World, bucket: &str) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new("rclone")
        .args(["lsjson", "-R", "--files-only", "--hash", "--metadata"])
        .arg(format!("src:{bucket}"))
        .env("RCLONE_CONFIG_SRC_TYPE", "s3")
        .env("RCLONE_CONFIG_SRC_PROVIDER", "Other")
        .env("RCLONE_CONFIG_SRC_ENDPOINT", w.west.endpoint())
        .env("RCLONE_CONFIG_SRC_REGION", "eu-west-1")
        .env("RCLONE_CONFIG_SRC_ACCESS_KEY_ID", &w.west.key_id)
        .env("RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY", &w.west.secret)
        .env("RCLONE_CONFIG_SRC_FORCE_PATH_STYLE", "true")
        // rclone's S3 client refuses a custom CA bundle on plain http.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("run rclone: is it installed? (tests/run installs it)");
    assert!(out.status.success(), "rclone lsjson: {}", text(&out));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            for k in ["ModTime", "Tier", "ID"] {
                o.remove(k);
            }
            if let Some(m) = o.get_mut("Metadata").and_then(|m| m.as_object_mut()) {
                for k in ["mtime", "btime", "tier"] {
                    m.remove(k);
                }
            }
            // A multipart upload's ETag is no MD5: rclone then has none,
            // or one only on one side.
            if o["Size"].as_u64().unwrap_or(0) > 64 << 20 {
                o.remove("Hashes");
            }
            (o["Path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// The weird, empty and annotated objects of the big test.
fn special_objects() -> Vec<Put> {
    let plain = |k: &str, d: &[u8]| Put {
        key: k.into(),
        data: d.to_vec(),
        ..Put::default()
    };
    vec![
        plain("unicode/ünïcödé ✓ 日本.txt", "grüße".as_bytes()),
        plain("spaces/a file with spaces.txt", b"spaced out"),
        plain("double//slash", b"two slashes"),
        plain("trailing/", b""),
        plain("dots/../up", b"dot dot"),
        plain("dots/./here", b"dot"),
        plain("empty-object", b""),
        plain("100% sure", b"percent"),
        plain("a", b"a file beside a directory"),
        plain("a/b", b"inside a"),
        Put {
            key: "meta/with-headers.json".into(),
            data: br#"{"hello":"world"}"#.to_vec(),
            content_type: Some("application/json".into()),
            cache_control: Some("max-age=60".into()),
            disposition: Some("attachment; filename=\"h.json\"".into()),
            language: Some("de-CH".into()),
            metadata: vec![
                ("owner".into(), "alice".into()),
                ("purpose".into(), "test".into()),
            ],
        },
        Put {
            key: "meta/page.html".into(),
            data: b"<p>hi</p>".to_vec(),
            content_type: Some("text/html; charset=utf-8".into()),
            metadata: vec![("x".into(), "y".into())],
            ..Put::default()
        },
    ]
}

const BULK: usize = 10_000;

fn bulk_key(i: usize) -> String {
    format!("bulk/{:03}/{i:05}.txt", i % 100)
}

#[test]
fn s3_bucket_backup_restores_keys_bytes_and_headers_then_backs_up_only_changes() {
    let w = World::new(&["media", "restored"]);
    let mut puts: Vec<Put> = (0..BULK)
        .map(|i| Put {
            key: bulk_key(i),
            data: format!("object {i} {}", "x".repeat(i % 300)).into_bytes(),
            ..Put::default()
        })
        .collect();
    puts.extend(special_objects());
    w.west.put_objects("media", puts);
    w.west
        .put_multipart("media", "big/one-gib.bin", 16, 64 << 20);
    let total = BULK + special_objects().len() + 1;

    let proxy = CountingProxy::start(w.west.s3_port);
    w.write_config(&format!(
        "[jobs.media]\ntenant = \"media\"\nadapter = \"s3-bucket\"\nconfig = {{ bucket = \"media\", concurrency = 16 }}\n{}{}",
        w.grant_toml("media", "media", proxy.port, "media", ""),
        w.grant_toml("media", "restored", w.west.s3_port, "restored", "write = true\n"),
    ));
    w.cairn_ok(&["init", "--tenant", "media"]);

    // First backup: every object read once, and the snapshot is whole.
    let out = w.cairn(&["backup", "--job", "media", "--json"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    assert_eq!(proxy.gets(), total, "one GET per object");
    let summary = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        summary["files"],
        total as u64 + 1,
        "every object and the manifest: {summary}"
    );
    assert_eq!(summary["complete"], true, "{summary}");

    // Restore into a fresh bucket and compare: every key (the SDK), every
    // byte and header (the SDK, and rclone independently).
    w.cairn_ok(&[
        "restore",
        "--job",
        "media",
        "latest",
        "--set",
        "bucket=restored",
    ]);
    let source_keys: BTreeSet<String> = w.west.keys("media").into_iter().collect();
    let restored_keys: BTreeSet<String> = w.west.keys("restored").into_iter().collect();
    assert_eq!(source_keys.len(), total);
    assert_eq!(source_keys, restored_keys, "the same keys");
    for p in special_objects() {
        assert_eq!(
            w.west.object("media", &p.key),
            w.west.object("restored", &p.key),
            "{:?}",
            p.key
        );
    }
    assert_eq!(
        w.west.object("media", "big/one-gib.bin"),
        w.west.object("restored", "big/one-gib.bin")
    );
    assert_eq!(
        w.west.object("restored", "meta/with-headers.json").metadata["owner"],
        "alice"
    );
    let (a, b) = (rclone_listing(&w, "media"), rclone_listing(&w, "restored"));
    assert!(a.len() >= BULK, "rclone sees {} objects", a.len());
    assert_eq!(
        a, b,
        "rclone sees the same objects, sizes, hashes and metadata"
    );
    // A second restore keeps what the bucket has.
    let again = w.cairn(&[
        "restore",
        "--job",
        "media",
        "latest",
        "--set",
        "bucket=restored",
    ]);
    // Objects already there with the same size and ETag count as
    // restored (a rerun finishes); the multipart one was written in other
    // parts, so its ETag differs: it is kept and named.
    assert!(!again.status.success());
    let t = text(&again);
    assert!(
        t.contains("1 object(s) already in bucket restored were kept, not overwritten"),
        "{t}"
    );
    assert!(t.contains("big/one-gib.bin"), "{t}");

    // Change 10 objects and delete 5: the next backup GETs only the 10.
    let changed: Vec<Put> = (0..10)
        .map(|i| Put {
            key: bulk_key(i * 7),
            data: format!("changed {i}").into_bytes(),
            ..Put::default()
        })
        .collect();
    w.west.put_objects("media", changed.clone());
    let deleted: Vec<String> = (0..5).map(|i| bulk_key(5000 + i)).collect();
    for k in &deleted {
        w.west.delete("media", k);
    }
    proxy.reset();
    let out = w.cairn(&["backup", "--job", "media", "--json"]);
    assert!(out.status.success(), "second backup: {}", text(&out));
    assert_eq!(proxy.gets(), 10, "only the changed objects are read again");
    let summary = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(summary["files_unchanged"], (total - 15) as u64, "{summary}");
    // restic reads the manifest: the deletions are recorded.
    let manifest = w.restic(&["dump", "latest", "/objects.jsonl"]);
    let keys: BTreeSet<String> = manifest
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), total - 5);
    for k in &deleted {
        assert!(!keys.contains(k), "{k} was deleted");
    }
    // A changed object's entry in the manifest is the new one.
    let entry: serde_json::Value = manifest
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["key"] == bulk_key(21))
        .unwrap();
    assert_eq!(entry["size"], "changed 3".len(), "{entry}");
    assert_eq!(
        w.restic(&["dump", "latest", &format!("/objects/{}", bulk_key(21))]),
        "changed 3"
    );

    // Restore one prefix by glob into a directory.
    let dir = w.s.path("restore-meta");
    w.cairn_ok(&[
        "restore",
        "--job",
        "media",
        "latest",
        "--target",
        dir.to_str().unwrap(),
        "--set",
        r#"include=["meta/**", "spaces/*"]"#,
    ]);
    assert_eq!(
        std::fs::read(dir.join("meta/with-headers.json")).unwrap(),
        br#"{"hello":"world"}"#
    );
    assert_eq!(
        std::fs::read(dir.join("spaces/a file with spaces.txt")).unwrap(),
        b"spaced out"
    );
    assert!(!dir.join("bulk").exists() && !dir.join("unicode").exists());
    // All of it: keys that cannot be paths are named, the rest restored.
    let all = w.s.path("restore-all");
    let out = w.cairn(&[
        "restore",
        "--job",
        "media",
        "latest",
        "--target",
        all.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    for k in ["double//slash", "dots/../up", "dots/./here"] {
        assert!(t.contains(k), "{k} named: {t}");
    }
    assert!(
        !Path::new(&w.s.path("up")).exists() && !all.join("up").exists(),
        "nothing escaped the target"
    );
    assert_eq!(
        std::fs::read(all.join(bulk_key(9999))).unwrap(),
        format!("object 9999 {}", "x".repeat(9999 % 300)).into_bytes()
    );
    assert!(all.join("trailing").is_dir());
    assert_eq!(
        std::fs::read(all.join("unicode/ünïcödé ✓ 日本.txt")).unwrap(),
        "grüße".as_bytes()
    );
    let big = std::fs::metadata(all.join("big/one-gib.bin")).unwrap();
    assert_eq!(big.len(), 1 << 30);

    // Verify passes, then names an object changed in the bucket.
    w.cairn_ok(&["verify", "--job", "media", "latest"]);
    w.west.put_objects(
        "media",
        vec![Put {
            key: "meta/page.html".into(),
            data: b"<p>changed</p>".to_vec(),
            ..Put::default()
        }],
    );
    let out = w.cairn(&["verify", "--job", "media", "latest"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("meta/page.html"), "{}", text(&out));
}

#[test]
fn s3_bucket_object_changed_or_deleted_during_the_backup_is_named_and_the_run_incomplete() {
    let w = World::new(&["media"]);
    let puts: Vec<Put> = (0..40)
        .map(|i| Put {
            key: format!("k/{i:02}"),
            data: format!("version one of {i}").into_bytes(),
            ..Put::default()
        })
        .collect();
    w.west.put_objects("media", puts);
    let proxy = CountingProxy::start(w.west.s3_port);
    w.write_config(&format!(
        "[jobs.media]\ntenant = \"media\"\nadapter = \"s3-bucket\"\nconfig = {{ concurrency = 1 }}\n{}",
        w.grant_toml("media", "media", proxy.port, "media", ""),
    ));
    w.cairn_ok(&["init", "--tenant", "media"]);
    proxy.arm();
    let child = w
        .cmd(&["backup", "--job", "media"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The listing is done and the first GET is held: change the bucket.
    proxy.wait_held();
    w.west.put_objects(
        "media",
        vec![Put {
            key: "k/30".into(),
            data: b"version two".to_vec(),
            ..Put::default()
        }],
    );
    w.west.delete("media", "k/31");
    proxy.release();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "incomplete: {}", text(&out));
    let t = text(&out);
    assert!(t.contains("k/30") && t.contains("k/31"), "both named: {t}");
    // The snapshot holds neither half-old nor half-new: both are left out.
    let manifest = w.cairn_ok(&["ls", "--tenant", "media", "latest", "--json"]);
    assert!(!manifest.contains("/objects/k/30\"") && !manifest.contains("/objects/k/31\""));
    assert!(manifest.contains("/objects/k/29\""), "{manifest}");
    // Verify names what the backup left out.
    let out = w.cairn(&["verify", "--job", "media", "latest"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("\"k/30\": left out of this snapshot")
            && t.contains("\"k/31\": left out of this snapshot"),
        "{t}"
    );
}

#[test]
fn s3_bucket_requests_outside_the_grant_are_refused_and_secrets_never_shown() {
    let w = World::new(&["media", "other"]);
    w.west.put_objects(
        "media",
        vec![
            Put {
                key: "allowed/one".into(),
                data: b"1".to_vec(),
                ..Put::default()
            },
            Put {
                key: "private/two".into(),
                data: b"2".to_vec(),
                ..Put::default()
            },
        ],
    );
    w.write_config(&format!(
        "[jobs.media]\ntenant = \"media\"\nadapter = \"s3-bucket\"\nconfig = {{ bucket = \"media\" }}\n{}",
        w.grant_toml("media", "media", w.west.s3_port, "media", "prefix = \"allowed/\"\n"),
    ));
    w.cairn_ok(&["init", "--tenant", "media"]);
    // A prefix outside the grant.
    let out = w
        .cmd(&[
            "backup",
            "--job",
            "media",
            "--set",
            "prefix=private/",
            "-vvv",
        ])
        .env("CAIRN_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("outside bucket grant media"), "{t}");
    assert!(!t.contains(&w.west.secret), "the secret key never appears");
    // A bucket the job does not grant.
    let out = w.cairn(&["backup", "--job", "media", "--set", "bucket=other"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no granted bucket matches bucket other"),
        "{}",
        text(&out)
    );
    // Inside the grant: only the granted prefix is backed up, with full
    // tracing on, and still no secret in any output.
    let out = w
        .cmd(&["backup", "--job", "media", "-vvv"])
        .env("CAIRN_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(&w.west.secret));
    let listing = w.cairn_ok(&["ls", "--tenant", "media", "latest"]);
    assert!(
        listing.contains("/objects/allowed/one") && !listing.contains("private"),
        "{listing}"
    );
    // Restoring into a read-only grant is refused before any write.
    let out = w.cairn(&["restore", "--job", "media", "latest"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("read-only"), "{}", text(&out));
    // A grant given on the command line works the same way.
    let url = format!(
        "http://127.0.0.1:{}/other?region=eu-west-1&path-style=true&write=true&credentials-file={}",
        w.west.s3_port, w.creds
    );
    w.cairn_ok(&[
        "restore",
        "--tenant",
        "media",
        "latest",
        "--adapter",
        "s3-bucket",
        "--grant-bucket",
        &format!("other={url}"),
        "--adapter-config",
        r#"{"bucket":"other"}"#,
    ]);
    assert_eq!(w.west.keys("other"), vec!["allowed/one".to_string()]);
    assert_eq!(w.west.get("other", "allowed/one"), b"1");
}

#[test]
fn s3_bucket_restore_honours_include_and_a_drill_restores_into_its_scratch_directory() {
    let w = World::new(&["media", "copy"]);
    w.west.put_objects(
        "media",
        ["photos/a.jpg", "photos/b.jpg", "docs/c.txt"]
            .iter()
            .map(|k| Put {
                key: k.to_string(),
                data: format!("bytes of {k}").into_bytes(),
                ..Put::default()
            })
            .collect(),
    );
    let drill = w.s.path("drill");
    w.write_config(&format!(
        "[jobs.media]\ntenant = \"media\"\nadapter = \"s3-bucket\"\nconfig = {{ bucket = \"media\" }}\ndrill = {{ set = {{ target = {drill:?} }} }}\n{}{}",
        w.grant_toml("media", "media", w.west.s3_port, "media", ""),
        w.grant_toml("media", "copy", w.west.s3_port, "copy", "write = true\n"),
    ));
    w.cairn_ok(&["init", "--tenant", "media"]);
    w.cairn_ok(&["backup", "--job", "media"]);
    // `cairn restore --include` narrows a restore into a bucket.
    w.cairn_ok(&[
        "restore",
        "--job",
        "media",
        "latest",
        "--set",
        "bucket=copy",
        "--set",
        "prefix=only",
        "--include",
        "/objects/photos",
    ]);
    assert_eq!(
        w.west.keys("copy"),
        vec![
            "only/photos/a.jpg".to_string(),
            "only/photos/b.jpg".to_string()
        ]
    );
    assert_eq!(
        w.west.get("copy", "only/photos/b.jpg"),
        b"bytes of photos/b.jpg"
    );
    // The drill restores into the directory its set names, then verifies.
    let out = w.cairn_ok(&["drill", "media"]);
    assert!(out.contains("drill of job media: passed"), "{out}");
    assert_eq!(
        std::fs::read(drill.join("docs/c.txt")).unwrap(),
        b"bytes of docs/c.txt"
    );
    assert_eq!(
        std::fs::read(drill.join("photos/a.jpg")).unwrap(),
        b"bytes of photos/a.jpg"
    );
}

#[test]
fn s3_bucket_job_runs_on_the_agents_schedule_into_a_region_pair() {
    let w = World::new(&["media"]);
    w.west.put_objects(
        "media",
        (0..50)
            .map(|i| Put {
                key: format!("f/{i}"),
                data: vec![i as u8; 100],
                ..Put::default()
            })
            .collect(),
    );
    let jobs = format!(
        "[jobs.media]\ntenant = \"media\"\nadapter = \"s3-bucket\"\nschedule = \"*/2 * * * * *\"\nconfig = {{ bucket = \"media\" }}\n{}",
        w.grant_toml("media", "media", w.west.s3_port, "media", ""),
    );
    w.write_config(&jobs);
    w.cairn_ok(&["init", "--tenant", "media"]);
    let storage = w
        .storage_toml()
        .replace(&format!("audit-log = {:?}\n", w.s.path("audit.jsonl")), "");
    let agent = crate::agent::start_agent(&w.s, "", &format!("{storage}{jobs}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let snapshots = loop {
        let out = w.cairn_ok(&["snapshots", "--tenant", "media", "--json"]);
        let n = last_json(&out).as_array().map_or(0, |a| a.len());
        if n >= 2 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(
        snapshots >= 2,
        "the schedule ran the job twice: {}",
        agent.log()
    );
    drop(agent);
    // Both regions hold the snapshots; the residency report passes.
    let listing = w.restic(&["ls", "latest"]);
    assert!(listing.contains("/objects/f/49"), "{listing}");
    w.cairn_ok(&["residency", "report", "--tenant", "media"]);
}
