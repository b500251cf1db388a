//! Self-tests: hand-built histories with one known anomaly each must be flagged with it;
//! clean histories must pass; a run that did too little must fail.

use serde_json::{json, Value};

use super::*;

/// Low minimums, so the small histories here are judged on their content only.
const LOW: Minimums = Minimums { ok_ops: 0, acked_writes: 0 };

fn ev(process: u64, kind: Kind, f: &str, value: Value, t: u64) -> Event {
    Event { process, kind, f: f.into(), value, node: "n1".into(), time_ns: t, error: None }
}

fn failed(process: u64, f: &str, value: Value, t: u64, error: &str) -> Event {
    Event { error: Some(error.into()), ..ev(process, Kind::Fail, f, value, t) }
}

/// A CAS from `from` to `to`: acknowledged with `version`, or indeterminate (`None`).
fn cas(p: u64, key: u64, from: u64, to: &str, version: Option<u64>, t0: u64, t1: u64) -> Vec<Event> {
    let end = match version {
        Some(v) => ev(p, Kind::Ok, "cas", json!({"key": key, "version": v, "value": to}), t1),
        None => ev(p, Kind::Info, "cas", json!({"key": key}), t1),
    };
    vec![ev(p, Kind::Invoke, "cas", json!({"key": key, "from": from, "to": to}), t0), end]
}

fn cas_failed(p: u64, key: u64, from: u64, to: &str, t0: u64, t1: u64, code: &str) -> Vec<Event> {
    vec![
        ev(p, Kind::Invoke, "cas", json!({"key": key, "from": from, "to": to}), t0),
        failed(p, "cas", json!({"key": key}), t1, code),
    ]
}

fn read(p: u64, key: u64, version: u64, value: &str, t0: u64, t1: u64) -> Vec<Event> {
    vec![
        ev(p, Kind::Invoke, "read", json!({"key": key}), t0),
        ev(p, Kind::Ok, "read", json!({"key": key, "version": version, "value": value}), t1),
    ]
}

fn add(p: u64, name: &str, kind: Kind, t0: u64, t1: u64) -> Vec<Event> {
    let end = match kind {
        Kind::Fail => failed(p, "add", json!(name), t1, "503"),
        k => ev(p, k, "add", json!(name), t1),
    };
    vec![ev(p, Kind::Invoke, "add", json!(name), t0), end]
}

fn set_read(p: u64, names: &[&str], t0: u64, t1: u64) -> Vec<Event> {
    vec![ev(p, Kind::Invoke, "set-read", json!({"final": false}), t0), ev(p, Kind::Ok, "set-read", json!(names), t1)]
}

fn flagged(h: &[Event], needle: &str) {
    let v = check(h, LOW, &super::Evidence::default());
    assert!(
        !v.valid && v.anomalies.iter().any(|a| a.message.contains(needle)),
        "expected an anomaly containing {needle:?}, got {:?}",
        v.anomalies.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    );
}

