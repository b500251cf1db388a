//! The OpenAPI document and the router agree: every documented operation is served, and
//! every operation the product promises is documented.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::fixture::TestCluster;

/// The operations of the seed and PRODUCT.md that this build serves.
const PROMISED: &[(&str, &str)] = &[
    ("post", "/api/tasks"),
    ("get", "/api/tasks"),
    ("get", "/api/tasks/{task_id}"),
    ("put", "/api/tasks/{task_id}"),
    ("delete", "/api/tasks/{task_id}"),
    ("get", "/api/health"),
    ("get", "/api/system/status"),
    ("get", "/metrics"),
    ("get", "/api/cluster"),
    ("post", "/api/cluster/nodes"),
    ("delete", "/api/cluster/nodes/{node_id}"),
    ("post", "/api/cluster/transfer-leader"),
    ("get", "/api/schedule/preview"),
    ("post", "/api/tasks/{task_id}/trigger"),
    ("get", "/api/tasks/{task_id}/runs"),
    ("get", "/api/runs/{run_id}"),
    ("post", "/api/runs/{run_id}/cancel"),
    ("post", "/api/tasks/{task_id}/pause"),
    ("post", "/api/tasks/{task_id}/resume"),
    ("get", "/api/workers"),
    ("get", "/api/workers/{worker_id}"),
    ("put", "/api/workers/{worker_id}"),
    ("post", "/api/workers/{worker_id}/heartbeat"),
    ("post", "/api/workers/{worker_id}/register"),
    ("get", "/api/workers/{worker_id}/assignments"),
    ("post", "/api/runs/{run_id}/report"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_route_is_served_and_every_promised_route_documented() {
    let c = TestCluster::start(1).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let doc: serde_json::Value = c.http.get(c.url(1, "/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    for (m, p) in PROMISED {
        assert!(documented.iter().any(|(dm, dp)| dm == m && dp == p), "{m} {p} is not documented");
    }
    for (method, path) in &documented {
        let concrete = path
            .replace("{task_id}", "999999")
            .replace("{node_id}", "999999")
            .replace("{run_id}", "999999")
            .replace("{worker_id}", "nobody");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = matches!(method, Method::POST | Method::PUT).then(|| json!({}));
        let a = c.call(1, method.clone(), &concrete, body, &[]).await;
        let code = a.body["error"].as_str().unwrap_or_default();
        assert!(
            code != "route_not_found" && code != "method_not_allowed",
            "{method} {path} is documented but not served: {} {}",
            a.status,
            a.body
        );
    }
    c.shutdown().await;
}

/// The document states what the server enforces (the schemathesis stage holds the server
/// to it request by request; this pins the statements themselves): the bounds of a page,
/// a worker id's pattern, a task body that needs `command` or `url` by executor, an
/// update that names a field, both security schemes, and the envelope on every error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_states_the_constraints_and_errors_the_server_enforces() {
    let c = TestCluster::start(1).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let doc: serde_json::Value = c.http.get(c.url(1, "/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let param = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    };
    assert_eq!(param("/api/tasks", "get", "page")["minimum"], 1);
    assert_eq!(param("/api/tasks", "get", "size")["maximum"], 100);
    assert_eq!(param("/api/tasks/{task_id}", "get", "consistency")["enum"], json!(["linearizable", "local"]));
    assert_eq!(param("/api/workers/{worker_id}", "get", "worker_id")["maxLength"], 64);
    let create = &doc["components"]["schemas"]["TaskCreate"]["oneOf"];
    assert_eq!(create[0]["required"], json!(["name", "executor", "command"]));
    assert_eq!(create[1]["required"], json!(["name", "executor", "url"]));
    assert_eq!(doc["components"]["schemas"]["TaskUpdate"]["minProperties"], 1);
    // A value of environment or headers: a string, or {value, secret}; a create may not
    // send the redaction marker as a secret, an update may (to keep the stored one).
    let secret = &create[0]["properties"]["environment"]["additionalProperties"]["oneOf"][1];
    assert_eq!((secret["required"].clone(), secret["additionalProperties"].clone()), (json!(["value"]), json!(false)));
    assert_eq!(secret["not"]["properties"]["value"]["const"], "***");
    let update = &doc["components"]["schemas"]["TaskUpdate"]["properties"]["headers"]["additionalProperties"];
    assert!(update["oneOf"][1]["not"].is_null(), "{update}");
    assert_eq!(doc["components"]["schemas"]["WorkerUpdate"]["minProperties"], 1);
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("bearer") && schemes["jwt"]["bearerFormat"] == "JWT", "{schemes:?}");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // The open routes answer in their own shapes (an unhealthy node's health
            // report is a 503 with data).
            if matches!(path.as_str(), "/api/health" | "/metrics") {
                continue;
            }
            for (code, r) in op["responses"].as_object().unwrap() {
                if code.as_str() >= "400" {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorEnvelope",
                        "{method} {path} {code}"
                    );
                }
            }
            for code in ["400", "401", "403", "500", "503"] {
                assert!(op["responses"].get(code).is_some(), "{method} {path} does not document {code}");
            }
        }
    }
    c.shutdown().await;
}
