//! `/api/tasks`: create, list, get, update, delete.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Extension;
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::{idempotency_key, if_match, json_body, parse_id, ApiError, Consistency, Envelope, Reply};
use crate::config::Role;
use crate::model::{FieldError, TaskField, TaskSpec, TaskStatus, TaskView};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome, Response};
use crate::scheduler::cron::{parse_timezone, Schedule};

pub fn routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, update_task, delete_task))
        .routes(routes!(pause_task))
        .routes(routes!(resume_task))
}

/// One page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    /// Tasks that match; with `total_exact` false, at least this many (a search stops
    /// counting 1,000 matches past the page it returns).
    pub total: u64,
    /// Whether `total` is the exact count: always, but for a search with more than 1,000
    /// matches past its page.
    pub total_exact: bool,
    pub page: u64,
    pub size: u64,
}

/// Checks what `apply` cannot (it may not read time-zone data): the cron expression and
/// the time zone of the fields being written.
fn validate_schedule_fields(fields: &[TaskField]) -> Result<(), ApiError> {
    for f in fields {
        match f {
            TaskField::Schedule(Some(expr)) => {
                Schedule::parse(expr).map_err(|e| ApiError::InvalidField(FieldError::new("schedule", e)))?;
            }
            TaskField::Timezone(tz) => {
                parse_timezone(tz).map_err(|e| ApiError::InvalidField(FieldError::new("timezone", e)))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A task as the API shows it, with its next fire time evaluated here.
fn view(task: crate::model::Task) -> TaskView {
    let next = crate::scheduler::firing::next_fire_at(&task);
    TaskView::new(task, next)
}

fn task_reply(resp: Response, created: bool) -> Result<Reply<TaskView>, ApiError> {
    match resp.result? {
        Outcome::Task(task) => {
            let version = task.version;
            let view = view(*task);
            let reply = if created { Reply::created(view) } else { Reply::ok(view) };
            Ok(reply.etag(version))
        }
        other => Err(ApiError::Internal(format!("unexpected apply outcome {other:?}"))),
    }
}

/// Create a task.
#[utoipa::path(
    post, path = "/api/tasks", tag = "tasks",
    request_body(content = TaskSpec, description = "name and executor are required; every other field has a default"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, scoped to the caller")),
    responses(
        (status = 201, description = "created; ETag carries the version", body = Envelope<TaskView>),
        (status = 400, description = "malformed JSON or an invalid field (named in the message)"),
        (status = 401, description = "missing or invalid credential"),
        (status = 409, description = "a task with this name exists"),
        (status = 413, description = "body too large"),
        (status = 422, description = "Idempotency-Key reused with another request"),
        (status = 503, description = "no leader reachable; nothing was written"),
        (status = 504, description = "outcome unknown; retry with the same Idempotency-Key"),
    ),
    security(("bearer" = []))
)]
async fn create_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<TaskView>, ApiError> {
    let (value, raw) = json_body(body)?;
    let fields = TaskField::parse_object(value)?;
    validate_schedule_fields(&fields)?;
    let spec = TaskSpec::from_fields(fields, &core.config.scheduler.default_timezone)?;
    let idem = idempotency_key(&headers, &caller, &method, "/api/tasks", &raw)?;
    let resp =
        core.write(&caller.principal(), core.request(Command::CreateTask { spec: Box::new(spec) }, idem)).await?;
    task_reply(resp, true)
}

/// List tasks in id order.
#[utoipa::path(
    get, path = "/api/tasks", tag = "tasks",
    params(
        ("page" = Option<u64>, Query, description = "1-based page, default 1"),
        ("size" = Option<u64>, Query, description = "page size, default 20, at most 100"),
        ("status" = Option<String>, Query, description = "active, paused or disabled"),
        ("search" = Option<String>, Query, description = "substring of the name"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or local"),
    ),
    responses((status = 200, body = Envelope<TaskPage>), (status = 400), (status = 401), (status = 503)),
    security(("bearer" = []))
)]
async fn list_tasks(
    State(core): State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<TaskPage>, ApiError> {
    let (page, size) = super::page_and_size(&q)?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<TaskStatus>(serde_json::Value::String(s.clone()))
                .map_err(|_| ApiError::BadRequest(format!("status: {s:?} is not one of active, paused, disabled")))?,
        ),
    };
    // An empty needle matches every name: the same answer as no search, from the cheaper path.
    let search = q.get("search").filter(|s| !s.is_empty()).map(|s| s.to_lowercase());
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let skip = (page - 1).saturating_mul(size);
    // Unfiltered: count and skip by key; by status: the status index and its counter; a
    // search: the name trigram index (storage/indexes.rs). Only the page is decoded.
    let (tasks, total, total_exact) = match (status, search) {
        (None, None) => with_exact(core.store.task_page(skip, size)?),
        (Some(status), None) => with_exact(core.store.tasks_with_status(status, skip, size)?),
        (status, Some(needle)) => {
            let found = core.store.search_tasks(&needle, status, skip, size)?;
            (found.items, found.total, found.exact)
        }
    };
    let items = tasks.into_iter().map(view).collect();
    Ok(Reply::ok(TaskPage { items, total, total_exact, page, size }))
}

fn with_exact((tasks, total): crate::storage::TaskPage) -> (Vec<crate::model::Task>, u64, bool) {
    (tasks, total, true)
}

/// Get one task.
#[utoipa::path(
    get, path = "/api/tasks/{task_id}", tag = "tasks",
    params(("task_id" = u64, Path), ("consistency" = Option<String>, Query, description = "linearizable (default) or local")),
    responses((status = 200, body = Envelope<TaskView>), (status = 400), (status = 401), (status = 404), (status = 503)),
    security(("bearer" = []))
)]
async fn get_task(
    State(core): State<Arc<NodeCore>>,
    Path(task_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<TaskView>, ApiError> {
    let id = parse_id("task", &task_id)?;
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let task = core.store.task(id)?.ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    let version = task.version;
    Ok(Reply::ok(view(task)).etag(version))
}

/// Update some fields of a task.
#[utoipa::path(
    put, path = "/api/tasks/{task_id}", tag = "tasks",
    params(
        ("task_id" = u64, Path),
        ("If-Match" = Option<String>, Header, description = "apply only if the task's version (ETag) still matches"),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    request_body(content = TaskSpec, description = "any subset of the task's fields"),
    responses(
        (status = 200, body = Envelope<TaskView>), (status = 400), (status = 401), (status = 404),
        (status = 409, description = "the new name is taken"), (status = 412, description = "If-Match failed"),
        (status = 413), (status = 422), (status = 503), (status = 504),
    ),
    security(("bearer" = []))
)]
async fn update_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<TaskView>, ApiError> {
    let id = parse_id("task", &task_id)?;
    let (value, raw) = json_body(body)?;
    let fields = TaskField::parse_object(value)?;
    if fields.is_empty() {
        return Err(ApiError::BadRequest("the body names no field to update".into()));
    }
    validate_schedule_fields(&fields)?;
    let expected_version = if_match(&headers)?;
    let idem = idempotency_key(&headers, &caller, &method, &format!("/api/tasks/{id}"), &raw)?;
    let resp = core
        .write(&caller.principal(), core.request(Command::UpdateTask { id, fields, expected_version }, idem))
        .await?;
    task_reply(resp, false)
}

/// Delete a task.
#[utoipa::path(
    delete, path = "/api/tasks/{task_id}", tag = "tasks",
    params(("task_id" = u64, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 204, description = "deleted"), (status = 401), (status = 404), (status = 412), (status = 503), (status = 504)),
    security(("bearer" = []))
)]
async fn delete_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<()>, ApiError> {
    let id = parse_id("task", &task_id)?;
    let expected_version = if_match(&headers)?;
    let idem = idempotency_key(&headers, &caller, &method, &format!("/api/tasks/{id}"), b"")?;
    let resp =
        core.write(&caller.principal(), core.request(Command::DeleteTask { id, expected_version }, idem)).await?;
    match resp.result? {
        Outcome::TaskDeleted { .. } => Ok(Reply::ok(()).status(StatusCode::NO_CONTENT)),
        other => Err(ApiError::Internal(format!("unexpected apply outcome {other:?}"))),
    }
}

