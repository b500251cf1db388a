//! The `schedule` workload's checker (see `crate::schedule`): computes each task's ticks
//! itself, from the changes the clients saw acknowledged, and holds the cluster's firing
//! to them (PRODUCT.md §4.3–4.4, §5), then holds the jobs' own log to the runs.
//!
//! From the history: every acknowledged change of a task (`sched-change`, each with the
//! task as that write left it: version, schedule, zone, status, cursor, counters, command
//! time), linearizable reads (`sched-read`), and after healing the task (`sched-task`)
//! and all its runs (`sched-runs`). A task's versions must all be known (every change was
//! retried with its key until its outcome was). A schedule or zone change starts an
//! *epoch* at the cursor it left (the change's command time, or a later cursor). Checked:
//! - **at most once**: no two runs of a task for one tick; a run's `created_at` (the
//!   leader's command time) is never before its tick;
//! - **only real ticks**: every fired tick is a tick of the epoch's schedule in its zone,
//!   after the epoch began, and not while the task was paused;
//! - **every tick accounted for**: `fire_count` equals the runs fired; within the last
//!   epoch, fired + skipped equals the ticks up to the final cursor exactly; an earlier
//!   epoch accounts for at most the ticks up to the change that ended it (ticks between
//!   its last firing and that change are dropped by design: a new schedule takes effect
//!   from the change);
//! - **monotonic**: a read or write that began after another ended never sees an older
//!   version, cursor or counter;
//! - **lag**: a tick that fell due in calm time (no fault within [`LAG_BOUND`] of it,
//!   nor from a fault's start until a write succeeded after its heal) is fired within
//!   [`LAG_BOUND`] of it;
//! - **ground truth**: each job ran for a run the cluster has, the attempts of one run's
//!   chain never overlapped (`super::runs::check_executions`), and no job started before
//!   its tick in true time — unless a clock fault then ran a node's clock ahead, by at
//!   most that fault's skew (a leader whose clock runs ahead fires early by as much: see
//!   raftcron's README, "Time").
//!
//! Like every checker it reads only the history, the truth log and the nemesis log.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Timelike, Utc};
use serde_json::Value;

use super::runs::{chain_roots, check_executions, check_finals, executions};
use super::{Anomaly, Evidence, Op};
use crate::history::{Kind, NemesisEvent};

/// How late a tick may fire while the cluster is calm. The target is far lower (p99 under
/// 50 ms on an idle cluster); this bound allows for a 2-core machine running four
/// nodes, two workers and the harness in debug builds.
pub const LAG_BOUND: Duration = Duration::seconds(3);
/// A job may start this much before its tick in true time without a clock fault: the
/// tick's own rounding (`RAFTCRON_SCHEDULED_AT` has whole seconds) and the harness's
/// reading of its clocks.
const EARLY_SLACK_NS: i128 = 1_000_000_000;
/// A run fired early by a leader whose clock ran ahead by δ may start up to δ after that
/// clock fault ended (command time stays ahead until true time catches up), and this
/// much later still (it waited for a worker).
const EARLY_AFTER_FAULT_NS: u64 = 30_000_000_000;
/// The nodes' `misfire_threshold_s` in the chaos suite (`crate::net`): a tick older than
/// this when the leader plans it is a misfire, which `skip` never fires.
pub const MISFIRE_THRESHOLD_S: i64 = 5;
/// Anomalies of one kind reported per task at most (the rest are counted).
const REPORT_AT_MOST: usize = 10;

/// A schedule as the checker evaluates it: its own reading of the expressions the
/// workload uses, independent of raftcron's.
#[derive(Debug, Clone)]
pub enum Oracle {
    /// Six fields; only seconds and minutes may be restricted.
    Cron {
        seconds: [bool; 60],
        minutes: [bool; 60],
        tz: chrono_tz::Tz,
    },
    Every {
        anchor: DateTime<Utc>,
        step: Duration,
    },
}

