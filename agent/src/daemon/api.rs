//! The REST API: JSON under `/v1/`, `/metrics` for Prometheus, `/healthz`
//! and `/readyz` for probes. Every endpoint but the two probes needs
//! `Authorization: Bearer <token>` (the token in `api-token-file`, compared
//! in constant time). Each client gets `api-rate-per-sec` requests a second
//! (bursts of twice that), a client being an IPv4 address or an IPv6 /64
//! (one host holds a whole /64); requests with the token, from all clients
//! together, get `api-rate-total-per-sec`, so many addresses do not
//! multiply the limit (and a flood without the token cannot use it up).
//! Bodies are at most 64 KiB. Errors are
//! `{"error": {"code": "...", "message": "..."}}` with codes that do not
//! change; docs/openapi.json lists them, and is served at
//! `/v1/openapi.json`.

use super::{Agent, RestoreSpec, Target, TriggerError};
use crate::util::lock;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The committed OpenAPI document.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");
/// Largest request body.
const BODY_LIMIT: usize = 64 * 1024;

/// An error as the API returns it.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let (status, code) = match &e {
            TriggerError::NotFound(m) if m.starts_with("tenant") => {
                (StatusCode::NOT_FOUND, "tenant_not_found")
            }
            TriggerError::NotFound(m) if m.starts_with("group") => {
                (StatusCode::NOT_FOUND, "group_not_found")
            }
            TriggerError::NotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            TriggerError::Busy(_) => (StatusCode::CONFLICT, "already_running"),
            TriggerError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            TriggerError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Token buckets per client, and one for all clients together.
#[derive(Default)]
struct Limiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    total: Mutex<Option<(f64, Instant)>>,
}

/// Refill `bucket` at `rate` a second (holding at most twice that) and
/// take a token if there is one.
fn take(bucket: &mut (f64, Instant), rate: f64, now: Instant) -> bool {
    let (tokens, last) = bucket;
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate * 2.0);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

/// The client an address belongs to: an IPv4 address, or the /64 of an
/// IPv6 one (a single host is commonly given a whole /64).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
        v4 => v4,
    }
}

impl Limiter {
    /// Whether a request from `ip` may go on, by its client's bucket.
    fn allow(&self, ip: IpAddr, rate: f64) -> bool {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() > 10_000 {
            // Forget clients that have been quiet long enough to be full.
            buckets.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let bucket = buckets.entry(client_of(ip)).or_insert((rate * 2.0, now));
        take(bucket, rate, now)
    }

    /// Whether an authenticated request may go on, by the bucket all
    /// clients share. Only requests with the token draw on it: a flood
    /// without one cannot lock the operator out.
    fn allow_total(&self, total_rate: f64) -> bool {
        let now = Instant::now();
        let mut total = lock(&self.total);
        let bucket = total.get_or_insert((total_rate * 2.0, now));
        take(bucket, total_rate, now)
    }
}

#[derive(Clone)]
struct Api {
    agent: Arc<Agent>,
    limiter: Arc<Limiter>,
    /// Snapshot listings in flight (each a process reading the repository).
    listings: Arc<tokio::sync::Semaphore>,
}

/// Serve the API on `listener` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    let app = router(agent);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    {
        tracing::error!(error = %e, "The API server stopped.");
    }
}

/// One endpoint of the API.
struct Route {
    path: &'static str,
    /// Its method, as docs/openapi.json names it.
    method: &'static str,
    /// Whether it needs the bearer token.
    token: bool,
    /// The handler, routed for the method it is given.
    handler: fn(MethodFilter) -> axum::routing::MethodRouter<Api>,
}

impl Route {
    fn method_router(&self) -> axum::routing::MethodRouter<Api> {
        let filter = match self.method {
            "post" => MethodFilter::POST,
            _ => MethodFilter::GET,
        };
        (self.handler)(filter)
    }
}

/// Every endpoint: the router is built from this list, and the OpenAPI
/// test checks the document against it, so a route cannot be added
/// without being documented.
const ROUTES: &[Route] = &[
    Route {
        path: "/healthz",
        method: "get",
        token: false,
        handler: |m| on(m, || async { Json(json!({"status": "ok"})) }),
    },
    Route {
        path: "/readyz",
        method: "get",
        token: false,
        handler: |m| on(m, ready),
    },
    Route {
        path: "/metrics",
        method: "get",
        token: true,
        handler: |m| on(m, metrics),
    },
    Route {
        path: "/v1/openapi.json",
        method: "get",
        token: true,
        handler: |m| on(m, openapi),
    },
    Route {
        path: "/v1/jobs",
        method: "get",
        token: true,
        handler: |m| on(m, jobs),
    },
    Route {
        path: "/v1/jobs/{job}/run",
        method: "post",
        token: true,
        handler: |m| on(m, run_job),
    },
    Route {
        path: "/v1/runs/{id}",
        method: "get",
        token: true,
        handler: |m| on(m, run),
    },
    Route {
        path: "/v1/snapshots",
        method: "get",
        token: true,
        handler: |m| on(m, snapshots),
    },
    Route {
        path: "/v1/restores",
        method: "post",
        token: true,
        handler: |m| on(m, restore),
    },
    Route {
        path: "/v1/drills",
        method: "get",
        token: true,
        handler: |m| on(m, drills),
    },
];

