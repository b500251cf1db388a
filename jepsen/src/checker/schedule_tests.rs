//! Self-tests of the schedule checker: one hand-built history per anomaly — a tick fired
//! twice, a tick unaccounted for, a tick inside a paused window, a tick of a replaced
//! schedule fired after the edit, a tick of the new schedule before the edit, overlapping
//! executions of one tick's runs, a job before its tick, a late tick in calm time, a read
//! that went back — each flagged; the clean history, and the same early start or late
//! tick under the fault that explains it, pass.
//!
//! The story of the clean history (seconds after 00:00:00 UTC, the history's start): a
//! task created at 0.5 s with `*/2` fires 2, 4, 6, 8; at 10.2 its schedule becomes `*/3`
//! (tick 10 is dropped with the old schedule); it fires 12, 15, 18; paused at 20, resumed
//! at 30 (21–30 skipped: 4 ticks), fires 33, 36, 39, and is paused for good at 40.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use super::runs::Truth;
use super::schedule::Oracle;
use super::*;
use crate::history::NemesisEvent;
use crate::truth::Line;

const LOW: Minimums = Minimums { ok_ops: 0, acked_writes: 0 };
const START_MONO: u64 = 5_000_000_000_000;

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// `s` seconds after the start, as the API writes times.
fn at(s: f64) -> DateTime<Utc> {
    t0() + Duration::milliseconds((s * 1000.0).round() as i64)
}

