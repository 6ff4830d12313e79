//! The `object-store` interface (WIT 0.4.0): the buckets a job grants.
//! The adapter names a grant and whole keys; the host checks both against
//! the grant, signs every request (the adapter never sees a credential),
//! and moves every object byte natively: a GET body is cut into chunks
//! straight into the backup's pipeline, and a snapshot entry's content is
//! PUT (in parts above the grant's multipart threshold), several objects
//! at once. Also the `parent` interface: an entry of the backup's parent
//! snapshot, opened for reading.

use super::*;
use crate::config::BucketGrant;
use crate::storage::StorageError;
use crate::storage::s3::S3Backend;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use wit_os::object_store::{
    BucketGrant as WitGrant, Fetch, ObjectHead, ObjectSummary, Page, Store,
};

use super::super::bindings_0_4::cairn::adapter0_4_0 as wit_os;

/// Objects in flight at once when the adapter asks for the default.
const DEFAULT_CONCURRENCY: usize = 8;
/// The most objects in flight at once, whatever the adapter asks.
const MAX_CONCURRENCY: usize = 64;
/// Attempts at a GET whose body broke off while it streamed (the SDK
/// retries only until a response starts).
const BODY_ATTEMPTS: u32 = 3;

/// The S3 clients of a job's bucket grants, made on first use.
#[derive(Default)]
pub struct Buckets {
    clients: std::collections::HashMap<String, Arc<S3Backend>>,
}

/// Why one object was not fetched.
enum FetchError {
    /// The adapter's business (changed, gone, refused, unreadable).
    Object(AdapterError),
    /// The pipeline stopped: the backup cannot go on.
    Stopped(RepoError),
}

/// Objects in flight: what the adapter asks (0: the default), never more
/// than the grant's `concurrency` nor [`MAX_CONCURRENCY`].
fn effective_concurrency(asked: u32, grant: usize) -> usize {
    match asked as usize {
        0 => DEFAULT_CONCURRENCY,
        n => n,
    }
    .min(grant.max(1))
    .min(MAX_CONCURRENCY)
}

/// The indices of the objects to start (those not refused), the largest
/// first: a call returns once its last object is done, so a large object
/// started late would keep it waiting while every other slot stands idle.
fn largest_first<T>(
    tasks: &[Result<Option<T>, AdapterError>],
    size: impl Fn(usize) -> u64,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i].is_ok()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    order
}

/// Spawned per-object tasks, aborted if the call ends before it has taken
/// every result (a trap, a timeout, the job cancelled): no GET or PUT goes
/// on behind a failed call.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn timestamp(t: &aws_sdk_s3::primitives::DateTime) -> types::Timestamp {
    types::Timestamp {
        seconds: t.secs(),
        nanoseconds: t.subsec_nanos(),
    }
}

/// An S3 error as the adapter's error: a missing object is `not-found`, a
/// refusal `denied`, anything else `io`; the message names bucket and key
/// and holds no secret.
fn s3_error<E>(s3: &S3Backend, key: &str, op: &str, err: SdkError<E, HttpResponse>) -> AdapterError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    if status == Some(412) {
        // A GET's If-Match failed: the object changed; a write's
        // If-None-Match failed: the key exists now.
        return if op == "GetObject" {
            AdapterError::NotFound(format!(
                "{key}: changed since it was listed (its ETag no longer matches)"
            ))
        } else {
            AdapterError::Denied(format!(
                "{key}: the bucket already has this key; not overwritten"
            ))
        };
    }
    adapter_error(s3.error(key, op, err))
}

/// A storage error as the adapter's: a missing object is `not-found`, a
/// refusal `denied`, anything else `io`.
fn adapter_error(e: StorageError) -> AdapterError {
    match e {
        e @ StorageError::NotFound { .. } => AdapterError::NotFound(e.to_string()),
        e @ StorageError::Forbidden { .. } => AdapterError::Denied(e.to_string()),
        e => AdapterError::Io(e.to_string()),
    }
}

