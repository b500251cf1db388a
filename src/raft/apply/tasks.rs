//! Applying task commands: create, update, delete, pause/resume, and the leader's firing
//! decisions (the cursor compare-and-set of guarantee 3) with history pruning.

use std::io;

use chrono::{DateTime, Utc};

use super::runs::new_run;
use crate::model::{
    required_tags, ConcurrencyPolicy, MisfirePolicy, RunStatus, RunTrigger, Task, TaskField, TaskSpec, TaskStatus,
};
use crate::raft::command::{Fired, Outcome, Rejection, Response, TaskFire};
use crate::storage::Tx;

pub(super) fn create(tx: &mut Tx<'_>, spec: &TaskSpec, now: DateTime<Utc>) -> io::Result<Response> {
    if let Err(e) = spec.validate() {
        return Ok(Response::rejected(Rejection::Invalid(e)));
    }
    if tx.task_id_by_name(&spec.name)?.is_some() {
        return Ok(Response::rejected(Rejection::NameTaken(spec.name.clone())));
    }
    let id: u64 = tx.meta("next_task_id")?.unwrap_or(1);
    tx.put_meta("next_task_id", &(id + 1))?;
    let task = Task::new(id, spec.clone(), now);
    tx.put_task(&task)?;
    tx.reindex_task(id, None, Some((&task.spec.name, task.spec.status)))?;
    Ok(Response::ok(Outcome::Task(Box::new(task))))
}

pub(super) fn update(
    tx: &mut Tx<'_>,
    id: u64,
    fields: &[TaskField],
    expected_version: Option<u64>,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let mut task = match task_to_change(tx, id, expected_version)? {
        Ok(task) => task,
        Err(rejection) => return Ok(Response::rejected(rejection)),
    };
    let old_name = task.spec.name.clone();
    let old_status = task.spec.status;
    let old_tags = required_tags(&task.spec.tags);
    let old_when = (task.spec.schedule.clone(), task.spec.timezone.clone());
    for f in fields.iter().cloned() {
        // A secret sent back redacted keeps the stored one; with none to keep, refused.
        if let Err(e) = f.merge_into(&mut task.spec) {
            return Ok(Response::rejected(Rejection::Invalid(e)));
        }
    }
    if let Err(e) = task.spec.executor_needs() {
        return Ok(Response::rejected(Rejection::Incomplete(e)));
    }
    if let Err(e) = task.spec.validate() {
        return Ok(Response::rejected(Rejection::Invalid(e)));
    }
    mark_resumed(&mut task, old_status, now);
    // A new schedule or time zone takes effect from the change: no tick before it fires
    // or counts as skipped (moving the cursor also refuses any `Fire` computed from the
    // old schedule, which the version change does too).
    if (task.spec.schedule.clone(), task.spec.timezone.clone()) != old_when {
        // Never backwards: a fired tick may lie after this command's time.
        task.cursor = task.cursor.max(Some(now));
    }
    if task.spec.name != old_name && tx.task_id_by_name(&task.spec.name)?.is_some() {
        return Ok(Response::rejected(Rejection::NameTaken(task.spec.name.clone())));
    }
    tx.reindex_task(id, Some((&old_name, old_status)), Some((&task.spec.name, task.spec.status)))?;
    let new_tags = required_tags(&task.spec.tags);
    if new_tags != old_tags {
        // Pending runs require the task's tags as they are now.
        for base in tx.base().unfinished_runs_of_task(id)? {
            let Some(mut run) = tx.run(base.id)? else { continue };
            if run.status == RunStatus::Pending {
                run.tags = new_tags.clone();
                tx.put_run(&run)?;
            }
        }
    }
    task.version += 1;
    task.updated_at = now;
    tx.put_task(&task)?;
    Ok(Response::ok(Outcome::Task(Box::new(task))))
}

pub(super) fn delete(tx: &mut Tx<'_>, id: u64, expected_version: Option<u64>) -> io::Result<Response> {
    let task = match task_to_change(tx, id, expected_version)? {
        Ok(task) => task,
        Err(rejection) => return Ok(Response::rejected(rejection)),
    };
    // Its runs go with it, finished or not: a worker reporting on one is told the run
    // no longer exists. Bounded by the run history plus the unfinished runs.
    let (runs, _) = tx.base().runs_of_task(id, 0, usize::MAX)?;
    for run in &runs {
        tx.delete_run(run.id)?;
    }
    tx.delete_task(id);
    tx.reindex_task(id, Some((&task.spec.name, task.spec.status)), None)?;
    Ok(Response::ok(Outcome::TaskDeleted { id }))
}

/// Pause or resume (`active`) a task; a disabled task changes only when `may_enable`.
pub(super) fn set_status(
    tx: &mut Tx<'_>,
    id: u64,
    status: TaskStatus,
    may_enable: bool,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let Some(mut task) = tx.task(id)? else {
        return Ok(Response::rejected(Rejection::TaskNotFound(id)));
    };
    let old_status = task.spec.status;
    if old_status == TaskStatus::Disabled && !may_enable {
        return Ok(Response::rejected(Rejection::TaskDisabled(id)));
    }
    if old_status != status {
        task.spec.status = status;
        mark_resumed(&mut task, old_status, now);
        task.version += 1;
        task.updated_at = now;
        tx.put_task(&task)?;
        tx.reindex_task(id, Some((&task.spec.name, old_status)), Some((&task.spec.name, status)))?;
    }
    Ok(Response::ok(Outcome::Task(Box::new(task))))
}

