//! Self-tests of the runs checker: one hand-built history and truth log per anomaly, each
//! flagged with it; a clean one, and a freeze's short zombie tail, pass.

use serde_json::{json, Value};

use super::runs::{Truth, THAW_TAIL_NS};
use super::*;
use crate::truth::Line;

const LOW: Minimums = Minimums { ok_ops: 0, acked_writes: 0 };
const MS: u64 = 1_000_000;
/// The history's clock starts at this CLOCK_MONOTONIC instant.
const START: u64 = 1_000_000_000_000;

fn ev(process: u64, kind: Kind, f: &str, value: Value, t: u64) -> Event {
    Event { process, kind, f: f.into(), value, node: "n1".into(), time_ns: t, error: None }
}

fn trigger(p: u64, task: u64, key: &str, run: Option<u64>, t0: u64, t1: u64) -> Vec<Event> {
    let args = json!({"task": task, "key": key});
    let end = match run {
        Some(r) => ev(p, Kind::Ok, "trigger", json!({"task": task, "key": key, "run": r}), t1),
        None => ev(p, Kind::Info, "trigger", args.clone(), t1),
    };
    vec![ev(p, Kind::Invoke, "trigger", args, t0), end]
}

fn cancel(p: u64, run: u64, t0: u64, t1: u64) -> Vec<Event> {
    vec![ev(p, Kind::Invoke, "cancel", json!({"run": run}), t0), ev(p, Kind::Ok, "cancel", json!({"run": run}), t1)]
}

/// A run as the final read saw it; `marker` is the attempt its output names.
fn fin(run: u64, task: u64, status: &str, attempt: u32, marker: Option<u32>) -> Vec<Event> {
    fin_of(run, None, task, status, attempt, marker)
}

/// A re-run (`retry_of`) as the final read saw it.
fn fin_of(run: u64, retry_of: Option<u64>, task: u64, status: &str, attempt: u32, marker: Option<u32>) -> Vec<Event> {
    let p = crate::workload::FINAL_PROCESS;
    vec![
        ev(p, Kind::Invoke, "runs-final", json!({"run": run}), 900 * MS),
        ev(
            p,
            Kind::Ok,
            "runs-final",
            json!({"run": run, "task": task, "status": status, "attempt": attempt, "retry_of": retry_of, "marker": marker}),
            901 * MS,
        ),
    ]
}

/// An attempt's job from `from` to `to` (history ms), ticking every 100 ms, on `worker`.
fn job(run: u64, attempt: u32, worker: &str, from: u64, to: u64, ended: bool) -> Vec<Line> {
    let line = |e: &str, t: u64| Line {
        e: e.into(),
        run,
        attempt,
        task: 1,
        sched: "2026-01-01T00:00:00Z".into(),
        worker: worker.into(),
        t: START + t * MS,
        gap_ms: None,
    };
    let mut out = vec![line("start", from)];
    let mut t = from + 100;
    while t < to {
        out.push(line("tick", t));
        t += 100;
    }
    if ended {
        out.push(line("end", to));
    }
    out
}

fn verdict(h: &[Event], lines: Vec<Line>) -> Verdict {
    check(h, LOW, &super::Evidence { runs: Truth { lines, start_mono_ns: START }, ..Default::default() })
}

fn flagged(h: &[Event], lines: Vec<Line>, needle: &str) {
    let v = verdict(h, lines);
    assert!(
        !v.valid && v.anomalies.iter().any(|a| a.message.contains(needle)),
        "expected an anomaly containing {needle:?}, got {:?}",
        v.anomalies.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    );
}

/// Run 1 (key a) ran on w1, which was lost; its re-queue, run 3 (attempt 2), ran on w2.
/// Run 2 (key b) was retried with its key after a lost answer.
fn clean_history() -> (Vec<Event>, Vec<Line>) {
    let h = [
        trigger(1, 1, "a", Some(1), 0, 10 * MS),
        trigger(2, 1, "b", None, 20 * MS, 30 * MS),
        trigger(3, 1, "b", Some(2), 40 * MS, 50 * MS),
        fin(1, 1, "lost", 1, None),
        fin_of(3, Some(1), 1, "succeeded", 2, Some(2)),
        fin(2, 1, "succeeded", 1, Some(1)),
    ]
    .concat();
    let lines =
        [job(1, 1, "w1", 20, 500, false), job(3, 2, "w2", 700, 1500, true), job(2, 1, "w2", 60, 800, true)].concat();
    (h, lines)
}

#[test]
fn a_clean_history_passes() {
    let (h, lines) = clean_history();
    let v = verdict(&h, lines);
    assert!(v.valid, "{:?}", v.anomalies.iter().map(|a| a.to_string()).collect::<Vec<_>>());
}

#[test]
fn flags_one_key_answered_with_two_runs() {
    let (mut h, lines) = clean_history();
    h.extend(trigger(4, 1, "a", Some(2), 60 * MS, 70 * MS));
    flagged(&h, lines, "key a created two runs");
}