impl HostState {
    /// The grant named `name` and its client (made on first use), or why
    /// not: a grant the job does not have, or a write to a read-only one,
    /// is refused and logged; credentials that cannot be read are named.
    async fn granted_bucket(
        &mut self,
        name: &str,
        write: bool,
    ) -> Result<(BucketGrant, Arc<S3Backend>), AdapterError> {
        let Some(grant) = self.grants.buckets().get(name).cloned() else {
            tracing::warn!(adapter = %self.adapter, grant = %crate::util::escaped(name), "Object-store request refused: the job grants no bucket of that name.");
            let granted: Vec<_> = self.grants.buckets().keys().cloned().collect();
            return Err(AdapterError::Denied(format!(
                "bucket grant {name}: this job does not grant it (granted: {})",
                if granted.is_empty() {
                    "none".into()
                } else {
                    granted.join(", ")
                }
            )));
        };
        if write && !grant.write {
            tracing::warn!(adapter = %self.adapter, grant = %name, bucket = %grant.s3.bucket, "Object-store write refused: the grant is read-only.");
            return Err(AdapterError::Denied(format!(
                "bucket grant {name} (bucket {}): this job grants read-only access; set write = true to restore into it",
                grant.s3.bucket
            )));
        }
        if let Some(c) = self.buckets.clients.get(name) {
            return Ok((grant, Arc::clone(c)));
        }
        let client = S3Backend::new(&grant.region, &grant.s3, "")
            .await
            .map(Arc::new)
            .map_err(|e| AdapterError::Io(format!("bucket grant {name}: {e}")))?;
        self.buckets
            .clients
            .insert(name.to_string(), Arc::clone(&client));
        Ok((grant, client))
    }

    /// Refuse (and log) a key outside the grant's prefix.
    fn inside(&self, name: &str, grant: &BucketGrant, key: &str) -> Result<(), AdapterError> {
        if key.starts_with(&grant.s3.prefix) && !key.is_empty() {
            return Ok(());
        }
        tracing::warn!(adapter = %self.adapter, grant = %name, bucket = %grant.s3.bucket, key = %crate::util::escaped(key), "Object-store request refused: the key is outside the grant's prefix.");
        Err(AdapterError::Denied(format!(
            "{}: outside bucket grant {name} (bucket {}, prefix {:?})",
            crate::util::escaped(key),
            grant.s3.bucket,
            grant.s3.prefix
        )))
    }
}

/// The headers of a GET or HEAD reply.
macro_rules! head_of {
    ($out:expr) => {{
        let out = &$out;
        let mut user_metadata: Vec<(String, String)> = out
            .metadata()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        user_metadata.sort();
        ObjectHead {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().unwrap_or_default().to_string(),
            last_modified: out.last_modified().map(timestamp),
            content_type: out.content_type().map(str::to_string),
            content_encoding: out.content_encoding().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            content_disposition: out.content_disposition().map(str::to_string),
            content_language: out.content_language().map(str::to_string),
            expires: out.expires_string().map(str::to_string),
            user_metadata,
        }
    }};
}

