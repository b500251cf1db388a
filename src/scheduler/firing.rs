//! Leader-only firing: computes each active task's due ticks and proposes `Fire`
//! commands, whose apply is a compare-and-set on the task's cursor (guarantee 3).
//!
//! The loop wakes at the earliest next tick of any task (at least every
//! [`MAX_SLEEP`], to see new and changed tasks), so an idle cluster fires within a few
//! milliseconds of the nominal tick. "Now" is `max(this node's clock, the last applied
//! command time)`: a new leader whose clock runs behind cannot re-fire ticks (the cursor
//! forbids it anyway) nor fire them early.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cron::{parse_timezone, Schedule};
use crate::model::{MisfirePolicy, Task, TaskStatus};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome, Rejection};

/// The longest the loop sleeps; bounds how late a new task's first tick can be noticed.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Ticks recorded per `Fire` at most; a longer backlog is worked off over several.
const MAX_TICKS_PER_FIRE: usize = 1000;

/// What to propose for one task, computed from its schedule, cursor and policy.
#[derive(Debug, PartialEq)]
pub struct FirePlan {
    pub fired: Vec<DateTime<Utc>>,
    pub skipped: u64,
    pub new_cursor: DateTime<Utc>,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// Plans the ticks of `task` due at `now`: those after the cursor and at or before `now`.
/// Ticks older than `misfire_threshold` are misfires, handled by the task's policy:
/// `fire_once` fires the latest of them and skips the rest, `skip` skips them all,
/// `catch_up` fires them all (at most [`MAX_TICKS_PER_FIRE`] per plan).
pub fn plan(task: &Task, now: DateTime<Utc>, misfire_threshold: chrono::Duration) -> Option<FirePlan> {
    let expr = task.spec.schedule.as_deref()?;
    let schedule = Schedule::parse(expr).ok()?;
    let tz = parse_timezone(&task.spec.timezone).ok()?;
    let cursor = task.cursor.unwrap_or(task.created_at);
    let mut due = Vec::new();
    let mut at = cursor;
    let mut truncated = false;
    while let Some(t) = schedule.next_after(tz, task.created_at, at) {
        if t > now {
            break;
        }
        if due.len() == MAX_TICKS_PER_FIRE {
            truncated = true;
            break;
        }
        due.push(t);
        at = t;
    }
    let new_cursor = *due.last()?;
    let late = now - misfire_threshold;
    let (missed, on_time): (Vec<_>, Vec<_>) = due.iter().partition(|t| **t < late);
    let (mut fired, skipped) = match task.spec.misfire_policy {
        MisfirePolicy::CatchUp => (missed.clone(), 0),
        MisfirePolicy::Skip => (Vec::new(), missed.len() as u64),
        MisfirePolicy::FireOnce => match missed.last() {
            // While a backlog is still being worked off, keep skipping; fire once at its end.
            Some(last) if !truncated || !on_time.is_empty() => (vec![*last], missed.len() as u64 - 1),
            Some(_) => (Vec::new(), missed.len() as u64),
            None => (Vec::new(), 0),
        },
    };
    fired.extend(on_time);
    let next_run_at = schedule.next_after(tz, task.created_at, new_cursor);
    Some(FirePlan { fired, skipped, new_cursor, next_run_at })
}

/// Proposes `PruneRuns` once a task holds, beyond the runs it keeps, finished runs worth
/// a tenth of its history: one Raft entry per tenth of the history, not one per tick, and
/// none while only unfinished runs (which are never pruned) pile up.
async fn prune_if_over(core: &NodeCore, task_id: u64) {
    let keep = core.config.scheduler.run_history_per_task;
    let Ok((_, total)) = core.store.runs_of_task(task_id, 0, 0) else { return };
    let slack = u64::from(keep / 10).max(1);
    if total <= u64::from(keep) + slack {
        return;
    }
    let Ok((older, _)) = core.store.runs_of_task(task_id, keep as usize, usize::MAX) else { return };
    if (older.iter().filter(|r| r.status.is_final()).count() as u64) < slack {
        return;
    }
    if let Err(e) = core.propose_local(core.internal_request(Command::PruneRuns { task_id, keep })).await {
        tracing::debug!(task_id, error = %e, "prune not committed; will retry");
    }
}

/// The task's first tick after its cursor.
fn next_tick(task: &Task) -> Option<DateTime<Utc>> {
    let schedule = Schedule::parse(task.spec.schedule.as_deref()?).ok()?;
    let tz = parse_timezone(&task.spec.timezone).ok()?;
    schedule.next_after(tz, task.created_at, task.cursor.unwrap_or(task.created_at))
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Runs on every node; acts while this node leads.
pub async fn run(core: Arc<NodeCore>) {
    let threshold = chrono::Duration::seconds(core.config.scheduler.misfire_threshold_s as i64);
    loop {
        if !core.is_leader() {
            tokio::time::sleep(MAX_SLEEP).await;
            continue;
        }
        let now = match core.store.clock() {
            Ok(Some(last)) => last.max(Utc::now()),
            _ => Utc::now(),
        };
        let mut plans = Vec::new();
        let mut next_wake: Option<DateTime<Utc>> = None;
        let scanned = core.store.scan_tasks(|task| {
            if task.spec.status == TaskStatus::Active {
                if let Some(p) = plan(&task, now, threshold) {
                    plans.push((task.id, task.version, task.cursor, p));
                } else {
                    // Nothing due: wake for its next tick. A task that has never fired has
                    // no `next_run_at` yet (apply cannot evaluate cron), so compute it here.
                    next_wake = earliest(next_wake, task.next_run_at.or_else(|| next_tick(&task)));
                }
            }
            true
        });
        if let Err(e) = scanned {
            tracing::error!(error = %e, "firing: cannot read tasks");
        }
        let proposals = plans.into_iter().map(|(task_id, spec_version, expected_cursor, p)| {
            let core = core.clone();
            next_wake = earliest(next_wake, p.next_run_at);
            async move {
                let cmd = Command::Fire {
                    task_id,
                    spec_version,
                    expected_cursor,
                    fired: p.fired.clone(),
                    skipped: p.skipped,
                    new_cursor: p.new_cursor,
                    next_run_at: p.next_run_at,
                };
                match core.propose_local(core.internal_request(cmd)).await {
                    Ok(resp) => match resp.result {
                        Ok(Outcome::Fired { runs, forbidden }) => {
                            prune_if_over(&core, task_id).await;
                            core.metrics.ticks_fired.inc_by(runs.len() as u64);
                            core.metrics.ticks_skipped.inc_by(p.skipped + forbidden);
                            let applied_at = Utc::now();
                            for t in &p.fired {
                                let lag = (applied_at - *t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                                core.metrics.schedule_lag.observe(lag);
                            }
                        }
                        Err(Rejection::StaleFire(_)) => core.metrics.fires_deduplicated.inc(),
                        other => tracing::warn!(task_id, result = ?other, "fire rejected"),
                    },
                    Err(e) => tracing::debug!(task_id, error = %e, "fire not committed; will retry"),
                }
            }
        });
        futures::future::join_all(proposals).await;
        let sleep = next_wake.and_then(|t| (t - Utc::now()).to_std().ok()).map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP));
        tokio::time::sleep(sleep).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskField, TaskSpec};

    fn task(expr: &str, policy: &str, created: &str) -> Task {
        let fields = TaskField::parse_object(serde_json::json!({
            "name": "t", "executor": "shell", "command": "true", "schedule": expr, "misfire_policy": policy
        }))
        .unwrap();
        let created = DateTime::parse_from_rfc3339(created).unwrap().with_timezone(&Utc);
        Task {
            id: 1,
            spec: TaskSpec::from_fields(fields, "UTC").unwrap(),
            version: 1,
            created_at: created,
            updated_at: created,
            next_run_at: None,
            last_run: None,
            fire_count: 0,
            skipped_ticks: 0,
            cursor: Some(created),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn on_time_ticks_fire_and_nothing_is_due_before_the_first_tick() {
        let t = task("*/10 * * * * *", "fire_once", "2027-01-01T00:00:00Z");
        assert_eq!(plan(&t, at("2027-01-01T00:00:05Z"), chrono::Duration::seconds(60)), None);
        let p = plan(&t, at("2027-01-01T00:00:25Z"), chrono::Duration::seconds(60)).unwrap();
        assert_eq!(p.fired, vec![at("2027-01-01T00:00:10Z"), at("2027-01-01T00:00:20Z")]);
        assert_eq!((p.skipped, p.new_cursor), (0, at("2027-01-01T00:00:20Z")));
        assert_eq!(p.next_run_at, Some(at("2027-01-01T00:00:30Z")));
    }

    #[test]
    fn misfire_policies_after_an_outage() {
        // Ticks every 10 s; the cluster comes back at 00:02:05 with a 60 s threshold:
        // 00:00:10 … 00:01:00 are misfires (6), 00:01:10 … 00:02:00 are on time (6).
        let now = at("2027-01-01T00:02:05Z");
        let threshold = chrono::Duration::seconds(60);
        let once = plan(&task("*/10 * * * * *", "fire_once", "2027-01-01T00:00:00Z"), now, threshold).unwrap();
        assert_eq!(once.fired.len(), 7);
        assert_eq!(once.fired[0], at("2027-01-01T00:01:00Z"), "the latest misfire fires once");
        assert_eq!(once.skipped, 5);
        let skip = plan(&task("*/10 * * * * *", "skip", "2027-01-01T00:00:00Z"), now, threshold).unwrap();
        assert_eq!((skip.fired.len(), skip.skipped), (6, 6));
        let all = plan(&task("*/10 * * * * *", "catch_up", "2027-01-01T00:00:00Z"), now, threshold).unwrap();
        assert_eq!((all.fired.len(), all.skipped), (12, 0));
        for p in [once, skip, all] {
            assert_eq!(p.new_cursor, at("2027-01-01T00:02:00Z"));
        }
    }
}