/// One field's values (0..60): `*`, `*/n`, `a`, `a-b`, `a-b/n`, comma-separated.
fn field(text: &str) -> Result<[bool; 60], String> {
    let mut out = [false; 60];
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<usize>().map_err(|_| format!("bad step in {item:?}"))?),
            None => (item, 1),
        };
        let (lo, hi) = match range {
            "*" => (0, 59),
            r => match r.split_once('-') {
                Some((a, b)) => {
                    (a.parse().map_err(|_| format!("bad {a:?}"))?, b.parse().map_err(|_| format!("bad {b:?}"))?)
                }
                None => {
                    let v: usize = r.parse().map_err(|_| format!("bad {r:?}"))?;
                    (v, if step > 1 { 59 } else { v })
                }
            },
        };
        if step == 0 || hi > 59 || lo > hi {
            return Err(format!("unsupported field item {item:?}"));
        }
        for v in (lo..=hi).step_by(step) {
            out[v] = true;
        }
    }
    Ok(out)
}

impl Oracle {
    pub fn new(expr: &str, zone: &str, created_at: DateTime<Utc>) -> Result<Oracle, String> {
        if let Some(d) = expr.strip_prefix("@every ") {
            let secs: i64 = d.strip_suffix('s').and_then(|s| s.parse().ok()).ok_or(format!("unsupported {expr:?}"))?;
            return Ok(Oracle::Every { anchor: created_at, step: Duration::seconds(secs) });
        }
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 6 || f[2..].iter().any(|x| *x != "*") {
            return Err(format!("the checker evaluates only seconds and minutes fields, not {expr:?}"));
        }
        let tz: chrono_tz::Tz = zone.parse().map_err(|_| format!("unknown zone {zone:?}"))?;
        Ok(Oracle::Cron { seconds: field(f[0])?, minutes: field(f[1])?, tz })
    }

    /// The ticks in `(from, to]`.
    pub fn ticks(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        if to <= from {
            return out;
        }
        match self {
            Oracle::Every { anchor, step } => {
                let ms = step.num_milliseconds().max(1);
                let k0 = if from < *anchor { 1 } else { (from - *anchor).num_milliseconds() / ms + 1 };
                let mut k = k0.max(1);
                loop {
                    let t = *anchor + Duration::milliseconds(ms * k);
                    if t > to {
                        break;
                    }
                    if t > from {
                        out.push(t);
                    }
                    k += 1;
                }
            }
            Oracle::Cron { seconds, minutes, tz } => {
                // Whole seconds after `from`, up to `to`.
                let mut s = from.timestamp() + 1;
                while s <= to.timestamp() {
                    let t = DateTime::from_timestamp(s, 0).expect("in range");
                    let local = t.with_timezone(tz);
                    if seconds[local.second() as usize] && minutes[local.minute() as usize] {
                        out.push(t);
                    }
                    s += 1;
                }
            }
        }
        out
    }

    pub fn is_tick(&self, t: DateTime<Utc>) -> bool {
        self.ticks(t - Duration::milliseconds(1), t).contains(&t)
    }
}

/// A task's state at one version, as the results of that version show it.
#[derive(Debug, Clone)]
struct Version {
    schedule: String,
    zone: String,
    paused: bool,
    updated_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// The cursor and fired + skipped as the write that made this version left them
    /// (`create` or `edit` results; for a version a pause or resume made, the least any
    /// result showed — only epochs need them exact, and only edits begin epochs).
    cursor: DateTime<Utc>,
    counted: u64,
    /// Whether a `create` or `edit` result showed this version.
    by_edit: bool,
    misfire: String,
}

/// A span of one schedule and zone: from `start` (exclusive) to `end` (inclusive): from
/// the cursor the change that began it left to the cursor the next one left, or to the
/// final cursor.
#[derive(Debug)]
struct Epoch {
    /// The schedule and zone, as messages name them.
    name: String,
    oracle: Oracle,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// The command time of the change that ended it: no tick of it fires after that.
    ended_at: Option<DateTime<Utc>>,
    /// fired + skipped when it began and when it ended.
    counted_from: u64,
    counted_to: u64,
    last: bool,
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// One run as `sched-runs` lists it.
#[derive(Debug, Clone)]
struct RunRec {
    id: u64,
    task: u64,
    trigger: String,
    retry_of: Option<u64>,
    scheduled_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// As `sched-runs` listed it (status, attempt, marker): what the runs checker's final
    /// checks read.
    raw: Value,
}

/// Summary figures for the report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub tasks: usize,
    pub changes: usize,
    pub fired: usize,
    pub skipped: u64,
    pub executions: usize,
    pub calm_ticks: usize,
    pub max_calm_lag_ms: i64,
}

