//! Runs: manual trigger, a task's run history, the newest runs of all tasks, one run,
//! cancel.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::Extension;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::{idempotency_key, parse_id, ApiError, Consistency, Envelope, Reply};
use crate::model::{pending_reason, Run, RunStatus};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome, Response};

pub fn routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new()
        .routes(routes!(trigger_task))
        .routes(routes!(task_runs))
        .routes(routes!(recent_runs))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
}

/// A run as the API shows it: the stored run and, while it is pending, why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    #[serde(flatten)]
    pub run: Run,
    /// Why a pending run is still pending, judged from the workers as they are now (no
    /// eligible worker online, all busy, a retry's backoff); null otherwise.
    pub pending_reason: Option<String>,
}

/// The API's view of `runs`; the workers are read once, and only if a run is pending.
pub fn run_views(core: &NodeCore, runs: Vec<Run>) -> Result<Vec<RunView>, ApiError> {
    let loads = match runs.iter().any(|r| r.status == RunStatus::Pending) {
        true => core.store.worker_loads()?,
        false => Vec::new(),
    };
    let now = chrono::Utc::now();
    Ok(runs.into_iter().map(|run| RunView { pending_reason: pending_reason(&run, &loads, now), run }).collect())
}

pub fn run_view(core: &NodeCore, run: Run) -> Result<RunView, ApiError> {
    Ok(run_views(core, vec![run])?.remove(0))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunView>,
    pub total: u64,
    pub page: u64,
    pub size: u64,
}

fn run_reply(core: &NodeCore, resp: Response) -> Result<RunView, ApiError> {
    match resp.result? {
        Outcome::Run(run) => run_view(core, *run),
        other => Err(ApiError::Internal(format!("unexpected apply outcome {other:?}"))),
    }
}

/// Run a task now (a manual run, queued for a worker).
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/trigger", tag = "runs",
    params(("task_id" = u64, Path), ("Idempotency-Key" = Option<String>, Header, description = "one run per key")),
    responses(
        (status = 201, body = Envelope<RunView>), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "the task is disabled"), (status = 422),
        (status = 429, description = "too many runs are waiting for a worker, or the caller is over its rate; see Retry-After"),
        (status = 503), (status = 504),
    ),
    security(("bearer" = []))
)]
async fn trigger_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<RunView>, ApiError> {
    let task_id = parse_id("task", &task_id)?;
    let idem = idempotency_key(&headers, &caller, &method, &format!("/api/tasks/{task_id}/trigger"), b"")?;
    // An unknown task is left to the write (it answers 404 with the leader's view).
    if let Some(task) = core.store.task(task_id)? {
        super::admission::admit_trigger(&core, &task, idem.as_ref())?;
    }
    let resp = core
        .write(
            &caller.principal(),
            core.request(Command::TriggerRun { task_id, keep_runs: core.config.scheduler.run_history_per_task }, idem),
        )
        .await?;
    Ok(Reply::created(run_reply(&core, resp)?))
}

