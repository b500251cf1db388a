//! The task pages: the list (search, state filter, paging), one task (spec, next fire
//! times, run history, its buttons), the create and edit forms (an edit is guarded by the
//! version it started from: a change made meanwhile is reported, never overwritten), and
//! the delete confirmation.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::layout::{self, badge, num, post_button, text, time, Flash, Nav, Page};
use super::{Session, Ui};

pub fn routes() -> Router<Ui> {
    Router::new()
        .route("/ui/tasks", get(list))
        .route("/ui/tasks/new", get(new_form).post(create))
        .route("/ui/tasks/{id}", get(show))
        .route("/ui/tasks/{id}/edit", get(edit_form).post(update))
        .route("/ui/tasks/{id}/delete", get(delete_confirm).post(delete))
        .route("/ui/tasks/{id}/{action}", post(act))
}

/// Query parameters passed on to the API as they came (encoded again).
fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<(&str, &str)> = pairs.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

async fn list(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let (search, status, page) = (get("search"), get("status"), get("page"));
    let controls = html! {
        form #task-filter.filters method="get" action="/ui/tasks" {
            label for="search" { "Name contains" }
            input #search type="search" name="search" value=(search);
            label for="status" { "State" }
            select #status name="status" {
                @for (v, label) in [("", "any"), ("active", "active"), ("paused", "paused"), ("disabled", "disabled")] {
                    option value=(v) selected[status == v] { (label) }
                }
            }
            button #filter-submit type="submit" { "Filter" }
        }
        @if s.may("POST", "/api/tasks") {
            p { a #new-task.write.button href="/ui/tasks/new" { "New task" } }
        }
    };
    let uri =
        format!("/api/tasks?{}", query(&[("search", search), ("status", status), ("page", page), ("size", "20")]));
    let live = match ui.get(&s, &uri).await {
        Err(e) => layout::failure("the tasks", &e),
        Ok(data) => {
            let items = data.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            let last_runs: Vec<Option<u64>> = items.iter().map(|t| num(t, "last_run")).collect();
            let runs = futures::future::join_all(last_runs.iter().map(|r| {
                let (ui, s) = (&ui, &s);
                async move {
                    match r {
                        Some(id) => ui.get(s, &format!("/api/runs/{id}?consistency=local")).await.ok(),
                        None => None,
                    }
                }
            }))
            .await;
            let total = num(&data, "total").unwrap_or(0);
            let page_no = num(&data, "page").unwrap_or(1);
            html! {
                p.muted #task-total { (total) " tasks" }
                table #tasks {
                    caption.visually-hidden { "Tasks" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Schedule" }
                        th scope="col" { "Next fire" } th scope="col" { "Last run" } } }
                    tbody {
                        @for (t, run) in items.iter().zip(runs.iter()) {
                            @let id = num(t, "id").unwrap_or(0);
                            tr data-task-id=(id) {
                                td { a.task-link href={ "/ui/tasks/" (id) } { (text(t, "name")) } }
                                td { (badge(text(t, "status"))) }
                                td { code { (t.get("schedule").and_then(Value::as_str).unwrap_or("manual")) } }
                                td { (time(&t["next_run_at"])) }
                                td {
                                    @if let Some(r) = run {
                                        a href={ "/ui/runs/" (num(r, "id").unwrap_or(0)) } { "#" (num(r, "id").unwrap_or(0)) } " "
                                        (badge(text(r, "status")))
                                    } @else { span.muted { "never" } }
                                }
                            }
                        }
                    }
                }
                (pager("/ui/tasks", &[("search", search), ("status", status)], page_no, total, 20))
            }
        }
    };
    layout::render(&ui.core, &s, Page { title: "Tasks".into(), nav: Nav::Tasks, controls, live })
}

/// Previous / next links keeping the filters.
pub fn pager(base: &str, keep: &[(&str, &str)], page: u64, total: u64, size: u64) -> Markup {
    let pages = total.div_ceil(size).max(1);
    let link = |p: u64| {
        let mut pairs = keep.to_vec();
        let p = p.to_string();
        pairs.push(("page", &p));
        format!("{base}?{}", query(&pairs))
    };
    html! {
        nav.pager aria-label="pages" {
            @if page > 1 { a rel="prev" href=(link(page - 1)) { "← newer" } }
            span { "page " (page) " of " (pages) }
            @if page < pages { a rel="next" href=(link(page + 1)) { "older →" } }
        }
    }
}

