//! Checkers over a history: what the run must show before it may call itself valid.
//!
//! - [`register`]: linearizability of the CAS registers, checked exactly by a sweep over
//!   versions (every write bumps the version by one and every value is unique).
//! - [`set`]: set-full — reads during the run and after it; lost, reappearing, phantom
//!   and duplicate elements.
//! - [`runs`]: one run per idempotency key, no acknowledged trigger lost, never two
//!   executions of a run at once, no stale report applied, nothing stuck, cancels that
//!   hold — judged from the jobs' own log ([`crate::truth`]) and the final state.
//! - [`schedule`]: each tick fired at most once and only when due, every tick accounted
//!   for as fired or skipped, edits and pauses honoured, lag bounded in calm time, and
//!   the jobs' own log against the runs.
//! - Minimums: a run with too few successful operations or acknowledged writes proves
//!   nothing, so it fails instead of passing vacuously.
//!
//! The checkers read the history and the truth log only; they never talk to the cluster. Fault coverage,
//! availability and recovery are judged from the nemesis log in `crate::phases`.

mod register;
pub mod runs;
#[cfg(test)]
mod runs_tests;
pub mod schedule;
#[cfg(test)]
mod schedule_tests;
mod set;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::history::{Event, Kind, NemesisEvent};

pub use register::INITIAL_VALUE;

/// One thing the run got wrong, with the operations that show it.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// `register`, `set`, `minimum`, `coverage`, `recovery`, `liveness`, `nemesis`,
    /// `final`, `convergence`.
    pub checker: String,
    pub message: String,
    /// The operations involved (invoke and completion folded into one object each).
    pub ops: Vec<Value>,
}

impl Anomaly {
    pub fn new(checker: &str, message: String, ops: Vec<Value>) -> Anomaly {
        Anomaly { checker: checker.into(), message, ops }
    }
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.message)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub anomalies: Vec<Anomaly>,
    /// f → (ok, fail, info)
    pub counts: BTreeMap<String, (u64, u64, u64)>,
    /// What the schedule workload fired, skipped and ran.
    pub schedule: schedule::Stats,
}

/// What the checkers read besides the history: the jobs' truth logs, the nemesis log and
/// the wall-clock time the history began at.
#[derive(Debug, Default)]
pub struct Evidence {
    /// The runs workload's jobs.
    pub runs: runs::Truth,
    /// The schedule workload's jobs.
    pub schedule: runs::Truth,
    pub faults: Vec<NemesisEvent>,
    /// Unix time in ns at history time 0, read from the harness's clock (no nemesis
    /// touches it).
    pub start_wall_ns: i128,
}

impl Verdict {
    pub fn push(&mut self, a: Anomaly) {
        self.anomalies.push(a);
        self.valid = false;
    }
}

/// What a run must at least have done to count: per workload that ran, this many `ok`
/// operations and this many acknowledged writes (CAS for the register, adds for the set).
#[derive(Debug, Clone, Copy)]
pub struct Minimums {
    pub ok_ops: u64,
    pub acked_writes: u64,
}

impl Minimums {
    /// The default for a run of `seconds`: even a cluster that is faulty half the time
    /// completes far more than one operation a second.
    pub fn for_seconds(seconds: u64) -> Minimums {
        Minimums { ok_ops: (2 * seconds).max(50), acked_writes: (seconds / 2).max(20) }
    }
}

/// An operation: its invoke and its completion. An invoke that never completed is an
/// `info` with `end == u64::MAX`.
#[derive(Debug, Clone)]
pub struct Op {
    pub process: u64,
    pub f: String,
    pub args: Value,
    pub kind: Kind,
    pub result: Value,
    pub node: String,
    pub error: Option<String>,
    pub start: u64,
    pub end: u64,
}

