//! Workers and execution against a real cluster: agents (in this process, talking HTTP to
//! the nodes) register, heartbeat, long-poll, run real child processes and HTTP requests,
//! and report; placement, retries, liveness and fencing through Raft.

use std::time::{Duration, Instant};

use raftcron::worker::{self, AgentConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::fixture::{agent_config, Opts, TestCluster, KEY, WORKER_KEY};
use crate::support::{agent, create, is_final, trigger, wait_run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_trigger_through_a_follower_runs_on_a_worker() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let w = agent(&c, f, "w1", 2, &[]).await;
    let task =
        create(&c, f, json!({"name": "hello", "executor": "shell", "command": "echo hello; echo oops >&2"})).await;
    let started = Instant::now();
    let run = trigger(&c, f, task).await;
    let done = wait_run(&c, f, run, Duration::from_secs(10), is_final).await;
    let took = started.elapsed();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["worker_id"], "w1");
    let output = done["output"].as_str().unwrap();
    assert!(output.contains("hello") && output.contains("oops"), "stdout and stderr captured: {output:?}");
    assert!(done["started_at"].is_string() && done["duration_ms"].is_u64(), "{done}");
    assert!(took < Duration::from_secs(5), "trigger to finished took {took:?}");

    let list = c.get(leader, "/api/workers").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let me = &list.data()[0];
    assert_eq!((me["id"].as_str(), me["status"].as_str()), (Some("w1"), Some("online")), "{me}");
    assert!(me["last_heartbeat"].is_string(), "the leader heard from it: {me}");
    assert_eq!((me["current_tasks"].as_u64(), me["max_tasks"].as_u64()), (Some(0), Some(2)));
    let one = c.get(f, "/api/workers/w1").await;
    assert_eq!(one.data()["id"], "w1", "{}", one.body);
    let status = c.get(f, "/api/system/status").await;
    assert_eq!(status.data()["workers"], json!({"total": 1, "online": 1, "offline": 0}), "{}", status.body);
    assert_eq!(status.data()["success_rate"], 100.0, "{}", status.body);
    w.shutdown().await;
    c.shutdown().await;
}