async fn show(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let page = q.get("page").map(String::as_str).unwrap_or("1");
    let task = match ui.get(&s, &format!("/api/tasks/{id}")).await {
        Ok(t) => t,
        Err(e) => {
            let live = layout::failure(&format!("task {id}"), &e);
            return layout::render(
                &ui.core,
                &s,
                Page { title: format!("Task {id}"), nav: Nav::Tasks, controls: html! {}, live },
            );
        }
    };
    let preview = match task.get("schedule").and_then(Value::as_str) {
        Some(cron) => {
            let q = query(&[("cron", cron), ("timezone", text(&task, "timezone")), ("count", "10")]);
            Some(ui.get(&s, &format!("/api/schedule/preview?{q}")).await)
        }
        None => None,
    };
    let runs = ui.get(&s, &format!("/api/tasks/{id}/runs?{}", query(&[("page", page), ("size", "20")]))).await;
    let status = text(&task, "status");
    let live = html! {
        div.actions {
            @if s.may("POST", "/api/tasks/{task_id}/trigger") { (post_button(&s, &format!("/ui/tasks/{id}/trigger"), "trigger", "Run now")) }
            @if status == "active" && s.may("POST", "/api/tasks/{task_id}/pause") {
                (post_button(&s, &format!("/ui/tasks/{id}/pause"), "pause", "Pause"))
            }
            @if status != "active" && s.may("POST", "/api/tasks/{task_id}/resume") {
                (post_button(&s, &format!("/ui/tasks/{id}/resume"), "resume", "Resume"))
            }
            @if s.may("PUT", "/api/tasks/{task_id}") { a #edit.write.button href={ "/ui/tasks/" (id) "/edit" } { "Edit" } }
            @if s.may("DELETE", "/api/tasks/{task_id}") { a #delete.write.button.danger href={ "/ui/tasks/" (id) "/delete" } { "Delete" } }
        }
        h2 #task-name { (text(&task, "name")) }
        dl.spec {
            dt { "State" } dd { span #task-status class={ "badge s-" (status) } { (status) } }
            dt { "Executor" } dd { (text(&task, "executor")) }
            @if let Some(c) = task.get("command").and_then(Value::as_str) { dt { "Command" } dd { code #task-command { (c) } } }
            @if let Some(u) = task.get("url").and_then(Value::as_str) { dt { "URL" } dd { code { (text(&task, "method")) " " (u) } } }
            dt { "Schedule" } dd { code { (task.get("schedule").and_then(Value::as_str).unwrap_or("none (runs when triggered)")) } " in " (text(&task, "timezone")) }
            dt { "Timeout" } dd { (num(&task, "timeout_seconds").unwrap_or(0)) " s" }
            dt { "Retries" } dd { (num(&task, "retry_count").unwrap_or(0)) " (backoff " (num(&task, "retry_backoff_seconds").unwrap_or(0)) " s)" }
            dt { "Version" } dd #task-version { (num(&task, "version").unwrap_or(0)) }
            dt { "Fired" } dd { (num(&task, "fire_count").unwrap_or(0)) " ticks, " (num(&task, "skipped_ticks").unwrap_or(0)) " skipped" }
        }
        @if let Some(preview) = &preview {
            h2 { "Next fire times (" (text(&task, "timezone")) ")" }
            @match preview {
                Ok(p) => ol #next-fires {
                    @for t in p.get("fire_times").and_then(Value::as_array).into_iter().flatten() { li { (layout::zoned_time(t, text(&task, "timezone"))) } }
                },
                Err(e) => (layout::failure("the next fire times", e)),
            }
        }
        h2 { "Runs" }
        @match &runs {
            Ok(r) => {
                (runs_table(&r["items"], false))
                (pager(&format!("/ui/tasks/{id}"), &[], num(r, "page").unwrap_or(1), num(r, "total").unwrap_or(0), 20))
            }
            Err(e) => (layout::failure("the runs", e)),
        }
    };
    layout::render(&ui.core, &s, Page { title: format!("Task {id}"), nav: Nav::Tasks, controls: html! {}, live })
}

/// A table of runs (with their task's id when `with_task`).
pub fn runs_table(items: &Value, with_task: bool) -> Markup {
    let items = items.as_array().cloned().unwrap_or_default();
    html! {
        table #runs {
            caption.visually-hidden { "Runs" }
            thead { tr {
                th scope="col" { "Run" }
                @if with_task { th scope="col" { "Task" } }
                th scope="col" { "State" } th scope="col" { "Trigger" } th scope="col" { "Attempt" }
                th scope="col" { "Worker" } th scope="col" { "Created" } th scope="col" { "Duration" }
            } }
            tbody {
                @for r in &items {
                    @let id = num(r, "id").unwrap_or(0);
                    tr data-run-id=(id) {
                        td { a.run-link href={ "/ui/runs/" (id) } { "#" (id) } }
                        @if with_task { td { a href={ "/ui/tasks/" (num(r, "task_id").unwrap_or(0)) } { "task " (num(r, "task_id").unwrap_or(0)) } } }
                        td.run-status data-status=(text(r, "status")) { (badge(text(r, "status"))) }
                        td { (text(r, "trigger")) }
                        td { (num(r, "attempt").unwrap_or(0)) }
                        td { (r.get("worker_id").and_then(Value::as_str).unwrap_or("—")) }
                        td { (time(&r["created_at"])) }
                        td { (layout::duration(num(r, "duration_ms"))) }
                    }
                }
                @if items.is_empty() { tr { td colspan="8" .muted { "No runs." } } }
            }
        }
    }
}

/// The fields the create and edit forms carry, as the user typed them.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct TaskForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    executor: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    timeout_seconds: String,
    #[serde(default)]
    retry_count: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    version: String,
}

impl TaskForm {
    fn from_task(t: &Value) -> TaskForm {
        let n = |k: &str| num(t, k).map(|v| v.to_string()).unwrap_or_default();
        TaskForm {
            name: text(t, "name").into(),
            executor: text(t, "executor").into(),
            command: text(t, "command").into(),
            url: text(t, "url").into(),
            method: text(t, "method").into(),
            schedule: text(t, "schedule").into(),
            timezone: text(t, "timezone").into(),
            timeout_seconds: n("timeout_seconds"),
            retry_count: n("retry_count"),
            tags: t
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            version: n("version"),
        }
    }

    /// The API body: numbers where the field is a number (anything else is passed as
    /// typed, for the API to name the field it cannot take), empty optional fields null.
    fn body(&self) -> Value {
        let opt = |v: &str| if v.trim().is_empty() { Value::Null } else { json!(v.trim()) };
        let number = |v: &str| v.trim().parse::<u64>().map_or_else(|_| json!(v.trim()), |n| json!(n));
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name.trim()));
        m.insert("executor".into(), json!(self.executor));
        m.insert("command".into(), opt(&self.command));
        m.insert("schedule".into(), opt(&self.schedule));
        if !self.timezone.trim().is_empty() {
            m.insert("timezone".into(), json!(self.timezone.trim()));
        }
        if !self.timeout_seconds.trim().is_empty() {
            m.insert("timeout_seconds".into(), number(&self.timeout_seconds));
        }
        if !self.retry_count.trim().is_empty() {
            m.insert("retry_count".into(), number(&self.retry_count));
        }
        if self.executor == "http" {
            m.insert("url".into(), opt(&self.url));
            m.insert("method".into(), opt(&self.method));
        }
        let tags: Vec<&str> = self.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        m.insert("tags".into(), json!(tags));
        Value::Object(m)
    }
}