fn iso(s: f64) -> String {
    at(s).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

fn ev(process: u64, kind: Kind, f: &str, value: Value, t: f64) -> Event {
    Event { process, kind, f: f.into(), value, node: "n1".into(), time_ns: ns(t), error: None }
}

/// The task as a result shows it.
#[allow(clippy::too_many_arguments)]
fn state(version: u64, schedule: &str, status: &str, updated: f64, cursor: f64, fired: u64, skipped: u64) -> Value {
    json!({
        "task": 1, "version": version, "schedule": schedule, "timezone": "UTC", "status": status,
        "cursor": iso(cursor), "created_at": iso(0.5), "updated_at": iso(updated),
        "fire_count": fired, "skipped_ticks": skipped,
    })
}

fn change(p: u64, kind: &str, t: f64, result: Value) -> Vec<Event> {
    let args = json!({"task": 1, "key": format!("k{p}-{t}"), "kind": kind, "body": null});
    vec![ev(p, Kind::Invoke, "sched-change", args, t - 0.05), ev(p, Kind::Ok, "sched-change", result, t + 0.05)]
}

fn read(p: u64, t: f64, result: Value) -> Vec<Event> {
    vec![
        ev(p, Kind::Invoke, "sched-read", json!({"task": 1}), t - 0.05),
        ev(p, Kind::Ok, "sched-read", result, t + 0.05),
    ]
}

fn run(id: u64, tick: f64, created: f64, retry_of: Option<u64>) -> Value {
    let attempt = if retry_of.is_some() { 2 } else { 1 };
    json!({
        "run": id, "task": 1, "trigger": if retry_of.is_some() { "retry" } else { "schedule" }, "status": "succeeded",
        "attempt": attempt, "retry_of": retry_of, "marker": attempt,
        "scheduled_at": iso(tick), "created_at": iso(created),
    })
}

struct Story {
    history: Vec<Event>,
    runs: Vec<Value>,
    final_task: Value,
    lines: Vec<Line>,
    faults: Vec<NemesisEvent>,
}

const TICKS: [f64; 10] = [2.0, 4.0, 6.0, 8.0, 12.0, 15.0, 18.0, 33.0, 36.0, 39.0];

/// A job's lines: started at `from`, ended at `to` (history seconds).
fn job(run: u64, attempt: u32, tick: f64, from: f64, to: f64) -> Vec<Line> {
    let line = |e: &str, t: f64| Line {
        e: e.into(),
        run,
        attempt,
        task: 1,
        sched: at(tick).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        worker: "w1".into(),
        t: START_MONO + ns(t),
        gap_ms: None,
    };
    vec![line("start", from), line("tick", (from + to) / 2.0), line("end", to)]
}

fn clean() -> Story {
    let mut history = Vec::new();
    history.extend(change(1 << 48, "create", 0.5, state(1, "*/2 * * * * *", "active", 0.5, 0.5, 0, 0)));
    history.extend(read(7, 5.0, state(1, "*/2 * * * * *", "active", 0.5, 4.0, 2, 0)));
    history.extend(change(7, "edit", 10.2, state(2, "*/3 * * * * *", "active", 10.2, 10.2, 4, 0)));
    history.extend(change(7, "pause", 20.0, state(3, "*/3 * * * * *", "paused", 20.0, 18.0, 7, 0)));
    history.extend(read(7, 25.0, state(3, "*/3 * * * * *", "paused", 20.0, 18.0, 7, 0)));
    history.extend(change(7, "resume", 30.0, state(4, "*/3 * * * * *", "active", 30.0, 18.0, 7, 0)));
    history.extend(change(7, "pause", 40.0, state(5, "*/3 * * * * *", "paused", 40.0, 39.0, 10, 4)));
    let runs: Vec<Value> = TICKS.iter().enumerate().map(|(i, t)| run(i as u64 + 1, *t, t + 0.05, None)).collect();
    let lines = TICKS.iter().enumerate().flat_map(|(i, t)| job(i as u64 + 1, 1, *t, t + 0.1, t + 0.3)).collect();
    Story {
        history,
        runs,
        final_task: state(5, "*/3 * * * * *", "paused", 40.0, 39.0, 10, 4),
        lines,
        faults: Vec::new(),
    }
}

fn verdict(s: &Story) -> Verdict {
    let p = crate::workload::FINAL_PROCESS;
    let mut h = s.history.clone();
    h.push(ev(p, Kind::Invoke, "sched-task", json!({"task": 1}), 50.0));
    h.push(ev(p, Kind::Ok, "sched-task", s.final_task.clone(), 50.1));
    h.push(ev(p, Kind::Invoke, "sched-runs", Value::Null, 50.2));
    h.push(ev(p, Kind::Ok, "sched-runs", Value::Array(s.runs.clone()), 50.3));
    let evidence = Evidence {
        schedule: Truth { lines: s.lines.clone(), start_mono_ns: START_MONO },
        faults: s.faults.clone(),
        start_wall_ns: t0().timestamp_nanos_opt().unwrap() as i128,
        ..Evidence::default()
    };
    check(&h, LOW, &evidence)
}

fn flagged(s: &Story, needle: &str) {
    let v = verdict(s);
    assert!(!v.valid, "expected an anomaly with {needle:?}, got none");
    assert!(
        v.anomalies.iter().any(|a| a.message.contains(needle)),
        "expected an anomaly with {needle:?}, got {:?}",
        v.anomalies.iter().map(|a| a.message.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn the_clean_history_passes() {
    let v = verdict(&clean());
    assert!(v.valid, "{:?}", v.anomalies);
    assert_eq!((v.schedule.fired, v.schedule.skipped, v.schedule.executions), (10, 4, 10));
    // 2, 4, 6 (before 10.2 − 3), 12, 15 (before 20 − 3), 33, 36 (before 40 − 3).
    assert_eq!(v.schedule.calm_ticks, 7);
}

#[test]
fn a_tick_fired_twice_is_flagged() {
    let mut s = clean();
    s.runs.push(run(11, 12.0, 12.4, None));
    s.final_task["fire_count"] = json!(11);
    flagged(&s, "fired a tick twice: tick 2026-01-01 00:00:12 UTC fired as runs [5, 11]");
}

#[test]
fn a_tick_neither_fired_nor_skipped_is_flagged() {
    let mut s = clean();
    s.final_task["skipped_ticks"] = json!(3);
    flagged(&s, "fired + skipped is 9, but 10 ticks fell in");
}

#[test]
fn a_tick_inside_a_paused_window_is_flagged() {
    let mut s = clean();
    s.runs.push(run(11, 24.0, 24.05, None));
    s.final_task["fire_count"] = json!(11);
    s.final_task["skipped_ticks"] = json!(3);
    flagged(&s, "fired tick 2026-01-01 00:00:24 UTC, while the task was paused");
}

#[test]
fn a_tick_of_the_replaced_schedule_fired_after_the_edit_is_flagged() {
    let mut s = clean();
    // Tick 10 of `*/2`, fired at 10.5, after the edit at 10.2 replaced the schedule.
    s.runs.push(run(11, 10.0, 10.5, None));
    s.final_task["fire_count"] = json!(11);
    flagged(&s, "after the change at 2026-01-01 00:00:10.200 UTC that replaced its schedule");
}

#[test]
fn a_tick_of_the_new_schedule_before_the_edit_is_flagged() {
    let mut s = clean();
    // 9 is a tick of `*/3`, but `*/3` only took effect at 10.2.
    s.runs.push(run(11, 9.0, 9.05, None));
    s.final_task["fire_count"] = json!(11);
    flagged(&s, "fired 2026-01-01 00:00:09 UTC, which is not a tick of");
}

#[test]
fn an_edit_that_leaves_the_cursor_behind_it_is_flagged() {
    let mut s = clean();
    // The edit at 10.2 kept the cursor at 8, so ticks of `*/3` after 8 were owed.
    for e in s.history.iter_mut().filter(|e| e.value["version"] == 2) {
        e.value["cursor"] = json!(iso(8.0));
    }
    flagged(&s, "left the cursor behind it, at 2026-01-01 00:00:08 UTC");
}

#[test]
fn overlapping_executions_of_one_ticks_runs_are_flagged() {
    let mut s = clean();
    // Tick 33's run was re-queued as run 11 while its first attempt still ran.
    s.runs.push(run(11, 33.0, 34.0, Some(8)));
    s.lines.extend(job(11, 2, 33.0, 33.2, 33.5));
    flagged(&s, "still ran");
}

#[test]
fn a_job_before_its_tick_is_flagged_unless_a_clock_ran_ahead() {
    let mut s = clean();
    // Tick 36's job ran at 30 in true time.
    s.lines.retain(|l| l.run != 9);
    s.lines.extend(job(9, 1, 36.0, 30.0, 30.2));
    flagged(&s, "started 6.0 s before its tick");
    let clock = |detail: &str| NemesisEvent {
        name: "clock".into(),
        start_ns: ns(28.0),
        heal_ns: ns(31.0),
        end_ns: ns(31.5),
        detail: detail.into(),
        recovery_ms: Some(100),
        ..NemesisEvent::default()
    };
    // A follower's clock never enters command time: it explains nothing.
    s.faults.push(clock("clock of n2 bumped +90s"));
    flagged(&s, "started 6.0 s before its tick");
    s.faults[0] = clock("clock of n2 (leader) bumped +90s");
    let v = verdict(&s);
    assert!(v.valid, "a leader 90 s ahead may fire 6 s early: {:?}", v.anomalies);
}

#[test]
fn a_late_tick_in_calm_time_is_flagged_unless_a_fault_explains_it() {
    let mut s = clean();
    s.runs[8] = run(9, 36.0, 39.6, None);
    flagged(&s, "tick 2026-01-01 00:00:36 UTC fired 3600 ms late, in calm time");
    s.faults.push(NemesisEvent {
        name: "kill".into(),
        start_ns: ns(35.0),
        heal_ns: ns(37.0),
        end_ns: ns(37.5),
        detail: "kill n1".into(),
        recovery_ms: Some(800),
        ..NemesisEvent::default()
    });
    let v = verdict(&s);
    assert!(v.valid, "the leader was killed: {:?}", v.anomalies);
}

#[test]
fn a_read_that_goes_back_is_flagged() {
    let mut s = clean();
    s.history.extend(read(8, 26.0, state(3, "*/3 * * * * *", "paused", 20.0, 18.0, 6, 0)));
    flagged(&s, "after another had seen");
}

#[test]
fn a_version_never_seen_makes_the_task_unaccountable() {
    let mut s = clean();
    s.history.retain(|e| !(e.f == "sched-change" && e.value["version"] == 4));
    flagged(&s, "versions [4] were never seen");
}

#[test]
fn the_oracle_evaluates_seconds_minutes_and_zones() {
    let ticks = |expr: &str, zone: &str, from: &str, to: &str| -> Vec<String> {
        Oracle::new(expr, zone, t0())
            .unwrap()
            .ticks(from.parse().unwrap(), to.parse().unwrap())
            .iter()
            .map(|t| t.format("%H:%M:%S").to_string())
            .collect()
    };
    // Eucla is 8:45 ahead: UTC 00:00 is local minute 45 (odd), UTC 00:01 is 46.
    assert_eq!(
        ticks("*/2 */2 * * * *", "Australia/Eucla", "2026-01-01T00:00:56Z", "2026-01-01T00:01:04Z"),
        ["00:01:00", "00:01:02", "00:01:04"]
    );
    // Kolkata is 5:30 ahead: UTC 00:00 is local minute 30 (even).
    assert_eq!(ticks("*/2 */2 * * * *", "Asia/Kolkata", "2026-01-01T00:00:56Z", "2026-01-01T00:01:04Z"), ["00:00:58"]);
    assert_eq!(
        ticks("7,19,43 * * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T00:00:59Z"),
        ["00:00:07", "00:00:19", "00:00:43"]
    );
    assert_eq!(
        ticks("1-59/4 * * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"),
        ["00:00:01", "00:00:05", "00:00:09"]
    );
    // `@every` counts from creation (t0), not from the window.
    assert_eq!(ticks("@every 3s", "UTC", "2026-01-01T00:00:04Z", "2026-01-01T00:00:10Z"), ["00:00:06", "00:00:09"]);
    assert!(Oracle::new("0 0 * * *", "UTC", t0()).is_err(), "five fields are beyond the oracle");
}

#[test]
fn a_leader_that_stops_firing_before_the_final_pause_is_flagged() {
    let mut s = clean();
    // Nothing fired after the resume at 30: the cursor stayed at 18 up to the final pause.
    s.history.retain(|e| !(e.f == "sched-change" && e.value["version"] == 5));
    s.history.extend(change(7, "pause", 40.0, state(5, "*/3 * * * * *", "paused", 40.0, 18.0, 7, 0)));
    s.final_task = state(5, "*/3 * * * * *", "paused", 40.0, 18.0, 7, 0);
    s.runs.truncate(7);
    s.lines.retain(|l| l.run <= 7);
    flagged(&s, "tick 2026-01-01 00:00:33 UTC was never fired although it fell due in calm time");
}

#[test]
fn a_miscount_inside_an_earlier_epoch_is_flagged() {
    let mut s = clean();
    // The read at 5 s saw the cursor at 4 with only one of ticks 2 and 4 counted.
    for e in s.history.iter_mut().filter(|e| e.f == "sched-read" && e.value["cursor"] == iso(4.0)) {
        e.value["fire_count"] = json!(1);
    }
    flagged(&s, "miscounted its ticks: sched-read at 5.050 s saw version 1 with fired + skipped 1");
}

#[test]
fn a_stuck_run_and_a_stale_report_are_flagged() {
    let mut s = clean();
    s.runs[2]["status"] = json!("running");
    flagged(&s, "is stuck running");
    let mut s = clean();
    // Run 4 succeeded as attempt 1 with an attempt-2 output.
    s.runs[3]["marker"] = json!(2);
    flagged(&s, "a stale attempt's report was applied");
}

#[test]
fn skip_never_fires_a_misfire() {
    let mut s = clean();
    for e in s.history.iter_mut().filter(|e| e.value.get("version").is_some()) {
        e.value["misfire_policy"] = json!("skip");
    }
    s.runs[8] = run(9, 36.0, 36.0 + 7.5, None);
    s.faults.push(NemesisEvent {
        name: "kill".into(),
        start_ns: ns(34.0),
        heal_ns: ns(42.0),
        end_ns: ns(42.5),
        detail: "kill n1".into(),
        recovery_ms: Some(800),
        ..NemesisEvent::default()
    });
    flagged(&s, "7500 ms late under misfire_policy skip");
}

#[test]
fn a_leader_clock_ahead_excuses_ticks_up_to_where_it_planned() {
    let mut s = clean();
    // A +90 s leader at 24–26 s planned (and, as misfires, skipped) everything up to 116 s:
    // tick 36 never fired, and that is no lag.
    s.runs.remove(8);
    s.lines.retain(|l| l.run != 9);
    s.final_task["fire_count"] = json!(9);
    s.final_task["skipped_ticks"] = json!(5);
    for e in s.history.iter_mut().filter(|e| e.value["version"] == 5) {
        e.value["fire_count"] = json!(9);
        e.value["skipped_ticks"] = json!(5);
    }
    flagged(&s, "tick 2026-01-01 00:00:36 UTC was never fired");
    s.faults.push(NemesisEvent {
        name: "clock".into(),
        start_ns: ns(24.0),
        heal_ns: ns(26.0),
        end_ns: ns(26.5),
        detail: "clock of n1 (leader) bumped +90s".into(),
        recovery_ms: Some(100),
        ..NemesisEvent::default()
    });
    let v = verdict(&s);
    assert!(v.valid, "{:?}", v.anomalies);
}
