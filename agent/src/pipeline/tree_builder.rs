//! Turns a depth-first stream of entries into restic trees, bottom-up.
//!
//! Only the directories on the path from the root to the current entry are
//! held in memory, so memory grows with depth and directory width, not with
//! the number of files. A directory is sealed (sorted, serialised, stored)
//! as soon as an entry outside it arrives.

use super::{PendingId, Pipeline};
use crate::repo::tree::{Node, Tree};
use crate::repo::{Id, RepoError};

/// An entry that breaks the depth-first order or the naming rules.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path is not absolute, or has an empty, `.` or `..` component.
    #[error("invalid entry path {0:?}: paths are absolute with no empty, '.' or '..' components")]
    InvalidPath(String),
    /// The entry's directory was already sealed, or the entry came twice.
    #[error("entry {0:?} arrived out of order or twice: entries must be emitted depth-first")]
    OutOfOrder(String),
    /// Storing a tree failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// A child node; a file's content ids may still be on their way from the
/// hashing workers, so small files pipeline instead of waiting one by one.
struct Child {
    node: Node,
    pending: Vec<PendingId>,
}

struct OpenDir {
    /// The directory's own node (none for the snapshot root).
    node: Option<Node>,
    children: Vec<Child>,
    /// Names of every child added so far, to catch duplicates and re-entry.
    names: std::collections::HashSet<String>,
}

impl OpenDir {
    fn new(node: Option<Node>) -> Self {
        OpenDir {
            node,
            children: Vec::new(),
            names: Default::default(),
        }
    }
}

/// Builds the trees of one snapshot.
pub struct TreeBuilder {
    /// Open directories from the root down; `stack[0]` is the root.
    stack: Vec<OpenDir>,
    /// Path components of `stack[1..]`.
    path: Vec<String>,
    /// Trees stored, for statistics.
    pub trees: u64,
}

