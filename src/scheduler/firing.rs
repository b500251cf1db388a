//! Leader-only firing: keeps an index of every active task's next tick, and when ticks
//! fall due proposes `Fire` commands — one entry for a whole batch of tasks — whose apply
//! is a compare-and-set on each task's cursor (guarantee 3).
//!
//! The index lives only on the leader: built by one scan when the node becomes leader
//! (or installs a snapshot), then kept current from the task ids each applied entry
//! touched ([`crate::storage::TaskChanges`]), so a wake costs the due tasks, not all
//! tasks. The loop sleeps until the earliest tick or a task change (at most
//! [`MAX_SLEEP`]). "Now" is `max(this node's clock, the last applied command time)`: a new
//! leader whose clock runs behind cannot re-fire ticks (the cursor forbids it anyway) nor
//! fire them early.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cron::{parse_timezone, Schedule};
use crate::model::{ConcurrencyPolicy, MisfirePolicy, Task, TaskStatus};
use crate::node::NodeCore;
use crate::raft::{Command, Outcome, Rejection, TaskFire};
use crate::storage::Store;

/// The longest the loop sleeps without a change or a due tick.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Ticks fired per task per `Fire` at most; a longer backlog is worked off over several.
const MAX_TICKS_PER_FIRE: usize = 1000;
/// Ticks counted as skipped (while paused) per task per `Fire` at most.
const MAX_PAUSED_TICKS: u64 = 100_000;
/// Tasks per `Fire` entry: large enough that thousands of tasks due in the same second
/// commit in a few entries, small enough that one entry stays well under a megabyte.
const TASKS_PER_FIRE: usize = 500;
/// Tasks planned per wake at most; the rest are still due on the next (immediate) wake.
const TASKS_PER_WAKE: usize = 20_000;
/// How long a task whose proposal failed waits before it is tried again.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

/// What to propose for one task, computed from its schedule, cursor and policy.
#[derive(Debug, PartialEq)]
pub struct FirePlan {
    pub fired: Vec<DateTime<Utc>>,
    pub skipped: u64,
    pub new_cursor: DateTime<Utc>,
}

/// Plans the ticks of `task` due at `now`: those after the cursor and at or before `now`.
/// Ticks up to the task's last resumption are skipped (it was paused or disabled then).
/// Ticks older than `misfire_threshold` are misfires, handled by the task's policy:
/// `fire_once` fires the latest of them and skips the rest, `skip` skips them all,
/// `catch_up` fires them all (at most [`MAX_TICKS_PER_FIRE`] per plan).
pub fn plan(task: &Task, now: DateTime<Utc>, misfire_threshold: chrono::Duration) -> Option<FirePlan> {
    let expr = task.spec.schedule.as_deref()?;
    let schedule = Schedule::parse(expr).ok()?;
    let tz = parse_timezone(&task.spec.timezone).ok()?;
    let mut at = task.cursor.unwrap_or(task.created_at);
    let next = |at| schedule.next_after(tz, task.created_at, at);

    // Ticks that passed while the task was not active: counted, never fired.
    let mut paused = 0u64;
    if let Some(resumed) = task.resumed_at.filter(|r| *r > at) {
        while let Some(t) = next(at).filter(|t| *t <= resumed && *t <= now) {
            at = t;
            paused += 1;
            if paused == MAX_PAUSED_TICKS {
                return Some(FirePlan { fired: Vec::new(), skipped: paused, new_cursor: at });
            }
        }
    }

    let mut due = Vec::new();
    let mut truncated = false;
    while let Some(t) = next(at) {
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
    if due.is_empty() && paused == 0 {
        return None;
    }
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
    Some(FirePlan { fired, skipped: skipped + paused, new_cursor: at })
}

/// The task's first tick after its cursor: when it is next due.
fn next_tick(task: &Task) -> Option<DateTime<Utc>> {
    let schedule = Schedule::parse(task.spec.schedule.as_deref()?).ok()?;
    let tz = parse_timezone(&task.spec.timezone).ok()?;
    schedule.next_after(tz, task.created_at, task.cursor.unwrap_or(task.created_at))
}

/// When the task will next fire, as its view shows it: the first tick after its cursor
/// and after its last resumption (ticks while it was paused are skipped), or `None` when
/// it has no schedule or is paused or disabled. Evaluated by the node that serves the read
/// from replicated state, with the same code the firing loop uses.
pub fn next_fire_at(task: &Task) -> Option<DateTime<Utc>> {
    if task.spec.status != TaskStatus::Active {
        return None;
    }
    let schedule = Schedule::parse(task.spec.schedule.as_deref()?).ok()?;
    let tz = parse_timezone(&task.spec.timezone).ok()?;
    let from = task.cursor.unwrap_or(task.created_at).max(task.resumed_at.unwrap_or(task.created_at));
    schedule.next_after(tz, task.created_at, from)
}

/// When each active, scheduled task is next due, ordered by that time.
#[derive(Default)]
struct DueIndex {
    by_time: BTreeSet<(DateTime<Utc>, u64)>,
    of_task: BTreeMap<u64, DateTime<Utc>>,
}

impl DueIndex {
    fn build(store: &Store) -> io::Result<DueIndex> {
        let mut index = DueIndex::default();
        store.scan_tasks(|task| {
            index.set(task.id, due_at(&task));
            true
        })?;
        Ok(index)
    }

    fn set(&mut self, id: u64, due: Option<DateTime<Utc>>) {
        if let Some(old) = self.of_task.remove(&id) {
            self.by_time.remove(&(old, id));
        }
        if let Some(at) = due {
            self.by_time.insert((at, id));
            self.of_task.insert(id, at);
        }
    }

    fn refresh(&mut self, store: &Store, id: u64) -> io::Result<()> {
        let due = store.task(id)?.as_ref().and_then(due_at);
        self.set(id, due);
        Ok(())
    }

    /// Tasks due at `now`, earliest first, at most `limit`.
    fn due(&self, now: DateTime<Utc>, limit: usize) -> Vec<u64> {
        self.by_time.range(..=(now, u64::MAX)).take(limit).map(|(_, id)| *id).collect()
    }

    fn earliest(&self) -> Option<DateTime<Utc>> {
        self.by_time.first().map(|(at, _)| *at)
    }
}

fn due_at(task: &Task) -> Option<DateTime<Utc>> {
    (task.spec.status == TaskStatus::Active).then(|| next_tick(task)).flatten()
}

/// Runs on every node; acts while this node leads.
pub async fn run(core: Arc<NodeCore>) {
    let mut index: Option<DueIndex> = None;
    loop {
        if !core.is_leader() {
            index = None;
            core.store.task_changes().take();
            tokio::time::sleep(MAX_SLEEP).await;
            continue;
        }
        match wake(&core, &mut index).await {
            Ok(sleep) => {
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = core.store.task_changes().changed() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "firing: cannot read tasks");
                index = None;
                tokio::time::sleep(MAX_SLEEP).await;
            }
        }
    }
}