#[test]
fn flags_an_acknowledged_trigger_whose_run_is_gone() {
    let (mut h, lines) = clean_history();
    h.extend(trigger(4, 1, "c", Some(9), 60 * MS, 70 * MS));
    flagged(&h, lines, "is gone after healing");
}

#[test]
fn flags_more_runs_than_keys_that_could_have_made_them() {
    let (mut h, lines) = clean_history();
    h.extend(fin(4, 1, "succeeded", 1, Some(1)));
    flagged(&h, [lines, job(4, 1, "w1", 100, 200, true)].concat(), "holds 3 chains of runs but only 2 triggers");
}

#[test]
fn flags_two_attempts_of_a_run_at_once() {
    let (h, mut lines) = clean_history();
    // Attempt 1 (run 1) on w1 still ticks after attempt 2 (run 3, its re-queue) started
    // on w2: two runs of one chain at once.
    lines.extend(job(1, 1, "w1", 500, 900, false).into_iter().skip(1));
    flagged(&h, lines, "attempt 2 (run 3) on w2 started at 0.700s while attempt 1 (run 1) on w1 still ran");
}

#[test]
fn flags_an_attempt_started_twice() {
    let (h, mut lines) = clean_history();
    lines.extend(job(2, 1, "w1", 900, 1000, false).into_iter().take(1));
    flagged(&h, lines, "was started 2 times");
}

#[test]
fn flags_a_stale_attempts_report_applied() {
    let (mut h, lines) = clean_history();
    h.retain(|e| !(e.f == "runs-final" && e.value["run"] == 3));
    h.extend(fin_of(3, Some(1), 1, "succeeded", 2, Some(1)));
    flagged(&h, lines, "a stale attempt's report was applied");
}

#[test]
fn flags_a_success_of_an_attempt_that_never_ended() {
    let (mut h, mut lines) = clean_history();
    lines.retain(|l| !(l.run == 2 && l.e == "end"));
    h.retain(|e| !(e.f == "runs-final" && e.value["run"] == 2));
    h.extend(fin(2, 1, "succeeded", 1, Some(1)));
    flagged(&h, lines, "never ran to its end");
}

#[test]
fn flags_a_stuck_run() {
    let (mut h, lines) = clean_history();
    h.retain(|e| !(e.f == "runs-final" && e.value["run"] == 2));
    h.extend(fin(2, 1, "running", 1, None));
    flagged(&h, lines, "is stuck running");
}

#[test]
fn flags_a_cancel_that_did_not_hold() {
    let (mut h, lines) = clean_history();
    // Run 2's cancel is acknowledged at 100 ms, yet it succeeded and its job ran to 800.
    h.extend(cancel(5, 2, 90 * MS, 100 * MS));
    flagged(&h, lines, "yet it ended succeeded");
}

#[test]
fn flags_a_job_that_outlived_its_cancel() {
    let h =
        [trigger(1, 1, "a", Some(1), 0, 10 * MS), cancel(2, 1, 100 * MS, 110 * MS), fin(1, 1, "cancelled", 1, None)]
            .concat();
    flagged(&h, job(1, 1, "w1", 20, 110 + 6_000, false), "s after its cancel was acknowledged");
}

#[test]
fn a_freezes_short_zombie_tail_passes_and_a_long_one_is_flagged() {
    let (h, mut lines) = clean_history();
    // Attempt 1's worker froze at 500 ms and thawed at 4600, while attempt 2 (run 3) ran
    // on w2 from 700 (to 1500; extended here past the thaw): the job logs once on waking,
    // then its shim kills it.
    lines.retain(|l| !(l.run == 3 && l.e == "end"));
    lines.extend(job(3, 2, "w2", 1500, 5000, true).into_iter().skip(1));
    let ticking = lines[1].clone();
    assert_eq!((ticking.run, ticking.attempt), (1, 1));
    let thaw = |t: u64| Line { e: "tick".into(), t: START + t * MS, gap_ms: Some(4100), ..ticking.clone() };
    lines.push(thaw(4600));
    let v = verdict(&h, lines.clone());
    assert!(v.valid, "{:?}", v.anomalies.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    // A job that goes on past the tail was not killed at the thaw.
    let mut later = thaw(4600 + THAW_TAIL_NS / MS + 100);
    later.gap_ms = None;
    lines.push(later);
    flagged(&h, lines, "still ran");
}

#[test]
fn flags_a_key_answered_with_a_re_run() {
    let (mut h, lines) = clean_history();
    h.extend(trigger(4, 1, "d", Some(3), 60 * MS, 70 * MS));
    flagged(&h, lines, "a re-run of run 1");
}

#[test]
fn flags_triggers_acknowledged_with_no_job_ever_run() {
    let (h, _) = clean_history();
    flagged(&h, Vec::new(), "no job ever ran");
}
