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
pub mod records;
pub mod shim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::workers::Assignment;
use crate::model::{RunAttempt, RunStatus};
use exec::{Finished, Stop};
use records::{PendingReport, Records, RunRecord};
use shim::ShimSpec;

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of any node or of the load balancer, e.g. `http://127.0.0.1:8080`; or
    /// several, comma-separated: the agent sends to one and moves to the next after a
    /// transport error or a 5xx answer (a node that is down, cut off or without a leader).
    /// Every agent request is safe to send anywhere: writes are fenced by epoch and attempt.
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
    /// The binary whose `run-shim` supervises each process run (default: `raftcron-shim`
    /// beside this executable, else this executable).
    pub shim: Option<PathBuf>,
    /// Where the agent keeps its run records and undelivered reports (see [`records`]);
    /// `None` keeps nothing, so a crash of this agent can leave a finished run unreported.
    pub state_dir: Option<PathBuf>,
    /// A PEM file of the CA that issued the nodes' HTTPS certificates, trusted beside the
    /// built-in roots.
    pub ca_file: Option<PathBuf>,
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
            shim: None,
            state_dir: None,
            ca_file: None,
        }
    }
}

/// An HTTP client builder that also trusts the CA in `ca_file` (PEM), for a cluster whose
/// API certificates a private CA issued (`raftcron certs init`).
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = ca_file else { return Ok(builder) };
    let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("--ca-file {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--ca-file {}: holds no PEM certificate", path.display());
    }
    Ok(certs.into_iter().fold(builder, |b, c| b.add_root_certificate(c)))
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

/// One run held here: executing, or finished with its final report not yet delivered.
struct Held {
    attempt: u32,
    stop: watch::Sender<Option<Stop>>,
    /// Its processes are gone (it ended or was stopped).
    done: bool,
}

struct Shared {
    config: AgentConfig,
    /// `config.server`, split; requests go to `servers[current % len]`. Watched by the
    /// long poll, which gives up a server the other requests left.
    servers: Vec<String>,
    current: watch::Sender<usize>,
    launch: exec::Launch,
    records: Records,
    http: reqwest::Client,
    running: Mutex<BTreeMap<u64, Held>>,
    /// Until when the lease holds (on this process's monotonic clock).
    lease: watch::Sender<Instant>,
    /// The registration epoch this agent holds (0 before it registered).
    epoch: std::sync::atomic::AtomicU64,
    /// Runs of an earlier registration this agent saw die; the next registration tells
    /// the cluster, which then re-queues them at once.
    killed: Mutex<Vec<RunAttempt>>,
    /// Runs whose `Started` this agent stopped sending (its lease ran out first); if the
    /// cluster took one after all, the next poll shows it running, and it is started then.
    abandoned: Mutex<std::collections::BTreeSet<(u64, u32)>>,
    /// Signalled when a `Started` report was answered: the run is no longer `assigned`, so
    /// the next poll waits for new work instead of answering at once.
    start_answered: tokio::sync::Notify,
    stopping: watch::Sender<bool>,
}

/// A started agent; [`RunningAgent::shutdown`] drains and stops it.
pub struct RunningAgent {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// The supervisor each process run starts: `raftcron-shim` beside this executable (a
/// small binary, ~1 ms to start) when it and its directory belong to this executable's
/// owner (or root) and are writable by no one else, it is a plain file (not a symlink),
/// and it speaks this build's protocol; else this executable (`raftcron run-shim`, ~6 ms:
/// it links RocksDB). A file planted beside the binary must not run jobs (maybe as root),
/// and a partial upgrade or a stale build must not supervise runs. Checked once, at start:
/// whoever can replace files in a directory that passes could replace `raftcron` too.
async fn default_shim() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = std::env::current_exe()?;
    let small = me.with_file_name("raftcron-shim");
    let owner = std::fs::metadata(&me)?.uid();
    let safe = |m: &std::fs::Metadata| (m.uid() == owner || m.uid() == 0) && m.mode() & 0o022 == 0;
    let trusted = match (std::fs::symlink_metadata(&small), small.parent().map(std::fs::metadata)) {
        (Ok(file), Some(Ok(dir))) => file.file_type().is_file() && safe(&file) && safe(&dir),
        _ => false,
    };
    if !trusted {
        return Ok(me);
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(&small).arg("--protocol").env_clear().output(),
    )
    .await;
    let said = match answer {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(Err(e)) => format!("cannot run it: {e}"),
        Err(_) => "no answer within 5 s".to_string(),
    };
    if said == shim::PROTOCOL {
        return Ok(small);
    }
    tracing::warn!(shim = %small.display(), answer = %said, expected = shim::PROTOCOL,
        "raftcron-shim does not speak this build's protocol; runs are supervised by `raftcron run-shim` instead");
    Ok(me)
}

