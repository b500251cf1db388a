//! The REST API (axum), served by every node. One module per resource; this module owns
//! the response envelope, the one error → HTTP status map ([`ApiError`]), request-body
//! parsing, and the router with its OpenAPI document.

pub mod access;
pub mod admission;
pub mod auth;
mod cluster;
pub mod contract;
pub mod jwt;
pub mod listener;
mod runs;
pub mod schedule;
mod system;
mod tasks;
pub mod workers;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::model::FieldError;
use crate::node::NodeCore;
use crate::raft::{IdempotencyKey, Rejection};
use crate::rpc::RpcFailure;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// Every response body: the seed's envelope, plus an `error` code on failures.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    pub success: bool,
    pub data: Option<T>,
    pub message: String,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A successful response: status, envelope with `data`, optional extra headers.
pub struct Reply<T> {
    status: StatusCode,
    data: Option<T>,
    message: String,
    headers: HeaderMap,
}

impl<T: Serialize> Reply<T> {
    pub fn ok(data: T) -> Self {
        Reply { status: StatusCode::OK, data: Some(data), message: "ok".into(), headers: HeaderMap::new() }
    }
    pub fn created(data: T) -> Self {
        Reply { status: StatusCode::CREATED, data: Some(data), message: "created".into(), headers: HeaderMap::new() }
    }
    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = m.into();
        self
    }
    pub fn etag(mut self, version: u64) -> Self {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
            self.headers.insert(axum::http::header::ETAG, v);
        }
        self
    }
    pub fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NO_CONTENT {
            return (self.status, self.headers).into_response();
        }
        let body =
            Envelope { success: true, data: self.data, message: self.message, timestamp: now_rfc3339(), error: None };
        (self.status, self.headers, Json(body)).into_response()
    }
}

/// Every way a request can fail, and the only place that knows HTTP status codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidField(FieldError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// No such route at all (as opposed to no such resource).
    #[error("{0}")]
    NoRoute(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body is larger than {MAX_BODY} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Nothing was done: the caller is over its rate, or too many runs wait for a worker.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: std::time::Duration },
    /// Nothing was done; retry later (no leader, no quorum).
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied; retry with the same Idempotency-Key.
    #[error("{0}")]
    Indeterminate(String),
    /// A local storage failure: the node is unhealthy, not the request.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidField(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Indeterminate(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidField(_) => "invalid_field",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute(_) => "route_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Indeterminate(_) => "outcome_unknown",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body: Envelope<()> = Envelope {
            success: false,
            data: None,
            message: self.to_string(),
            timestamp: now_rfc3339(),
            error: Some(self.code()),
        };
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client that waits this long is admitted.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<RpcFailure> for ApiError {
    fn from(e: RpcFailure) -> Self {
        match e {
            RpcFailure::Invalid(m) => ApiError::BadRequest(m),
            RpcFailure::Forbidden(m) => ApiError::Forbidden(m),
            RpcFailure::Conflict(m) => ApiError::Conflict(m),
            RpcFailure::Indeterminate(m) => ApiError::Indeterminate(format!(
                "the write may or may not have been applied ({m}); retry with the same Idempotency-Key"
            )),
            RpcFailure::NotLeader(_) | RpcFailure::Unavailable(_) | RpcFailure::Refused(_) => {
                ApiError::Unavailable(format!("no leader could be reached in time: {e}"))
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::TaskNotFound(_) => ApiError::NotFound(r.to_string()),
            Rejection::NameTaken(_) | Rejection::Incomplete(_) => ApiError::Conflict(r.to_string()),
            Rejection::VersionMismatch { .. } => ApiError::PreconditionFailed(r.to_string()),
            Rejection::Invalid(f) => ApiError::InvalidField(f),
            Rejection::IdempotencyKeyReused => ApiError::IdempotencyKeyReused(r.to_string()),
            Rejection::RunNotFound(_) => ApiError::NotFound(r.to_string()),
            Rejection::WorkerNotFound(_) => ApiError::NotFound(r.to_string()),
            Rejection::TaskDisabled(_)
            | Rejection::RunFinished(_)
            | Rejection::StaleFire(_)
            | Rejection::StaleAttempt { .. } => ApiError::Conflict(r.to_string()),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "storage read failed");
        ApiError::Internal(format!("storage error: {e}"))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidField(e)
    }
}

/// Parses a JSON object body, mapping every failure to a 4xx that says what is wrong.
pub fn json_body(body: Result<Bytes, BytesRejection>) -> Result<(serde_json::Value, Bytes), ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!("cannot read request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("request body is empty; a JSON object is expected".into()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    integral_floats_as_integers(&mut value);
    Ok((value, bytes))
}

/// JSON has one number type: `51.0` is the integer 51 to JSON Schema (and to most
/// clients' serializers), so it is one to the server too. A fraction, or a value beyond
/// 64 bits, stays a float and is refused where an integer is due.
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *v = if f < 0.0 { serde_json::json!(f as i64) } else { serde_json::json!(f as u64) };
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Parses a JSON body into `T`; a type error names the field (`id: invalid type ...`).
pub fn typed_json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let (value, _) = json_body(body)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::BadRequest(format!("invalid request: {inner}"))
        } else {
            ApiError::BadRequest(format!("{path}: {inner}"))
        }
    })
}