/// Pause a task: it stops firing until resumed. Pausing a disabled task is refused.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/pause", tag = "tasks",
    params(("task_id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = Envelope<TaskView>), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "the task is disabled"), (status = 422), (status = 503), (status = 504),
    ),
    security(("bearer" = []))
)]
async fn pause_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<TaskView>, ApiError> {
    set_status(&core, &caller, &task_id, TaskStatus::Paused, &method, &headers, "pause").await
}

/// Resume a paused task: ticks that passed while it was paused are counted as skipped,
/// never fired. Resuming a disabled task enables it, which only an admin may do.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/resume", tag = "tasks",
    params(("task_id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = Envelope<TaskView>), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "the task is disabled and the caller is not an admin"),
        (status = 422), (status = 503), (status = 504),
    ),
    security(("bearer" = []))
)]
async fn resume_task(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<TaskView>, ApiError> {
    set_status(&core, &caller, &task_id, TaskStatus::Active, &method, &headers, "resume").await
}

async fn set_status(
    core: &NodeCore,
    caller: &Caller,
    task_id: &str,
    status: TaskStatus,
    method: &Method,
    headers: &HeaderMap,
    action: &str,
) -> Result<Reply<TaskView>, ApiError> {
    let id = parse_id("task", task_id)?;
    let may_enable = status == TaskStatus::Active && caller.require(Role::Admin).is_ok();
    let idem = idempotency_key(headers, caller, method, &format!("/api/tasks/{id}/{action}"), b"")?;
    let resp =
        core.write(&caller.principal(), core.request(Command::SetTaskStatus { id, status, may_enable }, idem)).await?;
    task_reply(resp, false)
}
