//! The process-test fixture: `raftcron serve` nodes and `raftcron worker` agents as real
//! child processes, their configs and logs in a temp dir, and an HTTP client for them.
//!
//! Ports: a process cannot be handed a bound socket portably, so each node's ports are
//! chosen here and probed free before the node starts. They are drawn from below the
//! kernel's ephemeral range (`ip_local_port_range`), which the other tests' port-0
//! listeners and every outgoing connection use; a port from inside it was once taken by
//! such a socket between the probe and the node's bind.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEY: &str = "process-test-key";
/// Distinctive, so a test can search a job's output for it.
pub const CLUSTER_SECRET: &str = "process-test-cluster-secret-5f1c0e";
/// The shortest the configuration accepts, so worker-loss tests see a worker declared
/// offline quickly.
pub const WORKER_TIMEOUT_S: u64 = 4;
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub struct Node {
    pub id: u64,
    pub http: String,
    pub rpc_port: u16,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// The user the node runs as (see [`Cluster::run_as_own_users`]); the test's otherwise.
    pub uid: Option<u32>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub _dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// `RUST_LOG` for the nodes and workers started from now on (see [`Cluster::log_filter`]).
    pub log_filter: Option<String>,
}

pub fn free_port() -> u16 {
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
    pub fn start(n: u64) -> Cluster {
        Self::start_with(n, 500).start_all()
    }

    pub fn start_with(n: u64, election_timeout_ms: u64) -> Cluster {
        Self::configured(n, election_timeout_ms, "")
    }

    /// `n` nodes (not started yet) whose config files end with `extra` (TOML sections).
    pub fn configured(n: u64, election_timeout_ms: u64, extra: &str) -> Cluster {
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
                     [cluster]\npeers = [{}]\nheartbeat_ms = 50\nelection_timeout_ms = {election_timeout_ms}\nsecret = \"{CLUSTER_SECRET}\"\n\
                     [scheduler]\nworker_timeout_s = {WORKER_TIMEOUT_S}\n{extra}",
                    peers.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Node { id, http: format!("127.0.0.1:{http}"), rpc_port: *rpc, config, child: None, uid: None });
        }
        Cluster {
            nodes,
            _dir: dir,
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
            log_filter: None,
        }
    }

    /// Runs each node as a user of its own (uids from a per-process base), so iptables can
    /// tell their packets apart on loopback (`-m owner`). Needs root.
    pub fn run_as_own_users(mut self) -> Self {
        use std::os::unix::fs::PermissionsExt;
        assert!(nix::unistd::Uid::effective().is_root(), "running nodes as other users needs root");
        let base = 61_000 + (std::process::id() % 1000) * 4;
        std::fs::set_permissions(self._dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let uid = base + i as u32;
            let data = self._dir.path().join(format!("data{}", node.id));
            std::fs::create_dir_all(&data).unwrap();
            std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
            node.uid = Some(uid);
        }
        self
    }

    /// Cuts node `i` off from every other node's RPC port, and them from its own, until the
    /// returned guard is dropped. Clients still reach every node's HTTP port.
    pub fn isolate(&self, i: usize) -> Isolation {
        let pairs: Vec<(usize, usize)> = (0..self.nodes.len()).filter(|j| *j != i).map(|j| (i, j)).collect();
        self.cut(&pairs)
    }

    /// Cuts each pair of nodes `(a, b)` apart in both directions (a's connections to b's
    /// RPC port and b's to a's) until the returned guard is dropped. Node-to-node traffic,
    /// forwarded writes included, all goes over RPC; clients still reach every HTTP port.
    pub fn cut(&self, pairs: &[(usize, usize)]) -> Isolation {
        let chain = format!("RC{}C{}", std::process::id(), CUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let iptables = |args: &[&str]| {
            let out = Command::new("iptables").args(args).output().expect("iptables runs");
            assert!(out.status.success(), "iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        iptables(&["-N", &chain]);
        for &(a, b) in pairs {
            for (from, to) in [(a, b), (b, a)] {
                let uid = self.nodes[from].uid.expect("cutting needs run_as_own_users").to_string();
                let port = self.nodes[to].rpc_port.to_string();
                let rule =
                    ["-A", &chain, "-p", "tcp", "-m", "owner", "--uid-owner", &uid, "--dport", &port, "-j", "DROP"];
                iptables(&rule);
            }
        }
        iptables(&["-I", "OUTPUT", "-j", &chain]);
        Isolation { chain }
    }

    /// Nodes and workers started from now on log at `filter` (`RUST_LOG`) instead of the
    /// defaults (`info,openraft=warn` for nodes, `info` for workers).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_string());
        self
    }

    pub fn start_all(mut self) -> Self {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        self
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_with_clock(i, None);
    }

    /// Starts node `i`, optionally under libfaketime with its wall clock shifted by
    /// `offset` (e.g. "-20s"); the monotonic clock stays real.
    pub fn spawn_with_clock(&mut self, i: usize, offset: Option<&str>) {
        self.spawn_node(i, offset, &[]);
    }

    /// Starts node `i` with `extra` arguments after `serve --config FILE`.
    pub fn spawn_node(&mut self, i: usize, offset: Option<&str>, extra: &[&str]) {
        let filter = self.log_filter.clone().unwrap_or_else(|| "info,openraft=warn".to_string());
        let node = &mut self.nodes[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(node.config.with_extension("log")).unwrap();
        let mut cmd = raftcron_command(log);
        if let Some(uid) = node.uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        cmd.args(["serve", "--config"])
            .arg(&node.config)
            .args(extra)
            .env("RAFTCRON_API_KEY", KEY)
            .env("RUST_LOG", filter);
        if let Some(offset) = offset {
            cmd.env("LD_PRELOAD", FAKETIME_LIB).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().expect("raftcron binary starts");
        node.child = Some(child);
    }

    pub fn signal_term(&mut self, i: usize) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub async fn leader_seen_by(&self, i: usize) -> Option<u64> {
        let r = self.http.get(format!("http://{}/api/health", self.nodes[i].http)).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        v["data"]["raft"]["leader_id"].as_u64()
    }

    /// The Raft term node `i` is in, from its health report.
    pub async fn term_seen_by(&self, i: usize) -> Option<u64> {
        let r = self.http.get(format!("http://{}/api/health", self.nodes[i].http)).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        v["data"]["raft"]["term"].as_u64()
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn wait_healthy(&self, within: Duration) {
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

    pub fn logs(&self) -> String {
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

    pub async fn get(&self, i: usize, path: &str) -> Value {
        let url = format!("http://{}{path}", self.nodes[i].http);
        self.http.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post(&self, i: usize, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.post(format!("http://{}{path}", self.nodes[i].http)).bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    /// Every task name, read linearizably through node `i`.
    pub async fn task_names(&self, i: usize) -> BTreeSet<String> {
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

/// Numbers the iptables chains of one test process.
static CUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// iptables rules that cut nodes apart; removed on drop (also when a test panics).
pub struct Isolation {
    chain: String,
}

impl Drop for Isolation {
    fn drop(&mut self) {
        for args in [vec!["-D", "OUTPUT", "-j", &self.chain], vec!["-F", &self.chain], vec!["-X", &self.chain]] {
            let _ = Command::new("iptables").args(&args).output();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The `raftcron` binary with stderr to `log` and an environment of `PATH` only (callers
/// add what they mean to pass), so what reaches a process is exactly what a test gave it.
pub fn raftcron_command(log: std::fs::File) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// A `raftcron worker` process with the admin key, its log beside the nodes' logs.
pub fn spawn_worker(c: &Cluster, node: usize, id: &str) -> Child {
    spawn_worker_with(c, node, id, &[])
}

/// [`spawn_worker`] with `extra` arguments. The agent leads its own process group (so a
/// test can kill it together with the shims it started) and keeps its state in
/// `worker-ID-state` beside the nodes' files (so a restarted agent finds its records).
pub fn spawn_worker_with(c: &Cluster, node: usize, id: &str, extra: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.nodes[node].config.with_file_name(format!("worker-{id}.log")))
        .unwrap();
    let state = c.nodes[node].config.with_file_name(format!("worker-{id}-state"));
    raftcron_command(log)
        .args(["worker", "--server", &format!("http://{}", c.nodes[node].http), "--id", id, "--max-tasks", "1"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .process_group(0)
        .env("RAFTCRON_WORKER_KEY", KEY)
        .env("RUST_LOG", c.log_filter.as_deref().unwrap_or("info"))
        .spawn()
        .expect("worker starts")
}

pub fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
