//! Firing under nodes whose wall clocks are skewed with libfaketime.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::fixture::{Cluster, FAKETIME_LIB};

/// Guarantee 3 under clock skew: nodes whose wall clocks run 20 s behind and 5 s ahead take
/// turns leading a per-second task; no tick gets two runs, and fired + skipped accounts for
/// exactly the ticks up to the task's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_leaders_never_fire_a_tick_twice_and_account_for_every_tick() {
    if !Path::new(FAKETIME_LIB).exists() {
        panic!("libfaketime is missing: install the faketime package (scripts/install-deps.sh faketime)");
    }
    let mut c = Cluster::start_with(3, 500);
    c.spawn(0);
    c.spawn_with_clock(1, Some("-20s"));
    c.spawn_with_clock(2, Some("+5s"));
    c.wait_healthy(Duration::from_secs(30)).await;
    let body = json!({"name": "skewed", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let created = c.post(0, "/api/tasks", Some(body)).await;
    let id = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {created}"));
    // Move leadership around: kill whoever leads, three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = c.get(0, "/api/health").await["data"]["raft"]["leader_id"].as_u64().unwrap_or(1) as usize - 1;
        c.kill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match leader {
            1 => c.spawn_with_clock(1, Some("-20s")),
            2 => c.spawn_with_clock(2, Some("+5s")),
            _ => c.spawn(0),
        }
        c.wait_healthy(Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let task = c.get(0, &format!("/api/tasks/{id}")).await;
    let mut ticks = Vec::new();
    for page in 1.. {
        let v = c.get(0, &format!("/api/tasks/{id}/runs?size=100&page={page}")).await;
        let items = v["data"]["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        ticks.extend(items.iter().map(|r| r["scheduled_at"].as_str().unwrap().to_string()));
    }
    let distinct: BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
    let created_at = parse(task["data"]["created_at"].as_str().unwrap());
    let cursor = parse(task["data"]["cursor"].as_str().unwrap());
    let fired = task["data"]["fire_count"].as_u64().unwrap();
    let skipped = task["data"]["skipped_ticks"].as_u64().unwrap();
    // Whole seconds in (created_at, cursor]: `created_at` has sub-second precision, so the
    // first tick is the next whole second.
    let expected = (cursor - created_at) as u64;
    assert_eq!(fired, ticks.len() as u64);
    assert_eq!(fired + skipped, expected, "fired {fired} + skipped {skipped} != {expected} ticks up to the cursor");
    assert!(fired > 0);
}
