//! Starting and stopping: clear errors at start-up, leadership handed over on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixture::Cluster;

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

#[test]
fn a_node_refuses_to_start_with_its_rpc_port_open_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_raftcron");
    let cfg = dir.path().join("open.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = 1\ndata_dir = {:?}\nhttp_addr = \"127.0.0.1:0\"\nrpc_addr = \"127.0.0.1:0\"\n",
            dir.path().join("d")
        ),
    )
    .unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin);
        cmd.env_clear().args(["serve", "--config"]).arg(&cfg).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = run(&[], &[]);
    assert!(!ok);
    assert!(err.contains("cluster.secret") && err.contains("--insecure"), "{err}");
    // A cluster secret that is also the admin key: whoever holds the one holds the other.
    let same = "the-same-string-for-both-0123";
    let (ok, err) = run(&[], &[("RAFTCRON_CLUSTER_SECRET", same), ("RAFTCRON_API_KEY", same)]);
    assert!(!ok);
    assert!(err.contains("cluster.secret") && err.contains("API key"), "{err}");
    // `--insecure` is the operator saying so: the node starts (and is stopped here).
    let log = std::fs::File::create(dir.path().join("insecure.log")).unwrap();
    let mut child =
        crate::fixture::raftcron_command(log).args(["serve", "--insecure", "--config"]).arg(&cfg).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(dir.path().join("insecure.log")).unwrap_or_default();
        if text.contains("nothing (insecure)") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "--insecure did not start: {text}");
        assert!(Instant::now() < deadline, "no start-up line: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
