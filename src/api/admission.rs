//! Admission at the API: a request rate per credential (`auth.rate_limit_per_s`, counted
//! by this node alone) and the pending-run caps for manual triggers
//! ([`crate::scheduler::admission`]). Both answer 429 with `Retry-After` and count the
//! refusal in `raftcron_admission_rejected_total{reason}`; neither writes anything.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::access::{access_of, Access};
use super::auth::Caller;
use super::ApiError;
use crate::config::{AuthConfig, Role};
use crate::node::NodeCore;
use crate::scheduler::admission;

/// Credentials tracked before the limiter forgets idle ones (JWT subjects are unbounded).
const TRACKED_CREDENTIALS: usize = 10_000;

/// How long a client is told to wait when the pending queue is full: long enough for
/// workers to drain some of it, short enough that a retrying client is not starved.
const PENDING_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Requests per credential per second on this node; `None` when the limit is off.
pub struct RateLimiter(Option<DefaultKeyedRateLimiter<String>>);

impl RateLimiter {
    pub fn new(cfg: &AuthConfig) -> RateLimiter {
        let Some(rate) = NonZeroU32::new(cfg.rate_limit_per_s) else { return RateLimiter(None) };
        let burst = cfg.rate_limit_burst.and_then(NonZeroU32::new).unwrap_or(rate);
        RateLimiter(Some(governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))))
    }

    /// `Err(wait)` when `key` is over its rate.
    fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        if limiter.len() > TRACKED_CREDENTIALS {
            limiter.retain_recent();
        }
        limiter.check_key(&key.to_string()).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// After authentication: a caller over its rate gets 429. Workers' agents pace themselves
/// and are never limited: neither a worker credential, nor an admin on the agent routes
/// (register, heartbeat, assignments, report) — an embedded or `dev` worker speaks with an
/// admin key, and a throttled heartbeat would cost its lease and its runs.
pub async fn rate_limit(State(core): State<Arc<NodeCore>>, req: Request, next: Next) -> Response {
    // Off (the default): no route lookup on every request (`authorize` does its own).
    if core.rate_limiter.0.is_none() {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str()).unwrap_or_default();
    let agent_route = access_of(req.method().as_str(), route) == Some(Access::Worker);
    let caller = req
        .extensions()
        .get::<Caller>()
        .filter(|c| c.role != Role::Worker && !(agent_route && Access::Worker.admits(c.role)));
    if let Some(caller) = caller {
        if let Err(wait) = core.rate_limiter.check(&caller.scope()) {
            core.metrics.admission_rejected.with_label_values(&["rate_limit"]).inc();
            return ApiError::TooManyRequests {
                message: format!(
                    "{} is over its limit of {} requests per second",
                    caller.name, core.config.auth.rate_limit_per_s
                ),
                retry_after: wait,
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// A manual run of `task` is admitted while the cluster and the task have room for one
/// more pending run (as this node has applied the state). Not judged here, but by the
/// write: a retry of a trigger whose `Idempotency-Key` is already recorded (it replays
/// the first answer, whose run exists), and a disabled task (409).
pub fn admit_trigger(
    core: &NodeCore,
    task: &crate::model::Task,
    idempotency: Option<&crate::raft::IdempotencyKey>,
) -> Result<(), ApiError> {
    if task.spec.status == crate::model::TaskStatus::Disabled {
        return Ok(());
    }
    if let Some(k) = idempotency {
        // Only a record the write will replay: unexpired (the sweep removes expired ones
        // lazily) and for this same request.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let replays = core.store.idempotency(&k.scope, &k.key)?;
        if replays.is_some_and(|r| r.expires_at_ms > now_ms && r.fingerprint == k.fingerprint) {
            return Ok(());
        }
    }
    let cfg = &core.config.scheduler;
    let refuse = |reason: &str, message: String| {
        core.metrics.admission_rejected.with_label_values(&[reason]).inc();
        Err(ApiError::TooManyRequests { message, retry_after: PENDING_RETRY_AFTER })
    };
    if admission::global_room(&core.store, cfg)? == 0 {
        return refuse(
            "pending_cap",
            format!("{} runs are waiting for a worker (scheduler.max_pending_runs); retry later", cfg.max_pending_runs),
        );
    }
    if admission::task_room(&core.store, task, cfg)? == 0 {
        return refuse(
            "task_pending_cap",
            format!(
                "task {} has {} runs waiting for a worker (scheduler.max_pending_runs_per_task); retry later",
                task.id, cfg.max_pending_runs_per_task
            ),
        );
    }
    Ok(())
}
