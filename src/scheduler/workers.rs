//! Leader-only worker management: heartbeat memory, liveness, and placement.
//!
//! Heartbeats are not Raft writes: the leader remembers when it last heard from each
//! worker (followers forward heartbeats to it). Only *transitions* are replicated: a
//! worker silent for `worker_timeout_s` goes offline through `SetWorkerLiveness`, which
//! loses and re-queues its runs; a heartbeat from an offline worker brings it back. A new
//! leader knows no heartbeats yet, so it counts every worker as heard at the moment it
//! took over: the grace period after a leader change is one `worker_timeout_s`.
//!
//! Placement reads the replicated queue (`run_queue`: by class of required tags, then
//! priority, then oldest), the backoff and pending-deadline indexes, and the replicated
//! assignments (capacity never comes from what heartbeats claim), and proposes one
//! `AssignRuns` entry per pass; apply checks every part again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openraft::ReadPolicy;

use crate::model::{HeartbeatAck, HeartbeatBody, Liveness, Seen, WorkerLoad};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome};
use crate::rpc::RpcFailure;
use crate::storage::{CF_RUN_DEADLINES, CF_RUN_DELAYED};

/// Most runs one placement pass places (bounds one entry).
const MAX_PLACED_PER_PASS: usize = 1000;
/// Most backoff releases and pending-timeout failures one pass carries.
const MAX_DUE_PER_PASS: usize = 1000;
/// The longest placement and liveness checks wait without a change.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// How often the leader looks for runs held past their timeout.
const OVERDUE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The leader's memory of heartbeats; empty on followers.
#[derive(Default)]
pub struct Heartbeats {
    seen: std::sync::Mutex<BTreeMap<String, (Instant, Seen)>>,
}

impl Heartbeats {
    pub fn record(&self, worker: &str, body: HeartbeatBody) {
        let seen = Seen { at: Utc::now(), body };
        self.seen.lock().expect("heartbeats poisoned").insert(worker.to_string(), (Instant::now(), seen));
    }

    pub fn snapshot(&self) -> BTreeMap<String, Seen> {
        self.seen.lock().expect("heartbeats poisoned").iter().map(|(k, (_, s))| (k.clone(), s.clone())).collect()
    }

    fn last(&self, worker: &str) -> Option<Instant> {
        self.seen.lock().expect("heartbeats poisoned").get(worker).map(|(at, _)| *at)
    }

    fn clear(&self) {
        self.seen.lock().expect("heartbeats poisoned").clear();
    }
}

/// The lease a worker holds between renewals (see [`crate::model::lease`]).
pub fn lease(core: &NodeCore, epoch: u64) -> HeartbeatAck {
    HeartbeatAck::for_timeout(Duration::from_secs(core.config.scheduler.worker_timeout_s), epoch)
}

/// On the leader: records a heartbeat and brings an offline worker back online. `Ok(None)`
/// when the worker never registered.
///
/// Acknowledged only while this node's Raft leader lease holds: a leader cut off from its
/// quorum keeps believing it leads (openraft keeps it in the leader state), and renewing
/// worker leases then would let its workers run on while the majority's leader re-queues
/// their runs. The lease check costs no round trip and fails at once when stale.
pub async fn heartbeat_local(
    core: &NodeCore,
    worker: &str,
    body: HeartbeatBody,
) -> Result<Option<HeartbeatAck>, RpcFailure> {
    confirm_leader_lease(core).await?;
    let known = core.store.worker(worker).map_err(|e| RpcFailure::Unavailable(format!("cannot read workers: {e}")))?;
    let Some(known) = known else { return Ok(None) };
    if let Some(epoch) = body.epoch.filter(|e| *e != known.epoch) {
        return Err(RpcFailure::Conflict(format!(
            "worker {worker:?} registration {epoch} was replaced by registration {}; register again",
            known.epoch
        )));
    }
    core.heartbeats.record(worker, body);
    if known.liveness == Liveness::Offline {
        let cmd = Command::SetWorkerLiveness {
            id: worker.to_string(),
            liveness: Liveness::Online,
            max_lost_requeues: core.config.scheduler.max_lost_requeues,
            reason: String::new(),
        };
        if let Err(e) = core.propose_local(core.internal_request(cmd)).await {
            tracing::debug!(worker, error = %e, "bringing worker online did not commit; next heartbeat retries");
        }
    }
    Ok(Some(lease(core, known.epoch)))
}

