//! The dashboard's pages other than tasks: the overview, runs (the live list and one
//! run), workers and the cluster, with their writes (cancel a run, enable or disable a
//! worker, transfer leadership, add or remove a node).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::layout::{self, badge, num, post_button, text, time, Flash, Nav, Page};
use super::tasks::{self, pager, runs_table};
use super::{Session, Ui};

pub fn routes() -> Router<Ui> {
    Router::new()
        .route("/ui/", get(overview))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/cancel", post(cancel_run))
        .route("/ui/workers", get(workers))
        .route("/ui/workers/{id}/{action}", post(worker_action))
        .route("/ui/cluster", get(cluster))
        .route("/ui/cluster/transfer-leader", post(transfer_leader))
        .route("/ui/cluster/nodes", post(add_node))
        .route("/ui/cluster/nodes/{id}/remove", post(remove_node))
        .merge(tasks::routes())
}

/// The outcomes the overview's chart shows, in order, with the states each counts.
const OUTCOMES: [(&str, &[&str]); 6] = [
    ("succeeded", &["succeeded"]),
    ("failed", &["failed"]),
    ("timed_out", &["timed_out"]),
    ("lost", &["lost"]),
    ("cancelled", &["cancelled"]),
    ("unfinished", &["pending", "assigned", "running"]),
];

async fn overview(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // The node's own view (local reads): what this node sees is what an operator asks.
    let hour_uri = format!("/api/runs?since={hour_ago}&size=1&consistency=local");
    let (cluster, status, hour, failures) = tokio::join!(
        ui.get(&s, "/api/cluster"),
        ui.get(&s, "/api/system/status?consistency=local"),
        ui.get(&s, &hour_uri),
        ui.get(&s, "/api/runs?status=failed,timed_out,lost&size=10&consistency=local"),
    );
    let live = html! {
        div.cards {
            @match &cluster {
                Ok(c) => {
                    section.card aria-labelledby="h-leader" {
                        h2 #h-leader { "Leader" }
                        p.big #leader { @match num(c, "leader_id") { Some(id) => { "node " (id) }, None => { "none (election under way)" } } }
                        p { "term " span #term { (num(c, "term").unwrap_or(0)) } }
                    }
                }
                Err(e) => (layout::failure("the cluster", e)),
            }
            @match &status {
                Ok(st) => {
                    section.card aria-labelledby="h-workers" {
                        h2 #h-workers { "Workers online" }
                        p.big #workers-online { (num(&st["workers"], "online").unwrap_or(0)) " / " (num(&st["workers"], "total").unwrap_or(0)) }
                        p { "runs today: " (num(st, "runs_today").unwrap_or(0)) }
                    }
                    section.card aria-labelledby="h-tasks" {
                        h2 #h-tasks { "Tasks" }
                        dl #task-counts.counts {
                            @for k in ["total", "active", "paused", "disabled", "running"] {
                                dt { (k) } dd data-count=(k) { (num(&st["tasks"], k).unwrap_or(0)) }
                            }
                        }
                    }
                }
                Err(e) => (layout::failure("the status", e)),
            }
        }
        @if let Ok(c) = &cluster { h2 { "Members" } (members_table(&s, c, false)) }
        h2 { "Runs created in the last hour" }
        @match &hour {
            Ok(h) => (outcome_chart(h)),
            Err(e) => (layout::failure("the last hour's runs", e)),
        }
        h2 { "Recent failures" }
        div #recent-failures {
            @match &failures {
                Ok(f) => (runs_table(&f["items"], true)),
                Err(e) => (layout::failure("the failures", e)),
            }
        }
    };
    layout::render(&ui.core, &s, Page { title: "Overview".into(), nav: Nav::Overview, controls: html! {}, live })
}

