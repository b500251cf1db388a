//! Upgrading in place, with real processes: a data dir written by the previous format
//! (checked in under tests/fixtures/format-v4) starts under this binary, migrated, and
//! serves what it held. (A node of another format on the wire is refused with both
//! versions named: `rpc::tests::refuses_another_cluster_and_an_unknown_format`.)

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixture::{free_port, raftcron_command, KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_format_serves_under_this_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v4/db");
    std::fs::create_dir_all(data.join("db")).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.join("db").join(entry.file_name())).unwrap();
    }
    // Verifying it must not migrate it (an old binary could no longer open it).
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_raftcron"))
        .args(["debug", "verify", data.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && said.contains("format 4") && said.contains("migrate"), "{said}");
    assert_eq!(raftcron::storage::stored_format(&data.join("db")).unwrap(), Some(4), "left as it was");
    let http = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let mut node = raftcron_command(log)
        .args(["dev", "--no-worker", "--data-dir", data.to_str().unwrap(), "--http", &http])
        .env("RAFTCRON_API_KEY", KEY)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let get = |path: String| {
        let req = client.get(format!("http://{http}{path}")).bearer_auth(KEY);
        async move { req.send().await.ok()?.json::<Value>().await.ok() }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let tasks = loop {
        if let Some(v) = get("/api/tasks".into()).await.filter(|v| v["success"] == true) {
            break v;
        }
        let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the upgraded node did not serve: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> =
        tasks["data"]["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nightly-backup", "webhook", "paused-one"]);
    let webhook = get("/api/tasks/2".into()).await.unwrap();
    assert_eq!(webhook["data"]["environment"]["TOKEN"], json!({"value": "***", "secret": true}));
    let runs = get("/api/tasks/1/runs".into()).await.unwrap();
    assert_eq!(runs["data"]["total"], 2);
    assert!(runs["data"]["items"].as_array().unwrap().iter().all(|r| r["status"] == "pending"));
    // It takes writes: a new task continues the ids.
    let created = client
        .post(format!("http://{http}/api/tasks"))
        .bearer_auth(KEY)
        .json(&json!({"name": "after-upgrade", "executor": "shell", "command": "true"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(created["data"]["id"], 4, "{created}");
    crate::fixture::signal(&node, "-TERM");
    node.wait().unwrap();
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_raftcron"))
        .args(["debug", "verify", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
