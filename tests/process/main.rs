//! Durability with real processes: `raftcron serve` nodes SIGKILLed while writes are in
//! flight, restarted from their data dirs. Every acknowledged write must survive.
//!
//! Ports: a process cannot be handed a bound socket portably, so each node's ports are
//! chosen here and probed free before the node starts. They are drawn from below the
//! kernel's ephemeral range (`ip_local_port_range`), which the other tests' port-0
//! listeners and every outgoing connection use; a port from inside it was once taken by
//! such a socket between the probe and the node's bind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

const KEY: &str = "process-test-key";
/// Short, so the worker-loss test sees a worker declared offline quickly.
const WORKER_TIMEOUT_S: u64 = 2;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

struct Node {
    id: u64,
    http: String,
    config: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_100));
    for _ in 0..1000 {
        let port = rand::random_range(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        Self::start_with(n, 500).start_all()
    }

    fn start_with(n: u64, election_timeout_ms: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let peers: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, rpc))| format!("\"{}=127.0.0.1:{rpc}\"", i + 1)).collect();
        let mut nodes = Vec::new();
        for (i, (http, rpc)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let config = dir.path().join(format!("node{id}.toml"));
            let data = dir.path().join(format!("data{id}"));
            std::fs::write(
                &config,
                format!(
                    "[node]\nid = {id}\ndata_dir = {data:?}\nhttp_addr = \"127.0.0.1:{http}\"\nrpc_addr = \"127.0.0.1:{rpc}\"\n\
                     [cluster]\npeers = [{}]\nheartbeat_ms = 50\nelection_timeout_ms = {election_timeout_ms}\nsecret = \"s\"\n\
                     [scheduler]\nworker_timeout_s = {WORKER_TIMEOUT_S}\n",
                    peers.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Node { id, http: format!("127.0.0.1:{http}"), config, child: None });
        }
        Cluster { nodes, _dir: dir, http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap() }
    }

    fn start_all(mut self) -> Self {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        self
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with_clock(i, None);
    }

    /// Starts node `i`, optionally under libfaketime with its wall clock shifted by
    /// `offset` (e.g. "-20s"); the monotonic clock stays real.
    fn spawn_with_clock(&mut self, i: usize, offset: Option<&str>) {
        let node = &mut self.nodes[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(node.config.with_extension("log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
        cmd.args(["serve", "--config"])
            .arg(&node.config)
            .env("RAFTCRON_API_KEY", KEY)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(offset) = offset {
            cmd.env("LD_PRELOAD", FAKETIME_LIB).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().expect("raftcron binary starts");
        node.child = Some(child);
    }

    fn signal_term(&mut self, i: usize) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    async fn leader_seen_by(&self, i: usize) -> Option<u64> {
        let r = self.http.get(format!("http://{}/api/health", self.nodes[i].http)).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        v["data"]["raft"]["leader_id"].as_u64()
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        'outer: loop {
            assert!(Instant::now() < deadline, "cluster not healthy within {within:?}; logs: {}", self.logs());
            for n in &self.nodes {
                let ok = match self.http.get(format!("http://{}/api/health", n.http)).send().await {
                    Ok(r) => r.status() == 200,
                    Err(_) => false,
                };
                if !ok {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'outer;
                }
            }
            return;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.config.with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!(
                "\n--- node {} ---\n{}",
                n.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }

    async fn get(&self, i: usize, path: &str) -> Value {
        let url = format!("http://{}{path}", self.nodes[i].http);
        self.http.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
    }

    async fn post(&self, i: usize, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.post(format!("http://{}{path}", self.nodes[i].http)).bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    /// Every task name, read linearizably through node `i`.
    async fn task_names(&self, i: usize) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for page in 1.. {
            let v = self.get(i, &format!("/api/tasks?size=100&page={page}")).await;
            let items = v["data"]["items"].as_array().unwrap_or_else(|| panic!("list failed: {v}"));
            if items.is_empty() {
                break;
            }
            names.extend(items.iter().map(|t| t["name"].as_str().unwrap().to_string()));
        }
        names
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[derive(Default)]
struct Outcomes {
    acked: BTreeSet<String>,
    attempted: BTreeSet<String>,
}

/// Creates uniquely named tasks through rotating nodes until `stop`.
async fn write_until(
    http: reqwest::Client,
    urls: Vec<String>,
    client: usize,
    stop: Instant,
    out: Arc<Mutex<Outcomes>>,
) {
    let mut n = 0;
    while Instant::now() < stop {
        n += 1;
        let name = format!("c{client}-{n}");
        out.lock().await.attempted.insert(name.clone());
        let url = &urls[(client + n) % urls.len()];
        let resp = http
            .post(format!("http://{url}/api/tasks"))
            .bearer_auth(KEY)
            .json(&json!({"name": name, "executor": "shell", "command": "true"}))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 201 => {
                out.lock().await.acked.insert(name);
            }
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn assert_no_loss(c: &Cluster, out: &Outcomes) {
    for i in 0..c.nodes.len() {
        let names = c.task_names(i).await;
        let lost: Vec<_> = out.acked.difference(&names).collect();
        assert!(lost.is_empty(), "node {}: acknowledged creates lost: {lost:?}", i + 1);
        let phantom: Vec<_> = names.difference(&out.attempted).collect();
        assert!(phantom.is_empty(), "node {}: tasks nobody created: {phantom:?}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_every_node_mid_write_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(30)).await;
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let urls: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let stop = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> =
        (0..6).map(|k| tokio::spawn(write_until(c.http.clone(), urls.clone(), k, stop, out.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        c.kill(i);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked_before_crash = out.lock().await.acked.len();
    assert!(acked_before_crash > 10, "too few writes were acknowledged to test anything: {acked_before_crash}");
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_healthy(Duration::from_secs(30)).await;
    assert_no_loss(&c, &*out.lock().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_killed_mid_stream_recovers_and_catches_up() {
    let mut c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(30)).await;
    let out = Arc::new(Mutex::new(Outcomes::default()));
    // Writes go only to nodes 1 and 2; node 3 is killed and restarted meanwhile.
    let urls: Vec<String> = c.nodes[..2].iter().map(|n| n.http.clone()).collect();
    let stop = Instant::now() + Duration::from_secs(4);
    let writers: Vec<_> =
        (0..4).map(|k| tokio::spawn(write_until(c.http.clone(), urls.clone(), k, stop, out.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.kill(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.spawn(2);
    for w in writers {
        w.await.unwrap();
    }
    c.wait_healthy(Duration::from_secs(30)).await;
    assert_no_loss(&c, &*out.lock().await).await;
    // And the replicas converge to the same applied index and state digest.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = c.get(0, "/api/cluster").await;
        let applied: BTreeSet<String> =
            v["data"]["members"].as_array().unwrap().iter().map(|m| m["status"]["applied_index"].to_string()).collect();
        if applied.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "applied indexes differ: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn invalid_config_and_busy_port_fail_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_raftcron");
    let run = |config: &Path| {
        let out = Command::new(bin).args(["serve", "--config"]).arg(config).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[node]\nid = 1\nhttp_adress = \"127.0.0.1:1\"\n").unwrap();
    let (ok, err) = run(&cfg);
    assert!(!ok);
    assert!(err.contains("http_adress") && err.starts_with("error:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = 1\ndata_dir = {:?}\nhttp_addr = \"127.0.0.1:{port}\"\nrpc_addr = \"127.0.0.1:0\"\n",
            dir.path().join("d")
        ),
    )
    .unwrap();
    let (ok, err) = run(&cfg);
    assert!(!ok);
    assert!(err.contains("node.http_addr") && err.contains(&port.to_string()), "{err}");

    let (ok, err) = run(&dir.path().join("missing.toml"));
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_leader_hands_over_before_the_election_timeout() {
    // A long election timeout: only a handover can produce a new leader well before it.
    let mut c = Cluster::start_with(3, 3000).start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let leader = c.leader_seen_by(0).await.expect("a leader") as usize - 1;
    let other = (leader + 1) % 3;
    let signalled = Instant::now();
    c.signal_term(leader);
    let new_leader = loop {
        match c.leader_seen_by(other).await {
            Some(l) if l as usize - 1 != leader => break l,
            _ => {}
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "no new leader; logs: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "new leader {new_leader} after {took:?}: no handover? logs: {}",
        c.logs()
    );
    let status = c.nodes[leader].child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
    c.nodes[leader].child = None;
}

/// Guarantee 3 under clock skew: nodes whose wall clocks run 20 s behind and 5 s ahead take
/// turns leading a per-second task; no tick gets two runs, and fired + skipped accounts for
/// exactly the ticks up to the task's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_leaders_never_fire_a_tick_twice_and_account_for_every_tick() {
    if !Path::new(FAKETIME_LIB).exists() {
        panic!("libfaketime is missing: install the faketime package (scripts/install-deps.sh faketime)");
    }
    let mut c = Cluster::start_with(3, 500);
    c.spawn(0);
    c.spawn_with_clock(1, Some("-20s"));
    c.spawn_with_clock(2, Some("+5s"));
    c.wait_healthy(Duration::from_secs(30)).await;
    let body = json!({"name": "skewed", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let created = c.post(0, "/api/tasks", Some(body)).await;
    let id = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {created}"));
    // Move leadership around: kill whoever leads, three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = c.get(0, "/api/health").await["data"]["raft"]["leader_id"].as_u64().unwrap_or(1) as usize - 1;
        c.kill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match leader {
            1 => c.spawn_with_clock(1, Some("-20s")),
            2 => c.spawn_with_clock(2, Some("+5s")),
            _ => c.spawn(0),
        }
        c.wait_healthy(Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let task = c.get(0, &format!("/api/tasks/{id}")).await;
    let mut ticks = Vec::new();
    for page in 1.. {
        let v = c.get(0, &format!("/api/tasks/{id}/runs?size=100&page={page}")).await;
        let items = v["data"]["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        ticks.extend(items.iter().map(|r| r["scheduled_at"].as_str().unwrap().to_string()));
    }
    let distinct: BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
    let created_at = parse(task["data"]["created_at"].as_str().unwrap());
    let cursor = parse(task["data"]["cursor"].as_str().unwrap());
    let fired = task["data"]["fire_count"].as_u64().unwrap();
    let skipped = task["data"]["skipped_ticks"].as_u64().unwrap();
    // Whole seconds in (created_at, cursor]: `created_at` has sub-second precision, so the
    // first tick is the next whole second.
    let expected = (cursor - created_at) as u64;
    assert_eq!(fired, ticks.len() as u64);
    assert_eq!(fired + skipped, expected, "fired {fired} + skipped {skipped} != {expected} ticks up to the cursor");
    assert!(fired > 0);
}

/// A `raftcron worker` process with the admin key, its log beside the nodes' logs.
fn spawn_worker(c: &Cluster, node: usize, id: &str) -> Child {
    let log = std::fs::File::create(c.nodes[node].config.with_file_name(format!("worker-{id}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_raftcron"))
        .args(["worker", "--server", &format!("http://{}", c.nodes[node].http), "--id", id, "--max-tasks", "1"])
        .env("RAFTCRON_WORKER_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("worker starts")
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

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
