//! Create throughput and latency through a follower of a 3-node loopback cluster, at 1,
//! 16 and 64 concurrent clients, beside this machine's fsync latency (each acknowledged
//! write costs at least one fsync on the leader and on a follower).
//!
//! `cargo bench --bench writes` prints a table. Bounded: at most `OPS` creates per row
//! and `ROW_LIMIT` of wall time.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::Mutex;

#[allow(dead_code, reason = "the bench uses part of the test fixture")]
#[path = "../tests/cluster/fixture.rs"]
mod fixture;
mod support;

use support::percentile;

const ROW_LIMIT: Duration = Duration::from_secs(20);

/// Median and p99 of 4 KiB write + fdatasync in this machine's temp dir.
fn fsync_latency_ms() -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let block = vec![7u8; 4096];
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn run_row(c: &fixture::TestCluster, node: u64, clients: usize, ops: usize, tag: &str) -> (usize, f64, Vec<f64>) {
    let next = Arc::new(Mutex::new(0usize));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(ops)));
    let url = c.url(node, "/api/tasks");
    let started = Instant::now();
    let deadline = started + ROW_LIMIT;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (next, lat, url, http, tag) = (next.clone(), lat.clone(), url.clone(), c.http.clone(), tag.to_string());
        handles.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().await;
                    if *n >= ops || Instant::now() > deadline {
                        return;
                    }
                    *n += 1;
                    *n
                };
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(fixture::KEY)
                    .json(&serde_json::json!({"name": format!("{tag}-{i}"), "executor": "shell", "command": "true"}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), StatusCode::CREATED);
                lat.lock().await.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let mut l = lat.lock().await.clone();
    l.sort_by(|a, b| a.total_cmp(b));
    (l.len(), secs, l)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (fs50, fs99) = fsync_latency_ms();
        let c = fixture::TestCluster::start(3).await;
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let follower = c.follower(leader);
        // Warm up connections and caches.
        run_row(&c, follower, 4, 50, "warm").await;
        println!("fsync (4 KiB write + fdatasync): p50 {fs50:.2} ms, p99 {fs99:.2} ms");
        println!("creates through a follower of a 3-node loopback cluster (HTTP -> forward -> commit -> apply)");
        println!("{:>8} {:>8} {:>8} {:>10} {:>9} {:>9}", "clients", "ops", "secs", "ops/s", "p50 ms", "p99 ms");
        for (clients, ops) in [(1usize, 300usize), (16, 2000), (64, 4000)] {
            let (n, secs, lat) = run_row(&c, follower, clients, ops, &format!("c{clients}")).await;
            println!(
                "{clients:>8} {n:>8} {secs:>8.2} {:>10.0} {:>9.2} {:>9.2}",
                n as f64 / secs,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        }
        c.shutdown().await;
    });
}