/// One pass: bring the index up to date, fire what is due, and say how long to sleep.
async fn wake(core: &Arc<NodeCore>, index: &mut Option<DueIndex>) -> io::Result<Duration> {
    // Take the changes before reading tasks, so a change applied meanwhile is seen next time.
    let changed = core.store.task_changes().take();
    let index = match index {
        Some(index) if !changed.all => {
            for id in changed.ids {
                index.refresh(&core.store, id)?;
            }
            index
        }
        _ => index.insert(DueIndex::build(&core.store)?),
    };
    let threshold = chrono::Duration::seconds(core.config.scheduler.misfire_threshold_s as i64);
    let now = match core.store.clock()? {
        Some(last) => last.max(Utc::now()),
        None => Utc::now(),
    };
    let mut fires = Vec::new();
    // Admission: ticks beyond the room for pending runs are skipped, each counted.
    let cfg = &core.config.scheduler;
    let mut room = super::admission::global_room(&core.store, cfg)?;
    let mut capped_ticks = 0u64;
    for id in index.due(now, TASKS_PER_WAKE) {
        let Some(task) = core.store.task(id)? else {
            index.set(id, None);
            continue;
        };
        match plan(&task, now, threshold) {
            Some(mut p) => {
                // A `replace` task builds no backlog (each tick cancels the runs before it).
                let task_room = match p.fired.is_empty() || task.spec.concurrency_policy == ConcurrencyPolicy::Replace {
                    true => u64::MAX,
                    false => super::admission::task_room(&core.store, &task, cfg)?,
                };
                let admitted = room.min(task_room).min(p.fired.len() as u64) as usize;
                let capped = (p.fired.len() - admitted) as u64;
                // The newest ticks run: the older ones are the likelier to be late.
                p.fired.drain(..p.fired.len() - admitted);
                room -= admitted as u64;
                capped_ticks += capped;
                fires.push(Planned {
                    fire: TaskFire {
                        task_id: id,
                        spec_version: task.version,
                        expected_cursor: task.cursor,
                        fired: p.fired,
                        skipped: p.skipped + capped,
                        new_cursor: p.new_cursor,
                    },
                    capped,
                })
            }
            // The index was behind the task (e.g. its schedule changed): correct it.
            None => index.set(id, due_at(&task)),
        }
    }
    if capped_ticks > 0 {
        tracing::warn!(
            ticks = capped_ticks,
            pending_cap = cfg.max_pending_runs,
            task_pending_cap = cfg.max_pending_runs_per_task,
            "too many runs wait for a worker: schedule ticks skipped (counted in each task's skipped_ticks)"
        );
    }
    let batches: Vec<Vec<Planned>> = fires.chunks(TASKS_PER_FIRE).map(<[Planned]>::to_vec).collect();
    let results = futures::future::join_all(batches.into_iter().map(|batch| propose(core, batch, now))).await;
    // A task whose fire did not commit (or was refused for a reason other than a race) is
    // retried a little later; the others are re-indexed through the change set.
    for id in results.into_iter().flatten() {
        index.set(id, Some(now + RETRY_AFTER));
    }
    let until_due = index.earliest().and_then(|t| (t - Utc::now()).to_std().ok());
    Ok(until_due.map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP)))
}

