//! Liveness under a partial partition (openraft#2080's topology, found by the chaos
//! suite's `bridge-hold`): the old leader still reaches one "bridge" follower, and the
//! bridge with two more nodes forms a connected majority. Without the quorum-loss probe
//! the old leader's heartbeats keep renewing the bridge's lease, the bridge never votes,
//! and nobody is elected for as long as the partition lasts. Without pre-vote the old
//! leader, once it stepped down, campaigns again and again; every vote the bridge grants
//! it restarts the bridge's election timer, and the bridge (the longest log of the
//! majority) refuses the others: again no leader.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::{signal, Cluster, KEY};

/// Writes through a node of the connected majority must succeed while the partition is
/// in place, and while clients keep writing through the old leader (whose appends reach
/// the bridge). Failed before `quorum_loss_probe_ms` defaulted to on (no write for the
/// whole 45 s), and in this topology, with the old leader at the highest id, before
/// pre-vote was on (no write in 45 s either).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connected_majority_elects_a_leader_while_the_old_one_still_reaches_a_bridge() {
    let c = Cluster::start_with(5, 1000).run_as_own_users().start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    // The chaos suite's topology (seed 153230625): the old leader has the highest id, so
    // its campaigns at a term outrank the bridge's own (openraft orders votes of one term
    // by node id); the bridge has the lowest.
    let old = 4;
    let to_five = c
        .http
        .post(format!("http://{}/api/cluster/transfer-leader", c.nodes[0].http))
        .bearer_auth(KEY)
        .json(&json!({"to": 5}))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("transfer-leader answers");
    assert_eq!(to_five.status(), 200, "{}", to_five.text().await.unwrap_or_default());
    let (bridge, a, b, isolated) = (0, 1, 3, 2);
    // Keep old–bridge, bridge–a, bridge–b, a–b; cut every other pair.
    let kept = [(old, bridge), (bridge, a), (bridge, b), (a, b)];
    let pairs: Vec<(usize, usize)> = (0..5)
        .flat_map(|x| (x + 1..5).map(move |y| (x, y)))
        .filter(|(x, y)| !kept.contains(&(*x, *y)) && !kept.contains(&(*y, *x)))
        .collect();
    let term_before = c.term_seen_by(a).await.expect("a term");
    let cut = c.cut(&pairs);
    // Clients keep writing through the old leader, as clients behind a load balancer do:
    // it appends each write and replicates it to the bridge (it cannot commit them).
    let old_url = format!("http://{}/api/tasks", c.nodes[old].http);
    let http = c.http.clone();
    let pressure = tokio::spawn(async move {
        for n in 0.. {
            let body = json!({"name": format!("to-the-old-leader-{n}"), "executor": "shell", "command": "true"});
            let send = http.post(&old_url).bearer_auth(KEY).json(&body).timeout(Duration::from_secs(1)).send();
            tokio::spawn(send);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let url = format!("http://{}/api/tasks", c.nodes[a].http);
    let mut attempt = 0;
    let written = loop {
        attempt += 1;
        let r = c
            .http
            .post(&url)
            .bearer_auth(KEY)
            .json(&json!({"name": format!("during-the-cut-{attempt}"), "executor": "shell", "command": "true"}))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 201) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no write succeeded through the connected majority in 45 s (node {} isolated); logs: {}",
            isolated + 1,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new = c.leader_seen_by(a).await.expect("the majority has a leader") as usize - 1;
    assert!([bridge, a, b].contains(&new), "the leader is in the connected majority, not node {}", new + 1);
    let term_after = c.term_seen_by(a).await.expect("a term");
    eprintln!(
        "first write through the majority {written:?} after the cut; node {} leads; term {term_before} -> {term_after}",
        new + 1
    );
    // The old leader cannot win, so it must not inflate terms (the mechanism of the stall
    // above): with pre-vote one election suffices. Without it every campaign of the old
    // leader took a term.
    assert!(
        term_after <= term_before + 3,
        "terms went from {term_before} to {term_after}: a node that could not win kept campaigning"
    );
    pressure.abort();
    drop(cut);
}

/// A write sent to a follower just as the leader freezes (SIGSTOP: it accepts
/// connections, never answers) is answered once the follower knows the new leader, not
/// when its forward to the frozen one times out (6 s). Before the follower gave up on a
/// replaced leader, the answer took over 6 s, and clients with a 5 s timeout (the chaos
/// suite's) saw nothing succeed while any leader was paused. This test proves liveness;
/// that the re-sent forward cannot apply twice rests on the idempotency key it carries
/// (apply answers a repeat from the stored record; see the idempotency tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_forwarded_to_a_frozen_leader_moves_to_the_new_one() {
    let c = Cluster::start_with(3, 500).start_all();
    c.wait_healthy(Duration::from_secs(30)).await;
    let leader = c.leader_seen_by(0).await.expect("a leader") as usize - 1;
    let follower = (leader + 1) % 3;
    let frozen = c.nodes[leader].child.as_ref().expect("running");
    signal(frozen, "-STOP");
    let sent = Instant::now();
    let r = c
        .http
        .post(format!("http://{}/api/tasks", c.nodes[follower].http))
        .bearer_auth(KEY)
        .json(&json!({"name": "while-frozen", "executor": "shell", "command": "true"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the follower answers");
    let took = sent.elapsed();
    let status = r.status();
    signal(frozen, "-CONT");
    assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
    // The forward's own timeout is 6 s; an election with a 500 ms timeout takes about 1.
    assert!(took < Duration::from_secs(5), "answered after {took:?}: waited for the frozen leader; logs: {}", c.logs());
    assert!(c.task_names(follower).await.contains("while-frozen"));
}
