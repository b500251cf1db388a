//! JWTs minted by `raftcron token create` against a real node, and the audit log it
//! writes: every write, refused ones included, as one JSON object naming who, what, from
//! where and with what result — and never a credential; nor, at any log level, a task's
//! secret.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fixture::{spawn_worker, Cluster, KEY};

const JWT_SECRET: &str = "process-test-jwt-secret-0123456789abcdef";
const VIEWER_KEY: &str = "process-test-viewer-key";

/// `raftcron token create` with the node's own config.
fn mint(config: &std::path::Path, role: &str, sub: &str, ttl: &str) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_raftcron"))
        .env_clear()
        .args(["token", "create", "--config"])
        .arg(config)
        .args(["--role", role, "--sub", sub, "--ttl", ttl])
        .output()
        .expect("raftcron runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The audit entries in a node's log.
fn audit_entries(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter(|l| l.contains("audit"))
        .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str::<Value>(&l[i..]).ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minted_tokens_work_and_every_write_is_audited_without_credentials() {
    let extra = format!(
        "[auth]\napi_keys = [{{ name = \"dashboard\", role = \"viewer\", sha256 = \"{}\" }}]\n\
         [auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{JWT_SECRET}\"\nissuer = \"raftcron-ops\"\naudience = \"raftcron\"\n",
        raftcron::config::hash_api_key(VIEWER_KEY)
    );
    let c = Cluster::configured(1, 500, &extra).start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let base = format!("http://{}", c.nodes[0].http);
    let config = &c.nodes[0].config;

    let operator = mint(config, "operator", "alice", "10m").expect("token create succeeds");
    assert_eq!(operator.split('.').count(), 3, "{operator}");
    assert!(mint(config, "root", "x", "10m").unwrap_err().contains("not a role"));
    assert!(mint(config, "admin", "x", "0s").unwrap_err().contains("positive"));

    let send = |method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>| {
        let mut rb = c.http.request(method, format!("{base}{path}")).bearer_auth(bearer);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        async move {
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let task = json!({"name": "audited", "executor": "shell", "command": "true"});
    let (status, body) = send(reqwest::Method::POST, "/api/tasks", KEY, Some(task.clone())).await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["id"].as_u64().unwrap();
    // The operator JWT may trigger but not delete; the viewer key may do neither.
    let (status, body) = send(reqwest::Method::POST, &format!("/api/tasks/{id}/trigger"), &operator, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = send(reqwest::Method::DELETE, &format!("/api/tasks/{id}"), &operator, None).await;
    assert_eq!(status, 403);
    let (status, _) = send(reqwest::Method::POST, &format!("/api/tasks/{id}/trigger"), VIEWER_KEY, None).await;
    assert_eq!(status, 403);
    // A refused credential is audited too, with nobody to name.
    let (status, _) = send(reqwest::Method::POST, &format!("/api/tasks/{id}/trigger"), "not-a-key", None).await;
    assert_eq!(status, 401);
    // Reads are not audited.
    let (status, _) = send(reqwest::Method::GET, "/api/tasks", &operator, None).await;
    assert_eq!(status, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = c.logs();
    let entries = audit_entries(&logs);
    let find = |who: &str, method: &str, status: u64| {
        entries.iter().find(|e| e["who"] == who && e["method"] == method && e["status"] == status).cloned()
    };
    let created = find("admin", "POST", 201).unwrap_or_else(|| panic!("no audit of the create: {entries:?}"));
    assert_eq!((created["route"].as_str(), created["credential"].as_str()), (Some("/api/tasks"), Some("api_key")));
    assert_eq!(created["from"], "127.0.0.1");
    let triggered = find("alice", "POST", 201).unwrap_or_else(|| panic!("no audit of the trigger: {entries:?}"));
    assert_eq!((triggered["credential"].as_str(), triggered["role"].as_str()), (Some("jwt"), Some("operator")));
    assert!(find("alice", "DELETE", 403).is_some(), "a refused write is audited: {entries:?}");
    assert!(find("dashboard", "POST", 403).is_some(), "{entries:?}");
    assert!(
        entries
            .iter()
            .any(|e| e["who"].is_null() && e["status"] == 401 && e["route"] == "/api/tasks/{task_id}/trigger"),
        "a 401 is audited: {entries:?}"
    );
    assert!(!entries.iter().any(|e| e["method"] == "GET"), "reads are not audited: {entries:?}");
    for secret in [KEY, VIEWER_KEY, JWT_SECRET, operator.as_str()] {
        assert!(!logs.contains(secret), "the log holds a credential");
    }
}

/// Issue 15: a task's secrets — an environment variable and a request header — reach no
/// log, the node's or the worker's, at debug level, from the create through an update
/// that keeps them to runs that use them (the runs prove the values arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tasks_secrets_reach_no_log_even_at_debug_level() {
    const DB_PASS: &str = "process-db-pass-4b7e21c9";
    const TOKEN: &str = "process-header-token-d05a6f3e";
    let c = Cluster::configured(1, 500, "").log_filter("debug").start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut worker = spawn_worker(&c, 0, "w-secrets");
    let base = format!("http://{}", c.nodes[0].http);
    let secret = |value: &str| json!({"value": value, "secret": true});

    let shell = json!({
        "name": "uses-db", "executor": "shell", "command": "printf '%s' \"$DB_PASS\" | sha256sum",
        "environment": {"DB_PASS": secret(DB_PASS)},
    });
    // The node's own health route stands in for a hook that needs a token.
    let http = json!({
        "name": "calls-hook", "executor": "http", "url": format!("{base}/api/health"),
        "headers": {"X-Hook-Token": secret(TOKEN)},
    });
    let mut runs = Vec::new();
    for body in [shell, http] {
        let created = c.post(0, "/api/tasks", Some(body)).await;
        let id = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {created}"));
        let kept = json!({"environment": {"DB_PASS": secret("***")}, "headers": {"X-Hook-Token": secret("***")}});
        let field = if created["data"]["executor"] == "shell" { "environment" } else { "headers" };
        let r = c.http.put(format!("{base}/api/tasks/{id}")).bearer_auth(KEY).json(&json!({field: kept[field]}));
        let updated: Value = r.send().await.unwrap().json().await.unwrap();
        assert_eq!(updated["data"]["version"], 2, "{updated}");
        let run = c.post(0, &format!("/api/tasks/{id}/trigger"), None).await;
        runs.push(run["data"]["id"].as_u64().unwrap_or_else(|| panic!("trigger failed: {run}")));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut outputs = Vec::new();
    for id in runs {
        let run = loop {
            let r = c.get(0, &format!("/api/runs/{id}")).await;
            let status = r["data"]["status"].as_str();
            if matches!(status, Some("succeeded" | "failed" | "timed_out" | "cancelled" | "lost")) {
                break r["data"].clone();
            }
            assert!(Instant::now() < deadline, "run {id}: {r}; logs: {}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(run["status"], "succeeded", "{run}");
        outputs.push(run["output"].as_str().unwrap_or_default().to_string());
    }
    let digest = hex::encode(Sha256::digest(DB_PASS.as_bytes()));
    assert!(outputs[0].contains(&digest), "the job did not get the secret: {outputs:?}");
    let _ = worker.kill();
    let _ = worker.wait();

    let node_log = std::fs::read_to_string(c.nodes[0].config.with_extension("log")).unwrap();
    let worker_log = std::fs::read_to_string(c.nodes[0].config.with_file_name("worker-w-secrets.log")).unwrap();
    assert!(node_log.contains("DEBUG"), "the node did not log at debug level");
    for (what, log) in [("node", &node_log), ("worker", &worker_log)] {
        for value in [DB_PASS, TOKEN] {
            assert!(!log.contains(value), "the {what}'s log holds a task's secret");
        }
    }
}
