//! Checkers over a history.
//!
//! **Register** (per key): every successful write moves the task version by one, so
//! versions totally order writes and linearizability reduces to checkable facts:
//! an acknowledged CAS from `v` produced `v + 1`; no two acknowledged writes produced the
//! same version (else one update was lost); a read never returns a version older than one
//! acknowledged before the read began (stale read); every version a read returns was
//! written by a write that had begun before the read ended, with the value read (no
//! phantom or corrupted value).
//!
//! **Set**: after healing, every node's final read must contain every acknowledged add
//! (else: lost), nothing that was never attempted (phantom), and no name twice
//! (duplicate).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Event, Kind};

pub const INITIAL_VALUE: &str = "echo init";

#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub anomalies: Vec<String>,
    /// f → (ok, fail, info)
    pub counts: BTreeMap<String, (u64, u64, u64)>,
}

/// An operation: its invoke and its completion.
#[derive(Debug, Clone)]
struct Op {
    f: String,
    args: Value,
    kind: Kind,
    result: Value,
    start: u64,
    end: u64,
}

fn pair(history: &[Event]) -> Vec<Op> {
    let mut open: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut ops = Vec::new();
    for e in history {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, e);
            }
            kind => {
                let (args, start) = match open.remove(&e.process) {
                    Some(inv) => (inv.value.clone(), inv.time_ns),
                    None => (Value::Null, e.time_ns),
                };
                ops.push(Op { f: e.f.clone(), args, kind, result: e.value.clone(), start, end: e.time_ns });
            }
        }
    }
    // Invokes never completed (the run ended first) are unknown outcomes.
    for (_, inv) in open {
        ops.push(Op {
            f: inv.f.clone(),
            args: inv.value.clone(),
            kind: Kind::Info,
            result: Value::Null,
            start: inv.time_ns,
            end: u64::MAX,
        });
    }
    ops
}

pub fn check(history: &[Event]) -> Verdict {
    let ops = pair(history);
    let mut v = Verdict::default();
    for op in &ops {
        let c = v.counts.entry(op.f.clone()).or_default();
        match op.kind {
            Kind::Ok => c.0 += 1,
            Kind::Fail => c.1 += 1,
            _ => c.2 += 1,
        }
    }
    check_register(&ops, &mut v.anomalies);
    check_set(&ops, history, &mut v.anomalies);
    v.valid = v.anomalies.is_empty();
    v
}

fn check_register(ops: &[Op], anomalies: &mut Vec<String>) {
    let keys: BTreeSet<u64> = ops.iter().filter_map(|o| o.args["key"].as_u64()).collect();
    for key in keys {
        let writes: Vec<&Op> = ops.iter().filter(|o| o.f == "cas" && o.args["key"].as_u64() == Some(key)).collect();
        let reads: Vec<&Op> = ops
            .iter()
            .filter(|o| o.f == "read" && o.kind == Kind::Ok && o.result["key"].as_u64() == Some(key))
            .collect();
        let mut acked: BTreeMap<u64, &Op> = BTreeMap::new();
        for w in writes.iter().filter(|w| w.kind == Kind::Ok) {
            let (from, to) = (w.args["from"].as_u64().unwrap_or(0), w.result["version"].as_u64().unwrap_or(0));
            if to != from + 1 {
                anomalies.push(format!("register {key}: cas from version {from} produced version {to}"));
            }
            if let Some(prev) = acked.insert(to, w) {
                anomalies.push(format!(
                    "register {key}: lost update: two acknowledged writes produced version {to} ({} and {})",
                    prev.args["to"], w.args["to"]
                ));
            }
        }
        for r in reads {
            let version = r.result["version"].as_u64().unwrap_or(0);
            let value = r.result["value"].as_str().unwrap_or_default();
            if let Some((newer, w)) = acked.range(version + 1..).find(|(_, w)| w.end < r.start) {
                anomalies.push(format!(
                    "register {key}: stale read of version {version} at {} ns, version {newer} was acknowledged at {} ns",
                    r.start, w.end
                ));
            }
            if version <= 1 {
                if value != INITIAL_VALUE {
                    anomalies.push(format!("register {key}: version {version} reads {value:?}, not the initial value"));
                }
                continue;
            }
            let origin = writes.iter().any(|w| {
                w.kind != Kind::Fail
                    && w.args["from"].as_u64().map(|f| f + 1) == Some(version)
                    && w.args["to"].as_str() == Some(value)
                    && w.start < r.end
            });
            if !origin {
                anomalies.push(format!("register {key}: read version {version} = {value:?}, which no write produced"));
            }
        }
    }
}

