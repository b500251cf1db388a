//! The `runs` workload: manual triggers with idempotency keys and cancels against a few
//! tasks whose job is `jepsen job` (see [`crate::truth`]), run by worker agents that the
//! nemeses kill, pause, freeze and cut off. Its checker is `crate::checker::runs`.
//!
//! A client triggers one of the tasks with a fresh `Idempotency-Key`; when the outcome is
//! unknown it sends the same key again (as a client behind a load balancer would), so the
//! deduplication is exercised under faults. Now and then it cancels one of its recent
//! runs. After healing, every run of the tasks is read until all are final (or a deadline
//! passes) and recorded as `runs-final`.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use crate::checker::runs::FINAL;
use crate::history::{Kind, Recorder};
use crate::workload::{complete, map_ok, Client, Outcome, Route, Stop, FINAL_PROCESS};

/// How long each task's job runs, in ms: short runs, and runs that outlive a worker's
/// lease (3 s) and its timeout (6 s), so a worker fault leaves a job running when the
/// cluster re-runs it elsewhere: only fencing keeps the two apart.
const DURATIONS_MS: [u64; 4] = [300, 1500, 4000, 10_000];
/// Triggers per second, all runs clients together: one worker's 4 slots alone run 1 job
/// a second (4 s on average), so the offered load stays below what is left while a
/// worker fault holds the other one, and a backlog built under faults drains after them
/// (a 30-minute run at 3.3 a second left 2,000 runs unfinished after the settle time).
const TRIGGERS_PER_S: f64 = 0.8;
/// How long after healing every run must be final.
pub const SETTLE: Duration = Duration::from_secs(120);

/// The task names and their job commands, writing to `truth` with the `jepsen` at `exe`.
pub fn task_bodies(exe: &Path, truth: &Path) -> Vec<Value> {
    DURATIONS_MS
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            json!({
                "name": format!("runs-{i}"),
                "executor": "shell",
                "command": format!("exec {} job --out {} --ms {ms}", exe.display(), truth.display()),
                "timeout_seconds": 60,
                "retry_count": 3,
                "retry_backoff_seconds": 1,
            })
        })
        .collect()
}

/// Creates the tasks (once; a 409 means an earlier attempt did) and returns their ids.
pub async fn setup(client: &Client, exe: &Path, truth: &Path) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for body in task_bodies(exe, truth) {
        let name = body["name"].as_str().unwrap_or_default().to_string();
        let mut tries = 0;
        loop {
            tries += 1;
            match client.request(Method::POST, &client.nodes[0], "/api/tasks", Some(body.clone()), None).await {
                Outcome::Ok(v) => {
                    ids.push(v["id"].as_u64().ok_or_else(|| anyhow::anyhow!("{name} created without an id"))?);
                    break;
                }
                _ if tries < 50 => tokio::time::sleep(Duration::from_millis(200)).await,
                Outcome::Fail(e) | Outcome::Info(e) => anyhow::bail!("cannot create task {name}: {e}"),
            }
        }
    }
    Ok(ids)
}

/// One runs client until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    first_process: u64,
    stride: u64,
    clients: usize,
    route: Route,
    client: std::sync::Arc<Client>,
    tasks: Vec<u64>,
    rec: Recorder,
    stop: Stop,
) {
    let mut process = first_process;
    let mut n = 0u64;
    // A trigger whose outcome is unknown: sent again with its key.
    let mut unsettled: Option<(u64, String)> = None;
    let mut recent: Vec<u64> = Vec::new();
    let pace = Duration::from_secs_f64(clients.max(1) as f64 / TRIGGERS_PER_S);
    while stop.running() {
        n += 1;
        let node = route.pick(&client);
        let cancel = unsettled.is_none() && !recent.is_empty() && rand::rng().random_bool(0.1);
        let retire = if cancel {
            let run = *recent.choose(&mut rand::rng()).expect("not empty");
            let args = json!({"run": run});
            rec.record(process, Kind::Invoke, "cancel", args.clone(), &node, None);
            let out = client.request(Method::POST, &node, &format!("/api/runs/{run}/cancel"), None, None).await;
            complete(&rec, process, "cancel", args.clone(), &node, map_ok(out, |_| args.clone()))
        } else {
            let (task, key) = unsettled
                .take()
                .unwrap_or_else(|| (*tasks.choose(&mut rand::rng()).expect("tasks"), format!("k{process}-{n}")));
            let args = json!({"task": task, "key": key});
            rec.record(process, Kind::Invoke, "trigger", args.clone(), &node, None);
            let out =
                client.request_keyed(Method::POST, &node, &format!("/api/tasks/{task}/trigger"), None, &key).await;
            if let Outcome::Ok(v) = &out {
                if let Some(run) = v["id"].as_u64() {
                    recent.push(run);
                    if recent.len() > 5 {
                        recent.remove(0);
                    }
                }
            }
            let indeterminate = matches!(out, Outcome::Info(_));
            let retire = complete(
                &rec,
                process,
                "trigger",
                args.clone(),
                &node,
                map_ok(out, |v| json!({"task": task, "key": key, "run": v["id"]})),
            );
            if indeterminate {
                unsettled = Some((task, key));
            }
            retire
        };
        if retire {
            process += stride;
        }
        tokio::time::sleep(if rec.last_ok(process) { pace } else { Duration::from_millis(200) }).await;
    }
}

