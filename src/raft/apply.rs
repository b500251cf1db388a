//! The deterministic heart: applying one committed request to the state machine.
//!
//! Invariant: the result is a function of (state, request) alone. No clock, no randomness,
//! no network, no time-zone data, no hash-map iteration; every timestamp and id comes from
//! the request or the state. Clippy enforces the clock/randomness/hash-map part below.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use chrono::{DateTime, Utc};

use super::command::{Command, Fired, Outcome, Rejection, Request, Response, RunReport, TaskFire};
use crate::model::worker::{validate_slots, validate_tags, validate_worker_id};
use crate::model::{
    output_tail, ConcurrencyPolicy, Liveness, Run, RunStatus, RunTrigger, Task, TaskField, TaskStatus, Worker,
};
use crate::storage::{IdempotencyRecord, Tx};

/// How long a client's idempotent answer is kept, in command time.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a node's own retry key is kept: far beyond its write deadline.
pub const INTERNAL_IDEMPOTENCY_TTL_MS: i64 = 10 * 60 * 1000;

/// Expired idempotency records removed per applied request; bounded so one entry's
/// batch stays small, and enough to keep up with any write rate the cluster accepts.
const IDEMPOTENCY_SWEEP: usize = 16;

/// Applies one request, writing its effects into `tx`.
pub fn apply_request(tx: &mut Tx<'_>, req: &Request) -> io::Result<Response> {
    let now = match tx.store.clock()? {
        Some(last) if last > req.issued_at => last,
        _ => req.issued_at,
    };
    tx.put_meta("clock", &now)?;
    let now_ms = now.timestamp_millis();
    // Sweep before anything else writes: a batch applies in order, so a record this request
    // stores below must come after any delete of the expired record under the same key.
    sweep_idempotency(tx, now_ms)?;

    if let Some(idem) = &req.idempotency {
        if let Some(record) = tx.store.idempotency(&idem.scope, &idem.key)? {
            if record.expires_at_ms > now_ms {
                return Ok(if record.fingerprint == idem.fingerprint {
                    record.response
                } else {
                    Response::rejected(Rejection::IdempotencyKeyReused)
                });
            }
        }
    }

    let response = apply_command(tx, &req.command, now)?;
    // A refused command without a key to remember its answer by changes nothing at all
    // (not even the command clock), so a fenced report leaves the state as it was.
    if response.result.is_err() && req.idempotency.is_none() {
        tx.discard();
        return Ok(response);
    }

    if let Some(idem) = &req.idempotency {
        let record = IdempotencyRecord {
            fingerprint: idem.fingerprint.clone(),
            expires_at_ms: now_ms.saturating_add(idem.ttl_ms.clamp(0, IDEMPOTENCY_TTL_MS)),
            response: response.clone(),
        };
        tx.put_idempotency(&idem.scope, &idem.key, &record)?;
    }
    Ok(response)
}

fn sweep_idempotency(tx: &mut Tx<'_>, now_ms: i64) -> io::Result<()> {
    for e in tx.store.expired_idempotency(now_ms, IDEMPOTENCY_SWEEP)? {
        // The key may have been reused after it expired; then the record is newer than this
        // index entry and stays.
        let stale =
            tx.store.idempotency_by_record_key(&e.record_key)?.is_some_and(|r| r.expires_at_ms == e.expires_at_ms);
        tx.delete_idempotency(&e.expiry_key, stale.then_some(e.record_key.as_slice()));
    }
    Ok(())
}