pub fn check(ops: &[Op], ctx: &Evidence) -> (Vec<Anomaly>, Stats) {
    let mut out = Vec::new();
    let mut stats = Stats::default();
    let task_ids: BTreeSet<u64> = ops
        .iter()
        .filter(|o| o.f == "sched-change" && o.kind == Kind::Ok)
        .filter_map(|o| o.result["task"].as_u64())
        .collect();
    if task_ids.is_empty() {
        if ops.iter().any(|o| o.f.starts_with("sched-")) {
            out.push(Anomaly::new("schedule", "no task of the workload was ever created".into(), Vec::new()));
        }
        return (out, stats);
    }
    stats.tasks = task_ids.len();
    stats.changes = ops.iter().filter(|o| o.f == "sched-change" && o.kind == Kind::Ok).count();
    let listing = ops.iter().find(|o| o.f == "sched-runs");
    let runs: Vec<RunRec> = match listing {
        Some(op) if op.kind == Kind::Ok => op.result.as_array().into_iter().flatten().filter_map(run_rec).collect(),
        other => {
            let why = other.and_then(|o| o.error.clone()).unwrap_or_else(|| "never listed".into());
            out.push(Anomaly::new("schedule", format!("the final runs could not be read: {why}"), Vec::new()));
            return (out, stats);
        }
    };
    for id in &task_ids {
        let of_task: Vec<&Op> = ops
            .iter()
            .filter(|o| o.kind == Kind::Ok && matches!(o.f.as_str(), "sched-change" | "sched-read" | "sched-task"))
            .filter(|o| o.result["task"].as_u64() == Some(*id))
            .collect();
        // Reads only: a keyed write sent again returns its first answer, however late.
        let reads: Vec<&Op> = of_task.iter().copied().filter(|o| o.f != "sched-change").collect();
        check_monotonic(*id, &reads, &mut out);
        let task_runs: Vec<&RunRec> = runs.iter().filter(|r| r.task == *id).collect();
        check_task(*id, &of_task, &task_runs, ctx, &mut stats, &mut out);
    }
    check_truth(&runs, ctx, &mut stats, &mut out);
    (out, stats)
}

fn run_rec(v: &Value) -> Option<RunRec> {
    Some(RunRec {
        id: v["run"].as_u64()?,
        task: v["task"].as_u64()?,
        trigger: v["trigger"].as_str().unwrap_or_default().to_string(),
        retry_of: v["retry_of"].as_u64(),
        scheduled_at: time(&v["scheduled_at"])?,
        created_at: time(&v["created_at"])?,
        raw: v.clone(),
    })
}

/// Versions, cursors and counters never go back between operations ordered in real time.
fn check_monotonic(task: u64, ops: &[&Op], out: &mut Vec<Anomaly>) {
    let key = |o: &Op| {
        (
            o.result["version"].as_u64().unwrap_or(0),
            time(&o.result["cursor"]),
            o.result["fire_count"].as_u64().unwrap_or(0),
            o.result["skipped_ticks"].as_u64().unwrap_or(0),
        )
    };
    let mut reported = 0;
    for a in ops {
        for b in ops.iter().filter(|b| b.start > a.end) {
            let (ka, kb) = (key(a), key(b));
            if kb.0 < ka.0 || kb.1 < ka.1 || kb.2 < ka.2 || kb.3 < ka.3 {
                reported += 1;
                if reported <= REPORT_AT_MOST {
                    out.push(Anomaly::new(
                        "schedule",
                        format!("task {task}: an operation saw (version, cursor, fired, skipped) {kb:?} after another had seen {ka:?}"),
                        vec![a.describe(), b.describe()],
                    ));
                }
            }
        }
    }
}

/// fired + skipped, as a result shows them.
fn counted(r: &Value) -> u64 {
    r["fire_count"].as_u64().unwrap_or(0) + r["skipped_ticks"].as_u64().unwrap_or(0)
}