/// The attempt named by a run's output (`truth: run R attempt A`), if it is this run's.
pub fn marker(run: u64, output: &str) -> Option<u64> {
    let prefix = format!("truth: run {run} attempt ");
    let line = output.lines().rev().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].trim().parse().ok()
}

/// Every run of `tasks`, through `node`, newest first.
pub async fn all_runs(client: &Client, node: &str, tasks: &[u64]) -> Result<Vec<Value>, String> {
    let mut runs = Vec::new();
    for task in tasks {
        for page in 1.. {
            let path = format!("/api/tasks/{task}/runs?size=100&page={page}");
            match client.request(Method::GET, node, &path, None, None).await {
                Outcome::Ok(v) => {
                    let items = v["items"].as_array().cloned().ok_or_else(|| format!("page {page} without items"))?;
                    if items.is_empty() {
                        break;
                    }
                    runs.extend(items);
                }
                Outcome::Fail(e) | Outcome::Info(e) => return Err(format!("listing task {task}'s runs: {e}")),
            }
        }
    }
    // Pages are newest first: a run created between two page reads (a late indeterminate
    // trigger) shifts the rest by one, and the run at the boundary comes twice.
    let mut seen = std::collections::BTreeSet::new();
    runs.retain(|r| seen.insert(r["id"].as_u64()));
    Ok(runs)
}

/// After healing: waits up to [`SETTLE`] for every run of `tasks` to be final, then
/// records each as a `runs-final` operation. A listing that never succeeds is recorded
/// as a failed `runs-final` (the checker then cannot vouch for anything: an anomaly).
pub async fn final_reads(client: &Client, tasks: &[u64], rec: &Recorder) {
    let deadline = Instant::now() + SETTLE;
    let mut last: Result<Vec<Value>, String> = Err("never listed".into());
    let mut turn = 0;
    while Instant::now() < deadline {
        let node = &client.nodes[turn % client.nodes.len()];
        turn += 1;
        last = all_runs(client, node, tasks).await;
        if let Ok(runs) = &last {
            if runs.iter().all(|r| FINAL.contains(&r["status"].as_str().unwrap_or_default())) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let node = client.nodes[0].clone();
    match last {
        Ok(runs) => {
            for r in runs {
                let id = r["id"].as_u64().unwrap_or_default();
                let value = json!({
                    "run": id, "task": r["task_id"], "status": r["status"], "attempt": r["attempt"],
                    "retry_of": r["retry_of"], "worker": r["worker_id"],
                    "marker": marker(id, r["output"].as_str().unwrap_or_default()),
                });
                rec.record(FINAL_PROCESS, Kind::Invoke, "runs-final", json!({"run": id}), &node, None);
                rec.record(FINAL_PROCESS, Kind::Ok, "runs-final", value, &node, None);
            }
        }
        Err(e) => {
            rec.record(FINAL_PROCESS, Kind::Invoke, "runs-final", Value::Null, &node, None);
            rec.record(FINAL_PROCESS, Kind::Fail, "runs-final", Value::Null, &node, Some(e));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_marker_names_the_attempt_of_this_run_only() {
        assert_eq!(super::marker(7, "hello\ntruth: run 7 attempt 2\n"), Some(2));
        assert_eq!(super::marker(7, "truth: run 8 attempt 2"), None);
        assert_eq!(super::marker(7, ""), None);
    }
}
