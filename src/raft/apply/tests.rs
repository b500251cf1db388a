//! Apply's unit tests: commands against a real RocksDB in a temp dir.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "tests may use the clock")]

use chrono::TimeZone;

use super::*;
use crate::model::{EnvValue, Liveness, RunStatus, TaskField, TaskSpec, TaskStatus, REDACTED};
use crate::raft::command::{Fired, IdempotencyKey, Response, RunReport, TaskFire};
use crate::storage::{open_db, Counter, Store};

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
    }
}

/// Applies a `Fire` of one task (history kept far beyond what tests create).
fn fire_at(store: &Store, at: DateTime<Utc>, fire: TaskFire) -> Result<Fired, Rejection> {
    match apply(store, Command::Fire { fires: vec![fire], keep_runs: 1000, misfire_threshold_ms: 60_000 }, at).result {
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
    apply(&store, Command::UpdateTask { id: 1, fields: vec![TaskField::RetryCount(2)], expected_version: None }, t(6));
    assert_eq!(fire_at(&store, t(6), fire(t(4), &[t(5)], t(5), 1)), Err(Rejection::StaleFire(1)));
    assert!(fire_at(&store, t(6), fire(t(4), &[t(5)], t(5), 2)).is_ok());

    assert_eq!(scheduled_ticks(&store), vec![t(1), t(2), t(3), t(4), t(5)]);
    let task = store.task(1).unwrap().unwrap();
    assert_eq!((task.fire_count, task.cursor, task.version), (5, Some(t(5)), 2));
}

fn store_with_task(policy: &str) -> (tempfile::TempDir, Store) {
    store_with_per_second_task("concurrency_policy", policy)
}

/// A store holding task 1, "c", a per-second shell task with `field` set to `value`.
fn store_with_per_second_task(field: &str, value: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let mut fields =
        serde_json::json!({"name": "c", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    fields[field] = serde_json::Value::String(value.into());
    let fields = TaskField::parse_object(fields).unwrap();
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
    let r = apply(
        &store,
        Command::Fire { fires: vec![fire(t(6), &[t(7)], t(7), 1)], keep_runs: 2, misfire_threshold_ms: 60_000 },
        t(7),
    );
    assert!(r.result.is_ok());
    let (left, total) = store.runs_of_task(1, 0, 100).unwrap();
    let ids: Vec<u64> = left.iter().map(|r| r.id).collect();
    assert_eq!((ids, total), (vec![7, 6, 4], 3), "newest two kept, plus pending run 4");
    let task = store.task(1).unwrap().unwrap();
    assert_eq!((task.fire_count, store.runs_stored(1).unwrap()), (7, 3), "pruning never lowers fire_count");
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
    let r = apply(
        &store,
        Command::Fire { fires: vec![stale, second, missing], keep_runs: 10, misfire_threshold_ms: 60_000 },
        t(2),
    )
    .result;
    let Ok(Outcome::Fired(results)) = r else { panic!("{r:?}") };
    assert_eq!(results[0], Err(Rejection::StaleFire(1)));
    assert!(matches!(results[1], Ok(Fired { ref runs, forbidden: 0, .. }) if runs.len() == 1));
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
    let key =
        |ttl_ms| IdempotencyKey { scope: "c".into(), key: "k".into(), fingerprint: "f".into(), ttl_ms, client: true };
    let create = |name: &str| {
        let fields =
            TaskField::parse_object(serde_json::json!({"name": name, "executor": "shell", "command": "true"})).unwrap();
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
        killed: Vec::new(),
        requeue_delay_ms: 0,
    };
    let offline = || Command::SetWorkerLiveness {
        id: "w".into(),
        liveness: Liveness::Offline,
        max_lost_requeues: 1,
        reason: "silent".into(),
    };
    assert!(apply(&store, register(), t(1)).result.is_ok());
    apply(&store, Command::TriggerRun { task_id: 1, keep_runs: 100 }, t(1));
    let assign =
        |run: u64| Command::AssignRuns { assignments: vec![(run, "w".into())], released: vec![], expired: vec![] };
    assert_eq!(apply(&store, assign(1), t(2)).result, Ok(Outcome::Assigned { placed: 1, expired: 0 }));
    assert_eq!(store.assignments_of("w").unwrap(), vec![1]);
    let r = apply(&store, offline(), t(3)).result;
    assert_eq!(r, Ok(Outcome::Lost { lost: vec![1], requeued: vec![2] }));
    let retry = store.run(2).unwrap().unwrap();
    assert_eq!((retry.attempt, retry.lost_requeues, retry.status), (2, 1, RunStatus::Pending));
    // Offline: placement onto it is refused in apply.
    assert_eq!(apply(&store, assign(2), t(4)).result, Ok(Outcome::Assigned { placed: 0, expired: 0 }));
    // Back (re-registered), assigned, lost again: the chain's one re-queue is spent.
    apply(&store, register(), t(5));
    apply(&store, assign(2), t(5));
    let r = apply(&store, offline(), t(6)).result;
    assert_eq!(r, Ok(Outcome::Lost { lost: vec![2], requeued: vec![] }));
    // The first attempt's holder reports late: refused, and the state is untouched.
    let digest = store.digest().unwrap();
    let late = succeeded(1, 1);
    assert!(matches!(apply(&store, late, t(7)).result, Err(Rejection::StaleAttempt { .. })));
    assert_eq!(store.digest().unwrap(), digest);
    assert!(store.assignments_of("w").unwrap().is_empty());
}

/// Regression test for `runs_stored` drifting: one entry that loses several runs of the same
/// task re-queued each from the committed task, so the counter rose by one instead of by
/// the number of re-queued runs (and pruning could later underflow it).
#[test]
fn losing_several_runs_of_one_task_in_one_entry_counts_every_requeued_run() {
    let (_d, store) = store_with_task("allow");
    let register = Command::RegisterWorker {
        id: "w".into(),
        name: String::new(),
        max_tasks: 3,
        tags: Vec::new(),
        max_lost_requeues: 3,
        killed: Vec::new(),
        requeue_delay_ms: 0,
    };
    assert!(apply(&store, register, t(1)).result.is_ok());
    for _ in 0..3 {
        apply(&store, Command::TriggerRun { task_id: 1, keep_runs: 100 }, t(1));
    }
    let assignments = (1..=3).map(|run| (run, "w".to_string())).collect();
    assert_eq!(
        apply(&store, Command::AssignRuns { assignments, released: vec![], expired: vec![] }, t(2)).result,
        Ok(Outcome::Assigned { placed: 3, expired: 0 })
    );
    let offline = Command::SetWorkerLiveness {
        id: "w".into(),
        liveness: Liveness::Offline,
        max_lost_requeues: 3,
        reason: "silent".into(),
    };
    assert_eq!(apply(&store, offline, t(3)).result, Ok(Outcome::Lost { lost: vec![1, 2, 3], requeued: vec![4, 5, 6] }));
    let (_, stored) = store.runs_of_task(1, 0, usize::MAX).unwrap();
    assert_eq!(stored, 6);
    assert_eq!(store.runs_stored(1).unwrap(), stored, "the counter matches the runs stored");
}

/// Worker `w`'s report that attempt 1 of `run_id` succeeded, under registration `epoch`.
fn succeeded(run_id: u64, epoch: u64) -> Command {
    Command::ReportRun {
        run_id,
        attempt: 1,
        worker_id: "w".into(),
        epoch,
        report: RunReport::Finished {
            status: RunStatus::Succeeded,
            exit_code: Some(0),
            http_status: None,
            output: String::new(),
            error: None,
            duration_ms: 5,
        },
        retry_jitter_ms: 0,
    }
}

fn register_w(killed: Vec<crate::model::RunAttempt>) -> Command {
    Command::RegisterWorker {
        id: "w".into(),
        name: String::new(),
        max_tasks: 4,
        tags: Vec::new(),
        max_lost_requeues: 3,
        killed,
        requeue_delay_ms: 30_000,
    }
}

fn started(run_id: u64, epoch: u64) -> Command {
    Command::ReportRun {
        run_id,
        attempt: 1,
        worker_id: "w".into(),
        epoch,
        report: RunReport::Started,
        retry_jitter_ms: 0,
    }
}

/// Each registration is a new epoch. `Started` is idempotent within the epoch the run was
/// placed with (a lost answer retried) and refused from any other; a new registration
/// re-queues the old epoch's runs at once when they never started or the new agent saw
/// them killed, and only after the delay otherwise.
#[test]
fn registrations_fence_each_other_and_delay_what_may_still_run() {
    let (_d, store) = store_with_task("allow");
    let epoch = |r: Response| match r.result {
        Ok(Outcome::Worker(w)) => w.epoch,
        other => panic!("{other:?}"),
    };
    assert_eq!(epoch(apply(&store, register_w(vec![]), t(1))), 1);
    for _ in 0..3 {
        apply(&store, Command::TriggerRun { task_id: 1, keep_runs: 100 }, t(1));
    }
    let assignments = (1..=3).map(|run| (run, "w".to_string())).collect();
    apply(&store, Command::AssignRuns { assignments, released: vec![], expired: vec![] }, t(2));
    assert_eq!(store.run(1).unwrap().unwrap().worker_epoch, 1);
    assert!(apply(&store, started(1, 1), t(3)).result.is_ok());
    assert_eq!(store.run(1).unwrap().unwrap().started_at, Some(t(3)));
    assert!(apply(&store, started(1, 1), t(4)).result.is_ok(), "the same Started again: accepted");
    assert_eq!(store.run(1).unwrap().unwrap().started_at, Some(t(3)), "...and it changes nothing");
    // A job started late (the first Started's answer was lost, the agent started it only
    // when it saw the run running here) is timed from then: the leader expires a run from
    // `started_at`, the agent's shim times it from its start.
    let restarted = |at| {
        let Command::ReportRun { run_id, attempt, worker_id, epoch, retry_jitter_ms, .. } = started(1, 1) else {
            unreachable!()
        };
        let cmd =
            Command::ReportRun { run_id, attempt, worker_id, epoch, report: RunReport::Restarted, retry_jitter_ms };
        apply(&store, cmd, at)
    };
    assert!(restarted(t(4)).result.is_ok());
    assert_eq!(store.run(1).unwrap().unwrap().started_at, Some(t(4)), "timed from the late start");
    assert!(restarted(t(3)).result.is_ok());
    assert_eq!(store.run(1).unwrap().unwrap().started_at, Some(t(4)), "never moved back");
    assert!(matches!(apply(&store, started(1, 2), t(3)).result, Err(Rejection::StaleAttempt { .. })));
    assert!(apply(&store, started(2, 1), t(3)).result.is_ok());
    // Runs 1 and 2 run, 3 never started. The new agent saw run 2 killed.
    let killed = vec![crate::model::RunAttempt { run_id: 2, attempt: 1 }];
    assert_eq!(epoch(apply(&store, register_w(killed), t(4))), 2);
    let retry_of = |old: u64| {
        let mut found = None;
        store
            .scan_runs(|r| {
                if r.retry_of == Some(old) {
                    found = Some(r);
                }
                true
            })
            .unwrap();
        found.expect("re-queued")
    };
    assert_eq!(retry_of(1).not_before, Some(t(4) + chrono::Duration::seconds(30)), "may still run: delayed");
    assert_eq!(retry_of(2).not_before, None, "seen killed: at once");
    assert_eq!(retry_of(3).not_before, None, "never started: at once");
    assert!(matches!(apply(&store, started(1, 1), t(5)).result, Err(Rejection::StaleAttempt { .. })));
    // The delayed retry is released only once its time has come, then placed.
    let delayed = retry_of(1).id;
    let place = |released: Vec<u64>| Command::AssignRuns {
        assignments: vec![(delayed, "w".into())],
        released,
        expired: vec![],
    };
    assert_eq!(apply(&store, place(vec![delayed]), t(6)).result, Ok(Outcome::Assigned { placed: 0, expired: 0 }));
    let due = t(4) + chrono::Duration::seconds(30);
    assert_eq!(apply(&store, place(vec![delayed]), due).result, Ok(Outcome::Assigned { placed: 1, expired: 0 }));
    let placed = store.run(delayed).unwrap().unwrap();
    assert_eq!((placed.status, placed.worker_epoch, placed.not_before), (RunStatus::Assigned, 2, None));
}

/// A pending run with a deadline fails once the leader says it passed (and not before);
/// every index it was in lets go of it.
#[test]
fn a_pending_run_fails_at_its_deadline() {
    let (_d, store) = store_with_task("allow");
    let update =
        Command::UpdateTask { id: 1, fields: vec![TaskField::PendingTimeoutS(Some(10))], expected_version: None };
    assert!(apply(&store, update, t(0)).result.is_ok());
    apply(&store, Command::TriggerRun { task_id: 1, keep_runs: 100 }, t(1));
    assert_eq!(store.run(1).unwrap().unwrap().pending_deadline, Some(t(11)));
    let expire = || Command::AssignRuns { assignments: vec![], released: vec![], expired: vec![1] };
    assert_eq!(apply(&store, expire(), t(10)).result, Ok(Outcome::Assigned { placed: 0, expired: 0 }));
    assert_eq!(apply(&store, expire(), t(11)).result, Ok(Outcome::Assigned { placed: 0, expired: 1 }));
    let failed = store.run(1).unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(store.queued_runs().unwrap(), 0);
    assert_eq!(store.due_runs(crate::storage::CF_RUN_DEADLINES, i64::MAX, 10).unwrap().0, Vec::<u64>::new());
}

/// Issue 10's edit cases at apply: a time-zone-only edit and a manual task given a
/// schedule both move the cursor to the edit (no backlog of ticks before it), and an edit
/// never moves a cursor that is already later back.
#[test]
fn schedule_and_time_zone_edits_start_from_the_edit_and_never_move_the_cursor_back() {
    let (_dir, store) = store_with_task("allow");
    let cursor = |store: &Store| store.task(1).unwrap().unwrap().cursor;
    assert_eq!(cursor(&store), Some(t(0)));
    let zone = TaskField::Timezone("Australia/Lord_Howe".into());
    assert!(apply(&store, Command::UpdateTask { id: 1, fields: vec![zone], expected_version: None }, t(7))
        .result
        .is_ok());
    assert_eq!(cursor(&store), Some(t(7)), "a time-zone edit starts from the edit");
    // A fire stamped at 12 s cannot move the cursor past 12 s (ticks not yet due in
    // command time); stamped at 20 s it can, and an edit at the same command time (stamps
    // never decrease, so never earlier) leaves the cursor alone.
    assert!(matches!(fire_at(&store, t(12), fire(t(7), &[t(8), t(9)], t(20), 2)), Err(Rejection::Invalid(_))));
    assert!(fire_at(&store, t(20), fire(t(7), &[t(8), t(9)], t(20), 2)).is_ok());
    assert_eq!(cursor(&store), Some(t(20)));
    let every = TaskField::Schedule(Some("@every 5s".into()));
    assert!(apply(&store, Command::UpdateTask { id: 1, fields: vec![every], expected_version: None }, t(20))
        .result
        .is_ok());
    assert_eq!(cursor(&store), Some(t(20)), "never moved back");

    // A manual task (no schedule) created at 0 and given one 12 minutes later: nothing
    // from before the edit is owed.
    let manual =
        TaskField::parse_object(serde_json::json!({"name": "m", "executor": "shell", "command": "true"})).unwrap();
    apply(&store, Command::CreateTask { spec: Box::new(TaskSpec::from_fields(manual, "UTC").unwrap()) }, t(0));
    let later = Utc.with_ymd_and_hms(2027, 1, 1, 0, 12, 0).unwrap();
    let every_second = TaskField::Schedule(Some("* * * * * *".into()));
    let r = apply(&store, Command::UpdateTask { id: 2, fields: vec![every_second], expected_version: None }, later);
    assert!(r.result.is_ok(), "{r:?}");
    assert_eq!(store.task(2).unwrap().unwrap().cursor, Some(later), "720 past ticks are not owed");
}

/// Issue 15: a secret written back as the views show it (`"***"`) keeps the stored secret;
/// with no stored secret of that name the whole update is refused and leaves no trace; a
/// create cannot store the marker as a secret's value (apply checks again what the API
/// checked).
#[test]
fn an_update_with_a_redacted_secret_keeps_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let fields = TaskField::parse_object(serde_json::json!({
        "name": "db", "executor": "shell", "command": "true",
        "environment": {"DB_PASS": {"value": "hunter2", "secret": true}, "MODE": "prod"}
    }))
    .unwrap();
    let spec = TaskSpec::from_fields(fields, "UTC").unwrap();
    assert!(apply(&store, Command::CreateTask { spec: Box::new(spec) }, t(0)).result.is_ok());
    let update = |environment: serde_json::Value| Command::UpdateTask {
        id: 1,
        fields: TaskField::parse_object(serde_json::json!({ "environment": environment })).unwrap(),
        expected_version: None,
    };
    let marker = serde_json::json!({"value": "***", "secret": true});

    let r = apply(&store, update(serde_json::json!({"DB_PASS": marker, "MODE": "staging"})), t(1));
    assert!(r.result.is_ok(), "{r:?}");
    let task = store.task(1).unwrap().unwrap();
    assert_eq!(task.spec.environment["DB_PASS"], EnvValue::Secret("hunter2".into()));
    assert_eq!(task.spec.environment["MODE"], EnvValue::Plain("staging".into()));
    assert_eq!(task.version, 2);

    let digest = store.digest().unwrap();
    let r = apply(&store, update(serde_json::json!({"DB_PASS": marker, "API_KEY": marker})), t(2));
    assert!(matches!(&r.result, Err(Rejection::Invalid(e)) if e.field == "environment.API_KEY"), "{r:?}");
    let r = apply(&store, update(serde_json::json!({"MODE": marker})), t(2));
    assert!(
        matches!(&r.result, Err(Rejection::Invalid(e)) if e.field == "environment.MODE"),
        "a plain value is no secret to keep: {r:?}"
    );
    assert_eq!(store.digest().unwrap(), digest, "a refused update leaves no trace");

    // A new value replaces the secret; a name left out is gone.
    let r = apply(&store, update(serde_json::json!({"DB_PASS": {"value": "rotated", "secret": true}})), t(3));
    assert!(r.result.is_ok(), "{r:?}");
    let environment = store.task(1).unwrap().unwrap().spec.environment;
    let expected = [("DB_PASS".to_string(), EnvValue::Secret("rotated".into()))];
    assert_eq!(environment.into_iter().collect::<Vec<_>>(), expected);

    let mut copy = store.task(1).unwrap().unwrap().spec;
    copy.name = "copy".into();
    copy.environment.insert("DB_PASS".into(), EnvValue::Secret(REDACTED.into()));
    let r = apply(&store, Command::CreateTask { spec: Box::new(copy) }, t(4));
    assert!(matches!(&r.result, Err(Rejection::Invalid(e)) if e.field == "environment.DB_PASS"), "{r:?}");
}

/// A tick of a `skip` task planned on time but committed more than the misfire threshold
/// later in command time is counted as skipped, never run; other policies run it.
/// Regression test (chaos suite, seed 182073668): a clock strobe on the leader moved
/// command time 30 s ahead while a `Fire` was in flight, and the run it made was
/// created 32.5 s after its tick under `skip`.
#[test]
fn a_skip_tick_committed_past_the_threshold_is_skipped_not_run() {
    for (policy, runs, skipped) in [("skip", 0, 1), ("fire_once", 1, 0), ("catch_up", 1, 0)] {
        let (_dir, store) = store_with_per_second_task("misfire_policy", policy);
        // Planned at t(1) for the tick at t(1); committed at t(40), threshold 30 s.
        let cmd =
            Command::Fire { fires: vec![fire(t(0), &[t(1)], t(1), 1)], keep_runs: 10, misfire_threshold_ms: 30_000 };
        assert!(apply(&store, cmd, t(40)).result.is_ok());
        let task = store.task(1).unwrap().unwrap();
        assert_eq!((task.fire_count, task.skipped_ticks, task.cursor), (runs, skipped, Some(t(1))), "{policy}");
        // Within the threshold (25 s late at t(45)), `skip` runs it.
        let cmd =
            Command::Fire { fires: vec![fire(t(1), &[t(20)], t(20), 1)], keep_runs: 10, misfire_threshold_ms: 30_000 };
        assert!(apply(&store, cmd, t(45)).result.is_ok());
        assert_eq!(store.task(1).unwrap().unwrap().fire_count, runs + 1, "{policy}");
    }
}

/// The maintained task indexes and counters follow every kind of change — create, rename
/// (also to a name sharing trigrams, and a change of case), pause and resume, runs
/// created, placed, started, finished, lost and re-queued, pruned, and tasks deleted with
/// their runs — as `verify` recomputes them from the tables after each step; and the
/// searches they serve answer what a scan answers.
fn create_named(store: &Store, name: &str) -> u64 {
    let fields =
        TaskField::parse_object(serde_json::json!({"name": name, "executor": "shell", "command": "true"})).unwrap();
    match apply(store, Command::CreateTask { spec: Box::new(TaskSpec::from_fields(fields, "UTC").unwrap()) }, t(1))
        .result
    {
        Ok(Outcome::Task(task)) => task.id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn task_indexes_and_counters_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let check = |step: &str| {
        let problems = store.verify().unwrap();
        assert!(problems.is_empty(), "after {step}: {problems:#?}");
    };
    let create = |name: &str| create_named(&store, name);
    let rename = |id: u64, name: &str| {
        let cmd = Command::UpdateTask { id, fields: vec![TaskField::Name(name.into())], expected_version: None };
        assert!(apply(&store, cmd, t(2)).result.is_ok(), "rename {id} to {name}");
    };
    let status = |id: u64, status: TaskStatus| {
        let cmd = Command::SetTaskStatus { id, status, may_enable: true };
        assert!(apply(&store, cmd, t(2)).result.is_ok());
    };
    for name in ["backup-db", "Backup-Logs", "report", "rebuild-index", "ab", "Été-backup", "ΣΥΝ-report"] {
        create(name);
    }
    check("creates");
    rename(1, "backup-database");
    rename(2, "BACKUP-logs");
    rename(3, "reports-weekly");
    check("renames");
    status(1, TaskStatus::Paused);
    status(2, TaskStatus::Disabled);
    status(2, TaskStatus::Active);
    check("status changes");
    assert_eq!(store.counter(Counter::Tasks(TaskStatus::Active)).unwrap(), 6);
    assert_eq!(store.counter(Counter::Tasks(TaskStatus::Paused)).unwrap(), 1);

    assert!(apply(&store, register_w(vec![]), t(3)).result.is_ok());
    for task_id in [2, 3, 3, 3] {
        assert!(apply(&store, Command::TriggerRun { task_id, keep_runs: 2 }, t(3)).result.is_ok());
    }
    check("triggers, with pruning");
    let queued: Vec<u64> =
        (1..=6).filter(|id| store.run(*id).unwrap().is_some_and(|r| r.status == RunStatus::Pending)).collect();
    let assignments = queued.iter().map(|run| (*run, "w".to_string())).collect();
    assert!(apply(&store, Command::AssignRuns { assignments, released: vec![], expired: vec![] }, t(4)).result.is_ok());
    check("assignments");
    assert_eq!(store.counter(Counter::TasksRunning).unwrap(), 2, "tasks 2 and 3 hold slots");
    assert!(apply(&store, started(queued[0], 1), t(5)).result.is_ok());
    assert!(apply(&store, succeeded(queued[0], 1), t(6)).result.is_ok());
    check("a run started and finished");
    let offline = Command::SetWorkerLiveness {
        id: "w".into(),
        liveness: Liveness::Offline,
        max_lost_requeues: 3,
        reason: "x".into(),
    };
    assert!(apply(&store, offline, t(7)).result.is_ok());
    check("runs lost and re-queued");
    assert_eq!(store.counter(Counter::TasksRunning).unwrap(), 0);
    assert_eq!(store.counter(Counter::Runs(RunStatus::Succeeded)).unwrap(), 1);
    assert!(store.counter(Counter::RunsOnDay(t(0).timestamp().div_euclid(86_400))).unwrap() >= 3);

    // Searches agree with a scan, for needles shorter and longer than a trigram.
    let mut all = Vec::new();
    store
        .scan_tasks(|task| {
            all.push(task);
            true
        })
        .unwrap();
    for needle in [
        "backup",
        "back",
        "ba",
        "b",
        "-",
        "log",
        "rep",
        "reports-weekly",
        "zzz",
        "ckup-d",
        "abc",
        "été",
        "é",
        "συν",
        "-re",
        "s",
        "gs",
        "y",
        "xq",
        "ab",
        "a",
    ] {
        for only in [None, Some(TaskStatus::Active), Some(TaskStatus::Paused)] {
            let want: Vec<u64> = all
                .iter()
                .filter(|t| only.is_none_or(|s| t.spec.status == s) && t.spec.name.to_lowercase().contains(needle))
                .map(|t| t.id)
                .collect();
            let found = store.search_tasks(needle, only, 0, 100).unwrap();
            assert_eq!(found.items.iter().map(|t| t.id).collect::<Vec<_>>(), want, "search {needle:?} in {only:?}");
            assert_eq!((found.total, found.exact), (want.len() as u64, true));
            let second = store.search_tasks(needle, only, 1, 1).unwrap().items;
            assert_eq!(
                second.iter().map(|t| t.id).collect::<Vec<_>>(),
                want.iter().skip(1).take(1).copied().collect::<Vec<_>>()
            );
        }
    }
    let (active, total) = store.tasks_with_status(TaskStatus::Active, 1, 2).unwrap();
    assert_eq!((active.iter().map(|t| t.id).collect::<Vec<_>>(), total), (vec![3, 4], 6));

    assert!(apply(&store, Command::DeleteTask { id: 3, expected_version: None }, t(8)).result.is_ok());
    assert!(apply(&store, Command::DeleteTask { id: 1, expected_version: None }, t(8)).result.is_ok());
    check("deletes with runs");
    assert_eq!(store.search_tasks("weekly", None, 0, 10).unwrap().total, 0, "a deleted task is not found");
}

/// A page starts from the counts of tasks per bucket of ids: across bucket boundaries,
/// with buckets thinned by deletes and status changes, with a bucket left empty, and past
/// the end, every page of every list is the one a scan gives.
#[test]
fn deep_pages_start_in_the_right_bucket() {
    use crate::storage::PAGE_BUCKET;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let n = 3 * PAGE_BUCKET + 10;
    for i in 1..=n {
        assert_eq!(create_named(&store, &format!("job-{i}")), i);
    }
    let set = |id: u64, status: TaskStatus| {
        let cmd = Command::SetTaskStatus { id, status, may_enable: true };
        assert!(apply(&store, cmd, t(2)).result.is_ok());
    };
    for id in (1..=n).filter(|id| id % 7 == 0) {
        set(id, TaskStatus::Paused);
    }
    for id in (1..=n).filter(|id| id % 11 == 0) {
        set(id, TaskStatus::Disabled);
    }
    // The whole second bucket goes, and some of the third.
    for id in (PAGE_BUCKET..2 * PAGE_BUCKET).chain((2 * PAGE_BUCKET..3 * PAGE_BUCKET).step_by(3)) {
        assert!(apply(&store, Command::DeleteTask { id, expected_version: None }, t(3)).result.is_ok());
    }
    let problems = store.verify().unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let mut all = Vec::new();
    store
        .scan_tasks(|task| {
            all.push((task.id, task.spec.status));
            true
        })
        .unwrap();
    for only in [None, Some(TaskStatus::Active), Some(TaskStatus::Paused), Some(TaskStatus::Disabled)] {
        let want: Vec<u64> = all.iter().filter(|(_, s)| only.is_none_or(|o| *s == o)).map(|(id, _)| *id).collect();
        for skip in [
            0,
            1,
            145,
            PAGE_BUCKET - 1,
            PAGE_BUCKET,
            PAGE_BUCKET + 1,
            1500,
            (want.len() as u64).saturating_sub(3),
            99_999,
        ] {
            let (page, total) = match only {
                None => store.task_page(skip, 5).unwrap(),
                Some(s) => store.tasks_with_status(s, skip, 5).unwrap(),
            };
            let expect: Vec<u64> = want.iter().skip(skip as usize).take(5).copied().collect();
            assert_eq!(page.iter().map(|t| t.id).collect::<Vec<_>>(), expect, "{only:?} from {skip}");
            assert_eq!(total, want.len() as u64);
        }
    }
}

/// A search counts its matches exactly up to `SEARCH_COUNT_AHEAD` past its page, then
/// stops and says its total is a lower bound; below that it is exact, whatever the page.
#[test]
fn a_search_stops_counting_past_its_limit_and_says_so() {
    use crate::storage::SEARCH_COUNT_AHEAD;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let matching = SEARCH_COUNT_AHEAD + 150;
    for i in 0..matching {
        create_named(&store, &format!("nightly-{i}"));
        if i % 10 == 0 {
            create_named(&store, &format!("hourly-{i}"));
        }
    }
    // One trigram (vouched by the index), longer needles (names checked), and shorter
    // ones (the lists of the trigrams they begin).
    for needle in ["nig", "nightly-", "ly-", "ni", "y"] {
        let all = if ["ly-", "y"].contains(&needle) { matching + matching.div_ceil(10) } else { matching };
        let first = store.search_tasks(needle, None, 0, 100).unwrap();
        assert_eq!((first.items.len(), first.total, first.exact), (100, 100 + SEARCH_COUNT_AHEAD, false), "{needle}");
        let last = store.search_tasks(needle, None, all - 60, 100).unwrap();
        assert_eq!((last.items.len() as u64, last.total, last.exact), (60, all, true), "{needle}");
    }
    let few = store.search_tasks("hourly", None, 0, 100).unwrap();
    assert_eq!((few.total, few.exact), (matching.div_ceil(10), true));
    assert!(few.items.iter().all(|t| t.spec.name.starts_with("hourly-")));
}

/// A needle of one or two bytes that occurs more often than a search collects list
/// entries for (`q` begins ~21,000 trigram entries here) is searched by reading names in id
/// order: the same answer as a scan; one that occurs less, from the lists.
#[test]
fn a_short_needle_that_occurs_often_reads_names_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let letters: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    let pairs: Vec<String> = letters.iter().flat_map(|x| letters.iter().map(move |y| format!("{x}{y}"))).collect();
    let mut names = Vec::new();
    for i in 0..700 {
        // 30 distinct trigrams that begin with q in each name.
        let body: String = (0..30).map(|k| format!("q{}", pairs[(i * 7 + k * 43) % pairs.len()])).collect();
        names.push(format!("{body}-{i}"));
    }
    names.push("Quatre-été".to_string());
    names.push("no match".to_string());
    for name in &names {
        create_named(&store, name);
    }
    for needle in ["q", "qa", "-1", "é", "zq"] {
        let want: Vec<u64> =
            (1..=names.len() as u64).filter(|id| names[*id as usize - 1].to_lowercase().contains(needle)).collect();
        let found = store.search_tasks(needle, None, 0, 100).unwrap();
        let first: Vec<u64> = want.iter().take(100).copied().collect();
        assert_eq!(found.items.iter().map(|t| t.id).collect::<Vec<_>>(), first, "{needle}");
        assert_eq!((found.total, found.exact), (want.len() as u64, true), "{needle}");
    }
}

/// The sweep reads the expiry index from where its last removal reached (its cost is in
/// `cargo bench --bench sweep`: from the start, through 299k tombstones, 57 ms per entry;
/// from the cursor 0.009 ms): every expired record still goes — also records sharing one
/// millisecond, also a TTL of 0 — none before its time, and the cursor only moves forward.
#[test]
fn the_idempotency_sweep_resumes_where_it_stopped_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(open_db(dir.path()).unwrap());
    let at = |ms: i64| t(0) + chrono::Duration::milliseconds(ms);
    let send = |ms: i64, key: String, ttl_ms: i64| {
        let mut tx = Tx::new(&store);
        let idem = IdempotencyKey { scope: "s".into(), key, fingerprint: "f".into(), ttl_ms, client: false };
        let req =
            Request { issued_at: at(ms), idempotency: Some(idem), command: Command::MarkReplicated { nodes: vec![] } };
        apply_request(&mut tx, &req).unwrap();
        tx.commit().unwrap();
    };
    // 100 records: pairs in the same millisecond, a few with TTL 0.
    for i in 0..100i64 {
        send(i / 2, format!("k{i}"), if i % 10 == 0 { 0 } else { 1_000 });
    }
    let live = || (0..100).filter(|i| store.idempotency("s", &format!("k{i}")).unwrap().is_some()).count();
    let swept = || store.meta::<i64>("idempotency_swept_ms").unwrap();
    assert_eq!(live(), 90, "all stored; the TTL-0 ones already swept by the entry after them");
    // Each later entry sweeps up to 16; by 2 s every record has expired and gone.
    let mut last_cursor = None;
    for n in 0..20i64 {
        send(2_000 + n, format!("later{n}"), 60_000);
        assert!(swept() >= last_cursor, "the cursor went back");
        last_cursor = swept();
    }
    assert_eq!(live(), 0, "an expired record was missed");
    assert_eq!(store.expired_idempotency(0, at(2_100).timestamp_millis(), 1000).unwrap().len(), 0);
    // Nothing unexpired was taken: the 20 later records remain.
    assert!((0..20).all(|n| store.idempotency("s", &format!("later{n}")).unwrap().is_some()));
}