/// The task's versions from every result, or an anomaly.
fn versions(task: u64, ops: &[&Op], out: &mut Vec<Anomaly>) -> Option<BTreeMap<u64, Version>> {
    let mut vs: BTreeMap<u64, Version> = BTreeMap::new();
    for o in ops {
        let r = &o.result;
        let (Some(v), Some(updated_at), Some(created_at), Some(cursor)) =
            (r["version"].as_u64(), time(&r["updated_at"]), time(&r["created_at"]), time(&r["cursor"]))
        else {
            out.push(Anomaly::new(
                "schedule",
                format!("task {task}: a result without version or times"),
                vec![o.describe()],
            ));
            return None;
        };
        let by_edit = o.f == "sched-change" && matches!(o.args["kind"].as_str(), Some("create" | "edit"));
        let this = Version {
            schedule: r["schedule"].as_str().unwrap_or_default().to_string(),
            zone: r["timezone"].as_str().unwrap_or_default().to_string(),
            paused: r["status"] != "active",
            updated_at,
            created_at,
            cursor,
            counted: counted(r),
            by_edit,
            misfire: r["misfire_policy"].as_str().unwrap_or_default().to_string(),
        };
        match vs.get_mut(&v) {
            None => {
                vs.insert(v, this);
            }
            Some(seen) => {
                let same = (&seen.schedule, &seen.zone, seen.paused, seen.updated_at)
                    == (&this.schedule, &this.zone, this.paused, this.updated_at);
                if !same {
                    out.push(Anomaly::new(
                        "schedule",
                        format!("task {task}: version {v} was seen as two different specifications"),
                        vec![o.describe()],
                    ));
                    return None;
                }
                // An edit's own result (a retry of it returns the same) wins over what any
                // later read of the same version showed.
                match (seen.by_edit, this.by_edit) {
                    (false, true) => *seen = this,
                    (true, false) => {}
                    _ => {
                        seen.cursor = seen.cursor.min(this.cursor);
                        seen.counted = seen.counted.min(this.counted);
                    }
                }
            }
        }
    }
    let last = *vs.keys().next_back()?;
    let missing: Vec<u64> = (1..=last).filter(|v| !vs.contains_key(v)).collect();
    if !missing.is_empty() {
        out.push(Anomaly::new(
            "schedule",
            format!("task {task}: versions {missing:?} were never seen, so its ticks cannot be accounted for (a change whose outcome stayed unknown)"),
            Vec::new(),
        ));
        return None;
    }
    Some(vs)
}

