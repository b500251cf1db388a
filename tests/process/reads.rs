//! Linearizable reads through a deposed leader that is still alive: partitioned from the
//! majority (iptables on loopback, each node its own user), it still believes it leads and
//! still answers HTTP, but it must never serve a value the majority has overwritten.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::{Cluster, KEY};

/// The linearizability tests killed the old leader; none left one alive. Here the old
/// leader is cut off, the majority elects a new one and acknowledges a newer version of a
/// task, and a default (linearizable) read through the old leader must not return the old
/// version — it may only fail. Its `?consistency=local` read shows the stale value, which
/// is what makes the check meaningful.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_old_leader_never_serves_a_stale_linearizable_read() {
    let c = Cluster::start_with(3, 500).run_as_own_users().start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let old = c.leader_seen_by(0).await.expect("a leader") as usize - 1;
    let majority = (old + 1) % 3;
    let created =
        c.post(old, "/api/tasks", Some(json!({"name": "register", "executor": "shell", "command": "v1"}))).await;
    let id = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {created}"));
    // Every node has version 1 before the cut.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..3 {
        while c.get(i, &format!("/api/tasks/{id}?consistency=local")).await["data"]["version"] != 1 {
            assert!(Instant::now() < deadline, "node {i} never applied the create");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let cut = c.isolate(old);
    let url = format!("http://{}/api/tasks/{id}", c.nodes[majority].http);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .http
            .put(&url)
            .bearer_auth(KEY)
            .json(&json!({"command": "v2"}))
            .timeout(Duration::from_secs(12))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the majority never acknowledged the update; logs: {}", c.logs());
    }
    let stale = c.get(old, &format!("/api/tasks/{id}?consistency=local")).await;
    assert_eq!(stale["data"]["version"], 1, "the cut-off node has not seen the update (the setup is real): {stale}");
    // And it still believes it leads: the read below goes through a deposed leader, not
    // a node that already knows it was replaced.
    assert_eq!(c.leader_seen_by(old).await, Some(old as u64 + 1), "the cut-off node no longer thinks it leads");
    for _ in 0..2 {
        let r = c
            .http
            .get(format!("http://{}/api/tasks/{id}", c.nodes[old].http))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .expect("the old leader answers HTTP");
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert!(
            status != 200 || body["data"]["version"].as_u64() >= Some(2),
            "a linearizable read through the old leader returned a stale version: {status} {body}"
        );
        assert_eq!(status, 503, "without a quorum the read is refused: {body}");
    }
    drop(cut);
}
