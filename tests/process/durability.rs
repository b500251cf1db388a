//! Every acknowledged write survives SIGKILL of any node, and of all of them at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use crate::fixture::{Cluster, KEY};

#[derive(Default)]
struct Outcomes {
    acked: BTreeSet<String>,
    attempted: BTreeSet<String>,
}

/// Creates uniquely named tasks through rotating nodes until `stop`.
async fn write_until(
    http: reqwest::Client,
    urls: Vec<String>,
    client: usize,
    stop: Instant,
    out: Arc<Mutex<Outcomes>>,
) {
    let mut n = 0;
    while Instant::now() < stop {
        n += 1;
        let name = format!("c{client}-{n}");
        out.lock().await.attempted.insert(name.clone());
        let url = &urls[(client + n) % urls.len()];
        let resp = http
            .post(format!("http://{url}/api/tasks"))
            .bearer_auth(KEY)
            .json(&json!({"name": name, "executor": "shell", "command": "true"}))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 201 => {
                out.lock().await.acked.insert(name);
            }
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn assert_no_loss(c: &Cluster, out: &Outcomes) {
    for i in 0..c.nodes.len() {
        let names = c.task_names(i).await;
        let lost: Vec<_> = out.acked.difference(&names).collect();
        assert!(lost.is_empty(), "node {}: acknowledged creates lost: {lost:?}", i + 1);
        let phantom: Vec<_> = names.difference(&out.attempted).collect();
        assert!(phantom.is_empty(), "node {}: tasks nobody created: {phantom:?}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_every_node_mid_write_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(30)).await;
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let urls: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let stop = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> =
        (0..6).map(|k| tokio::spawn(write_until(c.http.clone(), urls.clone(), k, stop, out.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        c.kill(i);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked_before_crash = out.lock().await.acked.len();
    assert!(acked_before_crash > 10, "too few writes were acknowledged to test anything: {acked_before_crash}");
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_healthy(Duration::from_secs(30)).await;
    assert_no_loss(&c, &*out.lock().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_killed_mid_stream_recovers_and_catches_up() {
    let mut c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(30)).await;
    let out = Arc::new(Mutex::new(Outcomes::default()));
    // Writes go only to nodes 1 and 2; node 3 is killed and restarted meanwhile.
    let urls: Vec<String> = c.nodes[..2].iter().map(|n| n.http.clone()).collect();
    let stop = Instant::now() + Duration::from_secs(4);
    let writers: Vec<_> =
        (0..4).map(|k| tokio::spawn(write_until(c.http.clone(), urls.clone(), k, stop, out.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.kill(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.spawn(2);
    for w in writers {
        w.await.unwrap();
    }
    c.wait_healthy(Duration::from_secs(30)).await;
    assert_no_loss(&c, &*out.lock().await).await;
    // And the replicas converge to the same applied index and state digest.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = c.get(0, "/api/cluster").await;
        let applied: BTreeSet<String> =
            v["data"]["members"].as_array().unwrap().iter().map(|m| m["status"]["applied_index"].to_string()).collect();
        if applied.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "applied indexes differ: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