/// Starts the agent: in the background it registers (retrying until the cluster
/// answers), then heartbeats and polls until shut down.
pub async fn start(config: AgentConfig) -> anyhow::Result<RunningAgent> {
    let http =
        trusting(reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)), config.ca_file.as_deref())?
            .build()?;
    let run_as = config.run_as.as_deref().map(exec::RunAs::lookup).transpose().map_err(anyhow::Error::msg)?;
    let shim = match &config.shim {
        Some(path) => path.clone(),
        None => default_shim().await?,
    };
    tracing::info!(shim = %shim.display(), "process runs are supervised by this binary");
    let launch = exec::Launch { shim, work_dir: config.work_dir.clone(), run_as };
    let records = Records::open(config.state_dir.as_deref())?;
    let servers: Vec<String> = config
        .server
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        anyhow::bail!("no server URL given");
    }
    // A previous incarnation's jobs die before this one says anything to the cluster.
    let killed = records.kill_survivors();
    if !killed.is_empty() {
        tracing::warn!(worker = %config.id, runs = ?killed, "killed runs a previous incarnation of this agent left");
    }
    let shared = Arc::new(Shared {
        config,
        servers,
        current: watch::channel(0).0,
        launch,
        records,
        http,
        running: Mutex::new(BTreeMap::new()),
        // No lease until the cluster grants one.
        lease: watch::channel(Instant::now()).0,
        epoch: std::sync::atomic::AtomicU64::new(0),
        killed: Mutex::new(killed.iter().map(|&(run_id, attempt)| RunAttempt { run_id, attempt }).collect()),
        abandoned: Mutex::new(std::collections::BTreeSet::new()),
        start_answered: tokio::sync::Notify::new(),
        stopping: watch::channel(false).0,
    });
    let s = shared.clone();
    let main = tokio::spawn(async move {
        s.deliver_pending_reports().await;
        let heartbeat_every = s.register().await;
        tracing::info!(worker = %s.config.id, server = %s.server().1, "worker registered");
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
        self.shared.stop_all(Stop::Crashed);
        for t in self.tasks {
            t.abort();
        }
    }
}

impl Shared {
    /// The server the next request goes to, and its index.
    fn server(&self) -> (usize, &str) {
        let i = *self.current.borrow();
        (i, &self.servers[i % self.servers.len()])
    }

