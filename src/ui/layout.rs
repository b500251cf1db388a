//! The frame every dashboard page shares (header, navigation, sign-out, messages) and the
//! small pieces pages are built from: times, state badges, write buttons. Everything is
//! maud markup, so every value is escaped where it is inserted.

use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::Session;
use crate::node::NodeCore;

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Tasks,
    Runs,
    Workers,
    Cluster,
}

/// A one-shot message shown on the page a write redirects to.
#[derive(Clone, Debug)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash { ok: true, text: text.into() }
    }

    pub fn error(text: impl Into<String>) -> Flash {
        Flash { ok: false, text: text.into() }
    }

    /// As a cookie value: hex, so any text fits.
    pub fn encode(&self) -> String {
        let mut text: String = self.text.chars().take(400).collect();
        text.insert(0, if self.ok { 'o' } else { 'e' });
        hex::encode(text)
    }

    pub fn decode(v: &str) -> Option<Flash> {
        let text = String::from_utf8(hex::decode(v).ok()?).ok()?;
        let mut chars = text.chars();
        let ok = match chars.next()? {
            'o' => true,
            'e' => false,
            _ => return None,
        };
        Some(Flash { ok, text: chars.collect() })
    }

    pub fn markup(&self) -> Markup {
        let class = if self.ok { "flash ok" } else { "flash error" };
        html! { p class=(class) role="status" { (self.text) } }
    }
}

/// A page: its title, its fixed part (forms a user may be typing into) and its live
/// part (refreshed in place every 2 s).
pub struct Page {
    pub title: String,
    pub nav: Nav,
    pub controls: Markup,
    pub live: Markup,
}

/// The whole page, or only its live part for the live refresh.
pub fn render(core: &NodeCore, s: &Session, page: Page) -> Response {
    if s.live {
        return Html(page.live.into_string()).into_response();
    }
    let item = |nav: Nav, id: &str, href: &str, label: &str| {
        html! {
            li { a id=(id) href=(href) aria-current=[(page.nav == nav).then_some("page")] { (label) } }
        }
    };
    let role = format!("{:?}", s.claims.role).to_lowercase();
    let body = html! {
        header.top {
            a.brand href="/ui/" { "raftcron" }
            nav aria-label="main" {
                ul {
                    (item(Nav::Overview, "nav-overview", "/ui/", "Overview"))
                    (item(Nav::Tasks, "nav-tasks", "/ui/tasks", "Tasks"))
                    (item(Nav::Runs, "nav-runs", "/ui/runs", "Runs"))
                    (item(Nav::Workers, "nav-workers", "/ui/workers", "Workers"))
                    (item(Nav::Cluster, "nav-cluster", "/ui/cluster", "Cluster"))
                }
            }
            div.who {
                span { "node " (core.id) } " · "
                span #signed-in-as { (s.claims.sub) " (" (role) ")" }
                form #logout method="post" action="/ui/logout" {
                    (csrf(s))
                    button type="submit" { "Sign out" }
                }
            }
        }
        main #main {
            h1 #page-title { (page.title) }
            p #stale.flash.error hidden role="alert" { "This node is not answering; the data below may be old." }
            @if let Some(f) = &s.flash { (f.markup()) }
            (page.controls)
            div #live data-live="on" { (page.live) }
        }
    };
    Html(document(&page.title, body).into_string()).into_response()
}

/// The sign-in page (with `error` after a refused attempt).
pub fn login(core: &NodeCore, error: Option<&str>) -> Html<String> {
    let body = html! {
        main #main.login {
            h1 { "raftcron — sign in" }
            p { "Node " (core.id) ". Sign in with an API key or a JWT; the dashboard keeps it only long enough to check it." }
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form #login-form method="post" action="/ui/login" {
                label for="credential" { "API key or JWT" }
                input #credential type="password" name="credential" autocomplete="current-password" required;
                button #login-submit type="submit" { "Sign in" }
            }
        }
    };
    Html(document("Sign in", body).into_string())
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · raftcron" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body { (body) }
        }
    }
}

/// The hidden CSRF field every dashboard form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A write as a one-button form (class `write`, so a role that may not write sees none).
pub fn post_button(s: &Session, action: &str, id: &str, label: &str) -> Markup {
    html! {
        form.inline.write method="post" action=(action) {
            (csrf(s))
            button id=(id) type="submit" { (label) }
        }
    }
}

/// A time from the API (RFC 3339) as a `<time>` in UTC; the script shows it in the
/// browser's zone and keeps UTC on hover.
pub fn time(v: &Value) -> Markup {
    match v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => {
            let utc = t.with_timezone(&Utc);
            let text = utc.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(utc.to_rfc3339()) title=(text) { (text) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// An instant (RFC 3339) shown in the time zone `zone` (an IANA name): a schedule's fire
/// times read in the zone the schedule is written in. The script leaves it as it is.
pub fn zoned_time(v: &Value, zone: &str) -> Markup {
    let (Some(t), Ok(tz)) =
        (v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()), zone.parse::<chrono_tz::Tz>())
    else {
        return time(v);
    };
    let utc = t.with_timezone(&Utc);
    let text = utc.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string();
    let title = utc.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(utc.to_rfc3339()) title=(title) data-zoned=(zone) { (text) } }
}

/// A run, task or worker state as a badge.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state) } }
}

/// A string field of an API object ("" when absent).
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An integer field of an API object.
pub fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// A duration in milliseconds, short.
pub fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// An error in place of a page's data.
pub fn failure(what: &str, why: &str) -> Markup {
    html! { p.flash.error role="alert" { "Cannot read " (what) ": " (why) } }
}
