//! The `schedule` workload: a few tasks on 1–5 s schedules (cron with a seconds field and
//! `@every`, in several time zones, three misfire policies), whose schedules, time zones
//! and status the clients keep changing while the nemeses strike. Each fired tick runs a
//! short `jepsen job` (see [`crate::truth`]) on the worker agents, so what really ran is
//! known apart from what the API says. Its checker is `crate::checker::schedule`.
//!
//! Operations:
//! - `sched-change` (args `{task, key, kind, body}`; `kind` is `create`, `edit`, `pause`
//!   or `resume`): a write with an `Idempotency-Key`, sent again with the same key after
//!   an unknown outcome until it is known, so the checker holds the result of every
//!   change (its version, cursor, counters and command time: see [`change_value`]);
//! - `sched-read` (a linearizable GET of one task);
//! - after healing, every task is paused (so its cursor stops), its runs are waited for
//!   until final, and then read: one `sched-task` per task and one `sched-run` per run.
//!
//! Each task is changed by one client only, so its changes are never concurrent with
//! each other (the checker does not need that, but the history reads more simply).

use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use crate::checker::runs::FINAL;
use crate::history::{Kind, Recorder};
use crate::workload::{complete, map_ok, Client, Outcome, Route, Stop, FINAL_PROCESS};

/// One task of the workload: two schedules and two time zones its edits switch between.
struct Spec {
    name: &'static str,
    schedules: [&'static str; 2],
    zones: [&'static str; 2],
    misfire: &'static str,
}

/// Australia/Eucla (+8:45) and Asia/Kathmandu (+5:45) are an odd number of minutes off
/// UTC, so `*/2` in the minute field fires in other UTC minutes there than in UTC or
/// Asia/Kolkata (+5:30): a zone evaluated wrongly shows. America/St_Johns has DST.
const SPECS: [Spec; 4] = [
    Spec {
        name: "sched-a",
        schedules: ["*/2 * * * * *", "*/3 * * * * *"],
        zones: ["UTC", "Asia/Kolkata"],
        misfire: "fire_once",
    },
    Spec {
        name: "sched-b",
        schedules: ["*/2 */2 * * * *", "1-59/4 * * * * *"],
        zones: ["Australia/Eucla", "Asia/Kolkata"],
        misfire: "catch_up",
    },
    Spec { name: "sched-c", schedules: ["@every 3s", "@every 5s"], zones: ["UTC", "Australia/Eucla"], misfire: "skip" },
    Spec {
        name: "sched-d",
        schedules: ["*/5 * * * * *", "7,19,43 * * * * *"],
        zones: ["Asia/Kathmandu", "America/St_Johns"],
        misfire: "fire_once",
    },
];

/// How long each fired job runs.
const JOB_MS: u64 = 200;
/// Between one client's operations.
const PACE: Duration = Duration::from_millis(1500);
/// How long a change with an unknown outcome is retried after the clients were told to
/// stop (the cluster is healed by then).
const RESOLVE_AFTER_STOP: Duration = Duration::from_secs(60);
/// How long the tasks run in calm time after healing, before the final pause: CI's short
/// run holds faults with only 2 s of calm between them, too little for any tick to count
/// as due in calm time.
const CALM_TAIL: Duration = Duration::from_secs(12);
/// Process ids of the setup's `create` operations.
pub const SETUP_PROCESS: u64 = 1 << 48;

/// A task of the workload as created.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: u64,
    spec: usize,
}

/// What the checker keeps of a task as a write or read returned it.
pub fn change_value(task: &Value) -> Value {
    json!({
        "task": task["id"], "version": task["version"], "schedule": task["schedule"],
        "timezone": task["timezone"], "status": task["status"], "cursor": task["cursor"],
        "created_at": task["created_at"], "updated_at": task["updated_at"],
        "fire_count": task["fire_count"], "skipped_ticks": task["skipped_ticks"],
        "misfire_policy": task["misfire_policy"],
    })
}

/// Creates the tasks (each create carries an `Idempotency-Key` and is sent again until its
/// outcome is known, so a lost answer does not become a 409) and records each creation as
/// a `sched-change` of kind `create`.
pub async fn setup(client: &Client, exe: &Path, truth: &Path, rec: &Recorder) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (i, s) in SPECS.iter().enumerate() {
        let body = json!({
            "name": s.name, "executor": "shell",
            "command": format!("exec {} job --out {} --ms {JOB_MS}", exe.display(), truth.display()),
            "schedule": s.schedules[0], "timezone": s.zones[0], "misfire_policy": s.misfire,
            "priority": "critical", "timeout_seconds": 30,
        });
        let process = SETUP_PROCESS + i as u64;
        let args = json!({"task": null, "key": format!("create-{i}"), "kind": "create", "body": body});
        let node = client.nodes[0].clone();
        rec.record(process, Kind::Invoke, "sched-change", args.clone(), &node, None);
        let out = write_until_known(client, Method::POST, "/api/tasks", &body, &format!("create-{i}"), None).await;
        match out {
            Outcome::Ok(v) => {
                let id = v["id"].as_u64().ok_or_else(|| anyhow::anyhow!("{} created without an id", s.name))?;
                rec.record(process, Kind::Ok, "sched-change", change_value(&v), &node, None);
                tasks.push(Task { id, spec: i });
            }
            Outcome::Fail(e) | Outcome::Info(e) => anyhow::bail!("cannot create task {}: {e}", s.name),
        }
    }
    Ok(tasks)
}

