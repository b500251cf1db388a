//! Seeding a new node's data dir from a snapshot file (`raftcron snapshot restore`), and
//! turning a lone survivor's data dir into a cluster of one (`raftcron recover
//! --force-new-cluster`): the disaster-recovery paths, and the way a benchmark starts from
//! a generated state. The
//! snapshot's state becomes the node's, as a cluster of one voter (this node) under a new
//! cluster id, so nothing of the cluster the file came from can join it by mistake; more
//! nodes are then added as to any cluster and catch up from this node's snapshot.
//!
//! Restore never touches a dir that holds anything; recover rewrites only the cluster's
//! identity (membership, cluster id, log, vote) after applying the log it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::Membership;
use rocksdb::{WriteBatch, WriteOptions};

use rocksdb::{Direction, IteratorMode};

use super::state_machine::{apply_entry, load_into_set};
use super::{db_err, decode_versioned, encode, open_db, u64_key, Store, CF_RAFT_LOG, CF_RAFT_META, CF_SM_META};
use crate::raft::{Entry, LogId, NodeId, NodeInfo, StoredMembership, Vote};

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The last entry the snapshot covers: the restored node's log starts after it.
    pub last_log_id: LogId,
    /// The cluster the snapshot was taken from, and the one the node now belongs to.
    pub old_cluster_id: Option<String>,
    pub cluster_id: String,
    /// Tasks in the restored state, and the snapshot file's size.
    pub tasks: u64,
    pub bytes: u64,
}

/// Writes the state of the snapshot file at `file` into a new data dir `data_dir` (it
/// must not exist or be empty) for node `node`, reachable at `info`, as the only voter of
/// cluster `cluster_id`. The file's checksum is checked while it loads; the state, the
/// log's start and the vote are synced before this returns, and the node's own first
/// snapshot is written, so the node can send its state to the nodes that join it.
pub fn restore(file: &Path, data_dir: &Path, node: NodeId, info: NodeInfo, cluster_id: &str) -> io::Result<Restored> {
    let source = std::fs::File::open(file)
        .map_err(|e| io::Error::new(e.kind(), format!("snapshot file {}: {e}", file.display())))?;
    let bytes = source.metadata()?.len();
    restore_from(source, bytes, data_dir, node, info, cluster_id)
}

/// [`restore`] from a stream of the snapshot file's bytes (`bytes` long on disk, for the
/// report): e.g. a backup decrypted as it is read.
pub fn restore_from(
    source: impl Read,
    bytes: u64,
    data_dir: &Path,
    node: NodeId,
    info: NodeInfo,
    cluster_id: &str,
) -> io::Result<Restored> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("data dir {} is not empty: a restore seeds a new node only", data_dir.display()),
        ));
    }
    std::fs::create_dir_all(data_dir)?;
    let restored = seed(source, bytes, data_dir, node, info, cluster_id);
    if restored.is_err() {
        // The dir was empty: what is in it now is this restore's half-done work.
        let _ = std::fs::remove_dir_all(data_dir.join("db"));
        let _ = std::fs::remove_dir_all(data_dir.join("snapshot"));
    }
    restored
}

fn seed(
    source: impl Read,
    bytes: u64,
    data_dir: &Path,
    node: NodeId,
    info: NodeInfo,
    cluster_id: &str,
) -> io::Result<Restored> {
    let db = open_db(&data_dir.join("db"))?;
    let store = Store::new(db.clone());
    let meta = load_into_set(&store, 0, source, || Ok(()))?;
    let last_log_id = meta.last_log_id.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "the snapshot covers no log entry: there is nothing to restore")
    })?;
    let old_cluster_id = store.cluster_id()?;
    let sm = super::StateMachine::new(store.clone(), data_dir.join("snapshot"))?;
    become_sole_voter(&store, &sm, last_log_id, None, node, info, cluster_id)?;
    let tasks = store.task_count()?;
    drop((sm, store, db));
    Ok(Restored { last_log_id, old_cluster_id, cluster_id: cluster_id.to_string(), tasks, bytes })
}