    /// After a request to server `i` failed: the next one, unless another request moved on
    /// already.
    fn fail_over(&self, i: usize, why: &str) {
        if self.servers.len() < 2 {
            return;
        }
        let moved = self.current.send_if_modified(|c| {
            let now = *c == i;
            if now {
                *c = i + 1;
            }
            now
        });
        if moved {
            let next = &self.servers[(i + 1) % self.servers.len()];
            tracing::info!(worker = %self.config.id, from = %self.servers[i % self.servers.len()], to = %next, why, "switching server");
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), String> {
        let (server, base) = self.server();
        let mut req =
            self.http.request(method, format!("{base}{path}")).bearer_auth(&self.config.api_key).timeout(timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                // Unreachable, or no answer in time (a long poll's timeout is past the
                // server's own wait, so it too means a server that stopped answering).
                self.fail_over(server, "no answer");
                return Err(e.to_string());
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            self.fail_over(server, status.as_str());
        }
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

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers (a new epoch) until the cluster accepts; returns the heartbeat interval
    /// it asks for.
    async fn register(&self) -> Duration {
        let path = format!("/api/workers/{}/register", self.config.id);
        let mut backoff = Duration::from_millis(100);
        loop {
            let killed = self.killed.lock().expect("killed list poisoned").clone();
            let body = json!({"name": self.config.name, "max_tasks": self.config.max_tasks, "tags": self.config.tags, "killed": killed});
            let sent_at = Instant::now();
            match self.call(reqwest::Method::POST, &path, Some(body), Duration::from_secs(15)).await {
                Ok((StatusCode::OK, ack)) => {
                    let Some(epoch) = ack["data"]["epoch"].as_u64() else {
                        tracing::error!("registration answered without an epoch; retrying");
                        tokio::time::sleep(backoff).await;
                        continue;
                    };
                    self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
                    self.killed.lock().expect("killed list poisoned").retain(|k| !killed.contains(k));
                    // The new epoch fences every earlier attempt: none can be started now.
                    self.abandoned.lock().expect("abandoned set poisoned").clear();
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
            let body = json!({"status": status, "current_tasks": busy, "epoch": self.epoch()});
            let sent_at = Instant::now();
            match self.call(reqwest::Method::POST, &path, Some(body), every.max(Duration::from_millis(500))).await {
                Ok((StatusCode::OK, ack)) => self.renewed(sent_at, &ack),
                Ok((StatusCode::NOT_FOUND, _)) => {
                    // The cluster does not know this worker (e.g. its state was rebuilt).
                    self.stop_all(Stop::Fenced);
                    self.wait_runs_stopped().await;
                    self.register().await;
                }
                Ok((StatusCode::CONFLICT, v)) => {
                    // Another agent registered under this worker id: it holds the id now,
                    // and nothing this one runs may go on. Take the id back only once that
                    // registration is gone, so two agents configured alike do not thrash.
                    tracing::error!(worker = %self.config.id, message = %v["message"],
                        "another agent registered as this worker; stopping this one's runs until it is gone");
                    self.stop_all(Stop::Fenced);
                    self.wait_runs_stopped().await;
                    self.wait_for_the_id_to_free(every).await;
                    self.register().await;
                }
                Ok((status, _)) => tracing::debug!(%status, "heartbeat not accepted"),
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// Waits until the registration that replaced this agent's is gone: its worker went
    /// offline (that agent stopped heartbeating) or the worker was deleted.
    async fn wait_for_the_id_to_free(&self, every: Duration) {
        // Linearizable: a follower that applied this agent's offline marking but not the
        // other agent's registration would say "offline" while the other one holds the id.
        let path = format!("/api/workers/{}", self.config.id);
        loop {
            tokio::time::sleep(every).await;
            match self.call(reqwest::Method::GET, &path, None, every.max(Duration::from_secs(1))).await {
                Ok((StatusCode::OK, v)) if v["data"]["status"] == "offline" => return,
                Ok((StatusCode::NOT_FOUND, _)) => return,
                Ok(_) | Err(_) => {}
            }
        }
    }

    /// Waits (a few seconds at most) until every stopped run's processes are gone.
    async fn wait_runs_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.running.lock().expect("running map poisoned").values().any(|h| !h.done)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn poll_loop(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                return;
            }
            let path = format!("/api/workers/{}/assignments?wait_ms=20000&epoch={}", self.config.id, self.epoch());
            // A poll waiting on a server that the heartbeats have left (paused, cut off)
            // would hear of a cancel or a withdrawn run only at its timeout: it is given up
            // and sent again to the new server.
            let mut moved = self.current.subscribe();
            moved.borrow_and_update();
            let polled = tokio::select! {
                r = self.call(reqwest::Method::GET, &path, None, Duration::from_secs(25)) => r,
                _ = stopping.changed() => return,
                _ = moved.changed() => continue,
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
            // A poll answers at once while a run here is still `assigned` (its start is
            // being reported): do not spin on it, and do not sleep past the report's answer
            // either (a fixed 200 ms pause here held every next assignment back: trigger to
            // start took 170 ms instead of 15, and a burst ran at 50 runs/s).
            let waiting = held.iter().any(|a| a.status == RunStatus::Assigned);
            let started = self.reconcile(held);
            if waiting && !started {
                let _ = tokio::time::timeout(Duration::from_millis(200), self.start_answered.notified()).await;
            }
        }
    }

    /// Starts what was assigned and is not running here; kills what runs here but is no
    /// longer assigned. Returns whether it started anything.
    fn reconcile(self: &Arc<Self>, held: Vec<Assignment>) -> bool {
        let mut running = self.running.lock().expect("running map poisoned");
        for (run_id, h) in running.iter() {
            if !held.iter().any(|a| a.run_id == *run_id && a.attempt == h.attempt) {
                let _ = h.stop.send(Some(Stop::Withdrawn));
            }
        }
        if self.lease_expired() || *self.stopping.borrow() {
            return false;
        }
        let mut started_any = false;
        for a in held {
            // A run already here is skipped, unless what is here is an earlier attempt
            // that ended and only waits to deliver its report: the new attempt starts.
            if running.get(&a.run_id).is_some_and(|h| h.attempt == a.attempt || !h.done) {
                continue;
            }
            let start = match a.status {
                RunStatus::Assigned => true,
                // Running under this registration, but not here: a start whose answer was
                // lost (start it; `Started` again is accepted), or an attempt this agent
                // no longer runs (tell the cluster it ended, so it is not held forever).
                RunStatus::Running if a.epoch == self.epoch() => {
                    let abandoned =
                        self.abandoned.lock().expect("abandoned set poisoned").remove(&(a.run_id, a.attempt));
                    if abandoned {
                        // It runs after all: no longer one to tell a new registration about.
                        let attempt = RunAttempt { run_id: a.run_id, attempt: a.attempt };
                        self.killed.lock().expect("killed list poisoned").retain(|k| *k != attempt);
                    }
                    abandoned
                }
                _ => continue,
            };
            let (tx, rx) = watch::channel(None);
            running.insert(a.run_id, Held { attempt: a.attempt, stop: tx, done: !start });
            if start {
                tokio::spawn(self.clone().execute(a, rx));
            } else {
                tokio::spawn(self.clone().report_lost_track(a));
            }
            started_any = true;
        }
        started_any
    }

    /// Reports an attempt the cluster shows running here but this agent does not run.
    async fn report_lost_track(self: Arc<Self>, a: Assignment) {
        tracing::warn!(
            run_id = a.run_id,
            attempt = a.attempt,
            "the cluster shows a run here that this agent does not run"
        );
        let body = json!({"status": "failed", "error": "the worker no longer runs this attempt (it was stopped or never started)"});
        let pending = self.keep_report(a.run_id, a.attempt, a.epoch, body).await;
        self.send_report(a.run_id, &pending.body, || true).await;
        self.records.remove_report(a.run_id, a.attempt);
        self.forget(a.run_id, a.attempt);
    }

    /// Drops a run from `running` if the entry is still this attempt's (a later attempt
    /// of the same run may have taken its place).
    fn forget(&self, run_id: u64, attempt: u32) {
        let mut running = self.running.lock().expect("running map poisoned");
        if running.get(&run_id).is_some_and(|h| h.attempt == attempt) {
            running.remove(&run_id);
        }
    }

    async fn execute(self: Arc<Self>, a: Assignment, stop: watch::Receiver<Option<Stop>>) {
        let (run_id, attempt, epoch) = (a.run_id, a.attempt, a.epoch);
        // Started here although the cluster shows it running: its `Started` was applied
        // but the answer lost, and the job starts only now.
        let restart = a.status == RunStatus::Running;
        let job = exec::JobContext {
            run_id,
            task_id: a.task_id,
            attempt,
            scheduled_at: a.scheduled_at,
            worker_id: self.config.id.clone(),
        };
        let lease_ns = exec::monotonic_deadline_ns(*self.lease.borrow());
        let outcome = match exec::shim_spec(&a.task, &job, &self.launch, lease_ns) {
            Some(spec) => self.execute_supervised(&job, epoch, restart, &spec, a.task.timeout_seconds, stop).await,
            None => match self.report_started(run_id, attempt, epoch, restart).await {
                Delivery::Accepted => Some(exec::run_http(&a.task, stop).await),
                other => {
                    self.gave_up_starting(run_id, attempt, other);
                    None
                }
            },
        };
        let failed = |error: &str| Finished {
            status: RunStatus::Failed,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: Some(error.to_string()),
            duration_ms: 0,
        };
        let report = match outcome {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(Stop::Shutdown)) => Some(failed("the worker shut down before the run finished")),
            Some(Err(Stop::Fenced)) => {
                // It may be re-queued when this agent registers again; and if the cluster
                // kept it, it must learn the attempt ended.
                let mut killed = self.killed.lock().expect("killed list poisoned");
                if killed.len() < 10_000 {
                    killed.push(RunAttempt { run_id, attempt });
                }
                Some(failed("the worker could not renew its lease and killed the run"))
            }
            Some(Err(Stop::Withdrawn)) => {
                tracing::info!(run_id, "run withdrawn (cancelled or re-queued); not reporting");
                None
            }
            Some(Err(Stop::Crashed)) => None,
        };
        // The outcome is on disk before the run's record goes: a crash in between leaves
        // one or the other, never neither.
        let kept = match report {
            Some(f) => Some(self.keep_report(run_id, attempt, epoch, finished_body(&f)).await),
            None => None,
        };
        self.records.remove_run(run_id, attempt);
        if let Some(held) = self.running.lock().expect("running map poisoned").get_mut(&run_id) {
            if held.attempt == attempt {
                held.done = true;
            }
        }
        if let Some(pending) = kept {
            self.send_report(run_id, &pending.body, || true).await;
            self.records.remove_report(run_id, attempt);
        }
        self.forget(run_id, attempt);
    }

    /// A run whose `Started` was not accepted in time: if the cluster took it after all
    /// (the answer was lost), the next poll shows it running here and it is started then.
    /// Until then it is also one this agent knows it never ran, which its next
    /// registration tells the cluster (so it is re-queued at once, not after a delay).
    fn gave_up_starting(&self, run_id: u64, attempt: u32, how: Delivery) {
        if how == Delivery::GaveUp {
            self.abandoned.lock().expect("abandoned set poisoned").insert((run_id, attempt));
            let mut killed = self.killed.lock().expect("killed list poisoned");
            if killed.len() < 10_000 {
                killed.push(RunAttempt { run_id, attempt });
            }
        }
    }

    /// A process run: its shim is started held, recorded on disk, the run reported
    /// started, and only then the job started. `None` when the run never started.
    async fn execute_supervised(
        &self,
        job: &exec::JobContext,
        epoch: u64,
        restart: bool,
        spec: &ShimSpec,
        timeout_seconds: u64,
        stop: watch::Receiver<Option<Stop>>,
    ) -> Option<Result<Finished, Stop>> {
        let (run_id, attempt) = (job.run_id, job.attempt);
        let mut shim = match exec::Supervised::spawn(&self.launch.shim, spec).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run_id, error = %e, "cannot start the run's supervisor");
                return match self.report_started(run_id, attempt, epoch, restart).await {
                    Delivery::Accepted => {
                        Some(Ok(Finished::failed(format!("cannot start the run's supervisor: {e}"), Instant::now())))
                    }
                    other => {
                        self.gave_up_starting(run_id, attempt, other);
                        None
                    }
                };
            }
        };
        let mut record = RunRecord {
            run_id,
            attempt,
            shim_pid: shim.shim_pid,
            shim_start_time: shim.shim_start_time,
            cgroup: shim.held.cgroup.clone(),
            job: None,
            boot_id: records::boot_id(),
        };
        if let Err(e) = self.records.put_run(&record) {
            tracing::error!(run_id, error = %e, "cannot record the run in the state dir; not starting it");
            shim.abort().await;
            self.records.remove_run(run_id, attempt);
            return None;
        }
        match self.report_started(run_id, attempt, epoch, restart).await {
            Delivery::Accepted => {}
            other => {
                self.gave_up_starting(run_id, attempt, other);
                shim.abort().await;
                self.records.remove_run(run_id, attempt);
                return None;
            }
        }
        let lease = self.lease.subscribe();
        let deadline = exec::monotonic_deadline_ns(*lease.borrow());
        match shim.go(deadline).await {
            Ok(Ok(started)) => {
                record.job = Some((started.pid, started.start_time));
                if let Err(e) = self.records.put_run(&record) {
                    tracing::warn!(run_id, error = %e, "cannot record the job's process group");
                }
            }
            // The shim ended without starting the job (it could not, or the lease ran out
            // while it waited); its result follows.
            Ok(Err(result)) => return Some(shim.result_without_start(result)),
            Err(e) => tracing::warn!(run_id, error = %e, "the run's supervisor did not confirm the start"),
        }
        Some(shim.watch(stop, lease, Duration::from_secs(timeout_seconds.max(1))).await)
    }

    /// Reports a run started, while the lease holds (a run must not start on a lapsed
    /// lease, and a `Started` sent after it could start one nobody runs).
    async fn report_started(&self, run_id: u64, attempt: u32, epoch: u64, restart: bool) -> Delivery {
        let body = self.report_body(attempt, epoch, json!({"status": "running", "restart": restart}));
        let delivery = self.send_report(run_id, &body, || !self.lease_expired()).await;
        // One stored permit: the poll loop, if it is not waiting yet, returns at once.
        self.start_answered.notify_one();
        delivery
    }

    /// Writes a final report to the state dir, where it stays until the cluster accepts or
    /// refuses it, however long that takes and across restarts of this agent: an outcome
    /// given up on would later be expired as `timed_out` and run again.
    /// The write and its fsyncs run off the async workers, which other runs' polls and
    /// reports share.
    async fn keep_report(&self, run_id: u64, attempt: u32, epoch: u64, body: Value) -> PendingReport {
        let pending = PendingReport { run_id, attempt, body: self.report_body(attempt, epoch, body) };
        let (records, copy) = (self.records.clone(), pending.clone());
        let kept = tokio::task::spawn_blocking(move || records.put_report(&copy))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("the writer panicked: {e}"))));
        if let Err(e) = kept {
            tracing::warn!(run_id, error = %e, "cannot keep the report on disk; sending it from memory only");
        }
        pending
    }

    fn report_body(&self, attempt: u32, epoch: u64, mut body: Value) -> Value {
        body["worker_id"] = json!(self.config.id);
        body["attempt"] = json!(attempt);
        body["epoch"] = json!(epoch);
        body
    }

    /// Sends a report until the cluster answers it or `keep_trying` (asked before every
    /// attempt) says stop. 404 (no such run) and 409 (not this attempt's holder, or
    /// contradicting the record) settle a report as refused; a malformed one (400, 413,
    /// 422) and one naming another worker that this agent may not send (403) are dropped;
    /// anything else — an expired or rotated credential, a full queue, no leader — is
    /// retried.
    async fn send_report(&self, run_id: u64, body: &Value, keep_trying: impl Fn() -> bool) -> Delivery {
        let path = format!("/api/runs/{run_id}/report");
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        let mut body = body.clone();
        loop {
            if !keep_trying() {
                return Delivery::GaveUp;
            }
            // A start sent again may follow one the cluster applied (its answer lost): the
            // job starts only on an accepted answer, so the run is timed from this one.
            // Timing it later than the job's real start only delays the cluster's expiry,
            // which the shim's own timeout already bounds; timing it earlier could expire
            // a run whose job still runs.
            if failures > 0 && body["status"] == "running" {
                body["restart"] = json!(true);
            }
            match self.call(reqwest::Method::POST, &path, Some(body.clone()), Duration::from_secs(15)).await {
                Ok((StatusCode::OK, _)) => return Delivery::Accepted,
                Ok((status @ (StatusCode::NOT_FOUND | StatusCode::CONFLICT), v)) => {
                    tracing::info!(run_id, %status, message = %v["message"], "report refused");
                    return Delivery::Refused;
                }
                Ok((
                    status @ (StatusCode::BAD_REQUEST
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNPROCESSABLE_ENTITY),
                    v,
                )) => {
                    tracing::error!(run_id, %status, message = %v["message"], "report malformed; dropping it");
                    return Delivery::Refused;
                }
                // A report kept by an agent that ran under another worker id: this agent's
                // credential may not act for that worker, and retrying cannot change it.
                // (A 403 for its own worker id may be a credential being rotated: retried.)
                Ok((StatusCode::FORBIDDEN, v)) if body["worker_id"] != json!(self.config.id) => {
                    tracing::error!(run_id, worker = %body["worker_id"], message = %v["message"],
                        "this agent may not report for that worker; dropping the report");
                    return Delivery::Refused;
                }
                Ok((status, v)) => tracing::debug!(run_id, %status, message = %v["message"], "report not accepted yet"),
                Err(e) => tracing::debug!(run_id, error = %e, "report failed"),
            }
            failures += 1;
            if failures.is_multiple_of(30) {
                tracing::warn!(run_id, failures, "report still not accepted; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Sends the final reports a previous incarnation could not deliver, before this one
    /// registers (registering gives up the runs they are for), for at most
    /// [`PENDING_REPORTS_PATIENCE`]: an agent must come up even if its old reports cannot
    /// be delivered. One not delivered by then stays on disk for the next start (if its
    /// run was meanwhile given up, the cluster refuses it then).
    async fn deliver_pending_reports(&self) {
        let until = Instant::now() + PENDING_REPORTS_PATIENCE;
        for pending in self.records.pending_reports() {
            tracing::info!(
                run_id = pending.run_id,
                attempt = pending.attempt,
                "sending a report left by a previous agent"
            );
            match self.send_report(pending.run_id, &pending.body, || Instant::now() < until).await {
                Delivery::Accepted | Delivery::Refused => self.records.remove_report(pending.run_id, pending.attempt),
                Delivery::GaveUp => tracing::warn!(
                    run_id = pending.run_id,
                    "could not deliver a report left by a previous agent; registering without it"
                ),
            }
        }
    }
}

/// How long a starting agent tries to deliver the reports a previous incarnation left
/// before it registers anyway.
const PENDING_REPORTS_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Accepted,
    Refused,
    GaveUp,
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
