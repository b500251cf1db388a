//! Many tasks due in the same second on a 3-node loopback cluster: how long until every
//! fire is committed, the schedule lag (run creation time minus nominal tick), the CPU
//! the process (all three nodes) spent meanwhile, memory per task, the p99 of a GET of
//! one task served by the leader while it fires, and how many new terms began (elections).
//!
//! `cargo bench --bench firing [-- 1000 10000 100000]` prints a table; with
//! `BENCH_SAMPLES=FILE` it also writes every row's lags (JSON) for `bench/bench.py`'s CDF.
//! Bounded: creating and firing a row stops after `ROW_LIMIT`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};

#[allow(dead_code, reason = "the bench uses part of the test fixture")]
#[path = "../tests/cluster/fixture.rs"]
mod fixture;
mod support;

use support::percentile;

const ROW_LIMIT: Duration = Duration::from_secs(300);

/// (user + system CPU seconds, resident set KiB) of this process.
fn cpu_and_rss() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

async fn create_batch(c: &fixture::TestCluster, node: u64, n: usize, tag: &str, schedule: &str) -> usize {
    let url = c.url(node, "/api/tasks");
    let deadline = Instant::now() + ROW_LIMIT;
    let mut created = 0;
    let chunks: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(64).map(|c| c.to_vec()).collect();
    for chunk in chunks {
        if Instant::now() > deadline {
            break;
        }
        let reqs = chunk.into_iter().map(|i| {
            c.http
                .post(&url)
                .bearer_auth(fixture::KEY)
                .json(&serde_json::json!({"name": format!("{tag}-{i}"), "executor": "shell", "command": "true", "schedule": schedule}))
                .send()
        });
        created += futures::future::join_all(reqs)
            .await
            .into_iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 201))
            .count();
    }
    created
}

/// The schedule lag (ms) of every run the store holds for `tick`.
fn fired_runs(store: &raftcron::storage::Store, tick: DateTime<Utc>) -> Vec<f64> {
    let mut lags = Vec::new();
    store
        .scan_runs(|r| {
            if r.scheduled_at == tick {
                lags.push((r.created_at - r.scheduled_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
            true
        })
        .unwrap();
    lags
}

/// GETs `url` every 10 ms until `stop` is set (or `ROW_LIMIT`); the latencies in ms of
/// those answered 200, and how many were not.
async fn reads_meanwhile(http: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> (Vec<f64>, usize) {
    let (mut out, mut failed) = (Vec::new(), 0);
    let limit = Instant::now() + ROW_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
        let t = Instant::now();
        if http.get(&url).bearer_auth(fixture::KEY).send().await.is_ok_and(|r| r.status() == 200) {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (out, failed)
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 10_000] } else { sizes };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = fixture::TestCluster::start(3).await;
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let follower = c.follower(leader);
        println!(
            "{:>8} {:>10} {:>12} {:>10} {:>10} {:>10} {:>12} {:>10} {:>6}",
            "tasks", "create s", "all fired s", "lag p50", "lag p99", "cpu s", "rss/task B", "GET p99", "terms"
        );
        let mut samples = Vec::new();
        for n in sizes {
            let (_, rss_before) = cpu_and_rss();
            // A tick far enough ahead for the creates to finish (about 2k creates/s).
            let lead = Duration::from_secs(5 + n as u64 / 1500);
            let tick: DateTime<Utc> =
                (Utc::now() + chrono::Duration::from_std(lead).unwrap()).with_nanosecond(0).unwrap();
            let schedule = format!("{} {} {} * * *", tick.second(), tick.minute(), tick.hour());
            let started = Instant::now();
            let created = create_batch(&c, follower, n, &format!("n{n}"), &schedule).await;
            let create_s = started.elapsed().as_secs_f64();
            let (_, rss_after) = cpu_and_rss();
            if Utc::now() >= tick {
                println!("{n:>8} creates took {create_s:.1} s, past the tick; row skipped");
                continue;
            }
            tokio::time::sleep((tick - Utc::now()).to_std().unwrap_or_default()).await;
            let (cpu0, _) = cpu_and_rss();
            let t0 = Instant::now();
            let leader = c.wait_leader(Duration::from_secs(10)).await;
            let term0 = c.core(leader).status(false).term;
            let core = c.core(leader);
            let fired_before = core.metrics.ticks_fired.get();
            let stop_reads = Arc::new(AtomicBool::new(false));
            let reads =
                tokio::spawn(reads_meanwhile(c.http.clone(), c.url(leader, "/api/tasks/1"), stop_reads.clone()));
            // Done when the leader counted every fire committed (an atomic read, so the
            // wait costs nothing); once a second, and if leadership moved, count the runs.
            let mut polls = 0u32;
            while t0.elapsed() < ROW_LIMIT {
                let counted = core.metrics.ticks_fired.get() - fired_before;
                polls += 1;
                if counted >= created as u64
                    || (polls.is_multiple_of(200) && fired_runs(&core.store, tick).len() >= created)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let all_fired_s = t0.elapsed().as_secs_f64();
            let (cpu1, _) = cpu_and_rss();
            stop_reads.store(true, Ordering::Relaxed);
            let (mut get, get_failed) = reads.await.unwrap();
            if get_failed > 0 {
                println!("{get_failed} GETs during the fire were not answered 200 (left out of GET p99)");
            }
            get.sort_by(|a, b| a.total_cmp(b));
            let term1 = c.core(c.wait_leader(Duration::from_secs(10)).await).status(false).term;
            let mut lags = fired_runs(&core.store, tick);
            lags.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{created:>8} {create_s:>10.1} {all_fired_s:>12.2} {:>8.1}ms {:>8.1}ms {:>10.1} {:>12} {:>8.1}ms {:>6}",
                percentile(&lags, 0.5),
                percentile(&lags, 0.99),
                cpu1 - cpu0,
                (rss_after.saturating_sub(rss_before) * 1024) / created.max(1) as u64,
                percentile(&get, 0.99),
                term1 - term0
            );
            // At most 1,000 points per row: the CDF's shape, not every fire.
            let step = (lags.len() / 1000).max(1);
            let points: Vec<f64> = lags.iter().step_by(step).copied().collect();
            samples.push(serde_json::json!({"tasks": created, "lags_ms": points}));
        }
        if let Ok(path) = std::env::var("BENCH_SAMPLES") {
            std::fs::write(path, serde_json::to_vec(&samples).unwrap()).unwrap();
        }
        c.shutdown().await;
    });
}
