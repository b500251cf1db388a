//! The auth matrix, through the leader and a follower: every authenticated route × every
//! kind of bad credential → 401 with the envelope; every route × every role, as an API
//! key and as a JWT → refused (403) exactly where `api::access::ROUTES` says, and
//! otherwise past authorization (whatever the handler then makes of the placeholder ids
//! and empty bodies: 400, 404, 409 — never 401 or 403). A worker credential acts for its
//! own id only.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use raftcron::api::access::{Access, ROUTES};
use raftcron::api::jwt::{mint, Claims};
use raftcron::config::{JwtAlgorithm, JwtConfig, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::fixture::{TestCluster, JWT_SECRET, KEY, OPERATOR_KEY, POOL_KEY, VIEWER_KEY, WORKER_KEY};

const WORKER_ID: &str = "w-keyed";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn jwt_config() -> JwtConfig {
    JwtConfig {
        algorithm: JwtAlgorithm::HS256,
        secret: JWT_SECRET.into(),
        secret_file: None,
        public_key_file: None,
        issuer: Some("raftcron-test".into()),
        audience: Some("raftcron".into()),
        leeway_s: 5,
    }
}

fn claims(sub: &str, role: Role) -> Claims {
    Claims {
        sub: sub.into(),
        role,
        exp: now() + 600,
        nbf: Some(now() - 1),
        iat: Some(now()),
        iss: Some("raftcron-test".into()),
        aud: Some(json!("raftcron")),
    }
}

fn token(c: &Claims) -> String {
    mint(&jwt_config(), c, None).unwrap()
}

/// Each role as an API key and as a JWT.
fn credentials() -> Vec<(String, Role, String)> {
    let mut out = vec![
        ("admin key".into(), Role::Admin, KEY.to_string()),
        ("operator key".into(), Role::Operator, OPERATOR_KEY.to_string()),
        ("viewer key".into(), Role::Viewer, VIEWER_KEY.to_string()),
        ("worker key".into(), Role::Worker, WORKER_KEY.to_string()),
    ];
    for (role, sub) in
        [(Role::Admin, "root"), (Role::Operator, "ops"), (Role::Viewer, "eve"), (Role::Worker, WORKER_ID)]
    {
        out.push((format!("{role:?} JWT"), role, token(&claims(sub, role))));
    }
    out
}

/// Authorization headers that must all get 401 (`None`: no header).
fn bad_credentials() -> Vec<(&'static str, Option<String>)> {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let good = claims("root", Role::Admin);
    let body = serde_json::to_value(&good).unwrap();
    let valid = token(&good);
    let other_sig = token(&Claims { sub: "mallory".into(), ..good.clone() });
    let forged = format!("{}.{}", valid.rsplit_once('.').unwrap().0, other_sig.rsplit_once('.').unwrap().1);
    let rs256 = {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/rs256-private.pem")).unwrap();
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::RS256),
            &body,
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap()
    };
    let bearer = |t: String| Some(format!("Bearer {t}"));
    vec![
        ("no header", None),
        ("malformed", Some("Basic dXNlcjpwYXNz".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("unknown key", bearer("not-a-key".into())),
        ("expired JWT", bearer(token(&Claims { exp: now() - 120, ..good.clone() }))),
        ("not-yet-valid JWT", bearer(token(&Claims { nbf: Some(now() + 120), ..good.clone() }))),
        ("bad signature", bearer(forged)),
        ("alg none", bearer(format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(body.clone())))),
        ("RS256 token at an HS256 node", bearer(rs256)),
        ("wrong iss", bearer(token(&Claims { iss: Some("elsewhere".into()), ..good.clone() }))),
        ("wrong aud", bearer(token(&Claims { aud: Some(json!("another")), ..good.clone() }))),
        ("worker JWT naming a pool", bearer(token(&claims("pool-*", Role::Worker)))),
    ]
}

fn concrete(path: &str, worker: &str) -> String {
    path.replace("{task_id}", "999999")
        .replace("{run_id}", "999999")
        .replace("{node_id}", "99")
        .replace("{worker_id}", worker)
}

async fn send(c: &TestCluster, node: u64, method: &str, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = c.http.request(method.clone(), c.url(node, path)).timeout(Duration::from_secs(15));
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    if method == Method::POST || method == Method::PUT {
        rb = rb.json(&json!({}));
    }
    let resp = rb.send().await.expect("the node answers");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_refuses_bad_credentials_and_admits_exactly_the_roles_of_the_table() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let creds = credentials();
    let bad = bad_credentials();
    let mut checked = 0;
    for node in [leader, follower] {
        for (method, route, access) in ROUTES {
            if *access == Access::Open {
                let (status, _) = send(&c, node, method, &concrete(route, WORKER_ID), None).await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {route} is open");
                continue;
            }
            let path = concrete(route, WORKER_ID);
            for (what, header) in &bad {
                let (status, body) = send(&c, node, method, &path, header.as_deref()).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} on {method} {route} through n{node}: {body}");
                assert_eq!(body["success"], false, "{body}");
                assert_eq!(body["error"], "unauthorized", "{body}");
                assert!(!body["message"].as_str().unwrap_or_default().is_empty(), "{body}");
                checked += 1;
            }
            for (what, role, secret) in &creds {
                let (status, body) = send(&c, node, method, &path, Some(&format!("Bearer {secret}"))).await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{what} on {method} {route}: {body}");
                if access.admits(*role) {
                    assert_ne!(status, StatusCode::FORBIDDEN, "{what} may {method} {route} (n{node}): {body}");
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what} may not {method} {route} (n{node}): {body}");
                    assert_eq!(body["error"], "forbidden", "{body}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 700, "{checked} requests checked");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_credential_acts_for_its_own_id_only() {
    let c = TestCluster::start(1).await;
    let node = c.wait_leader(Duration::from_secs(10)).await;
    let jwt = token(&claims(WORKER_ID, Role::Worker));
    for secret in [WORKER_KEY, jwt.as_str()] {
        let auth = format!("Bearer {secret}");
        for (method, route, access) in ROUTES.iter().filter(|(_, r, _)| r.contains("{worker_id}")) {
            if !access.admits(Role::Worker) {
                continue;
            }
            let (status, body) = send(&c, node, method, &concrete(route, "someone-else"), Some(&auth)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {route} for another worker: {body}");
        }
        // Its own: past authorization.
        let (status, body) = send(&c, node, "GET", &format!("/api/workers/{WORKER_ID}"), Some(&auth)).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    }
    c.shutdown().await;
}

/// A pool key (`pool-*`, configured as the key itself) acts for every worker whose id has
/// its prefix, and for no other; it is still only a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_key_acts_for_its_workers_only() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let register = |node: u64, id: &str| {
        let rb = c.http.post(c.url(node, &format!("/api/workers/{id}/register")));
        async move {
            let r = rb.bearer_auth(POOL_KEY).json(&json!({"max_tasks": 1, "tags": []})).send().await.unwrap();
            r.status()
        }
    };
    // Through a follower too: the leader checks the forwarded caller again.
    assert_eq!(register(follower, "pool-7").await, StatusCode::OK);
    assert_eq!(register(leader, "pool-8").await, StatusCode::OK);
    assert_eq!(register(follower, "other-1").await, StatusCode::FORBIDDEN);
    assert_eq!(register(leader, "pool").await, StatusCode::FORBIDDEN, "the bare prefix is not in the pool");
    let (status, _) = send(&c, follower, "GET", "/api/tasks", Some(&format!("Bearer {POOL_KEY}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    c.shutdown().await;
}

/// Issue 14's attack: an admin limits a worker with `PUT`; the worker's own credential
/// re-registers with more tags and slots. The admin's settings are kept apart and win:
/// the worker may drop tags and lower its slots, never widen them, so it is never placed
/// a task whose tags the admin did not grant it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_credential_cannot_widen_what_an_admin_set() {
    let c = TestCluster::start(1).await;
    let node = c.wait_leader(Duration::from_secs(10)).await;
    let worker = |method: &str, path: &str, body: Value| {
        let rb = c.http.request(Method::from_bytes(method.as_bytes()).unwrap(), c.url(node, path));
        async move {
            let r = rb.bearer_auth(WORKER_KEY).json(&body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let register = |tags: Value, slots: u32| {
        worker("POST", &format!("/api/workers/{WORKER_ID}/register"), json!({"max_tasks": slots, "tags": tags}))
    };
    let (status, body) = register(json!(["gpu"]), 4).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a = c
        .call(
            node,
            Method::PUT,
            &format!("/api/workers/{WORKER_ID}"),
            Some(json!({"tags": ["gpu"], "max_tasks": 2})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // The worker re-registers wider: more slots, and the tag of the secret-holding tasks.
    let (status, body) = register(json!(["gpu", "payroll"]), 64).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = c.get(node, &format!("/api/workers/{WORKER_ID}")).await;
    assert_eq!(
        (view.data()["max_tasks"].clone(), view.data()["tags"].clone()),
        (json!(2), json!(["gpu"])),
        "{}",
        view.body
    );
    // A task only a `payroll` worker may run stays pending: this worker is not eligible.
    let task = c
        .post(node, "/api/tasks", json!({"name": "pay", "executor": "shell", "command": "echo $SECRET", "tags": ["payroll"], "environment": {"SECRET": "s3cr3t"}}))
        .await;
    let id = task.data()["id"].as_u64().unwrap();
    let run = c.post(node, &format!("/api/tasks/{id}/trigger"), json!({})).await;
    assert_eq!(run.status, StatusCode::CREATED, "{}", run.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, held) = worker("GET", &format!("/api/workers/{WORKER_ID}/assignments"), Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["data"], json!([]), "the worker was given a payroll run: {held}");
    // Narrowing is its right: fewer slots, fewer tags.
    let (status, _) = register(json!([]), 1).await;
    assert_eq!(status, StatusCode::OK);
    let view = c.get(node, &format!("/api/workers/{WORKER_ID}")).await;
    assert_eq!((view.data()["max_tasks"].clone(), view.data()["tags"].clone()), (json!(1), json!([])), "{}", view.body);
    c.shutdown().await;
}
