//! The parent snapshot, for telling unchanged files apart: a file whose
//! node matches the parent's (size, times, inode) is stored by reference
//! to the parent's content instead of being read again.

use crate::repo::tree::{Node, Tree};
use crate::repo::{Id, RepoError, Repository};
use std::sync::Arc;

/// The parent snapshot's trees along the current path, for unchanged-file
/// detection without reloading trees for every file.
pub struct ParentTrees {
    root: Id,
    /// (directory path, its tree), from the root down.
    chain: Vec<(String, Arc<Tree>)>,
}

impl ParentTrees {
    /// Look back into the parent snapshot whose root tree is `root`.
    pub fn new(root: Id) -> ParentTrees {
        ParentTrees {
            root,
            chain: Vec::new(),
        }
    }

    /// The parent's node at `path`, if it has one.
    pub async fn lookup(
        &mut self,
        repo: &Repository,
        path: &str,
    ) -> Result<Option<Node>, RepoError> {
        let Some((dir, name)) = path.rsplit_once('/') else {
            return Ok(None);
        };
        // Keep the part of the chain that leads to `dir`.
        self.chain
            .retain(|(p, _)| p.is_empty() || dir == p || dir.starts_with(&format!("{p}/")));
        if self.chain.is_empty() {
            let root = repo.load_tree(&self.root).await?;
            self.chain.push((String::new(), Arc::new(root)));
        }
        while self.chain.last().map(|(p, _)| p.as_str()) != Some(dir) {
            let (p, tree) = self.chain.last().expect("root is in the chain");
            let rest = dir[p.len()..].trim_start_matches('/');
            let next = rest.split('/').next().unwrap_or_default();
            let Some(sub) = tree
                .nodes
                .iter()
                .find(|n| n.name == next && n.kind == "dir")
                .and_then(|n| n.subtree)
            else {
                return Ok(None);
            };
            let sub_path = format!("{p}/{next}");
            let tree = repo.load_tree(&sub).await?;
            self.chain.push((sub_path, Arc::new(tree)));
        }
        let (_, tree) = self.chain.last().expect("dir is in the chain");
        Ok(tree.nodes.iter().find(|n| n.name == name).cloned())
    }
}
