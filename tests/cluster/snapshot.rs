//! A follower that missed more than the leader keeps in its log catches up by snapshot,
//! and ends byte-identical (same state digest) to the nodes that replayed the log.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use crate::fixture::{Opts, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_through_snapshot_install_with_identical_digest() {
    let mut c = TestCluster::start_with(3, Opts { snapshot_every: 20, ..Opts::default() }).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let lagging = c.follower(leader);
    c.create_task(leader, "first").await;
    let _ = c.converged_digests(Duration::from_secs(5)).await;
    c.kill(lagging).await;
    let applied_before = {
        let other = c.follower(leader);
        c.core(other).status(false).applied_index.unwrap()
    };

    for i in 0..120 {
        c.create_task(leader, &format!("t{i}")).await;
    }
    // The leader snapshotted and purged the entries the lagging node is missing, so the
    // log alone cannot bring it back.
    let purged = wait_purged_beyond(&c, leader, applied_before + 1).await;
    assert!(purged > applied_before, "leader purged up to {purged}, follower had {applied_before}");

    c.restart(lagging).await;
    let digests = c.converged_digests(Duration::from_secs(30)).await;
    let distinct: std::collections::BTreeSet<_> = digests.values().map(|(_, d)| d.clone()).collect();
    assert_eq!(distinct.len(), 1, "digest differs after snapshot install: {digests:?}");
    let m = c.core(lagging).raft.metrics().borrow_watched().clone();
    let snap = m.snapshot.expect("the lagging node holds a snapshot");
    assert!(snap.index > applied_before, "snapshot {snap:?} covers what it missed");
    let a = c.get(lagging, "/api/tasks?consistency=local&size=1").await;
    assert_eq!(a.data()["total"], 121, "{}", a.body);
    c.shutdown().await;
}

async fn wait_purged_beyond(c: &TestCluster, leader: u64, index: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.core(leader).raft.metrics().borrow_watched().clone();
        let purged = m.purged.map(|l| l.index).unwrap_or(0);
        if purged >= index || std::time::Instant::now() > deadline {
            return purged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression test: a node that crashed in the middle of a purge past its last entry (the
/// purge point written, the deletion not; this is what a snapshot install leaves behind)
/// had `last entry < purge point`, and openraft refused to start it. The crafted state
/// starts, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_crashed_mid_purge_restarts_with_its_data() {
    use raftcron::storage::{CF_RAFT_LOG, CF_RAFT_META};
    let mut c = TestCluster::start(1).await;
    let n = c.wait_leader(Duration::from_secs(10)).await;
    for i in 0..5 {
        c.create_task(n, &format!("p{i}")).await;
    }
    let core = c.core(n).clone();
    core.raft.trigger().snapshot().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let applied = loop {
        let m = core.raft.metrics().borrow_watched().clone();
        if m.snapshot.is_some() && m.snapshot == m.last_applied {
            break m.last_applied.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot of the applied state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(core);
    c.kill(n).await;
    {
        // The log ends three entries before the purge point, as after a snapshot install
        // whose purge was cut short.
        let db = c.open_killed_db(n).await;
        let log = db.cf_handle(CF_RAFT_LOG).unwrap();
        let last = applied.index;
        db.delete_range_cf(log, (last - 2).to_be_bytes(), (last + 1).to_be_bytes()).unwrap();
        let purged = bincode::serde::encode_to_vec(applied, bincode::config::standard()).unwrap();
        db.put_cf(db.cf_handle(CF_RAFT_META).unwrap(), "purged", purged).unwrap();
        db.flush_wal(true).unwrap();
    }
    c.restart(n).await;
    c.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(c.get(n, "/api/tasks").await.data()["total"], 5);
    c.create_task(n, "after").await;
    c.shutdown().await;
}
