//! TLS end to end with certificates from `raftcron certs init`: three `serve` processes
//! speaking mutual TLS to each other (and no cluster secret) and HTTPS to clients; a
//! worker agent and the CLI that trust the cluster CA; a node whose certificate another
//! CA issued kept out.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixture::{raftcron_command, Cluster, KEY};

fn certs_init(dir: &Path, nodes: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.args(["certs", "init", "--dir"]).arg(dir).args(["--hosts", "127.0.0.1,localhost"]);
    for n in nodes {
        cmd.args(["--node", n]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
}

/// Points node `id`'s config at its certificate for both ports and drops the secret.
fn use_tls(config: &Path, certs: &Path, id: u64) {
    let text = std::fs::read_to_string(config).unwrap();
    let secret_line = text.lines().find(|l| l.starts_with("secret = ")).expect("a secret line").to_string();
    let cert = certs.join(format!("node-{id}.pem"));
    let key = certs.join(format!("node-{id}.key"));
    let text = text
        .replace(&format!("{secret_line}\n"), "")
        .replacen("[node]\n", &format!("[node]\nhttp_tls_cert_file = {cert:?}\nhttp_tls_key_file = {key:?}\n"), 1)
        .replacen(
            "[cluster]\n",
            &format!(
                "[cluster]\ntls_ca_file = {:?}\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n",
                certs.join("ca.pem")
            ),
            1,
        );
    std::fs::write(config, text).unwrap();
}

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    let r = client.get(url).bearer_auth(KEY).timeout(Duration::from_secs(3)).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> Value {
    let r = client.post(url).bearer_auth(KEY).json(&body).send().await.unwrap();
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_mutual_tls_serves_https_to_its_workers_and_cli_and_keeps_another_ca_out() {
    let certs = tempfile::tempdir().unwrap();
    let foreign = tempfile::tempdir().unwrap();
    certs_init(certs.path(), &["1", "2", "3"]);
    certs_init(foreign.path(), &["4"]);
    let ca = certs.path().join("ca.pem");
    let mut c = Cluster::start_with(3, 500);
    for i in 0..3 {
        use_tls(&c.nodes[i].config, certs.path(), c.nodes[i].id);
    }
    c = c.start_all();
    let client = https_client(&ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let health = get(&client, &format!("https://{}/api/health", c.nodes[0].http)).await;
        if let Some(id) = health.as_ref().and_then(|h| h["data"]["raft"]["leader_id"].as_u64()) {
            break id;
        }
        assert!(Instant::now() < deadline, "no leader over mutual TLS within 30 s: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Plain HTTP to an HTTPS port gets no answer a client could mistake for one.
    let plain = c.http.get(format!("http://{}/api/health", c.nodes[0].http)).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // A client that does not trust the cluster CA refuses the node.
    assert!(reqwest::Client::new().get(format!("https://{}/api/health", c.nodes[0].http)).send().await.is_err());

    // A write through a follower: forwarded to the leader over mutual TLS.
    let follower = (0..3).find(|i| c.nodes[*i].id != leader).unwrap();
    let base = format!("https://{}", c.nodes[follower].http);
    let body = json!({"name": "over-tls", "executor": "shell", "command": "echo ran-over-tls"});
    let created = post(&client, &format!("{base}/api/tasks"), body).await;
    let task = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create over HTTPS: {created}"));

    // A worker agent that trusts the CA runs it.
    let ca_arg = ca.to_string_lossy().to_string();
    let worker_log = std::fs::File::create(certs.path().join("worker.log")).unwrap();
    let mut worker = raftcron_command(worker_log)
        .args(["worker", "--server", &base, "--ca-file", &ca_arg, "--id", "tls-worker", "--max-tasks", "1"])
        .arg("--state-dir")
        .arg(certs.path().join("worker-state"))
        .env("RAFTCRON_WORKER_KEY", KEY)
        .spawn()
        .unwrap();
    let run = post(&client, &format!("{base}/api/tasks/{task}/trigger"), json!({})).await;
    let run_id = run["data"]["id"].as_u64().unwrap_or_else(|| panic!("trigger: {run}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(&client, &format!("{base}/api/runs/{run_id}")).await.unwrap_or_default();
        if r["data"]["status"] == "succeeded" {
            assert!(r["data"]["output"].as_str().unwrap_or("").contains("ran-over-tls"), "{r}");
            break;
        }
        let worker_log = std::fs::read_to_string(certs.path().join("worker.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the run did not succeed over HTTPS: {r}; worker: {worker_log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();

    // The CLI, with and without the CA.
    let cli = |with_ca: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
        cmd.env_clear().args(["cluster", "status", "--server", &base, "--api-key", KEY]);
        if with_ca {
            cmd.args(["--ca-file", &ca_arg]);
        }
        cmd.output().unwrap()
    };
    let out = cli(true);
    assert!(out.status.success(), "cluster status over HTTPS: {}", String::from_utf8_lossy(&out.stderr));
    let out = cli(false);
    assert!(!out.status.success(), "the CLI trusted a node without the CA");

    // Node 4, certified by another CA, asked to join: the leader and it cannot handshake,
    // so the add fails and the membership stays three.
    let dir4 = tempfile::tempdir().unwrap();
    let (http4, rpc4) = (crate::fixture::free_port(), crate::fixture::free_port());
    let config4 = dir4.path().join("node4.toml");
    let (cert4, key4) = (foreign.path().join("node-4.pem"), foreign.path().join("node-4.key"));
    std::fs::write(
        &config4,
        format!(
            "[node]\nid = 4\ndata_dir = {:?}\nhttp_addr = \"127.0.0.1:{http4}\"\nrpc_addr = \"127.0.0.1:{rpc4}\"\n\
             [cluster]\nheartbeat_ms = 50\nelection_timeout_ms = 500\ntls_ca_file = {:?}\ntls_cert_file = {cert4:?}\ntls_key_file = {key4:?}\n",
            dir4.path().join("data"),
            foreign.path().join("ca.pem"),
        ),
    )
    .unwrap();
    let log4 = std::fs::File::create(dir4.path().join("node4.log")).unwrap();
    let mut node4 =
        raftcron_command(log4).args(["serve", "--config"]).arg(&config4).env("RAFTCRON_API_KEY", KEY).spawn().unwrap();
    // Node 4 up (its API, plain HTTP here, answers) before it is asked to join.
    let foreign_client = c.http.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while foreign_client.get(format!("http://127.0.0.1:{http4}/api/health")).send().await.is_err() {
        let log = std::fs::read_to_string(dir4.path().join("node4.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "node 4 did not start: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let add = client
        .post(format!("{base}/api/cluster/nodes"))
        .bearer_auth(KEY)
        .json(&json!({"id": 4, "rpc_addr": format!("127.0.0.1:{rpc4}"), "http_addr": format!("127.0.0.1:{http4}")}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = add.status();
    let body = add.text().await.unwrap();
    assert!(!status.is_success(), "a node of another CA was added: {status} {body}");
    assert!(body.contains("certificate") || body.contains("TLS"), "refused for another reason: {status} {body}");
    let cluster = get(&client, &format!("{base}/api/cluster")).await.expect("cluster view");
    let members: Vec<u64> =
        cluster["data"]["members"].as_array().unwrap().iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(members, vec![1, 2, 3], "node 4 became a member: {cluster}");
    let metrics = foreign_client.get(format!("http://127.0.0.1:{http4}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("raftcron_rpc_connections_refused_total") && l.contains("reason=\"tls\"")),
        "node 4 counted no TLS refusal"
    );
    node4.kill().unwrap();
    node4.wait().unwrap();
}
