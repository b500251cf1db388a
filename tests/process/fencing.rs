//! Never two attempts at once (PRODUCT.md §4.5–4.6), with real processes: a leader cut off
//! from its quorum together with the worker that talks to it, and the majority re-running
//! that worker's run elsewhere. Each job writes its own timeline (start, a tick every
//! 100 ms, end), which is the ground truth the checks read.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixture::{pid_alive, spawn_worker, Cluster, KEY};

/// A shell job that logs `start`, then `tick` every 100 ms for `seconds`, then `end`, each
/// line with its run id, attempt and a nanosecond timestamp, into `log`; and its pid into
/// `pid-ATTEMPT` beside it.
fn timeline_job(log: &Path, seconds: u32) -> String {
    let line =
        |what: &str| format!("echo \"{what} $RAFTCRON_RUN_ID $RAFTCRON_ATTEMPT $(date +%s%N)\" >> {}", log.display());
    let pid = log.with_file_name("pid-$RAFTCRON_ATTEMPT");
    format!(
        "echo $$ > {}; {}; i=0; while [ $i -lt {} ]; do {}; sleep 0.1; i=$((i+1)); done; {}",
        pid.display(),
        line("start"),
        seconds * 10,
        line("tick"),
        line("end")
    )
}

/// Per attempt: (first, last) timestamp it logged, in nanoseconds.
fn intervals(log: &Path) -> BTreeMap<u32, (u128, u128)> {
    let mut out: BTreeMap<u32, (u128, u128)> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (Some(attempt), Some(at)) =
            (parts.get(2).and_then(|a| a.parse().ok()), parts.get(3).and_then(|t| t.parse().ok()))
        else {
            continue;
        };
        let e = out.entry(attempt).or_insert((at, at));
        e.0 = e.0.min(at);
        e.1 = e.1.max(at);
    }
    out
}

