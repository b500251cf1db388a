//! The `runs` workload's checker: manual triggers with idempotency keys, cancels, and
//! what the jobs themselves logged (`crate::truth`), against the final state of every run.
//!
//! Operations: `trigger` (args `{task, key}`, ok `{task, key, run}`), `cancel` (args and
//! ok `{run}`), and one `runs-final` per run of the workload's tasks, read after healing
//! (ok `{run, task, status, attempt, retry_of, marker}`; `marker` is the attempt the run's
//! stored output names, see [`crate::truth::attempt_marker`]).
//!
//! A retry after a failure or a re-queue after a lost worker is a new run with the next
//! attempt number and `retry_of` naming the run it re-runs: a trigger makes a *chain* of
//! runs, rooted at the run its answer names. Checked:
//! - one key, one chain: every acknowledged answer for a key names the same root, no two
//!   keys name the same root, and a task holds no more chains than keys that may have
//!   created one (acknowledged or indeterminate — a definitely refused trigger creates
//!   nothing);
//! - no acknowledged trigger lost: its run is among the final runs;
//! - never two executions at once: the truth intervals of all attempts of a chain never
//!   overlap, and no attempt starts twice;
//! - no stale report applied: a succeeded run's output is its final attempt's, and that
//!   attempt ran to its end;
//! - nothing stuck: every run is final once the cluster healed and settled;
//! - a cancel holds: an acknowledged cancel ends `cancelled`, and the job logs nothing
//!   later than [`CANCEL_GRACE_NS`] after the acknowledgement.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{Anomaly, Op};
use crate::history::Kind;
use crate::truth::Line;

/// How long after an acknowledged cancel its job may still log: the agent learns of it
/// at its next poll or heartbeat (about a second), and the shim kills the job's group.
pub const CANCEL_GRACE_NS: u64 = 5_000_000_000;

/// The run statuses nothing follows.
pub const FINAL: [&str; 5] = ["succeeded", "failed", "timed_out", "cancelled", "lost"];

/// The truth log and the instant the history's clock started, on the same
/// `CLOCK_MONOTONIC`.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub lines: Vec<Line>,
    pub start_mono_ns: u64,
}

impl Truth {
    /// A truth time as history time (ns since the history started).
    pub(super) fn to_history(&self, t: u64) -> u64 {
        t.saturating_sub(self.start_mono_ns)
    }
}

/// One attempt's execution as its job logged it.
#[derive(Debug)]
pub(super) struct Execution {
    pub worker: String,
    pub starts: usize,
    pub first: u64,
    pub last: u64,
    pub ended: bool,
}

/// Each final run's chain root (following `retry_of`); runs not read map to themselves.
fn roots(finals: &[&Op]) -> BTreeMap<u64, u64> {
    let runs: Vec<(u64, Option<u64>)> =
        finals.iter().filter_map(|f| Some((f.result["run"].as_u64()?, f.result["retry_of"].as_u64()))).collect();
    chain_roots(&runs)
}

/// Each run's chain root, from `(run, retry_of)` pairs.
pub(super) fn chain_roots(runs: &[(u64, Option<u64>)]) -> BTreeMap<u64, u64> {
    let parent: BTreeMap<u64, u64> = runs.iter().filter_map(|(run, of)| Some((*run, (*of)?))).collect();
    let mut out = BTreeMap::new();
    for (run, _) in runs {
        let mut root = *run;
        // Bounded: a chain is at most as long as the runs read.
        for _ in 0..=runs.len() {
            match parent.get(&root) {
                Some(p) => root = *p,
                None => break,
            }
        }
        out.insert(*run, root);
    }
    out
}

pub fn check(ops: &[Op], truth: &Truth) -> Vec<Anomaly> {
    let triggers: Vec<&Op> = ops.iter().filter(|o| o.f == "trigger").collect();
    let finals: Vec<&Op> = ops.iter().filter(|o| o.f == "runs-final" && o.kind == Kind::Ok).collect();
    if triggers.is_empty() && finals.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in ops.iter().filter(|o| o.f == "runs-final" && o.kind != Kind::Ok) {
        out.push(Anomaly::new(
            "runs",
            format!("the final runs could not be read: {}", f.error.clone().unwrap_or_default()),
            vec![f.describe()],
        ));
    }
    if triggers.iter().any(|t| t.kind == Kind::Ok) && truth.lines.is_empty() {
        out.push(Anomaly::new("runs", "triggers were acknowledged but no job ever ran".into(), Vec::new()));
    }
    let executions = executions(truth);
    let roots = roots(&finals);
    check_keys(&triggers, &finals, &roots, &mut out);
    check_executions(&executions, &roots, truth, &mut out);
    check_finals(&finals, &executions, &mut out);
    check_cancels(ops, &finals, truth, &mut out);
    out
}

