//! Client processes and the operations they run against the cluster.
//!
//! - **register**: `REGISTERS` tasks act as registers; their `command` is the value and
//!   their `version` orders the writes. Operations: `read`, and `cas` (PUT with `If-Match`
//!   of the version this process last read).
//! - **set**: unique task creates (`add`); a reader lists the whole set (`set-read`)
//!   through each node in turn during the run, and after healing through every node.
//!
//! The first clients of each workload stick to one node each, so every node serves every
//! workload; the others go through a round-robin "load balancer" (see [`Route`]).

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::history::{Kind, Recorder};
use crate::net::API_KEY;

pub const REGISTERS: usize = 3;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Register,
    Set,
    /// Manual triggers and cancels run by workers: see `crate::runs`.
    Runs,
    /// Cron and `@every` tasks under edits, pauses and resumes: see `crate::schedule`.
    Schedule,
}

impl Workload {
    /// Whether its tasks need worker agents to run them.
    pub fn needs_workers(self) -> bool {
        matches!(self, Workload::Runs | Workload::Schedule)
    }

    pub fn parse(s: &str) -> anyhow::Result<Vec<Workload>> {
        s.split(',')
            .map(|w| match w.trim() {
                "register" => Ok(Workload::Register),
                "set" => Ok(Workload::Set),
                "runs" => Ok(Workload::Runs),
                "schedule" => Ok(Workload::Schedule),
                other => anyhow::bail!("unknown workload {other:?}; expected register, set, runs, schedule"),
            })
            .collect()
    }
}

/// How one request ended, in the history's terms.
pub enum Outcome {
    Ok(Value),
    Fail(String),
    Info(String),
}

pub struct Client {
    http: reqwest::Client,
    pub nodes: Vec<String>,
    /// The load balancer's next node.
    next: std::sync::atomic::AtomicUsize,
}

