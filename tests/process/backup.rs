//! Backup and restore from the command line, with real processes: `raftcron snapshot
//! save` from a running 3-node cluster, `raftcron snapshot restore` into a new node's
//! data dir, that node serving the same tasks as a cluster of its own; and `raftcron debug
//! generate` building a state that restores and passes `raftcron debug verify`.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;

use crate::fixture::{Cluster, KEY};

fn raftcron(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftcron")).env_clear().args(args).output().expect("raftcron runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_saved_from_the_cli_restores_into_a_new_cluster() {
    let mut c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(20)).await;
    for i in 0..12 {
        let v = c
            .post(
                1,
                "/api/tasks",
                Some(json!({"name": format!("nightly-{i}"), "executor": "shell", "command": "true"})),
            )
            .await;
        assert_eq!(v["success"], true, "{v}");
    }
    let names = c.task_names(2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.rcsnap");
    let server = format!("http://{}", c.nodes[2].http);
    let file_arg = file.to_str().unwrap();

    let wrong = raftcron(&["snapshot", "save", "--server", &server, "--api-key", "not-a-key", file_arg]);
    assert!(!wrong.status.success() && text(&wrong).contains("401"), "{}", text(&wrong));
    assert!(!file.exists(), "a refused save wrote a file");
    let saved = raftcron(&["snapshot", "save", "--server", &server, "--api-key", KEY, file_arg]);
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(text(&saved).contains("checksum verified"), "{}", text(&saved));
    for i in 0..3 {
        c.kill(i);
    }

    let mut r = Cluster::configured(1, 500, "");
    let data = r.nodes[0].config.with_file_name("data1");
    let rpc = format!("127.0.0.1:{}", r.nodes[0].rpc_port);
    let restore = |data: &std::path::Path| {
        raftcron(&[
            "snapshot",
            "restore",
            file_arg,
            "--data-dir",
            data.to_str().unwrap(),
            "--node-id",
            "1",
            "--rpc-addr",
            &rpc,
        ])
    };
    let restored = restore(&data);
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(text(&restored).contains("restored 12 tasks"), "{}", text(&restored));
    let again = restore(&data);
    assert!(!again.status.success() && text(&again).contains("not empty"), "{}", text(&again));
    r.spawn(0);
    r.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(r.task_names(0).await, names);
    let v =
        r.post(0, "/api/tasks", Some(json!({"name": "after-restore", "executor": "shell", "command": "true"}))).await;
    assert_eq!(v["data"]["id"], 13, "{v}");
    r.kill(0);
    let verify = raftcron(&["debug", "verify", data.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn a_generated_state_restores_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gen.rcsnap");
    let generated =
        raftcron(&["debug", "generate", "--out", file.to_str().unwrap(), "--tasks", "2500", "--runs-per-task", "3"]);
    assert!(generated.status.success(), "{}", text(&generated));
    assert!(text(&generated).contains("generated 2500 tasks and 7500 runs"), "{}", text(&generated));
    let data = dir.path().join("node");
    let restored = raftcron(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--node-id",
        "3",
        "--rpc-addr",
        "127.0.0.1:1",
    ]);
    assert!(restored.status.success(), "{}", text(&restored));
    let verify = raftcron(&["debug", "verify", data.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
    let bad = raftcron(&[
        "snapshot",
        "restore",
        "/nonexistent/file",
        "--data-dir",
        "/tmp/x",
        "--node-id",
        "1",
        "--rpc-addr",
        "a:1",
    ]);
    assert!(!bad.status.success() && text(&bad).contains("/nonexistent/file"), "{}", text(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_backup_holds_no_secret_in_the_clear_and_restores_only_with_its_key() {
    let mut c = Cluster::start(1);
    c.wait_healthy(Duration::from_secs(20)).await;
    let secret = "backup-secret-value-7d2f91";
    let task = json!({"name": "uses-a-secret", "executor": "shell", "command": "true",
                      "environment": {"DB_PASS": {"value": secret, "secret": true}}});
    let v = c.post(0, "/api/tasks", Some(task)).await;
    assert_eq!(v["success"], true, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (key, other_key, file) = (path("backup.key"), path("other.key"), path("backup.rcsnap.age"));

    let made = raftcron(&["snapshot", "keygen", &key]);
    assert!(made.status.success(), "{}", text(&made));
    let public = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(public.starts_with("age1"), "keygen prints the public key: {public}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = raftcron(&["snapshot", "keygen", &key]);
    assert_eq!(again.status.code(), Some(2), "keygen never overwrites a key: {}", text(&again));
    assert!(raftcron(&["snapshot", "keygen", &other_key]).status.success());

    let server = format!("http://{}", c.nodes[0].http);
    let bogus =
        raftcron(&["snapshot", "save", "--server", &server, "--api-key", KEY, "--recipient", "age1nope", &file]);
    assert_eq!(bogus.status.code(), Some(2), "{}", text(&bogus));
    // Encrypted to the public key alone: the machine taking backups needs no secret key.
    let saved = raftcron(&["snapshot", "save", "--server", &server, "--api-key", KEY, "--recipient", &public, &file]);
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(text(&saved).contains("encrypted") && text(&saved).contains("checksum verified"), "{}", text(&saved));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"), "an age file");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "its owner's only");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for clear in [secret.as_bytes(), b"uses-a-secret", b"RCSNAP"] {
        assert!(!bytes.windows(clear.len()).any(|w| w == clear), "{:?} in the clear", String::from_utf8_lossy(clear));
    }
    c.kill(0);

    let mut r = Cluster::configured(1, 500, "");
    let data = r.nodes[0].config.with_file_name("data1");
    let rpc = format!("127.0.0.1:{}", r.nodes[0].rpc_port);
    let restore = |extra: &[&str]| {
        let mut args = vec!["snapshot", "restore", &file, "--data-dir", data.to_str().unwrap(), "--node-id", "1"];
        args.extend(["--rpc-addr", &rpc]);
        args.extend(extra);
        raftcron(&args)
    };
    let no_key = restore(&[]);
    assert_eq!(no_key.status.code(), Some(2), "{}", text(&no_key));
    assert!(text(&no_key).contains("encrypted") && text(&no_key).contains("--key-file"), "{}", text(&no_key));
    let wrong = restore(&["--key-file", &other_key]);
    assert!(!wrong.status.success() && text(&wrong).contains("decrypt"), "{}", text(&wrong));
    assert!(std::fs::read_dir(&data).map_or(true, |mut d| d.next().is_none()), "a failed restore leaves nothing");
    let restored = restore(&["--key-file", &key]);
    assert!(restored.status.success(), "{}", text(&restored));
    r.spawn(0);
    r.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(r.task_names(0).await, std::collections::BTreeSet::from(["uses-a-secret".to_string()]));
}