fn apply_command(tx: &mut Tx<'_>, command: &Command, now: DateTime<Utc>) -> io::Result<Response> {
    match command {
        Command::InitCluster { cluster_id } => {
            if tx.store.cluster_id()?.is_none() {
                tx.put_meta("cluster_id", cluster_id)?;
            }
            Ok(Response::ok(Outcome::Done))
        }
        Command::CreateTask { spec } => {
            if let Err(e) = spec.validate() {
                return Ok(Response::rejected(Rejection::Invalid(e)));
            }
            if tx.store.task_id_by_name(&spec.name)?.is_some() {
                return Ok(Response::rejected(Rejection::NameTaken(spec.name.clone())));
            }
            let id: u64 = tx.store.meta("next_task_id")?.unwrap_or(1);
            tx.put_meta("next_task_id", &(id + 1))?;
            let task = Task {
                id,
                spec: (**spec).clone(),
                version: 1,
                created_at: now,
                updated_at: now,
                next_run_at: None,
                last_run: None,
                fire_count: 0,
                skipped_ticks: 0,
                cursor: Some(now),
                resumed_at: None,
                runs_stored: 0,
                prune_floor: 0,
            };
            tx.put_task(&task)?;
            tx.put_task_name(&task.spec.name, id);
            Ok(Response::ok(Outcome::Task(Box::new(task))))
        }
        Command::UpdateTask { id, fields, expected_version } => {
            let mut task = match task_to_change(tx, *id, *expected_version)? {
                Ok(task) => task,
                Err(rejection) => return Ok(Response::rejected(rejection)),
            };
            let old_name = task.spec.name.clone();
            let old_status = task.spec.status;
            for f in fields.iter().cloned() {
                TaskField::apply_to(f, &mut task.spec);
            }
            if let Err(e) = task.spec.validate() {
                return Ok(Response::rejected(Rejection::Invalid(e)));
            }
            mark_resumed(&mut task, old_status, now);
            if task.spec.name != old_name {
                if tx.store.task_id_by_name(&task.spec.name)?.is_some() {
                    return Ok(Response::rejected(Rejection::NameTaken(task.spec.name.clone())));
                }
                tx.delete_task_name(&old_name);
                tx.put_task_name(&task.spec.name, task.id);
            }
            task.version += 1;
            task.updated_at = now;
            tx.put_task(&task)?;
            Ok(Response::ok(Outcome::Task(Box::new(task))))
        }
        Command::DeleteTask { id, expected_version } => {
            let task = match task_to_change(tx, *id, *expected_version)? {
                Ok(task) => task,
                Err(rejection) => return Ok(Response::rejected(rejection)),
            };
            tx.delete_task(*id);
            tx.delete_task_name(&task.spec.name);
            // Its runs go with it, finished or not: a worker reporting on one is told the run
            // no longer exists. Bounded by the run history plus the unfinished runs.
            let (runs, _) = tx.store.runs_of_task(*id, 0, usize::MAX)?;
            for run in &runs {
                tx.delete_run(run);
            }
            Ok(Response::ok(Outcome::TaskDeleted { id: *id }))
        }
        Command::SetTaskStatus { id, status, may_enable } => {
            let Some(mut task) = tx.store.task(*id)? else {
                return Ok(Response::rejected(Rejection::TaskNotFound(*id)));
            };
            let old_status = task.spec.status;
            if old_status == TaskStatus::Disabled && !may_enable {
                return Ok(Response::rejected(Rejection::TaskDisabled(*id)));
            }
            if old_status != *status {
                task.spec.status = *status;
                mark_resumed(&mut task, old_status, now);
                task.version += 1;
                task.updated_at = now;
                tx.put_task(&task)?;
            }
            Ok(Response::ok(Outcome::Task(Box::new(task))))
        }
        Command::Fire { fires, keep_runs } => {
            let mut results = Vec::with_capacity(fires.len());
            for fire in fires {
                results.push(apply_fire(tx, fire, *keep_runs, now)?);
            }
            Ok(Response::ok(Outcome::Fired(results)))
        }
        Command::TriggerRun { task_id, keep_runs } => {
            let Some(mut task) = tx.store.task(*task_id)? else {
                return Ok(Response::rejected(Rejection::TaskNotFound(*task_id)));
            };
            if task.spec.status == TaskStatus::Disabled {
                return Ok(Response::rejected(Rejection::TaskDisabled(*task_id)));
            }
            let run = new_run(tx, &mut task, RunTrigger::Manual, now, now)?;
            task.last_run = Some(run.id);
            prune_runs(tx, &mut task, *keep_runs, 1)?;
            tx.put_task(&task)?;
            Ok(Response::ok(Outcome::Run(Box::new(run))))
        }
        Command::CancelRun { run_id } => {
            let Some(mut run) = tx.store.run(*run_id)? else {
                return Ok(Response::rejected(Rejection::RunNotFound(*run_id)));
            };
            if run.status.is_final() {
                return Ok(Response::rejected(Rejection::RunFinished(*run_id)));
            }
            run.status = RunStatus::Cancelled;
            run.finished_at = Some(now);
            run.pending_reason = None;
            tx.put_run(&run)?;
            Ok(Response::ok(Outcome::Run(Box::new(run))))
        }
        Command::RegisterWorker { id, name, max_tasks, tags, max_lost_requeues } => {
            let checked =
                validate_worker_id(id).and_then(|_| validate_slots(*max_tasks)).and_then(|_| validate_tags(tags));
            if let Err(e) = checked {
                return Ok(Response::rejected(Rejection::Invalid(e)));
            }
            let mut worker = tx.store.worker(id)?.unwrap_or(Worker {
                id: id.clone(),
                name: String::new(),
                max_tasks: *max_tasks,
                tags: Vec::new(),
                enabled: true,
                liveness: Liveness::Offline,
                registered_at: now,
                liveness_changed_at: now,
            });
            worker.name = if name.is_empty() { id.clone() } else { name.clone() };
            worker.max_tasks = *max_tasks;
            worker.tags = tags.clone();
            worker.registered_at = now;
            let reason = format!("worker {id} restarted while holding this run");
            lose_runs(tx, id, *max_lost_requeues, &reason, now)?;
            set_liveness(&mut worker, Liveness::Online, now);
            tx.put_worker(&worker)?;
            Ok(Response::ok(Outcome::Worker(Box::new(worker))))
        }
        Command::UpdateWorker { id, update } => {
            let Some(mut worker) = tx.store.worker(id)? else {
                return Ok(Response::rejected(Rejection::WorkerNotFound(id.clone())));
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
        Command::SetWorkerLiveness { id, liveness, max_lost_requeues, reason } => {
            let Some(mut worker) = tx.store.worker(id)? else {
                return Ok(Response::rejected(Rejection::WorkerNotFound(id.clone())));
            };
            let (mut lost, mut requeued) = (Vec::new(), Vec::new());
            if worker.liveness != *liveness {
                if *liveness == Liveness::Offline {
                    (lost, requeued) = lose_runs(tx, id, *max_lost_requeues, reason, now)?;
                }
                set_liveness(&mut worker, *liveness, now);
                tx.put_worker(&worker)?;
            }
            Ok(Response::ok(Outcome::Lost { lost, requeued }))
        }
        Command::AssignRuns { assignments, waiting } => assign_runs(tx, assignments, waiting, now),
        Command::ExpireRun { run_id, attempt, reason, retry_jitter_ms } => {
            expire_run(tx, *run_id, *attempt, reason, *retry_jitter_ms, now)
        }
        Command::ReportRun { run_id, attempt, worker_id, report, retry_jitter_ms } => {
            report_run(tx, *run_id, *attempt, worker_id, report, *retry_jitter_ms, now)
        }
    }
}

fn set_liveness(worker: &mut Worker, liveness: Liveness, now: DateTime<Utc>) {
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

fn assign_runs(
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

/// Longest backoff before a retry, however many attempts came before.
const MAX_RETRY_BACKOFF_MS: u64 = 3600 * 1000;
/// Largest jitter a report may add to a retry's backoff.
const MAX_RETRY_JITTER_MS: u64 = 60 * 1000;

fn report_run(
    tx: &mut Tx<'_>,
    run_id: u64,
    attempt: u32,
    worker_id: &str,
    report: &RunReport,
    jitter_ms: u64,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut run) = tx.store.run(run_id)? else {
        return Ok(Response::rejected(Rejection::RunNotFound(run_id)));
    };
    let stale = |run: &Run| {
        Response::rejected(Rejection::StaleAttempt {
            run_id,
            attempt,
            worker_id: worker_id.to_string(),
            current: run.attempt,
            status: run.status,
        })
    };
    if run.worker_id.as_deref() != Some(worker_id) || run.attempt != attempt {
        return Ok(stale(&run));
    }
    match report {
        RunReport::Started => match run.status {
            RunStatus::Assigned => {
                run.status = RunStatus::Running;
                run.started_at = Some(now);
                tx.put_run(&run)?;
                Ok(Response::ok(Outcome::Run(Box::new(run))))
            }
            // The same report again: nothing more changes.
            RunStatus::Running => Ok(Response::ok(Outcome::Run(Box::new(run)))),
            _ => Ok(stale(&run)),
        },
        RunReport::Finished { status, exit_code, http_status, output, error, duration_ms } => {
            if !matches!(status, RunStatus::Succeeded | RunStatus::Failed | RunStatus::TimedOut) {
                return Ok(Response::rejected(Rejection::Invalid(crate::model::FieldError::new(
                    "status",
                    "a finished run is succeeded, failed or timed_out",
                ))));
            }
            if run.status.is_final() {
                // The same report retried (its answer was lost) changes nothing more;
                // anything else contradicts the record (e.g. the run was cancelled).
                let same = run.status == *status && run.exit_code == *exit_code && run.http_status == *http_status;
                return Ok(if same { Response::ok(Outcome::Run(Box::new(run))) } else { stale(&run) });
            }
            run.status = *status;
            run.started_at.get_or_insert(now);
            run.finished_at = Some(now);
            run.duration_ms = Some(*duration_ms);
            run.exit_code = *exit_code;
            run.http_status = *http_status;
            run.output = output_tail(output);
            run.error = error.as_deref().map(output_tail);
            tx.put_run(&run)?;
            if *status != RunStatus::Succeeded {
                retry_after_failure(tx, &run, jitter_ms, now)?;
            }
            Ok(Response::ok(Outcome::Run(Box::new(run))))
        }
    }
}

fn expire_run(
    tx: &mut Tx<'_>,
    run_id: u64,
    attempt: u32,
    reason: &str,
    jitter_ms: u64,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut run) = tx.store.run(run_id)? else {
        return Ok(Response::rejected(Rejection::RunNotFound(run_id)));
    };
    if run.attempt != attempt || !run.is_assigned() {
        return Ok(Response::rejected(Rejection::StaleAttempt {
            run_id,
            attempt,
            worker_id: run.worker_id.clone().unwrap_or_default(),
            current: run.attempt,
            status: run.status,
        }));
    }
    run.status = RunStatus::TimedOut;
    run.finished_at = Some(now);
    run.error = Some(reason.to_string());
    tx.put_run(&run)?;
    retry_after_failure(tx, &run, jitter_ms, now)?;
    Ok(Response::ok(Outcome::Run(Box::new(run))))
}

/// After a failed or timed-out attempt: the next attempt, pending after its backoff, while
/// attempts remain (`attempt <= retry_count`).
fn retry_after_failure(tx: &mut Tx<'_>, run: &Run, jitter_ms: u64, now: DateTime<Utc>) -> io::Result<()> {
    let Some(task) = tx.store.task(run.task_id)? else { return Ok(()) };
    if run.attempt > task.spec.retry_count {
        return Ok(());
    }
    let base = u64::from(task.spec.retry_backoff_seconds) * 1000;
    let backoff = base
        .saturating_mul(1u64 << (run.attempt - 1).min(20))
        .min(MAX_RETRY_BACKOFF_MS)
        .saturating_add(jitter_ms.min(MAX_RETRY_JITTER_MS));
    let not_before = now + chrono::Duration::milliseconds(backoff as i64);
    queue_next_attempt(tx, task, run, Some(not_before), false, now)?;
    Ok(())
}

/// Stores `run`'s next attempt, pending (after `not_before`), as the task's latest run;
/// `lost` counts it against the chain's lost re-queues. Returns its id.
fn queue_next_attempt(
    tx: &mut Tx<'_>,
    mut task: Task,
    run: &Run,
    not_before: Option<DateTime<Utc>>,
    lost: bool,
    now: DateTime<Utc>,
) -> io::Result<u64> {
    let id = alloc_run_id(tx)?;
    let mut next = run.next_attempt(id, now, not_before);
    next.lost_requeues += u32::from(lost);
    tx.put_run(&next)?;
    task.runs_stored += 1;
    task.last_run = Some(id);
    tx.put_task(&task)?;
    Ok(id)
}

/// Reactivated: ticks while paused or disabled are not fired afterwards. Apply cannot
/// evaluate the schedule to count them, so it marks the instant; the leader's next `Fire`
/// accounts for them as skipped.
fn mark_resumed(task: &mut Task, old_status: TaskStatus, now: DateTime<Utc>) {
    if old_status != TaskStatus::Active && task.spec.status == TaskStatus::Active {
        task.resumed_at = Some(now);
    }
}

/// One task's firing decision: the compare-and-set of guarantee 3, then the runs.
fn apply_fire(
    tx: &mut Tx<'_>,
    fire: &TaskFire,
    keep_runs: u32,
    now: DateTime<Utc>,
) -> io::Result<Result<Fired, Rejection>> {
    let TaskFire { task_id, spec_version, expected_cursor, fired, skipped, new_cursor, next_run_at } = fire;
    let Some(mut task) = tx.store.task(*task_id)? else {
        return Ok(Err(Rejection::TaskNotFound(*task_id)));
    };
    // Whoever proposed this (a deposed leader, a retry, a leader whose clock runs behind)
    // fires nothing unless the ticks are still unaccounted for under the same spec.
    if task.version != *spec_version || task.cursor != *expected_cursor || Some(*new_cursor) <= task.cursor {
        return Ok(Err(Rejection::StaleFire(*task_id)));
    }
    if task.spec.status != TaskStatus::Active {
        return Ok(Err(Rejection::StaleFire(*task_id)));
    }
    let in_range = |t: &DateTime<Utc>| Some(*t) > task.cursor && t <= new_cursor;
    if !fired.iter().all(in_range) || !fired.windows(2).all(|w| w[0] < w[1]) {
        return Ok(Err(Rejection::Invalid(crate::model::FieldError::new(
            "fired",
            "ticks must increase and lie after the cursor and at or before the new cursor",
        ))));
    }
    // Concurrency policy, against runs already stored and runs this command made.
    let mut unfinished = tx.store.unfinished_runs_of_task(task.id)?;
    let mut runs = Vec::with_capacity(fired.len());
    let mut forbidden = 0u64;
    for tick in fired {
        match task.spec.concurrency_policy {
            ConcurrencyPolicy::Forbid if !unfinished.is_empty() => {
                forbidden += 1;
                continue;
            }
            ConcurrencyPolicy::Replace => {
                for mut old in unfinished.drain(..) {
                    old.status = RunStatus::Cancelled;
                    old.finished_at = Some(now);
                    old.pending_reason = None;
                    old.error = Some(format!("replaced by the tick at {tick}"));
                    tx.put_run(&old)?;
                }
            }
            _ => {}
        }
        let run = new_run(tx, &mut task, RunTrigger::Schedule, *tick, now)?;
        runs.push(run.id);
        unfinished.push(run);
    }
    task.fire_count += runs.len() as u64;
    task.skipped_ticks += skipped + forbidden;
    task.cursor = Some(*new_cursor);
    task.next_run_at = *next_run_at;
    if let Some(last) = runs.last() {
        task.last_run = Some(*last);
    }
    prune_runs(tx, &mut task, keep_runs, runs.len())?;
    tx.put_task(&task)?;
    Ok(Ok(Fired { runs, forbidden }))
}

/// Deletes the task's finished runs beyond the newest `keep`, once it stores a tenth more
/// than it kept last time (so a scan of n runs happens once per n/10 new runs: constant
/// work per run, however many unfinished runs pile up). Unfinished runs are never pruned;
/// `fire_count` lives on the task and is not touched. `created` runs were made by this
/// batch and are not visible to its reads yet.
fn prune_runs(tx: &mut Tx<'_>, task: &mut Task, keep: u32, created: usize) -> io::Result<()> {
    let floor = u64::from(keep).max(task.prune_floor);
    if task.runs_stored <= floor + (floor / 10).max(1) {
        return Ok(());
    }
    // Newest first; the batch's own runs are the newest of all.
    let skip = (keep as usize).saturating_sub(created);
    let (older, _) = tx.store.runs_of_task(task.id, skip, usize::MAX)?;
    for run in older.iter().filter(|r| r.status.is_final()) {
        tx.delete_run(run);
        task.runs_stored -= 1;
    }
    task.prune_floor = task.runs_stored;
    Ok(())
}

/// The task a client update or delete addresses, if it exists and (with `If-Match`) its
/// version still matches.
fn task_to_change(tx: &Tx<'_>, id: u64, expected_version: Option<u64>) -> io::Result<Result<Task, Rejection>> {
    let Some(task) = tx.store.task(id)? else { return Ok(Err(Rejection::TaskNotFound(id))) };
    match expected_version {
        Some(expected) if expected != task.version => {
            Ok(Err(Rejection::VersionMismatch { expected, actual: task.version }))
        }
        _ => Ok(Ok(task)),
    }
}

fn alloc_run_id(tx: &mut Tx<'_>) -> io::Result<u64> {
    let id: u64 = tx.store.meta("next_run_id")?.unwrap_or(1);
    // Several runs may be created by one command: the counter is read from the batch's
    // base state, so keep it in step locally.
    let id = id.max(tx.next_run_id);
    tx.next_run_id = id + 1;
    tx.put_meta("next_run_id", &(id + 1))?;
    Ok(id)
}

fn new_run(
    tx: &mut Tx<'_>,
    task: &mut Task,
    trigger: RunTrigger,
    scheduled_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> io::Result<Run> {
    let id = alloc_run_id(tx)?;
    let run = Run::pending(id, task.id, task.spec.priority, trigger, scheduled_at, now);
    tx.put_run(&run)?;
    task.runs_stored += 1;
    Ok(run)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "tests may use the clock")]

    use chrono::TimeZone;

    use super::*;
    use crate::model::TaskSpec;
    use crate::raft::command::{IdempotencyKey, Response};
    use crate::storage::{open_db, Store};

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, s).unwrap()
    }

    fn apply(store: &Store, command: Command, at: DateTime<Utc>) -> Response {
        let mut tx = Tx::new(store);
        let resp = apply_request(&mut tx, &Request { issued_at: at, idempotency: None, command }).unwrap();
        tx.commit().unwrap();
        resp
    }

    fn fire(expected: DateTime<Utc>, fired: &[DateTime<Utc>], new_cursor: DateTime<Utc>, version: u64) -> TaskFire {
        TaskFire {
            task_id: 1,
            spec_version: version,
            expected_cursor: Some(expected),
            fired: fired.to_vec(),
            skipped: 0,
            new_cursor,
            next_run_at: None,
        }
    }

    /// Applies a `Fire` of one task (history kept far beyond what tests create).
    fn fire_at(store: &Store, at: DateTime<Utc>, fire: TaskFire) -> Result<Fired, Rejection> {
        match apply(store, Command::Fire { fires: vec![fire], keep_runs: 1000 }, at).result {
            Ok(Outcome::Fired(mut results)) if results.len() == 1 => results.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn scheduled_ticks(store: &Store) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::new();
        store
            .scan_runs(|r| {
                ticks.push(r.scheduled_at);
                true
            })
            .unwrap();
        ticks
    }

    /// Duplicate, stale and reordered `Fire` commands, as a retried proposal or a deposed
    /// leader would send them: each tick becomes exactly one run.
    #[test]
    fn fire_is_a_compare_and_set_on_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(open_db(dir.path()).unwrap());
        let fields = TaskField::parse_object(serde_json::json!({
            "name": "tick", "executor": "shell", "command": "true", "schedule": "* * * * * *"
        }))
        .unwrap();
        let spec = TaskSpec::from_fields(fields, "UTC").unwrap();
        apply(&store, Command::CreateTask { spec: Box::new(spec) }, t(0));

        let first = fire(t(0), &[t(1), t(2)], t(2), 1);
        assert!(matches!(fire_at(&store, t(2), first.clone()), Ok(Fired { ref runs, .. }) if runs.len() == 2));
        // The same proposal again (a retry after a lost response): refused.
        assert_eq!(fire_at(&store, t(3), first), Err(Rejection::StaleFire(1)));
        // A deposed leader that still believes the cursor is at 0.
        assert_eq!(fire_at(&store, t(3), fire(t(0), &[t(1)], t(1), 1)), Err(Rejection::StaleFire(1)));
        // Reordered: the later proposal arrives first and is refused; the earlier applies;
        // the later one, recomputed from the new cursor, applies.
        let later = fire(t(3), &[t(4)], t(4), 1);
        assert_eq!(fire_at(&store, t(4), later.clone()), Err(Rejection::StaleFire(1)));
        assert!(fire_at(&store, t(4), fire(t(2), &[t(3)], t(3), 1)).is_ok());
        assert!(fire_at(&store, t(5), later).is_ok());
        // The cursor never moves backwards, even with a matching expectation.
        assert_eq!(fire_at(&store, t(5), fire(t(4), &[], t(3), 1)), Err(Rejection::StaleFire(1)));
        // After a spec change, a fire computed from the old spec is refused.
        apply(
            &store,
            Command::UpdateTask { id: 1, fields: vec![TaskField::RetryCount(2)], expected_version: None },
            t(6),
        );
        assert_eq!(fire_at(&store, t(6), fire(t(4), &[t(5)], t(5), 1)), Err(Rejection::StaleFire(1)));
        assert!(fire_at(&store, t(6), fire(t(4), &[t(5)], t(5), 2)).is_ok());

        assert_eq!(scheduled_ticks(&store), vec![t(1), t(2), t(3), t(4), t(5)]);
        let task = store.task(1).unwrap().unwrap();
        assert_eq!((task.fire_count, task.cursor, task.version), (5, Some(t(5)), 2));
    }

    fn store_with_task(policy: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(open_db(dir.path()).unwrap());
        let fields = TaskField::parse_object(serde_json::json!({
            "name": "c", "executor": "shell", "command": "true", "schedule": "* * * * * *", "concurrency_policy": policy
        }))
        .unwrap();
        apply(&store, Command::CreateTask { spec: Box::new(TaskSpec::from_fields(fields, "UTC").unwrap()) }, t(0));
        (dir, store)
    }

    fn statuses(store: &Store) -> Vec<RunStatus> {
        let mut out = Vec::new();
        store
            .scan_runs(|r| {
                out.push(r.status);
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn concurrency_policies() {
        // Runs never finish here (no workers), so every tick after the first overlaps.
        let (_d, allow) = store_with_task("allow");
        fire_at(&allow, t(2), fire(t(0), &[t(1), t(2)], t(2), 1)).unwrap();
        fire_at(&allow, t(3), fire(t(2), &[t(3)], t(3), 1)).unwrap();
        assert_eq!(statuses(&allow), vec![RunStatus::Pending; 3]);

        let (_d, forbid) = store_with_task("forbid");
        fire_at(&forbid, t(2), fire(t(0), &[t(1), t(2)], t(2), 1)).unwrap();
        fire_at(&forbid, t(3), fire(t(2), &[t(3)], t(3), 1)).unwrap();
        assert_eq!(statuses(&forbid), vec![RunStatus::Pending]);
        let task = forbid.task(1).unwrap().unwrap();
        assert_eq!((task.fire_count, task.skipped_ticks), (1, 2), "forbidden ticks are counted as skipped");

        let (_d, replace) = store_with_task("replace");
        fire_at(&replace, t(2), fire(t(0), &[t(1), t(2)], t(2), 1)).unwrap();
        fire_at(&replace, t(3), fire(t(2), &[t(3)], t(3), 1)).unwrap();
        assert_eq!(statuses(&replace), vec![RunStatus::Cancelled, RunStatus::Cancelled, RunStatus::Pending]);
        assert_eq!(replace.task(1).unwrap().unwrap().fire_count, 3);
    }

    #[test]
    fn firing_prunes_history_to_the_newest_and_every_unfinished_run() {
        let (_d, store) = store_with_task("allow");
        let ticks: Vec<_> = (1..=6).map(t).collect();
        fire_at(&store, t(6), fire(t(0), &ticks, t(6), 1)).unwrap();
        // Runs 1..=6; finish 1, 2, 3 and 5 (cancelled is final); 4 and 6 stay pending.
        for id in [1, 2, 3, 5] {
            assert!(apply(&store, Command::CancelRun { run_id: id }, t(7)).result.is_ok());
        }
        assert_eq!(store.queued_runs().unwrap(), 2, "only pending runs are queued");
        // The next tick, with a history of 2: the newest two (7, 6) stay, 4 is unfinished.
        let r = apply(&store, Command::Fire { fires: vec![fire(t(6), &[t(7)], t(7), 1)], keep_runs: 2 }, t(7));
        assert!(r.result.is_ok());
        let (left, total) = store.runs_of_task(1, 0, 100).unwrap();
        let ids: Vec<u64> = left.iter().map(|r| r.id).collect();
        assert_eq!((ids, total), (vec![7, 6, 4], 3), "newest two kept, plus pending run 4");
        let task = store.task(1).unwrap().unwrap();
        assert_eq!((task.fire_count, task.runs_stored), (7, 3), "pruning never lowers fire_count");
        assert_eq!(store.queued_runs().unwrap(), 3);
        // Deleting the task deletes its runs and empties the queue.
        apply(&store, Command::DeleteTask { id: 1, expected_version: None }, t(8));
        assert_eq!((store.runs_of_task(1, 0, 100).unwrap().1, store.queued_runs().unwrap()), (0, 0));
    }

    /// One `Fire` entry carries many tasks; each is its own compare-and-set.
    #[test]
    fn a_batched_fire_applies_each_task_independently() {
        let (_d, store) = store_with_task("allow");
        let fields =
            TaskField::parse_object(serde_json::json!({"name": "d", "executor": "shell", "command": "true"})).unwrap();
        apply(&store, Command::CreateTask { spec: Box::new(TaskSpec::from_fields(fields, "UTC").unwrap()) }, t(0));
        fire_at(&store, t(1), fire(t(0), &[t(1)], t(1), 1)).unwrap();
        let second = TaskFire { task_id: 2, ..fire(t(0), &[t(1)], t(1), 1) };
        let missing = TaskFire { task_id: 9, ..fire(t(0), &[t(1)], t(1), 1) };
        let stale = fire(t(0), &[t(1)], t(1), 1);
        let r = apply(&store, Command::Fire { fires: vec![stale, second, missing], keep_runs: 10 }, t(2)).result;
        let Ok(Outcome::Fired(results)) = r else { panic!("{r:?}") };
        assert_eq!(results[0], Err(Rejection::StaleFire(1)));
        assert!(matches!(results[1], Ok(Fired { ref runs, forbidden: 0 }) if runs.len() == 1));
        assert_eq!(results[2], Err(Rejection::TaskNotFound(9)));
        assert_eq!(scheduled_ticks(&store), vec![t(1), t(1)], "one run per task for the tick");
    }

    #[test]
    fn reactivation_marks_the_instant_for_the_leader_to_count_skipped_ticks() {
        let (_d, store) = store_with_task("allow");
        let pause = TaskField::Status(TaskStatus::Paused);
        apply(&store, Command::UpdateTask { id: 1, fields: vec![pause], expected_version: None }, t(1));
        assert_eq!(fire_at(&store, t(3), fire(t(0), &[t(2)], t(2), 2)), Err(Rejection::StaleFire(1)), "paused");
        let resume = TaskField::Status(TaskStatus::Active);
        apply(&store, Command::UpdateTask { id: 1, fields: vec![resume], expected_version: None }, t(5));
        let task = store.task(1).unwrap().unwrap();
        assert_eq!((task.resumed_at, task.cursor), (Some(t(5)), Some(t(0))));
    }

    /// A retried request returns the first answer until its key expires (in command
    /// time), then applies anew; the expired record is swept.
    #[test]
    fn idempotency_keys_expire_in_command_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(open_db(dir.path()).unwrap());
        let key = |ttl_ms| IdempotencyKey { scope: "c".into(), key: "k".into(), fingerprint: "f".into(), ttl_ms };
        let create = |name: &str| {
            let fields =
                TaskField::parse_object(serde_json::json!({"name": name, "executor": "shell", "command": "true"}))
                    .unwrap();
            Command::CreateTask { spec: Box::new(TaskSpec::from_fields(fields, "UTC").unwrap()) }
        };
        let send = |at: DateTime<Utc>, name: &str| {
            let mut tx = Tx::new(&store);
            let req = Request { issued_at: at, idempotency: Some(key(60_000)), command: create(name) };
            let resp = apply_request(&mut tx, &req).unwrap();
            tx.commit().unwrap();
            resp
        };
        let first = send(t(0), "a");
        assert_eq!(send(t(30), "a"), first, "a retry within the ttl gets the first answer");
        assert!(store.task(2).unwrap().is_none());
        let later = t(0) + chrono::Duration::seconds(61);
        assert!(matches!(send(later, "b").result, Ok(Outcome::Task(ref t)) if t.id == 2), "expired: applies anew");
        assert!(store.idempotency("c", "k").unwrap().is_some_and(|r| r.expires_at_ms > later.timestamp_millis()));
    }

    #[test]
    fn fired_ticks_must_lie_between_the_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(open_db(dir.path()).unwrap());
        let fields =
            TaskField::parse_object(serde_json::json!({"name": "x", "executor": "shell", "command": "true"})).unwrap();
        apply(&store, Command::CreateTask { spec: Box::new(TaskSpec::from_fields(fields, "UTC").unwrap()) }, t(0));
        let r = fire_at(&store, t(5), fire(t(0), &[t(5)], t(3), 1));
        assert!(matches!(r, Err(Rejection::Invalid(_))), "{r:?}");
        let r = fire_at(&store, t(5), fire(t(0), &[t(2), t(1)], t(3), 1));
        assert!(matches!(r, Err(Rejection::Invalid(_))), "{r:?}");
        assert!(scheduled_ticks(&store).is_empty());
    }

    /// Losing a worker loses its runs and re-queues each, at most `max_lost_requeues` times
    /// per chain; a stale attempt's report is refused and leaves no trace.
    #[test]
    fn lost_runs_are_requeued_a_bounded_number_of_times_and_stale_reports_are_fenced() {
        let (_d, store) = store_with_task("allow");
        let register = || Command::RegisterWorker {
            id: "w".into(),
            name: String::new(),
            max_tasks: 2,
            tags: Vec::new(),
            max_lost_requeues: 1,
        };
        let offline = || Command::SetWorkerLiveness {
            id: "w".into(),
            liveness: Liveness::Offline,
            max_lost_requeues: 1,
            reason: "silent".into(),
        };
        assert!(apply(&store, register(), t(1)).result.is_ok());
        apply(&store, Command::TriggerRun { task_id: 1, keep_runs: 100 }, t(1));
        let assign = |run: u64| Command::AssignRuns { assignments: vec![(run, "w".into())], waiting: Vec::new() };
        assert_eq!(apply(&store, assign(1), t(2)).result, Ok(Outcome::Assigned { placed: 1 }));
        assert_eq!(store.assignments_of("w").unwrap(), vec![1]);
        let r = apply(&store, offline(), t(3)).result;
        assert_eq!(r, Ok(Outcome::Lost { lost: vec![1], requeued: vec![2] }));
        let retry = store.run(2).unwrap().unwrap();
        assert_eq!((retry.attempt, retry.lost_requeues, retry.status), (2, 1, RunStatus::Pending));
        // Offline: placement onto it is refused in apply.
        assert_eq!(apply(&store, assign(2), t(4)).result, Ok(Outcome::Assigned { placed: 0 }));
        // Back (re-registered), assigned, lost again: the chain's one re-queue is spent.
        apply(&store, register(), t(5));
        apply(&store, assign(2), t(5));
        let r = apply(&store, offline(), t(6)).result;
        assert_eq!(r, Ok(Outcome::Lost { lost: vec![2], requeued: vec![] }));
        // The first attempt's holder reports late: refused, and the state is untouched.
        let digest = store.digest().unwrap();
        let late = Command::ReportRun {
            run_id: 1,
            attempt: 1,
            worker_id: "w".into(),
            report: RunReport::Finished {
                status: RunStatus::Succeeded,
                exit_code: Some(0),
                http_status: None,
                output: String::new(),
                error: None,
                duration_ms: 5,
            },
            retry_jitter_ms: 0,
        };
        assert!(matches!(apply(&store, late, t(7)).result, Err(Rejection::StaleAttempt { .. })));
        assert_eq!(store.digest().unwrap(), digest);
        assert!(store.assignments_of("w").unwrap().is_empty());
    }
}