pub(super) fn fire(
    tx: &mut Tx<'_>,
    fires: &[TaskFire],
    keep_runs: u32,
    misfire_threshold: chrono::Duration,
    now: DateTime<Utc>,
) -> io::Result<Response> {
    let mut results = Vec::with_capacity(fires.len());
    for fire in fires {
        results.push(apply_fire(tx, fire, keep_runs, misfire_threshold, now)?);
    }
    Ok(Response::ok(Outcome::Fired(results)))
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
    misfire_threshold: chrono::Duration,
    now: DateTime<Utc>,
) -> io::Result<Result<Fired, Rejection>> {
    let TaskFire { task_id, spec_version, expected_cursor, fired, skipped, new_cursor } = fire;
    let Some(mut task) = tx.task(*task_id)? else {
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
    // No tick is accounted for before its time has come in command time: a run's
    // `created_at` is never before its `scheduled_at` (the leader stamps a `Fire` at
    // least at the instant it planned it, so only a malformed proposal meets this).
    if *new_cursor > now {
        return Ok(Err(Rejection::Invalid(crate::model::FieldError::new(
            "new_cursor",
            "lies after the command's own time: ticks not yet due",
        ))));
    }
    // Concurrency policy, against runs already stored (as this entry left them) and runs
    // this command made.
    let mut unfinished = Vec::new();
    for base in tx.base().unfinished_runs_of_task(task.id)? {
        if let Some(run) = tx.run(base.id)?.filter(|r| !r.status.is_final()) {
            unfinished.push(run);
        }
    }
    let mut runs = Vec::with_capacity(fired.len());
    let mut forbidden = 0u64;
    // `skip` never runs a tick later than the threshold, measured in the time the run is
    // created in (chaos suite: a `Fire` planned on time committed 32 s later in command
    // time, after a clock strobe on the leader had moved command time ahead).
    let mut too_late = 0u64;
    for tick in fired {
        if task.spec.misfire_policy == MisfirePolicy::Skip && now - *tick > misfire_threshold {
            too_late += 1;
            continue;
        }
        match task.spec.concurrency_policy {
            ConcurrencyPolicy::Forbid if !unfinished.is_empty() => {
                forbidden += 1;
                continue;
            }
            ConcurrencyPolicy::Replace => {
                for mut old in unfinished.drain(..) {
                    old.status = RunStatus::Cancelled;
                    old.finished_at = Some(now);
                    old.error = Some(format!("replaced by the tick at {tick}"));
                    tx.put_run(&old)?;
                }
            }
            _ => {}
        }
        let run = new_run(tx, &task, RunTrigger::Schedule, *tick, now)?;
        runs.push(run.id);
        unfinished.push(run);
    }
    task.fire_count += runs.len() as u64;
    task.skipped_ticks += skipped + forbidden + too_late;
    task.cursor = Some(*new_cursor);
    if let Some(last) = runs.last() {
        task.last_run = Some(*last);
    }
    prune_runs(tx, &mut task, keep_runs, runs.len())?;
    tx.put_task(&task)?;
    Ok(Ok(Fired { runs, forbidden, late: too_late }))
}

/// Deletes the task's finished runs beyond the newest `keep`, once it stores a tenth more
/// than it kept last time (so a scan of n runs happens once per n/10 new runs: constant
/// work per run, however many unfinished runs pile up). Unfinished runs are never pruned;
/// `fire_count` lives on the task and is not touched. `created` runs were made by this
/// batch and are not among the committed runs the scan sees.
pub(super) fn prune_runs(tx: &mut Tx<'_>, task: &mut Task, keep: u32, created: usize) -> io::Result<()> {
    let floor = u64::from(keep).max(task.prune_floor);
    if tx.runs_stored(task.id)? <= floor + (floor / 10).max(1) {
        return Ok(());
    }
    // Newest first; the batch's own runs are the newest of all.
    let skip = (keep as usize).saturating_sub(created);
    let (older, _) = tx.base().runs_of_task(task.id, skip, usize::MAX)?;
    for base in &older {
        // As this entry left it: a run it changed is judged by its new state.
        if tx.run(base.id)?.is_some_and(|r| r.status.is_final()) {
            tx.delete_run(base.id)?;
        }
    }
    task.prune_floor = tx.runs_stored(task.id)?;
    Ok(())
}

/// The task a client update or delete addresses, if it exists and (with `If-Match`) its
/// version still matches.
fn task_to_change(tx: &Tx<'_>, id: u64, expected_version: Option<u64>) -> io::Result<Result<Task, Rejection>> {
    let Some(task) = tx.task(id)? else { return Ok(Err(Rejection::TaskNotFound(id))) };
    match expected_version {
        Some(expected) if expected != task.version => {
            Ok(Err(Rejection::VersionMismatch { expected, actual: task.version }))
        }
        _ => Ok(Ok(task)),
    }
}