/// Runs of the last hour by outcome, as horizontal bars (SVG, no script).
fn outcome_chart(h: &Value) -> Markup {
    let by = &h["by_status"];
    let counts: Vec<(&str, u64)> = OUTCOMES
        .iter()
        .map(|(label, states)| (*label, states.iter().map(|st| num(by, st).unwrap_or(0)).sum()))
        .collect();
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let (row, width, label_w) = (26u64, 560u64, 110u64);
    let height = row * counts.len() as u64 + 4;
    let summary: Vec<String> = counts.iter().map(|(l, n)| format!("{l} {n}")).collect();
    let complete = h.get("complete").and_then(Value::as_bool).unwrap_or(true);
    html! {
        svg #runs-chart role="img" aria-labelledby="runs-chart-title" viewBox={ "0 0 " (width) " " (height) } width=(width) height=(height) {
            title #runs-chart-title { "Runs created in the last hour by outcome: " (summary.join(", ")) }
            @for (i, (label, n)) in counts.iter().enumerate() {
                @let y = i as u64 * row + 2;
                @let w = (n * (width - label_w - 70) / max).max(u64::from(*n > 0) * 2);
                text.chart-label x="0" y=(y + 17) { (label) }
                rect class={ "bar b-" (label) } x=(label_w) y=(y + 3) width=(w) height=(row - 8) {}
                text.chart-count x=(label_w + w + 6) y=(y + 17) data-outcome=(label) { (n) }
            }
        }
        @if !complete { p.muted { "Counted over the newest 10,000 runs only: more were created in the hour." } }
    }
}

fn members_table(s: &Session, c: &Value, admin_actions: bool) -> Markup {
    let leader = num(c, "leader_id");
    let members = c.get("members").and_then(Value::as_array).cloned().unwrap_or_default();
    html! {
        table #members {
            caption.visually-hidden { "Cluster members" }
            thead { tr { th scope="col" { "Node" } th scope="col" { "Role" } th scope="col" { "Membership" }
                th scope="col" { "Reachable" } th scope="col" { "Commit" } th scope="col" { "Applied" } th scope="col" { "HTTP" }
                @if admin_actions { th scope="col" { "Actions" } } } }
            tbody {
                @for m in &members {
                    @let id = num(m, "id").unwrap_or(0);
                    @let st = &m["status"];
                    tr data-node-id=(id) {
                        td { "node " (id) @if Some(id) == leader { " " span.badge.s-leader { "leader" } } }
                        td { (st.get("role").and_then(Value::as_str).unwrap_or("unknown")) }
                        td { (text(m, "membership")) }
                        td { @if m.get("reachable").and_then(Value::as_bool).unwrap_or(false) { "yes" } @else { (badge("unreachable")) } }
                        td { (num(st, "commit_index").map_or("—".into(), |v| v.to_string())) }
                        td { (num(st, "applied_index").map_or("—".into(), |v| v.to_string())) }
                        td { @match text(m, "http_addr") { "" => "—", addr => code { (addr) } } }
                        @if admin_actions {
                            td { (post_button(s, &format!("/ui/cluster/nodes/{id}/remove"), &format!("remove-{id}"), "Remove")) }
                        }
                    }
                }
            }
        }
    }
}

async fn runs(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let status = q.get("status").map(String::as_str).unwrap_or("");
    let page = q.get("page").map(String::as_str).unwrap_or("1");
    let states = ["pending", "assigned", "running", "succeeded", "failed", "timed_out", "cancelled", "lost"];
    let controls = html! {
        form #run-filter.filters method="get" action="/ui/runs" {
            label for="status" { "State" }
            select #status name="status" {
                option value="" selected[status.is_empty()] { "any" }
                @for st in states { option value=(st) selected[status == st] { (st) } }
            }
            button #filter-submit type="submit" { "Filter" }
        }
    };
    let pairs: Vec<(&str, &str)> =
        [("status", status), ("page", page), ("size", "20")].into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let uri = format!("/api/runs?{}&consistency=local", serde_urlencoded::to_string(&pairs).unwrap_or_default());
    let live = match ui.get(&s, &uri).await {
        Ok(r) => html! {
            p.muted { (num(&r, "total").unwrap_or(0)) " matching among the newest " (num(&r, "scanned").unwrap_or(0)) " runs" }
            (runs_table(&r["items"], true))
            (pager("/ui/runs", &[("status", status)], num(&r, "page").unwrap_or(1), num(&r, "total").unwrap_or(0), 20))
        },
        Err(e) => layout::failure("the runs", &e),
    };
    layout::render(&ui.core, &s, Page { title: "Runs".into(), nav: Nav::Runs, controls, live })
}

