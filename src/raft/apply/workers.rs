//! Applying worker commands: registration (a new epoch), an admin's changes, the leader's
//! liveness decisions (losing and re-queuing runs) and its placement (checked again here).

use std::collections::BTreeSet;
use std::io;

use chrono::{DateTime, Utc};

use super::runs::queue_next_attempt;
use crate::model::worker::{validate_slots, validate_tags, validate_worker_id};
use crate::model::{Liveness, RunAttempt, RunStatus, Worker, WorkerUpdate};
use crate::raft::command::{Outcome, Rejection, Response};
use crate::storage::Tx;

/// An agent starts (or restarts): a new epoch; the runs of earlier registrations are lost.
#[allow(clippy::too_many_arguments, reason = "the fields of one command")]
pub(super) fn register(
    tx: &mut Tx<'_>,
    id: &str,
    name: &str,
    max_tasks: u32,
    tags: &[String],
    max_lost_requeues: u32,
    killed: &[RunAttempt],
    requeue_delay_ms: u64,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let checked = validate_worker_id(id).and_then(|_| validate_slots(max_tasks)).and_then(|_| validate_tags(tags));
    if let Err(e) = checked {
        return Ok(Response::rejected(Rejection::Invalid(e)));
    }
    let mut worker = tx.worker(id)?.unwrap_or(Worker {
        id: id.to_string(),
        name: String::new(),
        max_tasks,
        tags: Vec::new(),
        enabled: true,
        liveness: Liveness::Offline,
        epoch: 0,
        registered_at: now,
        liveness_changed_at: now,
        registered_max_tasks: max_tasks,
        registered_tags: Vec::new(),
        admin_max_tasks: None,
        admin_tags: None,
    });
    worker.name = if name.is_empty() { id.to_string() } else { name.to_string() };
    worker.registered_max_tasks = max_tasks;
    worker.registered_tags = tags.to_vec();
    worker.settle_limits();
    worker.registered_at = now;
    worker.epoch += 1;
    let killed: BTreeSet<RunAttempt> = killed.iter().copied().collect();
    let delay = chrono::Duration::milliseconds(i64::try_from(requeue_delay_ms).unwrap_or(i64::MAX / 2));
    // A run that never started runs nowhere; one the new agent saw killed runs nowhere
    // either. Any other may still run on an agent that does not know it was replaced.
    let requeue_at = |run: &crate::model::Run| {
        let safe =
            run.status == RunStatus::Assigned || killed.contains(&RunAttempt { run_id: run.id, attempt: run.attempt });
        (!safe).then(|| now + delay)
    };
    let reason = format!("worker {id} registered again while holding this run");
    lose_runs(tx, id, max_lost_requeues, &reason, now, requeue_at)?;
    change_liveness(&mut worker, Liveness::Online, now);
    tx.put_worker(&worker)?;
    Ok(Response::ok(Outcome::Worker(Box::new(worker))))
}

/// An admin's settings: kept apart from the registration, and limiting it from now on
/// (`Worker::settle_limits`).
pub(super) fn update(tx: &mut Tx<'_>, id: &str, update: &WorkerUpdate) -> io::Result<Response> {
    let Some(mut worker) = tx.worker(id)? else {
        return Ok(Response::rejected(Rejection::WorkerNotFound(id.to_string())));
    };
    if let Some(n) = update.max_tasks {
        if let Err(e) = validate_slots(n) {
            return Ok(Response::rejected(Rejection::Invalid(e)));
        }
        worker.admin_max_tasks = Some(n);
    }
    if let Some(tags) = &update.tags {
        if let Err(e) = validate_tags(tags) {
            return Ok(Response::rejected(Rejection::Invalid(e)));
        }
        worker.admin_tags = Some(tags.clone());
    }
    worker.settle_limits();
    if let Some(enabled) = update.enabled {
        worker.enabled = enabled;
    }
    tx.put_worker(&worker)?;
    Ok(Response::ok(Outcome::Worker(Box::new(worker))))
}