/// GET one object into chunks queued on the pipeline: its headers, the
/// chunks' pending ids and its size.
async fn fetch_one(
    s3: Arc<S3Backend>,
    key: String,
    if_match: Option<String>,
    params: ChunkerParams,
    sender: crate::pipeline::DataSender,
) -> Result<(ObjectHead, Vec<PendingId>, u64), FetchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = s3.client().get_object().bucket(s3.bucket()).key(&key);
        if let Some(m) = &if_match {
            req = req.if_match(m);
        }
        let out = req
            .send()
            .await
            .map_err(|e| FetchError::Object(s3_error(&s3, &key, "GetObject", e)))?;
        let head = head_of!(out);
        // A server that ignores If-Match must not slip a newer object in.
        if let Some(m) = &if_match
            && head.etag != *m
        {
            return Err(FetchError::Object(AdapterError::NotFound(format!(
                "{}: changed since it was listed (ETag {} now, {m} listed)",
                crate::util::escaped(&key),
                head.etag
            ))));
        }
        let mut body = out.body;
        let mut chunker = Chunker::new(params.clone());
        let mut pending = Vec::new();
        let mut size = 0u64;
        let broke = loop {
            match body.try_next().await {
                Ok(Some(bytes)) => {
                    size += bytes.len() as u64;
                    for c in chunker.push(&bytes) {
                        pending.push(sender.add(c).await.map_err(FetchError::Stopped)?);
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        match broke {
            None => {
                if let Some(last) = chunker.finish() {
                    pending.push(sender.add(last).await.map_err(FetchError::Stopped)?);
                }
                if size != head.size {
                    return Err(FetchError::Object(AdapterError::Io(format!(
                        "{}: the server sent {size} bytes of {}",
                        crate::util::escaped(&key),
                        head.size
                    ))));
                }
                return Ok((head, pending, size));
            }
            // Chunks already queued stay stored, unreferenced.
            Some(e) if attempt < BODY_ATTEMPTS => {
                tracing::warn!(key = %crate::util::escaped(&key), error = %e, "Object body broke off; reading it again.");
            }
            Some(e) => {
                return Err(FetchError::Object(AdapterError::Io(format!(
                    "{}: reading the object failed after {attempt} attempts: {e}",
                    crate::util::escaped(&key)
                ))));
            }
        }
    }
}

/// Why one object was not stored.
enum StoreError {
    Object(AdapterError),
    Repo(RepoError),
}

/// Set an object's headers on a PutObject or CreateMultipartUpload
/// request (two builder types with the same setters).
macro_rules! with_headers {
    ($req:expr, $head:expr) => {{
        let head: &ObjectHead = $head;
        let expires = head.expires.as_deref().and_then(|s| {
            aws_sdk_s3::primitives::DateTime::from_str(
                s,
                aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
            )
            .ok()
        });
        let metadata: std::collections::HashMap<String, String> =
            head.user_metadata.iter().cloned().collect();
        $req.set_content_type(head.content_type.clone())
            .set_content_encoding(head.content_encoding.clone())
            .set_cache_control(head.cache_control.clone())
            .set_content_disposition(head.content_disposition.clone())
            .set_content_language(head.content_language.clone())
            .set_expires(expires)
            .set_metadata((!metadata.is_empty()).then_some(metadata))
    }};
}

/// PUT one snapshot file as an object with `head`'s headers: in one
/// request below the grant's multipart threshold, else in parts.
async fn store_one(
    s3: Arc<S3Backend>,
    repo: Arc<Repository>,
    node: Node,
    key: String,
    head: ObjectHead,
    overwrite: bool,
) -> Result<u64, StoreError> {
    let obj = StoreError::Object;
    let size = node.size;
    if !overwrite {
        match s3
            .client()
            .head_object()
            .bucket(s3.bucket())
            .key(&key)
            .send()
            .await
        {
            // The same object already there (a restore run again after an
            // interruption): nothing to write.
            Ok(there)
                if there.content_length() == Some(size as i64)
                    && there.e_tag() == Some(head.etag.as_str()) =>
            {
                return Ok(size);
            }
            Ok(_) => {
                return Err(obj(AdapterError::Denied(format!(
                    "{}: the bucket already has this key; not overwritten (set overwrite to replace it)",
                    crate::util::escaped(&key)
                ))));
            }
            Err(e) => match s3_error(&s3, &key, "HeadObject", e) {
                AdapterError::NotFound(_) => {}
                other => return Err(obj(other)),
            },
        }
    }
    let mut reader = ContentReader::new(repo, node.content.clone().unwrap_or_default());
    if size < s3.multipart_threshold() {
        let data = reader
            .read_up_to(size as usize + 1)
            .await
            .map_err(StoreError::Repo)?;
        if data.len() as u64 != size {
            return Err(obj(AdapterError::Corrupt(format!(
                "{}: the snapshot holds {} bytes, its entry says {size}",
                crate::util::escaped(&key),
                data.len()
            ))));
        }
        let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data));
        let req = s3
            .client()
            .put_object()
            .bucket(s3.bucket())
            .key(&key)
            .checksum_sha256(sum)
            .body(ByteStream::from(data));
        let mut req = with_headers!(req, &head);
        if !overwrite {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map_err(|e| obj(s3_error(&s3, &key, "PutObject", e)))?;
        return Ok(size);
    }
    let req = s3
        .client()
        .create_multipart_upload()
        .bucket(s3.bucket())
        .key(&key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256);
    let upload = with_headers!(req, &head)
        .send()
        .await
        .map_err(|e| obj(s3_error(&s3, &key, "CreateMultipartUpload", e)))?;
    let Some(upload_id) = upload.upload_id().map(str::to_string) else {
        return Err(obj(AdapterError::Io(format!(
            "{}: CreateMultipartUpload returned no upload id",
            crate::util::escaped(&key)
        ))));
    };
    let result = upload_parts(&s3, &mut reader, &key, &upload_id, size, overwrite).await;
    if result.is_err() {
        s3.abort_multipart(&key, &upload_id).await;
    }
    result
}

/// The parts of a multipart upload, read one at a time from the snapshot
/// (memory: one part), then completed.
async fn upload_parts(
    s3: &S3Backend,
    reader: &mut ContentReader,
    key: &str,
    upload_id: &str,
    size: u64,
    overwrite: bool,
) -> Result<u64, StoreError> {
    let mut parts = Vec::new();
    let mut written = 0u64;
    // S3 takes at most 10,000 parts: larger objects take larger parts.
    let part_size = s3
        .part_size()
        .max(size.div_ceil(10_000).div_ceil(1 << 20) << 20);
    loop {
        let body = reader
            .read_up_to(part_size as usize)
            .await
            .map_err(StoreError::Repo)?;
        if body.is_empty() && !parts.is_empty() {
            break;
        }
        let last = (body.len() as u64) < part_size;
        written += body.len() as u64;
        let number = parts.len() as i32 + 1;
        parts.push(
            s3.upload_part(key, upload_id, number, body.into())
                .await
                .map_err(|e| StoreError::Object(adapter_error(e)))?,
        );
        if last {
            break;
        }
    }
    if written != size {
        return Err(StoreError::Object(AdapterError::Corrupt(format!(
            "{}: the snapshot holds {written} bytes, its entry says {size}",
            crate::util::escaped(key)
        ))));
    }
    let mut req = s3
        .client()
        .complete_multipart_upload()
        .bucket(s3.bucket())
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    if !overwrite {
        req = req.if_none_match("*");
    }
    req.send()
        .await
        .map_err(|e| StoreError::Object(s3_error(s3, key, "CompleteMultipartUpload", e)))?;
    Ok(written)
}

impl wit_os::object_store::Host for HostState {
    async fn granted_buckets(&mut self) -> wasmtime::Result<Vec<WitGrant>> {
        Ok(self
            .grants
            .buckets()
            .iter()
            .map(|(name, g)| WitGrant {
                name: name.clone(),
                endpoint: g.s3.endpoint.clone(),
                region: g.region.clone(),
                bucket: g.s3.bucket.clone(),
                prefix: g.s3.prefix.clone(),
                writable: g.write,
            })
            .collect())
    }

    async fn list_objects(
        &mut self,
        grant: String,
        prefix: String,
        after: Option<String>,
    ) -> HostResult<Page> {
        let (g, s3) = match self.granted_bucket(&grant, false).await {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let prefix = if prefix.is_empty() {
            g.s3.prefix.clone()
        } else {
            prefix
        };
        if !prefix.starts_with(&g.s3.prefix) {
            tracing::warn!(adapter = %self.adapter, grant = %grant, bucket = %g.s3.bucket, prefix = %crate::util::escaped(&prefix), "Object-store listing refused: outside the grant's prefix.");
            return Ok(Err(AdapterError::Denied(format!(
                "listing {}: outside bucket grant {grant} (bucket {}, prefix {:?})",
                crate::util::escaped(&prefix),
                g.s3.bucket,
                g.s3.prefix
            ))));
        }
        let page = s3
            .client()
            .list_objects_v2()
            .bucket(&g.s3.bucket)
            .prefix(&prefix)
            // Keys with control characters cannot travel in XML as they are.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .set_continuation_token(after.clone())
            .max_keys(1000)
            .send()
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => return Ok(Err(s3_error(&s3, &prefix, "ListObjectsV2", e))),
        };
        // Decoded only when the server did encode (one that ignores the
        // request sends keys as they are).
        let encoded = page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
        let objects = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectSummary {
                    key: if encoded {
                        S3Backend::listed_key(o.key()?)
                    } else {
                        o.key()?.to_string()
                    },
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    last_modified: o.last_modified().map(timestamp),
                })
            })
            .collect();
        let next = match page.is_truncated() {
            Some(true) => match page.next_continuation_token() {
                Some(t) if after.as_deref() != Some(t) => Some(t.to_string()),
                // A truncated page with no way on must not pass for the end.
                _ => {
                    return Ok(Err(AdapterError::Io(format!(
                        "listing bucket {} prefix {prefix:?}: the server says there is more but gives no (new) continuation token",
                        g.s3.bucket
                    ))));
                }
            },
            _ => None,
        };
        Ok(Ok(Page { objects, next }))
    }

    async fn head(&mut self, grant: String, key: String) -> HostResult<ObjectHead> {
        let (g, s3) = match self.granted_bucket(&grant, false).await {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self.inside(&grant, &g, &key) {
            return Ok(Err(e));
        }
        match s3
            .client()
            .head_object()
            .bucket(&g.s3.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => Ok(Ok(head_of!(out))),
            Err(e) => Ok(Err(s3_error(&s3, &key, "HeadObject", e))),
        }
    }

    async fn fetch_objects(
        &mut self,
        grant: String,
        objects: Vec<Fetch>,
        concurrency: u32,
    ) -> wasmtime::Result<Vec<Result<ObjectHead, AdapterError>>> {
        self.backup()?;
        let all = |e: AdapterError, n: usize| (0..n).map(|_| Err(e.clone())).collect();
        let (g, s3) = match self.granted_bucket(&grant, false).await {
            Ok(x) => x,
            Err(e) => return Ok(all(e, objects.len())),
        };
        let job = self.backup()?;
        if let Some(open) = &job.writer_open {
            let e =
                AdapterError::Other(format!("cannot fetch objects: entry {open} is still open"));
            return Ok(all(e, objects.len()));
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(effective_concurrency(
            concurrency,
            s3.concurrency(),
        )));
        let sender = job.pipeline.data_sender();
        let params = job.params.clone();
        let mut tasks: Vec<Result<_, AdapterError>> = Vec::with_capacity(objects.len());
        for o in &objects {
            let refused = self
                .inside(&grant, &g, &o.key)
                .err()
                .or_else(|| archive::invalid_entry(&o.path).map(AdapterError::Other));
            tasks.push(refused.map_or(Ok(None), Err));
        }
        // Every object starts now, the largest first (each waits for a
        // slot); the results are taken, and the entries added, in the
        // adapter's order.
        let mut guard = Tasks(Vec::with_capacity(objects.len()));
        for i in largest_first(&tasks, |i| objects[i].meta.size.unwrap_or(0)) {
            let o = &objects[i];
            let (s3, key, if_match) = (Arc::clone(&s3), o.key.clone(), o.if_match.clone());
            let (params, sender, slots) = (params.clone(), sender.clone(), Arc::clone(&slots));
            let handle = tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                fetch_one(s3, key, if_match, params, sender).await
            });
            guard.0.push(handle.abort_handle());
            tasks[i] = Ok(Some(handle));
        }
        let mut results = Vec::with_capacity(objects.len());
        for (o, task) in objects.into_iter().zip(tasks) {
            let fetched = match task {
                Err(e) => Err(FetchError::Object(e)),
                Ok(handle) => handle
                    .expect("every object not refused was started")
                    .await
                    .map_err(fault)?,
            };
            let (head, pending, size) = match fetched {
                Ok(x) => x,
                Err(FetchError::Object(e)) => {
                    // Left out whatever the adapter does with the result:
                    // the snapshot is then incomplete, never whole-looking.
                    self.backup()?.refuse(
                        &o.path,
                        format!("object {:?}: {}", o.key, meta::describe_error(&e)),
                    );
                    results.push(Err(e));
                    continue;
                }
                Err(FetchError::Stopped(e)) => return Err(fault(e)),
            };
            let job = self.backup()?;
            let mut node = meta::node_from(EntryKind::File, &o.meta);
            node.content = Some(Vec::new());
            node.size = size;
            match job.add_pending_node(&o.path, node, pending).await? {
                Ok(()) => {
                    job.files += 1;
                    results.push(Ok(head));
                }
                Err(e) => {
                    job.refuse(&o.path, meta::describe_error(&e));
                    results.push(Err(e));
                }
            }
        }
        drop(guard);
        Ok(results)
    }

    async fn store_objects(
        &mut self,
        grant: String,
        objects: Vec<Store>,
        concurrency: u32,
        overwrite: bool,
    ) -> wasmtime::Result<Vec<Result<u64, AdapterError>>> {
        self.check_restore_fault()?;
        // `cairn restore --overwrite always` replaces objects too.
        let overwrite = overwrite || self.restore()?.overwrite;
        let all = |e: AdapterError, n: usize| (0..n).map(|_| Err(e.clone())).collect();
        let (g, s3) = match self.granted_bucket(&grant, true).await {
            Ok(x) => x,
            Err(e) => return Ok(all(e, objects.len())),
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(effective_concurrency(
            concurrency,
            s3.concurrency(),
        )));
        let mut tasks: Vec<Result<_, AdapterError>> = Vec::with_capacity(objects.len());
        for o in &objects {
            tasks.push(self.inside(&grant, &g, &o.key).map(|()| None));
        }
        // Every object starts now, the largest first by the size the
        // adapter passes (each waits for a slot); the results are taken in
        // the adapter's order. Each is looked up in the snapshot just
        // before it starts, one at a time (a lookup parses its folder's
        // tree, which can be large), while the started ones upload.
        let mut guard = Tasks(Vec::with_capacity(tasks.len()));
        let order = largest_first(&tasks, |i| objects[i].head.size);
        let mut objects: Vec<Option<Store>> = objects.into_iter().map(Some).collect();
        for i in order {
            let o = objects[i].take().expect("started once");
            let job = self.restore()?;
            let node = match crate::read::lookup(&job.repo, job.root, &o.path).await {
                Ok(Some(n)) if n.kind == "file" => n,
                Ok(_) => {
                    tasks[i] = Err(AdapterError::NotFound(format!(
                        "{}: no such file in the snapshot",
                        crate::util::escaped(&o.path)
                    )));
                    continue;
                }
                Err(e) => {
                    tasks[i] = Err(self.restore_error(e)?);
                    continue;
                }
            };
            let job = self.restore()?;
            let (s3, repo, slots) = (Arc::clone(&s3), Arc::clone(&job.repo), Arc::clone(&slots));
            let progress = Arc::clone(&job.progress);
            tracing::debug!(grant = %grant, bucket = %g.s3.bucket, key = %crate::util::escaped(&o.key), "Restoring an object.");
            let handle = tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let r = store_one(s3, repo, node, o.key, o.head, overwrite).await;
                if let Ok(n) = &r {
                    use std::sync::atomic::Ordering::Relaxed;
                    progress.files.fetch_add(1, Relaxed);
                    progress.bytes.fetch_add(*n, Relaxed);
                }
                r
            });
            guard.0.push(handle.abort_handle());
            tasks[i] = Ok(Some(handle));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            let r = match task {
                Err(e) => Err(e),
                Ok(handle) => match handle
                    .expect("every object not refused was started")
                    .await
                    .map_err(fault)?
                {
                    Ok(n) => Ok(n),
                    Err(StoreError::Object(e)) => Err(e),
                    Err(StoreError::Repo(e)) => Err(self.restore_error(e)?),
                },
            };
            results.push(r);
        }
        drop(guard);
        Ok(results)
    }
}

impl wit_os::parent::Host for HostState {
    async fn open(&mut self, path: String) -> HostResult<Option<Resource<ReaderState>>> {
        let job = self.backup()?;
        let repo = Arc::clone(job.pipeline.repo());
        let Some(parent) = job.parent.as_mut() else {
            return Ok(Ok(None));
        };
        let node = match parent.lookup(&repo, &path).await {
            Ok(Some(n)) if n.kind == "file" => n,
            Ok(_) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(repo_error(e)?)),
        };
        let reader = ReaderState {
            reader: ContentReader::new(repo, node.content.clone().unwrap_or_default()),
            path,
            size: node.size,
            node: None,
        };
        Ok(Ok(Some(self.table.push(reader)?)))
    }
}