/// One task's fire as planned, and how many of its due ticks admission skipped (they are
/// in `fire.skipped` too, which is what the task counts).
#[derive(Clone)]
struct Planned {
    fire: TaskFire,
    capped: u64,
}

/// Proposes one `Fire` batch, planned at `planned_at` (its command time is at least that),
/// and records its metrics; returns the tasks to retry.
async fn propose(core: &NodeCore, batch: Vec<Planned>, planned_at: DateTime<Utc>) -> Vec<u64> {
    let keep_runs = core.config.scheduler.run_history_per_task;
    let ids: Vec<u64> = batch.iter().map(|p| p.fire.task_id).collect();
    let ticks: Vec<(u64, u64, Vec<DateTime<Utc>>)> =
        batch.iter().map(|p| (p.fire.skipped - p.capped, p.capped, p.fire.fired.clone())).collect();
    let batch: Vec<TaskFire> = batch.into_iter().map(|p| p.fire).collect();
    let misfire_threshold_ms = core.config.scheduler.misfire_threshold_s.saturating_mul(1000);
    let fire = core.internal_request(Command::Fire { fires: batch, keep_runs, misfire_threshold_ms });
    let resp = match core.propose_not_before(fire, planned_at).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(tasks = ids.len(), error = %e, "fire not committed; will retry");
            return ids;
        }
    };
    let results = match resp.result {
        Ok(Outcome::Fired(results)) => results,
        other => {
            tracing::warn!(result = ?other, "fire refused as a whole");
            return ids;
        }
    };
    let applied_at = Utc::now();
    let mut retry = Vec::new();
    for ((id, (misfired, capped, fired)), result) in ids.into_iter().zip(ticks).zip(results) {
        match result {
            Ok(f) => {
                core.metrics.ticks_fired.inc_by(f.runs.len() as u64);
                let skipped = &core.metrics.ticks_skipped;
                skipped.with_label_values(&["misfire"]).inc_by(misfired);
                skipped.with_label_values(&["concurrency"]).inc_by(f.forbidden);
                skipped.with_label_values(&["late"]).inc_by(f.late);
                skipped.with_label_values(&["pending_cap"]).inc_by(capped);
                for t in &fired {
                    let lag = (applied_at - *t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    core.metrics.schedule_lag.observe(lag);
                }
            }
            Err(Rejection::StaleFire(_)) => core.metrics.fires_deduplicated.inc(),
            Err(Rejection::TaskNotFound(_)) => {}
            Err(other) => {
                tracing::warn!(task_id = id, rejection = %other, "fire rejected");
                retry.push(id);
            }
        }
    }
    retry
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
        Task::new(1, TaskSpec::from_fields(fields, "UTC").unwrap(), created)
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
        let mut fired = t.clone();
        fired.cursor = Some(p.new_cursor);
        assert_eq!(next_fire_at(&fired), Some(at("2027-01-01T00:00:30Z")));
    }

    /// The next fire time a view shows: the first tick after the cursor, after the last
    /// resumption (paused ticks are skipped), none while paused; shown from creation on.
    #[test]
    fn next_fire_time_follows_cursor_resumption_and_status() {
        let mut t = task("0 * * * *", "fire_once", "2027-01-01T00:10:00Z");
        assert_eq!(next_fire_at(&t), Some(at("2027-01-01T01:00:00Z")), "known at creation");
        t.resumed_at = Some(at("2027-01-01T03:30:00Z"));
        assert_eq!(next_fire_at(&t), Some(at("2027-01-01T04:00:00Z")), "ticks while paused are skipped");
        t.spec.status = TaskStatus::Paused;
        assert_eq!(next_fire_at(&t), None);
        t.spec.status = TaskStatus::Active;
        t.spec.schedule = None;
        assert_eq!(next_fire_at(&t), None);
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

    #[test]
    fn ticks_while_paused_are_counted_as_skipped_and_never_fired() {
        // Every 10 s; paused before 00:00:10, resumed at 00:00:45: 10, 20, 30, 40 were
        // missed while paused; 50 is on time.
        let mut t = task("*/10 * * * * *", "catch_up", "2027-01-01T00:00:00Z");
        t.resumed_at = Some(at("2027-01-01T00:00:45Z"));
        let p = plan(&t, at("2027-01-01T00:00:46Z"), chrono::Duration::seconds(60)).unwrap();
        assert_eq!((p.fired.len(), p.skipped, p.new_cursor), (0, 4, at("2027-01-01T00:00:40Z")));
        let p = plan(&t, at("2027-01-01T00:00:51Z"), chrono::Duration::seconds(60)).unwrap();
        assert_eq!((p.fired, p.skipped), (vec![at("2027-01-01T00:00:50Z")], 4));
    }
}
