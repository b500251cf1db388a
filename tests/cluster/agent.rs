//! The worker agent's own safety rules, against a scripted stand-in for the cluster (an
//! axum server on port 0 answering the agent's protocol), so each rule is exercised at
//! exactly the timing that matters.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Json;
use raftcron::worker;
use serde_json::{json, Value};

use crate::fixture::agent_config;

/// What the fake cluster does and saw.
struct Script {
    /// How long registration takes to answer, and the lease it grants.
    register_delay: Duration,
    lease_ms: u64,
    /// When the agent received the registration answer (set by the server just before it
    /// answers).
    registered_at: Mutex<Option<Instant>>,
    command: String,
}

async fn fake_cluster(script: Arc<Script>) -> String {
    let s = script.clone();
    let register = post(move || {
        let s = s.clone();
        async move {
            tokio::time::sleep(s.register_delay).await;
            *s.registered_at.lock().unwrap() = Some(Instant::now());
            // Heartbeats far apart: only a deadline timer can end the lease in time.
            Json(json!({"success": true, "data": {"lease_ms": s.lease_ms, "heartbeat_ms": 60_000, "epoch": 1}}))
        }
    });
    let s = script.clone();
    let assignments = get(move || {
        let s = s.clone();
        async move {
            // A long poll that finds nothing new answers after a while; keep the loop calm.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let task = json!({"name": "t", "executor": "shell", "command": s.command, "timeout_seconds": 60});
            let a = json!({"run_id": 1, "attempt": 1, "epoch": 1, "status": "assigned", "task_id": 1,
                           "scheduled_at": "2026-01-01T00:00:00Z", "task": raftcron_spec(task)});
            Json(json!({"success": true, "data": [a]}))
        }
    });
    let app = axum::Router::new()
        .route("/api/workers/w/register", register)
        .route("/api/workers/w/heartbeat", post(|| async { Json(json!({"success": false})) }))
        .route("/api/workers/w/assignments", assignments)
        .route("/api/runs/1/report", post(|| async { Json(json!({"success": true, "data": {}})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A full task spec as the cluster sends it to a worker.
fn raftcron_spec(body: Value) -> Value {
    let fields = raftcron::model::TaskField::parse_object(body).unwrap();
    serde_json::to_value(raftcron::model::TaskSpec::from_fields(fields, "UTC").unwrap()).unwrap()
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn pid_in(file: &PathBuf, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression test: the agent counted its lease from when an acknowledgement *arrived*, and
/// checked it only between heartbeats. The lease must run from when the acknowledged
/// request was *sent* (the cluster's clock started no later than that), and a timer must
/// end it. Here registration takes 2 s to answer and grants 2.5 s: the lease ends 0.5 s
/// after the answer arrives, and no heartbeat is due for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_runs_from_the_send_time_and_a_timer_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = Arc::new(Script {
        register_delay: Duration::from_secs(2),
        lease_ms: 2500,
        registered_at: Mutex::new(None),
        command: format!("echo $$ > {}; exec sleep 30", pidfile.display()),
    });
    let server = fake_cluster(script.clone()).await;
    let agent = worker::start(agent_config(server, "w", "key")).await.unwrap();
    let pid = pid_in(&pidfile, Duration::from_secs(10));
    let answered = script.registered_at.lock().unwrap().expect("registered");
    let deadline = answered + Duration::from_millis(1500);
    while alive(pid) && Instant::now() < deadline + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let died_after = Instant::now().saturating_duration_since(answered);
    assert!(!alive(pid), "the job outlived its lease by seconds");
    assert!(
        Instant::now() < deadline,
        "the job died {died_after:?} after the answer arrived: its lease was counted from the arrival, not the send"
    );
    agent.kill();
}
