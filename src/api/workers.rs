//! `/api/workers`: the seed's list, detail, update and heartbeat, plus what an agent
//! needs beyond the seed: register, poll its assignments, report on a run.
//!
//! A caller with the `worker` role acts only for the worker whose id is its key's name;
//! an admin may act for any worker (the agent embedded in a node uses the node's key).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::Extension;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::runs::RunView;
use super::{parse_id, typed_json_body, ApiError, Consistency, Envelope, Reply};
use crate::config::Role;
use crate::model::worker::validate_worker_id;
use crate::model::{HeartbeatAck, HeartbeatBody, Seen, SystemInfo};
use crate::model::{Liveness, Registration, RunStatus, TaskSpec, Worker, WorkerUpdate};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome, Response, RunReport};

pub fn routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new()
        .routes(routes!(list_workers))
        .routes(routes!(get_worker, update_worker))
        .routes(routes!(heartbeat))
        .routes(routes!(register))
        .routes(routes!(assignments))
        .routes(routes!(report))
}

/// A worker as the API shows it (the seed's fields).
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub name: String,
    /// `online`, `offline`, or `busy` (online with every slot taken).
    pub status: String,
    /// When the leader last heard from it; null when no leader answers or it has not
    /// heard from the worker since it took over.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Runs holding one of its slots (replicated assignments).
    pub current_tasks: u32,
    /// The slots and tags placement uses: what the agent registered, limited by what an
    /// admin set (an admin's `PUT` caps; it cannot grant what the agent does not claim).
    pub max_tasks: u32,
    pub tags: Vec<String>,
    /// What the agent registered.
    pub registered_max_tasks: u32,
    pub registered_tags: Vec<String>,
    /// An admin's caps (`PUT /api/workers/{id}`); null when none was set.
    pub admin_max_tasks: Option<u32>,
    pub admin_tags: Option<Vec<String>>,
    pub enabled: bool,
    pub system_info: Option<SystemInfo>,
    pub registered_at: DateTime<Utc>,
    /// Bumped by every registration; only the agent holding the latest may act.
    pub epoch: u64,
}

fn view(core: &NodeCore, w: Worker, seen: Option<&Seen>) -> Result<WorkerView, ApiError> {
    let current = core.store.assignments_of(&w.id)?.len() as u32;
    let status = match w.liveness {
        Liveness::Offline => "offline",
        Liveness::Online if current >= w.max_tasks => "busy",
        Liveness::Online => "online",
    };
    Ok(WorkerView {
        status: status.to_string(),
        last_heartbeat: seen.map(|s| s.at),
        current_tasks: current,
        system_info: seen.and_then(|s| s.body.system_info.clone()),
        id: w.id,
        name: w.name,
        max_tasks: w.max_tasks,
        tags: w.tags,
        registered_max_tasks: w.registered_max_tasks,
        registered_tags: w.registered_tags,
        admin_max_tasks: w.admin_max_tasks,
        admin_tags: w.admin_tags,
        enabled: w.enabled,
        registered_at: w.registered_at,
        epoch: w.epoch,
    })
}

/// Only the worker itself (its key's name is its id) or an admin may act for it.
fn act_for(caller: &Caller, worker: &str) -> Result<(), ApiError> {
    validate_worker_id(worker)?;
    super::access::own_worker(caller, worker)
}

fn worker_reply(resp: Response) -> Result<Worker, ApiError> {
    match resp.result? {
        Outcome::Worker(w) => Ok(*w),
        other => Err(ApiError::Internal(format!("unexpected apply outcome {other:?}"))),
    }
}