/// What a job logs in the first [`THAW_TAIL_NS`] after it thawed from a stall longer
/// than its lease ([`crate::truth::THAW_GAP_MS`]: its whole worker was frozen) is the
/// zombie tail of the freeze (see `crate::worker`): not counted as execution time. Past
/// it, the shim failed to kill the job, and those lines count.
pub const THAW_TAIL_NS: u64 = 1_000_000_000;

/// Each attempt's lines in time order, with whether each one counts as execution time
/// (not in the zombie tail after a thaw).
fn attempts(truth: &Truth) -> BTreeMap<(u64, u32), Vec<(&Line, bool)>> {
    let mut lines: BTreeMap<(u64, u32), Vec<&Line>> = BTreeMap::new();
    for l in &truth.lines {
        lines.entry((l.run, l.attempt)).or_default().push(l);
    }
    lines
        .into_iter()
        .map(|(key, mut ls)| {
            ls.sort_by_key(|l| l.t);
            let mut thawed_at = None;
            let counted = ls
                .into_iter()
                .map(|l| {
                    if l.gap_ms.is_some() {
                        thawed_at = Some(l.t);
                    }
                    (l, thawed_at.is_none_or(|t| l.t > t + THAW_TAIL_NS))
                })
                .collect();
            (key, counted)
        })
        .collect()
}

pub(super) fn executions(truth: &Truth) -> BTreeMap<(u64, u32), Execution> {
    let mut out = BTreeMap::new();
    for (key, ls) in attempts(truth) {
        let first = ls[0].0;
        let mut e = Execution { worker: first.worker.clone(), starts: 0, first: first.t, last: first.t, ended: false };
        for (l, counted) in ls {
            match l.e.as_str() {
                "start" => e.starts += 1,
                "end" => e.ended = true,
                _ => {}
            }
            if counted {
                e.last = e.last.max(l.t);
            }
        }
        out.insert(key, e);
    }
    out
}

fn check_keys(triggers: &[&Op], finals: &[&Op], roots: &BTreeMap<u64, u64>, out: &mut Vec<Anomaly>) {
    let mut run_of_key: BTreeMap<String, (u64, &Op)> = BTreeMap::new();
    let mut key_of_run: BTreeMap<u64, (String, &Op)> = BTreeMap::new();
    // Keys that may have created a run, per task.
    let mut may_have_created: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for op in triggers {
        let key = op.args["key"].as_str().unwrap_or_default().to_string();
        let task = op.args["task"].as_u64().unwrap_or_default();
        if op.kind != Kind::Fail {
            may_have_created.entry(task).or_default().insert(key.clone());
        }
        if op.kind != Kind::Ok {
            continue;
        }
        let Some(run) = op.result["run"].as_u64() else {
            out.push(Anomaly::new(
                "runs",
                format!("trigger with key {key} acknowledged without a run id"),
                vec![op.describe()],
            ));
            continue;
        };
        if let Some((earlier, first)) = run_of_key.get(&key) {
            if *earlier != run {
                out.push(Anomaly::new(
                    "runs",
                    format!("key {key} created two runs: {earlier} and {run}"),
                    vec![first.describe(), op.describe()],
                ));
            }
        } else {
            run_of_key.insert(key.clone(), (run, op));
        }
        if let Some((other, first)) = key_of_run.get(&run) {
            if *other != key {
                out.push(Anomaly::new(
                    "runs",
                    format!("run {run} answered two keys: {other} and {key}"),
                    vec![first.describe(), op.describe()],
                ));
            }
        } else {
            key_of_run.insert(run, (key, op));
        }
    }
    if finals.is_empty() {
        return;
    }
    let final_runs: BTreeSet<u64> = finals.iter().filter_map(|f| f.result["run"].as_u64()).collect();
    for (key, (run, op)) in &run_of_key {
        if !final_runs.contains(run) {
            out.push(Anomaly::new(
                "runs",
                format!("run {run}, acknowledged for key {key}, is gone after healing"),
                vec![op.describe()],
            ));
        }
    }
    for (key, (run, op)) in &run_of_key {
        if roots.get(run).is_some_and(|root| root != run) {
            out.push(Anomaly::new(
                "runs",
                format!("key {key} was answered with run {run}, a re-run of run {}, not a new chain", roots[run]),
                vec![op.describe()],
            ));
        }
    }
    let mut chains_per_task: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for f in finals {
        let run = f.result["run"].as_u64().unwrap_or_default();
        chains_per_task
            .entry(f.result["task"].as_u64().unwrap_or_default())
            .or_default()
            .insert(roots.get(&run).copied().unwrap_or(run));
    }
    for (task, chains) in chains_per_task {
        let keys = may_have_created.get(&task).map_or(0, BTreeSet::len);
        if chains.len() > keys {
            out.push(Anomaly::new(
                "runs",
                format!(
                    "task {task} holds {} chains of runs but only {keys} triggers may have created one: a refused or repeated trigger ran",
                    chains.len()
                ),
                Vec::new(),
            ));
        }
    }
}

