//! `TestCluster`: N real nodes in this process — RocksDB in temp dirs, tarpc and HTTP on
//! listeners bound to port 0 — plus an HTTP client that talks to them over sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftcron::config::Config;
use raftcron::node::{self, Listeners, RunningNode};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const KEY: &str = "test-admin-key";
pub const VIEWER_KEY: &str = "test-viewer-key";
/// A `worker`-role key named `w-keyed`: it may act for that worker only.
pub const WORKER_KEY: &str = "test-worker-key";
pub const OPERATOR_KEY: &str = "test-operator-key";
/// A `worker`-role pool key named `pool-*`, given in the config as the key itself: it may
/// act for any worker whose id starts with `pool-`.
pub const POOL_KEY: &str = "test-pool-worker-key-0123";
/// The nodes accept HS256 JWTs signed with this, issued by `raftcron-test` for `raftcron`.
pub const JWT_SECRET: &str = "test-jwt-secret-test-jwt-secret-0123";

/// An agent config for these tests: the `raftcron` binary built for them supervises each
/// process run (this test binary cannot: it has no `run-shim`).
#[allow(dead_code, reason = "not every bench that includes this fixture starts agents")]
pub fn agent_config(server: String, id: &str, key: &str) -> raftcron::worker::AgentConfig {
    raftcron::worker::AgentConfig {
        shim: Some(env!("CARGO_BIN_EXE_raftcron").into()),
        ..raftcron::worker::AgentConfig::new(server, id, key)
    }
}

pub struct Opts {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_every: u64,
    pub misfire_threshold_s: u64,
    pub run_history_per_task: u32,
    pub worker_timeout_s: u64,
    /// More `section.key=value` settings for every node.
    pub sets: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            heartbeat_ms: 50,
            election_timeout_ms: 400,
            snapshot_every: 10_000,
            misfire_threshold_s: 60,
            run_history_per_task: 100,
            worker_timeout_s: 30,
            sets: Vec::new(),
        }
    }
}

pub struct TestNode {
    pub running: Option<RunningNode>,
    pub http: SocketAddr,
    pub rpc: SocketAddr,
    pub dir: TempDir,
}

pub struct TestCluster {
    pub nodes: BTreeMap<u64, TestNode>,
    pub opts: Opts,
    peers: Vec<String>,
    pub http: reqwest::Client,
}

/// An HTTP answer: status, parsed JSON body (Null when empty), headers.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

pub fn config_for(id: u64, dir: &TempDir, peers: &[String], opts: &Opts) -> Config {
    let mut sets = vec![
        format!("node.id={id}"),
        format!("node.data_dir={:?}", dir.path().to_string_lossy()),
        "node.http_addr=\"127.0.0.1:0\"".into(),
        "node.rpc_addr=\"127.0.0.1:0\"".into(),
        format!("cluster.peers={peers:?}"),
        format!("cluster.heartbeat_ms={}", opts.heartbeat_ms),
        format!("cluster.election_timeout_ms={}", opts.election_timeout_ms),
        format!("cluster.snapshot_every_entries={}", opts.snapshot_every),
        format!("scheduler.misfire_threshold_s={}", opts.misfire_threshold_s),
        format!("scheduler.run_history_per_task={}", opts.run_history_per_task),
        format!("scheduler.worker_timeout_s={}", opts.worker_timeout_s),
        "cluster.secret=\"test-cluster-secret\"".into(),
        format!(
            "auth.api_keys=[{{name=\"viewer\", role=\"viewer\", sha256=\"{}\"}}, {{name=\"w-keyed\", role=\"worker\", sha256=\"{}\"}}, {{name=\"operator\", role=\"operator\", sha256=\"{}\"}}, {{name=\"pool-*\", role=\"worker\", key=\"{POOL_KEY}\"}}]",
            raftcron::config::hash_api_key(VIEWER_KEY),
            raftcron::config::hash_api_key(WORKER_KEY),
            raftcron::config::hash_api_key(OPERATOR_KEY)
        ),
        format!(
            "auth.jwt={{algorithm=\"HS256\", secret=\"{JWT_SECRET}\", issuer=\"raftcron-test\", audience=\"raftcron\", leeway_s=5}}"
        ),
    ];
    sets.extend(opts.sets.iter().cloned());
    Config::load(None, &BTreeMap::new(), &sets).expect("test config is valid")
}

