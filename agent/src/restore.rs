//! The read path: walk a snapshot's trees depth-first and read file content,
//! fetching several blobs ahead so storage latency overlaps decryption.

use crate::repo::pack::BlobType;
use crate::repo::tree::{Node, Tree};
use crate::repo::{Id, RepoError, Repository};
use futures::StreamExt;
use std::sync::Arc;

/// Blobs fetched ahead of the one being consumed.
const READ_AHEAD: usize = 4;

/// One entry of a snapshot, with its absolute path.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Absolute path inside the snapshot, `/`-separated.
    pub path: String,
    /// The node as stored.
    pub node: Node,
}

/// Walks a snapshot depth-first, directories before their content, nodes in
/// name order, yielding only entries on or below the `include` paths (and the
/// directories leading to them).
pub struct Walker {
    repo: Arc<Repository>,
    stack: Vec<(String, std::vec::IntoIter<Node>)>,
    include: Vec<String>,
}

fn check_name(name: &str, tree: &Id) -> Result<(), RepoError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(RepoError::Corrupt {
            what: format!("tree {tree}"),
            reason: format!("invalid entry name {name:?} (it could escape the restore target)"),
        });
    }
    Ok(())
}

impl Walker {
    /// Start at the snapshot's root tree. `include` holds absolute paths; an
    /// empty list selects everything.
    pub async fn new(
        repo: Arc<Repository>,
        root: Id,
        include: Vec<String>,
    ) -> Result<Self, RepoError> {
        let tree = load_checked_tree(&repo, &root).await?;
        let include = include
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect();
        Ok(Walker {
            repo,
            stack: vec![(String::new(), tree.nodes.into_iter())],
            include,
        })
    }

    fn selected(&self, path: &str) -> (bool, bool) {
        if self.include.is_empty() {
            return (true, true);
        }
        let mut yield_it = false;
        let mut descend = false;
        for inc in &self.include {
            let inside = path == inc || path.starts_with(&format!("{inc}/")) || inc.is_empty();
            let ancestor = inc.starts_with(&format!("{path}/"));
            yield_it |= inside || ancestor;
            descend |= inside || ancestor;
        }
        (yield_it, descend)
    }

    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<WalkEntry>, RepoError> {
        loop {
            let Some((prefix, iter)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(node) = iter.next() else {
                self.stack.pop();
                continue;
            };
            let path = format!("{prefix}/{}", node.name);
            let (yield_it, descend) = self.selected(&path);
            if !yield_it {
                continue;
            }
            if node.kind == "dir" && descend {
                let subtree = node.subtree.ok_or_else(|| RepoError::Corrupt {
                    what: format!("directory {path}"),
                    reason: "has no subtree".into(),
                })?;
                let tree = load_checked_tree(&self.repo, &subtree).await?;
                self.stack.push((path.clone(), tree.nodes.into_iter()));
            }
            return Ok(Some(WalkEntry { path, node }));
        }
    }
}

async fn load_checked_tree(repo: &Repository, id: &Id) -> Result<Tree, RepoError> {
    let tree = repo.load_tree(id).await?;
    for n in &tree.nodes {
        check_name(&n.name, id)?;
    }
    Ok(tree)
}

/// Find the node at `path` in the tree rooted at `root`.
pub async fn lookup(repo: &Repository, root: Id, path: &str) -> Result<Option<Node>, RepoError> {
    let mut tree_id = root;
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, comp) in comps.iter().enumerate() {
        let tree = repo.load_tree(&tree_id).await?;
        let Some(node) = tree.nodes.into_iter().find(|n| n.name == *comp) else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(node));
        }
        match node.subtree {
            Some(s) if node.kind == "dir" => tree_id = s,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Streams a file's content blob by blob, authenticated, with read-ahead.
pub struct ContentReader {
    stream: futures::stream::BoxStream<'static, Result<Vec<u8>, RepoError>>,
    current: Vec<u8>,
    pos: usize,
}

impl ContentReader {
    /// A reader with nothing left to read.
    pub fn empty() -> Self {
        ContentReader {
            stream: futures::stream::empty().boxed(),
            current: Vec::new(),
            pos: 0,
        }
    }

    /// A reader over the blobs `content`.
    pub fn new(repo: Arc<Repository>, content: Vec<Id>) -> Self {
        let stream = futures::stream::iter(content)
            .map(move |id| {
                let repo = Arc::clone(&repo);
                async move { repo.load_blob(&id, BlobType::Data).await }
            })
            .buffered(READ_AHEAD)
            .boxed();
        ContentReader {
            stream,
            current: Vec::new(),
            pos: 0,
        }
    }

    /// The next whole blob (or the rest of a partly read one); `None` at the end.
    pub async fn next_blob(&mut self) -> Result<Option<Vec<u8>>, RepoError> {
        if self.pos < self.current.len() {
            let rest = self.current.split_off(self.pos);
            self.current.clear();
            self.pos = 0;
            return Ok(Some(rest));
        }
        self.stream.next().await.transpose()
    }

    /// Up to `max` bytes; an empty vector at the end.
    pub async fn read(&mut self, max: usize) -> Result<Vec<u8>, RepoError> {
        while self.pos >= self.current.len() {
            match self.stream.next().await.transpose()? {
                Some(b) => {
                    self.current = b;
                    self.pos = 0;
                }
                None => return Ok(Vec::new()),
            }
        }
        let end = (self.pos + max).min(self.current.len());
        let out = self.current[self.pos..end].to_vec();
        self.pos = end;
        Ok(out)
    }
}
