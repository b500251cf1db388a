//! What a job can see of the agent that runs it: no credential of any kind — not in its
//! environment, not in its agent's or any other process's `/proc/<pid>/environ`, not in an
//! inherited descriptor — in a standalone `raftcron worker`, a `serve --worker` node and
//! `raftcron dev`. As root (CI), the agents run jobs as `nobody` (`run_as`), since root
//! can read any process's environment; as another user, the agent's non-dumpable flag is
//! what keeps its environment unreadable.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fixture::{free_port, raftcron_command, spawn_worker_with, Cluster, CLUSTER_SECRET, KEY};

/// Prints everything a job could read credentials from: PID 1's environment, every
/// ancestor's (its shim, its agent, the node it may be embedded in, …), its own, and its
/// descriptors. PID 1's first and capped: only the output's tail is kept, and PID 1's
/// environment is not ours to size. Its stderr joins its stdout (`exec 2>&1`): a non-root
/// job cannot read its ancestors' environments, and the errors saying so must land in
/// order between the `pid` lines, not wherever the agent's two pipe readers put them.
const PROBE: &str = "exec 2>&1; head -c 1500 /proc/1/environ | tr '\\0' '\\n'; echo '--- ancestors'; \
                     p=$PPID; while [ \"$p\" -gt 1 ]; do echo \"pid $p\"; tr '\\0' '\\n' < /proc/$p/environ; \
                     p=$(cut -d' ' -f4 /proc/$p/stat); done; echo '--- self'; tr '\\0' '\\n' < /proc/self/environ; \
                     echo '--- env'; env; echo '--- fds'; ls -la /proc/self/fd; echo \"--- uid $(id -u)\"";

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `--run-as nobody` as root; nothing otherwise.
fn run_as_args() -> Vec<&'static str> {
    if is_root() {
        vec!["--run-as", "nobody"]
    } else {
        Vec::new()
    }
}

/// Creates the probe task through `base`, triggers it, and returns its finished run.
async fn run_probe(http: &reqwest::Client, base: &str, logs: impl Fn() -> String) -> Value {
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http.request(method, format!("{base}{path}")).bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            match req.send().await {
                Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            }
        }
    };
    let body = json!({"name": "probe", "executor": "shell", "command": PROBE, "environment": {"JOB_VAR": "visible"}});
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let (status, v) = call(reqwest::Method::POST, "/api/tasks".into(), Some(body.clone())).await;
        if status == 201 {
            break v["data"]["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "create failed: {status} {v}; logs: {}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, v) = call(reqwest::Method::POST, format!("/api/tasks/{task}/trigger"), None).await;
    assert_eq!(status, 201, "{v}");
    let run = v["data"]["id"].as_u64().unwrap();
    loop {
        let (_, v) = call(reqwest::Method::GET, format!("/api/runs/{run}"), None).await;
        if matches!(v["data"]["status"].as_str(), Some("succeeded" | "failed" | "timed_out")) {
            return v["data"].clone();
        }
        assert!(Instant::now() < deadline, "probe run not finished: {v}; logs: {}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every credential-looking string in `output`: the keys and secret the test gave its
/// processes, the secret's hash, and any generated `rc_` key (an embedded worker's own).
fn credentials_in(output: &str) -> Vec<String> {
    let secret_hash = hex::encode(Sha256::digest(CLUSTER_SECRET.as_bytes()));
    let mut found: Vec<String> = [KEY, CLUSTER_SECRET, secret_hash.as_str()]
        .iter()
        .filter(|c| output.contains(*c))
        .map(|c| c.to_string())
        .collect();
    for (at, _) in output.match_indices("rc_") {
        let rest = &output[at + 3..];
        if rest.len() >= 32 && rest[..32].bytes().all(|b| b.is_ascii_hexdigit()) {
            found.push(output[at..at + 35].to_string());
        }
    }
    found
}

fn assert_clean(run: &Value) {
    assert_eq!(run["status"], "succeeded", "{run}");
    let output = run["output"].as_str().unwrap();
    let leaked = credentials_in(output);
    assert!(leaked.is_empty(), "the job read credentials {leaked:?}:\n{output}");
    assert!(output.contains("--- ancestors\npid "), "the probe walked no ancestor: {output}");
    let env = output.split("--- env").nth(1).expect("the probe ran to its env section");
    for expected in [
        format!("RAFTCRON_RUN_ID={}", run["id"]),
        format!("RAFTCRON_TASK_ID={}", run["task_id"]),
        "RAFTCRON_ATTEMPT=1".to_string(),
        "RAFTCRON_SCHEDULED_AT=".to_string(),
        "RAFTCRON_WORKER_ID=".to_string(),
        "JOB_VAR=visible".to_string(),
    ] {
        assert!(env.contains(&expected), "{expected} missing from the job's environment:\n{env}");
    }
    // Only stdin (/dev/null), the two output pipes, and `ls`'s own directory handle.
    let fds = output.split("--- fds").nth(1).unwrap();
    for line in fds.lines().filter(|l| l.contains(" -> ")) {
        let target = line.rsplit(" -> ").next().unwrap();
        let allowed = target == "/dev/null" || target.starts_with("pipe:[") || target.starts_with("/proc/");
        assert!(allowed, "the job inherited a descriptor it should not have: {line}\n{fds}");
    }
    if is_root() {
        assert!(output.contains("--- uid 65534"), "run_as nobody: {output}");
    }
}

#[test]
fn the_probe_sees_what_it_is_meant_to_see() {
    // The checker itself: a leak is found.
    assert_eq!(credentials_in(&format!("X={KEY}")), vec![KEY.to_string()]);
    let generated = "RAFTCRON_API_KEY=rc_0123456789abcdef0123456789abcdef";
    assert_eq!(credentials_in(generated), vec!["rc_0123456789abcdef0123456789abcdef".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_agents_job_sees_no_credential() {
    let c = Cluster::start(1);
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut w = spawn_worker_with(&c, 0, "probe-worker", &run_as_args());
    let run = run_probe(&c.http, &format!("http://{}", c.nodes[0].http), || c.logs()).await;
    let _ = w.kill();
    let _ = w.wait();
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_workers_job_sees_no_credential() {
    let run_as = if is_root() { "[worker]\nrun_as = \"nobody\"\n" } else { "" };
    let mut c = Cluster::configured(1, 500, run_as);
    c.spawn_node(0, None, &["--worker", "embedded"]);
    c.wait_healthy(Duration::from_secs(30)).await;
    let run = run_probe(&c.http, &format!("http://{}", c.nodes[0].http), || c.logs()).await;
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dev_workers_job_sees_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("dev.log");
    let mut dev = raftcron_command(std::fs::File::create(&log_path).unwrap())
        .args(["dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http", &http])
        .args(run_as_args())
        .env("RAFTCRON_API_KEY", KEY)
        .spawn()
        .expect("raftcron dev starts");
    let client = reqwest::Client::new();
    let run =
        run_probe(&client, &format!("http://{http}"), || std::fs::read_to_string(&log_path).unwrap_or_default()).await;
    let _ = dev.kill();
    let _ = dev.wait();
    assert_clean(&run);
}
