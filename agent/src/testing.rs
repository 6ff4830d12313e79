//! What unit tests share: a runtime, a repository on a
//! [`MemoryBackend`], and snapshots written by hand through the pipeline.

use crate::pipeline::{Pipeline, PipelineOptions};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, Tree};
use crate::repo::{Id, Repository};
use crate::storage::memory::MemoryBackend;
use std::sync::Arc;

/// The password of every test repository.
pub const PASSWORD: &str = "unit-test password";

/// A runtime as the commands have one: several workers, timers on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A new repository in memory (a cheap key derivation), its index loaded.
pub async fn memory_repo(name: &str) -> (Arc<MemoryBackend>, Arc<Repository>) {
    let backend = Arc::new(MemoryBackend::new(name));
    let repo = Repository::init_with_cost(backend.clone(), PASSWORD, 10)
        .await
        .expect("init a memory repository");
    let repo = Arc::new(repo);
    repo.load_index().await.expect("load the empty index");
    (backend, repo)
}

/// Store `files` (name, content) as one directory tree through a
/// pipeline; returns the tree's id.
pub async fn store_tree(repo: &Arc<Repository>, files: &[(&str, &[u8])]) -> Id {
    let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
    let mut nodes = Vec::new();
    for (name, data) in files {
        let blob = pipeline
            .add_data(data.to_vec())
            .await
            .expect("queue a blob")
            .get()
            .await
            .expect("hash a blob");
        let mut n = Node::new(*name, "file");
        n.mode = 0o644;
        n.size = data.len() as u64;
        n.content = Some(vec![blob]);
        nodes.push(n);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let tree = Tree { nodes }.to_bytes();
    let id = Id::hash(&tree);
    pipeline.add_tree(id, tree).await.expect("queue the tree");
    pipeline.finish().await.expect("finish the pipeline");
    id
}

/// A snapshot of `tree` taken `days_ago` days before now, by `host`.
pub fn snapshot(tree: Id, days_ago: i64, host: &str) -> Snapshot {
    Snapshot {
        time: (chrono::Utc::now() - chrono::Duration::days(days_ago)).fixed_offset(),
        parent: None,
        tree,
        paths: vec!["/data".into()],
        hostname: host.into(),
        username: String::new(),
        uid: 0,
        gid: 0,
        excludes: vec![],
        tags: vec![],
        original: None,
        program_version: String::new(),
        cairn_adapter: Some("filesystem".into()),
        cairn_component: None,
        cairn_job: None,
        cairn_skipped: vec![],
    }
}

/// Store `files` and a snapshot of them; returns the snapshot's id.
pub async fn backed_up(
    repo: &Arc<Repository>,
    files: &[(&str, &[u8])],
    days_ago: i64,
    host: &str,
) -> Id {
    let tree = store_tree(repo, files).await;
    repo.save_snapshot(&snapshot(tree, days_ago, host))
        .await
        .expect("save the snapshot")
}

/// An opened store over `repo` (no pair).
pub fn store(repo: &Arc<Repository>) -> crate::ops::Store {
    crate::ops::Store {
        repo: repo.clone(),
        pair: None,
        no_lock: false,
    }
}

/// `len` bytes that do not compress (xorshift from `seed`), so sizes and
/// pack positions mean something.
pub fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut x = seed as u32 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A tenant `t`'s region pair of memory regions `a` (primary) and `b`,
/// with the regions themselves (clones share the store, so a test can
/// break one) and the audit log's directory (kept while the pair lives).
pub struct MemoryPair {
    /// The pair.
    pub pair: Arc<crate::residency::pair::PairBackend<MemoryBackend>>,
    /// The primary region.
    pub a: MemoryBackend,
    /// The secondary region.
    pub b: MemoryBackend,
    /// Where the audit log is.
    pub dir: tempfile::TempDir,
}

/// See [`MemoryPair`]; `require_both` as the tenant's setting.
pub fn memory_pair(require_both: bool) -> MemoryPair {
    use crate::residency::audit::AuditLog;
    use crate::residency::{Guarded, Policy};
    let config = crate::config::Config::parse(
        std::path::Path::new("t"),
        r#"
[regions.a]
endpoint = "http://127.0.0.1:1"
bucket = "x"
[regions.b]
endpoint = "http://127.0.0.1:2"
bucket = "y"
[regimes.eu]
regions = ["a", "b"]
[tenants.t]
regime = "eu"
primary = "a"
secondary = "b"
password-file = "/k"
"#,
    )
    .expect("a valid config");
    let policy = Arc::new(Policy::from_config(&config));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit.jsonl")).expect("an audit log"));
    let (a, b) = (MemoryBackend::new("a"), MemoryBackend::new("b"));
    let guard = |m: &MemoryBackend| {
        Guarded::new(m.clone(), "t", policy.clone(), audit.clone()).expect("inside the pair")
    };
    MemoryPair {
        pair: Arc::new(crate::residency::pair::PairBackend::from_regions(
            "t",
            guard(&a),
            guard(&b),
            require_both,
        )),
        a,
        b,
        dir,
    }
}

/// A repository on a memory pair, opened as an operation opens it.
pub async fn pair_store(p: &MemoryPair) -> crate::ops::Store {
    let repo = Repository::init_with_cost(p.pair.clone(), PASSWORD, 10)
        .await
        .expect("init on the pair");
    let repo = Arc::new(repo);
    repo.load_index().await.expect("load the empty index");
    crate::ops::Store {
        repo,
        pair: Some(p.pair.clone()),
        no_lock: false,
    }
}