async fn run_of(c: &Cluster, node: usize, id: u64) -> Value {
    let r = c.http.get(format!("http://{}/api/runs/{id}", c.nodes[node].http)).bearer_auth(KEY).send().await;
    match r {
        Ok(r) => r.json::<Value>().await.map(|v| v["data"].clone()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn health_status(c: &Cluster, node: usize) -> Option<u16> {
    let r =
        c.http.get(format!("http://{}/api/health", c.nodes[node].http)).timeout(Duration::from_secs(2)).send().await;
    r.ok().map(|r| r.status().as_u16())
}

/// Regression test for a deposed leader renewing worker leases: the leader and worker W1
/// are cut off from the other two nodes while W1 runs a long job. The majority elects a
/// leader, declares W1 lost and re-runs the job on W2. The old leader must stop
/// acknowledging W1's heartbeats (its Raft lease lapsed), so W1 kills its job before the
/// retry starts — the two attempts never overlap — and its `/api/health` turns 503 so a
/// load balancer stops sending it clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leaders_worker_stops_before_the_majority_reruns_its_job() {
    let c = Cluster::start_with(3, 500).run_as_own_users().start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let leader = c.leader_seen_by(0).await.expect("a leader") as usize - 1;
    let majority = (leader + 1) % 3;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let mut w1 = spawn_worker(&c, leader, "w1");
    let body = json!({"name": "long", "executor": "shell", "command": timeline_job(&log, 25), "timeout_seconds": 60});
    let task = c.post(leader, "/api/tasks", Some(body)).await;
    let task = task["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {task}"));
    let run = c.post(leader, &format!("/api/tasks/{task}/trigger"), None).await;
    let run = run["data"]["id"].as_u64().unwrap_or_else(|| panic!("trigger failed: {run}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while run_of(&c, leader, run).await["status"] != "running" {
        assert!(Instant::now() < deadline, "the run never started on w1; logs: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // W2 exists only on the majority side, and only once the run is W1's.
    let mut w2 = spawn_worker(&c, majority, "w2");

    let cut = c.isolate(leader);
    let cut_at = Instant::now();
    // The old leader reports itself unhealthy once its quorum has been silent for an
    // election timeout.
    loop {
        if health_status(&c, leader).await == Some(503) {
            break;
        }
        assert!(cut_at.elapsed() < Duration::from_secs(5), "the isolated leader still answers /api/health 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The majority re-runs the job on W2.
    let retry = loop {
        let runs = c.get(majority, &format!("/api/tasks/{task}/runs?consistency=local")).await;
        let items = runs["data"]["items"].as_array().cloned().unwrap_or_default();
        if let Some(r) = items.iter().find(|r| r["retry_of"].as_u64() == Some(run) && r["status"] == "running") {
            break r.clone();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "no retry running on the majority side; logs: {}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retry["worker_id"], "w2", "{retry}");
    // Let the retry run a while beside whatever W1 may still be doing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(cut);

    let spans = intervals(&log);
    let (first, second) = (spans.get(&1).copied(), spans.get(&2).copied());
    let (Some(first), Some(second)) = (first, second) else { panic!("both attempts should have logged: {spans:?}") };
    assert!(
        first.1 < second.0,
        "attempt 1 was still running {} ms after attempt 2 started",
        (first.1 - second.0) / 1_000_000
    );
    for w in [&mut w1, &mut w2] {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// The pid attempt `attempt`'s job wrote beside `log`, once it did.
async fn job_pid(log: &Path, attempt: u32) -> u32 {
    let file = log.with_file_name(format!("pid-{attempt}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(pid) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "attempt {attempt}'s job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !pid_alive(pid)
}

/// A one-node cluster whose worker `w1` runs a 30 s timeline job.
struct TimelineOnW1 {
    c: Cluster,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
    w1: std::process::Child,
    task: u64,
    run: u64,
    /// The job's pid.
    pid: u32,
}

async fn timeline_on_w1() -> TimelineOnW1 {
    let c = Cluster::start(1);
    c.wait_healthy(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let w1 = spawn_worker(&c, 0, "w1");
    let body =
        json!({"name": "timeline", "executor": "shell", "command": timeline_job(&log, 30), "timeout_seconds": 120});
    let task = c.post(0, "/api/tasks", Some(body)).await;
    let task = task["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {task}"));
    let run = c.post(0, &format!("/api/tasks/{task}/trigger"), None).await;
    let run = run["data"]["id"].as_u64().unwrap_or_else(|| panic!("trigger failed: {run}"));
    let pid = job_pid(&log, 1).await;
    // The job writes its pid before its first line: a kill in between left attempt 1 with
    // no line, and the check of the two attempts' spans had nothing to compare (CI).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !intervals(&log).contains_key(&1) {
        assert!(Instant::now() < deadline, "attempt 1's job logged nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TimelineOnW1 { c, _dir: dir, log, w1, task, run, pid }
}

/// Asserts attempt 1 had ended (last line logged) before attempt 2 began.
fn assert_attempts_apart(log: &Path) {
    let spans = intervals(log);
    let (Some(first), Some(second)) = (spans.get(&1).copied(), spans.get(&2).copied()) else {
        panic!("both attempts should have logged: {spans:?}")
    };
    assert!(first.1 < second.0, "attempt 1 still ran {} ms after attempt 2 began", (first.1 - second.0) / 1_000_000);
}

/// Waits until the run's retry is running, read through node 0.
async fn retry_running(c: &Cluster, task: u64, run: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let runs = c.get(0, &format!("/api/tasks/{task}/runs")).await;
        let items = runs["data"]["items"].as_array().cloned().unwrap_or_default();
        if let Some(r) = items.iter().find(|r| r["retry_of"].as_u64() == Some(run) && r["status"] == "running") {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no retry running: {runs}; logs: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Regression test: `kill -9` of `raftcron worker` left its job running, and the cluster's
/// retry ran beside the orphan. The job's shim sees the agent's pipe close and kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agents_job_dies_with_it_and_the_retry_runs_alone() {
    let TimelineOnW1 { c, _dir, log, mut w1, task, run, pid } = timeline_on_w1().await;
    w1.kill().unwrap(); // SIGKILL of the agent alone; its shim lives on
    w1.wait().unwrap();
    assert!(wait_gone(pid, Duration::from_secs(1)).await, "the killed agent's job still runs");
    let mut w2 = spawn_worker(&c, 0, "w2");
    let retry = retry_running(&c, task, run, Duration::from_secs(20)).await;
    assert_eq!(retry["worker_id"], "w2", "{retry}");
    job_pid(&log, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_attempts_apart(&log);
    let _ = w2.kill();
    let _ = w2.wait();
}

/// An agent SIGKILLed together with its shims (as an OOM kill or `kill -9` of every
/// `raftcron` process would) leaves its job orphaned; restarted from the same state dir,
/// it finds the record and kills the job before it registers again. Its new incarnation
/// then runs the re-queued attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_kills_what_its_crashed_predecessor_left_running() {
    let TimelineOnW1 { c, _dir, log, mut w1, task, run, pid } = timeline_on_w1().await;
    // The agent and its shims (its children; each leads its own process group), not the job.
    let shims = children_of(w1.id());
    assert!(!shims.is_empty(), "the agent has a shim");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w1.id() as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    for shim in shims {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    w1.kill().unwrap();
    w1.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pid_alive(pid), "the orphaned job should still run: nothing supervises it now");
    let mut again = spawn_worker(&c, 0, "w1");
    assert!(wait_gone(pid, Duration::from_secs(3)).await, "the restarted agent left its predecessor's job running");
    let retry = retry_running(&c, task, run, Duration::from_secs(20)).await;
    assert_eq!(retry["worker_id"], "w1", "{retry}");
    job_pid(&log, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_attempts_apart(&log);
    let _ = again.kill();
    let _ = again.wait();
}

/// Regression test: the shims lived in the agent's process group, so a terminal's Ctrl-C
/// (SIGINT to the whole group) killed them without killing their jobs; the agent then
/// reported the runs failed and the retries ran beside the orphans. Now only the agent gets
/// it: it drains, then its shims kill the jobs, and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_on_the_agent_leaves_no_job_behind() {
    let TimelineOnW1 { c, _dir, log: _, mut w1, task: _, run, pid } = timeline_on_w1().await;
    let group = nix::unistd::Pid::from_raw(-(w1.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT).unwrap();
    // The default drain is 30 s; the job runs on meanwhile (that is what draining means).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pid_alive(pid), "the job should keep running while the agent drains");
    let _ = w1.kill();
    let _ = w1.wait();
    assert!(wait_gone(pid, Duration::from_secs(2)).await, "the job outlived its agent");
    let r = c.get(0, &format!("/api/runs/{run}")).await;
    assert_eq!(r["data"]["status"], "running", "nothing reported the run finished while its job ran: {r}");
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}
