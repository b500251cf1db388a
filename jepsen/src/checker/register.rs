//! The CAS register, checked exactly.
//!
//! A register is a task: its `command` is the value and its `version` counts the writes.
//! Every successful write (a PUT with `If-Match: v`) produces version `v + 1`, and every
//! value a client writes is unique. That turns linearizability, in general NP-complete
//! to check, into a sweep:
//!
//! 1. **One write per version.** Version 1 is the initial value. Any other version a read
//!    or an acknowledged write shows was produced by exactly one write, whose `from` is
//!    the version minus one and whose value equals every read of that version. A write
//!    that failed definitely (412, 503, a refused connection) produced nothing; if its
//!    value is read, that is a phantom. An indeterminate write may or may not appear, and
//!    can appear at one version only (its `from` fixes it).
//! 2. **Refusals.** A register is never deleted, so a 404 is lost data. A 412 says the
//!    version was not `from` at some instant of the CAS: impossible when an operation on
//!    `from` had ended before it began and no write from `from` had begun before it ended.
//! 3. **Real time.** For any two operations where one ended before the other began, the
//!    later one's version is at least the earlier one's, and strictly greater when the
//!    later one is a write. An indeterminate write's end is unknown, so it never counts
//!    as ended.
//!
//! Rules 1 and 3 are exactly the conditions for a linearization to exist: order writes
//! by version, each version's reads after its write; rule 1 makes every read return the
//! latest write and every CAS see the version it expected, rule 2 makes the order respect
//! real time. Sorting makes it O(n log n).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Anomaly, Op};
use crate::history::Kind;

/// The value each register holds at version 1, before any client writes.
pub const INITIAL_VALUE: &str = "echo init";

pub fn check(ops: &[Op]) -> Vec<Anomaly> {
    let keys: BTreeSet<u64> =
        ops.iter().filter(|o| o.f == "cas" || o.f == "read").filter_map(|o| o.args["key"].as_u64()).collect();
    let mut out = Vec::new();
    for key in keys {
        let mine: Vec<&Op> =
            ops.iter().filter(|o| (o.f == "cas" || o.f == "read") && o.args["key"].as_u64() == Some(key)).collect();
        check_key(key, &mine, &mut out);
    }
    out
}

/// A versioned point in the history for the real-time sweep.
struct Point<'a> {
    op: &'a Op,
    version: u64,
    write: bool,
    /// `u64::MAX` for an indeterminate write: it may have taken effect at any later time.
    end: u64,
}

