//! Execution through a 3-node loopback cluster with two worker agents (each talking to a
//! follower): trigger-to-start and trigger-to-finished latency of a `true` shell task,
//! triggered one at a time through a follower, and runs completed per second when many
//! are triggered at once.
//!
//! Latencies come from the run records (`created_at` is the trigger's command time,
//! `started_at` the worker's start report, `finished_at` its final report; one host, one
//! clock), so no polling interval blurs them. `cargo bench --bench workers` prints a
//! table. Bounded: `SEQUENTIAL` and `BURST` runs, each phase at most `PHASE_LIMIT`.
//!
//! `bench/bench.py` (`scripts/bench.sh`) measures the same with real processes (`raftcron
//! serve`, `raftcron worker`) beside the machine's fork/exec rate (`benches/spawn.rs`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use raftcron::worker::{self, AgentConfig};
use serde_json::{json, Value};

#[allow(dead_code, reason = "the bench uses part of the test fixture")]
#[path = "../tests/cluster/fixture.rs"]
mod fixture;
mod support;

use support::percentile;

const SEQUENTIAL: usize = 200;
const BURST: usize = 2000;
const CLIENTS: usize = 16;
const SLOTS: u32 = 8;
const PHASE_LIMIT: Duration = Duration::from_secs(120);

fn at(r: &Value, k: &str) -> Option<DateTime<Utc>> {
    r[k].as_str()?.parse().ok()
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

async fn trigger(c: &fixture::TestCluster, node: u64, task: u64) -> Option<u64> {
    let a = c.call(node, reqwest::Method::POST, &format!("/api/tasks/{task}/trigger"), None, &[]).await;
    a.data()["id"].as_u64()
}

/// Waits until every run is final; returns them (those that finished within the limit).
async fn finished(c: &fixture::TestCluster, node: u64, ids: &[u64], deadline: Instant) -> Vec<Value> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let a = c.call(node, reqwest::Method::GET, &format!("/api/runs/{id}?consistency=local"), None, &[]).await;
            if a.data()["finished_at"].is_string() {
                out.push(a.data().clone());
                break;
            }
            if Instant::now() > deadline {
                let workers = c.call(node, reqwest::Method::GET, "/api/workers", None, &[]).await;
                eprintln!("run {id} did not finish in time: {}\nworkers: {}", a.body, workers.body);
                return out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out
}

fn row(name: &str, runs: &[Value]) {
    let mut start: Vec<f64> = Vec::new();
    let mut finish: Vec<f64> = Vec::new();
    for r in runs {
        if let (Some(c), Some(s), Some(f)) = (at(r, "created_at"), at(r, "started_at"), at(r, "finished_at")) {
            start.push(ms(s - c));
            finish.push(ms(f - c));
        }
    }
    start.sort_by(|a, b| a.total_cmp(b));
    finish.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<28} {:>6} {:>10.1} {:>10.1} {:>12.1} {:>12.1}",
        runs.len(),
        percentile(&start, 0.5),
        percentile(&start, 0.99),
        percentile(&finish, 0.5),
        percentile(&finish, 0.99)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // History large enough that no run is pruned before it is measured.
        let opts = fixture::Opts { run_history_per_task: 10_000, ..Default::default() };
        let c = fixture::TestCluster::start_with(3, opts).await;
        let leader = c.wait_leader(Duration::from_secs(20)).await;
        let followers: Vec<u64> = c.running_ids().into_iter().filter(|id| *id != leader).collect();
        let mut agents = Vec::new();
        for (i, node) in followers.iter().enumerate() {
            let config = AgentConfig {
                max_tasks: SLOTS,
                drain: Duration::from_secs(5),
                ..fixture::agent_config(c.url(*node, ""), &format!("bench-{i}"), fixture::KEY)
            };
            agents.push(worker::start(config).await.unwrap());
        }
        let f = followers[0];
        let task = c.post(f, "/api/tasks", json!({"name": "noop", "executor": "shell", "command": "true"})).await;
        let task = task.data()["id"].as_u64().expect("task created");
        // Let both workers register.
        tokio::time::sleep(Duration::from_secs(1)).await;

        println!(
            "{:<28} {:>6} {:>10} {:>10} {:>12} {:>12}",
            "phase", "runs", "start p50", "start p99", "finish p50", "finish p99"
        );
        let deadline = Instant::now() + PHASE_LIMIT;
        let mut seq = Vec::new();
        for _ in 0..SEQUENTIAL {
            if Instant::now() > deadline {
                break;
            }
            let Some(id) = trigger(&c, f, task).await else { continue };
            seq.extend(finished(&c, f, &[id], deadline).await);
        }
        row("one at a time (ms)", &seq);

        let deadline = Instant::now() + PHASE_LIMIT;
        let t0 = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..CLIENTS {
            let (c_http, url, next) = (c.http.clone(), c.url(f, &format!("/api/tasks/{task}/trigger")), next.clone());
            handles.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < BURST && Instant::now() < deadline {
                    if let Ok(r) = c_http.post(&url).bearer_auth(fixture::KEY).send().await {
                        if let Ok(v) = r.json::<Value>().await {
                            ids.extend(v["data"]["id"].as_u64());
                        }
                    }
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for h in handles {
            ids.extend(h.await.unwrap());
        }
        let burst = finished(&c, f, &ids, deadline).await;
        let took = t0.elapsed().as_secs_f64();
        row(&format!("burst of {} (ms)", ids.len()), &burst);
        println!(
            "burst: {} runs finished in {took:.1} s = {:.0} runs/s with 2 workers x {SLOTS} slots",
            burst.len(),
            burst.len() as f64 / took
        );
        let failed = burst.iter().chain(&seq).filter(|r| r["status"] != "succeeded").count();
        println!("runs not succeeded: {failed}");
        for a in agents {
            a.shutdown().await;
        }
        c.shutdown().await;
    });
}
