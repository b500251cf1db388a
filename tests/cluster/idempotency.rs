//! `Idempotency-Key`: deduplicated in apply, through any node, across leader loss and a
//! full restart; the same key with another body is refused.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::fixture::{shell_task, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_one_task_across_nodes_leader_loss_and_restart() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let body = shell_task("idem");
    let key = [("Idempotency-Key", "key-1")];

    // The same key sent at once to two different nodes creates one task.
    let (a, b) = tokio::join!(
        c.call(leader, Method::POST, "/api/tasks", Some(body.clone()), &key),
        c.call(f, Method::POST, "/api/tasks", Some(body.clone()), &key),
    );
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    let id = a.data()["id"].clone();
    assert_eq!(b.data()["id"], id);
    assert_eq!(c.get(f, "/api/tasks").await.data()["total"], 1);

    // Same key, different body: refused, nothing applied.
    let other = c.call(f, Method::POST, "/api/tasks", Some(shell_task("idem-other")), &key).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", other.body);
    assert_eq!(other.body["error"], "idempotency_key_reused");

    // A retry after the leader is gone returns the first result.
    c.kill(leader).await;
    let survivor = c.running_ids()[0];
    let retry = c.call(survivor, Method::POST, "/api/tasks", Some(body.clone()), &key).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.data()["id"], id);
    c.restart(leader).await;

    // And after the whole cluster restarts.
    for id in c.running_ids() {
        c.kill(id).await;
    }
    for id in [1, 2, 3] {
        c.restart(id).await;
    }
    c.wait_leader(Duration::from_secs(15)).await;
    let retry = c.call(2, Method::POST, "/api/tasks", Some(body.clone()), &key).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.data()["id"], id);
    assert_eq!(c.get(3, "/api/tasks").await.data()["total"], 1);

    // Keys are scoped to the caller's identity and to the request: a delete with the same
    // key string is a different request of the same caller, so it is refused too.
    let del = c.call(1, Method::DELETE, &format!("/api/tasks/{id}"), None, &key).await;
    assert_eq!(del.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", del.body);
    c.shutdown().await;
}