/// A task's runs, newest first.
#[utoipa::path(
    get, path = "/api/tasks/{task_id}/runs", tag = "runs",
    params(
        ("task_id" = u64, Path),
        ("page" = Option<u64>, Query), ("size" = Option<u64>, Query, description = "at most 100, default 20"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or local"),
    ),
    responses((status = 200, body = Envelope<RunPage>), (status = 400), (status = 401), (status = 404), (status = 503)),
    security(("bearer" = []))
)]
async fn task_runs(
    State(core): State<Arc<NodeCore>>,
    Path(task_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<RunPage>, ApiError> {
    let task_id = parse_id("task", &task_id)?;
    let (page, size) = super::page_and_size(&q)?;
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    if core.store.task(task_id)?.is_none() {
        return Err(ApiError::NotFound(format!("task {task_id} not found")));
    }
    let skip = usize::try_from((page - 1).saturating_mul(size)).unwrap_or(usize::MAX);
    let (items, total) = core.store.runs_of_task(task_id, skip, size as usize)?;
    Ok(Reply::ok(RunPage { items: run_views(&core, items)?, total, page, size }))
}

/// The most runs `GET /api/runs` looks at for one answer: it walks back from the newest,
/// so its cost is bounded however much history is stored.
pub const RECENT_RUNS_SCAN: usize = 10_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct RecentRunPage {
    /// The page of matching runs, newest first.
    pub items: Vec<RunView>,
    /// Matching runs among those looked at.
    pub total: u64,
    pub page: u64,
    pub size: u64,
    /// Runs looked at: every run created since `since` (or every run), up to 10,000.
    pub scanned: u64,
    /// False when the look stopped at its 10,000-run bound before the window's start:
    /// older matches may exist (narrow `since` to see a full count).
    pub complete: bool,
    /// How many of the runs looked at are in each state (whatever `status` filters).
    pub by_status: BTreeMap<String, u64>,
}

/// The newest runs of all tasks, newest first, optionally only some states and only
/// those created since an instant. Looks at no more than the newest 10,000 runs.
#[utoipa::path(
    get, path = "/api/runs", tag = "runs",
    params(
        ("status" = Option<String>, Query, description = "comma-separated run states, e.g. failed,timed_out,lost"),
        ("since" = Option<String>, Query, description = "RFC 3339: only runs created at or after it"),
        ("page" = Option<u64>, Query), ("size" = Option<u64>, Query, description = "at most 100, default 20"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or local"),
    ),
    responses((status = 200, body = Envelope<RecentRunPage>), (status = 400), (status = 401), (status = 503)),
    security(("bearer" = []))
)]
async fn recent_runs(
    State(core): State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<RecentRunPage>, ApiError> {
    let (page, size) = super::page_and_size(&q)?;
    let wanted = match q.get("status").map(String::as_str) {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|s| {
                    RunStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
                        let names: Vec<&str> = RunStatus::ALL.iter().map(|st| st.as_str()).collect();
                        ApiError::BadRequest(format!("status: {s:?} is not one of {}", names.join(", ")))
                    })
                })
                .collect::<Result<Vec<RunStatus>, ApiError>>()?,
        ),
    };
    let since = q
        .get("since")
        .map(|s| {
            // RFC 3339 lets a space stand for `T`; JSON Schema's date-time (what the
            // contract promises) does not, so neither does this.
            let parsed = if s.contains(' ') {
                Err("a T, not a space, between date and time".to_string())
            } else {
                chrono::DateTime::parse_from_rfc3339(s).map_err(|e| e.to_string())
            };
            parsed
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| ApiError::BadRequest(format!("since: {s:?} is not an RFC 3339 time ({e})")))
        })
        .transpose()?;
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let skip = usize::try_from((page - 1).saturating_mul(size)).unwrap_or(usize::MAX);
    let found = core.store.recent_runs(
        since,
        RECENT_RUNS_SCAN,
        |r| wanted.as_ref().is_none_or(|w| w.contains(&r.status)),
        skip,
        size as usize,
    )?;
    Ok(Reply::ok(RecentRunPage {
        items: run_views(&core, found.runs)?,
        total: found.matched,
        page,
        size,
        scanned: found.scanned,
        complete: found.complete,
        by_status: found.by_status.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }))
}

/// One run.
#[utoipa::path(
    get, path = "/api/runs/{run_id}", tag = "runs",
    params(("run_id" = u64, Path), ("consistency" = Option<String>, Query)),
    responses((status = 200, body = Envelope<RunView>), (status = 400), (status = 401), (status = 404), (status = 503)),
    security(("bearer" = []))
)]
async fn get_run(
    State(core): State<Arc<NodeCore>>,
    Path(run_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<RunView>, ApiError> {
    let run_id = parse_id("run", &run_id)?;
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let run = core.store.run(run_id)?.ok_or_else(|| ApiError::NotFound(format!("run {run_id} not found")))?;
    Ok(Reply::ok(run_view(&core, run)?))
}

/// Cancel a run that has not finished.
#[utoipa::path(
    post, path = "/api/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Envelope<RunView>), (status = 401), (status = 403), (status = 404), (status = 409, description = "already finished"), (status = 503), (status = 504)),
    security(("bearer" = []))
)]
async fn cancel_run(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<RunView>, ApiError> {
    let run_id = parse_id("run", &run_id)?;
    let idem = idempotency_key(&headers, &caller, &method, &format!("/api/runs/{run_id}/cancel"), b"")?;
    let resp = core.write(&caller.principal(), core.request(Command::CancelRun { run_id }, idem)).await?;
    Ok(Reply::ok(run_reply(&core, resp)?).message("cancelled"))
}