fn task_form(s: &Session, action: &str, f: &TaskForm, editing: bool) -> Markup {
    let field = |id: &str, label: &str, value: &str, hint: &str| {
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) name=(id) type="text" value=(value) aria-describedby=[(!hint.is_empty()).then(|| format!("{id}-hint"))];
                @if !hint.is_empty() { small id={ (id) "-hint" } { (hint) } }
            }
        }
    };
    html! {
        form #task-form.write.task-form method="post" action=(action) {
            (layout::csrf(s))
            @if editing { input type="hidden" name="version" value=(f.version); }
            (field("name", "Name", &f.name, ""))
            div.field {
                label for="executor" { "Executor" }
                select #executor name="executor" {
                    @for e in ["shell", "http", "python"] { option value=(e) selected[f.executor == e] { (e) } }
                }
            }
            div.field {
                label for="command" { "Command (shell) or script path (python)" }
                textarea #command name="command" rows="3" { (f.command) }
            }
            (field("url", "URL (http)", &f.url, ""))
            (field("method", "HTTP method (http)", &f.method, "GET when empty"))
            (field("schedule", "Schedule", &f.schedule, "cron, e.g. */5 * * * *; empty: runs only when triggered"))
            (field("timezone", "Time zone", &f.timezone, "IANA name, e.g. Europe/Berlin; empty: the cluster's default"))
            (field("timeout_seconds", "Timeout (seconds)", &f.timeout_seconds, ""))
            (field("retry_count", "Retries", &f.retry_count, ""))
            (field("tags", "Worker tags", &f.tags, "comma-separated; a worker must carry all of them"))
            button #task-submit type="submit" { @if editing { "Save" } @else { "Create" } }
        }
    }
}

fn form_page(ui: &Ui, s: &Session, title: String, form: Markup, error: Option<Markup>) -> Response {
    let controls = html! { @if let Some(e) = error { (e) } (form) };
    // A form is not refreshed under the user's hands: its live part is empty.
    layout::render(&ui.core, s, Page { title, nav: Nav::Tasks, controls, live: html! {} })
}

async fn new_form(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let f = TaskForm { executor: "shell".into(), ..TaskForm::default() };
    form_page(&ui, &s, "New task".into(), task_form(&s, "/ui/tasks/new", &f, false), None)
}