/// Reads the `Idempotency-Key` header, scoped to the caller; the fingerprint covers the
/// method, path and body so a reused key with another request is detected.
pub fn idempotency_key(
    headers: &HeaderMap,
    caller: &auth::Caller,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?.trim();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::BadRequest("Idempotency-Key must be 1 to 255 characters".into()));
    }
    if !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest("Idempotency-Key must be visible ASCII (spaces inside allowed)".into()));
    }
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    Ok(Some(IdempotencyKey {
        scope: caller.scope(),
        key: key.to_string(),
        fingerprint: hex::encode(h.finalize()),
        ttl_ms: crate::raft::apply::IDEMPOTENCY_TTL_MS,
        client: true,
    }))
}

/// `If-Match: "3"` (or `3`, `W/"3"`) → expected version 3; `*` or absent → none.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().map_err(|_| ApiError::BadRequest("If-Match is not ASCII".into()))?.trim();
    // `*` matches any version. An empty one is a client that meant a version and lost it:
    // refused, never taken as unconditional.
    if s == "*" {
        return Ok(None);
    }
    let digits = s.strip_prefix("W/").unwrap_or(s);
    let digits = digits.strip_prefix('"').unwrap_or(digits);
    let digits = digits.strip_suffix('"').unwrap_or(digits);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!("If-Match {s:?} is not a task version (an ETag such as \"3\")")));
    }
    digits
        .parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("If-Match {s:?} is not a task version (an ETag such as \"3\")")))
}

/// `?consistency=linearizable` (default) or `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Local,
}

impl Consistency {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("linearizable") | Some("strong") => Ok(Consistency::Linearizable),
            Some("local") | Some("stale") => Ok(Consistency::Local),
            Some(other) => {
                Err(ApiError::BadRequest(format!("consistency: {other:?} is not one of linearizable, local")))
            }
        }
    }

    /// Waits, if needed, until this node may serve the read.
    pub async fn prepare(self, core: &NodeCore) -> Result<(), ApiError> {
        match self {
            Consistency::Local => Ok(()),
            Consistency::Linearizable => core.linearize().await.map_err(ApiError::from),
        }
    }
}

/// `page` (from 1, default 1) and `size` (1 to 100, default 20) of a list request.
/// The highest page number a listing accepts.
pub const MAX_PAGE: u64 = 1_000_000_000;

pub fn page_and_size(q: &std::collections::BTreeMap<String, String>) -> Result<(u64, u64), ApiError> {
    let number = |key: &str, default: u64| -> Result<u64, ApiError> {
        match q.get(key) {
            None => Ok(default),
            Some(v) => {
                v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("{key}: {v:?} is not a positive integer")))
            }
        }
    };
    let (page, size) = (number("page", 1)?, number("size", 20)?);
    if page == 0 || page > MAX_PAGE {
        return Err(ApiError::BadRequest(format!("page: pages run from 1 to {MAX_PAGE}")));
    }
    if size == 0 || size > 100 {
        return Err(ApiError::BadRequest("size: must be between 1 and 100".into()));
    }
    Ok((page, size))
}

pub fn parse_id(what: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("{what} id {raw:?} is not a positive integer")))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "raftcron", description = "Distributed job scheduler REST API. Every response uses the envelope {success, data, message, timestamp}."),
    modifiers(&BearerAuth),
    tags((name = "tasks"), (name = "runs"), (name = "cluster"), (name = "schedule"), (name = "system"), (name = "workers"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let mut jwt = Http::new(HttpAuthScheme::Bearer);
        jwt.bearer_format = Some("JWT".into());
        components.add_security_scheme("jwt", SecurityScheme::Http(jwt));
    }
}

