//! Bad input gets a clear 4xx in the envelope — never a 500 — and changes nothing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::fixture::{answer, TestCluster, KEY, VIEWER_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_clear_4xx_and_leave_state_unchanged() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let id = c.create_task(leader, "existing").await["id"].as_u64().unwrap();
    let before = c.get(leader, "/api/tasks?size=100").await.data()["items"].clone();

    let raw = |body: &'static str| {
        c.http
            .post(c.url(f, "/api/tasks"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // (response, expected status, a word the message must contain)
    let mut cases = Vec::new();
    cases.push((answer(raw("{not json").await.unwrap()).await, 400, "malformed JSON"));
    cases.push((answer(raw("").await.unwrap()).await, 400, "empty"));
    cases.push((answer(raw("[1,2]").await.unwrap()).await, 400, "object"));
    let big = format!("{{\"name\":\"x\",\"executor\":\"shell\",\"command\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let a = c.http.post(c.url(f, "/api/tasks")).bearer_auth(KEY).body(big).send().await.unwrap();
    cases.push((answer(a).await, 413, "larger"));
    for (body, word) in [
        (json!({"executor": "shell", "command": "x"}), "name"),
        (json!({"name": "n", "command": "x"}), "executor"),
        (json!({"name": "n", "executor": "cobol", "command": "x"}), "executor"),
        (json!({"name": "n", "executor": "shell"}), "command"),
        (json!({"name": "n", "executor": "shell", "command": "x", "retry_count": "three"}), "retry_count"),
        (json!({"name": 5, "executor": "shell", "command": "x"}), "name"),
        (json!({"name": "n", "executor": "shell", "command": "x", "schedule": "61 * * * *"}), "schedule"),
        (json!({"name": "n", "executor": "shell", "command": "x", "schedule": "every day"}), "schedule"),
        (json!({"name": "n", "executor": "shell", "command": "x", "timezone": "Mars/Olympus"}), "timezone"),
        (json!({"name": "n", "executor": "http", "url": "not a url"}), "url"),
        (json!({"name": "n", "executor": "shell", "command": "x", "nmae": "typo"}), "nmae"),
    ] {
        cases.push((c.post(f, "/api/tasks", body).await, 400, word));
    }
    cases.push((
        c.post(f, "/api/tasks", json!({"name": "existing", "executor": "shell", "command": "x"})).await,
        409,
        "existing",
    ));
    cases.push((c.get(f, "/api/tasks/424242").await, 404, "424242"));
    cases.push((c.get(f, "/api/tasks/abc").await, 400, "abc"));
    cases.push((c.get(f, "/api/tasks?size=1000").await, 400, "size"));
    cases.push((c.get(f, "/api/tasks?status=sleeping").await, 400, "status"));
    cases.push((c.get(f, "/api/tasks?consistency=psychic").await, 400, "consistency"));
    cases.push((
        c.call(f, Method::PUT, "/api/tasks/424242", Some(json!({"status": "paused"})), &[]).await,
        404,
        "424242",
    ));
    let path = format!("/api/tasks/{id}");
    cases.push((c.call(f, Method::PUT, &path, Some(json!({"status": "asleep"})), &[]).await, 400, "status"));
    cases.push((c.call(f, Method::PUT, &path, Some(json!({})), &[]).await, 400, "no field"));
    cases.push((c.call(f, Method::PUT, &path, Some(json!({"name": ""})), &[]).await, 400, "name"));
    cases.push((
        c.call(f, Method::PUT, &path, Some(json!({"status": "paused"})), &[("If-Match", "soon")]).await,
        400,
        "If-Match",
    ));
    cases.push((c.call(f, Method::DELETE, "/api/tasks/424242", None, &[]).await, 404, "424242"));
    cases.push((answer(c.http.get(c.url(f, "/api/tasks")).send().await.unwrap()).await, 401, "Authorization"));
    cases.push((
        answer(c.http.get(c.url(f, "/api/tasks")).bearer_auth("wrong").send().await.unwrap()).await,
        401,
        "invalid",
    ));
    cases.push((
        answer(c.http.get(c.url(f, "/api/tasks")).header("authorization", "Basic Zm9v").send().await.unwrap()).await,
        401,
        "Bearer",
    ));
    let viewer_write = c
        .http
        .post(c.url(f, "/api/tasks"))
        .bearer_auth(VIEWER_KEY)
        .json(&json!({"name": "v", "executor": "shell", "command": "x"}));
    cases.push((answer(viewer_write.send().await.unwrap()).await, 403, "role"));
    cases.push((c.get(f, "/api/nope").await, 404, "no route"));
    cases.push((c.call(f, Method::PATCH, "/api/tasks", None, &[]).await, 405, "not allowed"));
    cases.push((c.post(f, "/api/cluster/nodes", json!({"id": 0, "rpc_addr": "x"})).await, 400, "id"));
    cases.push((c.post(f, "/api/cluster/transfer-leader", json!({"to": 99})).await, 400, "99"));
    cases.push((c.get(f, "/api/schedule/preview").await, 400, "cron"));
    cases.push((c.get(f, "/api/schedule/preview?cron=61%20*%20*%20*%20*").await, 400, "cron"));
    cases.push((c.get(f, "/api/schedule/preview?cron=@daily&timezone=Nowhere/City").await, 400, "timezone"));
    cases.push((c.get(f, "/api/schedule/preview?cron=@daily&count=1000").await, 400, "count"));
    cases.push((c.get(f, "/api/schedule/preview?cron=@daily&from=yesterday").await, 400, "from"));

    for (i, (a, status, word)) in cases.iter().enumerate() {
        assert_eq!(a.status.as_u16(), *status, "case {i}: {}", a.body);
        assert_eq!(a.body["success"], false, "case {i}: {}", a.body);
        let msg = a.body["message"].as_str().unwrap_or_default();
        assert!(msg.contains(word), "case {i}: message {msg:?} should mention {word:?}");
        assert!(a.body["error"].is_string(), "case {i}: {}", a.body);
        assert!(a.body["timestamp"].is_string(), "case {i}: {}", a.body);
    }
    // The viewer can read.
    let a = answer(c.http.get(c.url(f, "/api/tasks")).bearer_auth(VIEWER_KEY).send().await.unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);

    // Bad requests changed no task, and the replicas still agree byte for byte.
    for node in c.running_ids() {
        assert_eq!(c.get(node, "/api/tasks?size=100").await.data()["items"], before, "node {node}");
    }
    let digests = c.converged_digests(Duration::from_secs(5)).await;
    let distinct: std::collections::BTreeSet<_> = digests.values().map(|(_, d)| d.clone()).collect();
    assert_eq!(distinct.len(), 1, "{digests:?}");
    c.shutdown().await;
}

/// Invented HTTP methods neither pass for routes nor grow `/metrics`: each is counted
/// under `method="other"`, so a client cannot add time series at will.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invented_methods_do_not_become_metric_labels() {
    let c = TestCluster::start(1).await;
    let node = c.wait_leader(Duration::from_secs(10)).await;
    for i in 0..20 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let resp = c.http.request(method, c.url(node, "/api/health")).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let metrics = c.http.get(c.url(node, "/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("BREW"), "an invented method became a label");
    assert!(metrics.contains("method=\"other\""), "invented methods are counted as other");
    c.shutdown().await;
}

/// The edges the API document states, as the server enforces them: an integral float is
/// an integer, a page beyond the last is refused, an update that leaves a task without
/// what its executor needs is a conflict with the stored task (409) while a URL that no
/// executor could fetch is refused as written (400), an empty or over-long `If-Match` is
/// refused, and a long poll longer than 30 s is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edges_the_document_states_are_the_servers() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let body =
        json!({"name": "edges", "executor": "shell", "command": "true", "retry_count": 3.0, "timeout_seconds": 60.0});
    let a = c.post(n, "/api/tasks", body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.data()["retry_count"], 3);
    let id = a.data()["id"].as_u64().unwrap();
    assert_eq!(
        c.post(n, "/api/tasks", json!({"name": "f", "executor": "shell", "command": "x", "retry_count": 1.5}))
            .await
            .status,
        400
    );
    assert_eq!(c.get(n, "/api/tasks?page=1000000001").await.status, 400);
    assert_eq!(c.get(n, "/api/tasks?page=1000000000").await.status, 200);
    let path = format!("/api/tasks/{id}");
    let put = |body: serde_json::Value, headers: &'static [(&'static str, &'static str)]| {
        c.call(n, Method::PUT, &path, Some(body), headers)
    };
    let a = put(json!({"executor": "http"}), &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("url"), "{}", a.body);
    let a = put(json!({"url": "not a url"}), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(put(json!({"executor": "http", "url": "http://127.0.0.1:9/"}), &[]).await.status, 200);
    // An empty If-Match is a version the client lost: refused, never unconditional.
    assert_eq!(put(json!({"priority": "high"}), &[("If-Match", "")]).await.status, 400);
    assert_eq!(put(json!({"priority": "low"}), &[("If-Match", "\"00000000000000000002\"")]).await.status, 400);
    assert_eq!(put(json!({"priority": "low"}), &[("If-Match", "\"2\"")]).await.status, 200);
    let a = c.get(n, "/api/workers/w-edges/assignments?wait_ms=30001").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    c.shutdown().await;
}
