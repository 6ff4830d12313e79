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
