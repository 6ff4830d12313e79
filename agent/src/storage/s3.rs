//! A repository in an S3 bucket, laid out as restic's S3 backend lays it out
//! (`<root>/config`, `<root>/keys/<id>`, `<root>/data/<xx>/<id>`, ...), so
//! `restic -r s3:<endpoint>/<bucket>/<root>` reads it.
//!
//! Retries (exponential backoff with jitter on throttling, 5xx, timeouts and
//! dropped connections), bounded in attempts and time, come from the AWS
//! SDK's standard retry strategy; this module bounds concurrency, splits large
//! uploads into parts, sends a SHA-256 checksum with every upload so the
//! server rejects a corrupted body, and turns SDK errors into messages that
//! name region, bucket and object and never carry a secret.

use super::{Backend, FileType, StorageError};
use crate::config::RegionConfig;
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

mod credentials;
mod errors;
mod retries;

use credentials::credentials;
#[cfg(test)]
use credentials::read_credentials_file;
use errors::*;
use retries::CountRetries;

/// An S3 bucket (and key prefix) holding one repository.
pub struct S3Backend {
    client: aws_sdk_s3::Client,
    region: String,
    endpoint: String,
    bucket: String,
    /// The repository's root inside the bucket, without a trailing slash.
    root: String,
    requests: Arc<Semaphore>,
    /// The size of `requests` (the region's `concurrency`).
    connections: usize,
    multipart_threshold: u64,
    part_size: u64,
    max_attempts: u32,
    request_timeout: Duration,
    /// Secret strings that must never appear in a message.
    secrets: Vec<String>,
}