fn check_set(ops: &[Op], history: &[Event], anomalies: &mut Vec<String>) {
    let adds: Vec<&Op> = ops.iter().filter(|o| o.f == "add").collect();
    if adds.is_empty() {
        return;
    }
    let attempted: BTreeSet<&str> = adds.iter().filter_map(|o| o.args.as_str()).collect();
    let acked: BTreeSet<&str> = adds.iter().filter(|o| o.kind == Kind::Ok).filter_map(|o| o.args.as_str()).collect();
    let mut final_reads = 0;
    for e in history.iter().filter(|e| e.f == "final-read") {
        if e.kind != Kind::Ok {
            anomalies.push(format!(
                "set: final read on {} failed ({}): cannot verify that node",
                e.node,
                e.error.clone().unwrap_or_default()
            ));
            continue;
        }
        final_reads += 1;
        let names: Vec<&str> = e
            .value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|n| n.starts_with("set-"))
            .collect();
        let mut seen = BTreeSet::new();
        for n in &names {
            if !seen.insert(*n) {
                anomalies.push(format!("set: {n} appears twice in the final read on {}", e.node));
            }
        }
        let lost: Vec<&&str> = acked.difference(&seen).collect();
        if !lost.is_empty() {
            anomalies.push(format!(
                "set: {} acknowledged adds missing on {}: {:?}",
                lost.len(),
                e.node,
                lost.iter().take(10).collect::<Vec<_>>()
            ));
        }
        let phantom: Vec<&&str> = seen.difference(&attempted).collect();
        if !phantom.is_empty() {
            anomalies.push(format!(
                "set: {} names on {} that nobody added: {:?}",
                phantom.len(),
                e.node,
                phantom.iter().take(10).collect::<Vec<_>>()
            ));
        }
    }
    if final_reads == 0 {
        anomalies.push("set: no final read succeeded".into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(process: u64, kind: Kind, f: &str, value: Value, t: u64) -> Event {
        Event { process, kind, f: f.into(), value, node: "n1".into(), time_ns: t, error: None }
    }

    fn cas(p: u64, key: u64, from: u64, to: &str, version: Option<u64>, t0: u64, t1: u64) -> Vec<Event> {
        let end = match version {
            Some(v) => ev(p, Kind::Ok, "cas", json!({"key": key, "version": v, "value": to}), t1),
            None => ev(p, Kind::Info, "cas", json!({"key": key}), t1),
        };
        vec![ev(p, Kind::Invoke, "cas", json!({"key": key, "from": from, "to": to}), t0), end]
    }

    fn read(p: u64, key: u64, version: u64, value: &str, t0: u64, t1: u64) -> Vec<Event> {
        vec![
            ev(p, Kind::Invoke, "read", json!({"key": key}), t0),
            ev(p, Kind::Ok, "read", json!({"key": key, "version": version, "value": value}), t1),
        ]
    }

    fn add(p: u64, name: &str, ok: bool, t0: u64) -> Vec<Event> {
        vec![
            ev(p, Kind::Invoke, "add", json!(name), t0),
            ev(p, if ok { Kind::Ok } else { Kind::Info }, "add", json!(name), t0 + 1),
        ]
    }

    fn final_read(names: &[&str], t: u64) -> Event {
        ev(u64::MAX, Kind::Ok, "final-read", json!(names), t)
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = Vec::new();
        h.extend(read(1, 0, 1, INITIAL_VALUE, 0, 5));
        h.extend(cas(1, 0, 1, "a", Some(2), 10, 20));
        h.extend(read(2, 0, 2, "a", 21, 25));
        // An unknown write may show up later.
        h.extend(cas(3, 0, 2, "b", None, 30, 40));
        h.extend(read(2, 0, 3, "b", 50, 55));
        h.extend(add(4, "set-4-1", true, 60));
        h.extend(add(4, "set-4-2", false, 70));
        h.push(final_read(&["set-4-1", "set-4-2", "reg-0"], 100));
        let v = check(&h);
        assert!(v.valid, "{:?}", v.anomalies);
    }

    #[test]
    fn flags_a_stale_read() {
        let mut h = cas(1, 0, 1, "a", Some(2), 0, 10);
        h.extend(read(2, 0, 1, INITIAL_VALUE, 20, 25));
        let v = check(&h);
        assert!(v.anomalies.iter().any(|a| a.contains("stale read")), "{:?}", v.anomalies);
    }

    #[test]
    fn flags_a_lost_update_on_the_register() {
        let mut h = cas(1, 0, 1, "a", Some(2), 0, 10);
        h.extend(cas(2, 0, 1, "b", Some(2), 0, 12));
        let v = check(&h);
        assert!(v.anomalies.iter().any(|a| a.contains("lost update")), "{:?}", v.anomalies);
    }

    #[test]
    fn flags_a_lost_acknowledged_add() {
        let mut h = add(1, "set-1-1", true, 0);
        h.extend(add(1, "set-1-2", true, 5));
        h.push(final_read(&["set-1-1"], 100));
        let v = check(&h);
        assert!(v.anomalies.iter().any(|a| a.contains("missing")), "{:?}", v.anomalies);
    }

    #[test]
    fn flags_a_phantom_add_and_a_phantom_register_value() {
        let mut h = add(1, "set-1-1", true, 0);
        h.push(final_read(&["set-1-1", "set-9-9"], 100));
        h.extend(read(2, 0, 2, "never written", 0, 5));
        let v = check(&h);
        assert!(v.anomalies.iter().any(|a| a.contains("nobody added")), "{:?}", v.anomalies);
        assert!(v.anomalies.iter().any(|a| a.contains("no write produced")), "{:?}", v.anomalies);
    }

    #[test]
    fn flags_a_duplicate() {
        let mut h = add(1, "set-1-1", true, 0);
        h.push(final_read(&["set-1-1", "set-1-1"], 100));
        let v = check(&h);
        assert!(v.anomalies.iter().any(|a| a.contains("twice")), "{:?}", v.anomalies);
    }
}
