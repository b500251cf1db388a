//! JWTs minted by `raftcron token create` against a real node, and the audit log it
//! writes: every write, refused ones included, as one JSON object naming who, what, from
//! where and with what result — and never a credential.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fixture::{Cluster, KEY};

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