fn check_task(task: u64, ops: &[&Op], runs: &[&RunRec], ctx: &Evidence, stats: &mut Stats, out: &mut Vec<Anomaly>) {
    let Some(final_op) = ops.iter().find(|o| o.f == "sched-task") else {
        out.push(Anomaly::new("schedule", format!("task {task} was not read after healing"), Vec::new()));
        return;
    };
    let Some(vs) = versions(task, ops, out) else { return };
    let final_cursor = time(&final_op.result["cursor"]).expect("checked by versions");
    let final_fired = final_op.result["fire_count"].as_u64().unwrap_or(0);
    let final_counted = final_fired + final_op.result["skipped_ticks"].as_u64().unwrap_or(0);
    stats.skipped += final_op.result["skipped_ticks"].as_u64().unwrap_or(0);
    if vs.values().next_back().is_some_and(|v| !v.paused) {
        out.push(Anomaly::new(
            "schedule",
            format!("task {task} is not paused after the final pause"),
            vec![final_op.describe()],
        ));
    }

    // Epochs, and the windows in which the task was paused.
    let mut epochs: Vec<Epoch> = Vec::new();
    // The epoch each version belongs to.
    let mut epoch_of: BTreeMap<u64, usize> = BTreeMap::new();
    let mut paused: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = Vec::new();
    let mut prev: Option<&Version> = None;
    for (number, v) in &vs {
        let new_epoch = prev.is_none_or(|p| (&p.schedule, &p.zone) != (&v.schedule, &v.zone));
        if new_epoch && !v.by_edit {
            out.push(Anomaly::new(
                "schedule",
                format!(
                    "task {task}: the change to {:?} in {} at {} was seen only through later reads, so where its epoch began is unknown",
                    v.schedule, v.zone, v.updated_at
                ),
                Vec::new(),
            ));
            return;
        }
        if new_epoch {
            let oracle = match Oracle::new(&v.schedule, &v.zone, v.created_at) {
                Ok(o) => o,
                Err(e) => {
                    out.push(Anomaly::new("schedule", format!("task {task}: {e}"), Vec::new()));
                    return;
                }
            };
            // The change takes effect from its command time, or from a cursor a leader
            // whose clock ran ahead had already moved past it (ticks up to there were the
            // old epoch's). A cursor left behind the change would let the new schedule's
            // ticks before it fire or count.
            let start = if prev.is_some() && v.cursor < v.updated_at {
                out.push(Anomaly::new(
                    "schedule",
                    format!(
                        "task {task}: the change to {:?} in {} at {} left the cursor behind it, at {}: ticks before the change may fire or count",
                        v.schedule, v.zone, v.updated_at, v.cursor
                    ),
                    Vec::new(),
                ));
                v.updated_at
            } else {
                v.cursor
            };
            if let Some(last) = epochs.last_mut() {
                last.end = start;
                last.ended_at = Some(v.updated_at);
                last.counted_to = v.counted;
            }
            epochs.push(Epoch {
                name: format!("{:?} in {}", v.schedule, v.zone),
                oracle,
                start,
                end: final_cursor,
                ended_at: None,
                counted_from: v.counted,
                counted_to: final_counted,
                last: true,
            });
        }
        epoch_of.insert(*number, epochs.len() - 1);
        match (prev.is_some_and(|p| p.paused), v.paused) {
            (false, true) => paused.push((v.updated_at, None)),
            (true, false) => {
                if let Some(w) = paused.last_mut() {
                    w.1 = Some(v.updated_at);
                }
            }
            _ => {}
        }
        prev = Some(v);
    }
    let n = epochs.len();
    for (i, e) in epochs.iter_mut().enumerate() {
        e.last = i + 1 == n;
    }
    // (p, r]: ticks there are skipped, and no `Fire` applies there (the pause changed the
    // version every earlier plan was computed from).
    let in_pause = |t: DateTime<Utc>| paused.iter().any(|(p, r)| t > *p && r.is_none_or(|r| t <= r));

    // Every observation holds the invariant apply keeps: within an epoch, fired + skipped
    // grows by exactly the ticks the cursor passed.
    let mut miscounted = Vec::new();
    for o in ops {
        let r = &o.result;
        let (Some(v), Some(cursor)) = (r["version"].as_u64(), time(&r["cursor"])) else { continue };
        let Some(e) = epoch_of.get(&v).map(|i| &epochs[*i]) else { continue };
        let ticks = e.oracle.ticks(e.start, cursor).len() as u64;
        if counted(r) != e.counted_from + ticks {
            miscounted.push(format!(
                "{} at {:.3} s saw version {v} with fired + skipped {} and the cursor at {cursor}, but the epoch of {} began at {} with {} and {ticks} ticks lie between",
                o.f,
                o.end as f64 / 1e9,
                counted(r),
                e.name,
                e.start,
                e.counted_from
            ));
        }
    }
    report(task, "miscounted its ticks", miscounted, out);

    // Fired runs: the chains' roots.
    let misfire = vs.values().next().map(|v| v.misfire.clone()).unwrap_or_default();
    let roots: Vec<&&RunRec> = runs.iter().filter(|r| r.retry_of.is_none()).collect();
    stats.fired += roots.len();
    if roots.len() as u64 != final_fired {
        out.push(Anomaly::new(
            "schedule",
            format!("task {task}: fire_count is {final_fired} but {} runs were fired", roots.len()),
            vec![final_op.describe()],
        ));
    }
    let mut by_tick: BTreeMap<DateTime<Utc>, Vec<u64>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for r in &roots {
        by_tick.entry(r.scheduled_at).or_default().push(r.id);
        if r.trigger != "schedule" {
            wrong.push(format!("run {} has trigger {:?}", r.id, r.trigger));
        }
        if r.created_at < r.scheduled_at {
            wrong.push(format!("run {} was created at {} before its tick {}", r.id, r.created_at, r.scheduled_at));
        }
        let s = r.scheduled_at;
        match epochs.iter().find(|e| s > e.start && s <= e.end) {
            None => wrong.push(format!("run {} fired tick {s}, which lies in no epoch of its schedules (before an edit took effect, or past the cursor)", r.id)),
            Some(e) if !e.oracle.is_tick(s) => wrong.push(format!("run {} fired {s}, which is not a tick of {}", r.id, e.name)),
            Some(_) if in_pause(s) => wrong.push(format!("run {} fired tick {s}, while the task was paused", r.id)),
            Some(e) if e.ended_at.is_some_and(|at| r.created_at > at) => wrong.push(format!(
                "run {} fired tick {s} at {}, after the change at {} that replaced its schedule",
                r.id,
                r.created_at,
                e.ended_at.expect("some")
            )),
            Some(_) if in_pause(r.created_at) => {
                wrong.push(format!("run {} was fired at {}, while the task was paused", r.id, r.created_at))
            }
            Some(_) => {}
        }
        // `skip` never fires a misfire: the tick was at most the threshold old when the
        // leader planned it, and it stamps the `Fire` at once.
        let late = r.created_at - r.scheduled_at;
        if misfire == "skip" && late > Duration::seconds(MISFIRE_THRESHOLD_S + 1) {
            wrong.push(format!(
                "run {} fired tick {} {} ms late under misfire_policy skip",
                r.id,
                r.scheduled_at,
                late.num_milliseconds()
            ));
        }
    }
    report(task, "fired what it must not", wrong, out);
    let twice: Vec<String> = by_tick
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(t, ids)| format!("tick {t} fired as runs {ids:?}"))
        .collect();
    report(task, "fired a tick twice", twice, out);

    // Accounting, epoch by epoch.
    for e in &epochs {
        let counted = e.counted_to.saturating_sub(e.counted_from);
        let ticks = e.oracle.ticks(e.start, e.end).len() as u64;
        let fired = roots.iter().filter(|r| r.scheduled_at > e.start && r.scheduled_at <= e.end).count() as u64;
        let fault = if e.last {
            (counted != ticks)
                .then(|| format!("fired + skipped is {counted}, but {ticks} ticks fell in ({}, {}]", e.start, e.end))
        } else if counted > ticks {
            Some(format!("fired + skipped is {counted}, more than the {ticks} ticks in ({}, {}]", e.start, e.end))
        } else {
            (counted < fired).then(|| format!("fired + skipped is {counted}, fewer than the {fired} runs it fired"))
        };
        if let Some(f) = fault {
            out.push(Anomaly::new("schedule", format!("task {task}, epoch of {}: {f}", e.name), Vec::new()));
        }
    }

    // Lag in calm time: up to the change that ended each epoch, and in the last one up to
    // the final pause (a leader that stopped firing leaves the cursor behind it).
    let final_pause = paused.last().filter(|(_, r)| r.is_none()).map(|(p, _)| *p);
    let mut late = Vec::new();
    for e in &epochs {
        let until = if e.last { final_pause.map_or(e.end, |p| p.max(e.end)) } else { e.end - LAG_BOUND };
        for t in e.oracle.ticks(e.start, until) {
            if in_pause(t) || paused.iter().any(|(p, _)| t <= *p && t > *p - LAG_BOUND) || !calm(t, ctx) {
                continue;
            }
            stats.calm_ticks += 1;
            match by_tick.get(&t).and_then(|ids| roots.iter().find(|r| r.id == ids[0])) {
                Some(r) => {
                    let lag = r.created_at - t;
                    stats.max_calm_lag_ms = stats.max_calm_lag_ms.max(lag.num_milliseconds());
                    if lag > LAG_BOUND {
                        late.push(format!("tick {t} fired {} ms late, in calm time", lag.num_milliseconds()));
                    }
                }
                None => late.push(format!("tick {t} was never fired although it fell due in calm time")),
            }
        }
    }
    report(task, "missed its lag bound", late, out);
}

