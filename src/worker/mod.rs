//! The worker agent: registers with the cluster over the REST API (any node, or a load
//! balancer in front of them), renews its lease by heartbeat, long-polls for the runs
//! assigned to it, executes them, and reports.
//!
//! Safety rules it keeps:
//! - It reports only for the attempt it was given; the cluster fences everything else.
//! - Its lease runs from the moment it *sent* the heartbeat the cluster acknowledged, for
//!   `lease_ms` (half the cluster's `worker_timeout_s`). A timer kills its running
//!   processes when the lease runs out (not only at the next heartbeat), and it reports
//!   nothing for them: by the time the cluster declares it offline and re-queues those
//!   runs, they no longer run here (the margin is worked out in `model::lease`).
//! - A run that disappears from its assignments (cancelled, or re-queued after this worker
//!   was presumed lost) is killed.
//! - On shutdown it stops taking runs, lets running ones finish for a drain period, then
//!   kills the rest (they are reported failed, so a task with retries left runs again).

pub mod exec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::workers::Assignment;
use crate::model::RunStatus;
use exec::{Finished, Stop};

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of any node or of the load balancer, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub id: String,
    pub name: Option<String>,
    /// An API key with the `worker` role named after `id`, or an admin key.
    pub api_key: String,
    pub max_tasks: u32,
    pub tags: Vec<String>,
    /// Where runs without a `working_directory` start.
    pub work_dir: Option<PathBuf>,
    /// How long running runs may finish after a shutdown request.
    pub drain: Duration,
    /// Run jobs as this user (needs root). Without it, jobs run as the agent's user.
    pub run_as: Option<String>,
}

impl AgentConfig {
    /// An agent with one slot, no tags, a 10 s drain, jobs in the agent's directory as its
    /// user.
    pub fn new(server: impl Into<String>, id: impl Into<String>, api_key: impl Into<String>) -> AgentConfig {
        AgentConfig {
            server: server.into(),
            id: id.into(),
            name: None,
            api_key: api_key.into(),
            max_tasks: 1,
            tags: Vec::new(),
            work_dir: None,
            drain: Duration::from_secs(10),
            run_as: None,
        }
    }
}

/// Makes this process non-dumpable: no core dumps, and `/proc/<pid>/environ`, `mem` and
/// friends become unreadable to other processes of the same user — the jobs this agent
/// starts among them — so the credentials the process holds stay in it. (Root can still
/// read them; that is what `run_as` is for.)
pub fn protect_process_memory() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the process non-dumpable");
    }
}

/// One run executing here.
struct Held {
    attempt: u32,
    stop: watch::Sender<Option<Stop>>,
}

struct Shared {
    config: AgentConfig,
    launch: exec::Launch,
    http: reqwest::Client,
    running: Mutex<BTreeMap<u64, Held>>,
    /// Until when the lease holds (on this process's monotonic clock).
    lease: watch::Sender<Instant>,
    stopping: watch::Sender<bool>,
}

/// A started agent; [`RunningAgent::shutdown`] drains and stops it.
pub struct RunningAgent {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the agent: in the background it registers (retrying until the cluster
/// answers), then heartbeats and polls until shut down.
pub async fn start(config: AgentConfig) -> anyhow::Result<RunningAgent> {
    let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)).build()?;
    let run_as = config.run_as.as_deref().map(exec::RunAs::lookup).transpose().map_err(anyhow::Error::msg)?;
    let launch = exec::Launch { work_dir: config.work_dir.clone(), run_as };
    let shared = Arc::new(Shared {
        config,
        launch,
        http,
        running: Mutex::new(BTreeMap::new()),
        // No lease until the cluster grants one.
        lease: watch::channel(Instant::now()).0,
        stopping: watch::channel(false).0,
    });
    let s = shared.clone();
    let main = tokio::spawn(async move {
        let heartbeat_every = s.register().await;
        tracing::info!(worker = %s.config.id, server = %s.config.server, "worker registered");
        tokio::join!(s.clone().heartbeat_loop(heartbeat_every), s.clone().poll_loop());
    });
    let watchdog = tokio::spawn(shared.clone().lease_watchdog());
    Ok(RunningAgent { shared, tasks: vec![main, watchdog] })
}

