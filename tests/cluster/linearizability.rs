//! Linearizability of a compare-and-set register (a task's `command`, versioned by the
//! task's `version`) under concurrent writers and readers on different nodes while the
//! leader is killed and restarted.
//!
//! Every successful write moves the version by exactly one, so versions totally order the
//! writes, and the check is exact for this register: (1) no two acknowledged writes
//! produce the same version (no lost update); (2) a read never returns a version older
//! than one already acknowledged before the read began (no stale read), nor one no write
//! had begun to produce when the read ended (no phantom); (3) the value at each version is
//! the one its write wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Mutex;

use crate::fixture::{answer, TestCluster, KEY};

#[derive(Debug, Clone)]
enum Op {
    /// CAS from `from` writing `value`: Some(new version) when acknowledged, None when the
    /// outcome is unknown (504 or a transport error).
    Write {
        from: u64,
        value: String,
        result: Option<Option<u64>>,
    },
    Read {
        version: u64,
        value: String,
    },
}

#[derive(Debug, Clone)]
struct Event {
    start: Instant,
    end: Instant,
    op: Op,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_register_stays_linearizable_while_the_leader_is_killed() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let id = c.create_task(leader, "register").await["id"].as_u64().unwrap();
    let urls: Vec<String> = c.running_ids().iter().map(|n| c.url(*n, &format!("/api/tasks/{id}"))).collect();
    let history = Arc::new(Mutex::new(Vec::<Event>::new()));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let http = c.http.clone();
    let mut clients = Vec::new();
    for p in 0..4usize {
        let (urls, history, http) = (urls.clone(), history.clone(), http.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                n += 1;
                let url = &urls[(p + n) % urls.len()];
                let start = Instant::now();
                let Ok(resp) = http.get(url).bearer_auth(KEY).timeout(Duration::from_secs(8)).send().await else {
                    continue;
                };
                let a = answer(resp).await;
                if a.status != StatusCode::OK {
                    continue;
                }
                let version = a.data()["version"].as_u64().unwrap();
                let read = Op::Read { version, value: a.data()["command"].as_str().unwrap().to_string() };
                history.lock().await.push(Event { start, end: Instant::now(), op: read });
                if p % 2 == 1 {
                    continue; // readers only read
                }
                let value = format!("echo p{p}-{n}");
                let start = Instant::now();
                let resp = http
                    .request(Method::PUT, &urls[(p + n + 1) % urls.len()])
                    .bearer_auth(KEY)
                    .header("If-Match", format!("\"{version}\""))
                    .json(&json!({"command": value}))
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                let result = match resp {
                    Ok(r) => {
                        let a = answer(r).await;
                        match a.status.as_u16() {
                            200 => Some(Some(a.data()["version"].as_u64().unwrap())),
                            412 => Some(None),
                            503 => continue, // never proposed
                            _ => None,
                        }
                    }
                    Err(_) => None,
                };
                history.lock().await.push(Event {
                    start,
                    end: Instant::now(),
                    op: Op::Write { from: version, value, result },
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(leader).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(leader).await;
    for h in clients {
        h.await.unwrap();
    }
    let history = history.lock().await.clone();
    let acked = history.iter().filter(|e| matches!(e.op, Op::Write { result: Some(Some(_)), .. })).count();
    assert!(acked >= 5, "too few acknowledged writes to mean anything: {acked}");
    check_register(&history).unwrap();
    c.shutdown().await;
}

fn check_register(history: &[Event]) -> Result<(), String> {
    // The value each version holds, from writes that were acknowledged or may have applied.
    let mut acked_version_of: BTreeMap<u64, &Event> = BTreeMap::new();
    for e in history {
        if let Op::Write { result: Some(Some(v)), from, .. } = &e.op {
            if *v != from + 1 {
                return Err(format!("write from {from} produced version {v}"));
            }
            if let Some(prev) = acked_version_of.insert(*v, e) {
                return Err(format!("two acknowledged writes produced version {v}: {prev:?} and {e:?}"));
            }
        }
    }
    for e in history {
        let Op::Read { version, value } = &e.op else { continue };
        // Stale read: a write acknowledged before this read began produced a newer version.
        if let Some((v, w)) = acked_version_of.range(version + 1..).find(|(_, w)| w.end < e.start) {
            return Err(format!(
                "stale read of version {version} after version {v} was acknowledged: {w:?} then {e:?}"
            ));
        }
        // The value at an acknowledged version is the one written.
        if let Some(w) = acked_version_of.get(version) {
            if let Op::Write { value: written, .. } = &w.op {
                if written != value {
                    return Err(format!("version {version} reads {value:?} but its write wrote {written:?}"));
                }
            }
        }
        // A version > 2 (1 is the create, 2.. are writes) must come from a write that had
        // begun before the read ended and wrote this value.
        if *version >= 2 {
            let origin = history.iter().any(|w| {
                matches!(&w.op, Op::Write { from, value: v, result } if *from + 1 == *version && v == value && result != &Some(None) && w.start < e.end)
            });
            if !origin {
                return Err(format!("read {e:?} returned a version no write could have produced"));
            }
        }
    }
    Ok(())
}

#[test]
fn checker_flags_a_stale_read_a_lost_update_and_a_phantom() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let write = |s, e, from, value: &str, v| Event {
        start: at(s),
        end: at(e),
        op: Op::Write { from, value: value.into(), result: Some(Some(v)) },
    };
    let read =
        |s, e, version, value: &str| Event { start: at(s), end: at(e), op: Op::Read { version, value: value.into() } };
    let ok = vec![write(0, 10, 1, "a", 2), read(11, 12, 2, "a"), write(13, 20, 2, "b", 3), read(15, 16, 2, "a")];
    assert!(check_register(&ok).is_ok());
    let stale = vec![write(0, 10, 1, "a", 2), read(11, 12, 1, "echo hello")];
    assert!(check_register(&stale).unwrap_err().contains("stale"));
    let lost = vec![write(0, 10, 1, "a", 2), write(0, 10, 1, "b", 2)];
    assert!(check_register(&lost).unwrap_err().contains("two acknowledged"));
    let phantom = vec![read(0, 5, 2, "zzz")];
    assert!(check_register(&phantom).unwrap_err().contains("no write"));
    let wrong_value = vec![write(0, 10, 1, "a", 2), read(11, 12, 2, "b")];
    assert!(check_register(&wrong_value).unwrap_err().contains("its write wrote"));
}

/// What a power cut may roll back on a node, as raw bytes: its whole state machine (an
/// apply is one atomic batch, not synced on its own) and its commit marker (not synced
/// either). The log and the vote, synced before anything counts, stay.
type Unsynced = Vec<(&'static str, Vec<(Box<[u8]>, Box<[u8]>)>)>;

fn unsynced_state(db: &rocksdb::DB) -> Unsynced {
    let mut out: Unsynced = raftcron::storage::SM_CFS
        .into_iter()
        .map(|cf| {
            let handle = db.cf_handle(cf).expect("column family");
            (cf, db.iterator_cf(handle, rocksdb::IteratorMode::Start).map(|kv| kv.expect("read")).collect())
        })
        .collect();
    let meta = db.cf_handle(raftcron::storage::CF_RAFT_META).expect("column family");
    let committed = db.get_cf(meta, b"committed").expect("read").expect("a commit marker");
    out.push((raftcron::storage::CF_RAFT_META, vec![(b"committed".to_vec().into(), committed.into())]));
    out
}

/// Puts back what `unsynced_state` saw: the state machine's column families exactly as
/// they were, and the commit marker.
fn roll_back(db: &rocksdb::DB, state: Unsynced) {
    for (cf, pairs) in state {
        let handle = db.cf_handle(cf).expect("column family");
        if cf != raftcron::storage::CF_RAFT_META {
            for kv in db.iterator_cf(handle, rocksdb::IteratorMode::Start) {
                db.delete_cf(handle, kv.expect("read").0).unwrap();
            }
        }
        for (k, v) in pairs {
            db.put_cf(handle, k, v).unwrap();
        }
    }
}

/// Regression test (found by the chaos suite's power faults: a stale read of the version
/// before an acknowledged write, right after the whole cluster lost power). openraft by
/// default lets a restarted leader resume its term without an election; its old term's
/// read index then lies below entries it committed before the restart, and its state
/// machine and commit marker — neither synced on its own — may lie below them too: a
/// linearizable read through it returned the older state, confirmed by a follower that had
/// missed the write. A restarted node now always goes through an election, whose new term
/// puts the read index past everything committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_leader_behind_its_own_log_never_serves_a_stale_read() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let id = c.create_task(leader, "register").await["id"].as_u64().unwrap();
    let _ = c.converged_digests(Duration::from_secs(5)).await;
    let before = unsynced_state(c.core(leader).store.db());
    // `behind` misses the write, which the leader commits with `other`.
    let (behind, other) = {
        let f: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
        (f[0], f[1])
    };
    c.kill(behind).await;
    let a = c.call(leader, Method::PUT, &format!("/api/tasks/{id}"), Some(json!({"command": "echo v2"})), &[]).await;
    assert_eq!((a.status, a.data()["version"].as_u64()), (StatusCode::OK, Some(2)), "{}", a.body);
    // Power cut: the rest of the cluster down, the leader's unsynced state as it was
    // before v2 (its log, synced before the write counted, keeps v2).
    c.kill(other).await;
    c.kill(leader).await;
    {
        let db = c.open_killed_db(leader).await;
        roll_back(&db, before);
    }
    // The old leader comes back first and is asked at once; the node that missed the write
    // follows, enough for a quorum.
    c.restart(leader).await;
    let url = c.url(leader, &format!("/api/tasks/{id}"));
    let read = tokio::spawn(c.http.get(url).bearer_auth(KEY).timeout(Duration::from_secs(20)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart(behind).await;
    let a = answer(read.await.unwrap().expect("the read is answered")).await;
    assert!(
        a.status != StatusCode::OK || a.data()["version"] == 2,
        "a linearizable read after the restart returned the state before an acknowledged write: {}",
        a.body
    );
    c.shutdown().await;
}