/// Sends a keyed write until its outcome is known (ok or refused) or `deadline` passes,
/// each attempt through the next node (one node may be the one that is down).
async fn write_until_known(
    client: &Client,
    method: Method,
    path: &str,
    body: &Value,
    key: &str,
    deadline: Option<Instant>,
) -> Outcome {
    let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
    for attempt in 0.. {
        let node = &client.nodes[attempt % client.nodes.len()];
        let out = client.request_keyed(method.clone(), node, path, Some(body.clone()), key).await;
        match out {
            Outcome::Info(_) | Outcome::Fail(_) if Instant::now() < deadline && retryable(&out) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// A failure worth sending the same key again for: no connection, no leader (503), or
/// an unknown outcome. A 4xx is a definite refusal.
fn retryable(out: &Outcome) -> bool {
    match out {
        Outcome::Info(_) => true,
        Outcome::Fail(e) => e.starts_with("connect") || e == "503",
        Outcome::Ok(_) => false,
    }
}

/// One schedule client until `stop`: changes and reads the tasks it owns (every
/// `stride`-th, from `own`). A change whose outcome is unknown is sent again with its key
/// (as a new operation of a new process) until it is known.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    first_process: u64,
    stride: u64,
    own: usize,
    owners: usize,
    route: Route,
    client: std::sync::Arc<Client>,
    tasks: Vec<Task>,
    rec: Recorder,
    stop: Stop,
) {
    let mine: Vec<Task> = tasks.into_iter().skip(own).step_by(owners.max(1)).collect();
    if mine.is_empty() {
        return;
    }
    let mut process = first_process;
    let mut n = 0u64;
    // Per owned task: the schedule and zone index in force, and whether it is paused.
    let mut state: Vec<(usize, usize, bool)> = vec![(0, 0, false); mine.len()];
    // A change whose outcome is unknown: (task index, args), sent again with its key.
    let mut unsettled: Option<(usize, Value)> = None;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if !stop.running() {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if unsettled.is_none() || at.elapsed() > RESOLVE_AFTER_STOP {
                break;
            }
        }
        n += 1;
        // A change sent again goes to the next node in turn: its own may be the one down.
        let node = if unsettled.is_some() {
            client.nodes[n as usize % client.nodes.len()].clone()
        } else {
            route.pick(&client)
        };
        let (i, args) = match unsettled.take() {
            Some(u) => u,
            None => {
                let i = rand::rng().random_range(0..mine.len());
                let (sched, zone, paused) = state[i];
                let spec = &SPECS[mine[i].spec];
                let roll: f64 = rand::rng().random();
                // Pauses are resumed sooner than they come: a task is active most of the time.
                let (kind, body) = if roll < 0.35 {
                    ("read", Value::Null)
                } else if (paused && roll < 0.65) || roll < 0.45 {
                    (if paused { "resume" } else { "pause" }, Value::Null)
                } else if roll < 0.85 {
                    ("edit", json!({"schedule": spec.schedules[1 - sched]}))
                } else {
                    ("edit", json!({"timezone": spec.zones[1 - zone]}))
                };
                let key = format!("s{process}-{n}");
                (i, json!({"task": mine[i].id, "key": key, "kind": kind, "body": body}))
            }
        };
        let task = mine[i].id;
        let kind = args["kind"].as_str().unwrap_or_default().to_string();
        if kind == "read" {
            rec.record(process, Kind::Invoke, "sched-read", json!({"task": task}), &node, None);
            let out = client.request(Method::GET, &node, &format!("/api/tasks/{task}"), None, None).await;
            complete(&rec, process, "sched-read", json!({"task": task}), &node, map_ok(out, change_value));
        } else {
            let (method, path) = match kind.as_str() {
                "edit" => (Method::PUT, format!("/api/tasks/{task}")),
                other => (Method::POST, format!("/api/tasks/{task}/{other}")),
            };
            let key = args["key"].as_str().unwrap_or_default().to_string();
            let body = (kind == "edit").then(|| args["body"].clone());
            rec.record(process, Kind::Invoke, "sched-change", args.clone(), &node, None);
            let out = client.request_keyed(method, &node, &path, body, &key).await;
            if let Outcome::Ok(v) = &out {
                let spec = &SPECS[mine[i].spec];
                let sched = spec.schedules.iter().position(|s| v["schedule"] == *s).unwrap_or(state[i].0);
                let zone = spec.zones.iter().position(|z| v["timezone"] == *z).unwrap_or(state[i].1);
                state[i] = (sched, zone, v["status"] == "paused");
            }
            let again = retryable(&out);
            if complete(&rec, process, "sched-change", args.clone(), &node, map_ok(out, change_value)) {
                process += stride;
            }
            if again {
                unsettled = Some((i, args));
            }
        }
        let pause = if rec.last_ok(process) { PACE } else { Duration::from_millis(300) };
        tokio::time::sleep(pause).await;
    }
}

/// After healing: leaves the tasks [`CALM_TAIL`] of calm (ticks due then are held to the
/// lag bound), pauses every task (its cursor stops; a pause is sent again with its key
/// until known), waits up to `settle` for every run of the tasks to be final, then
/// records each task (`sched-task`) and each of its runs (`sched-run`).
pub async fn final_reads(client: &Client, tasks: &[Task], rec: &Recorder, settle: Duration) {
    tokio::time::sleep(CALM_TAIL).await;
    let node = client.nodes[0].clone();
    for (i, t) in tasks.iter().enumerate() {
        let process = FINAL_PROCESS + 100 + i as u64;
        let key = format!("final-pause-{}", t.id);
        let args = json!({"task": t.id, "key": key, "kind": "pause", "body": null});
        rec.record(process, Kind::Invoke, "sched-change", args.clone(), &node, None);
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        let path = format!("/api/tasks/{}/pause", t.id);
        let out = write_until_known(client, Method::POST, &path, &Value::Null, &key, deadline).await;
        complete(rec, process, "sched-change", args, &node, map_ok(out, change_value));
    }
    let ids: Vec<u64> = tasks.iter().map(|t| t.id).collect();
    let deadline = Instant::now() + settle;
    let mut runs: Result<Vec<Value>, String> = Err("never listed".into());
    for turn in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        runs = crate::runs::all_runs(client, &client.nodes[turn % client.nodes.len()], &ids).await;
        if runs.as_ref().is_ok_and(|rs| rs.iter().all(|r| FINAL.contains(&r["status"].as_str().unwrap_or_default()))) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let process = FINAL_PROCESS + 99;
    for t in tasks {
        rec.record(process, Kind::Invoke, "sched-task", json!({"task": t.id}), &node, None);
        let mut out = Outcome::Fail("not read".into());
        for n in &client.nodes {
            out = client.request(Method::GET, n, &format!("/api/tasks/{}", t.id), None, None).await;
            if matches!(out, Outcome::Ok(_)) {
                break;
            }
        }
        complete(rec, process, "sched-task", json!({"task": t.id}), &node, map_ok(out, change_value));
    }
    rec.record(process, Kind::Invoke, "sched-runs", Value::Null, &node, None);
    match runs {
        Ok(runs) => {
            let value: Vec<Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "run": r["id"], "task": r["task_id"], "trigger": r["trigger"], "status": r["status"],
                        "attempt": r["attempt"], "retry_of": r["retry_of"], "scheduled_at": r["scheduled_at"],
                        "created_at": r["created_at"],
                        "marker": crate::runs::marker(r["id"].as_u64().unwrap_or_default(), r["output"].as_str().unwrap_or_default()),
                    })
                })
                .collect();
            rec.record(process, Kind::Ok, "sched-runs", Value::Array(value), &node, None);
        }
        Err(e) => rec.record(process, Kind::Fail, "sched-runs", Value::Null, &node, Some(e)),
    }
}