/// Split an absolute entry path into validated components.
pub fn split_path(path: &str) -> Result<Vec<String>, TreeError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| TreeError::InvalidPath(path.into()))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .map(|c| match c {
            "" | "." | ".." => Err(TreeError::InvalidPath(path.into())),
            c => Ok(c.to_string()),
        })
        .collect()
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    /// An empty snapshot.
    pub fn new() -> Self {
        TreeBuilder {
            stack: vec![OpenDir::new(None)],
            path: Vec::new(),
            trees: 0,
        }
    }

    /// Make `dir` (components) the innermost open directory: seal what is not
    /// on its path, open what is missing with nodes from `make_dir`.
    pub async fn enter(
        &mut self,
        dir: &[String],
        pipeline: &Pipeline,
        make_dir: &mut (dyn FnMut(&[String]) -> Node + Send),
    ) -> Result<(), TreeError> {
        let common = self
            .path
            .iter()
            .zip(dir)
            .take_while(|(a, b)| a == b)
            .count();
        while self.path.len() > common {
            self.seal_top(pipeline).await?;
        }
        for depth in common..dir.len() {
            let name = &dir[depth];
            let top = self.stack.last_mut().expect("root");
            if !top.names.insert(name.clone()) {
                return Err(TreeError::OutOfOrder(format!(
                    "/{}",
                    dir[..=depth].join("/")
                )));
            }
            let mut node = make_dir(&dir[..=depth]);
            node.name = name.clone();
            self.stack.push(OpenDir::new(Some(node)));
            self.path.push(name.clone());
        }
        Ok(())
    }

    /// Add a node at `path`; a directory node becomes the innermost open
    /// directory. `pending` holds a file's content ids still being hashed.
    pub async fn add(
        &mut self,
        path: &str,
        node: Node,
        pending: Vec<PendingId>,
        pipeline: &Pipeline,
        make_dir: &mut (dyn FnMut(&[String]) -> Node + Send),
    ) -> Result<(), TreeError> {
        let comps = split_path(path)?;
        let Some((name, parent)) = comps.split_last() else {
            return Err(TreeError::InvalidPath(path.into()));
        };
        self.enter(parent, pipeline, make_dir).await?;
        let top = self.stack.last_mut().expect("root");
        if !top.names.insert(name.clone()) {
            return Err(TreeError::OutOfOrder(path.into()));
        }
        let mut node = node;
        node.name = name.clone();
        if node.kind == "dir" {
            self.stack.push(OpenDir::new(Some(node)));
            self.path.push(name.clone());
        } else {
            top.children.push(Child { node, pending });
        }
        Ok(())
    }

    async fn seal_top(&mut self, pipeline: &Pipeline) -> Result<(), TreeError> {
        let dir = self.stack.pop().expect("non-root");
        self.path.pop();
        let mut node = dir.node.expect("non-root has a node");
        node.subtree = Some(store_tree(dir.children, pipeline).await?);
        self.trees += 1;
        let parent = self.stack.last_mut().expect("root");
        parent.children.push(Child {
            node,
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Seal everything; returns the root tree's id.
    pub async fn finish(mut self, pipeline: &Pipeline) -> Result<Id, TreeError> {
        while self.stack.len() > 1 {
            self.seal_top(pipeline).await?;
        }
        let root = self.stack.pop().expect("root");
        self.trees += 1;
        Ok(store_tree(root.children, pipeline).await?)
    }
}

async fn store_tree(children: Vec<Child>, pipeline: &Pipeline) -> Result<Id, RepoError> {
    let mut nodes = Vec::with_capacity(children.len());
    for Child { mut node, pending } in children {
        if !pending.is_empty() {
            let content = node.content.get_or_insert_with(Vec::new);
            for p in pending {
                content.push(p.get().await?);
            }
        }
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let bytes = Tree { nodes }.to_bytes();
    let id = Id::hash(&bytes);
    pipeline.add_tree(id, bytes).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineOptions;
    use crate::repo::tree::go_mode;
    use crate::testing::{memory_repo, runtime};
    use std::sync::Arc;

    fn file(size: u64) -> Node {
        let mut n = Node::new("", "file");
        n.size = size;
        n
    }

    fn dir() -> Node {
        let mut n = Node::new("", "dir");
        n.mode = go_mode::DIR | 0o755;
        n
    }

    /// The tree at `id`, as (path, kind) pairs, depth-first.
    async fn listing(repo: &Arc<crate::repo::Repository>, id: Id, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let tree = repo.load_tree(&id).await.unwrap();
        for n in tree.nodes {
            let path = format!("{prefix}/{}", n.name);
            out.push(format!("{path} {}", n.kind));
            if let Some(sub) = n.subtree {
                out.extend(Box::pin(listing(repo, sub, &path)).await);
            }
        }
        out
    }

    #[test]
    fn directories_the_adapter_did_not_emit_are_made_and_everything_is_sorted() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("trees").await;
            let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
            let mut made = Vec::new();
            let mut make_dir = |comps: &[String]| {
                made.push(comps.join("/"));
                dir()
            };
            let mut b = TreeBuilder::new();
            for path in ["/srv/www/b", "/srv/www/a", "/srv/z", "/etc/x"] {
                b.add(path, file(1), vec![], &pipeline, &mut make_dir)
                    .await
                    .unwrap();
            }
            let root = b.finish(&pipeline).await.unwrap();
            pipeline.finish().await.unwrap();
            repo.load_index().await.unwrap();
            assert_eq!(made, ["srv", "srv/www", "etc"]);
            assert_eq!(
                listing(&repo, root, "").await,
                [
                    "/etc dir",
                    "/etc/x file",
                    "/srv dir",
                    "/srv/www dir",
                    "/srv/www/a file",
                    "/srv/www/b file",
                    "/srv/z file"
                ]
            );
        });
    }

    #[test]
    fn an_entry_out_of_depth_first_order_or_twice_is_refused() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("trees").await;
            let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
            let mut make_dir = |_: &[String]| dir();
            let mut b = TreeBuilder::new();
            b.add("/a/x", file(1), vec![], &pipeline, &mut make_dir)
                .await
                .unwrap();
            b.add("/b/y", file(1), vec![], &pipeline, &mut make_dir)
                .await
                .unwrap();
            let twice = b
                .add("/b/y", file(1), vec![], &pipeline, &mut make_dir)
                .await;
            assert!(matches!(twice, Err(TreeError::OutOfOrder(p)) if p == "/b/y"));
            // `/a` was sealed when `/b` began.
            let late = b
                .add("/a/z", file(1), vec![], &pipeline, &mut make_dir)
                .await;
            assert!(matches!(late, Err(TreeError::OutOfOrder(p)) if p == "/a"));
            drop(pipeline);
        });
    }

    #[test]
    fn only_absolute_paths_without_empty_dot_or_dotdot_parts_are_entries() {
        for bad in ["", "a/b", "/a//b", "/a/./b", "/a/../b", "/a/"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(split_path("/").unwrap(), Vec::<String>::new());
        assert_eq!(split_path("/a b/ç").unwrap(), ["a b", "ç"]);
    }
}