impl Client {
    pub fn new(nodes: Vec<String>) -> Client {
        Client {
            http: reqwest::Client::builder().timeout(OP_TIMEOUT).build().expect("http client"),
            nodes,
            next: Default::default(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        node: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Outcome {
        let mut rb = self.http.request(method.clone(), format!("http://{node}{path}")).bearer_auth(API_KEY);
        if let Some(v) = if_match {
            rb = rb.header("If-Match", format!("\"{v}\""));
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Self::outcome(method, rb).await
    }

    /// A write with an `Idempotency-Key` (sent again with the same key and body after an
    /// unknown outcome).
    pub async fn request_keyed(
        &self,
        method: reqwest::Method,
        node: &str,
        path: &str,
        body: Option<Value>,
        key: &str,
    ) -> Outcome {
        let mut rb = self
            .http
            .request(method.clone(), format!("http://{node}{path}"))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Self::outcome(method, rb).await
    }

    async fn outcome(method: reqwest::Method, rb: reqwest::RequestBuilder) -> Outcome {
        let method_is_read = method == reqwest::Method::GET;
        match rb.send().await {
            Err(e) if e.is_connect() => Outcome::Fail(format!("connect: {e}")),
            Err(e) => Outcome::Info(format!("transport: {e}")),
            Ok(resp) => {
                let status = resp.status();
                let body: Value = match resp.json().await {
                    Ok(v) => v,
                    // A success whose body did not arrive whole: a read learned nothing,
                    // a write may have applied.
                    Err(e) if status.is_success() && method_is_read => {
                        return Outcome::Fail(format!("{status} with an unreadable body: {e}"))
                    }
                    Err(e) if status.is_success() => {
                        return Outcome::Info(format!("{status} with an unreadable body: {e}"))
                    }
                    Err(_) => Value::Null,
                };
                match status {
                    s if s.is_success() => Outcome::Ok(body["data"].clone()),
                    StatusCode::GATEWAY_TIMEOUT => Outcome::Info("504".into()),
                    s if s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE => {
                        Outcome::Fail(s.as_u16().to_string())
                    }
                    s => Outcome::Info(s.as_u16().to_string()),
                }
            }
        }
    }
}

/// Creates the registers before faults start.
pub async fn setup_registers(client: &Client) -> anyhow::Result<()> {
    for k in 0..REGISTERS {
        let body = json!({"name": format!("reg-{k}"), "executor": "shell", "command": crate::checker::INITIAL_VALUE});
        let mut tries = 0;
        loop {
            tries += 1;
            match client.request(reqwest::Method::POST, &client.nodes[0], "/api/tasks", Some(body.clone()), None).await
            {
                Outcome::Ok(_) => break,
                Outcome::Fail(e) if e.starts_with("409") => break,
                _ if tries < 50 => tokio::time::sleep(Duration::from_millis(200)).await,
                other => anyhow::bail!("cannot create register {k}: {}", describe(&other)),
            }
        }
    }
    Ok(())
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Ok(v) => format!("ok {v}"),
        Outcome::Fail(e) => format!("fail {e}"),
        Outcome::Info(e) => format!("info {e}"),
    }
}

/// Register ids by name, read once after setup.
pub async fn register_ids(client: &Client) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for k in 0..REGISTERS {
        let path = format!("/api/tasks?search=reg-{k}");
        match client.request(reqwest::Method::GET, &client.nodes[0], &path, None, None).await {
            Outcome::Ok(v) => {
                let id = v["items"]
                    .as_array()
                    .and_then(|items| items.iter().find(|t| t["name"] == format!("reg-{k}")))
                    .and_then(|t| t["id"].as_u64())
                    .ok_or_else(|| anyhow::anyhow!("register reg-{k} not found"))?;
                ids.push(id);
            }
            other => anyhow::bail!("cannot list registers: {}", describe(&other)),
        }
    }
    Ok(ids)
}

/// When the clients stop: set once the nemesis is done (after its time limit, or after
/// each family ran once).
#[derive(Clone, Default)]
pub struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn running(&self) -> bool {
        !self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Which node a client process sends each operation to.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// Always the same node.
    Sticky(usize),
    /// The next node in turn, shared by all balanced clients: a round-robin load balancer.
    Balanced,
}

impl Route {
    /// Client `i` of a workload: the first `nodes` clients stick to one node each, so every
    /// node serves every workload; the rest go through the load balancer.
    pub fn for_client(i: u64, nodes: usize) -> Route {
        if (i as usize) < nodes {
            Route::Sticky(i as usize)
        } else {
            Route::Balanced
        }
    }

    pub fn pick(self, client: &Client) -> String {
        let i = match self {
            Route::Sticky(i) => i,
            Route::Balanced => client.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        client.nodes[i % client.nodes.len()].clone()
    }
}

/// One logical client: runs operations until `stop` is set, retiring its process id after an
/// indeterminate write (`process += stride`).
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    first_process: u64,
    stride: u64,
    route: Route,
    workload: Workload,
    client: std::sync::Arc<Client>,
    registers: Vec<u64>,
    rec: Recorder,
    stop: Stop,
) {
    let mut process = first_process;
    let mut n = 0u64;
    let mut last_version = vec![None::<u64>; registers.len()];
    while stop.running() {
        n += 1;
        let node = route.pick(&client);
        let retire = match workload {
            // Their clients are `crate::runs::run_client` and `crate::schedule::run_client`.
            Workload::Runs | Workload::Schedule => return,
            Workload::Set => {
                let name = format!("set-{process}-{n}");
                rec.record(process, Kind::Invoke, "add", json!(name), &node, None);
                let body = json!({"name": name, "executor": "shell", "command": "true"});
                let out = client.request(reqwest::Method::POST, &node, "/api/tasks", Some(body), None).await;
                complete(&rec, process, "add", json!(name), &node, out)
            }
            Workload::Register => {
                let k = rand::rng().random_range(0..registers.len());
                let path = format!("/api/tasks/{}", registers[k]);
                match last_version[k] {
                    Some(from) if rand::rng().random_bool(0.5) => {
                        let value = format!("echo {process}-{n}");
                        rec.record(
                            process,
                            Kind::Invoke,
                            "cas",
                            json!({"key": k, "from": from, "to": value}),
                            &node,
                            None,
                        );
                        let out = client
                            .request(reqwest::Method::PUT, &node, &path, Some(json!({"command": value})), Some(from))
                            .await;
                        if let Outcome::Ok(v) = &out {
                            last_version[k] = v["version"].as_u64();
                        }
                        complete(&rec, process, "cas", json!({"key": k}), &node, map_ok(out, |v| register_value(k, v)))
                    }
                    _ => {
                        rec.record(process, Kind::Invoke, "read", json!({"key": k}), &node, None);
                        let out = client.request(reqwest::Method::GET, &node, &path, None, None).await;
                        if let Outcome::Ok(v) = &out {
                            last_version[k] = v["version"].as_u64();
                        }
                        // A read changes nothing, so an unknown outcome needs no retirement.
                        complete(
                            &rec,
                            process,
                            "read",
                            json!({"key": k}),
                            &node,
                            map_ok(out, |v| register_value(k, v)),
                        );
                        false
                    }
                }
            }
        };
        if retire {
            process += stride;
        }
        // Pace the loop: a refused connection fails in microseconds, and a tight loop
        // against a dead node would only inflate the history.
        tokio::time::sleep(Duration::from_millis(if rec.last_ok(process) { 5 } else { 50 })).await;
    }
}

fn register_value(k: usize, task: &Value) -> Value {
    json!({"key": k, "version": task["version"], "value": task["command"]})
}

/// Every set element (`set-*` task name) as `node` sees it, page by page in id order.
/// The first page that does not succeed decides the outcome of the whole read.
async fn read_set(client: &Client, node: &str) -> Outcome {
    let mut names = Vec::new();
    for page in 1.. {
        let path = format!("/api/tasks?size=100&page={page}");
        match client.request(reqwest::Method::GET, node, &path, None, None).await {
            Outcome::Ok(v) => {
                let Some(items) = v["items"].as_array().cloned() else {
                    return Outcome::Fail(format!("page {page} without items: {v}"));
                };
                if items.is_empty() {
                    break;
                }
                names.extend(
                    items
                        .iter()
                        .filter_map(|t| t["name"].as_str())
                        .filter(|n| n.starts_with("set-"))
                        .map(str::to_string),
                );
            }
            other => return other,
        }
    }
    Outcome::Ok(json!(names))
}

/// The set workload's reader: reads the whole set through each node in turn, with a
/// pause between reads, until `stop` is set.
pub async fn run_set_reader(process: u64, client: std::sync::Arc<Client>, rec: Recorder, stop: Stop) {
    let mut turn = 0usize;
    while stop.running() {
        let node = client.nodes[turn % client.nodes.len()].clone();
        turn += 1;
        rec.record(process, Kind::Invoke, "set-read", json!({"final": false}), &node, None);
        let out = read_set(&client, &node).await;
        complete(&rec, process, "set-read", json!({"final": false}), &node, out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The outcome with an ok value mapped through `f`.
pub fn map_ok(o: Outcome, f: impl Fn(&Value) -> Value) -> Outcome {
    match o {
        Outcome::Ok(v) => Outcome::Ok(f(&v)),
        other => other,
    }
}

/// Records a completion; returns whether the process must retire (unknown outcome).
pub fn complete(rec: &Recorder, process: u64, f: &str, args: Value, node: &str, out: Outcome) -> bool {
    match out {
        Outcome::Ok(v) => {
            rec.record(process, Kind::Ok, f, v, node, None);
            false
        }
        Outcome::Fail(e) => {
            rec.record(process, Kind::Fail, f, args, node, Some(e));
            false
        }
        Outcome::Info(e) => {
            rec.record(process, Kind::Info, f, args, node, Some(e));
            true
        }
    }
}

/// After healing: the whole set and each register, read through each node.
pub async fn final_reads(client: &Client, registers: &[u64], sets: bool, rec: &Recorder) {
    for (i, node) in client.nodes.iter().enumerate() {
        let process = FINAL_PROCESS + i as u64;
        if sets {
            rec.record(process, Kind::Invoke, "set-read", json!({"final": true}), node, None);
            let out = read_set(client, node).await;
            complete(rec, process, "set-read", json!({"final": true}), node, out);
        }
        for (k, id) in registers.iter().enumerate() {
            rec.record(process, Kind::Invoke, "read", json!({"key": k}), node, None);
            let out = client.request(reqwest::Method::GET, node, &format!("/api/tasks/{id}"), None, None).await;
            complete(rec, process, "read", json!({"key": k}), node, map_ok(out, |v| register_value(k, v)));
        }
    }
}

/// Process ids of the final reads (one per node), far above any client's.
pub const FINAL_PROCESS: u64 = 1 << 50;
/// The set reader's process id (reads never retire it).
pub const READER_PROCESS: u64 = 1 << 49;
