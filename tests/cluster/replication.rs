//! Writes through any node; linearizable reads from every node.

use std::time::Duration;

use reqwest::StatusCode;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_created_through_a_follower_is_read_linearizably_from_every_node() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);

    let created = c.create_task(follower, "via-follower").await;
    let id = created["id"].as_u64().unwrap();
    // A linearizable read right after the acknowledged write sees it on every node, with
    // no waiting: the read index makes a lagging follower catch up first.
    for node in c.running_ids() {
        let a = c.get(node, &format!("/api/tasks/{id}")).await;
        assert_eq!(a.status, StatusCode::OK, "node {node}: {}", a.body);
        assert_eq!(a.data()["name"], "via-follower");
        assert_eq!(a.headers["etag"], "\"1\"");
    }

    let created = c.create_task(leader, "via-leader").await;
    let id2 = created["id"].as_u64().unwrap();
    assert!(id2 > id, "ids increase: {id} then {id2}");
    for node in c.running_ids() {
        let a = c.get(node, "/api/tasks?search=via").await;
        assert_eq!(a.data()["total"], 2, "node {node}: {}", a.body);
    }
    let digests = c.converged_digests(Duration::from_secs(5)).await;
    let distinct: std::collections::BTreeSet<_> = digests.values().map(|(_, d)| d.clone()).collect();
    assert_eq!(distinct.len(), 1, "digests differ: {digests:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_and_delete_through_followers_with_if_match() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let id = c.create_task(f, "cas").await["id"].as_u64().unwrap();
    let path = format!("/api/tasks/{id}");

    let body = serde_json::json!({"status": "paused", "schedule": "0 12 * * *"});
    let a = c.call(f, reqwest::Method::PUT, &path, Some(body.clone()), &[("If-Match", "\"1\"")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.data()["version"], 2);
    assert_eq!(a.data()["status"], "paused");
    assert_eq!(a.data()["command"], "echo hello", "fields not named are kept");

    // The same precondition again is stale now.
    let a = c.call(leader, reqwest::Method::PUT, &path, Some(body), &[("If-Match", "\"1\"")]).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{}", a.body);
    let a = c.call(f, reqwest::Method::DELETE, &path, None, &[("If-Match", "\"1\"")]).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{}", a.body);

    let a = c.call(f, reqwest::Method::DELETE, &path, None, &[("If-Match", "\"2\"")]).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    for node in c.running_ids() {
        assert_eq!(c.get(node, &path).await.status, StatusCode::NOT_FOUND);
    }
    // The name is free again.
    c.create_task(leader, "cas").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_reads_and_health_on_every_node() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.create_task(leader, "x").await;
    for node in c.running_ids() {
        let h = c.http.get(c.url(node, "/api/health")).send().await.unwrap();
        assert_eq!(h.status(), StatusCode::OK);
        let h: serde_json::Value = h.json().await.unwrap();
        assert_eq!(h["data"]["status"], "healthy");
        assert_eq!(h["data"]["raft"]["leader_id"], leader);
        assert_eq!(h["data"]["raft"]["node_id"], node);
        let s = c.get(node, "/api/system/status").await;
        assert_eq!(s.data()["tasks"]["total"], 1, "{}", s.body);
        let a = c.get(node, "/api/tasks?consistency=local").await;
        assert_eq!(a.status, StatusCode::OK);
        let m = c.http.get(c.url(node, "/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(m.contains("raftcron_raft_term"), "{m}");
        assert!(m.contains("raftcron_http_requests_total"), "{m}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedule_preview_over_http() {
    let c = TestCluster::start(1).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let a =
        c.get(1, "/api/schedule/preview?cron=0%20*/6%20*%20*%20*&timezone=UTC&count=3&from=2027-01-01T01:00:00Z").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.data()["fire_times"],
        serde_json::json!(["2027-01-01T06:00:00Z", "2027-01-01T12:00:00Z", "2027-01-01T18:00:00Z"])
    );
    c.shutdown().await;
}
