//! Client processes and the operations they run against the cluster.
//!
//! - **register**: `REGISTERS` tasks act as registers; their `command` is the value and
//!   their `version` orders the writes. Operations: `read`, and `cas` (PUT with `If-Match`
//!   of the version this process last read).
//! - **set**: unique task creates (`add`) through any node; after healing, a `final-read`
//!   of every task name from every node.
//!
//! Half the processes stick to one node; the other half pick a random node for every
//! operation (the load-balancer path).

use std::time::{Duration, Instant};

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
}

impl Workload {
    pub fn parse(s: &str) -> anyhow::Result<Vec<Workload>> {
        s.split(',')
            .map(|w| match w.trim() {
                "register" => Ok(Workload::Register),
                "set" => Ok(Workload::Set),
                other => anyhow::bail!("unknown workload {other:?}; expected register, set"),
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
}

impl Client {
    pub fn new(nodes: Vec<String>) -> Client {
        Client { http: reqwest::Client::builder().timeout(OP_TIMEOUT).build().expect("http client"), nodes }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        node: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Outcome {
        let mut rb = self.http.request(method, format!("http://{node}{path}")).bearer_auth(API_KEY);
        if let Some(v) = if_match {
            rb = rb.header("If-Match", format!("\"{v}\""));
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        match rb.send().await {
            Err(e) if e.is_connect() => Outcome::Fail(format!("connect: {e}")),
            Err(e) => Outcome::Info(format!("transport: {e}")),
            Ok(resp) => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
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
        let body = json!({"name": format!("reg-{k}"), "executor": "shell", "command": "echo init"});
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

/// One logical client: runs operations until `stop`, retiring its process id after an
/// indeterminate outcome.
pub async fn run_client(
    slot: u64,
    slots: u64,
    workload: Workload,
    client: std::sync::Arc<Client>,
    registers: Vec<u64>,
    rec: Recorder,
    stop: Instant,
) {
    let mut process = slot;
    let sticky = slot.is_multiple_of(2);
    let mut n = 0u64;
    let mut last_version = vec![None::<u64>; registers.len()];
    while Instant::now() < stop {
        n += 1;
        let node = if sticky {
            client.nodes[(slot as usize / 2) % client.nodes.len()].clone()
        } else {
            client.nodes[rand::rng().random_range(0..client.nodes.len())].clone()
        };
        let retire = match workload {
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
                        let result = |v: &Value| json!({"key": k, "version": v["version"], "value": v["command"]});
                        complete(&rec, process, "cas", json!({"key": k}), &node, map_ok(out, result))
                    }
                    _ => {
                        rec.record(process, Kind::Invoke, "read", json!({"key": k}), &node, None);
                        let out = client.request(reqwest::Method::GET, &node, &path, None, None).await;
                        if let Outcome::Ok(v) = &out {
                            last_version[k] = v["version"].as_u64();
                        }
                        let result = |v: &Value| json!({"key": k, "version": v["version"], "value": v["command"]});
                        // A read changes nothing, so an unknown outcome needs no retirement.
                        complete(&rec, process, "read", json!({"key": k}), &node, map_ok(out, result));
                        false
                    }
                }
            }
        };
        if retire {
            process += slots;
        }
        // Pace the loop: a refused connection fails in microseconds, and a tight loop
        // against a dead node would only inflate the history.
        tokio::time::sleep(Duration::from_millis(if rec.last_ok(process) { 5 } else { 50 })).await;
    }
}

fn map_ok(o: Outcome, f: impl Fn(&Value) -> Value) -> Outcome {
    match o {
        Outcome::Ok(v) => Outcome::Ok(f(&v)),
        other => other,
    }
}

/// Records a completion; returns whether the process must retire (unknown outcome).
fn complete(rec: &Recorder, process: u64, f: &str, args: Value, node: &str, out: Outcome) -> bool {
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

/// After healing: every task name as each node sees it (linearizable reads), and each
/// register read through each node.
pub async fn final_reads(client: &Client, registers: &[u64], rec: &Recorder) {
    for node in &client.nodes {
        let mut names = Vec::new();
        let mut complete_read = true;
        for page in 1.. {
            let path = format!("/api/tasks?size=100&page={page}");
            match client.request(reqwest::Method::GET, node, &path, None, None).await {
                Outcome::Ok(v) => {
                    let items = v["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        break;
                    }
                    names.extend(items.iter().filter_map(|t| t["name"].as_str().map(str::to_string)));
                }
                other => {
                    rec.record(u64::MAX, Kind::Fail, "final-read", Value::Null, node, Some(describe(&other)));
                    complete_read = false;
                    break;
                }
            }
        }
        if complete_read {
            rec.record(u64::MAX, Kind::Ok, "final-read", json!(names), node, None);
        }
        for (k, id) in registers.iter().enumerate() {
            rec.record(u64::MAX - 1, Kind::Invoke, "read", json!({"key": k}), node, None);
            let out = client.request(reqwest::Method::GET, node, &format!("/api/tasks/{id}"), None, None).await;
            let result = |v: &Value| json!({"key": k, "version": v["version"], "value": v["command"]});
            complete(rec, u64::MAX - 1, "read", json!({"key": k}), node, map_ok(out, result));
        }
    }
}
