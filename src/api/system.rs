//! `/api/health`, `/api/system/status` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Consistency, Envelope, Reply};
use crate::model::{Liveness, RunStatus, TaskStatus};
use crate::node::NodeCore;
use crate::raft::NodeId;
use crate::storage::Counter;

pub fn open_routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(metrics))
}

pub fn protected_routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new().routes(routes!(system_status))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` when this node is in a quorum with a known leader (and, on the leader, a
    /// quorum acknowledged it within the election timeout).
    pub status: String,
    /// `connected` when the local RocksDB answers.
    pub database: String,
    /// The replicated run queue: `connected` when this node has a leader.
    pub message_queue: String,
    pub uptime_seconds: u64,
    pub version: String,
    pub raft: RaftHealth,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RaftHealth {
    pub node_id: NodeId,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub applied_index: Option<u64>,
}

/// Liveness and leadership of this node; no credential needed (load balancers poll it).
#[utoipa::path(
    get, path = "/api/health", tag = "system",
    responses((status = 200, description = "healthy", body = Envelope<Health>), (status = 503, description = "no leader, a leader out of touch with its quorum, or storage failing", body = Envelope<Health>))
)]
async fn health(State(core): State<Arc<NodeCore>>) -> Response {
    let st = core.status(false);
    let db_ok = core.store.applied().is_ok();
    let has_leader = st.leader_id.is_some();
    // A leader cut off from its quorum must not attract a load balancer's traffic.
    let out_of_touch = core.leader_out_of_touch();
    let healthy = db_ok && has_leader && out_of_touch.is_none();
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" }.into(),
        database: if db_ok { "connected" } else { "error" }.into(),
        message_queue: if has_leader { "connected" } else { "disconnected" }.into(),
        uptime_seconds: core.started_at.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        raft: RaftHealth {
            node_id: st.node_id,
            role: st.role,
            leader_id: st.leader_id,
            term: st.term,
            applied_index: st.applied_index,
        },
    };
    let unavailable = |message: String| (StatusCode::SERVICE_UNAVAILABLE, message, Some("unavailable"));
    let (status, message, error) = match (db_ok, has_leader, out_of_touch) {
        (false, _, _) => unavailable("local storage is failing".into()),
        (true, false, _) => unavailable("this node has no leader".into()),
        (true, true, Some(age)) if age == std::time::Duration::MAX => {
            unavailable("this node leads but no quorum has acknowledged it yet".into())
        }
        (true, true, Some(age)) => {
            unavailable(format!("this node leads but has not heard from a quorum for {} ms", age.as_millis()))
        }
        (true, true, None) => (StatusCode::OK, "ok".to_string(), None),
    };
    let env = Envelope { success: healthy, data: Some(body), message, timestamp: super::now_rfc3339(), error };
    (status, Json(env)).into_response()
}

/// Prometheus text format; no credential needed (scrapers poll it).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
async fn metrics(State(core): State<Arc<NodeCore>>) -> Response {
    // Point reads, a walk of the data dir and a few system calls: off the async workers.
    let refreshed = core.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || refresh_state_gauges(&refreshed)).await {
        tracing::warn!(error = %e, "the /metrics refresh failed");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], core.metrics.render()).into_response()
}

/// The gauges read at each scrape, each on its own (one that cannot be read keeps its
/// last value, with a warning): counts kept by apply (no scan), the registered workers
/// (one record per agent), the process's memory, the data dir's size and free disk.
fn refresh_state_gauges(core: &NodeCore) {
    let (m, store) = (&core.metrics, &core.store);
    m.leader_out_of_touch.set(i64::from(core.leader_out_of_touch().is_some()));
    let warn = |what: &str, e: &dyn std::fmt::Display| tracing::warn!(error = %e, "/metrics: cannot read {what}");
    match store.counter(Counter::Runs(RunStatus::Pending)) {
        Ok(n) => m.runs_pending.set(n as i64),
        Err(e) => warn("the pending runs", &e),
    }
    for status in TaskStatus::ALL {
        match store.counter(Counter::Tasks(status)) {
            Ok(n) => m.tasks.with_label_values(&[status.as_str()]).set(n as i64),
            Err(e) => warn("the task counts", &e),
        }
    }
    for status in RunStatus::ALL {
        match store.counter(Counter::Runs(status)) {
            Ok(n) => m.runs.with_label_values(&[status.as_str()]).set(n as i64),
            Err(e) => warn("the run counts", &e),
        }
    }
    match store.workers() {
        Ok(workers) => {
            let online = workers.iter().filter(|w| w.liveness == Liveness::Online).count() as i64;
            m.workers.with_label_values(&["online"]).set(online);
            m.workers.with_label_values(&["offline"]).set(workers.len() as i64 - online);
        }
        Err(e) => warn("the workers", &e),
    }
    let rss = std::fs::read_to_string("/proc/self/status").map(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
    });
    match rss {
        Ok(Some(kib)) => m.resident_memory.set(kib * 1024),
        Ok(None) => warn("the resident memory", &"no VmRSS in /proc/self/status"),
        Err(e) => warn("the resident memory", &e),
    }
    let Some(data_dir) = core.snapshot_dir.parent() else { return };
    m.data_dir_bytes.set(dir_bytes(data_dir) as i64);
    match nix::sys::statvfs::statvfs(&data_dir.join("db")) {
        Ok(fs) => m.disk_available.set(fs.blocks_available().saturating_mul(fs.fragment_size()) as i64),
        Err(e) => warn("the free disk", &e),
    }
}

/// The bytes of the files under `dir` (the database's SST files, WAL and manifests, the
/// snapshot files); what cannot be read counts as nothing.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct TaskCounts {
    pub total: u64,
    pub active: u64,
    pub paused: u64,
    pub disabled: u64,
    /// Tasks with a run in progress.
    pub running: u64,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct WorkerCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemStatus {
    pub tasks: TaskCounts,
    pub workers: WorkerCounts,
    /// Runs created since 00:00 UTC today.
    pub runs_today: u64,
    /// Percentage of finished runs (succeeded, failed, timed out, lost) that succeeded;
    /// null while no run has finished. Cancelled runs do not count.
    pub success_rate: Option<f64>,
}

/// Counts over the replicated state.
#[utoipa::path(
    get, path = "/api/system/status", tag = "system",
    params(("consistency" = Option<String>, Query, description = "linearizable (default) or local")),
    responses((status = 200, body = Envelope<SystemStatus>), (status = 401), (status = 503)),
    security(("bearer" = []))
)]
async fn system_status(
    State(core): State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<SystemStatus>, ApiError> {
    Consistency::parse(q.get("consistency").map(String::as_str))?.prepare(&core).await?;
    // Counters kept by apply (storage/indexes.rs): no scan, whatever the state's size.
    // One RocksDB snapshot would make them mutually consistent; separate point reads may
    // straddle an entry, which a status overview can afford.
    let store = &core.store;
    let active = store.counter(Counter::Tasks(TaskStatus::Active))?;
    let paused = store.counter(Counter::Tasks(TaskStatus::Paused))?;
    let disabled = store.counter(Counter::Tasks(TaskStatus::Disabled))?;
    let running = store.counter(Counter::TasksRunning)?;
    let tasks = TaskCounts { total: active + paused + disabled, active, paused, disabled, running };
    let runs_today = store.counter(Counter::RunsOnDay(Utc::now().timestamp().div_euclid(86_400)))?;
    let succeeded = store.counter(Counter::Runs(RunStatus::Succeeded))?;
    let mut finished = succeeded;
    for status in [RunStatus::Failed, RunStatus::TimedOut, RunStatus::Lost] {
        finished += store.counter(Counter::Runs(status))?;
    }
    let success_rate = (finished > 0).then(|| (succeeded as f64 * 1000.0 / finished as f64).round() / 10.0);
    let mut workers = WorkerCounts::default();
    for w in core.store.workers()? {
        workers.total += 1;
        match w.liveness {
            Liveness::Online => workers.online += 1,
            Liveness::Offline => workers.offline += 1,
        }
    }
    Ok(Reply::ok(SystemStatus { tasks, workers, runs_today, success_rate }))
}