/// All workers, in id order.
#[utoipa::path(
    get, path = "/api/workers", tag = "workers",
    responses((status = 200, body = Envelope<Vec<WorkerView>>), (status = 401), (status = 503)),
    security(("bearer" = []))
)]
async fn list_workers(
    State(core): State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<Vec<WorkerView>>, ApiError> {
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let seen = core.worker_heartbeats().await;
    let workers = core.store.workers()?;
    let views = workers.into_iter().map(|w| {
        let s = seen.get(&w.id);
        view(&core, w, s)
    });
    Ok(Reply::ok(views.collect::<Result<_, _>>()?))
}

/// One worker.
#[utoipa::path(
    get, path = "/api/workers/{worker_id}", tag = "workers",
    params(("worker_id" = String, Path)),
    responses((status = 200, body = Envelope<WorkerView>), (status = 400), (status = 401), (status = 403), (status = 404), (status = 503)),
    security(("bearer" = []))
)]
async fn get_worker(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<WorkerView>, ApiError> {
    // A worker may read itself (an agent replaced by another waits for it to go).
    if caller.role == Role::Worker {
        act_for(&caller, &worker_id)?;
    }
    validate_worker_id(&worker_id)?;
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    let w =
        core.store.worker(&worker_id)?.ok_or_else(|| ApiError::NotFound(format!("worker {worker_id:?} not found")))?;
    let seen = core.worker_heartbeats().await;
    Ok(Reply::ok(view(&core, w, seen.get(&worker_id))?))
}

/// Change a worker's slots, tags, or whether it gets new runs.
#[utoipa::path(
    put, path = "/api/workers/{worker_id}", tag = "workers",
    params(("worker_id" = String, Path)),
    request_body = WorkerUpdate,
    responses((status = 200, body = Envelope<WorkerView>), (status = 400), (status = 401), (status = 403), (status = 404), (status = 503), (status = 504)),
    security(("bearer" = []))
)]
async fn update_worker(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<WorkerView>, ApiError> {
    validate_worker_id(&worker_id)?;
    let update: WorkerUpdate = typed_json_body(body)?;
    if update == WorkerUpdate::default() {
        return Err(ApiError::BadRequest("the body names no field to update (max_tasks, tags, enabled)".into()));
    }
    let resp = core
        .write(&caller.principal(), core.request(Command::UpdateWorker { id: worker_id.clone(), update }, None))
        .await?;
    let w = worker_reply(resp)?;
    let seen = core.worker_heartbeats().await;
    Ok(Reply::ok(view(&core, w, seen.get(&worker_id))?))
}

/// A worker's heartbeat (the seed's body). Not a Raft write: the leader remembers it.
#[utoipa::path(
    post, path = "/api/workers/{worker_id}/heartbeat", tag = "workers",
    params(("worker_id" = String, Path)),
    request_body = HeartbeatBody,
    responses((status = 200, body = Envelope<HeartbeatAck>), (status = 400), (status = 401), (status = 403), (status = 404, description = "not registered"), (status = 409, description = "the epoch is not the worker's current registration"), (status = 503)),
    security(("bearer" = []))
)]
async fn heartbeat(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<HeartbeatAck>, ApiError> {
    act_for(&caller, &worker_id)?;
    let body: HeartbeatBody = typed_json_body(body)?;
    match core.worker_heartbeat(&worker_id, body).await? {
        Some(ack) => Ok(Reply::ok(ack)),
        None => Err(ApiError::NotFound(format!("worker {worker_id:?} is not registered; register it first"))),
    }
}

/// An agent registers when it starts: creates the worker or updates its slots and tags.
/// Runs still assigned to it belong to its previous incarnation and are lost (re-queued).
#[utoipa::path(
    post, path = "/api/workers/{worker_id}/register", tag = "workers",
    params(("worker_id" = String, Path)),
    request_body = Registration,
    responses((status = 200, body = Envelope<HeartbeatAck>), (status = 400), (status = 401), (status = 403), (status = 409, description = "another registration replaced this one before it took effect"), (status = 503), (status = 504)),
    security(("bearer" = []))
)]
async fn register(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<HeartbeatAck>, ApiError> {
    act_for(&caller, &worker_id)?;
    let reg: Registration = typed_json_body(body)?;
    if reg.killed.len() > 10_000 {
        return Err(ApiError::BadRequest("killed: at most 10000 runs".into()));
    }
    let cmd = Command::RegisterWorker {
        id: worker_id.clone(),
        name: reg.name.unwrap_or_default(),
        max_tasks: reg.max_tasks,
        tags: reg.tags,
        max_lost_requeues: core.config.scheduler.max_lost_requeues,
        killed: reg.killed,
        requeue_delay_ms: core.config.scheduler.worker_timeout_s.saturating_mul(1000),
    };
    let worker = worker_reply(core.write(&caller.principal(), core.request(cmd, None)).await?)?;
    // The registration counts as the first heartbeat.
    let first = HeartbeatBody { epoch: Some(worker.epoch), ..HeartbeatBody::default() };
    match core.worker_heartbeat(&worker_id, first).await? {
        Some(ack) => Ok(Reply::ok(ack)),
        None => Err(ApiError::Unavailable("registered, but the leader has not applied it yet; retry".into())),
    }
}

/// One run a worker holds, with what it needs to execute it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub run_id: u64,
    pub attempt: u32,
    /// The registration epoch the run was placed with.
    pub epoch: u64,
    pub status: RunStatus,
    pub task_id: u64,
    pub scheduled_at: DateTime<Utc>,
    pub task: TaskSpec,
}

