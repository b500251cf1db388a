//! Secret values in a task's `environment` and `headers` (issue 15): write-only through the
//! API — every view, through the leader or a follower and for every role, shows `"***"` —
//! kept by an update that sends the redacted form back, and handed as written to the job
//! of a run (an environment variable) and to the request of an http run (a header).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fixture::{answer, Answer, TestCluster, KEY, OPERATOR_KEY, VIEWER_KEY};
use crate::support::{agent, is_final, trigger, wait_run};

/// Distinctive, so a test can search every answer for them.
const DB_PASS: &str = "db-pass-5e1f0c2a7b";
const TOKEN: &str = "api-token-93d4b8e6f1";

/// What every view shows for a secret.
fn redacted() -> Value {
    json!({"value": "***", "secret": true})
}

/// Asserts that an answer shows no secret.
fn assert_hidden(what: &str, a: &Answer) {
    let text = a.body.to_string();
    for secret in [DB_PASS, TOKEN] {
        assert!(!text.contains(secret), "{what} shows a secret: {text}");
    }
}

async fn put(c: &TestCluster, node: u64, id: u64, body: Value) -> Answer {
    c.call(node, Method::PUT, &format!("/api/tasks/{id}"), Some(body), &[]).await
}

async fn call_as(c: &TestCluster, node: u64, key: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
    let mut rb = c.http.request(method, c.url(node, path)).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    answer(rb.send().await.expect("the node answers")).await
}

/// An HTTP endpoint that answers 200 only to a request carrying `X-Api-Token: TOKEN`
/// (and never echoes it: a run's output is readable by viewers).
async fn token_checking_target() -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            if headers.get("x-api-token").is_some_and(|v| v.as_bytes() == TOKEN.as_bytes()) {
                (StatusCode::OK, "authorized")
            } else {
                (StatusCode::UNAUTHORIZED, "wrong or missing token")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_write_only_kept_by_a_redacted_update_and_reach_only_the_job() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let target = token_checking_target().await;

    // Created through a follower, with an idempotency key: the answer and its replay are
    // redacted alike.
    let shell = json!({
        "name": "uses-db", "executor": "shell",
        "command": "printf '%s' \"$DB_PASS\" | sha256sum; echo \"mode=$MODE\"",
        "environment": {"DB_PASS": {"value": DB_PASS, "secret": true}, "MODE": "prod"},
    });
    let key = [("Idempotency-Key", "secrets-create-shell")];
    let created = c.call(follower, Method::POST, "/api/tasks", Some(shell.clone()), &key).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_hidden("the create answer", &created);
    assert_eq!(created.data()["environment"], json!({"DB_PASS": redacted(), "MODE": "prod"}));
    let replay = c.call(follower, Method::POST, "/api/tasks", Some(shell), &key).await;
    assert_hidden("the replayed create answer", &replay);
    assert_eq!(replay.data(), created.data(), "{}", replay.body);
    let shell_id = created.data()["id"].as_u64().unwrap();

    let http = json!({
        "name": "calls-hook", "executor": "http", "url": format!("{target}/hook"), "method": "POST",
        "headers": {"X-Api-Token": {"value": TOKEN, "secret": true}, "X-Plain": "visible"},
    });
    let created = c.post(leader, "/api/tasks", http).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_hidden("the create answer", &created);
    let http_id = created.data()["id"].as_u64().unwrap();

    // What cannot be written: the marker as a new secret, an object with another key.
    for (env, entry) in [
        (json!({"DB_PASS": redacted()}), "environment.DB_PASS"),
        (json!({"DB_PASS": {"value": DB_PASS, "secret": true, "rotate_days": 30}}), "environment.DB_PASS"),
    ] {
        let body = json!({"name": "refused", "executor": "shell", "command": "true", "environment": env});
        let a = c.post(follower, "/api/tasks", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert!(a.body["message"].as_str().unwrap().contains(entry), "{}", a.body);
        assert_hidden("a refusal", &a);
    }

    // An update that sends back what it read keeps the secrets; one that names a secret it
    // cannot keep is refused and changes nothing.
    let a = put(&c, follower, shell_id, json!({"environment": {"DB_PASS": redacted(), "MODE": "staging"}})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_hidden("the update answer", &a);
    assert_eq!((a.data()["version"].as_u64(), a.data()["environment"]["MODE"].as_str()), (Some(2), Some("staging")));
    let a = put(&c, leader, http_id, json!({"headers": {"X-Api-Token": redacted(), "X-Plain": "still visible"}})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_hidden("the update answer", &a);
    let a = put(&c, leader, shell_id, json!({"environment": {"DB_PASS": redacted(), "OTHER": redacted()}})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("environment.OTHER"), "{}", a.body);

    // Pausing and resuming (an operator) answer with the task too.
    for action in ["pause", "resume"] {
        let path = format!("/api/tasks/{shell_id}/{action}");
        let a = call_as(&c, follower, OPERATOR_KEY, Method::POST, &path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{action}: {}", a.body);
        assert_hidden(action, &a);
    }

    // Every role, through the leader and a follower, one task or the list (unfiltered and
    // filtered: two read paths).
    for node in [leader, follower] {
        for key in [KEY, OPERATOR_KEY, VIEWER_KEY] {
            let a = call_as(&c, node, key, Method::GET, &format!("/api/tasks/{shell_id}"), None).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            assert_hidden("a read", &a);
            assert_eq!(a.data()["environment"], json!({"DB_PASS": redacted(), "MODE": "staging"}), "{}", a.body);
            let a = call_as(&c, node, key, Method::GET, &format!("/api/tasks/{http_id}"), None).await;
            assert_hidden("a read", &a);
            assert_eq!(a.data()["headers"], json!({"X-Api-Token": redacted(), "X-Plain": "still visible"}));
            for list in ["/api/tasks", "/api/tasks?status=active&search=s"] {
                let a = call_as(&c, node, key, Method::GET, list, None).await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.body);
                assert_hidden("a list", &a);
                assert_eq!(a.data()["items"].as_array().unwrap().len(), 2, "{}", a.body);
            }
        }
    }

    // The jobs get the values as written (and as kept by the updates).
    let w = agent(&c, follower, "w-secrets", 2, &[]).await;
    let shell_run = trigger(&c, leader, shell_id).await;
    let http_run = trigger(&c, follower, http_id).await;
    let done = wait_run(&c, follower, shell_run, Duration::from_secs(20), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let output = done["output"].as_str().unwrap();
    let digest = hex::encode(Sha256::digest(DB_PASS.as_bytes()));
    assert!(output.contains(&digest), "the job did not get the secret: {output:?}");
    assert!(!output.contains(DB_PASS), "{output:?}");
    assert!(output.contains("mode=staging"), "{output:?}");
    let done = wait_run(&c, follower, http_run, Duration::from_secs(20), is_final).await;
    assert_eq!((done["status"].as_str(), done["http_status"].as_u64()), (Some("succeeded"), Some(200)), "{done}");
    let run_paths =
        [format!("/api/runs/{shell_run}"), format!("/api/runs/{http_run}"), format!("/api/tasks/{shell_id}/runs")];
    for path in run_paths {
        let a = call_as(&c, leader, VIEWER_KEY, Method::GET, &path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_hidden("a run", &a);
    }
    w.shutdown().await;
    c.shutdown().await;
}
