//! The worker agent's own safety rules, against a scripted stand-in for the cluster (an
//! axum server on port 0 answering the agent's protocol), so each rule is exercised at
//! exactly the timing that matters: real agents, real shims, real jobs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use raftcron::worker::{self, RunningAgent};
use serde_json::{json, Value};

use crate::fixture::agent_config;

/// What the fake cluster does and saw. It holds one run (id 1, attempt 1, epoch 1).
struct Fake {
    /// How long registration takes to answer, and the lease every acknowledgement grants.
    register_delay: Duration,
    lease_ms: u64,
    heartbeat_ms: u64,
    /// Whether heartbeats are acknowledged (otherwise 503).
    heartbeats_ok: AtomicBool,
    /// When registration was answered.
    registered_at: Mutex<Option<Instant>>,
    command: String,
    /// The run's status as the cluster sees it: assigned, running, or gone once finished.
    status: Mutex<Option<&'static str>>,
    /// Every report received, in order.
    reports: Mutex<Vec<Value>>,
    /// Status codes to answer the next reports with (each applied first, as a lost answer
    /// would be); 200 once empty.
    report_answers: Mutex<VecDeque<u16>>,
    /// Registrations answered.
    registrations: std::sync::atomic::AtomicU32,
    /// Heartbeats answered 409 (another agent registered as this worker) while set.
    heartbeat_conflict: AtomicBool,
}

type Shared = Arc<Fake>;

impl Fake {
    fn new(command: String) -> Fake {
        Fake {
            register_delay: Duration::ZERO,
            lease_ms: 60_000,
            heartbeat_ms: 60_000,
            heartbeats_ok: AtomicBool::new(true),
            registered_at: Mutex::new(None),
            command,
            status: Mutex::new(Some("assigned")),
            reports: Mutex::new(Vec::new()),
            report_answers: Mutex::new(VecDeque::new()),
            registrations: std::sync::atomic::AtomicU32::new(0),
            heartbeat_conflict: AtomicBool::new(false),
        }
    }

    fn ack(&self) -> Json<Value> {
        Json(
            json!({"success": true, "data": {"lease_ms": self.lease_ms, "heartbeat_ms": self.heartbeat_ms, "epoch": 1}}),
        )
    }

    fn reports_with(&self, status: &str) -> Vec<Value> {
        self.reports.lock().unwrap().iter().filter(|r| r["status"] == status).cloned().collect()
    }
}

async fn register(State(f): State<Shared>) -> Json<Value> {
    tokio::time::sleep(f.register_delay).await;
    *f.registered_at.lock().unwrap() = Some(Instant::now());
    f.registrations.fetch_add(1, Ordering::SeqCst);
    f.ack()
}

async fn heartbeat(State(f): State<Shared>) -> (StatusCode, Json<Value>) {
    if f.heartbeat_conflict.load(Ordering::SeqCst) {
        return (StatusCode::CONFLICT, Json(json!({"success": false, "message": "registered by another agent"})));
    }
    match f.heartbeats_ok.load(Ordering::SeqCst) {
        true => (StatusCode::OK, f.ack()),
        false => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"success": false, "message": "no leader"}))),
    }
}

async fn assignments(State(f): State<Shared>) -> Json<Value> {
    // A long poll that finds nothing new answers after a while; keep the loop calm.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Some(status) = *f.status.lock().unwrap() else { return Json(json!({"success": true, "data": []})) };
    let task = json!({"name": "t", "executor": "shell", "command": f.command, "timeout_seconds": 60});
    let fields = raftcron::model::TaskField::parse_object(task).unwrap();
    let spec = raftcron::model::TaskSpec::from_fields(fields, "UTC").unwrap();
    let a = json!({"run_id": 1, "attempt": 1, "epoch": 1, "status": status, "task_id": 1,
                   "scheduled_at": "2026-01-01T00:00:00Z", "task": spec});
    Json(json!({"success": true, "data": [a]}))
}

async fn report(State(f): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    f.reports.lock().unwrap().push(body.clone());
    {
        let mut status = f.status.lock().unwrap();
        *status = match body["status"].as_str() {
            Some("running") if status.is_some() => Some("running"),
            Some("running") => None,
            _ => None,
        };
    }
    let code = f.report_answers.lock().unwrap().pop_front().unwrap_or(200);
    (StatusCode::from_u16(code).unwrap(), Json(json!({"success": code == 200, "data": {}, "message": "scripted"})))
}

