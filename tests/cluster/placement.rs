//! Placement against a real cluster: classes of runs no worker can serve never starve the
//! others, pending runs say why they wait and fail at their pending timeout, a task's new
//! tags move its pending runs, and two agents under one worker id never both run a run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftcron::worker;
use reqwest::StatusCode;
use serde_json::json;

use crate::fixture::{agent_config, Opts, TestCluster, KEY};
use crate::support::{agent, create, is_final, trigger, wait_run};

/// Regression test for placement starvation: the leader read only the first 1,000 queued
/// runs, so 1,000 runs no worker could take (a tag nobody carries) starved every run behind
/// them, idle workers or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_unplaceable_runs_do_not_starve_a_placeable_one() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let gpu = create(&c, n, json!({"name": "gpu", "executor": "shell", "command": "true", "tags": ["gpu"]})).await;
    let plain = create(&c, n, json!({"name": "plain", "executor": "shell", "command": "echo ran"})).await;
    for _ in 0..1000 {
        trigger(&c, n, gpu).await;
    }
    let w = agent(&c, n, "cpu", 2, &[]).await;
    let started = Instant::now();
    let run = trigger(&c, n, plain).await;
    let done = wait_run(&c, n, run, Duration::from_secs(10), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(started.elapsed() < Duration::from_secs(2), "the placeable run waited {:?}", started.elapsed());
    // The gpu runs stay pending, each saying why.
    let page = c.get(n, &format!("/api/tasks/{gpu}/runs?size=5&page=200")).await;
    let last = &page.data()["items"].as_array().unwrap()[4];
    assert_eq!(last["status"], "pending", "{last}");
    assert!(last["pending_reason"].as_str().unwrap().contains("gpu"), "{last}");
    w.shutdown().await;
    c.shutdown().await;
}

/// `pending_timeout_s`: a run no worker takes in time fails with the reason; a task whose
/// tags change takes its pending runs with it to the new requirement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_runs_time_out_and_follow_their_tasks_tags() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let w = agent(&c, n, "linux", 2, &["linux"]).await;
    let body = json!({"name": "gone", "executor": "shell", "command": "true", "tags": ["tpu"], "pending_timeout_s": 1});
    let gone = create(&c, n, body).await;
    let run = trigger(&c, n, gone).await;
    let waiting = c.get(n, &format!("/api/runs/{run}")).await;
    assert!(waiting.data()["pending_reason"].as_str().unwrap().contains("tpu"), "{}", waiting.body);
    let failed = wait_run(&c, n, run, Duration::from_secs(5), is_final).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("pending timeout"), "{failed}");
    assert_eq!(failed["pending_reason"], json!(null));

    let moved = create(&c, n, json!({"name": "moved", "executor": "shell", "command": "true", "tags": ["mac"]})).await;
    let run = trigger(&c, n, moved).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get(n, &format!("/api/runs/{run}")).await.data()["status"], "pending");
    let a =
        c.call(n, reqwest::Method::PUT, &format!("/api/tasks/{moved}"), Some(json!({"tags": ["linux"]})), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let done = wait_run(&c, n, run, Duration::from_secs(5), is_final).await;
    assert_eq!((done["status"].as_str(), done["worker_id"].as_str()), (Some("succeeded"), Some("linux")), "{done}");
    w.shutdown().await;
    c.shutdown().await;
}

/// Regression test: two agents running under one worker id both executed a run (the second
/// `Started` was accepted as a repeat). Each registration now gets an epoch; polls, reports
/// and heartbeats of a replaced registration are refused, so every attempt starts at most
/// once and no two attempts run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_under_one_worker_id_never_both_run_a_run() {
    // Short, so the replaced agent learns it was replaced (and would take the id back) soon.
    let c = TestCluster::start_with(1, Opts { worker_timeout_s: 4, ..Default::default() }).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let command = format!(
        "echo \"start $RAFTCRON_RUN_ID $(date +%s%N)\" >> {log}; sleep 1; echo \"end $RAFTCRON_RUN_ID $(date +%s%N)\" >> {log}",
        log = log.display()
    );
    let body = json!({"name": "twice", "executor": "shell", "command": command, "retry_count": 0});
    let task = create(&c, n, body).await;
    let twin = |state: &str| {
        let mut config = agent_config(c.url(n, ""), "twin", KEY);
        config.max_tasks = 4;
        config.state_dir = Some(dir.path().join(state));
        worker::start(config)
    };
    let a = twin("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = twin("b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs: Vec<u64> = futures::future::join_all((0..6).map(|_| trigger(&c, n, task))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for run in &runs {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_run(&c, n, *run, left, is_final).await;
    }
    // The replaced agent waits for the other registration to go instead of taking the id
    // back: the epoch stays where the second registration put it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.get(n, "/api/workers/twin").await.data()["epoch"], 2, "the two agents took turns with the id");
    a.kill();
    b.kill();
    // Ground truth from the jobs: every run id started at most once, and each start has
    // its end before any other start of the same run.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut starts: BTreeMap<String, u32> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("start ")) {
        *starts.entry(line.split_whitespace().nth(1).unwrap().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "runs started more than once: {twice:?}\n{text}");
    assert!(!starts.is_empty(), "no run started at all");
    c.shutdown().await;
}
