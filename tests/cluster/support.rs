//! Helpers the worker and placement suites share: agents in this process, task and run
//! calls that assert success, and waiting on a run.

use std::time::{Duration, Instant};

use raftcron::worker::{self, RunningAgent};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::fixture::{agent_config, TestCluster, KEY};

/// An agent with `max_tasks` slots and `tags`, talking to `node`, supervising its runs
/// with the real `run-shim`.
pub async fn agent(c: &TestCluster, node: u64, id: &str, max_tasks: u32, tags: &[&str]) -> RunningAgent {
    let mut config = agent_config(c.url(node, ""), id, KEY);
    config.max_tasks = max_tasks;
    config.tags = tags.iter().map(|t| t.to_string()).collect();
    config.drain = Duration::from_secs(5);
    worker::start(config).await.expect("agent starts")
}

pub async fn create(c: &TestCluster, node: u64, body: Value) -> u64 {
    let a = c.post(node, "/api/tasks", body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    a.data()["id"].as_u64().unwrap()
}

pub async fn trigger(c: &TestCluster, node: u64, task: u64) -> u64 {
    let a = c.call(node, Method::POST, &format!("/api/tasks/{task}/trigger"), None, &[]).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    a.data()["id"].as_u64().unwrap()
}

/// Waits until run `id` satisfies `done`, returning it.
pub async fn wait_run(c: &TestCluster, node: u64, id: u64, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let a = c.get(node, &format!("/api/runs/{id}")).await;
        if a.status == StatusCode::OK && done(a.data()) {
            return a.data().clone();
        }
        assert!(Instant::now() < deadline, "run {id} not there within {within:?}: {}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_final(r: &Value) -> bool {
    matches!(r["status"].as_str(), Some("succeeded" | "failed" | "timed_out" | "cancelled" | "lost"))
}