fn check_key(key: u64, ops: &[&Op], out: &mut Vec<Anomaly>) {
    let anomaly = |msg: String, involved: &[&Op]| {
        Anomaly::new("register", format!("register {key}: {msg}"), involved.iter().map(|o| o.describe()).collect())
    };
    let writes: Vec<&Op> = ops.iter().copied().filter(|o| o.f == "cas").collect();
    let from = |w: &Op| w.args["from"].as_u64().unwrap_or(0);
    let to = |w: &Op| w.args["to"].as_str().unwrap_or_default().to_string();
    // Every write by the value it tried to write (values are unique per write).
    let by_value: HashMap<String, &Op> = writes.iter().map(|w| (to(w), *w)).collect();

    // Acknowledged writes: version from + 1, the value written, one per version.
    let mut acked: BTreeMap<u64, &Op> = BTreeMap::new();
    for w in writes.iter().copied().filter(|w| w.kind == Kind::Ok) {
        let version = w.result["version"].as_u64().unwrap_or(0);
        if version != from(w) + 1 {
            out.push(anomaly(format!("a CAS from version {} produced version {version}", from(w)), &[w]));
        }
        if w.result["value"].as_str() != Some(&to(w)) {
            out.push(anomaly(
                format!("a CAS acknowledged value {} for a write of {:?}", w.result["value"], to(w)),
                &[w],
            ));
        }
        if let Some(prev) = acked.insert(version, w) {
            out.push(anomaly(format!("two acknowledged writes produced version {version} (lost update)"), &[prev, w]));
        }
    }

    // Reads: each version's value must come from the one write that made it.
    let mut seen: BTreeMap<u64, (&str, &Op)> = BTreeMap::new();
    let mut observed_info: BTreeMap<u64, &Op> = BTreeMap::new();
    for r in ops.iter().copied().filter(|o| o.f == "read" && o.kind == Kind::Ok) {
        let version = r.result["version"].as_u64().unwrap_or(0);
        let value = r.result["value"].as_str().unwrap_or_default();
        if let Some((other, first)) = seen.get(&version) {
            if *other != value {
                out.push(anomaly(format!("version {version} read as {other:?} and as {value:?}"), &[first, r]));
                continue;
            }
        } else {
            seen.insert(version, (value, r));
        }
        if version <= 1 {
            if value != INITIAL_VALUE || version == 0 {
                out.push(anomaly(format!("version {version} reads {value:?}, not the initial value"), &[r]));
            }
            continue;
        }
        let Some(w) = by_value.get(value).copied() else {
            out.push(anomaly(format!("read version {version} = {value:?}, which no write produced"), &[r]));
            continue;
        };
        if w.kind == Kind::Fail {
            out.push(anomaly(
                format!(
                    "read {value:?} at version {version}, written by a write that failed definitely ({})",
                    w.error.as_deref().unwrap_or("?")
                ),
                &[w, r],
            ));
            continue;
        }
        if from(w) + 1 != version {
            out.push(anomaly(
                format!("read {value:?} at version {version}, but that write was a CAS from version {}", from(w)),
                &[w, r],
            ));
            continue;
        }
        match acked.get(&version) {
            Some(a) if !std::ptr::eq(*a, w) => out.push(anomaly(
                format!("version {version} reads {value:?}, but an acknowledged write produced it with {:?}", to(a)),
                &[a, w, r],
            )),
            Some(_) => {}
            None => {
                observed_info.insert(version, w);
            }
        }
    }

    // A register is never deleted: a 404 for it (through any node, linearizable) is lost
    // data.
    for o in ops.iter().copied().filter(|o| o.kind == Kind::Fail && o.error.as_deref() == Some("404")) {
        out.push(anomaly(format!("the register was not found by a {} (lost)", o.f), &[o]));
    }
    // A 412 is an observation too: at some instant during the CAS the version was not
    // `from`. That is impossible if an operation on version `from` had ended before the
    // CAS began (the version was at least `from`) and no write from `from` (one that
    // could make it `from + 1`) had begun before the CAS ended (it was at most `from`).
    let mut seen_at: BTreeMap<u64, &Op> = BTreeMap::new();
    for (version, w) in &acked {
        seen_at.insert(*version, w);
    }
    for r in ops.iter().copied().filter(|o| o.f == "read" && o.kind == Kind::Ok) {
        let version = r.result["version"].as_u64().unwrap_or(0);
        let earliest = seen_at.entry(version).or_insert(r);
        if r.end < earliest.end {
            *earliest = r;
        }
    }
    for c in writes.iter().copied().filter(|w| w.kind == Kind::Fail && w.error.as_deref() == Some("412")) {
        let Some(at) = seen_at.get(&from(c)).filter(|o| o.end < c.start) else { continue };
        let moved = writes.iter().any(|w| w.kind != Kind::Fail && from(w) == from(c) && w.start < c.end);
        if !moved {
            out.push(anomaly(
                format!(
                    "a CAS from version {} was refused (412) though the version was {} throughout it",
                    from(c),
                    from(c)
                ),
                &[at, c],
            ));
        }
    }

    // Real time: a later operation never sees an older version, and a later write
    // produces a newer one.
    let mut points: Vec<Point> = Vec::new();
    for (version, w) in &acked {
        points.push(Point { op: w, version: *version, write: true, end: w.end });
    }
    for (version, w) in &observed_info {
        points.push(Point { op: w, version: *version, write: true, end: u64::MAX });
    }
    for r in ops.iter().copied().filter(|o| o.f == "read" && o.kind == Kind::Ok) {
        points.push(Point { op: r, version: r.result["version"].as_u64().unwrap_or(0), write: false, end: r.end });
    }
    let mut by_start: Vec<usize> = (0..points.len()).collect();
    by_start.sort_by_key(|&i| points[i].op.start);
    let mut by_end: Vec<usize> = (0..points.len()).collect();
    by_end.sort_by_key(|&i| points[i].end);
    let mut ended = 0;
    let mut newest: Option<usize> = None;
    for &b in &by_start {
        let pb = &points[b];
        while ended < by_end.len() && points[by_end[ended]].end < pb.op.start {
            let a = by_end[ended];
            if newest.is_none_or(|n| points[a].version > points[n].version) {
                newest = Some(a);
            }
            ended += 1;
        }
        let Some(a) = newest else { continue };
        let pa = &points[a];
        if pb.write && pa.version >= pb.version {
            out.push(anomaly(
                format!(
                    "the write of version {} began after an operation on version {} had ended",
                    pb.version, pa.version
                ),
                &[pa.op, pb.op],
            ));
        } else if !pb.write && pa.version > pb.version {
            out.push(anomaly(
                format!(
                    "stale read: version {} read after version {} was {} (ended {:.3} s, read began {:.3} s)",
                    pb.version,
                    pa.version,
                    if pa.write { "written" } else { "read" },
                    pa.end as f64 / 1e9,
                    pb.op.start as f64 / 1e9
                ),
                &[pa.op, pb.op],
            ));
        }
    }
}