/// Fails unless this node leads with a quorum acknowledgement younger than its leader
/// lease (openraft's `LeaseRead`: no round trip).
async fn confirm_leader_lease(core: &NodeCore) -> Result<(), RpcFailure> {
    use openraft::errors::{LinearizableReadError, RaftError};
    match core.raft.get_read_log_id(ReadPolicy::LeaseRead).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(RpcFailure::NotLeader(f.leader_id)),
        Err(e) => Err(RpcFailure::Unavailable(format!("leadership lease not confirmed: {e}"))),
    }
}

/// Runs on every node; acts while this node leads.
pub async fn run(core: Arc<NodeCore>) {
    let mut changed = core.store.runs_changed();
    // When this node took over: as an instant (liveness) and on the wall clock (expiry).
    let mut leading_since: Option<(Instant, DateTime<Utc>)> = None;
    let mut last_overdue_check = Instant::now();
    loop {
        if !core.is_leader() {
            if leading_since.take().is_some() {
                core.heartbeats.clear();
            }
            tokio::time::sleep(MAX_SLEEP).await;
            continue;
        }
        let (since, since_wall) = *leading_since.get_or_insert_with(|| (Instant::now(), Utc::now()));
        changed.borrow_and_update();
        check_liveness(&core, since).await;
        if last_overdue_check.elapsed() >= OVERDUE_CHECK_EVERY {
            last_overdue_check = Instant::now();
            if let Err(e) = expire_overdue(&core, since_wall).await {
                tracing::error!(error = %e, "cannot check for overdue runs");
            }
        }
        let sleep = match place(&core).await {
            Ok(next) => next.and_then(|t| (t - Utc::now()).to_std().ok()).map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP)),
            Err(e) => {
                tracing::error!(error = %e, "placement: cannot read state");
                MAX_SLEEP
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = changed.changed() => {}
        }
    }
}

/// Takes offline every online worker not heard from for `worker_timeout_s` (counting from
/// this node's takeover at the latest).
async fn check_liveness(core: &NodeCore, leading_since: Instant) {
    let timeout = Duration::from_secs(core.config.scheduler.worker_timeout_s);
    let Ok(workers) = core.store.workers() else { return };
    for w in workers.into_iter().filter(|w| w.liveness == Liveness::Online) {
        let last = core.heartbeats.last(&w.id).map_or(leading_since, |t| t.max(leading_since));
        if last.elapsed() <= timeout {
            continue;
        }
        let cmd = Command::SetWorkerLiveness {
            reason: format!("worker {} sent no heartbeat for {}s", w.id, timeout.as_secs()),
            id: w.id,
            liveness: Liveness::Offline,
            max_lost_requeues: core.config.scheduler.max_lost_requeues,
        };
        match core.propose_local(core.internal_request(cmd)).await {
            Ok(resp) => {
                if let Ok(Outcome::Lost { lost, requeued }) = resp.result {
                    core.metrics.runs_lost.inc_by(lost.len() as u64);
                    tracing::warn!(lost = ?lost, requeued = ?requeued, "worker went offline");
                }
            }
            Err(e) => tracing::debug!(error = %e, "liveness change did not commit; will retry"),
        }
    }
}

/// Times out every run held on a worker longer than its task's `timeout_seconds` plus
/// `worker_timeout_s` since it was started (or assigned, if it never started). The worker
/// itself kills at the timeout, so such a run's worker is hung or its reports are lost;
/// without this, a worker that heartbeats but never reports would hold the run forever.
///
/// The grace counts from this node's takeover at the latest, as liveness does: after an
/// outage of the whole cluster, a worker whose run ended meanwhile gets a full grace to
/// deliver the report it kept, instead of seeing the run expired and run again.
async fn expire_overdue(core: &NodeCore, leading_since: DateTime<Utc>) -> std::io::Result<()> {
    let grace = chrono::Duration::seconds(core.config.scheduler.worker_timeout_s as i64);
    let now = Utc::now();
    for w in core.store.workers()? {
        for run_id in core.store.assignments_of(&w.id)? {
            let Some(run) = core.store.run(run_id)? else { continue };
            let Some(task) = core.store.task(run.task_id)? else { continue };
            let Some(since) = run.started_at.or(run.assigned_at) else { continue };
            let timeout = chrono::Duration::seconds(task.spec.timeout_seconds.min(i64::MAX as u64 / 1000) as i64);
            if now <= (since + timeout).max(leading_since) + grace {
                continue;
            }
            let cmd = Command::ExpireRun {
                run_id,
                attempt: run.attempt,
                reason: format!(
                    "worker {} held the run {}s past its {}s timeout without reporting",
                    w.id,
                    grace.num_seconds(),
                    task.spec.timeout_seconds
                ),
                retry_jitter_ms: rand::random_range(0..1000),
            };
            if let Err(e) = core.propose_local(core.internal_request(cmd)).await {
                tracing::debug!(run_id, error = %e, "expiring an overdue run did not commit; will retry");
            }
        }
    }
    Ok(())
}