/// The worker as the cluster shows it: a follower that applied this agent's offline
/// marking but not the other agent's registration says `offline` to a local read; a
/// linearizable read sees the other agent online.
async fn worker_view(axum::extract::RawQuery(q): axum::extract::RawQuery) -> Json<Value> {
    let status = if q.is_some_and(|q| q.contains("consistency=local")) { "offline" } else { "online" };
    Json(json!({"success": true, "data": {"id": "w", "status": status}}))
}

async fn serve(fake: Shared) -> String {
    let app = axum::Router::new()
        .route("/api/workers/w", get(worker_view))
        .route("/api/workers/w/register", post(register))
        .route("/api/workers/w/heartbeat", post(heartbeat))
        .route("/api/workers/w/assignments", get(assignments))
        .route("/api/runs/1/report", post(report))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn start_agent(fake: &Shared, state: &Path) -> RunningAgent {
    let mut config = agent_config(serve(fake.clone()).await, "w", "key");
    config.state_dir = Some(state.to_path_buf());
    worker::start(config).await.unwrap()
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
        if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|s| s.lines().last()?.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression test: the agent counted its lease from when an acknowledgement *arrived*, and
/// checked it only between heartbeats. The lease must run from when the acknowledged
/// request was *sent* (the cluster's clock started no later than that), and a timer must
/// end it. Here registration takes 2 s to answer and grants 2.5 s: the lease ends 0.5 s
/// after the answer arrives, and no heartbeat is due for a minute. The killed run is then
/// reported failed, so a cluster that kept the worker online does not hold it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_runs_from_the_send_time_and_a_timer_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut fake = Fake::new(format!("echo $$ > {}; exec sleep 30", pidfile.display()));
    // The lease ends 2 s after the answer arrives if it runs from the send, 4 s after if
    // it runs from the arrival; the job gets those 2 s to start (0.5 s was too few on a
    // loaded machine: the job never started).
    (fake.register_delay, fake.lease_ms) = (Duration::from_secs(2), 4000);
    let fake = Arc::new(fake);
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    let pid = pid_in(&pidfile, Duration::from_secs(10));
    let answered = fake.registered_at.lock().unwrap().expect("registered");
    let deadline = answered + Duration::from_millis(3000);
    while alive(pid) && Instant::now() < deadline + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let died_after = Instant::now().saturating_duration_since(answered);
    assert!(!alive(pid), "the job outlived its lease by seconds");
    assert!(
        Instant::now() < deadline,
        "the job died {died_after:?} after the answer arrived: its lease was counted from the arrival, not the send"
    );
    wait_for("a failed report", Duration::from_secs(5), || !fake.reports_with("failed").is_empty()).await;
    let failed = fake.reports_with("failed").remove(0);
    assert!(failed["error"].as_str().unwrap().contains("lease"), "{failed}");
    agent.kill();
}

/// Regression test: a `Started` the cluster applied but whose answer was lost, followed by
/// the lease running out, left the run `running` on the cluster with nothing running it.
/// When the lease is back and the cluster shows the run running here, the agent starts it
/// (its `Started` again is accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_whose_answer_was_lost_still_runs_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let mut fake = Fake::new(format!("echo $$ >> {}", ran.display()));
    (fake.lease_ms, fake.heartbeat_ms) = (1500, 300);
    let fake = Arc::new(fake);
    // The cluster applies the first Started but its answers fail, and heartbeats too, until
    // the agent's lease has run out.
    fake.report_answers.lock().unwrap().extend([503; 100]);
    fake.heartbeats_ok.store(false, Ordering::SeqCst);
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    wait_for("the first Started", Duration::from_secs(5), || !fake.reports_with("running").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!ran.exists(), "the job must not start while the lease is lapsed");
    fake.report_answers.lock().unwrap().clear();
    fake.heartbeats_ok.store(true, Ordering::SeqCst);
    wait_for("the job's success report", Duration::from_secs(10), || !fake.reports_with("succeeded").is_empty()).await;
    assert_eq!(std::fs::read_to_string(&ran).unwrap().lines().count(), 1, "the job ran once");
    agent.kill();
}

