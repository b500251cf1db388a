//! Worker agents as real processes: stopped, replaced, fenced.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixture::{pid_alive, signal, spawn_worker, Cluster, KEY};

/// Guarantees 5 and 6 with a genuinely late worker: SIGSTOP it mid-run past
/// `worker_timeout_s`; its run is lost and re-run elsewhere. SIGCONT it: it finds its lease
/// expired and kills its own process group, and its report is refused (409) with the run's
/// record unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_worker_is_replaced_and_fences_itself_when_it_wakes() {
    let c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut first = spawn_worker(&c, 0, "first");
    let url = |i: usize, p: &str| format!("http://{}{p}", c.nodes[i].http);
    let body =
        json!({"name": "long", "executor": "shell", "command": format!("echo $$ >> {}; sleep 30", pids.display())});
    let task = c.post(1, "/api/tasks", Some(body)).await;
    let task = task["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {task}"));
    let run = c.post(2, &format!("/api/tasks/{task}/trigger"), None).await;
    let run = run["data"]["id"].as_u64().unwrap();
    let wait = |pred: fn(&Value) -> bool, id: u64| {
        let c = &c;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = c.get(1, &format!("/api/runs/{id}")).await;
                if pred(&r["data"]) {
                    return r["data"].clone();
                }
                assert!(Instant::now() < deadline, "run {id}: {r}; logs: {}", c.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait(|r| r["status"] == "running", run).await;
    let first_pid: u32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();

    signal(&first, "-STOP");
    let mut second = spawn_worker(&c, 1, "second");
    let lost = wait(|r| r["status"] == "lost", run).await;
    let runs = c.get(1, &format!("/api/tasks/{task}/runs")).await;
    let retry = runs["data"]["items"].as_array().unwrap().iter().find(|r| r["retry_of"].as_u64() == Some(run)).cloned();
    let retry = retry.expect("the lost run is re-queued").get("id").and_then(Value::as_u64).unwrap();
    let on_second = wait(|r| r["status"] == "running", retry).await;
    assert_eq!(on_second["worker_id"], "second");

    signal(&first, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(first_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pid_alive(first_pid), "the woken worker did not kill its run's processes");
    // Whatever it sends for the old attempt is refused and changes nothing.
    let late = json!({"worker_id": "first", "attempt": 1, "status": "succeeded", "exit_code": 0});
    let r = c.http.post(url(0, &format!("/api/runs/{run}/report"))).bearer_auth(KEY).json(&late).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.get(1, &format!("/api/runs/{run}")).await["data"], lost, "the lost attempt's record is unchanged");
    assert_eq!(c.get(1, &format!("/api/runs/{retry}")).await["data"]["status"], "running", "the new attempt runs on");
    for w in [&mut first, &mut second] {
        let _ = w.kill();
        let _ = w.wait();
    }
}