/// One placement pass: releases retries whose backoff ended, fails pending runs past
/// their deadline, and places every placeable run a free slot can take — highest priority,
/// then oldest, across every class of runs (a class is a set of required tags) that some
/// free worker can serve. A class no worker can serve costs one seek, however many runs it
/// holds, so unplaceable runs never starve the ones behind them. Returns when the next
/// backoff or deadline falls due.
async fn place(core: &NodeCore) -> std::io::Result<Option<DateTime<Utc>>> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let (released, next_release) = core.store.due_runs(CF_RUN_DELAYED, now_ms, MAX_DUE_PER_PASS)?;
    let (expired, next_deadline) = core.store.due_runs(CF_RUN_DEADLINES, now_ms, MAX_DUE_PER_PASS)?;
    let next_due = [next_release, next_deadline].into_iter().flatten().min().and_then(DateTime::from_timestamp_millis);
    let mut loads = core.store.worker_loads()?;
    let mut free: usize = loads
        .iter()
        .filter(|w| w.worker.liveness == Liveness::Online && w.worker.enabled)
        .map(|w| w.worker.max_tasks.saturating_sub(w.used) as usize)
        .sum();
    let mut assignments = Vec::new();
    if free > 0 {
        let expired_set: std::collections::BTreeSet<u64> = expired.iter().copied().collect();
        let mut classes = core.store.queued_classes()?;
        // (priority rank, run id, class): everything a free slot might take this pass.
        let mut candidates: Vec<(u8, u64, usize)> = Vec::new();
        for (ci, tags) in classes.iter().enumerate() {
            if loads.iter().any(|w| w.can_take(tags)) {
                let head = core.store.queued_of_class(tags, free.min(MAX_PLACED_PER_PASS))?;
                candidates.extend(head.into_iter().map(|(rank, id)| (rank, id, ci)));
            }
        }
        // Retries released by this very pass are placeable in it too (apply releases first).
        for id in &released {
            let Some(run) = core.store.run(*id)? else { continue };
            let ci = match classes.iter().position(|c| *c == run.tags) {
                Some(ci) => ci,
                None => {
                    classes.push(run.tags.clone());
                    classes.len() - 1
                }
            };
            candidates.push((run.priority.rank(), *id, ci));
        }
        candidates.sort_unstable();
        for (_, run_id, ci) in candidates {
            if free == 0 || assignments.len() >= MAX_PLACED_PER_PASS {
                break;
            }
            if expired_set.contains(&run_id) {
                continue;
            }
            let tags = &classes[ci];
            // Least loaded first (by share of slots used), then by id for a stable choice.
            let best = loads.iter_mut().filter(|w| w.can_take(tags)).min_by(|a, b| {
                let share = |w: &WorkerLoad| f64::from(w.used) / f64::from(w.worker.max_tasks);
                share(a).total_cmp(&share(b)).then_with(|| a.worker.id.cmp(&b.worker.id))
            });
            if let Some(w) = best {
                w.used += 1;
                free -= 1;
                assignments.push((run_id, w.worker.id.clone()));
            }
        }
    }
    if assignments.is_empty() && released.is_empty() && expired.is_empty() {
        return Ok(next_due);
    }
    let placing = assignments.len();
    match core.propose_local(core.internal_request(Command::AssignRuns { assignments, released, expired })).await {
        Ok(resp) => {
            if let Ok(Outcome::Assigned { placed, expired }) = resp.result {
                core.metrics.runs_assigned.inc_by(placed);
                if expired > 0 {
                    tracing::warn!(expired, "pending runs failed: no worker took them within their pending timeout");
                }
                if (placed as usize) < placing {
                    tracing::debug!(placed, placing, "some placements were refused in apply (state moved on)");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "placement did not commit; will retry"),
    }
    Ok(next_due)
}