pub(super) fn set_liveness(
    tx: &mut Tx<'_>,
    id: &str,
    liveness: Liveness,
    max_lost_requeues: u32,
    reason: &str,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut worker) = tx.worker(id)? else {
        return Ok(Response::rejected(Rejection::WorkerNotFound(id.to_string())));
    };
    let (mut lost, mut requeued) = (Vec::new(), Vec::new());
    if worker.liveness != liveness {
        if liveness == Liveness::Offline {
            // The leader waited a whole worker timeout: the worker's lease ran out long
            // ago (model::lease), so its runs run nowhere and are re-queued at once.
            (lost, requeued) = lose_runs(tx, id, max_lost_requeues, reason, now, |_| None)?;
        }
        change_liveness(&mut worker, liveness, now);
        tx.put_worker(&worker)?;
    }
    Ok(Response::ok(Outcome::Lost { lost, requeued }))
}

fn change_liveness(worker: &mut Worker, liveness: Liveness, now: DateTime<Utc>) {
    if worker.liveness != liveness {
        worker.liveness = liveness;
        worker.liveness_changed_at = now;
    }
}

/// Marks every run holding a slot on `worker` lost, re-queuing each as a new attempt
/// (placeable from `requeue_at(run)`, or at once) while its chain was re-queued fewer than
/// `max_requeues` times. Returns (lost, re-queued).
fn lose_runs(
    tx: &mut Tx<'_>,
    worker: &str,
    max_requeues: u32,
    reason: &str,
    now: DateTime<Utc>,
    requeue_at: impl Fn(&crate::model::Run) -> Option<DateTime<Utc>>,
) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut lost, mut requeued) = (Vec::new(), Vec::new());
    for run_id in tx.base().assignments_of(worker)? {
        let Some(mut run) = tx.run(run_id)? else { continue };
        if !run.is_assigned() {
            continue;
        }
        let not_before = requeue_at(&run);
        run.status = RunStatus::Lost;
        run.finished_at = Some(now);
        run.error = Some(reason.to_string());
        tx.put_run(&run)?;
        lost.push(run.id);
        if run.lost_requeues >= max_requeues {
            continue;
        }
        let Some(task) = tx.task(run.task_id)? else { continue };
        requeued.push(queue_next_attempt(tx, task, &run, not_before, true, now)?);
    }
    Ok((lost, requeued))
}

/// The leader's placement pass: releases retries whose backoff ended, fails pending runs
/// past their deadline, and places runs — each checked against the state as it is now.
pub(super) fn assign_runs(
    tx: &mut Tx<'_>,
    assignments: &[(u64, String)],
    released: &[u64],
    expired: &[u64],
    now: DateTime<Utc>,
) -> io::Result<Response> {
    for run_id in released {
        let Some(mut run) = tx.run(*run_id)? else { continue };
        if run.status == RunStatus::Pending && run.not_before.is_some_and(|t| t <= now) {
            run.not_before = None;
            tx.put_run(&run)?;
        }
    }
    let mut expired_n = 0;
    for run_id in expired {
        let Some(mut run) = tx.run(*run_id)? else { continue };
        let Some(deadline) = run.pending_deadline.filter(|d| *d <= now) else { continue };
        if run.status != RunStatus::Pending {
            continue;
        }
        let waited = (deadline - run.created_at).num_seconds();
        run.status = RunStatus::Failed;
        run.finished_at = Some(now);
        run.error = Some(format!("no worker took the run within its pending timeout ({waited}s)"));
        tx.put_run(&run)?;
        expired_n += 1;
    }
    // Slots taken by this entry's own placements are not in the committed assignments.
    let mut placed_on: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    let mut placed = 0;
    for (run_id, worker_id) in assignments {
        let Some(mut run) = tx.run(*run_id)? else { continue };
        if run.status != RunStatus::Pending || run.not_before.is_some_and(|t| t > now) {
            continue;
        }
        let Some(worker) = tx.worker(worker_id)? else { continue };
        if worker.liveness != Liveness::Online || !worker.enabled {
            continue;
        }
        let used =
            tx.base().assignments_of(worker_id)?.len() as u32 + placed_on.get(worker_id.as_str()).copied().unwrap_or(0);
        if used >= worker.max_tasks || !worker.carries(&run.tags) {
            continue;
        }
        run.status = RunStatus::Assigned;
        run.worker_id = Some(worker_id.clone());
        run.worker_epoch = worker.epoch;
        run.assigned_at = Some(now);
        run.not_before = None;
        tx.put_run(&run)?;
        *placed_on.entry(worker_id.as_str()).or_default() += 1;
        placed += 1;
    }
    Ok(Response::ok(Outcome::Assigned { placed, expired: expired_n }))
}
