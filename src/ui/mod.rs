//! The web dashboard at `/ui/`, served by every node from the binary itself: HTML
//! rendered on the server (maud, which escapes every value it inserts — task names,
//! commands and outputs are whatever a user typed), one stylesheet, and one small
//! script that refreshes each page's live part every 2 s and shows times in the
//! browser's zone. Reading works without JavaScript.
//!
//! The dashboard owns no data and no rules: every read and write is a request to this
//! node's own REST router, made in process on behalf of the signed-in user
//! ([`crate::api::auth::InProcessCaller`]), so the role table, validation, rate limit,
//! audit log and forwarding to the leader are the API's. Buttons a role may not use are
//! not shown (judged by the same table, [`crate::api::access`]), and the API refuses them
//! anyway.
//!
//! Sessions ([`session`]) are an `HttpOnly; SameSite=Strict` cookie (`Secure` under TLS)
//! holding a short-lived token any node of the cluster accepts; every write is a POST
//! that must carry its session's CSRF token and, when the browser sends one, an `Origin`
//! naming this host. Every answer carries a Content-Security-Policy that allows only this
//! node's own script and stylesheet.
//!
//! This module must never put a credential or session token in a URL, a page or a log,
//! and never reads the store itself: it goes through the API.

mod layout;
mod pages;
pub mod session;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::auth::InProcessCaller;
use crate::node::NodeCore;
use session::{Claims, Sessions};

/// The dashboard's shared state.
#[derive(Clone)]
pub struct Ui {
    core: Arc<NodeCore>,
    api: Router,
    sessions: Arc<Sessions>,
}

/// Header the live refresh sends: the answer is the page's live part only.
const LIVE_HEADER: &str = "x-raftcron-live";
/// The one-shot message cookie of a write's redirect (never a URL parameter, so a link
/// cannot put words in the dashboard's mouth).
const FLASH_COOKIE: &str = "raftcron_flash";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The `/ui` routes (and `/` → `/ui/`).
pub fn router(core: Arc<NodeCore>, api: Router) -> Router {
    let sessions = Arc::new(Sessions::new(&core.config));
    if !sessions.shared {
        tracing::info!(
            "dashboard sessions are signed with a key of this node's own (no cluster.secret or HS256 auth.jwt): \
             they are valid on this node only, until it restarts"
        );
    }
    let ui = Ui { core, api, sessions };
    let signed_in = pages::routes()
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(ui.clone(), require_session));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/assets/app.css", get(stylesheet))
        .route("/ui/assets/app.js", get(script))
        .merge(signed_in)
        .layer(middleware::from_fn_with_state(ui.clone(), security_headers))
        .with_state(ui)
}

async fn security_headers(State(ui): State<Ui>, req: Request, next: Next) -> Response {
    // Cookies are `Secure` when the browser reached the dashboard over TLS: this node's
    // own, or a proxy's in front of it that says so. (A client that claims https falsely
    // only keeps its own cookie from being sent back over plain HTTP.)
    let tls = ui.core.config.node.http_tls_cert_file.is_some() || forwarded_https(req.headers());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if tls {
        let cookies: Vec<HeaderValue> = h.get_all(header::SET_COOKIE).iter().cloned().collect();
        h.remove(header::SET_COOKIE);
        for c in cookies {
            let secured = c.to_str().ok().and_then(|v| HeaderValue::from_str(&format!("{v}; Secure")).ok());
            h.append(header::SET_COOKIE, secured.unwrap_or(c));
        }
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    resp
}

/// The signed-in user of a request, as [`require_session`] found it.
#[derive(Clone)]
pub struct Session {
    pub claims: Claims,
    pub csrf: String,
    /// The request came from the live refresh.
    pub live: bool,
    /// A one-shot message left by the previous write (full page loads only).
    pub flash: Option<layout::Flash>,
    /// The connecting peer (the browser, or the proxy in front of it), handed on to the
    /// API so its audit log names it.
    pub peer: Option<ConnectInfo<SocketAddr>>,
}

impl Session {
    /// Whether the signed-in role may call `method path` (a route as the API's table
    /// names it): a button it may not use is not shown.
    pub fn may(&self, method: &str, route: &str) -> bool {
        crate::api::access::access_of(method, route).is_some_and(|a| a.admits(self.claims.role))
    }
}

fn now_s() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    cookie_values(headers, name).next()
}