impl Op {
    /// The operation as an anomaly shows it.
    pub fn describe(&self) -> Value {
        json!({
            "process": self.process, "f": self.f, "node": self.node, "args": self.args,
            "outcome": self.kind, "result": self.result, "error": self.error,
            "start_s": self.start as f64 / 1e9,
            "end_s": if self.end == u64::MAX { Value::Null } else { json!(self.end as f64 / 1e9) },
        })
    }
}

/// Pairs invokes with completions by process. A process has at most one operation in
/// flight (see `crate::workload`), so the next completion of a process completes its open
/// invoke.
pub fn pair(history: &[Event]) -> Vec<Op> {
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
                ops.push(Op {
                    process: e.process,
                    f: e.f.clone(),
                    args,
                    kind,
                    result: e.value.clone(),
                    node: e.node.clone(),
                    error: e.error.clone(),
                    start,
                    end: e.time_ns,
                });
            }
        }
    }
    for (_, inv) in open {
        ops.push(Op {
            process: inv.process,
            f: inv.f.clone(),
            args: inv.value.clone(),
            kind: Kind::Info,
            result: Value::Null,
            node: inv.node.clone(),
            error: Some("never completed".into()),
            start: inv.time_ns,
            end: u64::MAX,
        });
    }
    ops
}

/// Checks a history (and, for the runs and schedule workloads, the jobs' truth logs).
/// `minimums` applies to each workload the history shows any invoke of.
pub fn check(history: &[Event], minimums: Minimums, evidence: &Evidence) -> Verdict {
    let ops = pair(history);
    let mut v = Verdict { valid: true, ..Verdict::default() };
    for op in &ops {
        let c = v.counts.entry(op.f.clone()).or_default();
        match op.kind {
            Kind::Ok => c.0 += 1,
            Kind::Fail => c.1 += 1,
            _ => c.2 += 1,
        }
    }
    for a in register::check(&ops).into_iter().chain(set::check(&ops)).chain(runs::check(&ops, &evidence.runs)) {
        v.push(a);
    }
    let (anomalies, stats) = schedule::check(&ops, evidence);
    for a in anomalies {
        v.push(a);
    }
    v.schedule = stats;
    for a in check_minimums(&v.counts, &v.schedule, minimums) {
        v.push(a);
    }
    v
}

fn check_minimums(counts: &BTreeMap<String, (u64, u64, u64)>, sched: &schedule::Stats, min: Minimums) -> Vec<Anomaly> {
    let ok = |f: &str| counts.get(f).map_or(0, |c| c.0);
    let ran = |f: &str| counts.contains_key(f);
    let mut out = Vec::new();
    let mut need = |workload: &str, what: &str, have: u64, want: u64| {
        if have < want {
            out.push(Anomaly::new(
                "minimum",
                format!("{workload}: only {have} {what} (at least {want} required): the run proves too little"),
                Vec::new(),
            ));
        }
    };
    if ran("read") || ran("cas") {
        need("register", "ok operations", ok("read") + ok("cas"), min.ok_ops);
        need("register", "acknowledged writes", ok("cas"), min.acked_writes);
    }
    if ran("add") || ran("set-read") {
        need("set", "ok operations", ok("add") + ok("set-read"), min.ok_ops);
        need("set", "acknowledged adds", ok("add"), min.acked_writes);
    }
    if ran("trigger") {
        // Triggers are paced (a job per trigger), so fewer are asked for.
        let want = if min.acked_writes == 0 { 0 } else { (min.acked_writes / 2).max(10) };
        need("runs", "acknowledged triggers", ok("trigger"), want);
    }
    if ran("sched-change") {
        // Changes and ticks are paced too: a few of each prove the accounting.
        let want = if min.acked_writes == 0 { 0 } else { (min.acked_writes / 4).max(5) };
        let changes = (sched.changes as u64).saturating_sub(sched.tasks as u64);
        need("schedule", "acknowledged changes", changes, want);
        need("schedule", "fired ticks", sched.fired as u64, 2 * want);
    }
    out
}