async fn run(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    let live = match ui.get(&s, &format!("/api/runs/{id}")).await {
        Ok(r) => {
            let status = text(&r, "status");
            let task = num(&r, "task_id").unwrap_or(0);
            let finished = matches!(status, "succeeded" | "failed" | "timed_out" | "cancelled" | "lost");
            html! {
                @if !finished && s.may("POST", "/api/runs/{run_id}/cancel") {
                    div.actions { (post_button(&s, &format!("/ui/runs/{id}/cancel"), "cancel", "Cancel run")) }
                }
                dl.spec {
                    dt { "State" } dd #run-status { (status) }
                    @if let Some(why) = r.get("pending_reason").and_then(Value::as_str) { dt { "Waiting because" } dd { (why) } }
                    dt { "Task" } dd { a #run-task href={ "/ui/tasks/" (task) } { "task " (task) } }
                    dt { "Trigger" } dd { (text(&r, "trigger")) }
                    dt { "Attempt" } dd { (num(&r, "attempt").unwrap_or(0)) @if let Some(p) = num(&r, "retry_of") { " (retry of " a href={ "/ui/runs/" (p) } { "#" (p) } ")" } }
                    dt { "Worker" } dd { (r.get("worker_id").and_then(Value::as_str).unwrap_or("—")) }
                    dt { "Scheduled for" } dd { (time(&r["scheduled_at"])) }
                    dt { "Started" } dd { (time(&r["started_at"])) }
                    dt { "Finished" } dd { (time(&r["finished_at"])) }
                    dt { "Duration" } dd { (layout::duration(num(&r, "duration_ms"))) }
                    dt { "Exit code" } dd { (r.get("exit_code").and_then(Value::as_i64).map_or("—".into(), |c| c.to_string())) }
                    @if let Some(code) = num(&r, "http_status") { dt { "HTTP status" } dd { (code) } }
                    @if let Some(e) = r.get("error").and_then(Value::as_str) { dt { "Error" } dd #run-error { (e) } }
                }
                h2 { "Output" }
                pre #run-output tabindex="0" { (text(&r, "output")) }
            }
        }
        Err(e) => layout::failure(&format!("run {id}"), &e),
    };
    layout::render(&ui.core, &s, Page { title: format!("Run {id}"), nav: Nav::Runs, controls: html! {}, live })
}

async fn cancel_run(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    let answer = ui.call(&s, Method::POST, &format!("/api/runs/{id}/cancel"), None, None).await;
    let flash = if answer.ok() {
        Flash::ok(format!("Run {id} cancelled."))
    } else {
        Flash::error(format!("Not cancelled: {}", answer.message()))
    };
    ui.redirect_with(&format!("/ui/runs/{id}"), flash)
}

async fn workers(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let may_update = s.may("PUT", "/api/workers/{worker_id}");
    let live = match ui.get(&s, "/api/workers?consistency=local").await {
        Ok(w) => {
            let items =
                w.as_array().cloned().or_else(|| w.get("items").and_then(Value::as_array).cloned()).unwrap_or_default();
            html! {
                table #workers {
                    caption.visually-hidden { "Workers" }
                    thead { tr { th scope="col" { "Worker" } th scope="col" { "Status" } th scope="col" { "Enabled" }
                        th scope="col" { "Slots used" } th scope="col" { "Tags" } th scope="col" { "Last heartbeat" }
                        @if may_update { th scope="col" { "Actions" } } } }
                    tbody {
                        @for wk in &items {
                            @let id = text(wk, "id");
                            @let enabled = wk.get("enabled").and_then(Value::as_bool).unwrap_or(true);
                            tr data-worker-id=(id) {
                                td { (id) @if text(wk, "name") != id { " (" (text(wk, "name")) ")" } }
                                td { (badge(text(wk, "status"))) }
                                td { @if enabled { "yes" } @else { (badge("disabled")) } }
                                td { (num(wk, "current_tasks").unwrap_or(0)) " / " (num(wk, "max_tasks").unwrap_or(0)) }
                                td { (wk.get("tags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                                td { (time(&wk["last_heartbeat"])) }
                                @if may_update {
                                    td {
                                        @if enabled { (post_button(&s, &format!("/ui/workers/{id}/disable"), &format!("disable-{id}"), "Disable")) }
                                        @else { (post_button(&s, &format!("/ui/workers/{id}/enable"), &format!("enable-{id}"), "Enable")) }
                                    }
                                }
                            }
                        }
                        @if items.is_empty() { tr { td colspan="7" .muted { "No worker has registered." } } }
                    }
                }
            }
        }
        Err(e) => layout::failure("the workers", &e),
    };
    layout::render(&ui.core, &s, Page { title: "Workers".into(), nav: Nav::Workers, controls: html! {}, live })
}

async fn worker_action(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return ui.redirect_with("/ui/workers", Flash::error(format!("no worker action {action:?}"))),
    };
    let path = format!("/api/workers/{}", utf8_path_segment(&id));
    let answer = ui.call(&s, Method::PUT, &path, Some(&json!({ "enabled": enabled })), None).await;
    let flash = if answer.ok() {
        Flash::ok(format!("Worker {id} {action}d."))
    } else {
        Flash::error(format!("Not {action}d: {}", answer.message()))
    };
    ui.redirect_with("/ui/workers", flash)
}

/// A path segment percent-encoded (worker ids are the agents' choice).
fn utf8_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn cluster(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let admin = s.may("POST", "/api/cluster/transfer-leader");
    let view = ui.get(&s, "/api/cluster").await;
    let controls = match (&view, admin) {
        (Ok(c), true) => {
            let ids: Vec<u64> =
                c.get("members").and_then(Value::as_array).into_iter().flatten().filter_map(|m| num(m, "id")).collect();
            html! {
                div.admin-forms {
                    form #transfer-leader.write method="post" action="/ui/cluster/transfer-leader" {
                        (layout::csrf(&s))
                        label for="to" { "Transfer leadership to" }
                        select #to name="to" { @for id in &ids { option value=(id) { "node " (id) } } }
                        button #transfer-submit type="submit" { "Transfer" }
                    }
                    form #add-node.write method="post" action="/ui/cluster/nodes" {
                        (layout::csrf(&s))
                        label for="node-id" { "Add node id" }
                        input #node-id name="id" type="text" inputmode="numeric" required;
                        label for="node-rpc" { "RPC address" }
                        input #node-rpc name="rpc_addr" type="text" placeholder="10.0.0.4:7000" required;
                        label for="node-http" { "HTTP address" }
                        input #node-http name="http_addr" type="text" placeholder="10.0.0.4:8080" required;
                        button #add-node-submit type="submit" { "Add" }
                    }
                }
            }
        }
        _ => html! {},
    };
    let live = match &view {
        Ok(c) => html! {
            p { "Cluster " code { (text(c, "cluster_id")) } ", term " (num(c, "term").unwrap_or(0)) ", leader "
                @match num(c, "leader_id") { Some(id) => { "node " (id) }, None => { "none" } } }
            (members_table(&s, c, admin))
        },
        Err(e) => layout::failure("the cluster", e),
    };
    layout::render(&ui.core, &s, Page { title: "Cluster".into(), nav: Nav::Cluster, controls, live })
}

#[derive(serde::Deserialize)]
struct TransferForm {
    #[serde(default)]
    to: String,
}

async fn transfer_leader(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Form(f): Form<TransferForm>,
) -> Response {
    let to = f.to.trim().parse::<u64>().map_or_else(|_| json!(f.to), |n| json!(n));
    let answer = ui.call(&s, Method::POST, "/api/cluster/transfer-leader", Some(&json!({ "to": to })), None).await;
    let flash = if answer.ok() {
        Flash::ok(format!("Leadership transferred to node {}.", f.to))
    } else {
        Flash::error(format!("Not transferred: {}", answer.message()))
    };
    ui.redirect_with("/ui/cluster", flash)
}

#[derive(serde::Deserialize)]
struct AddNodeForm {
    #[serde(default)]
    id: String,
    #[serde(default)]
    rpc_addr: String,
    #[serde(default)]
    http_addr: String,
}

async fn add_node(State(ui): State<Ui>, Extension(s): Extension<Session>, Form(f): Form<AddNodeForm>) -> Response {
    let id = f.id.trim().parse::<u64>().map_or_else(|_| json!(f.id), |n| json!(n));
    let body = json!({ "id": id, "rpc_addr": f.rpc_addr.trim(), "http_addr": f.http_addr.trim() });
    let answer = ui.call(&s, Method::POST, "/api/cluster/nodes", Some(&body), None).await;
    let flash = if answer.ok() {
        Flash::ok(format!("Node {} added.", f.id))
    } else {
        Flash::error(format!("Not added: {}", answer.message()))
    };
    ui.redirect_with("/ui/cluster", flash)
}

async fn remove_node(State(ui): State<Ui>, Extension(s): Extension<Session>, Path(id): Path<u64>) -> Response {
    let answer = ui.call(&s, Method::DELETE, &format!("/api/cluster/nodes/{id}"), None, None).await;
    let flash = if answer.ok() {
        Flash::ok(format!("Node {id} removed."))
    } else {
        Flash::error(format!("Not removed: {}", answer.message()))
    };
    ui.redirect_with("/ui/cluster", flash)
}
