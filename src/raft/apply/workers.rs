//! Applying worker commands: registration, an admin's changes, the leader's liveness
//! decisions (losing and re-queuing runs) and its placement (checked again here).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use chrono::{DateTime, Utc};

use super::runs::queue_next_attempt;
use crate::model::worker::{validate_slots, validate_tags, validate_worker_id};
use crate::model::{Liveness, RunStatus, Worker, WorkerUpdate};
use crate::raft::command::{Outcome, Rejection, Response};
use crate::storage::Tx;

/// An agent starts (or restarts): the runs of its previous incarnation are lost.
pub(super) fn register(
    tx: &mut Tx<'_>,
    id: &str,
    name: &str,
    max_tasks: u32,
    tags: &[String],
    max_lost_requeues: u32,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let checked = validate_worker_id(id).and_then(|_| validate_slots(max_tasks)).and_then(|_| validate_tags(tags));
    if let Err(e) = checked {
        return Ok(Response::rejected(Rejection::Invalid(e)));
    }
    let mut worker = tx.store.worker(id)?.unwrap_or(Worker {
        id: id.to_string(),
        name: String::new(),
        max_tasks,
        tags: Vec::new(),
        enabled: true,
        liveness: Liveness::Offline,
        registered_at: now,
        liveness_changed_at: now,
    });
    worker.name = if name.is_empty() { id.to_string() } else { name.to_string() };
    worker.max_tasks = max_tasks;
    worker.tags = tags.to_vec();
    worker.registered_at = now;
    let reason = format!("worker {id} restarted while holding this run");
    lose_runs(tx, id, max_lost_requeues, &reason, now)?;
    change_liveness(&mut worker, Liveness::Online, now);
    tx.put_worker(&worker)?;
    Ok(Response::ok(Outcome::Worker(Box::new(worker))))
}

pub(super) fn update(tx: &mut Tx<'_>, id: &str, update: &WorkerUpdate) -> io::Result<Response> {
    let Some(mut worker) = tx.store.worker(id)? else {
        return Ok(Response::rejected(Rejection::WorkerNotFound(id.to_string())));
    };
    if let Some(n) = update.max_tasks {
        if let Err(e) = validate_slots(n) {
            return Ok(Response::rejected(Rejection::Invalid(e)));
        }
        worker.max_tasks = n;
    }
    if let Some(tags) = &update.tags {
        if let Err(e) = validate_tags(tags) {
            return Ok(Response::rejected(Rejection::Invalid(e)));
        }
        worker.tags = tags.clone();
    }
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
    let Some(mut worker) = tx.store.worker(id)? else {
        return Ok(Response::rejected(Rejection::WorkerNotFound(id.to_string())));
    };
    let (mut lost, mut requeued) = (Vec::new(), Vec::new());
    if worker.liveness != liveness {
        if liveness == Liveness::Offline {
            (lost, requeued) = lose_runs(tx, id, max_lost_requeues, reason, now)?;
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

/// Marks every run holding a slot on `worker` lost, re-queuing each as a new attempt while
/// its chain was re-queued fewer than `max_requeues` times. Returns (lost, re-queued).
fn lose_runs(
    tx: &mut Tx<'_>,
    worker: &str,
    max_requeues: u32,
    reason: &str,
    now: DateTime<Utc>,
) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut lost, mut requeued) = (Vec::new(), Vec::new());
    for run_id in tx.store.assignments_of(worker)? {
        let Some(mut run) = tx.store.run(run_id)? else { continue };
        if !run.is_assigned() {
            continue;
        }
        run.status = RunStatus::Lost;
        run.finished_at = Some(now);
        run.error = Some(reason.to_string());
        tx.put_run(&run)?;
        lost.push(run.id);
        if run.lost_requeues >= max_requeues {
            continue;
        }
        let Some(task) = tx.store.task(run.task_id)? else { continue };
        requeued.push(queue_next_attempt(tx, task, &run, None, true, now)?);
    }
    Ok((lost, requeued))
}

pub(super) fn assign_runs(
    tx: &mut Tx<'_>,
    assignments: &[(u64, String)],
    waiting: &[(u64, String)],
    now: DateTime<Utc>,
) -> io::Result<Response> {
    // Reads see the state before this entry: count this entry's own placements locally.
    let mut placed_on: BTreeMap<&str, u32> = BTreeMap::new();
    let mut placed_runs = BTreeSet::new();
    for (run_id, worker_id) in assignments {
        let Some(mut run) = tx.store.run(*run_id)? else { continue };
        if run.status != RunStatus::Pending || run.not_before.is_some_and(|t| t > now) || placed_runs.contains(run_id) {
            continue;
        }
        let Some(worker) = tx.store.worker(worker_id)? else { continue };
        if worker.liveness != Liveness::Online || !worker.enabled {
            continue;
        }
        let Some(task) = tx.store.task(run.task_id)? else { continue };
        let used =
            tx.store.assignments_of(worker_id)?.len() as u32 + placed_on.get(worker_id.as_str()).copied().unwrap_or(0);
        if used >= worker.max_tasks || !worker.carries(&task.spec.tags) {
            continue;
        }
        run.status = RunStatus::Assigned;
        run.worker_id = Some(worker_id.clone());
        run.assigned_at = Some(now);
        run.pending_reason = None;
        tx.put_run(&run)?;
        *placed_on.entry(worker_id.as_str()).or_default() += 1;
        placed_runs.insert(*run_id);
    }
    for (run_id, reason) in waiting {
        let Some(mut run) = tx.store.run(*run_id)? else { continue };
        if run.status == RunStatus::Pending && run.pending_reason.as_deref() != Some(reason.as_str()) {
            run.pending_reason = Some(reason.clone());
            tx.put_run(&run)?;
        }
    }
    Ok(Response::ok(Outcome::Assigned { placed: placed_runs.len() as u64 }))
}
