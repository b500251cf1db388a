//! The dashboard over real HTTP against 3 in-process nodes, without a browser (the
//! browser suite, `scripts/browser-test.sh`, drives the pages as a person would): who may
//! sign in, a session accepted by every node and by no API route, CSRF and cross-origin
//! writes refused with nothing done, a viewer shown no write and refused one anyway, an
//! edit racing another reported as a conflict, attacker-chosen text escaped, and the
//! security headers on every page.

use std::time::Duration;

use raftcron::api::auth::{Caller, Credential};
use raftcron::api::jwt::{mint, Claims};
use raftcron::config::Role;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::fixture::{TestCluster, KEY, OPERATOR_KEY, VIEWER_KEY, WORKER_KEY};

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in on node `id` with `credential`; the session cookie (`name=value`).
async fn sign_in(c: &TestCluster, id: u64, credential: &str) -> Result<String, (StatusCode, String)> {
    let resp = browser().post(c.url(id, "/ui/login")).form(&[("credential", credential)]).send().await.unwrap();
    let status = resp.status();
    let cookie = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("raftcron_session=") && !v.starts_with("raftcron_session=;"))
        .map(|v| v.split(';').next().unwrap().to_string());
    match (status, cookie) {
        (StatusCode::SEE_OTHER, Some(cookie)) => Ok(cookie),
        _ => Err((status, resp.text().await.unwrap())),
    }
}

async fn page(c: &TestCluster, id: u64, cookie: &str, path: &str) -> (StatusCode, String) {
    let resp = browser().get(c.url(id, path)).header(COOKIE, cookie).send().await.unwrap();
    let status = resp.status();
    if status.is_success() {
        let csp = resp.headers().get(CONTENT_SECURITY_POLICY).expect("every page has a CSP").to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    }
    (status, resp.text().await.unwrap())
}

async fn run_count(c: &TestCluster, node: u64, path: &str) -> u64 {
    c.get(node, path).await.data()["total"].as_u64().unwrap()
}

/// Whether any element has the class `write` (the dashboard's mark on every write).
fn has_write_class(html: &str) -> bool {
    html.split("class=\"").skip(1).any(|rest| rest.split('"').next().unwrap().split(' ').any(|c| c == "write"))
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("the page has a form with a CSRF token") + 19;
    html[at..at + 32].to_string()
}

