//! Applying run commands: manual triggers, cancels, worker reports (fenced by attempt and
//! registration epoch), the leader's expiry of overdue runs, and retries.

use std::io;

use chrono::{DateTime, Utc};

use super::tasks::prune_runs;
use crate::model::{output_tail, Run, RunStatus, RunTrigger, Task, TaskStatus};
use crate::raft::command::{Outcome, Rejection, Response, RunReport};
use crate::storage::Tx;

/// A manual run of a task (its history pruned to `keep_runs`).
pub(super) fn trigger(tx: &mut Tx<'_>, task_id: u64, keep_runs: u32, now: DateTime<Utc>) -> io::Result<Response> {
    let Some(mut task) = tx.task(task_id)? else {
        return Ok(Response::rejected(Rejection::TaskNotFound(task_id)));
    };
    if task.spec.status == TaskStatus::Disabled {
        return Ok(Response::rejected(Rejection::TaskDisabled(task_id)));
    }
    let run = new_run(tx, &task, RunTrigger::Manual, now, now)?;
    task.last_run = Some(run.id);
    prune_runs(tx, &mut task, keep_runs, 1)?;
    tx.put_task(&task)?;
    Ok(Response::ok(Outcome::Run(Box::new(run))))
}

pub(super) fn cancel(tx: &mut Tx<'_>, run_id: u64, now: DateTime<Utc>) -> io::Result<Response> {
    let Some(mut run) = tx.run(run_id)? else {
        return Ok(Response::rejected(Rejection::RunNotFound(run_id)));
    };
    if run.status.is_final() {
        return Ok(Response::rejected(Rejection::RunFinished(run_id)));
    }
    run.status = RunStatus::Cancelled;
    run.finished_at = Some(now);
    tx.put_run(&run)?;
    Ok(Response::ok(Outcome::Run(Box::new(run))))
}

/// Longest backoff before a retry, however many attempts came before.
const MAX_RETRY_BACKOFF_MS: u64 = 3600 * 1000;
/// Largest jitter a report may add to a retry's backoff.
const MAX_RETRY_JITTER_MS: u64 = 60 * 1000;

/// A worker's report, accepted only from the worker holding the run's current attempt
/// under the registration epoch it was placed with (guarantee 6).
#[allow(clippy::too_many_arguments, reason = "the fields of one command")]
pub(super) fn report(
    tx: &mut Tx<'_>,
    run_id: u64,
    attempt: u32,
    worker_id: &str,
    epoch: u64,
    report: &RunReport,
    jitter_ms: u64,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut run) = tx.run(run_id)? else {
        return Ok(Response::rejected(Rejection::RunNotFound(run_id)));
    };
    let stale = |run: &Run| {
        Response::rejected(Rejection::StaleAttempt {
            run_id,
            attempt,
            worker_id: worker_id.to_string(),
            epoch,
            current: run.attempt,
            status: run.status,
        })
    };
    if run.worker_id.as_deref() != Some(worker_id) || run.attempt != attempt || run.worker_epoch != epoch {
        return Ok(stale(&run));
    }
    match report {
        RunReport::Started | RunReport::Restarted => match run.status {
            RunStatus::Assigned => {
                run.status = RunStatus::Running;
                run.started_at = Some(now);
                tx.put_run(&run)?;
                Ok(Response::ok(Outcome::Run(Box::new(run))))
            }
            // A job started late (the first `Started` was applied, its answer lost): timed
            // from now, as the agent's own timeout is; the leader's expiry of an overdue
            // run counts from `started_at`.
            RunStatus::Running if *report == RunReport::Restarted => {
                if run.started_at.is_none_or(|t| t < now) {
                    run.started_at = Some(now);
                    tx.put_run(&run)?;
                }
                Ok(Response::ok(Outcome::Run(Box::new(run))))
            }
            // The same report again (its answer was lost): nothing more changes.
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

pub(super) fn expire(
    tx: &mut Tx<'_>,
    run_id: u64,
    attempt: u32,
    reason: &str,
    jitter_ms: u64,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut run) = tx.run(run_id)? else {
        return Ok(Response::rejected(Rejection::RunNotFound(run_id)));
    };
    if run.attempt != attempt || !run.is_assigned() {
        return Ok(Response::rejected(Rejection::StaleAttempt {
            run_id,
            attempt,
            worker_id: run.worker_id.clone().unwrap_or_default(),
            epoch: run.worker_epoch,
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
    let Some(task) = tx.task(run.task_id)? else { return Ok(()) };
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
pub(super) fn queue_next_attempt(
    tx: &mut Tx<'_>,
    mut task: Task,
    run: &Run,
    not_before: Option<DateTime<Utc>>,
    lost: bool,
    now: DateTime<Utc>,
) -> io::Result<u64> {
    let id = alloc_run_id(tx)?;
    let mut next = run.next_attempt(id, &task, now, not_before);
    next.lost_requeues += u32::from(lost);
    tx.put_run(&next)?;
    task.last_run = Some(id);
    tx.put_task(&task)?;
    Ok(id)
}

fn alloc_run_id(tx: &mut Tx<'_>) -> io::Result<u64> {
    let id: u64 = tx.meta("next_run_id")?.unwrap_or(1);
    tx.put_meta("next_run_id", &(id + 1))?;
    Ok(id)
}

pub(super) fn new_run(
    tx: &mut Tx<'_>,
    task: &Task,
    trigger: RunTrigger,
    scheduled_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> io::Result<Run> {
    let id = alloc_run_id(tx)?;
    let run = Run::pending(id, task, trigger, scheduled_at, now);
    tx.put_run(&run)?;
    Ok(run)
}