/// Makes `store`'s state, applied up to `last`, that of a cluster whose only voter is
/// `node` at `info`, under `cluster_id`, in an order that a failure at any step leaves
/// startable or recoverable again: first the state (membership, cluster id, the record of
/// members replicated to cleared; synced), then `sm`'s `current` snapshot of it (it must
/// become `current`), and only then the log: empty, starting after `last` (committed
/// there, every entry gone), with a vote of at least `last`'s term and of `vote_term`
/// (synced). The log is
/// never purged past the snapshot on disk, which openraft would refuse at start.
fn become_sole_voter(
    store: &Store,
    sm: &super::StateMachine,
    last: LogId,
    vote_term: Option<u64>,
    node: NodeId,
    info: NodeInfo,
    cluster_id: &str,
) -> io::Result<()> {
    let db = store.db();
    let voters = Membership::new(vec![BTreeSet::from([node])], BTreeMap::from([(node, info)]))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let membership = StoredMembership::new(Some(last), voters);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    let mut state = WriteBatch::default();
    let sm_meta = store.set_cf(store.live_set(), CF_SM_META);
    state.put_cf(sm_meta, "applied", encode(&last)?);
    state.put_cf(sm_meta, "membership", encode(&membership)?);
    state.put_cf(sm_meta, "cluster_id", encode(&cluster_id.to_string())?);
    // Which members the old cluster replicated to says nothing about the new one's: a
    // node added under an old member's id is a new, empty node.
    state.delete_cf(sm_meta, "replicated");
    db.write_opt(state, &opts).map_err(db_err)?;
    // The node's own snapshot, of the state as it now is (membership and cluster id
    // included): what a joining node installs.
    sm.build_current()?;
    let mut log = WriteBatch::default();
    let raft_log = db.cf_handle(CF_RAFT_LOG).expect("column families are checked at open");
    // The whole log: what comes after `last` was not applied and must not be either.
    log.delete_range_cf(raft_log, u64_key(0), u64_key(u64::MAX));
    let raft_meta = db.cf_handle(CF_RAFT_META).expect("column families are checked at open");
    // The log starts after `last`; the vote carries its term, so the node's first
    // election is for a later one.
    log.put_cf(raft_meta, "purged", encode(&last)?);
    log.put_cf(raft_meta, "committed", encode(&Some(last))?);
    let term = vote_term.unwrap_or(0).max(last.leader_id.term);
    log.put_cf(raft_meta, "vote", encode(&Vote::new(term, node))?);
    db.write_opt(log, &opts).map_err(db_err)
}

/// What a forced recovery did.
#[derive(Debug)]
pub struct Recovered {
    /// Entries of the log applied that the state machine had not applied yet.
    pub replayed: u64,
    pub last_log_id: LogId,
    pub old_cluster_id: Option<String>,
    pub cluster_id: String,
    pub tasks: u64,
}