fn clean(h: &[Event]) {
    let v = check(h, LOW, &super::Evidence::default());
    assert!(v.valid, "{:?}", v.anomalies.iter().map(|a| a.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_clean_history_passes() {
    let mut h = Vec::new();
    h.extend(read(1, 0, 1, INITIAL_VALUE, 0, 5));
    h.extend(cas(1, 0, 1, "a", Some(2), 10, 20));
    h.extend(read(2, 0, 2, "a", 21, 25));
    // An indeterminate write may show up later...
    h.extend(cas(3, 0, 2, "b", None, 30, 40));
    h.extend(read(2, 0, 3, "b", 50, 55));
    // ...or never; a failed CAS changes nothing.
    h.extend(cas(4, 0, 3, "c", None, 60, 70));
    h.extend(cas_failed(5, 0, 2, "d", 60, 61, "412"));
    h.extend(read(2, 0, 3, "b", 80, 85));
    // Concurrent operations may be ordered either way.
    h.extend(cas(1, 0, 3, "e", Some(4), 90, 120));
    h.extend(read(2, 0, 3, "b", 95, 100));
    h.extend(read(6, 0, 4, "e", 96, 101));
    h.extend(add(7, "set-7-1", Kind::Ok, 60, 61));
    h.extend(add(7, "set-7-2", Kind::Info, 70, 71));
    h.extend(add(8, "set-8-1", Kind::Fail, 70, 71));
    h.extend(set_read(9, &["set-7-1"], 80, 90));
    h.extend(set_read(9, &["set-7-1", "set-7-2"], 91, 95));
    h.extend(set_read(9, &["set-7-1", "set-7-2"], 96, 99));
    clean(&h);
}

#[test]
fn flags_a_stale_read_after_a_newer_read() {
    // Nobody's write was acknowledged: only two reads show that time went backwards.
    let mut h = cas(1, 0, 1, "a", None, 0, 10);
    h.extend(read(2, 0, 2, "a", 20, 25));
    h.extend(read(3, 0, 1, INITIAL_VALUE, 30, 35));
    flagged(&h, "stale read: version 1 read after version 2 was read");
}

#[test]
fn flags_a_stale_read_after_an_acknowledged_write() {
    let mut h = cas(1, 0, 1, "a", Some(2), 0, 10);
    h.extend(read(2, 0, 1, INITIAL_VALUE, 20, 25));
    flagged(&h, "stale read: version 1 read after version 2 was written");
}

#[test]
fn flags_a_lost_acknowledged_write_beside_an_indeterminate_one() {
    // Both CAS from version 1; one acknowledged as version 2, the other unknown. The
    // unknown one is what version 2 holds: the acknowledged write was lost.
    let mut h = cas(1, 0, 1, "a", Some(2), 0, 10);
    h.extend(cas(2, 0, 1, "b", None, 0, 12));
    h.extend(read(3, 0, 2, "b", 20, 25));
    flagged(&h, "an acknowledged write produced it");
}

#[test]
fn flags_a_stale_cas_that_wins() {
    // Version 2 ("a", an unknown write) was read; a later CAS from version 1 must fail,
    // but it was acknowledged as version 2 again.
    let mut h = cas(1, 0, 1, "a", None, 0, 10);
    h.extend(read(2, 0, 2, "a", 12, 15));
    h.extend(cas(3, 0, 1, "b", Some(2), 20, 30));
    flagged(&h, "the write of version 2 began after an operation on version 2 had ended");
}

#[test]
fn flags_two_acknowledged_writes_of_one_version() {
    let mut h = cas(1, 0, 1, "a", Some(2), 0, 10);
    h.extend(cas(2, 0, 1, "b", Some(2), 0, 12));
    flagged(&h, "two acknowledged writes produced version 2");
}

#[test]
fn flags_a_read_of_a_definitely_failed_write() {
    let mut h = cas_failed(1, 0, 1, "a", 0, 10, "503");
    h.extend(read(2, 0, 2, "a", 20, 25));
    flagged(&h, "written by a write that failed definitely (503)");
}

#[test]
fn flags_a_value_no_write_produced_and_a_read_before_its_write() {
    let h = read(2, 0, 2, "never written", 0, 5);
    flagged(&h, "which no write produced");
    let mut h = read(2, 0, 2, "a", 0, 5);
    h.extend(cas(1, 0, 1, "a", None, 10, 20));
    flagged(&h, "the write of version 2 began after an operation on version 2 had ended");
}

#[test]
fn flags_a_refused_cas_on_a_version_nobody_could_have_moved() {
    // Version 1 was read, then a CAS from 1 was refused, and no write from 1 existed.
    let mut h = read(1, 0, 1, INITIAL_VALUE, 0, 5);
    h.extend(cas_failed(2, 0, 1, "a", 10, 20, "412"));
    flagged(&h, "was refused (412) though the version was 1 throughout it");
    // With a concurrent write from 1 (it may have won), the refusal is fine.
    let mut h = read(1, 0, 1, INITIAL_VALUE, 0, 5);
    h.extend(cas(3, 0, 1, "b", None, 8, 30));
    h.extend(cas_failed(2, 0, 1, "a", 10, 20, "412"));
    clean(&h);
}

#[test]
fn flags_a_register_that_went_missing() {
    let h = vec![ev(1, Kind::Invoke, "read", json!({"key": 0}), 0), failed(1, "read", json!({"key": 0}), 5, "404")];
    flagged(&h, "the register was not found by a read (lost)");
}

#[test]
fn flags_a_write_at_the_wrong_version() {
    let mut h = cas(1, 0, 2, "a", None, 0, 10);
    h.extend(read(2, 0, 2, "a", 20, 25));
    flagged(&h, "but that write was a CAS from version 2");
    flagged(&cas(1, 0, 1, "a", Some(3), 0, 10), "a CAS from version 1 produced version 3");
}

#[test]
fn flags_a_lost_acknowledged_add_in_a_read_during_the_run() {
    let mut h = add(1, "set-1-1", Kind::Ok, 0, 5);
    h.extend(add(1, "set-1-2", Kind::Ok, 6, 10));
    h.extend(set_read(2, &["set-1-1"], 20, 30));
    flagged(&h, "lacks 1 elements known to exist");
}

#[test]
fn a_read_concurrent_with_an_add_may_miss_it() {
    let mut h = add(1, "set-1-1", Kind::Ok, 0, 25);
    h.extend(set_read(2, &[], 20, 30));
    h.extend(set_read(2, &["set-1-1"], 31, 40));
    clean(&h);
}

#[test]
fn flags_an_element_that_disappears_after_it_was_read() {
    let mut h = add(1, "set-1-1", Kind::Info, 0, 5);
    h.extend(set_read(2, &["set-1-1"], 10, 20));
    h.extend(set_read(2, &[], 30, 40));
    flagged(&h, "lacks 1 elements known to exist");
}

#[test]
fn flags_a_phantom_from_a_503() {
    let mut h = add(1, "set-1-1", Kind::Fail, 0, 5);
    h.extend(set_read(2, &["set-1-1"], 10, 20));
    flagged(&h, "whose add failed definitely (503)");
}

#[test]
fn flags_phantoms_duplicates_and_reads_before_the_add() {
    let mut h = add(1, "set-1-1", Kind::Ok, 0, 5);
    h.extend(set_read(2, &["set-1-1", "set-9-9"], 10, 20));
    flagged(&h, "which nobody tried to add");
    let mut h = add(1, "set-1-1", Kind::Ok, 0, 5);
    h.extend(set_read(2, &["set-1-1", "set-1-1"], 10, 20));
    flagged(&h, "appears twice");
    let mut h = set_read(2, &["set-1-1"], 0, 5);
    h.extend(add(1, "set-1-1", Kind::Info, 10, 20));
    flagged(&h, "before its add began");
}

#[test]
fn a_set_run_without_a_read_during_it_fails() {
    let mut h = add(1, "set-1-1", Kind::Ok, 0, 5);
    h.push(ev(9, Kind::Invoke, "set-read", json!({"final": true}), 10));
    h.push(ev(9, Kind::Ok, "set-read", json!(["set-1-1"]), 20));
    flagged(&h, "no read during the run succeeded");
}

#[test]
fn a_run_with_too_few_ok_operations_fails() {
    // Only failures: nothing was proven, whatever the content.
    let mut h = Vec::new();
    for p in 0..100 {
        h.extend(cas_failed(p, 0, 1, &format!("v{p}"), p * 10, p * 10 + 5, "503"));
    }
    let v = check(&h, Minimums::for_seconds(60), &super::Evidence::default());
    assert!(!v.valid);
    assert!(v.anomalies.iter().any(|a| a.checker == "minimum" && a.message.contains("only 0 acknowledged writes")));
    // The same history passes with the minimums off, which shows the minimum is the reason.
    assert!(check(&h, LOW, &super::Evidence::default()).valid);
}

#[test]
fn a_long_clean_history_passes() {
    // 200,000 operations on one register, each version written once and read once.
    let mut h = Vec::new();
    let mut t = 0;
    for v in 1..100_000u64 {
        h.extend(cas(v % 7, 0, v, &format!("w{v}"), Some(v + 1), t, t + 3));
        h.extend(read(10 + v % 5, 0, v + 1, &format!("w{v}"), t + 4, t + 6));
        t += 10;
    }
    let started = std::time::Instant::now();
    clean(&h);
    eprintln!("checked {} events in {:?}", h.len(), started.elapsed());
}
