//! Backup and restore: `GET /api/cluster/snapshot` through a follower saves the state as
//! of a linearizable read; a new cluster seeded from it (`raftcron snapshot restore`)
//! holds the same state under a new cluster id, serves it, schedules on, and a node that
//! joins it catches up from the restored node's snapshot.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::fixture::{Opts, TestCluster, KEY, VIEWER_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restored_into_a_new_cluster_holds_the_same_state() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    for i in 0..30 {
        c.create_task(leader, &format!("backup-{i:02}")).await;
    }
    let paused = c.post(leader, "/api/tasks/7/pause", json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    let trigger = c.post(leader, "/api/tasks/3/trigger", json!({})).await;
    assert!(trigger.status.is_success(), "{}", trigger.body);
    let source = c.converged_digests(Duration::from_secs(10)).await;
    let follower = c.follower(leader);

    let viewer = c.http.get(c.url(follower, "/api/cluster/snapshot")).bearer_auth(VIEWER_KEY).send().await.unwrap();
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN, "a backup holds task secrets: admins only");
    let resp = c.http.get(c.url(follower, "/api/cluster/snapshot")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
    let old_cluster = c.core(leader).store.cluster_id().unwrap().unwrap();
    assert_eq!(header("x-raftcron-cluster-id"), old_cluster);
    let index: u64 = header("x-raftcron-last-log-index").parse().unwrap();
    // A linearizable export covers at least what every node had applied; an entry the
    // leader makes for itself meanwhile (e.g. recording whom it replicated to) may be in it
    // too (CI: 35 where the nodes had converged at 34).
    assert!(
        index >= source[&follower].0,
        "the backup covers what every node applied: {index} < {:?}",
        source[&follower]
    );
    let bytes = resp.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.rcsnap");
    std::fs::write(&file, &bytes).unwrap();
    let source_content = c.core(follower).store.content_digest().unwrap();
    assert!(
        std::fs::read_dir(c.nodes[&follower].dir.path().join("snapshot")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("export")),
        "the export left its file behind"
    );
    c.shutdown().await;

    let mut r = TestCluster::start_restored(1, &file, "restored-cluster", Opts::default()).await;
    r.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(r.core(1).store.content_digest().unwrap(), source_content);
    assert_eq!(r.core(1).store.cluster_id().unwrap().as_deref(), Some("restored-cluster"));
    let list = r.get(1, "/api/tasks?size=100").await;
    assert_eq!(
        (list.data()["total"].as_u64(), list.data()["items"][0]["name"].as_str()),
        (Some(30), Some("backup-00"))
    );
    let paused = r.get(1, "/api/tasks?status=paused").await;
    assert_eq!(paused.data()["items"][0]["id"], 7, "{}", paused.body);
    // New writes continue the ids where the backup left them.
    assert_eq!(r.create_task(1, "after-restore").await["id"], 31);

    // A node joining the restored cluster catches up from its snapshot.
    r.start_extra(2).await;
    let rpc = r.nodes[&2].rpc.to_string();
    let add = r.post(1, "/api/cluster/nodes", json!({"id": 2, "rpc_addr": rpc})).await;
    assert!(add.status.is_success(), "{}", add.body);
    let digests = r.converged_digests(Duration::from_secs(20)).await;
    assert_eq!(digests[&1].1, digests[&2].1, "{digests:?}");
    let on_two = r.get(2, "/api/tasks?consistency=local&size=1").await;
    assert_eq!(on_two.data()["total"], 31, "{}", on_two.body);
    r.shutdown().await;
}

/// Disaster recovery: two of three nodes are gone for good. `raftcron recover
/// --force-new-cluster` (here `storage::recover`) turns the stopped survivor's data dir into
/// a cluster of one under a new cluster id, holding everything it had; the old cluster's
/// nodes are refused when they come back; two fresh nodes join and catch up; the
/// per-second schedule resumes with no tick fired twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_survivor_recovers_into_a_new_cluster() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    for i in 0..8 {
        c.create_task(leader, &format!("kept-{i}")).await;
    }
    let body = json!({"name": "every-second", "executor": "shell", "command": "true", "schedule": "* * * * * *"});
    let ticking = c.post(leader, "/api/tasks", body).await.data()["id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Paused, so nothing is in flight when quorum goes: the survivor's state is the cluster's.
    let paused = c.post(leader, &format!("/api/tasks/{ticking}/pause"), json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    let before = c.converged_digests(Duration::from_secs(10)).await;
    let survivor = c.follower(leader);
    let content = c.core(survivor).store.content_digest().unwrap();
    let old_cluster = c.core(survivor).store.cluster_id().unwrap().unwrap();
    let lost: Vec<u64> = c.running_ids().into_iter().filter(|id| *id != survivor).collect();
    for id in &lost {
        c.kill(*id).await;
    }
    c.kill(survivor).await;

    let db = c.open_killed_db(survivor).await;
    drop(db);
    let dir = c.nodes[&survivor].dir.path().to_path_buf();
    let r = raftcron::storage::recover(&dir, survivor, None, "recovered-cluster").expect("recover");
    assert!(r.last_log_id.index >= before[&survivor].0, "{r:?}");
    assert_eq!((r.tasks, r.old_cluster_id.as_deref()), (9, Some(old_cluster.as_str())));
    c.restart(survivor).await;
    assert_eq!(c.wait_leader(Duration::from_secs(10)).await, survivor, "a cluster of one elects itself");
    let store = &c.core(survivor).store;
    assert_eq!(store.content_digest().unwrap(), content, "the survivor kept everything it had");
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("recovered-cluster"));
    let term = c.core(survivor).status(false).term;

    // An old node comes back with its old data: the survivor refuses it by cluster id,
    // and it changes nothing.
    c.restart(lost[0]).await;
    let old = c.core(lost[0]);
    let client = old.peers.get(survivor, &c.nodes[&survivor].rpc.to_string()).await.expect("a connection");
    let asked = client.node_status(raftcron::rpc::context(Duration::from_secs(2)), old.identity.header(), false).await;
    match asked {
        Ok(Err(raftcron::rpc::RpcFailure::Refused(why))) => {
            assert!(why.contains("recovered-cluster") && why.contains(&old_cluster), "{why}")
        }
        other => panic!("the survivor answered a node of the old cluster: {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.core(survivor).leader(), Some(survivor));
    assert_eq!(c.core(survivor).status(false).term, term, "the old node's elections changed nothing");
    c.kill(lost[0]).await;
    c.nodes.remove(&lost[0]);
    c.nodes.remove(&lost[1]);

    for id in [4, 5] {
        c.start_extra(id).await;
        let rpc = c.nodes[&id].rpc.to_string();
        let add = c.post(survivor, "/api/cluster/nodes", json!({"id": id, "rpc_addr": rpc})).await;
        assert!(add.status.is_success(), "{}", add.body);
    }
    let resumed = c.post(survivor, &format!("/api/tasks/{ticking}/resume"), json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    let resumed_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.converged_digests(Duration::from_secs(20)).await;
    assert_eq!(after.len(), 3);
    assert_eq!(after.values().map(|(_, d)| d).collect::<std::collections::BTreeSet<_>>().len(), 1, "{after:?}");
    let runs = c.all_runs(5, ticking).await;
    let ticks: Vec<chrono::DateTime<chrono::Utc>> =
        runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
    let distinct: std::collections::BTreeSet<_> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    assert!(ticks.iter().any(|t| *t > resumed_at), "the schedule did not resume: {ticks:?}");
    c.shutdown().await;
}
