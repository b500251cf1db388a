//! Leader loss: a new leader takes over quickly and the old one catches up on return.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::fixture::{shell_task, Opts, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_elects_a_new_one_and_the_old_one_catches_up() {
    let opts = Opts { election_timeout_ms: 1000, heartbeat_ms: 100, ..Opts::default() };
    // Three election timeouts, taking the timeout at the top of its randomized range
    // ([t, 1.5t)): one to notice the loss, room for one split vote, one for the write.
    let bound = Duration::from_millis(3 * opts.election_timeout_ms * 3 / 2);
    let mut c = TestCluster::start_with(3, opts).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    for i in 0..10 {
        c.create_task(old, &format!("before-{i}")).await;
    }

    let killed_at = Instant::now();
    c.kill(old).await;
    let survivor = c.running_ids()[0];
    // Writes through a survivor: the API retries across the election internally, so the
    // first acknowledged write marks when the cluster is writable again.
    let a = c.post(survivor, "/api/tasks", shell_task("after-kill")).await;
    let took = killed_at.elapsed();
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(took < bound, "write after leader kill took {took:?}, bound {bound:?}");
    let new = c.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new, old);
    for i in 0..10 {
        c.create_task(c.follower(new), &format!("during-{i}")).await;
    }

    c.restart(old).await;
    let digests = c.converged_digests(Duration::from_secs(20)).await;
    let distinct: std::collections::BTreeSet<_> = digests.values().map(|(_, d)| d.clone()).collect();
    assert_eq!(distinct.len(), 1, "old leader did not converge: {digests:?}");
    let a = c.get(old, "/api/tasks?size=100").await;
    assert_eq!(a.data()["total"], 21, "{}", a.body);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_get_503_and_reads_do_not_hang() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.create_task(leader, "kept").await;
    let f = c.follower(leader);
    // The create committed on the leader and one follower, maybe not on `f`: wait until
    // `f` applied it, or the stale read below has nothing to show (CI saw total 0).
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(f, "/api/tasks?consistency=local").await.data()["total"] != 1 {
        assert!(Instant::now() < deadline, "n{f} never applied the create");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in c.running_ids() {
        if id != f {
            c.kill(id).await;
        }
    }
    // Let the survivor notice: a write racing the kill may reach the dying leader, and then
    // 504 (outcome unknown) is the honest answer, not 503.
    tokio::time::sleep(Duration::from_millis(3 * c.opts.election_timeout_ms)).await;
    let started = Instant::now();
    let a = c.post(f, "/api/tasks", shell_task("no-quorum")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.body["success"], false);
    let a = c.get(f, "/api/tasks").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(started.elapsed() < Duration::from_secs(30), "answers are bounded in time");
    // A stale local read still answers.
    let a = c.get(f, "/api/tasks?consistency=local").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.data()["total"], 1);
    let h = c.http.get(c.url(f, "/api/health")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    c.shutdown().await;
}
