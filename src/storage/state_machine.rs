//! openraft's state-machine interface over [`Store`]: apply committed entries (each in one
//! atomic batch with its log id), build snapshots from a consistent RocksDB view, and
//! install a received snapshot by swapping the whole state in one batch.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{db_err, decode_versioned, encode, encode_versioned, Store, Tx, CF_SM_META, SM_CFS};
use crate::raft::apply::apply_request;
use crate::raft::{LogId, Outcome, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The snapshot payload: every state-machine column family, in [`SM_CFS`] order.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    cfs: Vec<(String, KvPairs)>,
}

type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What `snapshot/current` holds on disk.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    snapshot_dir: PathBuf,
    /// The log id the `current` snapshot file covers. openraft may build a snapshot and
    /// install a received one at the same time: whichever finishes writing, the file keeps
    /// the newer, and the lock makes the compare-and-rename one step.
    saved: Arc<Mutex<Option<LogId>>>,
}

impl StateMachine {
    pub fn new(store: Store, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        // Temp files of a write that a crash interrupted.
        for entry in std::fs::read_dir(&snapshot_dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("current.tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let current = snapshot_dir.join("current");
        let saved = match std::fs::read(&current) {
            Ok(bytes) => decode_versioned::<SnapshotFile>("snapshot file", &bytes)?.meta.last_log_id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(StateMachine { store, snapshot_dir, saved: Arc::new(Mutex::new(saved)) })
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    /// Writes the snapshot file atomically (a temp file of its own, fsync, rename, fsync
    /// the dir), unless the file already holds a newer snapshot.
    fn save_snapshot_file(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let bytes = encode_versioned(&SnapshotFile { meta: meta.clone(), data: data.to_vec() })?;
        // A name of its own: a concurrent build and install must not share a temp file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.snapshot_dir.join(format!("current.tmp.{n}"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        let mut saved = self.saved.lock().expect("snapshot file lock poisoned");
        if *saved > meta.last_log_id {
            // A newer snapshot was saved meanwhile; this one would move it backwards.
            return std::fs::remove_file(&tmp);
        }
        std::fs::rename(&tmp, self.snapshot_path())?;
        std::fs::File::open(&self.snapshot_dir)?.sync_all()?;
        *saved = meta.last_log_id;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.store.db().clone();
            // Everything applied so far must be durable before the log behind it is purged.
            db.flush_wal(true).map_err(db_err)?;
            let view = db.snapshot();
            let mut body = SnapshotBody { cfs: Vec::new() };
            let mut applied: Option<LogId> = None;
            let mut membership = StoredMembership::default();
            for name in SM_CFS {
                let cf = db.cf_handle(name).expect("column families are checked at open");
                let mut pairs = Vec::new();
                for item in view.iterator_cf(cf, IteratorMode::Start) {
                    let (k, v) = item.map_err(db_err)?;
                    if name == CF_SM_META && &*k == b"applied" {
                        applied = Some(super::decode::<LogId>(&v)?);
                    }
                    if name == CF_SM_META && &*k == b"membership" {
                        membership = super::decode(&v)?;
                    }
                    pairs.push((k.to_vec(), v.to_vec()));
                }
                body.cfs.push((name.to_string(), pairs));
            }
            let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
            let data = encode_versioned(&body)?;
            this.save_snapshot_file(&meta, &data)?;
            tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
            Ok(Snapshot { meta, snapshot: data })
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.store.applied()?, self.store.membership()?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let mut tx = Tx::new(&self.store);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::ok(Outcome::Done),
                EntryPayload::Normal(req) => apply_request(&mut tx, req)?,
                EntryPayload::Membership(m) => {
                    tx.put_meta("membership", &StoredMembership::new(Some(log_id), m.clone()))?;
                    Response::ok(Outcome::Done)
                }
            };
            tx.put_meta("applied", &log_id)?;
            tx.commit()?;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let body: SnapshotBody = decode_versioned("snapshot", &snapshot)?;
            // The file first, durable, then the state: a crash between the two leaves a
            // file ahead of the state machine, which openraft restores from at startup. The
            // other order left a state machine ahead of every durable snapshot and of the
            // log, which openraft "cleans" at startup by purging past the snapshot and then
            // refuses ("purge_upto <= snapshot_last_log_id"; chaos suite, power-all).
            this.save_snapshot_file(&meta, &snapshot)?;
            let db = this.store.db();
            let mut batch = WriteBatch::default();
            for name in SM_CFS {
                let cf = db.cf_handle(name).expect("column families are checked at open");
                for item in db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, _) = item.map_err(db_err)?;
                    batch.delete_cf(cf, k);
                }
            }
            for (name, pairs) in &body.cfs {
                if !SM_CFS.contains(&name.as_str()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot has unknown column family {name:?}"),
                    ));
                }
                let cf = db.cf_handle(name).expect("column families are checked at open");
                for (k, v) in pairs {
                    batch.put_cf(cf, k, v);
                }
            }
            // The snapshot's own meta is authoritative for what it covers.
            let cf_meta = db.cf_handle(CF_SM_META).expect("column families are checked at open");
            if let Some(applied) = &meta.last_log_id {
                batch.put_cf(cf_meta, "applied", encode(applied)?);
            }
            batch.put_cf(cf_meta, "membership", encode(&meta.last_membership)?);
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts).map_err(db_err)?;
            this.store.task_changes().record(&[], true);
            this.store.runs_changed.send_modify(|n| *n += 1);
            tracing::info!(last_log_id = ?meta.last_log_id, bytes = snapshot.len(), "installed snapshot");
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let path = self.snapshot_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: SnapshotFile = decode_versioned("snapshot file", &bytes)?;
                Ok(Some(Snapshot { meta: file.meta, snapshot: file.data }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::storage::open_db;

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(LeaderId { term: 1, node_id: 1 }, index)
    }

    /// A state machine with `tasks` tasks of 1 KiB each, applied up to `applied`.
    fn state(dir: &std::path::Path, tasks: u64, applied: u64) -> StateMachine {
        let store = Store::new(open_db(&dir.join("db")).unwrap());
        let mut tx = Tx::new(&store);
        for i in 0..tasks {
            tx.put_meta(&format!("filler-{i}"), &"x".repeat(1024)).unwrap();
        }
        tx.put_meta("applied", &log_id(applied)).unwrap();
        tx.commit().unwrap();
        StateMachine::new(store, dir.join("snapshot")).unwrap()
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta { last_log_id: Some(log_id(index)), last_membership: Default::default() }
    }

    /// The snapshot file never moves backwards: an older snapshot saved after a newer one
    /// (a build that captured its state before an install finished) is dropped.
    #[test]
    fn an_older_snapshot_saved_later_does_not_replace_the_newer() {
        let dir = tempfile::tempdir().unwrap();
        let sm = state(dir.path(), 0, 1);
        sm.save_snapshot_file(&meta(30), b"thirty").unwrap();
        sm.save_snapshot_file(&meta(20), b"twenty").unwrap();
        let file: SnapshotFile =
            decode_versioned("snapshot file", &std::fs::read(sm.snapshot_path()).unwrap()).unwrap();
        assert_eq!((file.meta.last_log_id, file.data.as_slice()), (Some(log_id(30)), &b"thirty"[..]));
    }

    /// Saves from two threads at once, each through a temp file of its own: every save
    /// succeeds (a shared temp name made one rename fail, or renamed the other's half
    /// written file) and the file left is the newest whole snapshot.
    #[test]
    fn concurrent_saves_each_succeed_and_leave_the_newest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sm = state(dir.path(), 0, 1);
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let sm = sm.clone();
                std::thread::spawn(move || {
                    for i in 0..40u64 {
                        let index = i * 2 + w + 1;
                        let data = vec![index as u8; 256 * 1024 + index as usize];
                        sm.save_snapshot_file(&meta(index), &data).unwrap_or_else(|e| panic!("save {index}: {e}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a save failed");
        }
        let file: SnapshotFile =
            decode_versioned("snapshot file", &std::fs::read(sm.snapshot_path()).unwrap()).unwrap();
        assert_eq!(file.meta.last_log_id, Some(log_id(80)));
        assert_eq!(file.data, vec![80u8; 256 * 1024 + 80], "the newest snapshot, whole");
    }

    /// Regression test (chaos suite, power-all, CI seed 969108): an install wrote the state
    /// machine first and the snapshot file after; a power cut between them left the state
    /// machine ahead of every durable snapshot and of the log, and openraft's start-up
    /// "cleaning" purged past the snapshot and then panicked at every start. The file now
    /// comes first: here its write fails, and the state machine must not have moved.
    #[tokio::test]
    async fn an_install_whose_snapshot_file_fails_leaves_the_state_machine_as_it_was() {
        let a = tempfile::tempdir().unwrap();
        let newer = state(a.path(), 4, 30).build_snapshot().await.unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut sm = state(b.path(), 2, 20);
        // The crash, as a write that cannot happen: the snapshot dir is now a plain file.
        std::fs::remove_dir_all(b.path().join("snapshot")).unwrap();
        std::fs::write(b.path().join("snapshot"), b"not a directory").unwrap();
        assert!(sm.install_snapshot(&newer.meta, newer.snapshot.clone()).await.is_err());
        assert_eq!(sm.store.applied().unwrap(), Some(log_id(20)), "the state machine moved past its snapshot file");
    }

    /// Regression test: a snapshot build and a snapshot install shared one temp file, and
    /// openraft may run them at once: the rename failed, the file held a mix of both, or the
    /// older snapshot replaced the newer. Each now writes its own temp file and the newer
    /// snapshot always stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_concurrent_build_and_install_keep_the_newer_snapshot() {
        let a = tempfile::tempdir().unwrap();
        // A leader's state at 30 (3 MiB); each round, a fresh node's state at 20 (2 MiB)
        // builds its snapshot while the leader's is installed: a real race every round
        // (a node that already saved the newer snapshot would refuse the build at once).
        let newer = state(a.path(), 3 * 1024, 30).build_snapshot().await.unwrap();
        for round in 0..8 {
            let b = tempfile::tempdir().unwrap();
            let mut sm = state(b.path(), 2 * 1024, 20);
            let mut builder = sm.clone();
            let (built, installed) =
                tokio::join!(builder.build_snapshot(), sm.install_snapshot(&newer.meta, newer.snapshot.clone()));
            built.unwrap_or_else(|e| panic!("round {round}: build failed: {e}"));
            installed.unwrap_or_else(|e| panic!("round {round}: install failed: {e}"));
            let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot file");
            assert_eq!(current.meta.last_log_id, Some(log_id(30)), "round {round}: the older snapshot won");
            assert_eq!(current.snapshot, newer.snapshot, "round {round}: the file holds the newer snapshot whole");
            let leftovers: Vec<_> =
                std::fs::read_dir(b.path().join("snapshot")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(leftovers, vec![std::ffi::OsString::from("current")], "round {round}: a temp file left behind");
        }
    }
}