/// Whether nothing that could delay firing was wrong around tick `t` (true time): no
/// fault from `LAG_BOUND` before it to `LAG_BOUND` after it, counting a fault from its
/// start until a write succeeded after its heal, and a clock set δ ahead until δ after
/// its heal (command time stays ahead until true time catches up, and ticks up to there
/// were planned, and misfires skipped, while it was). Worker faults do not count: firing
/// is the leader's alone.
fn calm(t: DateTime<Utc>, ctx: &Evidence) -> bool {
    let Some(ns) = t.timestamp_nanos_opt() else { return false };
    let at = ns as i128 - ctx.start_wall_ns;
    let lag = LAG_BOUND.num_nanoseconds().expect("small") as i128;
    ctx.faults.iter().filter(|f| !f.name.starts_with("worker-")).all(|f| {
        let recovered = f.end_ns as i128 + f.recovery_ms.map_or(i128::MAX / 4, |ms| ms as i128 * 1_000_000);
        let ahead = f.heal_ns as i128 + skew_ahead_ns(&f.detail, true);
        at + lag < f.start_ns as i128 || at - lag > recovered.max(ahead)
    })
}

/// How far ahead the clock clauses of a fault's `detail` set a node's clock, in ns: the
/// largest `bumped +N s`, or 30 s for a strobe. `any_node`: every clock clause counts;
/// otherwise only one on a node that led when it began.
fn skew_ahead_ns(detail: &str, any_node: bool) -> i128 {
    detail
        .split("; ")
        .filter(|clause| clause.starts_with("clock of ") && (any_node || clause.contains("(leader)")))
        .filter_map(|clause| {
            if clause.contains("strobed between") {
                return Some(30);
            }
            let rest = &clause[clause.find("bumped +")? + "bumped +".len()..];
            rest[..rest.find('s')?].parse::<i128>().ok()
        })
        .max()
        .unwrap_or(0)
        * 1_000_000_000
}