/// The routes.
pub fn router(agent: Arc<Agent>) -> axum::Router {
    let api = Api {
        agent,
        limiter: Arc::new(Limiter::default()),
        listings: Arc::new(tokio::sync::Semaphore::new(2)),
    };
    let authed = ROUTES
        .iter()
        .filter(|r| r.token)
        .fold(axum::Router::new(), |router, r| {
            router.route(r.path, r.method_router())
        })
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    ROUTES
        .iter()
        .filter(|r| !r.token)
        .fold(axum::Router::new(), |router, r| {
            router.route(r.path, r.method_router())
        })
        .merge(authed)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(api.clone(), rate_limit))
        .with_state(api)
}

async fn rate_limit(State(api): State<Api>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let rate = api.agent.loaded().config.agent.api_rate_per_sec as f64;
    // Probes are never limited: a busy client must not make the node look dead.
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    if !probe && !api.limiter.allow(ip, rate) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry after a second",
        )
        .into_response();
    }
    next.run(req).await
}

/// Compare two secrets in time independent of where they differ (and of
/// their lengths: both are hashed first).
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (
        crate::repo::Id::hash(a.as_bytes()),
        crate::repo::Id::hash(b.as_bytes()),
    );
    let diff =
        x.0.iter()
            .zip(y.0.iter())
            .fold(0u8, |acc, (p, q)| acc | (p ^ q));
    std::hint::black_box(diff) == 0
}

async fn authenticate(
    State(api): State<Api>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let loaded = api.agent.loaded();
    let Some(expected) = loaded.token.as_deref() else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the agent has no API token",
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send Authorization: Bearer <token>",
        )
        .into_response(),
        Some(t) if !same_secret(t.trim(), expected) => {
            tracing::warn!(path = %req.uri().path(), "API request with a wrong token.");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid",
            )
            .into_response()
        }
        Some(_) => {
            let total = loaded.config.agent.api_rate_total() as f64;
            if !api.limiter.allow_total(total) {
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests from all clients together; retry after a second",
                )
                .into_response();
            }
            next.run(req).await
        }
    }
}

async fn ready(State(api): State<Api>) -> Response {
    if api.agent.ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the agent is starting or stopping",
        )
        .into_response()
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&api.agent),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn jobs(State(api): State<Api>) -> Json<serde_json::Value> {
    let agent = &api.agent;
    let loaded = agent.loaded();
    let c = &loaded.config;
    let streams = agent.stream_states();
    let runs = lock(&agent.runs);
    let mut out = Vec::new();
    for (name, j) in &c.jobs {
        let stats = runs.stats.get(name).cloned().unwrap_or_default();
        let active = runs
            .active(name)
            .filter(|r| r.kind == super::state::Kind::Backup);
        let group = c.group_of(name);
        let next_run = match group {
            Some(g) => agent.next_run(&Target::Group(g.into())),
            None => agent.next_run(&Target::Backup(name.clone())),
        };
        out.push(json!({
            "name": name,
            "tenant": j.tenant,
            "adapter": j.adapter,
            "schedule": j.schedule,
            "group": group,
            "state": match active.map(|r| r.status) {
                Some(super::state::Status::Queued) => "queued",
                Some(_) => "running",
                None => "idle",
            },
            "current_run": active.map(|r| r.id.clone()),
            "next_run": next_run,
            "last_success": stats.last_success,
            "skipped_runs": stats.skipped_overlap,
            "retention": j.retention.as_ref().map(|r| r.forget_flags().join(" ")),
            "drill_schedule": j.drill.as_ref().and_then(|d| d.schedule.clone()),
            "next_drill": agent.next_run(&Target::Drill(name.clone())),
            "recent_runs": runs.of_job(name, 5),
            "wal": streams.get(name).map(super::streams::view),
        }));
    }
    let groups: Vec<serde_json::Value> = c
        .groups
        .iter()
        .map(|(name, g)| {
            json!({
                "name": name,
                "jobs": g.jobs,
                "schedule": g.schedule,
                "next_run": agent.next_run(&Target::Group(name.clone())),
                "skipped_runs": runs.stats.get(name).map(|s| s.skipped_overlap).unwrap_or(0),
                "recent_runs": runs.of_job(name, 5),
            })
        })
        .collect();
    Json(json!({"jobs": out, "groups": groups}))
}