pub(super) fn check_executions(
    executions: &BTreeMap<(u64, u32), Execution>,
    roots: &BTreeMap<u64, u64>,
    truth: &Truth,
    out: &mut Vec<Anomaly>,
) {
    // By chain: every attempt of a trigger's runs, whichever run id each attempt got.
    let mut by_chain: BTreeMap<u64, Vec<(u64, u32, &Execution)>> = BTreeMap::new();
    for ((run, attempt), e) in executions {
        if e.starts > 1 {
            out.push(Anomaly::new(
                "runs",
                format!("run {run} attempt {attempt} was started {} times (on {})", e.starts, e.worker),
                Vec::new(),
            ));
        }
        by_chain.entry(roots.get(run).copied().unwrap_or(*run)).or_default().push((*run, *attempt, e));
    }
    for (root, mut attempts) in by_chain {
        attempts.sort_by_key(|(_, _, e)| e.first);
        for pair in attempts.windows(2) {
            let ((ra, a, ea), (rb, b, eb)) = (pair[0], pair[1]);
            if eb.first <= ea.last {
                out.push(Anomaly::new(
                    "runs",
                    format!(
                        "chain of run {root}: attempt {b} (run {rb}) on {} started at {:.3}s while attempt {a} (run {ra}) on {} still ran (until {:.3}s): {} ms of overlap",
                        eb.worker,
                        truth.to_history(eb.first) as f64 / 1e9,
                        ea.worker,
                        truth.to_history(ea.last) as f64 / 1e9,
                        (ea.last - eb.first) / 1_000_000
                    ),
                    Vec::new(),
                ));
            }
        }
    }
}

pub(super) fn check_finals(finals: &[&Op], executions: &BTreeMap<(u64, u32), Execution>, out: &mut Vec<Anomaly>) {
    for f in finals {
        let r = &f.result;
        let run = r["run"].as_u64().unwrap_or_default();
        let status = r["status"].as_str().unwrap_or_default();
        let attempt = r["attempt"].as_u64().unwrap_or_default() as u32;
        if !FINAL.contains(&status) {
            out.push(Anomaly::new(
                "runs",
                format!("run {run} is stuck {status} (attempt {attempt}) after the cluster healed and settled"),
                vec![f.describe()],
            ));
            continue;
        }
        if status != "succeeded" {
            continue;
        }
        match r["marker"].as_u64() {
            Some(m) if m as u32 != attempt => out.push(Anomaly::new(
                "runs",
                format!("run {run} succeeded as attempt {attempt} with the output of attempt {m}: a stale attempt's report was applied"),
                vec![f.describe()],
            )),
            None => out.push(Anomaly::new(
                "runs",
                format!("run {run} succeeded (attempt {attempt}) with an output no job of it wrote"),
                vec![f.describe()],
            )),
            Some(_) => {}
        }
        if !executions.get(&(run, attempt)).is_some_and(|e| e.ended) {
            out.push(Anomaly::new(
                "runs",
                format!("run {run} succeeded as attempt {attempt}, which never ran to its end"),
                vec![f.describe()],
            ));
        }
    }
}

fn check_cancels(ops: &[Op], finals: &[&Op], truth: &Truth, out: &mut Vec<Anomaly>) {
    let status: BTreeMap<u64, &str> = finals
        .iter()
        .filter_map(|f| Some((f.result["run"].as_u64()?, f.result["status"].as_str().unwrap_or_default())))
        .collect();
    for op in ops.iter().filter(|o| o.f == "cancel" && o.kind == Kind::Ok) {
        let Some(run) = op.args["run"].as_u64() else { continue };
        if let Some(s) = status.get(&run) {
            if *s != "cancelled" {
                out.push(Anomaly::new(
                    "runs",
                    format!("run {run}'s cancel was acknowledged, yet it ended {s}"),
                    vec![op.describe()],
                ));
            }
        }
        // A thawed job's zombie tail is excused here as in the overlap check.
        let late = attempts(truth)
            .into_iter()
            .filter(|((r, _), _)| *r == run)
            .flat_map(|(_, ls)| ls.into_iter().filter(|(_, counted)| *counted).map(|(l, _)| truth.to_history(l.t)))
            .max();
        if let Some(last) = late.filter(|t| *t > op.end.saturating_add(CANCEL_GRACE_NS)) {
            out.push(Anomaly::new(
                "runs",
                format!(
                    "run {run}'s job still ran {:.1} s after its cancel was acknowledged",
                    (last - op.end) as f64 / 1e9
                ),
                vec![op.describe(), json!({"last_truth_s": last as f64 / 1e9})],
            ));
        }
    }
}