/// Every cookie named `name` the browser sent: another site of the same domain may have
/// set one of its own beside the dashboard's, and it must not hide the real one.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(
        move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        },
    )
}

/// The first valid, still honoured session among the cookies the browser sent; `Err`
/// says whether any was sent at all.
fn session_of(ui: &Ui, headers: &HeaderMap) -> Result<Claims, bool> {
    let mut sent = false;
    for token in cookie_values(headers, session::COOKIE) {
        sent = true;
        if let Ok(claims) = ui.sessions.verify(token).and_then(|c| still_valid(ui, c)) {
            return Ok(claims);
        }
    }
    Err(sent)
}

impl Ui {
    fn session_cookie(&self, claims: &Claims) -> HeaderValue {
        let token = self.sessions.sign(claims);
        let max_age = claims.exp.saturating_sub(now_s());
        HeaderValue::from_str(&format!(
            "{}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}",
            session::COOKIE,
        ))
        .expect("a JWT is a valid header value")
    }

    fn cleared_cookie(&self, name: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"))
            .expect("a plain header value")
    }

    /// A redirect after a write, carrying `flash` to the next page.
    fn redirect_with(&self, to: &str, flash: layout::Flash) -> Response {
        let mut resp = Redirect::to(to).into_response();
        let value = format!("{FLASH_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60", flash.encode(),);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp
    }

    /// One request to this node's REST API as the signed-in user.
    pub async fn call(
        &self,
        s: &Session,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(v) = if_match {
            builder = builder.header(header::IF_MATCH, format!("\"{v}\""));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut req = match builder.body(body) {
            Ok(r) => r,
            Err(e) => return Answer::failed(StatusCode::BAD_REQUEST, format!("cannot build the request: {e}")),
        };
        req.extensions_mut().insert(InProcessCaller(s.claims.caller()));
        if let Some(peer) = s.peer {
            req.extensions_mut().insert(peer);
        }
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        match axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024).await {
            Ok(bytes) if bytes.is_empty() => Answer { status, body: Value::Null, etag },
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(body) => Answer { status, body, etag },
                Err(e) => {
                    Answer::failed(StatusCode::BAD_GATEWAY, format!("the API answered {status} with no JSON: {e}"))
                }
            },
            Err(e) => Answer::failed(StatusCode::BAD_GATEWAY, format!("cannot read the API's answer: {e}")),
        }
    }

    /// A GET whose `data` a page needs; its failure is the page's error message.
    pub async fn get(&self, s: &Session, uri: &str) -> Result<Value, String> {
        self.call(s, Method::GET, uri, None, None).await.into_data()
    }
}

/// What the API answered.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub etag: Option<String>,
}

impl Answer {
    fn failed(status: StatusCode, message: String) -> Answer {
        Answer { status, body: serde_json::json!({ "success": false, "message": message }), etag: None }
    }

    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The API's message, with its status: what the user is told when a request fails.
    pub fn message(&self) -> String {
        let m = self.body.get("message").and_then(Value::as_str).unwrap_or("no message");
        format!("{} ({})", m, self.status)
    }

    pub fn into_data(self) -> Result<Value, String> {
        if self.ok() {
            Ok(self.body.get("data").cloned().unwrap_or(Value::Null))
        } else {
            Err(self.message())
        }
    }
}