fn report(task: u64, what: &str, items: Vec<String>, out: &mut Vec<Anomaly>) {
    if items.is_empty() {
        return;
    }
    let more = items.len().saturating_sub(REPORT_AT_MOST);
    let shown = items.into_iter().take(REPORT_AT_MOST).collect::<Vec<_>>().join("; ");
    let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
    out.push(Anomaly::new("schedule", format!("task {task} {what}: {shown}{tail}"), Vec::new()));
}

/// How far ahead of true time a leader's clock may have run for a job that started at
/// history time `at_ns`, in ns (0 when no fault explains it): a clock fault on the node
/// that led, or any clock fault combined with faults that may have moved leadership to
/// the skewed node (`all`). A follower's clock never enters command time, so a clock fault
/// on a follower alone explains nothing.
fn clock_ahead_ns(at_ns: u64, faults: &[NemesisEvent]) -> i128 {
    faults
        .iter()
        .map(|f| (f, skew_ahead_ns(&f.detail, f.name == "all")))
        .filter(|(f, skew)| {
            *skew > 0
                && f.start_ns <= at_ns
                && (at_ns as i128) <= f.end_ns as i128 + skew + EARLY_AFTER_FAULT_NS as i128
        })
        .map(|(_, skew)| skew)
        .max()
        .unwrap_or(0)
}

fn check_truth(runs: &[RunRec], ctx: &Evidence, stats: &mut Stats, out: &mut Vec<Anomaly>) {
    let known: BTreeMap<u64, &RunRec> = runs.iter().map(|r| (r.id, r)).collect();
    let pairs: Vec<(u64, Option<u64>)> = runs.iter().map(|r| (r.id, r.retry_of)).collect();
    let roots = chain_roots(&pairs);
    let execs = executions(&ctx.schedule);
    stats.executions = execs.len();
    let mut phantom = Vec::new();
    let mut early = Vec::new();
    for ((run, attempt), e) in &execs {
        let Some(r) = known.get(run) else {
            phantom.push(format!("run {run} attempt {attempt} ran on {}", e.worker));
            continue;
        };
        let at = ctx.schedule.to_history(e.first);
        let true_ns = ctx.start_wall_ns + at as i128;
        let tick_ns = r.scheduled_at.timestamp_nanos_opt().unwrap_or(i64::MAX) as i128;
        let ahead = clock_ahead_ns(at, &ctx.faults);
        if tick_ns > true_ns + EARLY_SLACK_NS + ahead {
            early.push(format!(
                "run {run} (tick {}) started {:.1} s before its tick in true time, at {:.1} s",
                r.scheduled_at,
                (tick_ns - true_ns) as f64 / 1e9,
                at as f64 / 1e9
            ));
        }
    }
    if !phantom.is_empty() {
        out.push(Anomaly::new(
            "schedule",
            format!("jobs ran for runs the cluster does not have: {}", phantom.join("; ")),
            Vec::new(),
        ));
    }
    if !early.is_empty() {
        let n = early.len();
        early.truncate(REPORT_AT_MOST);
        out.push(Anomaly::new("schedule", format!("{n} jobs ran before their tick: {}", early.join("; ")), Vec::new()));
    }
    let mut found = Vec::new();
    check_executions(&execs, &roots, &ctx.schedule, &mut found);
    // Nothing stuck, no stale attempt's report: the runs checker's final checks, over
    // the schedule's runs.
    let finals: Vec<Op> = runs
        .iter()
        .map(|r| Op {
            process: 0,
            f: "sched-runs".into(),
            args: Value::Null,
            kind: Kind::Ok,
            result: r.raw.clone(),
            node: String::new(),
            error: None,
            start: 0,
            end: 0,
        })
        .collect();
    check_finals(&finals.iter().collect::<Vec<_>>(), &execs, &mut found);
    for mut a in found {
        a.checker = "schedule".into();
        out.push(a);
    }
}