async fn run_job(State(api): State<Api>, Path(job): Path<String>) -> Result<Response, ApiError> {
    let c = &api.agent.loaded().config;
    let target = if c.jobs.contains_key(&job) {
        Target::Backup(job)
    } else if c.groups.contains_key(&job) {
        Target::Group(job)
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("job {job} is not in the config"),
        ));
    };
    let run = api.agent.trigger(target, "api")?;
    Ok((StatusCode::ACCEPTED, Json(json!({"run": run}))).into_response())
}

async fn run(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let runs = lock(&api.agent.runs);
    match runs.get(&id) {
        Some(r) => Ok(Json(json!({"run": r}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("run {id} is not known (the agent keeps the last 1000)"),
        )),
    }
}

async fn snapshots(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(tenant) = q.get("tenant") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "tenant_required",
            "give ?tenant=NAME",
        ));
    };
    let Ok(_listing) = api.listings.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "two snapshot listings are running already; retry shortly",
        ));
    };
    let loaded = api.agent.loaded();
    if !loaded.config.tenants.contains_key(tenant) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            format!("tenant {tenant} is not in the config"),
        ));
    }
    let args = vec![
        "--config".into(),
        loaded.frozen.display().to_string(),
        "--tenant".into(),
        tenant.clone(),
        "snapshots".into(),
    ];
    let f = super::runner::run(
        &format!("snapshots:{tenant}"),
        &args,
        Some(Duration::from_secs(120)),
        tokio::sync::watch::channel(false).1,
        |_| {},
    )
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot list tenant {tenant}'s snapshots: {e}"),
        )
    })?;
    let list = f.messages.iter().rev().find_map(|m| match m {
        crate::ops::protocol::Message::Snapshots(list) => Some(list),
        _ => None,
    });
    if f.exit() == Some(crate::ops::protocol::Exit::Ok)
        && let Some(list) = list
    {
        return Ok(Json(json!({"tenant": tenant, "snapshots": list})));
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "repository_error",
        format!("listing tenant {tenant}'s snapshots: {}", f.error()),
    ))
}

async fn restore(
    State(api): State<Api>,
    body: Result<Json<RestoreSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {BODY_LIMIT} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text()),
    })?;
    let run = api.agent.trigger(Target::Restore(Box::new(spec)), "api")?;
    Ok((StatusCode::ACCEPTED, Json(json!({"run": run}))).into_response())
}

async fn drills(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let dir = api.agent.loaded().config.agent.state_dir.clone();
    let records = crate::ops::drills::read(&dir).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("reading the drill record: {e}"),
        )
    })?;
    let list: Vec<_> = records
        .into_iter()
        .rev()
        .filter(|r| q.get("job").is_none_or(|j| *j == r.job))
        .take(100)
        .collect();
    Ok(Json(json!({"drills": list})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_not_prefix() {
        assert!(same_secret(
            "s3cret-token-0123456789",
            "s3cret-token-0123456789"
        ));
        assert!(!same_secret(
            "s3cret-token-0123456789",
            "s3cret-token-012345678"
        ));
        assert!(!same_secret("", "x"));
    }

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let l = Limiter::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let allowed = (0..30).filter(|_| l.allow(ip, 5.0)).count();
        assert_eq!(allowed, 10, "a burst of twice the rate");
        assert!(
            l.allow(IpAddr::from([127, 0, 0, 2]), 5.0),
            "another client has its own bucket"
        );
    }

    #[test]
    fn many_addresses_share_one_total_and_an_ipv6_64_is_one_client() {
        let l = Limiter::default();
        let allowed = (1..=200u8)
            .filter(|i| l.allow(IpAddr::from([127, 0, 0, *i]), 5.0) && l.allow_total(20.0))
            .count();
        assert_eq!(
            allowed, 40,
            "a burst of twice the total, whatever the addresses"
        );
        let l = Limiter::default();
        let allowed = (0..100u16)
            .filter(|i| {
                let ip: std::net::Ipv6Addr = format!("2001:db8::{i:x}").parse().unwrap();
                l.allow(IpAddr::V6(ip), 5.0)
            })
            .count();
        assert_eq!(allowed, 10, "addresses of one /64 are one client");
    }

    #[test]
    fn the_openapi_document_names_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        for r in ROUTES {
            assert!(
                doc["paths"][r.path].get(r.method).is_some(),
                "{} {} is missing from docs/openapi.json",
                r.method.to_uppercase(),
                r.path
            );
        }
        let documented = doc["paths"].as_object().expect("paths");
        for path in documented.keys() {
            assert!(
                ROUTES.iter().any(|r| r.path == path),
                "docs/openapi.json documents {path}, which the router does not serve"
            );
        }
    }
}
