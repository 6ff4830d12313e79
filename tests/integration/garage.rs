//! A real S3 server per region for the tests: one Garage process each, on
//! loopback ports, with its own `s3_region`, buckets and access key; stopped
//! (killed) when dropped. Objects are listed and tampered with through the
//! AWS SDK directly, independently of Cairn's storage code.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `.ci/run` and `tests/run` install Garage (`cargo install garage`).
pub fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_GARAGE") {
        return PathBuf::from(p);
    }
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/cairn-tools/garage/bin/garage");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("garage")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One running Garage.
pub struct Garage {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub region: String,
    pub s3_port: u16,
    rpc_port: u16,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Start a Garage answering as `region`, with `buckets` created and one
    /// key allowed on all of them.
    pub fn start(region: &str, buckets: &[&str]) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("cairn-garage-")
            .tempdir()
            .expect("tempdir");
        let mut g = Garage {
            child: None,
            dir,
            region: region.to_string(),
            s3_port: free_port(),
            rpc_port: free_port(),
            key_id: String::new(),
            secret: String::new(),
        };
        // A port picked free may be taken by another test's server before
        // ours binds it: then ours exits, and we try again with new ports.
        for attempt in 1.. {
            g.s3_port = free_port();
            g.rpc_port = free_port();
            if g.s3_port == g.rpc_port {
                continue;
            }
            g.write_config();
            match g.try_spawn() {
                Ok(()) => break,
                Err(log) if attempt < 5 => {
                    eprintln!(
                        "Garage for {region} did not start (attempt {attempt}), retrying:\n{log}"
                    )
                }
                Err(log) => panic!("Garage for {region} did not start:\n{log}"),
            }
        }
        // Single-node layout, then buckets and a key.
        let status = g.cli(&["status"]);
        let node = status
            .lines()
            .find_map(|l| {
                let first = l.split_whitespace().next()?;
                (first.len() == 16 && first.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| first.to_string())
            })
            .unwrap_or_else(|| panic!("no node id in `garage status`:\n{status}"));
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        let key = g.cli(&["key", "create", "cairn-test"]);
        g.key_id = field(&key, "Key ID").unwrap_or_else(|| panic!("no key id in:\n{key}"));
        g.secret = field(&key, "Secret key").unwrap_or_else(|| panic!("no secret in:\n{key}"));
        for b in buckets {
            g.create_bucket(b);
        }
        g
    }

    /// A second key that may only read `bucket`: (key id, secret).
    pub fn read_only_key(&self, bucket: &str) -> (String, String) {
        let key = self.cli(&["key", "create", "cairn-test-reader"]);
        let id = field(&key, "Key ID").unwrap_or_else(|| panic!("no key id in:\n{key}"));
        let secret = field(&key, "Secret key").unwrap_or_else(|| panic!("no secret in:\n{key}"));
        self.cli(&["bucket", "allow", "--read", bucket, "--key", &id]);
        (id, secret)
    }

    /// Create a bucket the test key may read and write.
    pub fn create_bucket(&self, bucket: &str) {
        self.cli(&["bucket", "create", bucket]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            bucket,
            "--key",
            &self.key_id,
        ]);
    }

    fn write_config(&self) {
        let d = self.dir.path();
        std::fs::write(
            self.config_path(),
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
"#,
                d = d.display(),
                rpc = self.rpc_port,
                s3 = self.s3_port,
                region = self.region,
                secret = hex_of(&common_random(32, self.rpc_port as u64)),
            ),
        )
        .expect("write garage config");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("Garage for {} did not start:\n{log}", self.region);
        }
    }

    /// Start the server and wait until both its ports answer; if it exits
    /// first (a port taken), its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("garage.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut child = Command::new(garage_bin())
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start Garage ({}): {e}; tests/run installs it",
                    garage_bin().display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        loop {
            let exited = child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            if up(self.s3_port) && up(self.rpc_port) {
                // Answering ports may be another server's: ours must still
                // be running a moment later.
                std::thread::sleep(Duration::from_millis(200));
                if child.try_wait().ok().flatten().is_none() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Run the garage CLI against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(garage_bin())
                .arg("-c")
                .arg(self.config_path())
                .args(args)
                .output()
                .expect("run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // Right after start the RPC layer may not answer yet.
            assert!(
                Instant::now() < deadline,
                "garage {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the server (as a crash would: SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// An SDK client for this server, independent of Cairn's.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            self.key_id.clone(),
            self.secret.clone(),
            None,
            None,
            "test",
        );
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every object key in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let client = self.client();
        runtime().block_on(async {
            let mut out = Vec::new();
            let mut pages = client
                .list_objects_v2()
                .bucket(bucket)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for o in page.expect("list objects").contents() {
                    out.push(o.key().unwrap_or_default().to_string());
                }
            }
            out
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let client = self.client();
        runtime().block_on(async {
            let r = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get object");
            r.body.collect().await.expect("body").into_bytes().to_vec()
        })
    }

    /// Put a one-byte object under each key.
    pub fn put_many(&self, bucket: &str, keys: impl Iterator<Item = String>) {
        self.put_objects(
            bucket,
            keys.map(|key| Put {
                key,
                data: b"x".to_vec(),
                ..Put::default()
            })
            .collect(),
        );
    }

    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.put_objects(
            bucket,
            vec![Put {
                key: key.into(),
                data,
                ..Put::default()
            }],
        );
    }

    /// Put objects with their headers, 32 at a time.
    pub fn put_objects(&self, bucket: &str, puts: Vec<Put>) {
        use futures::StreamExt;
        let client = self.client();
        runtime().block_on(async {
            futures::stream::iter(puts)
                .map(|p| {
                    let client = client.clone();
                    async move {
                        let mut req = client
                            .put_object()
                            .bucket(bucket)
                            .key(&p.key)
                            .set_content_type(p.content_type)
                            .set_cache_control(p.cache_control)
                            .set_content_disposition(p.disposition)
                            .set_content_language(p.language)
                            .body(p.data.into());
                        for (k, v) in p.metadata {
                            req = req.metadata(k, v);
                        }
                        req.send()
                            .await
                            .unwrap_or_else(|e| panic!("put {:?}: {e:?}", p.key));
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        });
    }

    /// Upload `parts` parts of `part` random bytes each as one multipart
    /// object.
    pub fn put_multipart(&self, bucket: &str, key: &str, parts: u64, part: usize) {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let client = self.client();
        runtime().block_on(async {
            let up = client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .content_type("application/octet-stream")
                .send()
                .await
                .expect("create multipart upload");
            let id = up.upload_id().expect("an upload id").to_string();
            let mut done = Vec::new();
            for n in 1..=parts {
                let r = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n as i32)
                    .body(common_random(part, 1000 + n).into())
                    .send()
                    .await
                    .expect("upload part");
                done.push(
                    CompletedPart::builder()
                        .part_number(n as i32)
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .build(),
                );
            }
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .expect("complete multipart upload");
        });
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let client = self.client();
        runtime().block_on(async {
            client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("delete object");
        });
    }

    /// One object as GET returns it: the SHA-256 of its bytes (streamed),
    /// its size and headers.
    pub fn object(&self, bucket: &str, key: &str) -> Seen {
        use sha2::Digest;
        let client = self.client();
        runtime().block_on(async {
            let r = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key:?}: {e:?}"));
            let seen = Seen {
                sha256: String::new(),
                size: 0,
                content_type: r.content_type().map(str::to_string),
                cache_control: r.cache_control().map(str::to_string),
                disposition: r.content_disposition().map(str::to_string),
                language: r.content_language().map(str::to_string),
                metadata: r
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            };
            let mut body = r.body;
            let mut h = sha2::Sha256::new();
            let mut size = 0u64;
            while let Some(b) = body.try_next().await.expect("object body") {
                size += b.len() as u64;
                h.update(&b);
            }
            Seen {
                sha256: format!("{:x}", h.finalize()),
                size,
                ..seen
            }
        })
    }
}

/// An object to put: key, bytes, headers.
#[derive(Clone, Default)]
pub struct Put {
    pub key: String,
    pub data: Vec<u8>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub disposition: Option<String>,
    pub language: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// An object as GET returns it: the SHA-256 of its bytes, size, headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub disposition: Option<String>,
    pub language: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The value after `name:` in the garage CLI's key output.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

fn common_random(n: usize, seed: u64) -> Vec<u8> {
    crate::common::random_bytes(n, seed)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Write a file and return its path as a string.
pub fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write");
    path.to_str().expect("utf-8").to_string()
}

/// A TCP proxy in front of a Garage that answers the first requests with
/// `503 SlowDown` (S3's throttling reply), as a loaded S3 endpoint would.
pub struct ThrottlingProxy {
    pub port: u16,
    /// How many requests were answered with 503.
    pub throttled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How many more requests to throttle.
    budget: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ThrottlingProxy {
    pub fn start(target_port: u16, throttle_first: usize) -> ThrottlingProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let throttled = Arc::new(AtomicUsize::new(0));
        let budget = Arc::new(AtomicUsize::new(throttle_first));
        let (t, b) = (throttled.clone(), budget.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (t, b) = (t.clone(), b.clone());
                std::thread::spawn(move || {
                    let take = b
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if take {
                        t.fetch_add(1, Ordering::SeqCst);
                        throttle(client);
                    } else {
                        pipe(client, target_port);
                    }
                });
            }
        });
        ThrottlingProxy {
            port,
            throttled,
            budget,
        }
    }

    /// Throttle every request from now on.
    pub fn throttle_all(&self) {
        self.budget
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn throttled(&self) -> usize {
        self.throttled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Read one request's head (and body, if it has a length), answer 503.
fn throttle(mut client: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Forward a connection to the server, both ways, until either side closes.
fn pipe(client: std::net::TcpStream, port: u16) {
    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let (mut c1, mut s1) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (mut c2, mut s2) = (client, server);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c1, &mut s1);
        let _ = s1.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