impl S3Backend {
    /// A backend for the repository at `root` (e.g. `cairn/acme`) in the
    /// region's bucket. Fails, naming the region, when its credentials are
    /// not where the config says.
    pub async fn new(region: &str, cfg: &RegionConfig, root: &str) -> Result<Self, StorageError> {
        let config_err = |message: String| StorageError::Remote {
            location: format!("region {region}"),
            name: String::new(),
            message,
        };
        let creds = credentials(cfg).map_err(config_err)?;
        let mut secrets = Vec::new();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(cfg.endpoint.clone())
            .force_path_style(cfg.path_style)
            // We send our own SHA-256 with each upload; no second checksum.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .interceptor(CountRetries)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(
                        cfg.request_timeout_secs.min(120),
                    ))
                    .operation_timeout(Duration::from_secs(cfg.request_timeout_secs))
                    .build(),
            );
        match creds {
            Some(c) => {
                secrets.push(c.secret_access_key().to_string());
                if let Some(t) = c.session_token() {
                    secrets.push(t.to_string());
                }
                builder = builder.credentials_provider(c);
            }
            None => {
                // The standard AWS chain: environment, profile, web identity,
                // container and instance metadata.
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(region.to_string()))
                    .load()
                    .await;
                if let Some(p) = shared.credentials_provider() {
                    builder = builder.credentials_provider(p);
                }
            }
        }
        let root = [cfg.prefix.trim_matches('/'), root.trim_matches('/')]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        Ok(S3Backend {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            region: region.to_string(),
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            bucket: cfg.bucket.clone(),
            root,
            requests: Arc::new(Semaphore::new(cfg.concurrency)),
            connections: cfg.concurrency,
            multipart_threshold: cfg.multipart_threshold_mib << 20,
            part_size: cfg.part_size_mib << 20,
            max_attempts: cfg.max_attempts,
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            secrets,
        })
    }

    /// The region this backend was declared in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full object key of a repository file.
    pub fn key(&self, t: FileType, name: &str) -> String {
        self.full(&super::layout::path(t, name))
    }

    /// The full key of `rel` under the repository root.
    pub fn root_key(&self, rel: &str) -> String {
        self.full(rel)
    }

    /// Store an object under its full key.
    pub async fn put_key(&self, key: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let sha256 = Sha256::digest(&data).into();
        self.put_single(key, Bytes::from(data), &sha256).await
    }

    /// Whether an object exists.
    pub async fn exists_key(&self, key: &str) -> Result<bool, StorageError> {
        let _permit = self.requests.acquire().await;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.error(key, "HeadObject", e) {
                StorageError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    fn full(&self, rel: &str) -> String {
        if self.root.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.root)
        }
    }

    /// The SDK client (for the object-store host, which signs an
    /// adapter's requests to a granted bucket with it).
    pub(crate) fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Objects at least this large are written in parts of
    /// [`S3Backend::part_size`].
    pub(crate) fn multipart_threshold(&self) -> u64 {
        self.multipart_threshold
    }

    /// The size of each part of a multipart upload.
    pub(crate) fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The region's `concurrency`: requests in flight at once.
    pub(crate) fn concurrency(&self) -> usize {
        self.connections
    }

    /// A key from a listing made with `encoding-type=url`, decoded.
    pub(crate) fn listed_key(key: &str) -> String {
        url_decoded(key)
    }

    /// Turn an SDK error into a message naming region, bucket and object,
    /// with any secret removed.
    pub(crate) fn error<E>(
        &self,
        key: &str,
        op: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = match &err {
            SdkError::ServiceError(s) => s.err().code().map(str::to_string),
            _ => None,
        };
        if status == Some(404) && (key.is_empty() || code.as_deref() == Some("NoSuchBucket")) {
            return StorageError::Remote {
                location: self.location(),
                name: key.to_string(),
                message: format!("{op} failed: bucket {} does not exist", self.bucket),
            };
        }
        let not_found = status == Some(404) && code.as_deref() != Some("NoSuchUpload");
        let reason = match &err {
            SdkError::ServiceError(s) => {
                let e = s.err();
                match (e.code(), e.message(), status) {
                    (Some(c), Some(m), _) => format!("{c}: {m}"),
                    (Some(c), None, _) => c.to_string(),
                    // A HEAD reply has no body, so no error code: say what
                    // the status means.
                    (None, _, Some(st)) => format!("HTTP {st} ({})", status_meaning(st)),
                    _ => error_chain(&err),
                }
            }
            SdkError::TimeoutError(_) => format!(
                "timed out (gave up after at most {} attempts)",
                self.max_attempts
            ),
            SdkError::DispatchFailure(_) => format!(
                "cannot reach {} ({}; gave up after {} attempts)",
                self.endpoint,
                error_chain(&err),
                self.max_attempts
            ),
            _ => error_chain(&err),
        };
        let mut message = format!("{op} failed: {reason}");
        for s in &self.secrets {
            if !s.is_empty() {
                message = message.replace(s.as_str(), "[redacted]");
            }
        }
        if not_found {
            StorageError::NotFound {
                location: self.location(),
                name: key.to_string(),
            }
        } else if status == Some(403) || code.as_deref() == Some("AccessDenied") {
            StorageError::Forbidden {
                location: self.location(),
                name: key.to_string(),
                message,
            }
        } else {
            StorageError::Remote {
                location: self.location(),
                name: key.to_string(),
                message,
            }
        }
    }

    /// Ask the server which region the bucket is in (HeadBucket's
    /// `x-amz-bucket-region`, else GetBucketLocation).
    pub async fn bucket_region(&self) -> Result<String, StorageError> {
        let _permit = self.requests.acquire().await;
        let head_err = match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(head) => match head.bucket_region() {
                Some(r) => return Ok(r.to_string()),
                None => None,
            },
            Err(e) => {
                // S3 names the bucket's region in a header even when it
                // refuses a request signed for another region.
                let header = e
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(str::to_string);
                if let Some(r) = header {
                    return Ok(r);
                }
                Some(self.error("", "HeadBucket", e))
            }
        };
        match self
            .client
            .get_bucket_location()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(loc) => Ok(match loc.location_constraint().map(|c| c.as_str()) {
                // S3 reports us-east-1 as an empty constraint.
                Some("") | None => "us-east-1".into(),
                Some(r) => r.to_string(),
            }),
            Err(e) => {
                // A server that only knows its own region (Garage, MinIO)
                // refuses the signature and says which scope it expected.
                let message = e.as_service_error().and_then(|s| s.message()).unwrap_or("");
                if let Some(r) = expected_scope_region(message) {
                    return Ok(r);
                }
                Err(head_err.unwrap_or_else(|| self.error("", "GetBucketLocation", e)))
            }
        }
    }

    /// Every object under `rel` (relative to the repository root, or the
    /// whole bucket with `whole_bucket`), as full keys and sizes.
    pub async fn list_keys(
        &self,
        rel: &str,
        whole_bucket: bool,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let prefix = if whole_bucket {
            rel.to_string()
        } else {
            self.full(rel)
        };
        let mut out = Vec::new();
        // Keys come URL-encoded: a key with a control character (anyone
        // who can write to the bucket can make one) cannot be sent in XML
        // as it is, and would make every listing fail.
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .into_paginator()
            .send();
        loop {
            let page = {
                let _permit = self.requests.acquire().await;
                pages.next().await
            };
            let Some(page) = page else { break };
            let page = page.map_err(|e| self.error(&prefix, "ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push((url_decoded(k), o.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }

    /// Delete an object by its full key.
    pub async fn delete_key(&self, key: &str) -> Result<(), StorageError> {
        let _permit = self.requests.acquire().await;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(key, "DeleteObject", e))?;
        Ok(())
    }

    async fn put_single(
        &self,
        key: &str,
        data: Bytes,
        sha256: &[u8; 32],
    ) -> Result<(), StorageError> {
        let sum = base64::engine::general_purpose::STANDARD.encode(sha256);
        let _permit = self.requests.acquire().await;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_sha256(sum)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error(key, "PutObject", e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let upload = {
            let _permit = self.requests.acquire().await;
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(|e| self.error(key, "CreateMultipartUpload", e))?
        };
        let Some(upload_id) = upload.upload_id().map(str::to_string) else {
            return Err(StorageError::Remote {
                location: self.location(),
                name: key.into(),
                message: "CreateMultipartUpload returned no upload id".into(),
            });
        };
        let result = self.upload_parts(key, &upload_id, &data).await;
        if result.is_err() {
            self.abort_multipart(key, &upload_id).await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: &Bytes,
    ) -> Result<(), StorageError> {
        let size = data.len() as u64;
        let parts = size.div_ceil(self.part_size);
        let uploads = (0..parts).map(|i| {
            let start = (i * self.part_size) as usize;
            let end = ((i + 1) * self.part_size).min(size) as usize;
            self.upload_part(key, upload_id, i as i32 + 1, data.slice(start..end))
        });
        let done = futures::future::try_join_all(uploads).await?;
        let _permit = self.requests.acquire().await;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error(key, "CompleteMultipartUpload", e))?;
        Ok(())
    }

    /// Upload part `number` of a multipart upload, with its SHA-256; the
    /// part as CompleteMultipartUpload lists it.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
        let _permit = self.requests.acquire().await;
        let r = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_sha256(sum.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error(key, "UploadPart", e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(r.e_tag().map(str::to_string))
            .checksum_sha256(sum)
            .build())
    }

    /// Abort a failed multipart upload, so that no orphaned parts are left
    /// (they would be billed and are invisible to listings); warn if that
    /// fails too.
    pub(crate) async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let _permit = self.requests.acquire().await;
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(region = %self.region, bucket = %self.bucket, key = %crate::util::escaped(key), error = %self.error(key, "AbortMultipartUpload", e), "Parts of a failed upload are left; a bucket lifecycle rule for incomplete multipart uploads removes them.");
        }
    }

    /// Read an object (or a range of it). The SDK retries a request until
    /// the response starts; a connection dropped while the body streams is
    /// retried here, with the same bounded backoff.
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, StorageError> {
        if range.is_some_and(|(_, length)| length == 0) {
            return Ok(Vec::new());
        }
        tracing::debug!(region = %self.region, %key, ?range, "Reading an object.");
        // Counted from the first failure: waiting for a request slot and the
        // first download are not retry time.
        let mut first_failure: Option<std::time::Instant> = None;
        let mut attempt = 1;
        loop {
            match self.get_once(key, range).await {
                Ok(bytes) => return Ok(bytes),
                Err(GetError::Storage(e)) => return Err(e),
                Err(GetError::Body(message))
                    if attempt < self.max_attempts
                        && first_failure
                            .get_or_insert_with(std::time::Instant::now)
                            .elapsed()
                            < self.request_timeout =>
                {
                    tracing::debug!(region = %self.region, %key, attempt, %message, "Reading a body failed; retrying.");
                    crate::telemetry::storage_retried();
                    // The SDK's schedule: 200 ms doubling, at most 10 s,
                    // with full jitter.
                    let cap = Duration::from_millis(200 << (attempt - 1).min(6))
                        .min(Duration::from_secs(10));
                    let wait = cap.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(GetError::Body(message)) => {
                    return Err(StorageError::Remote {
                        location: self.location(),
                        name: key.into(),
                        message: format!("reading the body failed {attempt} times: {message}"),
                    });
                }
            }
        }
    }

    async fn get_once(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, GetError> {
        let _permit = self.requests.acquire().await;
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((offset, length)) = range {
            req = req.range(format!("bytes={offset}-{}", offset + length - 1));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| GetError::Storage(self.error(key, "GetObject", e)))?;
        let body = resp
            .body
            .collect()
            .await
            .map_err(|e| GetError::Body(error_chain(&e)))?;
        let bytes = body.into_bytes().to_vec();
        if let Some((offset, length)) = range
            && bytes.len() as u64 != length
        {
            return Err(GetError::Storage(StorageError::Remote {
                location: self.location(),
                name: key.into(),
                message: format!(
                    "asked for {length} bytes at {offset}, got {}: the object is shorter than the index says",
                    bytes.len()
                ),
            }));
        }
        Ok(bytes)
    }
}

/// Why one GET failed: the request (already retried by the SDK), or the
/// body stream (retried by [`S3Backend::get`]).
enum GetError {
    Storage(StorageError),
    Body(String),
}

#[async_trait]
impl super::Regional for S3Backend {
    fn region(&self) -> &str {
        S3Backend::region(self)
    }

    fn bucket(&self) -> &str {
        S3Backend::bucket(self)
    }

    fn key(&self, t: FileType, name: &str) -> String {
        S3Backend::key(self, t, name)
    }

    fn root_key(&self, rel: &str) -> String {
        S3Backend::root_key(self, rel)
    }

    async fn put_key(&self, key: &str, data: Vec<u8>) -> Result<(), StorageError> {
        S3Backend::put_key(self, key, data).await
    }

    async fn exists_key(&self, key: &str) -> Result<bool, StorageError> {
        S3Backend::exists_key(self, key).await
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn connections(&self) -> usize {
        self.connections
    }

    fn location(&self) -> String {
        format!(
            "s3:{}/{}/{} (region {})",
            self.endpoint, self.bucket, self.root, self.region
        )
    }

    async fn create(&self) -> Result<(), StorageError> {
        // S3 has no folders; make sure the bucket is there and answers.
        let _permit = self.requests.acquire().await;
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| match self.error("", "HeadBucket", e) {
                StorageError::NotFound { location, .. } => StorageError::Remote {
                    location,
                    name: String::new(),
                    message: format!("bucket {} does not exist", self.bucket),
                },
                other => other,
            })?;
        Ok(())
    }

    async fn save(&self, t: FileType, name: &str, data: Bytes) -> Result<(), StorageError> {
        let key = self.key(t, name);
        if data.len() as u64 >= self.multipart_threshold {
            self.put_multipart(&key, data).await
        } else {
            let sha256 = super::content_sha256(t, name, &data);
            self.put_single(&key, data, &sha256).await
        }
    }

    async fn load(&self, t: FileType, name: &str) -> Result<Vec<u8>, StorageError> {
        self.get(&self.key(t, name), None).await
    }

    async fn load_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.get(&self.key(t, name), Some((offset, length))).await
    }

    async fn size(&self, t: FileType, name: &str) -> Result<u64, StorageError> {
        let key = self.key(t, name);
        let _permit = self.requests.acquire().await;
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.error(&key, "HeadObject", e))?;
        Ok(head.content_length().unwrap_or(0).max(0) as u64)
    }

    async fn list(&self, t: FileType) -> Result<Vec<(String, u64)>, StorageError> {
        if t == FileType::Config {
            return match self.size(t, "config").await {
                Ok(n) => Ok(vec![("config".into(), n)]),
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(e),
            };
        }
        let keys = self.list_keys(&format!("{}/", t.dir()), false).await?;
        Ok(keys
            .into_iter()
            .filter_map(|(k, size)| {
                let name = k.rsplit('/').next()?.to_string();
                (!name.is_empty()).then_some((name, size))
            })
            .collect())
    }

    async fn remove(&self, t: FileType, name: &str) -> Result<(), StorageError> {
        self.delete_key(&self.key(t, name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(url_decoded("repo/locks/%01"), "repo/locks/\u{1}");
        assert_eq!(url_decoded("a+b%2Bc%20d"), "a b+c d");
        assert_eq!(url_decoded("keep%zz%4"), "keep%zz%4");
        assert_eq!(url_decoded("%C3%BC/ü"), "ü/ü");
    }

    #[test]
    fn the_expected_region_is_read_from_a_scope_complaint() {
        let m = "Authorization header malformed, unexpected scope: '20261124/eu-north-1/s3/aws4_request', expected: '20261124/eu-west-1/s3/aws4_request'";
        assert_eq!(expected_scope_region(m).as_deref(), Some("eu-west-1"));
        assert_eq!(expected_scope_region("Access Denied"), None);
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[profile eu]\naws_access_key_id=C\naws_secret_access_key=D\n",
        )
        .unwrap();
        let c = read_credentials_file(&f, "eu").unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key()), ("C", "D"));
        let c = read_credentials_file(&f, "default").unwrap();
        assert_eq!(c.access_key_id(), "A");
        let e = read_credentials_file(&f, "us").unwrap_err();
        assert!(e.contains("profile us"), "{e}");
    }
}