/// `raftcron recover --force-new-cluster`: turns the data dir of a node whose cluster lost
/// its quorum for good into that of the only voter of a new cluster `cluster_id`. Every
/// entry in its log is applied first — committed or not, as nothing can tell any more —
/// so the state is everything this node knew; then it becomes the sole voter (see
/// [`restore`]: membership, cluster id, log, vote) and writes its snapshot. `info`, when
/// not given, is the node's entry in the old membership. The node must be stopped.
pub fn recover(data_dir: &Path, node: NodeId, info: Option<NodeInfo>, cluster_id: &str) -> io::Result<Recovered> {
    let db_dir = data_dir.join("db");
    if !db_dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} holds no database (is it a node's data_dir?)", data_dir.display()),
        ));
    }
    let db = open_db(&db_dir)?;
    let store = Store::new(db.clone());
    // Checks the snapshot file is readable before anything changes; a file ahead of the
    // state (a crash during an install, after the file was saved) is installed first, as
    // openraft would at start, or it would undo the recovery then.
    let sm = super::StateMachine::new(store.clone(), data_dir.join("snapshot"))?;
    sm.install_current_if_ahead()?;
    let info = match info.or_else(|| store.membership().ok()?.membership().get_node(&node).cloned()) {
        Some(info) => info,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {node} is not in this data dir's membership: give its address (--rpc-addr)"),
            ))
        }
    };
    // The entries that continue what is applied: the next index each, of a term no older.
    // A gap, or an older term (entries of a deposed leader that a snapshot overtook), ends
    // the replay; the log is then dropped whole.
    let raft_log = db.cf_handle(CF_RAFT_LOG).expect("column families are checked at open");
    let mut prev = store.applied()?;
    let from = prev.map_or(0, |l| l.index + 1);
    let mut replayed = 0u64;
    for item in db.iterator_cf(raft_log, IteratorMode::From(&u64_key(from), Direction::Forward)) {
        let (_, v) = item.map_err(db_err)?;
        let entry: Entry = decode_versioned("log entry", &v)?;
        let id = entry.log_id();
        let continues = match prev {
            Some(p) => id.index == p.index + 1 && id.leader_id.term >= p.leader_id.term,
            None => true,
        };
        if !continues {
            break;
        }
        apply_entry(&store, &entry)?;
        prev = Some(id);
        replayed += 1;
    }
    let last_log_id = store.applied()?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "this node has applied no entry and logged none: nothing to recover")
    })?;
    let old_cluster_id = store.cluster_id()?;
    let vote: Option<Vote> = match db.get_cf(db.cf_handle(CF_RAFT_META).expect("checked at open"), "vote") {
        Ok(Some(v)) => Some(super::decode(&v)?),
        Ok(None) => None,
        Err(e) => return Err(db_err(e)),
    };
    become_sole_voter(&store, &sm, last_log_id, vote.map(|v| v.leader_id().term), node, info, cluster_id)?;
    let tasks = store.task_count()?;
    drop((sm, store, db));
    Ok(Recovered { replayed, last_log_id, old_cluster_id, cluster_id: cluster_id.to_string(), tasks })
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::raft::apply::apply_request;
    use crate::raft::{Command, Request};
    use crate::storage::{write_snapshot_file, LogStore, Tx};

    /// A snapshot file of the previous format (tests/fixtures/format-v4/state.rcsnap, three
    /// runs pending) restores under this binary with its derived state brought up to date.
    #[test]
    fn a_format_4_snapshot_restores_with_its_counts_derived() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v4/state.rcsnap");
        let dir = tempfile::tempdir().unwrap();
        let info = NodeInfo { rpc_addr: "127.0.0.1:1".into(), http_addr: String::new() };
        let r = restore(&file, &dir.path().join("node"), 1, info, "restored").expect("a format 4 snapshot restores");
        assert_eq!((r.tasks, r.last_log_id.index), (3, 10));
        let store = Store::new(open_db(&dir.path().join("node/db")).unwrap());
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        assert_eq!(store.counter(crate::storage::Counter::PendingOf(1)).unwrap(), 2);
        assert_eq!(store.counter(crate::storage::Counter::PendingOf(2)).unwrap(), 1);
    }

    /// Writes log entry `index` of `term`: a create of a task named `name`, or a blank.
    fn put_entry(db: &rocksdb::DB, term: u64, index: u64, name: Option<&str>) {
        let log_id = LogId::new(LeaderId { term, node_id: 2 }, index);
        let entry = match name {
            Some(name) => {
                let fields = crate::model::TaskField::parse_object(
                    serde_json::json!({"name": name, "executor": "shell", "command": "true"}),
                )
                .unwrap();
                let spec = crate::model::TaskSpec::from_fields(fields, "UTC").unwrap();
                let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
                Entry::new_normal(
                    log_id,
                    Request { issued_at: at, idempotency: None, command: Command::CreateTask { spec: Box::new(spec) } },
                )
            }
            None => Entry::new_blank(log_id),
        };
        let cf = db.cf_handle(CF_RAFT_LOG).unwrap();
        db.put_cf(cf, u64_key(index), crate::storage::encode_versioned(&entry).unwrap()).unwrap();
    }

    /// A store with `n` tasks applied as entries 1..=n of term 3, and its snapshot file.
    fn source(dir: &Path, n: u64) -> (Store, std::path::PathBuf) {
        let store = Store::new(open_db(&dir.join("db")).unwrap());
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut tx = Tx::new(&store);
        apply_request(
            &mut tx,
            &Request { issued_at: at, idempotency: None, command: Command::InitCluster { cluster_id: "old".into() } },
        )
        .unwrap();
        for i in 0..n {
            let fields = crate::model::TaskField::parse_object(
                serde_json::json!({"name": format!("task-{i}"), "executor": "shell", "command": "true"}),
            )
            .unwrap();
            let spec = crate::model::TaskSpec::from_fields(fields, "UTC").unwrap();
            let command = Command::CreateTask { spec: Box::new(spec) };
            assert!(apply_request(&mut tx, &Request { issued_at: at, idempotency: None, command })
                .unwrap()
                .result
                .is_ok());
        }
        tx.put_meta("applied", &LogId::new(LeaderId { term: 3, node_id: 2 }, n + 1)).unwrap();
        tx.commit().unwrap();
        let file = dir.join("backup");
        write_snapshot_file(&store, &file).unwrap();
        (store, file)
    }

    /// The restored node holds the backup's state under a new cluster id, as the only
    /// voter, with its log starting after the backup and a vote of the backup's term; its
    /// own snapshot file is written; every index agrees with its tables.
    #[tokio::test]
    async fn a_restored_node_holds_the_backup_as_a_cluster_of_one() {
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let dir = tempfile::tempdir().unwrap();
        let (old, file) = source(dir.path(), 40);
        let target = dir.path().join("new");
        let info = NodeInfo { rpc_addr: "10.0.0.9:7000".into(), http_addr: String::new() };
        let r = restore(&file, &target, 9, info.clone(), "new-id").unwrap();
        assert_eq!((r.tasks, r.last_log_id.index, r.old_cluster_id.as_deref()), (40, 41, Some("old")));
        let db = open_db(&target.join("db")).unwrap();
        let store = Store::new(db.clone());
        assert_eq!(store.content_digest().unwrap(), old.content_digest().unwrap());
        assert_ne!(store.digest().unwrap(), old.digest().unwrap(), "the cluster id and membership are new");
        assert_eq!(store.cluster_id().unwrap().as_deref(), Some("new-id"));
        let m = store.membership().unwrap();
        assert_eq!(m.membership().voter_ids().collect::<Vec<_>>(), vec![9]);
        assert_eq!(m.membership().get_node(&9), Some(&info));
        assert_eq!(store.applied().unwrap(), Some(r.last_log_id));
        assert!(store.verify().unwrap().is_empty());
        let mut log = LogStore::new(db.clone());
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(r.last_log_id), Some(r.last_log_id)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 9)));
        assert!(!log.is_pristine().unwrap(), "a restored node must never bootstrap a cluster of its own");
        let current = crate::storage::check_snapshot_file(&target.join("snapshot").join("current")).unwrap().0;
        assert_eq!((current.last_log_id, current.last_membership), (Some(r.last_log_id), m));
    }

    /// A restore never writes into a dir that holds anything, and one whose file is
    /// damaged leaves nothing behind.
    #[test]
    fn a_restore_refuses_a_used_dir_and_cleans_up_after_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_old, file) = source(dir.path(), 5);
        let info = NodeInfo { rpc_addr: "a:1".into(), http_addr: String::new() };
        let used = dir.path().join("used");
        std::fs::create_dir_all(used.join("db")).unwrap();
        let err = restore(&file, &used, 1, info.clone(), "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");

        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        let damaged = dir.path().join("damaged");
        std::fs::write(&damaged, bytes).unwrap();
        let target = dir.path().join("fresh");
        let err = restore(&damaged, &target, 1, info, "x").unwrap_err();
        assert!(err.to_string().contains("checksum") || err.to_string().contains("corrupt"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "a failed restore left files behind");
    }

    /// A recovery applies every entry of the survivor's log that its state machine had
    /// not applied yet (here two creates and a blank), then makes the node the only voter
    /// of the new cluster: log emptied, a vote of at least the term
    /// it had, the record of members replicated to cleared, a snapshot of the result.
    #[tokio::test]
    async fn a_recovery_applies_the_whole_log_then_stands_alone() {
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = source(dir.path(), 3);
        let db = store.db().clone();
        for (index, name) in [(5u64, Some("late-1")), (6, None), (7, Some("late-2"))] {
            put_entry(&db, 4, index, name);
        }
        let meta = db.cf_handle(CF_RAFT_META).unwrap();
        db.put_cf(meta, "vote", encode(&Vote::new(6, 3)).unwrap()).unwrap();
        let mut tx = Tx::new(&store);
        tx.put_meta("replicated", &BTreeSet::from([1u64, 2, 3])).unwrap();
        tx.commit().unwrap();
        drop((store, db));

        let r = recover(dir.path(), 1, Some(NodeInfo { rpc_addr: "b:2".into(), http_addr: String::new() }), "fresh")
            .unwrap();
        assert_eq!((r.replayed, r.last_log_id.index, r.tasks, r.old_cluster_id.as_deref()), (3, 7, 5, Some("old")));
        let db = open_db(&dir.path().join("db")).unwrap();
        let store = Store::new(db.clone());
        assert!(store.task_id_by_name("late-2").unwrap().is_some(), "an unapplied entry was not replayed");
        assert_eq!(store.cluster_id().unwrap().as_deref(), Some("fresh"));
        assert_eq!(store.membership().unwrap().membership().voter_ids().collect::<Vec<_>>(), vec![1]);
        assert!(store.replicated_members().unwrap().is_empty());
        assert!(store.verify().unwrap().is_empty());
        let mut log = LogStore::new(db.clone());
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(r.last_log_id), Some(r.last_log_id)));
        assert_eq!(db.iterator_cf(db.cf_handle(CF_RAFT_LOG).unwrap(), rocksdb::IteratorMode::Start).count(), 0);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(6, 1)), "the vote never goes back a term");
        let current = crate::storage::check_snapshot_file(&dir.path().join("snapshot").join("current")).unwrap().0;
        assert_eq!(current.last_log_id, Some(r.last_log_id));
        drop((store, log, db));
        let err = recover(dir.path(), 9, None, "again").unwrap_err();
        assert!(err.to_string().contains("node 9 is not in"), "{err}");
    }

    /// A survivor that crashed during a snapshot install — the file saved as `current`, the
    /// state not flipped to it yet — holds a snapshot ahead of its state. openraft would
    /// install that file at start, with the old cluster's membership and id, undoing the
    /// recovery; so the recovery installs it first and builds the new identity on top.
    #[test]
    fn a_recovery_installs_a_snapshot_file_ahead_of_the_state_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = source(dir.path(), 3);
        // Entries of a deposed leader (term 2) past the snapshot's index: the snapshot
        // (term 3) overtook them; they must not be applied on top of it.
        for index in [32, 33] {
            put_entry(store.db(), 2, index, Some("stale"));
        }
        drop(store);
        let other = tempfile::tempdir().unwrap();
        let (ahead, _) = source(other.path(), 30);
        std::fs::create_dir_all(dir.path().join("snapshot")).unwrap();
        let current = dir.path().join("snapshot").join("current");
        write_snapshot_file(&ahead, &current).unwrap();
        let r =
            recover(dir.path(), 2, Some(NodeInfo { rpc_addr: "c:3".into(), http_addr: String::new() }), "new").unwrap();
        assert_eq!((r.last_log_id.index, r.tasks), (31, 30), "{r:?}");
        let meta = crate::storage::check_snapshot_file(&current).unwrap().0;
        assert_eq!(meta.last_log_id, Some(r.last_log_id));
        assert_eq!(meta.last_membership.membership().voter_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(r.replayed, 0, "{r:?}");
        let db = open_db(&dir.path().join("db")).unwrap();
        assert_eq!(db.iterator_cf(db.cf_handle(CF_RAFT_LOG).unwrap(), rocksdb::IteratorMode::Start).count(), 0);
        let store = Store::new(db);
        assert_eq!(store.content_digest().unwrap(), ahead.content_digest().unwrap());
        assert!(store.task_id_by_name("stale").unwrap().is_none());
        assert!(store.verify().unwrap().is_empty());
    }
}