/// A tiny HTTP server for the http executor: `/ok` answers 200, anything else 500.
async fn http_target() -> String {
    let app = axum::Router::new()
        .route("/ok", axum::routing::post(|body: String| async move { format!("got {body}") }))
        .fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited; only its parent's bookkeeping remains.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shell_python_and_http_tasks_succeed_fail_and_time_out() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let w = agent(&c, n, "w1", 8, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.py");
    std::fs::write(&script, "import sys\nprint('args', sys.argv[1:])\nsys.exit(int(sys.argv[1]))\n").unwrap();
    let target = http_target().await;
    let pidfile = dir.path().join("grandchild.pid");
    let escaped_at_exit = dir.path().join("escaped-at-exit.pid");
    let escaped_at_timeout = dir.path().join("escaped-at-timeout.pid");
    let cases = [
        (json!({"executor": "shell", "command": "exit 3"}), "failed", Some(3)),
        // The supervisor blocks termination signals for itself; the job starts with none
        // blocked, so it can be stopped like any process.
        (json!({"executor": "shell", "command": "grep -E 'SigBlk|SigIgn' /proc/self/status"}), "succeeded", Some(0)),
        (json!({"executor": "shell", "command": "pwd", "working_directory": dir.path()}), "succeeded", Some(0)),
        (
            json!({"executor": "shell", "command": "echo $GREETING", "environment": {"GREETING": "bonjour"}}),
            "succeeded",
            Some(0),
        ),
        (json!({"executor": "python", "command": script, "arguments": ["0"]}), "succeeded", Some(0)),
        (json!({"executor": "python", "command": script, "arguments": ["4"]}), "failed", Some(4)),
        (
            json!({"executor": "http", "url": format!("{target}/ok"), "method": "POST", "body": "ping"}),
            "succeeded",
            None,
        ),
        (json!({"executor": "http", "url": format!("{target}/broken")}), "failed", None),
        (json!({"executor": "http", "url": format!("{target}/broken"), "expected_status": 500}), "succeeded", None),
        // A grandchild that would outlive its shell: the whole group dies at the timeout.
        (
            json!({"executor": "shell", "timeout_seconds": 1,
                   "command": format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display())}),
            "timed_out",
            None,
        ),
        // Processes that leave the job's process group and session (setsid, then a double
        // fork that orphans them): they die when the job ends, and at its timeout.
        (
            json!({"executor": "shell",
                   "command": format!("setsid sh -c 'sleep 300 & echo $! > {}'; echo escaped", escaped_at_exit.display())}),
            "succeeded",
            Some(0),
        ),
        (
            json!({"executor": "shell", "timeout_seconds": 1,
                   "command": format!("setsid sh -c 'sleep 300 & echo $! > {}'; sleep 300", escaped_at_timeout.display())}),
            "timed_out",
            None,
        ),
    ];
    let mut runs = Vec::new();
    for (i, (mut body, _, _)) in cases.clone().into_iter().enumerate() {
        body["name"] = json!(format!("case-{i}"));
        let task = create(&c, n, body).await;
        runs.push(trigger(&c, n, task).await);
    }
    for (run, (body, status, exit)) in runs.into_iter().zip(cases) {
        let done = wait_run(&c, n, run, Duration::from_secs(20), is_final).await;
        assert_eq!(done["status"], status, "{body} → {done}");
        if let Some(code) = exit {
            assert_eq!(done["exit_code"], code, "{body} → {done}");
        }
        let output = done["output"].as_str().unwrap();
        match body["executor"].as_str().unwrap() {
            "http" => assert!(done["http_status"].is_u64(), "{done}"),
            "python" => assert!(output.contains("args"), "{output:?}"),
            _ => {}
        }
        if body["command"].as_str().is_some_and(|c| c.contains("SigBlk")) {
            assert!(output.contains("SigBlk:\t0000000000000000"), "signals blocked in the job: {output:?}");
            // No standard signal ignored (glibc's own real-time signals 32 and 33 may be).
            let ignored = output.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
            let ignored = u64::from_str_radix(ignored.trim(), 16).unwrap();
            assert_eq!(ignored & 0x7fff_ffff, 0, "standard signals ignored in the job: {output:?}");
        }
        if body["environment"].is_object() {
            assert!(output.contains("bonjour"), "{output:?}");
        }
        if body["working_directory"].is_string() {
            assert!(output.contains(dir.path().file_name().unwrap().to_str().unwrap()), "{output:?}");
        }
        if body["url"].as_str().is_some_and(|u| u.ends_with("/ok")) {
            assert!(output.contains("got ping"), "{output:?}");
        }
    }
    for file in [&pidfile, &escaped_at_exit, &escaped_at_timeout] {
        let pid: u32 = std::fs::read_to_string(file).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(pid), "{} (pid {pid}) outlived its run", file.display());
    }
    w.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_runs_are_retried_with_backoff_up_to_retry_count() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let w = agent(&c, n, "w1", 2, &[]).await;
    let body = json!({"name": "flaky", "executor": "shell", "command": "exit 1", "retry_count": 2, "retry_backoff_seconds": 1});
    let task = create(&c, n, body).await;
    trigger(&c, n, task).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs = c.all_runs(n, task).await;
        if runs.len() == 3 && runs.iter().all(is_final) {
            break runs;
        }
        assert!(Instant::now() < deadline, "three final attempts expected: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.all_runs(n, task).await.len(), 3, "no attempt beyond retry_count + 1");
    let mut runs = runs;
    runs.reverse(); // oldest first
    let attempts: Vec<u64> = runs.iter().map(|r| r["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(runs.iter().all(|r| r["status"] == "failed"));
    assert_eq!((runs[1]["trigger"].as_str(), runs[1]["retry_of"].as_u64()), (Some("retry"), runs[0]["id"].as_u64()));
    // Backoff doubles: ≥ 1 s before attempt 2, ≥ 2 s before attempt 3 (plus jitter).
    let at = |r: &Value, k: &str| r[k].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let gap1 = at(&runs[1], "started_at") - at(&runs[0], "finished_at");
    let gap2 = at(&runs[2], "started_at") - at(&runs[1], "finished_at");
    assert!(gap1 >= chrono::Duration::seconds(1), "first backoff {gap1}");
    assert!(gap2 >= chrono::Duration::seconds(2), "second backoff {gap2}");
    w.shutdown().await;
    c.shutdown().await;
}

/// A worker that stops heartbeating loses its run to another worker; a late report from it
/// is fenced off (409, state unchanged); the same accepted report again is a no-op 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_worker_loses_its_run_and_its_late_report_is_fenced() {
    let opts = Opts { worker_timeout_s: 4, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let first = agent(&c, f, "first", 1, &[]).await;
    let task = create(&c, f, json!({"name": "long", "executor": "shell", "command": "sleep 3; echo done"})).await;
    let run = trigger(&c, f, task).await;
    wait_run(&c, f, run, Duration::from_secs(10), |r| r["status"] == "running").await;
    first.kill(); // silent from now on: no heartbeat, no report
    let second = agent(&c, leader, "second", 1, &[]).await;
    let lost = wait_run(&c, f, run, Duration::from_secs(10), is_final).await;
    assert_eq!(lost["status"], "lost", "{lost}");
    assert!(lost["error"].as_str().unwrap().contains("no heartbeat"), "{lost}");
    let runs = c.all_runs(f, task).await;
    let retry = runs.iter().find(|r| r["retry_of"].as_u64() == Some(run)).expect("re-queued attempt");
    assert_eq!(retry["attempt"], 2);
    let retry_id = retry["id"].as_u64().unwrap();
    let done = wait_run(&c, f, retry_id, Duration::from_secs(15), is_final).await;
    assert_eq!((done["status"].as_str(), done["worker_id"].as_str()), (Some("succeeded"), Some("second")), "{done}");

    let before = c.converged_digests(Duration::from_secs(5)).await;
    let late = json!({"worker_id": "first", "attempt": 1, "epoch": 1, "status": "succeeded", "exit_code": 0, "output": "late"});
    let a = c.post(f, &format!("/api/runs/{run}/report"), late).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    let after = c.converged_digests(Duration::from_secs(5)).await;
    let digests =
        |m: &std::collections::BTreeMap<u64, (u64, String)>| m.values().map(|v| v.1.clone()).collect::<Vec<_>>();
    assert_eq!(digests(&before), digests(&after), "a fenced report changes no state");
    // The second worker's accepted report, sent again: 200, nothing changes.
    let again = json!({"worker_id": "second", "attempt": 2, "epoch": 1, "status": "succeeded", "exit_code": 0, "output": "ignored"});
    let a = c.post(leader, &format!("/api/runs/{retry_id}/report"), again).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.data()["output"], done["output"], "the first report's record stands");
    let workers = c.get(leader, "/api/workers").await;
    let first_view = workers.data().as_array().unwrap().iter().find(|w| w["id"] == "first").unwrap().clone();
    assert_eq!(first_view["status"], "offline", "{first_view}");
    second.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_respects_tags_capacity_and_priority() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let gpu = agent(&c, n, "gpu", 1, &["gpu"]).await;
    let blocker =
        create(&c, n, json!({"name": "blocker", "executor": "shell", "command": "sleep 1", "tags": ["gpu"]})).await;
    let low = create(
        &c,
        n,
        json!({"name": "low", "executor": "shell", "command": "true", "tags": ["gpu"], "priority": "low"}),
    )
    .await;
    let crit = create(
        &c,
        n,
        json!({"name": "crit", "executor": "shell", "command": "true", "tags": ["gpu"], "priority": "critical"}),
    )
    .await;
    let nowhere =
        create(&c, n, json!({"name": "nowhere", "executor": "shell", "command": "true", "tags": ["tpu"]})).await;
    let b = trigger(&c, n, blocker).await;
    wait_run(&c, n, b, Duration::from_secs(10), |r| r["status"] == "running").await;
    // One slot, taken: both wait; the critical one, though triggered later, goes first.
    let l = trigger(&c, n, low).await;
    let k = trigger(&c, n, crit).await;
    let x = trigger(&c, n, nowhere).await;
    let waiting = wait_run(&c, n, l, Duration::from_secs(5), |r| {
        r["pending_reason"].as_str().is_some_and(|m| m.contains("max_tasks"))
    })
    .await;
    assert_eq!(waiting["status"], "pending");
    let busy = c.get(n, "/api/workers/gpu").await;
    assert_eq!(busy.data()["status"], "busy", "{}", busy.body);
    let lr = wait_run(&c, n, l, Duration::from_secs(10), is_final).await;
    let kr = wait_run(&c, n, k, Duration::from_secs(10), is_final).await;
    let at = |r: &Value| r["started_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(at(&kr) < at(&lr), "critical started {} before low {}", at(&kr), at(&lr));
    let stuck =
        wait_run(&c, n, x, Duration::from_secs(5), |r| r["pending_reason"].as_str().is_some_and(|m| m.contains("tag")))
            .await;
    assert_eq!(stuck["status"], "pending", "no worker carries tpu: {stuck}");
    // Enabling a plain worker does not help a task that needs a tag it lacks: once a
    // placement pass has placed an untagged run on it, the tpu run is still pending.
    let plain = agent(&c, n, "plain", 4, &[]).await;
    let untagged = create(&c, n, json!({"name": "untagged", "executor": "shell", "command": "true"})).await;
    let probe = trigger(&c, n, untagged).await;
    wait_run(&c, n, probe, Duration::from_secs(10), is_final).await;
    assert_eq!(c.get(n, &format!("/api/runs/{x}")).await.data()["status"], "pending");
    // A disabled worker gets nothing new: a critical gpu run stays pending while a later
    // untagged one is placed and finished. The gpu run comes first in every placement pass
    // (critical before normal) and gpu has a free slot, so only `enabled` keeps it off.
    let a = c.call(n, Method::PUT, "/api/workers/gpu", Some(json!({"enabled": false})), &[]).await;
    assert_eq!((a.status, a.data()["enabled"].as_bool()), (StatusCode::OK, Some(false)), "{}", a.body);
    let again = trigger(&c, n, crit).await;
    let probe = trigger(&c, n, untagged).await;
    wait_run(&c, n, probe, Duration::from_secs(10), is_final).await;
    assert_eq!(c.get(n, &format!("/api/runs/{again}")).await.data()["status"], "pending");
    gpu.shutdown().await;
    plain.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_worker_input_gets_a_clear_4xx_and_changes_nothing() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let w = agent(&c, n, "w1", 1, &[]).await;
    let task = create(&c, n, json!({"name": "t", "executor": "shell", "command": "true"})).await;
    let run = trigger(&c, n, task).await;
    wait_run(&c, n, run, Duration::from_secs(10), is_final).await;
    let before = c.converged_digests(Duration::from_secs(5)).await;

    let cases: Vec<(Method, String, Option<Value>, StatusCode, &str)> = vec![
        (Method::GET, "/api/workers/nobody".into(), None, StatusCode::NOT_FOUND, "nobody"),
        (Method::GET, "/api/workers/bad%20id".into(), None, StatusCode::BAD_REQUEST, "worker_id"),
        (Method::PUT, "/api/workers/w1".into(), Some(json!({"max_tasks": 0})), StatusCode::BAD_REQUEST, "max_tasks"),
        (Method::PUT, "/api/workers/w1".into(), Some(json!({"max_tasks": -2})), StatusCode::BAD_REQUEST, "max_tasks"),
        (Method::PUT, "/api/workers/w1".into(), Some(json!({"slots": 2})), StatusCode::BAD_REQUEST, "slots"),
        (Method::PUT, "/api/workers/nobody".into(), Some(json!({"max_tasks": 2})), StatusCode::NOT_FOUND, "nobody"),
        (
            Method::POST,
            "/api/workers/nobody/heartbeat".into(),
            Some(json!({"status": "online"})),
            StatusCode::NOT_FOUND,
            "register",
        ),
        (
            Method::POST,
            "/api/workers/w1/register".into(),
            Some(json!({"max_tasks": "many"})),
            StatusCode::BAD_REQUEST,
            "max_tasks",
        ),
        (
            Method::POST,
            "/api/runs/424242/report".into(),
            Some(json!({"worker_id": "w1", "attempt": 1, "epoch": 1, "status": "succeeded"})),
            StatusCode::NOT_FOUND,
            "424242",
        ),
        (
            Method::POST,
            format!("/api/runs/{run}/report"),
            Some(json!({"worker_id": "w2", "attempt": 1, "epoch": 1, "status": "failed"})),
            StatusCode::CONFLICT,
            "not held",
        ),
        (
            Method::POST,
            format!("/api/runs/{run}/report"),
            Some(json!({"worker_id": "w1", "attempt": 1, "epoch": 1, "status": "failed"})),
            StatusCode::CONFLICT,
            "not held",
        ),
        (
            Method::POST,
            format!("/api/runs/{run}/report"),
            Some(json!({"worker_id": "w1", "attempt": 1, "epoch": 1, "status": "cancelled"})),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            Method::POST,
            format!("/api/runs/{run}/report"),
            Some(json!({"worker_id": "w1", "epoch": 1, "status": "failed"})),
            StatusCode::BAD_REQUEST,
            "attempt",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let a = c.call(n, method.clone(), &path, body.clone(), &[]).await;
        assert_eq!(a.status, status, "{method} {path} {body:?}: {}", a.body);
        let message = a.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: message {message:?} should name {needle:?}");
    }
    // Malformed JSON.
    let url = c.url(n, "/api/workers/w1/heartbeat");
    let r = c
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A worker key acts only for its own worker.
    let r = c.http.post(&url).bearer_auth(WORKER_KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c.http.get(c.url(n, "/api/tasks")).bearer_auth(WORKER_KEY).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a worker key reads no tasks");
    // Nothing above changed the state, not even the command clock: refused commands
    // (those that reached apply, e.g. `max_tasks: 0` or an unknown worker) leave no trace.
    let digests =
        |m: &std::collections::BTreeMap<u64, (u64, String)>| m.values().map(|v| v.1.clone()).collect::<Vec<_>>();
    let refused = c.converged_digests(Duration::from_secs(5)).await;
    assert_eq!(digests(&before), digests(&refused), "a refused request changed the state");
    let own = c.url(n, "/api/workers/w-keyed/register");
    let r = c.http.post(&own).bearer_auth(WORKER_KEY).json(&json!({"max_tasks": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a worker key registers its own worker");
    let registered = c.converged_digests(Duration::from_secs(5)).await;
    assert_ne!(digests(&refused), digests(&registered), "the registration changed the state");
    let a = c.get(n, "/api/workers/w1").await;
    assert_eq!(a.data()["max_tasks"], 1, "{}", a.body);
    let r = c.get(n, &format!("/api/runs/{run}")).await;
    assert_eq!(r.data()["status"], "succeeded");
    w.shutdown().await;
    c.shutdown().await;
}

/// A worker crashes mid-run and the leader dies during the detection window: the new
/// leader, which never heard from the worker, still declares it lost within its own grace
/// period, and the run is re-queued and finished by another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_worker_is_detected_across_a_leader_change() {
    let opts = Opts { worker_timeout_s: 4, ..Default::default() };
    let mut c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let crashing = agent(&c, f, "crashing", 1, &[]).await;
    let task = create(&c, f, json!({"name": "work", "executor": "shell", "command": "sleep 1; echo ok"})).await;
    let run = trigger(&c, f, task).await;
    wait_run(&c, f, run, Duration::from_secs(10), |r| r["status"] == "running").await;
    let crashed_at = Instant::now();
    crashing.kill();
    c.kill(leader).await;
    let rescuer = agent(&c, f, "rescuer", 1, &[]).await;
    let lost = wait_run(&c, f, run, Duration::from_secs(15), is_final).await;
    assert_eq!(lost["status"], "lost", "{lost}");
    let runs = c.all_runs(f, task).await;
    let retry = runs.iter().find(|r| r["retry_of"].as_u64() == Some(run)).expect("re-queued").clone();
    let done = wait_run(&c, f, retry["id"].as_u64().unwrap(), Duration::from_secs(15), is_final).await;
    assert_eq!((done["status"].as_str(), done["worker_id"].as_str()), (Some("succeeded"), Some("rescuer")));
    // Bound: election (< 1 s here) + one worker_timeout_s of grace + placement and the run.
    let took = crashed_at.elapsed();
    assert!(took < Duration::from_secs(10), "the crashed worker's run ended only after {took:?}");
    rescuer.shutdown().await;
    c.shutdown().await;
}

/// A worker that heartbeats but never reports (hung, or its reports are lost) does not hold
/// a run forever: past the task's timeout plus `worker_timeout_s`, the leader times the
/// attempt out and retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_held_past_its_timeout_by_a_silent_reporter_is_timed_out() {
    let opts = Opts { worker_timeout_s: 4, ..Default::default() };
    let c = TestCluster::start_with(1, opts).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let a = c.post(n, "/api/workers/ghost/register", json!({"max_tasks": 1})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let body = json!({"name": "held", "executor": "shell", "command": "true", "timeout_seconds": 1, "retry_count": 1, "retry_backoff_seconds": 1});
    let task = create(&c, n, body).await;
    let run = trigger(&c, n, task).await;
    let assigned = Instant::now();
    let deadline = assigned + Duration::from_secs(15);
    let expired = loop {
        let beat = c.post(n, "/api/workers/ghost/heartbeat", json!({"status": "online"})).await;
        assert_eq!(beat.status, StatusCode::OK, "the ghost stays online");
        let r = c.get(n, &format!("/api/runs/{run}")).await;
        if is_final(r.data()) {
            break r.data().clone();
        }
        assert!(Instant::now() < deadline, "still held: {}", r.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(expired["status"], "timed_out", "{expired}");
    assert!(expired["error"].as_str().unwrap().contains("past its 1s timeout"), "{expired}");
    assert!(assigned.elapsed() >= Duration::from_secs(5), "not before timeout + grace");
    let runs = c.all_runs(n, task).await;
    assert!(runs.iter().any(|r| r["retry_of"].as_u64() == Some(run)), "retried: {runs:?}");
    c.shutdown().await;
}

/// Shutdown drains: a run that finishes within the drain period is reported normally; one
/// that would not is killed and reported failed (so its retries apply), never left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_shutting_down_drains_its_runs() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let start = |drain| worker::start(AgentConfig { drain, ..agent_config(c.url(n, ""), "drainer", KEY) });
    let short = create(&c, n, json!({"name": "short", "executor": "shell", "command": "sleep 1; echo finished"})).await;
    let w = start(Duration::from_secs(5)).await.unwrap();
    let run = trigger(&c, n, short).await;
    wait_run(&c, n, run, Duration::from_secs(10), |r| r["status"] == "running").await;
    w.shutdown().await;
    let done = c.get(n, &format!("/api/runs/{run}")).await;
    assert_eq!(done.data()["status"], "succeeded", "finished within the drain: {}", done.body);

    let long = create(&c, n, json!({"name": "long", "executor": "shell", "command": "sleep 30"})).await;
    let first_epoch = c.get(n, "/api/workers/drainer").await.data()["epoch"].as_u64().unwrap();
    let w = start(Duration::from_millis(300)).await.unwrap();
    // The agent registers in the background: a run triggered before that could be placed
    // on the first agent's record, and is then lost when the new one registers (CI saw it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(n, "/api/workers/drainer").await.data()["epoch"].as_u64().unwrap() == first_epoch {
        assert!(Instant::now() < deadline, "the second agent never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = trigger(&c, n, long).await;
    wait_run(&c, n, run, Duration::from_secs(10), |r| r["status"] == "running").await;
    w.shutdown().await;
    let cut = c.get(n, &format!("/api/runs/{run}")).await;
    assert_eq!(cut.data()["status"], "failed", "{}", cut.body);
    assert!(cut.data()["error"].as_str().unwrap().contains("shut down"), "{}", cut.body);
    let worker = c.get(n, "/api/workers/drainer").await;
    assert_eq!(worker.data()["current_tasks"], 0, "no slot left held: {}", worker.body);
    c.shutdown().await;
}

/// An agent given every node's URL keeps working when the node it talked to dies: it
/// moves to the next one on the first failed call, so a worker needs no load balancer in
/// front of the cluster. Before, the agent took one URL and `a,b,c` was no URL at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_given_every_node_moves_on_when_its_node_dies() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    // The agent starts with a follower, which is then killed; the leader stays up.
    let first = c.follower(leader);
    let rest: Vec<u64> = (1..=3).filter(|n| *n != first).collect();
    let servers = std::iter::once(first).chain(rest.iter().copied()).map(|n| c.url(n, "")).collect::<Vec<_>>();
    let mut config = agent_config(servers.join(","), "w-multi", KEY);
    config.drain = Duration::from_secs(5);
    let w = worker::start(config).await.expect("agent starts");
    let task = create(&c, leader, json!({"name": "anywhere", "executor": "shell", "command": "echo ran"})).await;
    let run = trigger(&c, leader, task).await;
    let done = wait_run(&c, leader, run, Duration::from_secs(15), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    c.kill(first).await;
    let run = trigger(&c, leader, task).await;
    let done = wait_run(&c, leader, run, Duration::from_secs(20), is_final).await;
    assert_eq!((done["status"].as_str(), done["worker_id"].as_str()), (Some("succeeded"), Some("w-multi")), "{done}");
    w.shutdown().await;
    c.shutdown().await;
}