/// The most a poll may wait.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// The runs a worker holds (assigned or running). With `wait_ms`, waits until it holds a
/// run it has not started yet, what it holds changes, or the time passes (a long poll).
#[utoipa::path(
    get, path = "/api/workers/{worker_id}/assignments", tag = "workers",
    params(
        ("worker_id" = String, Path),
        ("wait_ms" = Option<u64>, Query, description = "long-poll up to this long (at most 30000) for a run not yet started"),
        ("epoch" = Option<u64>, Query, description = "the registration epoch the agent holds; another one answers 409"),
    ),
    responses((status = 200, body = Envelope<Vec<Assignment>>), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409, description = "the epoch is not the worker's current registration"), (status = 503)),
    security(("bearer" = []))
)]
async fn assignments(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<Vec<Assignment>>, ApiError> {
    act_for(&caller, &worker_id)?;
    let wait = match q.get("wait_ms") {
        None => Duration::ZERO,
        Some(v) => {
            let ms: u64 =
                v.parse().map_err(|_| ApiError::BadRequest(format!("wait_ms: {v:?} is not a whole number")))?;
            if Duration::from_millis(ms) > MAX_POLL_WAIT {
                return Err(ApiError::BadRequest(format!(
                    "wait_ms: at most {} (long polls end within 30 s)",
                    MAX_POLL_WAIT.as_millis()
                )));
            }
            Duration::from_millis(ms)
        }
    };
    let epoch = match q.get("epoch") {
        None => None,
        Some(v) => {
            Some(v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("epoch: {v:?} is not a whole number")))?)
        }
    };
    let mut changed = core.store.runs_changed();
    core.linearize().await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut first: Option<Vec<u64>> = None;
    loop {
        changed.borrow_and_update();
        let Some(worker) = core.store.worker(&worker_id)? else {
            return Err(ApiError::NotFound(format!("worker {worker_id:?} is not registered")));
        };
        if let Some(e) = epoch.filter(|e| *e != worker.epoch) {
            return Err(ApiError::Conflict(format!(
                "worker {worker_id:?} registration {e} was replaced by registration {}; register again",
                worker.epoch
            )));
        }
        let held = held_by(&core, &worker_id)?;
        let ids: Vec<u64> = held.iter().map(|a| a.run_id).collect();
        // Answer at once with work to start, or as soon as what it holds changes (a run
        // cancelled or taken away must be stopped promptly).
        let moved = first.as_ref().is_some_and(|f| *f != ids);
        if wait.is_zero() || moved || held.iter().any(|a| a.status == RunStatus::Assigned) {
            return Ok(Reply::ok(held));
        }
        first.get_or_insert(ids);
        if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
            return Ok(Reply::ok(held));
        }
    }
}

fn held_by(core: &NodeCore, worker: &str) -> Result<Vec<Assignment>, ApiError> {
    let mut out = Vec::new();
    for run_id in core.store.assignments_of(worker)? {
        let Some(run) = core.store.run(run_id)? else { continue };
        let Some(task) = core.store.task(run.task_id)? else { continue };
        out.push(Assignment {
            run_id,
            attempt: run.attempt,
            epoch: run.worker_epoch,
            status: run.status,
            task_id: run.task_id,
            scheduled_at: run.scheduled_at,
            task: task.spec,
        });
    }
    Ok(out)
}

/// A worker's report on a run it holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    pub worker_id: String,
    pub attempt: u32,
    /// The registration epoch the agent holds (the run's assignment names it).
    pub epoch: u64,
    /// `running` when it starts; `succeeded`, `failed` or `timed_out` when it ends.
    pub status: RunStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    /// With `running`: the agent starts the job only now, after an earlier `running`
    /// report whose answer it lost (it starts a job only on an accepted one); the run is
    /// timed from this report. Without it, `running` again changes nothing.
    #[serde(default)]
    pub restart: bool,
}

/// Report on a run: accepted only from the worker holding its current attempt (409
/// otherwise, nothing changed); the same report again is answered 200 and changes nothing.
#[utoipa::path(
    post, path = "/api/runs/{run_id}/report", tag = "runs",
    params(("run_id" = u64, Path)),
    request_body = ReportBody,
    responses(
        (status = 200, body = Envelope<RunView>), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "not the current attempt's holder, or contradicts the record"), (status = 503), (status = 504),
    ),
    security(("bearer" = []))
)]
async fn report(
    State(core): State<Arc<NodeCore>>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<RunView>, ApiError> {
    let run_id = parse_id("run", &run_id)?;
    let body: ReportBody = typed_json_body(body)?;
    act_for(&caller, &body.worker_id)?;
    let report = match body.status {
        RunStatus::Running if body.restart => RunReport::Restarted,
        RunStatus::Running => RunReport::Started,
        RunStatus::Succeeded | RunStatus::Failed | RunStatus::TimedOut => RunReport::Finished {
            status: body.status,
            exit_code: body.exit_code,
            http_status: body.http_status,
            output: body.output,
            error: body.error,
            duration_ms: body.duration_ms,
        },
        other => {
            return Err(ApiError::BadRequest(
                format!("status: a worker reports running, succeeded, failed or timed_out, not {other:?}")
                    .to_lowercase(),
            ))
        }
    };
    let jitter = rand::random_range(0..1000);
    let cmd = Command::ReportRun {
        run_id,
        attempt: body.attempt,
        worker_id: body.worker_id,
        epoch: body.epoch,
        report,
        retry_jitter_ms: jitter,
    };
    // No idempotency record: a report is idempotent by itself (fenced by attempt, and the
    // same report again changes nothing), and a refused one must leave no trace.
    match core.write(&caller.principal(), core.internal_request(cmd)).await?.result? {
        Outcome::Run(run) => Ok(Reply::ok(super::runs::run_view(&core, *run)?)),
        other => Err(ApiError::Internal(format!("unexpected apply outcome {other:?}"))),
    }
}