/// Middleware for every signed-in page: a valid session (else the sign-in page, or 401
/// for the live refresh), a CSRF token and a same-origin `Origin` on every POST, and the
/// renewed cookie on the answer.
async fn require_session(State(ui): State<Ui>, mut req: Request, next: Next) -> Response {
    let live = req.headers().contains_key(LIVE_HEADER);
    let now = now_s();
    let claims = match session_of(&ui, req.headers()) {
        Ok(c) => c,
        Err(_) if live => return (StatusCode::UNAUTHORIZED, "sign in again").into_response(),
        Err(sent) => {
            let mut resp = Redirect::to("/ui/login").into_response();
            // Only a cookie that was sent and failed is deleted: a request that came
            // without one (a link from another site, where SameSite=Strict withholds
            // it) must not sign the browser out.
            if sent {
                resp.headers_mut().append(header::SET_COOKIE, ui.cleared_cookie(session::COOKIE));
            }
            return resp;
        }
    };
    let csrf = ui.sessions.csrf(&claims.sid);
    if req.method() == Method::POST {
        if let Err(why) = same_origin(req.headers()) {
            return (StatusCode::FORBIDDEN, why).into_response();
        }
        // Forms are small: the token is read from the body, which is then handed on.
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, crate::api::MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return form_unreadable(&e).into_response(),
        };
        let token = form_urlencoded_value(&bytes, "csrf").unwrap_or_default();
        if !ui.sessions.csrf_matches(&claims.sid, &token) {
            return (StatusCode::FORBIDDEN, "this form is stale or was not sent by the dashboard; reload the page")
                .into_response();
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    let flash = if live { None } else { cookie_value(req.headers(), FLASH_COOKIE).and_then(layout::Flash::decode) };
    let had_flash = flash.is_some();
    let renewal = ui.sessions.renewal(&claims, now);
    let claims = renewal.clone().unwrap_or(claims);
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
    req.extensions_mut().insert(Session { claims: claims.clone(), csrf, live, flash, peer });
    let mut resp = next.run(req).await;
    // A handler that set a cookie itself has the last word on it: sign-out's clearing
    // is never followed by a renewal, nor a write's new message by the old one's removal.
    let sets = |name: &str| {
        resp.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.as_bytes().starts_with(format!("{name}=").as_bytes()))
    };
    let (renew, clear_flash) = (renewal.is_some() && !sets(session::COOKIE), had_flash && !sets(FLASH_COOKIE));
    if renew {
        resp.headers_mut().append(header::SET_COOKIE, ui.session_cookie(&claims));
    }
    if clear_flash {
        resp.headers_mut().append(header::SET_COOKIE, ui.cleared_cookie(FLASH_COOKIE));
    }
    resp
}

/// Why a form's body could not be read: too large (413), or too slow to arrive (408).
fn form_unreadable(e: &axum::Error) -> (StatusCode, &'static str) {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return (StatusCode::REQUEST_TIMEOUT, "the form took too long to arrive");
        }
        cause = c.source();
    }
    (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large")
}

/// A verified session is still honoured only while the credential it was signed in
/// with would be: the same API key is still configured under its name with the same
/// role, or JWTs are still accepted (the token's own expiry caps the session already).
fn still_valid(ui: &Ui, claims: Claims) -> Result<Claims, String> {
    let auth = &ui.core.auth;
    let valid = if claims.jwt {
        auth.accepts_jwt()
    } else {
        auth.key_named(&claims.sub)
            .is_some_and(|(role, hash)| role == claims.role && ui.sessions.key_tag_matches(&claims, hash))
    };
    if valid {
        Ok(claims)
    } else {
        Err("the credential of this session is no longer accepted".into())
    }
}

/// Whether the proxy nearest the browser (the first entry) says it was reached over TLS,
/// in `X-Forwarded-Proto` or RFC 7239's `Forwarded: proto=`.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let first =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next()).map(str::trim);
    let xfp = first("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let rfc = first("forwarded").is_some_and(|entry| {
        entry.split(';').any(|kv| {
            kv.trim().split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("proto") && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
            })
        })
    });
    xfp || rfc
}

/// A browser names the page a POST came from in `Origin`; one from another site is
/// refused even before the CSRF token is looked at. (A client that sends no `Origin`
/// still needs the token.) The origin must name the host the browser asked for: `Host`,
/// or `X-Forwarded-Host` when a proxy in front rewrote `Host` (a cross-site form cannot
/// set that header, so accepting it admits no other site).
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let named = |h: &str| {
        headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|host| !host.trim().is_empty() && host.trim().eq_ignore_ascii_case(origin_host))
    };
    if named(header::HOST.as_str()) || named("x-forwarded-host") {
        Ok(())
    } else {
        Err(format!("a dashboard form must be sent from this dashboard, not from {origin}"))
    }
}