/// POSTs a dashboard form; the status and where it redirects.
async fn submit(
    c: &TestCluster,
    id: u64,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
    origin: Option<&str>,
) -> (StatusCode, String) {
    let mut rb = browser().post(c.url(id, path)).header(COOKIE, cookie).form(form);
    if let Some(o) = origin {
        rb = rb.header("origin", o);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let to = resp.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_string());
    (status, to.unwrap_or_else(String::new))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_cluster_wide_and_only_the_dashboard_accepts_them() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);

    let (status, _) = page(&c, follower, "", "/ui/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "signed out: sent to the sign-in page");
    let (status, body) = sign_in(&c, follower, "not-a-key").await.unwrap_err();
    assert!(status == StatusCode::UNAUTHORIZED && body.contains("invalid API key"), "{status} {body}");
    let (_, body) = sign_in(&c, follower, WORKER_KEY).await.unwrap_err();
    assert!(body.contains("worker credential cannot sign in"), "{body}");

    let cookie = sign_in(&c, follower, OPERATOR_KEY).await.expect("an operator signs in");
    for id in c.running_ids() {
        let (status, body) = page(&c, id, &cookie, "/ui/").await;
        assert_eq!(status, StatusCode::OK, "node {id} accepts a session another node minted");
        assert!(body.contains(&format!("id=\"leader\">node {leader}<")), "node {id} names the leader");
    }
    // The session token is not an API credential, nor is the cookie read by the API.
    let token = cookie.trim_start_matches("raftcron_session=");
    let api = browser().get(c.url(leader, "/api/tasks")).bearer_auth(token).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let api = browser().get(c.url(leader, "/api/tasks")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    // Signed in with a JWT: the session ends no later than the token.
    let config = crate::auth::jwt_config();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        sub: "alice".into(),
        role: Role::Viewer,
        exp: now + 120,
        nbf: None,
        iat: None,
        iss: Some("raftcron-test".into()),
        aud: Some(json!("raftcron")),
    };
    let jwt = mint(&config, &claims, None).unwrap();
    let resp = browser().post(c.url(leader, "/ui/login")).form(&[("credential", jwt.as_str())]).send().await.unwrap();
    let set = resp.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_string();
    let max_age: u64 = set.split("Max-Age=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    assert!(max_age <= 120 && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_unauthorized_writes_do_nothing_and_text_is_escaped() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let task = c
        .post(leader, "/api/tasks", json!({"name": "<script>alert(1)</script>", "executor": "shell", "command": "echo '<img src=x onerror=alert(2)>'"}))
        .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    let id = task.data()["id"].as_u64().unwrap();
    let trigger = format!("/ui/tasks/{id}/trigger");
    let runs_path = format!("/api/tasks/{id}/runs");

    let admin = sign_in(&c, follower, KEY).await.unwrap();
    let (_, html) = page(&c, follower, &admin, &format!("/ui/tasks/{id}")).await;
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "raw markup from a task reached the page");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("&lt;img src=x"));
    let (_, list) = page(&c, follower, &admin, "/ui/tasks").await;
    assert!(!list.contains("<script>alert") && list.contains("&lt;script&gt;"));
    assert!(has_write_class(&html), "an admin is shown the task's writes");
    let token = csrf_of(&html);

    // No token, another session's token, another site's Origin: refused, nothing done.
    let other = sign_in(&c, follower, KEY).await.unwrap();
    let (_, other_html) = page(&c, follower, &other, "/ui/tasks").await;
    let foreign = csrf_of(&other_html);
    assert_ne!(foreign, token);
    assert_eq!(submit(&c, follower, &admin, &trigger, &[], None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(submit(&c, follower, &admin, &trigger, &[("csrf", &foreign)], None).await.0, StatusCode::FORBIDDEN);
    let evil = Some("https://evil.example");
    assert_eq!(submit(&c, follower, &admin, &trigger, &[("csrf", &token)], evil).await.0, StatusCode::FORBIDDEN);
    assert_eq!(run_count(&c, leader, &runs_path).await, 0, "a refused form made a run");
    let own = Some(format!("http://{}", c.nodes[&follower].http));
    let (status, to) = submit(&c, follower, &admin, &trigger, &[("csrf", &token)], own.as_deref()).await;
    assert_eq!((status, to.as_str()), (StatusCode::SEE_OTHER, format!("/ui/tasks/{id}").as_str()));
    assert_eq!(run_count(&c, leader, &runs_path).await, 1, "the genuine form made one run");

    // A viewer sees no write and is refused one it forges with its own valid token.
    let viewer = sign_in(&c, follower, VIEWER_KEY).await.unwrap();
    for path in
        [format!("/ui/tasks/{id}"), "/ui/tasks".into(), "/ui/workers".into(), "/ui/cluster".into(), "/ui/runs".into()]
    {
        let (status, html) = page(&c, follower, &viewer, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!has_write_class(&html), "a viewer is shown a write on {path}");
    }
    let (_, html) = page(&c, follower, &viewer, "/ui/tasks").await;
    let (status, _) = submit(&c, follower, &viewer, &trigger, &[("csrf", &csrf_of(&html))], None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the API's refusal is shown as a message");
    assert_eq!(run_count(&c, leader, &runs_path).await, 1, "the API refused the viewer's trigger");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_racing_another_is_reported_and_overwrites_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let id = c.create_task(leader, "raced").await["id"].as_u64().unwrap();
    let admin = sign_in(&c, follower, KEY).await.unwrap();
    let (_, form) = page(&c, follower, &admin, &format!("/ui/tasks/{id}/edit")).await;
    assert!(form.contains("name=\"version\" value=\"1\""), "the form carries the version it edits");
    let api =
        c.call(leader, Method::PUT, &format!("/api/tasks/{id}"), Some(json!({"command": "echo by-api"})), &[]).await;
    assert_eq!(api.status, StatusCode::OK);

    let fields = [
        ("csrf", csrf_of(&form)),
        ("version", "1".into()),
        ("name", "raced".into()),
        ("executor", "shell".into()),
        ("command", "echo by-dashboard".into()),
        ("schedule", String::new()),
        ("timeout_seconds", "30".into()),
    ];
    let resp = browser()
        .post(c.url(follower, &format!("/ui/tasks/{id}/edit")))
        .header(COOKIE, &admin)
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the form is shown again");
    let html = resp.text().await.unwrap();
    assert!(html.contains("id=\"conflict\"") && html.contains("changed by someone else"), "{html}");
    assert!(html.contains("echo by-dashboard"), "the user's edits are kept in the form");
    let now = c.get(leader, &format!("/api/tasks/{id}")).await;
    assert_eq!(now.data()["command"], "echo by-api", "the other edit survived");
    assert_eq!(now.data()["version"], 2);

    // The same form from the current version saves.
    let mut fields = fields.to_vec();
    fields[1].1 = "2".into();
    let (status, to) = submit(
        &c,
        follower,
        &admin,
        &format!("/ui/tasks/{id}/edit"),
        &fields.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
        None,
    )
    .await;
    assert_eq!((status, to), (StatusCode::SEE_OTHER, format!("/ui/tasks/{id}")));
    assert_eq!(c.get(leader, &format!("/api/tasks/{id}")).await.data()["command"], "echo by-dashboard");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_newest_runs_of_all_tasks_filter_by_state_and_time() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.follower(leader);
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let id = c.create_task(leader, name).await["id"].as_u64().unwrap();
        for _ in 0..2 {
            let r = c.post(leader, &format!("/api/tasks/{id}/trigger"), json!({})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            runs.push(r.data()["id"].as_u64().unwrap());
        }
    }
    let cancelled = c.post(leader, &format!("/api/runs/{}/cancel", runs[1]), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);

    let all = c.get(follower, "/api/runs?size=3").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let ids: Vec<u64> = all.data()["items"].as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![runs[3], runs[2], runs[1]], "newest first, across tasks, one page");
    assert_eq!((all.data()["total"].as_u64(), all.data()["complete"].as_bool()), (Some(4), Some(true)));
    assert_eq!(all.data()["by_status"], json!({"pending": 3, "cancelled": 1}));
    let some = c.get(follower, "/api/runs?status=cancelled,failed").await;
    assert_eq!(some.data()["total"], 1);
    assert_eq!(some.data()["items"][0]["id"].as_u64(), Some(runs[1]));
    let later = (chrono::Utc::now() + chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ");
    let none = c.get(follower, &format!("/api/runs?since={later}")).await;
    assert_eq!((none.data()["total"].as_u64(), none.data()["scanned"].as_u64()), (Some(0), Some(0)));
    for bad in [
        "/api/runs?status=done",
        "/api/runs?status=",
        "/api/runs?status=failed,",
        "/api/runs?since=",
        "/api/runs?since=2026-01-02%2003:04:05Z",
        "/api/runs?size=0",
    ] {
        let a = c.get(follower, bad).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ends_with_its_key_and_only_a_failed_cookie_is_cleared() {
    let mut c = TestCluster::start(1).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let cookie = sign_in(&c, 1, OPERATOR_KEY).await.expect("an operator signs in");
    assert_eq!(page(&c, 1, &cookie, "/ui/").await.0, StatusCode::OK);

    // A request without the cookie (a link from another site: SameSite=Strict withholds
    // it) is sent to sign in, and the browser's cookie is left alone.
    let resp = browser().get(c.url(1, "/ui/tasks")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers().get(SET_COOKIE).is_none(), "no cookie was sent: none is cleared");
    let resp = browser().get(c.url(1, "/ui/tasks")).header(COOKIE, "raftcron_session=garbage").send().await.unwrap();
    let cleared = resp.headers().get(SET_COOKIE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(cleared.starts_with("raftcron_session=;") && cleared.contains("Max-Age=0"), "{cleared:?}");

    // A session past half its life is renewed by a page, but never by signing out; and a
    // stray cookie of the same name beside it does not hide it.
    let sessions = raftcron::ui::session::Sessions::new(&c.core(1).config);
    let mut hash = [0u8; 32];
    hex::decode_to_slice(raftcron::config::hash_api_key(OPERATOR_KEY), &mut hash).unwrap();
    let operator = Caller { name: "operator".into(), role: Role::Operator, credential: Credential::ApiKey };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let aged = sessions.mint(&operator, Some(&hash), None, now - 10 * 60);
    let aged_cookie = format!("raftcron_session=garbage; raftcron_session={}", sessions.sign(&aged));
    let session_cookies = |resp: &reqwest::Response| -> Vec<String> {
        let all = resp.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string());
        all.filter(|v| v.starts_with("raftcron_session=")).collect()
    };
    let resp = browser().get(c.url(1, "/ui/")).header(COOKIE, &aged_cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let renewed = session_cookies(&resp);
    assert!(renewed.len() == 1 && !renewed[0].starts_with("raftcron_session=;"), "{renewed:?}");
    let csrf = sessions.csrf(&aged.sid);
    let resp = browser()
        .post(c.url(1, "/ui/logout"))
        .header(COOKIE, &aged_cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    let set = session_cookies(&resp);
    assert!(set.len() == 1 && set[0].starts_with("raftcron_session=;"), "sign-out only clears: {set:?}");

    // Through a TLS-terminating proxy that says so, every cookie is Secure.
    let resp = browser()
        .post(c.url(1, "/ui/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("credential", OPERATOR_KEY)])
        .send()
        .await
        .unwrap();
    let set = resp.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.starts_with("raftcron_session=") && set.ends_with("; Secure"), "{set}");
    let plain = browser().post(c.url(1, "/ui/login")).form(&[("credential", OPERATOR_KEY)]).send().await.unwrap();
    assert!(!plain.headers().get(SET_COOKIE).unwrap().to_str().unwrap().contains("Secure"), "plain HTTP");

    // The sign-in form is bounded like every API body: an oversized one is refused unread.
    let huge = "x".repeat(raftcron::api::MAX_BODY + 1024);
    let resp = browser().post(c.url(1, "/ui/login")).form(&[("credential", huge.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The operator key is rotated: same name and role, another key. The old session ends.
    c.kill(1).await;
    c.opts.sets.push(format!(
        "auth.api_keys=[{{name=\"operator\", role=\"operator\", sha256=\"{}\"}}]",
        raftcron::config::hash_api_key("the-rotated-operator-key")
    ));
    c.restart(1).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let (status, _) = page(&c, 1, &cookie, "/ui/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "a session of the replaced key is over");
    assert!(sign_in(&c, 1, OPERATOR_KEY).await.is_err(), "the old key signs in no more");
    let fresh = sign_in(&c, 1, "the-rotated-operator-key").await.expect("the new key signs in");
    assert_eq!(page(&c, 1, &fresh, "/ui/").await.0, StatusCode::OK);
    c.shutdown().await;
}