impl RunningAgent {
    /// Stops taking runs, waits up to the drain period for running ones, kills the rest.
    pub async fn shutdown(self) {
        let _ = self.shared.stopping.send(true);
        let deadline = Instant::now() + self.shared.config.drain;
        while self.shared.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shared.stop_all(Stop::Shutdown);
        // Give the stopped runs a moment to report.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        tracing::info!(worker = %self.shared.config.id, "worker agent stopped");
    }

    /// Stops at once, as a crash would (runs are killed, nothing is reported).
    pub fn kill(self) {
        self.shared.stop_all(Stop::Fenced);
        for t in self.tasks {
            t.abort();
        }
    }
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.server.trim_end_matches('/'))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), String> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(&self.config.api_key).timeout(timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, value))
    }

    fn running_count(&self) -> usize {
        self.running.lock().expect("running map poisoned").len()
    }

    fn stop_all(&self, why: Stop) {
        for held in self.running.lock().expect("running map poisoned").values() {
            let _ = held.stop.send(Some(why));
        }
    }

    /// The cluster acknowledged a heartbeat (or registration) this agent sent at `sent_at`.
    fn renewed(&self, sent_at: Instant, ack: &Value) {
        let Some(lease) = ack["data"]["lease_ms"].as_u64().map(Duration::from_millis) else {
            tracing::warn!("acknowledgement without lease_ms; lease not renewed");
            return;
        };
        self.lease.send_if_modified(|until| {
            let renewed = sent_at + lease;
            if renewed <= *until {
                return false;
            }
            *until = renewed;
            true
        });
    }

    fn lease_expired(&self) -> bool {
        Instant::now() >= *self.lease.borrow()
    }

    /// Kills the running runs the moment the lease runs out.
    async fn lease_watchdog(self: Arc<Self>) {
        let mut until = self.lease.subscribe();
        loop {
            let deadline = *until.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.lease_expired() && self.running_count() > 0 {
                        tracing::warn!(worker = %self.config.id, "lease ran out: killing running runs");
                        self.stop_all(Stop::Fenced);
                    }
                    if until.changed().await.is_err() {
                        return;
                    }
                }
                changed = until.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Registers until the cluster accepts; returns the heartbeat interval it asks for.
    async fn register(&self) -> Duration {
        let body = json!({"name": self.config.name, "max_tasks": self.config.max_tasks, "tags": self.config.tags});
        let path = format!("/api/workers/{}/register", self.config.id);
        let mut backoff = Duration::from_millis(100);
        loop {
            let sent_at = Instant::now();
            match self.call(reqwest::Method::POST, &path, Some(body.clone()), Duration::from_secs(15)).await {
                Ok((StatusCode::OK, ack)) => {
                    self.renewed(sent_at, &ack);
                    return Duration::from_millis(ack["data"]["heartbeat_ms"].as_u64().unwrap_or(1000));
                }
                Ok((status, v)) if status.is_client_error() => {
                    tracing::error!(%status, message = %v["message"], "registration refused; retrying");
                }
                Ok((status, _)) => tracing::warn!(%status, "registration not accepted yet; retrying"),
                Err(e) => tracing::warn!(error = %e, "cannot reach the cluster; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, every: Duration) {
        let path = format!("/api/workers/{}/heartbeat", self.config.id);
        loop {
            tokio::time::sleep(every).await;
            let busy = self.running_count() as u32;
            let status = if busy >= self.config.max_tasks { "busy" } else { "online" };
            let body = json!({"status": status, "current_tasks": busy});
            let sent_at = Instant::now();
            match self.call(reqwest::Method::POST, &path, Some(body), every.max(Duration::from_millis(500))).await {
                Ok((StatusCode::OK, ack)) => self.renewed(sent_at, &ack),
                Ok((StatusCode::NOT_FOUND, _)) => {
                    // The cluster does not know this worker (e.g. its state was rebuilt).
                    self.stop_all(Stop::Fenced);
                    self.register().await;
                }
                Ok((status, _)) => tracing::debug!(%status, "heartbeat not accepted"),
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn poll_loop(self: Arc<Self>) {
        let path = format!("/api/workers/{}/assignments?wait_ms=20000", self.config.id);
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                return;
            }
            let polled = tokio::select! {
                r = self.call(reqwest::Method::GET, &path, None, Duration::from_secs(25)) => r,
                _ = stopping.changed() => return,
            };
            let held: Vec<Assignment> = match polled {
                Ok((StatusCode::OK, v)) => serde_json::from_value(v["data"].clone()).unwrap_or_default(),
                Ok((status, v)) => {
                    tracing::debug!(%status, message = %v["message"], "poll not answered");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.reconcile(held);
        }
    }

    /// Starts what was assigned and is not running here; kills what runs here but is no
    /// longer assigned.
    fn reconcile(self: &Arc<Self>, held: Vec<Assignment>) {
        let mut running = self.running.lock().expect("running map poisoned");
        for (run_id, h) in running.iter() {
            if !held.iter().any(|a| a.run_id == *run_id && a.attempt == h.attempt) {
                let _ = h.stop.send(Some(Stop::Withdrawn));
            }
        }
        if self.lease_expired() || *self.stopping.borrow() {
            return;
        }
        for a in held {
            if a.status != RunStatus::Assigned || running.contains_key(&a.run_id) {
                continue;
            }
            let (tx, rx) = watch::channel(None);
            running.insert(a.run_id, Held { attempt: a.attempt, stop: tx });
            tokio::spawn(self.clone().execute(a, rx));
        }
    }

    async fn execute(self: Arc<Self>, a: Assignment, stop: watch::Receiver<Option<Stop>>) {
        let run_id = a.run_id;
        if self.report(run_id, a.attempt, json!({"status": "running"})).await {
            let job = exec::JobContext { run_id, task_id: a.task_id, attempt: a.attempt, scheduled_at: a.scheduled_at };
            let result = exec::execute(&a.task, &job, &self.launch, stop).await;
            match result {
                Ok(f) => {
                    self.report(run_id, a.attempt, finished_body(&f)).await;
                }
                Err(Stop::Shutdown) => {
                    let f = Finished {
                        status: RunStatus::Failed,
                        exit_code: None,
                        http_status: None,
                        output: String::new(),
                        error: Some("the worker shut down before the run finished".into()),
                        duration_ms: 0,
                    };
                    self.report(run_id, a.attempt, finished_body(&f)).await;
                }
                Err(why) => tracing::info!(run_id, ?why, "run stopped; not reporting"),
            }
        }
        self.running.lock().expect("running map poisoned").remove(&run_id);
    }

    /// Sends a report until the cluster answers it (accepted, or refused as stale).
    /// Returns whether it was accepted.
    async fn report(&self, run_id: u64, attempt: u32, mut body: Value) -> bool {
        body["worker_id"] = json!(self.config.id);
        body["attempt"] = json!(attempt);
        let path = format!("/api/runs/{run_id}/report");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.call(reqwest::Method::POST, &path, Some(body.clone()), Duration::from_secs(15)).await {
                Ok((StatusCode::OK, _)) => return true,
                Ok((status, v)) if status.is_client_error() => {
                    tracing::info!(run_id, %status, message = %v["message"], "report refused");
                    return false;
                }
                Ok((status, _)) => tracing::debug!(run_id, %status, "report not accepted yet"),
                Err(e) => tracing::debug!(run_id, error = %e, "report failed"),
            }
            if Instant::now() > deadline {
                tracing::warn!(run_id, "giving up on a report after 60s");
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn finished_body(f: &Finished) -> Value {
    json!({
        "status": f.status,
        "exit_code": f.exit_code,
        "http_status": f.http_status,
        "output": f.output,
        "error": f.error,
        "duration_ms": f.duration_ms,
    })
}