/// The routes and their OpenAPI document, from one definition.
pub fn api_routes() -> (Router<Arc<NodeCore>>, Router<Arc<NodeCore>>, utoipa::openapi::OpenApi) {
    let (protected, doc_protected) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(tasks::routes())
        .merge(cluster::routes())
        .merge(schedule::routes())
        .merge(runs::routes())
        .merge(workers::routes())
        .merge(system::protected_routes())
        .split_for_parts();
    let (open, doc_open) = OpenApiRouter::new().merge(system::open_routes()).split_for_parts();
    let mut doc = doc_protected;
    doc.merge(doc_open);
    (protected, open, doc)
}

/// The node's whole HTTP surface.
pub fn router(core: Arc<NodeCore>) -> Router {
    let (protected, open, doc) = api_routes();
    let doc = Arc::new(contract::document(&doc));
    // The last layer added runs first: audit (so refusals, 401s included, are audited),
    // authenticate, limit the caller's rate, then authorize by the route table.
    let protected = protected
        .route_layer(middleware::from_fn_with_state(core.clone(), access::authorize))
        .route_layer(middleware::from_fn_with_state(core.clone(), admission::rate_limit))
        .route_layer(middleware::from_fn_with_state(core.clone(), auth::require_auth))
        .route_layer(middleware::from_fn(audit_writes));
    let open = open.route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { Json((*doc).clone()) }
        }),
    );
    let api = Router::new()
        .merge(protected)
        .merge(open)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let api = bounded_bodies(api)
        .layer(middleware::from_fn_with_state(core.clone(), record_http_metrics))
        .with_state(core.clone());
    // The dashboard reads and writes through this same router, in process; its own
    // forms get the same bounds.
    bounded_bodies(crate::ui::router(core, api.clone())).merge(api)
}

/// Every body a node reads is bounded in size ([`MAX_BODY`]) and in how slowly it may
/// arrive ([`listener::BODY_TIMEOUT`]): one function, so no route can miss either.
fn bounded_bodies<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(listener::BODY_TIMEOUT))
}

async fn route_not_found(req: Request) -> ApiError {
    ApiError::NoRoute(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

/// The `method` label: the methods HTTP defines, and `other` for anything a client
/// invents (each invented method would otherwise be a new time series).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Where authentication tells the audit layer (outside it) who called.
#[derive(Clone, Default)]
pub struct AuditCaller(Arc<std::sync::Mutex<Option<auth::Caller>>>);

/// One write's audit entry, logged when it is dropped: with the status once the response
/// exists, or as aborted when the client went away first (hyper drops the handler, and
/// the write may still commit).
struct AuditEntry {
    caller: AuditCaller,
    method: &'static str,
    route: String,
    path: String,
    from: String,
    started: Instant,
    status: Option<u16>,
}

impl Drop for AuditEntry {
    fn drop(&mut self) {
        let who = self.caller.0.lock().map(|c| c.clone()).unwrap_or_default();
        let entry = serde_json::json!({
            "who": who.as_ref().map(|c| c.name.as_str()),
            "role": who.as_ref().map(|c| format!("{:?}", c.role).to_lowercase()),
            "credential": who.as_ref().map(|c| match c.credential {
                auth::Credential::ApiKey => "api_key",
                auth::Credential::Jwt => "jwt",
            }),
            "method": self.method, "route": self.route, "path": self.path, "from": self.from,
            "status": self.status, "aborted": self.status.is_none(),
            "ms": self.started.elapsed().as_millis() as u64,
        });
        tracing::info!(target: "audit", "{entry}");
    }
}

/// Middleware, outermost on the authenticated routes: every write (anything but GET and
/// HEAD, and the workers' heartbeats, which change no replicated state and come every few
/// seconds) is logged on the `audit` target as one JSON object — who (key name or JWT
/// `sub`, role, how they authenticated; null when authentication failed), what (method,
/// route, path), from where, and the status it got, refusals included, or `aborted`
/// when the client went away first. Never a body, a header or a credential. The `audit`
/// target logs at info: a node run with a log filter above info for it logs no audit.
async fn audit_writes(mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    if matches!(*req.method(), Method::GET | Method::HEAD) || route == "/api/workers/{worker_id}/heartbeat" {
        return next.run(req).await;
    }
    let caller = AuditCaller::default();
    req.extensions_mut().insert(caller.clone());
    let mut entry = AuditEntry {
        caller,
        method: method_label(req.method()),
        route,
        path: req.uri().path().to_string(),
        from: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string()),
        started: Instant::now(),
        status: None,
    };
    let resp = next.run(req).await;
    entry.status = Some(resp.status().as_u16());
    resp
}

async fn record_http_metrics(State(core): State<Arc<NodeCore>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method()).to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    core.metrics.http_requests.with_label_values(&[&route, &method, &status]).inc();
    core.metrics.http_latency.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    resp
}
