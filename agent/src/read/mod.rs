//! The read path: walk a snapshot's trees depth-first and read file content.
//! A file's content is read in spans (nearby blobs of a pack with one
//! request), several ahead, so storage latency overlaps decryption; small
//! files are read ahead of the walk, many per request ([`prefetch`]).

pub mod prefetch;
pub mod write;

use crate::repo::index::BlobLocation;
use crate::repo::pack::BlobType;
use crate::repo::span;
use crate::repo::tree::{Node, Tree};
use crate::repo::{Id, RepoError, Repository};
use futures::StreamExt;
use std::sync::Arc;

/// Spans read ahead of the one being consumed (each at most
/// [`span::MAX_SPAN`] bytes).
const READ_AHEAD: usize = 2;

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
/// directories leading to them). An entry whose name no file can have (or
/// that could leave the target: `..`, a `/`) or that repeats an earlier
/// name in its directory is passed over and listed in
/// [`Walker::skipped`], with everything below it: one bad entry does not
/// stop the rest, as with restic.
pub struct Walker {
    repo: Arc<Repository>,
    stack: Vec<(String, std::vec::IntoIter<Node>)>,
    include: Vec<String>,
    skipped: Vec<String>,
}

/// What is wrong with an entry name, if anything: empty, `.`, `..`, a `/`
/// or a NUL byte. Such a name could escape a restore target or cannot
/// exist in any file system.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == "." || name == ".." {
        Some("a name that would leave its directory")
    } else if name.contains('/') {
        Some("a name with a '/' (it could escape the restore target)")
    } else if name.contains('\0') {
        Some("a name with a NUL byte, which no file can have")
    } else {
        None
    }
}

/// The nodes of `tree` that can be restored, and a line for each that
/// cannot (an invalid name, or a name already used in the directory).
fn usable_nodes(tree: Tree, dir: &str, skipped: &mut Vec<String>) -> Vec<Node> {
    let mut seen = std::collections::HashSet::new();
    let mut nodes = Vec::with_capacity(tree.nodes.len());
    for n in tree.nodes {
        let problem = name_problem(&n.name).or_else(|| {
            (!seen.insert(n.name.clone())).then_some("a second entry of the same name")
        });
        match problem {
            Some(p) => skipped.push(format!(
                "{}: {p}; not restored{}",
                crate::util::escaped(&format!("{dir}/{}", n.name)),
                if n.kind == "dir" {
                    " (nor anything below it)"
                } else {
                    ""
                }
            )),
            None => nodes.push(n),
        }
    }
    nodes
}

impl Walker {
    /// Start at the snapshot's root tree. `include` holds absolute paths; an
    /// empty list selects everything.
    pub async fn new(
        repo: Arc<Repository>,
        root: Id,
        include: Vec<String>,
    ) -> Result<Self, RepoError> {
        let tree = repo.load_tree(&root).await?;
        let mut skipped = Vec::new();
        let nodes = usable_nodes(tree, "", &mut skipped);
        let include = include
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect();
        Ok(Walker {
            repo,
            stack: vec![(String::new(), nodes.into_iter())],
            include,
            skipped,
        })
    }

    /// Entries passed over, each with why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
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
                    what: format!("directory {}", crate::util::escaped(&path)),
                    reason: "has no subtree".into(),
                })?;
                let tree = self.repo.load_tree(&subtree).await.map_err(|e| match e {
                    // Damage names the directory it takes away.
                    RepoError::Corrupt { .. } | RepoError::BlobNotFound(_) => RepoError::Corrupt {
                        what: format!("directory {}", crate::util::escaped(&path)),
                        reason: e.to_string(),
                    },
                    other => other,
                })?;
                let nodes = usable_nodes(tree, &path, &mut self.skipped);
                self.stack.push((path.clone(), nodes.into_iter()));
            }
            return Ok(Some(WalkEntry { path, node }));
        }
    }
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
        Self::over(futures::stream::empty().boxed())
    }

    /// A reader over the blobs `content`.
    pub fn new(repo: Arc<Repository>, content: Vec<Id>) -> Self {
        let runs = repo.with_index(|i| span::runs(&content, |id| i.get(id, BlobType::Data)));
        // The same blob again and again (a sparse file's zeros) is read
        // once and handed out as often as the content repeats it.
        let mut repeated: Vec<(span::Run, usize)> = Vec::new();
        for run in runs {
            match repeated.last_mut() {
                Some((prev, times)) if run.len() == 1 && prev.len() == 1 && prev[0] == run[0] => {
                    *times += 1
                }
                _ => repeated.push((run, 1)),
            }
        }
        let stream = futures::stream::iter(repeated)
            .map(move |(run, times)| {
                let repo = Arc::clone(&repo);
                async move { (load_run(&repo, run).await, times) }
            })
            .buffered(READ_AHEAD)
            .flat_map(|(mut blobs, times)| {
                if times == 1 {
                    return futures::stream::iter(blobs).boxed();
                }
                match blobs.pop() {
                    // Copied as the reader takes them, not all at once.
                    Some(Ok(blob)) => {
                        futures::stream::iter(std::iter::repeat_n(blob, times).map(Ok)).boxed()
                    }
                    other => futures::stream::iter(other).boxed(),
                }
            })
            .boxed();
        Self::over(stream)
    }

    /// A reader over blobs already read (by [`prefetch::Prefetch`]), or,
    /// if they could not be (`None`), over `content` read as by
    /// [`ContentReader::new`].
    pub fn prefetched(
        repo: Arc<Repository>,
        content: Vec<Id>,
        ready: tokio::sync::oneshot::Receiver<Option<Vec<Vec<u8>>>>,
    ) -> Self {
        let stream = futures::stream::once(async move {
            match ready.await {
                Ok(Some(blobs)) => futures::stream::iter(blobs.into_iter().map(Ok)).boxed(),
                // Not read ahead (a failure, damage): read as any file,
                // which reports what is wrong.
                _ => Self::new(repo, content).stream,
            }
        })
        .flatten()
        .boxed();
        Self::over(stream)
    }

    fn over(stream: futures::stream::BoxStream<'static, Result<Vec<u8>, RepoError>>) -> Self {
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

    /// The next `max` bytes, or fewer at the end: reads across blobs
    /// until it has them.
    pub async fn read_up_to(&mut self, max: usize) -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::new();
        while out.len() < max {
            let piece = self.read(max - out.len()).await?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
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

/// Read one run of a file's blobs (see [`span::runs`]) with one request;
/// the blobs in content order. Reading stops at the first error, so one
/// error stands for the rest of the run.
async fn load_run(repo: &Repository, run: span::Run) -> Vec<Result<Vec<u8>, RepoError>> {
    let located: Vec<(Id, BlobLocation)> = run
        .iter()
        .filter_map(|(id, l)| Some((*id, (*l)?)))
        .collect();
    if located.len() < run.len() {
        return vec![Err(RepoError::BlobNotFound(run[0].0))];
    }
    let mut out = Vec::with_capacity(run.len());
    for s in span::plan(located) {
        match repo.load_span(&s).await {
            Ok(blobs) => {
                for (_, blob) in blobs {
                    let failed = blob.is_err();
                    out.push(blob);
                    if failed {
                        return out;
                    }
                }
            }
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
    out
}