fn form_urlencoded_value(body: &[u8], key: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == key).then_some(v))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    credential: String,
}

async fn login_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    // Already signed in: straight to the overview.
    let signed_in = session_of(&ui, &headers).is_ok();
    if signed_in {
        return Redirect::to("/ui/").into_response();
    }
    layout::login(&ui.core, None).into_response()
}

async fn login(
    State(ui): State<Ui>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let refuse = |why: &str| (StatusCode::UNAUTHORIZED, layout::login(&ui.core, Some(why))).into_response();
    if let Err(why) = same_origin(&headers) {
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) if matches!(e.status(), StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) => {
            return (e.status(), "the sign-in form was too large or too slow to arrive").into_response()
        }
        Err(_) => return refuse("the sign-in form could not be read"),
    };
    let credential = form.credential.trim();
    if credential.is_empty() {
        return refuse("enter an API key or a JWT");
    }
    let from = connect.map_or_else(|| "unknown".into(), |c| c.0 .0.ip().to_string());
    let caller = match ui.core.auth.authenticate(Some(&format!("Bearer {credential}"))) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(target: "audit", from = %from, "dashboard sign-in refused: {e}");
            return refuse(&e.to_string());
        }
    };
    if caller.role == crate::config::Role::Worker {
        return refuse("a worker credential cannot sign in to the dashboard");
    }
    let (key_hash, jwt_exp) = match caller.credential {
        crate::api::auth::Credential::ApiKey => (ui.core.auth.key_hash_of(credential), None),
        crate::api::auth::Credential::Jwt => match ui.core.auth.jwt_expiry(credential) {
            Some(exp) => (None, Some(exp)),
            None => return refuse("the token expired while signing in"),
        },
    };
    let claims = ui.sessions.mint(&caller, key_hash.as_ref(), jwt_exp, now_s());
    tracing::info!(target: "audit", caller = %caller.name, from = %from, "dashboard sign-in");
    let mut resp = Redirect::to("/ui/").into_response();
    resp.headers_mut().append(header::SET_COOKIE, ui.session_cookie(&claims));
    resp
}

async fn logout(State(ui): State<Ui>) -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, ui.cleared_cookie(session::COOKIE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_post_must_come_from_the_host_the_browser_asked_for() {
        assert!(same_origin(&headers(&[("host", "10.0.0.5:8080")])).is_ok(), "no Origin: the token decides");
        assert!(same_origin(&headers(&[("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8080")])).is_ok());
        let cross = headers(&[("host", "10.0.0.5:8080"), ("origin", "https://evil.example")]);
        assert!(same_origin(&cross).unwrap_err().contains("evil.example"));
        // A proxy rewrote Host and said which name the browser used.
        let proxied = [("host", "10.0.0.5:8080"), ("origin", "https://cron.example.com")];
        assert!(same_origin(&headers(&proxied)).is_err());
        let named = [proxied[0], proxied[1], ("x-forwarded-host", "cron.example.com")];
        assert!(same_origin(&headers(&named)).is_ok());
        let other = [proxied[0], proxied[1], ("x-forwarded-host", "other.example.com")];
        assert!(same_origin(&headers(&other)).is_err());
        assert!(same_origin(&headers(&[("origin", "null")])).is_err(), "no Host at all");
    }

    #[test]
    fn tls_at_the_proxy_nearest_the_browser_is_recognised() {
        assert!(forwarded_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(forwarded_https(&headers(&[("x-forwarded-proto", "HTTPS, http")])));
        assert!(!forwarded_https(&headers(&[("x-forwarded-proto", "http, https")])));
        assert!(forwarded_https(&headers(&[("forwarded", "for=10.0.0.1;proto=https;by=lb, for=10.0.0.2")])));
        assert!(forwarded_https(&headers(&[("forwarded", "Proto=\"https\"")])));
        assert!(!forwarded_https(&headers(&[("forwarded", "proto=http")])));
        assert!(!forwarded_https(&HeaderMap::new()));
    }
}