impl TestCluster {
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, Opts::default()).await
    }

    pub async fn start_with(n: u64, opts: Opts) -> TestCluster {
        Self::start_except(n, opts, &[]).await
    }

    /// Binds every node's ports and writes every config, but starts only the nodes not in
    /// `later`; those start with [`TestCluster::start_pending`].
    pub async fn start_except(n: u64, opts: Opts, later: &[u64]) -> TestCluster {
        Self::start_shaped(n, opts, later, |_, rpc| rpc.to_string(), |_, _| {}).await
    }

    /// Like [`TestCluster::start_except`], with each node's RPC address as the others know
    /// it (`advertised(id, bound)`: e.g. a proxy in front of it) and its config changed by
    /// `tweak` before it starts. A node restarted later gets the plain config.
    pub async fn start_shaped(
        n: u64,
        opts: Opts,
        later: &[u64],
        advertised: impl Fn(u64, SocketAddr) -> String,
        tweak: impl Fn(u64, &mut Config),
    ) -> TestCluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let rpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.insert(id, Listeners { http, rpc });
        }
        let peers: Vec<String> =
            listeners.iter().map(|(id, l)| format!("{id}={}", advertised(*id, l.rpc.local_addr().unwrap()))).collect();
        let mut cluster = TestCluster {
            nodes: BTreeMap::new(),
            opts,
            peers,
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        };
        for (id, l) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let (http, rpc) = (l.http.local_addr().unwrap(), l.rpc.local_addr().unwrap());
            if later.contains(&id) {
                // Released now, bound again by `start_pending`.
                drop(l);
                cluster.nodes.insert(id, TestNode { running: None, http, rpc, dir });
                continue;
            }
            let mut config = config_for(id, &dir, &cluster.peers, &cluster.opts);
            tweak(id, &mut config);
            let running = node::start(config, l, &[KEY.to_string()]).await.expect("node starts");
            cluster.nodes.insert(id, TestNode { running: Some(running), http, rpc, dir });
        }
        cluster
    }

    /// Starts a node that `start_except` held back.
    pub async fn start_pending(&mut self, id: u64) {
        self.restart(id).await;
    }

    /// Kills a node abruptly; its data dir stays.
    pub async fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(r) = node.running.take() {
            r.kill().await;
        }
    }

    /// Opens a killed node's RocksDB to tamper with it, as a crash would have left it. The
    /// killed node's last detached tasks (a connection, a blocking read) may hold the db's
    /// lock for a moment after `kill`, so this retries for up to 5 s.
    pub async fn open_killed_db(&self, id: u64) -> std::sync::Arc<rocksdb::DB> {
        assert!(self.nodes[&id].running.is_none(), "node {id} is running");
        let path = self.nodes[&id].dir.path().join("db");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match raftcron::storage::open_db(&path) {
                Ok(db) => return db,
                Err(e) if Instant::now() >= deadline => panic!("node {id}'s db stays locked: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills a node and empties its data dir, as a replaced disk would.
    pub async fn wipe(&mut self, id: u64) {
        self.kill(id).await;
        let dir = self.nodes[&id].dir.path().to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
    }

    /// Restarts a killed node from its data dir on its old addresses.
    pub async fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.running.is_none(), "node {id} is running");
        let listeners = Listeners { http: bind_retrying(node.http).await, rpc: bind_retrying(node.rpc).await };
        // A node added at runtime (`start_extra`) has no static peers.
        let static_member = self.peers.iter().any(|p| p.starts_with(&format!("{id}=")));
        let peers = if static_member { self.peers.clone() } else { Vec::new() };
        let config = config_for(id, &node.dir, &peers, &self.opts);
        node.running = Some(node::start(config, listeners, &[KEY.to_string()]).await.expect("node restarts"));
    }

    /// Starts one more node that is not among the bootstrap peers; it waits to be added.
    pub async fn start_extra(&mut self, id: u64) {
        let listeners = Listeners {
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            rpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(id, &dir, &[], &self.opts);
        let running = node::start(config, listeners, &[KEY.to_string()]).await.expect("node starts");
        let (http, rpc) = (running.http_addr, running.rpc_addr);
        self.nodes.insert(id, TestNode { running: Some(running), http, rpc, dir });
    }

    /// A cluster of one: node `id` seeded from the snapshot file `backup` by
    /// `raftcron::storage::restore` (as `raftcron snapshot restore` does) under
    /// `cluster_id`, then started. More nodes join with [`TestCluster::start_extra`].
    pub async fn start_restored(id: u64, backup: &std::path::Path, cluster_id: &str, opts: Opts) -> TestCluster {
        let listeners = Listeners {
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            rpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let (http, rpc) = (listeners.http.local_addr().unwrap(), listeners.rpc.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let info = raftcron::raft::NodeInfo { rpc_addr: rpc.to_string(), http_addr: http.to_string() };
        raftcron::storage::restore(backup, dir.path(), id, info, cluster_id).expect("restore");
        let config = config_for(id, &dir, &[], &opts);
        let running = node::start(config, listeners, &[KEY.to_string()]).await.expect("restored node starts");
        let mut cluster = TestCluster {
            nodes: BTreeMap::new(),
            opts,
            peers: Vec::new(),
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        };
        cluster.nodes.insert(id, TestNode { running: Some(running), http, rpc, dir });
        cluster
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.running.is_some()).map(|(id, _)| *id).collect()
    }

    pub fn core(&self, id: u64) -> &std::sync::Arc<raftcron::node::NodeCore> {
        &self.nodes[&id].running.as_ref().expect("node is running").core
    }

    /// Waits until every running node agrees on one leader, and returns it.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<u64>> = self.running_ids().iter().map(|id| self.core(*id).leader()).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && self.running_ids().contains(l) {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {within:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn follower(&self, leader: u64) -> u64 {
        *self.running_ids().iter().find(|id| **id != leader).expect("a follower")
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.nodes[&id].http, path)
    }

    pub async fn call(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut rb = self.http.request(method, self.url(id, path)).bearer_auth(KEY);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request reaches the node");
        answer(resp).await
    }

    pub async fn get(&self, id: u64, path: &str) -> Answer {
        self.call(id, Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, id: u64, path: &str, body: Value) -> Answer {
        self.call(id, Method::POST, path, Some(body), &[]).await
    }

    /// Creates a shell task named `name` through node `id`, asserting 201.
    pub async fn create_task(&self, id: u64, name: &str) -> Value {
        let a = self.post(id, "/api/tasks", shell_task(name)).await;
        assert_eq!(a.status, StatusCode::CREATED, "create {name} via {id}: {}", a.body);
        a.data().clone()
    }

    /// Every run of `task`, newest first, read page by page through node `id`.
    pub async fn all_runs(&self, id: u64, task: u64) -> Vec<Value> {
        let mut runs = Vec::new();
        for page in 1.. {
            let a = self.get(id, &format!("/api/tasks/{task}/runs?size=100&page={page}")).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            let items = a.data()["items"].as_array().expect("a page of runs").clone();
            if items.is_empty() {
                break;
            }
            runs.extend(items);
        }
        runs
    }

    /// Waits until all running nodes applied the same index, then returns their digests.
    pub async fn converged_digests(&self, within: Duration) -> BTreeMap<u64, (u64, String)> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = BTreeMap::new();
            for id in self.running_ids() {
                let st = self.core(id).status(true);
                seen.insert(id, (st.applied_index.unwrap_or(0), st.state_digest.unwrap_or_default()));
            }
            let indexes: Vec<u64> = seen.values().map(|(i, _)| *i).collect();
            if indexes.windows(2).all(|w| w[0] == w[1]) {
                // Every maintained index and counter agrees with the tables it follows.
                for id in self.running_ids() {
                    let problems = self.core(id).store.verify().expect("verify");
                    assert!(problems.is_empty(), "node {id}'s indexes disagree with its tables: {problems:#?}");
                }
                return seen;
            }
            assert!(Instant::now() < deadline, "nodes did not converge within {within:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for (_, node) in self.nodes.iter_mut() {
            if let Some(r) = node.running.take() {
                r.kill().await;
            }
        }
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Answer { status, body, headers }
}

pub fn shell_task(name: &str) -> Value {
    serde_json::json!({"name": name, "executor": "shell", "command": "echo hello"})
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}
