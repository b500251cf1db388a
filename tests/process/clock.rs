//! Firing under nodes whose wall clocks are skewed with libfaketime.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::fixture::{Cluster, FAKETIME_LIB};

/// Guarantee 3 under clock skew: nodes whose wall clocks run 20 s behind and 5 s ahead take
/// turns leading a per-second task; no tick gets two runs, fired + skipped accounts for
/// exactly the ticks up to the task's cursor, and no tick fires early: never before its
/// time by the command clock that fired it, and never more than the fastest leader's lead
/// (5 s) before it by the true clock.
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
    let checked_at = chrono::Utc::now();
    let mut ticks = Vec::new();
    let when = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
    };
    for page in 1.. {
        let v = c.get(0, &format!("/api/tasks/{id}/runs?size=100&page={page}")).await;
        let items = v["data"]["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for r in &items {
            let (tick, fired_at) = (when(&r["scheduled_at"]), when(&r["created_at"]));
            assert!(fired_at >= tick, "tick {tick} fired at {fired_at} by the command clock: early");
            assert!(tick <= checked_at + chrono::Duration::seconds(6), "tick {tick} fired before {checked_at}");
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

/// Regression test: command time was stamped by whichever node took the request, and
/// apply keeps the largest, so one node whose clock ran an hour fast made a per-minute
/// task fire runs an hour in the future, count the hour between as skipped, and move every
/// idempotency key's expiry an hour closer. Command time is now stamped by the leader as
/// it proposes; a fast follower (it never leads here) cannot move it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_clock_runs_an_hour_fast_does_not_move_command_time() {
    if !Path::new(FAKETIME_LIB).exists() {
        panic!("libfaketime is missing: install the faketime package (scripts/install-deps.sh faketime)");
    }
    let mut c = Cluster::start_with(3, 500);
    c.spawn(0);
    c.spawn(1);
    // A leader among the two true clocks first; the fast node then only ever follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.leader_seen_by(0).await.is_none_or(|l| l == 3) {
        assert!(std::time::Instant::now() < deadline, "no leader; logs: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.spawn_with_clock(2, Some("+1h"));
    c.wait_healthy(Duration::from_secs(30)).await;
    let fast = 2;
    let body = json!({"name": "fast", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let created = c.post(fast, "/api/tasks", Some(body)).await;
    let id = created["data"]["id"].as_u64().unwrap_or_else(|| panic!("create failed: {created}"));
    let parse = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
    };
    let skew = parse(&created["data"]["created_at"]) - chrono::Utc::now();
    assert!(skew.num_seconds().abs() < 5, "created_at is {skew} off the true time: {created}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.leader_seen_by(0).await.map(|l| l != 3), Some(true), "the fast node must not lead here");
    let now = chrono::Utc::now();
    let task = c.get(0, &format!("/api/tasks/{id}")).await;
    let runs = c.get(0, &format!("/api/tasks/{id}/runs?size=100")).await;
    let ticks: Vec<_> = runs["data"]["items"].as_array().unwrap().iter().map(|r| parse(&r["scheduled_at"])).collect();
    assert!(!ticks.is_empty(), "the task fired: {task}");
    assert!(ticks.iter().all(|t| *t <= now + chrono::Duration::seconds(1)), "runs scheduled in the future: {ticks:?}");
    assert_eq!(task["data"]["skipped_ticks"], 0, "{task}");
    assert!(parse(&task["data"]["next_run_at"]) <= now + chrono::Duration::seconds(2), "{task}");
}