/// Regression test (review): a `Started` sent again after a lost answer went out as a
/// plain `Started`, which changes nothing on the cluster, so a run whose first `Started`
/// had applied stayed timed from it while its job started only after the retry: the
/// cluster could expire it, and run it again, while the job still ran. Every resend asks
/// to be timed from then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_sent_again_after_a_lost_answer_is_timed_from_then() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::new("true".into()));
    fake.report_answers.lock().unwrap().extend([503, 503]);
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    wait_for("the job's success report", Duration::from_secs(10), || !fake.reports_with("succeeded").is_empty()).await;
    let starts: Vec<bool> = fake.reports_with("running").iter().map(|r| r["restart"] == true).collect();
    assert_eq!(starts, vec![false, true, true], "the first Started, then resends that re-time the run");
    agent.kill();
}

/// Regression test: any 4xx answer to a final report counted as "fenced" and the report
/// was dropped, so an expired or rotated credential (401, 403) threw a run's outcome away.
/// Only 404 and 409 settle a report; the others are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_final_report_outlasts_a_rejected_credential() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::new("true".into()));
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    wait_for("Started", Duration::from_secs(5), || !fake.reports_with("running").is_empty()).await;
    fake.report_answers.lock().unwrap().extend([401, 403]);
    wait_for("three tries of the success report", Duration::from_secs(10), || {
        fake.reports_with("succeeded").len() >= 3
    })
    .await;
    agent.kill();
}

/// Regression test: a shim that died (here the job SIGKILLs it) left its job running, and
/// the agent reported the run failed so its retry could run beside the orphan. The agent
/// kills the job's process group and cgroup itself before it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_kills_its_supervisor_dies_before_the_run_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let fake = Arc::new(Fake::new(format!("echo $$ > {}; kill -9 $PPID; sleep 30", pidfile.display())));
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    let pid = pid_in(&pidfile, Duration::from_secs(10));
    wait_for("a failed report", Duration::from_secs(5), || !fake.reports_with("failed").is_empty()).await;
    assert!(!alive(pid), "the job outlived its supervisor and was reported finished");
    let failed = fake.reports_with("failed").remove(0);
    assert!(failed["error"].as_str().unwrap().contains("supervisor died"), "{failed}");
    agent.kill();
}

/// Regression test (review of the agent): a report kept by an agent that ran under another
/// worker id is refused 403 forever (this agent's credential may not act for that worker),
/// and the agent retried it before registering, so it never registered and never ran
/// anything. Such a report is dropped; the agent registers and runs its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_report_for_another_worker_does_not_keep_the_agent_from_registering() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("reports")).unwrap();
    let foreign = json!({"run_id": 1, "attempt": 7, "body": {"worker_id": "other", "attempt": 7, "epoch": 3,
                         "status": "failed", "error": "left by an agent that ran as another worker"}});
    std::fs::write(state.join("reports/1-7.json"), foreign.to_string()).unwrap();
    let fake = Arc::new(Fake::new("true".into()));
    fake.report_answers.lock().unwrap().extend([403; 1000]);
    let agent = start_agent(&fake, &state).await;
    wait_for("registration", Duration::from_secs(10), || fake.registrations.load(Ordering::SeqCst) > 0).await;
    assert!(!state.join("reports/1-7.json").exists(), "the undeliverable report was dropped");
    agent.kill();
}

/// Regression test (review of the agent): an agent replaced by another registration under
/// its worker id waited for the id to free with a local read, so a follower that had
/// applied its own offline marking but not the other agent's registration made it take
/// the id back while the other agent held it. It reads linearizably, and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_agent_does_not_take_the_id_back_on_a_stale_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Fake::new("true".into());
    fake.heartbeat_ms = 100;
    *fake.status.get_mut().unwrap() = None;
    let fake = Arc::new(fake);
    let agent = start_agent(&fake, &dir.path().join("state")).await;
    wait_for("registration", Duration::from_secs(10), || fake.registrations.load(Ordering::SeqCst) == 1).await;
    fake.heartbeat_conflict.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.registrations.load(Ordering::SeqCst), 1, "took the id back while another agent held it");
    agent.kill();
}