async fn create(State(ui): State<Ui>, Extension(s): Extension<Session>, Form(f): Form<TaskForm>) -> Response {
    let answer = ui.call(&s, Method::POST, "/api/tasks", Some(&f.body()), None).await;
    if answer.ok() {
        let id = num(&answer.body["data"], "id").unwrap_or(0);
        return ui.redirect_with(&format!("/ui/tasks/{id}"), Flash::ok(format!("Task {id} created.")));
    }
    let error = html! { p #form-error.flash.error role="alert" { "Not created: " (answer.message()) } };
    form_page(&ui, &s, "New task".into(), task_form(&s, "/ui/tasks/new", &f, false), Some(error))
}

async fn edit_form(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    match ui.get(&s, &format!("/api/tasks/{id}")).await {
        Ok(t) => {
            let f = TaskForm::from_task(&t);
            form_page(
                &ui,
                &s,
                format!("Edit task {id}"),
                task_form(&s, &format!("/ui/tasks/{id}/edit"), &f, true),
                None,
            )
        }
        Err(e) => {
            form_page(&ui, &s, format!("Edit task {id}"), html! {}, Some(layout::failure(&format!("task {id}"), &e)))
        }
    }
}

async fn update(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path(id): Path<u64>,
    Form(f): Form<TaskForm>,
) -> Response {
    let Ok(version) = f.version.parse::<u64>() else {
        return ui.redirect_with(&format!("/ui/tasks/{id}/edit"), Flash::error("The form had no version; edit again."));
    };
    let answer = ui.call(&s, Method::PUT, &format!("/api/tasks/{id}"), Some(&f.body()), Some(version)).await;
    if answer.ok() {
        let v = num(&answer.body["data"], "version").unwrap_or(0);
        return ui
            .redirect_with(&format!("/ui/tasks/{id}"), Flash::ok(format!("Saved: task {id} is now at version {v}.")));
    }
    let error = if answer.status == axum::http::StatusCode::PRECONDITION_FAILED {
        html! {
            div #conflict.flash.error role="alert" {
                p { "Not saved: this task was changed by someone else since you opened the form (you edited version "
                    (version) "). Your edits are below; "
                    a href={ "/ui/tasks/" (id) } { "see the current task" } ", then edit it again." }
            }
        }
    } else {
        html! { p #form-error.flash.error role="alert" { "Not saved: " (answer.message()) } }
    };
    form_page(&ui, &s, format!("Edit task {id}"), task_form(&s, &format!("/ui/tasks/{id}/edit"), &f, true), Some(error))
}

async fn delete_confirm(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    let name = ui.get(&s, &format!("/api/tasks/{id}")).await.map(|t| text(&t, "name").to_string());
    let controls = match name {
        Ok(name) => html! {
            p { "Delete task " strong { (name) } " (" (id) ") and its run history? This cannot be undone." }
            form.write method="post" action={ "/ui/tasks/" (id) "/delete" } {
                (layout::csrf(&s))
                button #confirm-delete.danger type="submit" { "Delete" }
                " " a href={ "/ui/tasks/" (id) } { "Cancel" }
            }
        },
        Err(e) => layout::failure(&format!("task {id}"), &e),
    };
    layout::render(&ui.core, &s, Page { title: format!("Delete task {id}"), nav: Nav::Tasks, controls, live: html! {} })
}

async fn delete(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    let answer = ui.call(&s, Method::DELETE, &format!("/api/tasks/{id}"), None, None).await;
    if answer.ok() {
        ui.redirect_with("/ui/tasks", Flash::ok(format!("Task {id} deleted.")))
    } else {
        ui.redirect_with(&format!("/ui/tasks/{id}"), Flash::error(format!("Not deleted: {}", answer.message())))
    }
}

/// trigger, pause, resume: one POST to the API each.
async fn act(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path((id, action)): Path<(u64, String)>,
) -> Response {
    if !matches!(action.as_str(), "trigger" | "pause" | "resume") {
        return (axum::http::StatusCode::NOT_FOUND, format!("no action {action:?}")).into_response();
    }
    let answer = ui.call(&s, Method::POST, &format!("/api/tasks/{id}/{action}"), None, None).await;
    let back = format!("/ui/tasks/{id}");
    if !answer.ok() {
        return ui.redirect_with(&back, Flash::error(format!("{action} refused: {}", answer.message())));
    }
    let done = match action.as_str() {
        "trigger" => format!("Run {} queued.", num(&answer.body["data"], "id").unwrap_or(0)),
        "pause" => "Paused: no tick fires until it is resumed.".into(),
        _ => "Resumed.".into(),
    };
    ui.redirect_with(&back, Flash::ok(done))
}
