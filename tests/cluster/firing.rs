//! Firing through the cluster: every tick of a per-second task becomes exactly one run,
//! across leader kills; manual triggers and the run endpoints.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_second_task_fires_every_tick_exactly_once_across_leader_kills() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let body = json!({"name": "every-second", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let created = c.post(leader, "/api/tasks", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.data()["id"].as_u64().unwrap();
    let created_at: DateTime<Utc> = created.data()["created_at"].as_str().unwrap().parse().unwrap();

    let mut last_kill = Utc::now();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        last_kill = Utc::now();
        c.kill(leader).await;
        c.wait_leader(Duration::from_secs(10)).await;
        c.restart(leader).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let node = c.running_ids()[0];
    let task = c.get(node, &format!("/api/tasks/{id}")).await;
    let runs = c.all_runs(node, id).await;
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
    let distinct: BTreeSet<_> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    // Independently: every whole second after creation up to the last fired tick, once.
    let last = *distinct.iter().next_back().expect("some ticks fired");
    let first = created_at + chrono::Duration::seconds(1);
    let first = first - chrono::Duration::nanoseconds(first.timestamp_subsec_nanos() as i64);
    let expected: BTreeSet<DateTime<Utc>> =
        (0..).map(|k| first + chrono::Duration::seconds(k)).take_while(|t| *t <= last).collect();
    let fired = task.data()["fire_count"].as_u64().unwrap();
    let skipped = task.data()["skipped_ticks"].as_u64().unwrap();
    assert_eq!(fired + skipped, expected.len() as u64, "fired {fired} + skipped {skipped}");
    assert_eq!(skipped, 0, "outages were shorter than the misfire threshold");
    assert_eq!(distinct, expected, "missing or extra ticks");
    // Firing went on after the last leader kill, under a new leader.
    assert!(last > last_kill, "last tick {last} is not after the last leader kill {last_kill}");
    let statuses: BTreeSet<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, BTreeSet::from(["pending"]), "no workers yet: runs wait");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_trigger_through_a_follower_is_idempotent_and_runs_can_be_cancelled() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let f = c.follower(leader);
    let id = c.create_task(leader, "manual").await["id"].as_u64().unwrap();
    let trigger = format!("/api/tasks/{id}/trigger");
    let key = [("Idempotency-Key", "trigger-1")];
    let a = c.call(f, Method::POST, &trigger, None, &key).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.data()["trigger"], "manual");
    assert_eq!(a.data()["status"], "pending");
    let run_id = a.data()["id"].as_u64().unwrap();
    let again = c.call(leader, Method::POST, &trigger, None, &key).await;
    assert_eq!(again.data()["id"].as_u64(), Some(run_id), "same key, same run");
    let other = c.call(f, Method::POST, &trigger, None, &[("Idempotency-Key", "trigger-2")]).await;
    assert_ne!(other.data()["id"].as_u64(), Some(run_id));
    assert_eq!(c.all_runs(f, id).await.len(), 2);
    let status = c.get(f, "/api/system/status").await;
    assert_eq!(status.data()["runs_today"], 2, "{}", status.body);
    assert!(status.data()["success_rate"].is_null(), "no run has finished");
    let runs = c.all_runs(leader, id).await;
    assert!(runs[0]["id"].as_u64() > runs[1]["id"].as_u64(), "newest first");

    let a = c.get(f, &format!("/api/runs/{run_id}")).await;
    assert_eq!(a.data()["task_id"].as_u64(), Some(id));
    let a = c.call(f, Method::POST, &format!("/api/runs/{run_id}/cancel"), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.data()["status"], "cancelled");
    let a = c.call(f, Method::POST, &format!("/api/runs/{run_id}/cancel"), None, &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    // The queue-depth gauge counts the one run still pending. It reads this node's own
    // state, which a write forwarded through it reaches a moment after the leader answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = c.http.get(c.url(f, "/metrics")).send().await.unwrap().text().await.unwrap();
        let line = m.lines().find(|l| l.starts_with("raftcron_runs_pending")).expect("runs_pending gauge").to_string();
        if line.ends_with(" 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(c.get(f, "/api/runs/424242").await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.call(f, Method::POST, "/api/tasks/424242/trigger", None, &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get(f, "/api/tasks/424242/runs").await.status, StatusCode::NOT_FOUND);
    let a = c.call(f, Method::PUT, &format!("/api/tasks/{id}"), Some(json!({"status": "disabled"})), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = c.call(f, Method::POST, &trigger, None, &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("disabled"));
    c.shutdown().await;
}

/// The whole cluster is down for longer than the misfire threshold; on return each policy
/// does what it says, and fired + skipped accounts for every tick exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misfire_policies_after_a_full_cluster_outage() {
    let opts = crate::fixture::Opts { misfire_threshold_s: 2, ..Default::default() };
    let mut c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut ids = Vec::new();
    for policy in ["fire_once", "skip", "catch_up"] {
        let body = json!({"name": policy, "executor": "shell", "command": "true", "schedule": "* * * * * *", "misfire_policy": policy});
        let a = c.post(leader, "/api/tasks", body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        ids.push((policy, a.data()["id"].as_u64().unwrap()));
    }
    // The outage: long enough that several ticks are misfires (threshold 2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for id in [1, 2, 3] {
        c.restart(id).await;
    }
    let restarted: DateTime<Utc> = Utc::now();
    c.wait_leader(Duration::from_secs(15)).await;
    // Wait for the backlog to be worked off — every task's cursor past the restart — not
    // for a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (policy, id) in &ids {
        loop {
            let task = c.get(1, &format!("/api/tasks/{id}")).await;
            let cursor = task.data()["cursor"].as_str().map(|s| s.parse::<DateTime<Utc>>().unwrap());
            if cursor.is_some_and(|cur| cur > restarted + chrono::Duration::seconds(1)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{policy}: firing did not resume: {}", task.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    for (policy, id) in ids {
        let task = c.get(1, &format!("/api/tasks/{id}")).await;
        let runs = c.all_runs(1, id).await;
        let mut ticks: Vec<DateTime<Utc>> =
            runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
        ticks.sort();
        assert!(!ticks.is_empty(), "{policy}: no runs; task {}", task.body);
        let (first, last) = (ticks[0], *ticks.last().unwrap());
        let span = (last - first).num_seconds() as u64 + 1;
        let fired = task.data()["fire_count"].as_u64().unwrap();
        let skipped = task.data()["skipped_ticks"].as_u64().unwrap();
        assert_eq!(fired, ticks.len() as u64, "{policy}");
        assert_eq!(fired + skipped, span, "{policy}: every tick from {first} to {last} is fired or counted as skipped");
        // The longest gap between consecutive fired ticks.
        let gap = ticks.windows(2).map(|w| (w[1] - w[0]).num_seconds()).max().unwrap_or(0);
        match policy {
            "catch_up" => assert_eq!((skipped, gap), (0, 1), "catch_up fires every missed tick"),
            "skip" => assert!(skipped >= 3 && gap >= 4, "skip: skipped {skipped}, gap {gap}"),
            _ => {
                // fire_once: the missed ticks collapse into one run, so there is a gap, but
                // one tick fewer is skipped than with `skip` over the same outage.
                assert!(skipped >= 2 && gap >= 2, "fire_once: skipped {skipped}, gap {gap}");
            }
        }
    }
    c.shutdown().await;
}

/// Run history is pruned through Raft to `run_history_per_task` (finished runs only);
/// `fire_count` keeps counting. `replace` finishes (cancels) each previous run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_history_is_pruned_and_fire_count_keeps_counting() {
    let opts = crate::fixture::Opts { run_history_per_task: 3, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let body = json!({"name": "pruned", "executor": "shell", "command": "true", "schedule": "* * * * * *", "concurrency_policy": "replace"});
    let id = c.post(leader, "/api/tasks", body).await.data()["id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let task = c.get(c.follower(leader), &format!("/api/tasks/{id}")).await;
    let fired = task.data()["fire_count"].as_u64().unwrap();
    let runs = c.all_runs(c.follower(leader), id).await;
    assert!(fired >= 6, "fired {fired}");
    assert!(runs.len() <= 5, "{} runs kept of {fired} fired: {runs:?}", runs.len());
    let pending = runs.iter().filter(|r| r["status"] == "pending").count();
    assert_eq!(pending, 1, "replace leaves only the newest run unfinished");
    c.shutdown().await;
}

/// Pause and resume through a follower: nothing fires while paused, the ticks that passed
/// are counted as skipped on resume, and every tick since creation is accounted for once.
/// A disabled task cannot be paused, and only an admin's resume enables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_ticks_are_counted_as_skipped_on_resume() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let node = c.follower(leader);
    let body = json!({"name": "pausable", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let created = c.post(node, "/api/tasks", body).await;
    let id = created.data()["id"].as_u64().unwrap();
    let created_at: DateTime<Utc> = created.data()["created_at"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let paused = c.post(node, &format!("/api/tasks/{id}/pause"), json!({})).await;
    assert_eq!((paused.status, paused.data()["status"].as_str()), (StatusCode::OK, Some("paused")), "{}", paused.body);
    let paused_at: DateTime<Utc> = paused.data()["updated_at"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resumed = c.post(node, &format!("/api/tasks/{id}/resume"), json!({})).await;
    assert_eq!(resumed.data()["status"], "active", "{}", resumed.body);
    let resumed_at: DateTime<Utc> = resumed.data()["updated_at"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let task = c.get(node, &format!("/api/tasks/{id}")).await;
    let runs = c.all_runs(node, id).await;
    let ticks: BTreeSet<DateTime<Utc>> =
        runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ticks.len(), runs.len(), "a tick fired twice");
    assert!(
        !ticks.iter().any(|t| *t > paused_at && *t <= resumed_at),
        "fired while paused ({paused_at} .. {resumed_at}): {ticks:?}"
    );
    let (fired, skipped) =
        (task.data()["fire_count"].as_u64().unwrap(), task.data()["skipped_ticks"].as_u64().unwrap());
    let cursor: DateTime<Utc> = task.data()["cursor"].as_str().unwrap().parse().unwrap();
    let whole_seconds = (cursor.timestamp() - created_at.timestamp()) as u64;
    assert_eq!(fired + skipped, whole_seconds, "fired {fired} + skipped {skipped} vs ticks up to the cursor");
    assert!(skipped >= 2, "about three ticks passed while paused; skipped {skipped}");
    assert!(ticks.iter().any(|t| *t > resumed_at), "firing resumed");

    // Disabled: pause is refused (409); resume by an admin (the fixture's key) enables it.
    let disabled =
        c.call(node, Method::PUT, &format!("/api/tasks/{id}"), Some(json!({"status": "disabled"})), &[]).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    let refused = c.post(node, &format!("/api/tasks/{id}/pause"), json!({})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap().contains("disabled"), "{}", refused.body);
    let enabled = c.post(node, &format!("/api/tasks/{id}/resume"), json!({})).await;
    assert_eq!(enabled.data()["status"], "active", "{}", enabled.body);
    let missing = c.post(node, "/api/tasks/424242/pause", json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    c.shutdown().await;
}

/// Regression test: editing a schedule kept the old cursor, so a task that gained a
/// per-second schedule six seconds after its creation fired the six seconds it never had
/// (and a month-old task given `0 * * * *` would fire 720 runs). A schedule change takes
/// effect from the change. Also: a task shows when it fires next from its creation on
/// (`next_run_at` was null until the first fire).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_edit_never_replays_the_past_and_next_run_at_is_known_at_once() {
    let c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    let body =
        json!({"name": "later", "executor": "shell", "command": "true", "schedule": "0 0 1 1 *", "timezone": "UTC"});
    let created = c.post(n, "/api/tasks", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.data()["id"].as_u64().unwrap();
    let next: DateTime<Utc> = created.data()["next_run_at"].as_str().expect("next_run_at at creation").parse().unwrap();
    assert!(next > Utc::now() && next.format("%m-%d %H:%M:%S").to_string() == "01-01 00:00:00", "{next}");

    tokio::time::sleep(Duration::from_secs(4)).await;
    let update = json!({"schedule": "* * * * * *"});
    let updated = c.call(n, Method::PUT, &format!("/api/tasks/{id}"), Some(update), &[]).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let edited_at: DateTime<Utc> = updated.data()["updated_at"].as_str().unwrap().parse().unwrap();
    let next: DateTime<Utc> = updated.data()["next_run_at"].as_str().unwrap().parse().unwrap();
    assert!(next > edited_at && next <= edited_at + chrono::Duration::seconds(1), "{next} after {edited_at}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = c.all_runs(n, id).await;
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
    assert!(ticks.iter().all(|t| *t > edited_at), "ticks before the edit fired: {ticks:?} (edit at {edited_at})");
    assert!((1..=4).contains(&ticks.len()), "{} runs in 2.5 s after the edit: {ticks:?}", ticks.len());
    let task = c.get(n, &format!("/api/tasks/{id}")).await;
    assert_eq!(task.data()["skipped_ticks"], 0, "{}", task.body);
    c.shutdown().await;
}
