//! openraft's state-machine interface over [`Store`]: apply committed entries (each in one
//! atomic batch with its log id), build snapshots as files streamed from a consistent
//! RocksDB view, and install a received snapshot file into the other state-machine set,
//! flipped to in one synced batch (see the `storage` module's doc). No step holds the
//! whole state in memory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::snapshot_file::{read_meta, SnapshotData, SnapshotReader, SnapshotWriter};
use super::{clear_set, compact_set, db_err, decode, encode, Store, Tx, CF_RAFT_META, CF_SM_META, SM_CFS, SM_SET_KEY};
use crate::raft::apply::apply_request;
use crate::raft::{LogId, Outcome, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// An install writes the incoming state in batches of about this size (not synced; the
/// flip syncs them all), so its memory does not grow with the snapshot.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How long the set an install replaced stays whole before it is cleared: a read that
/// took the old set just before the flip finishes against it.
const OLD_SET_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    snapshot_dir: PathBuf,
    /// The log id the `current` snapshot file covers. openraft may build a snapshot and
    /// install a received one at the same time: whichever finishes writing, the file keeps
    /// the newer, and the lock makes the compare-and-rename one step.
    saved: Arc<Mutex<Option<LogId>>>,
    /// Held while a set is filled, flipped or cleared, so the delayed clear of a replaced
    /// set never runs into the next install filling that same set.
    sets: Arc<Mutex<()>>,
    /// Tests stop an install at a named step, as a crash there would.
    #[cfg(test)]
    crash_at: Arc<Mutex<Option<&'static str>>>,
}

/// Names a temp file in the snapshot dir that no other writer uses.
pub fn temp_name(kind: &str) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{kind}.tmp.{}", WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

impl StateMachine {
    pub fn new(store: Store, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        // Temp files of a write or a transfer that a crash interrupted.
        for entry in std::fs::read_dir(&snapshot_dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(".tmp.") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let current = snapshot_dir.join("current");
        let saved = match read_meta(&current) {
            Ok(meta) => meta.last_log_id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io::Error::new(e.kind(), format!("snapshot file {}: {e}", current.display()))),
        };
        // The other set after a crash during an install, or before its delayed clear.
        if let Ok(file) = std::fs::metadata(&current) {
            store.log_growth().snapshotted(0, file.len());
        }
        if clear_set(store.db(), 1 - store.live_set())? {
            tracing::info!("cleared the state-machine set a crash or an install left behind");
        }
        Ok(StateMachine {
            store,
            snapshot_dir,
            saved: Arc::new(Mutex::new(saved)),
            sets: Arc::default(),
            #[cfg(test)]
            crash_at: Arc::default(),
        })
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    /// Makes the finished, synced snapshot file at `path` the `current` one (rename, then
    /// sync the dir), unless `current` already holds a newer snapshot: then `path` is
    /// removed (an open handle still reads it). Whether it became `current`.
    fn publish(&self, path: &Path, meta: &SnapshotMeta) -> io::Result<bool> {
        let mut saved = self.saved.lock().expect("snapshot file lock poisoned");
        if *saved > meta.last_log_id {
            // A newer snapshot was saved meanwhile; this one would move it backwards.
            std::fs::remove_file(path)?;
            return Ok(false);
        }
        std::fs::rename(path, self.snapshot_path())?;
        std::fs::File::open(&self.snapshot_dir)?.sync_all()?;
        *saved = meta.last_log_id;
        Ok(true)
    }

    /// A test's crash point: the named step fails when a test asked for it.
    fn step(&self, _name: &'static str) -> io::Result<()> {
        #[cfg(test)]
        if *self.crash_at.lock().unwrap() == Some(_name) {
            return Err(io::Error::other(format!("crash at {_name}")));
        }
        Ok(())
    }

    /// Writes a snapshot of the state machine as it is now; blocking.
    #[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "times the log line; no state reads it")]
    fn build(&self) -> io::Result<Snapshot> {
        let started = std::time::Instant::now();
        let covered = self.store.log_growth().log_bytes();
        let tmp = self.snapshot_dir.join(temp_name("current"));
        let (file, meta) = write_snapshot_file(&self.store, &tmp)?;
        let bytes = file.metadata()?.len();
        let path = if self.publish(&tmp, &meta)? {
            // A build a newer file overtook stands for nothing: the trigger keeps counting.
            self.store.log_growth().snapshotted(covered, bytes);
            self.snapshot_path()
        } else {
            tmp
        };
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "built snapshot");
        Ok(Snapshot { meta, snapshot: SnapshotData::new(file, path) })
    }

    /// Installs the snapshot file `data` covering `meta`; blocking. The records load into
    /// the idle set (the checksum and the header checked on the way), then the file is made
    /// durable as `current`, then one synced batch flips to the new set. A crash before
    /// the file is saved leaves the old state and the old file (the leader sends again); a
    /// crash after it leaves a file ahead of the state, which openraft installs from at
    /// start-up; after the flip, the new state. A file that fails its checks never
    /// replaces `current`.
    fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> io::Result<u64> {
        // Never the other order (state before file): a state machine ahead of every
        // durable snapshot and of the log is what openraft "cleans" at startup by purging
        // past the snapshot, and then refuses ("purge_upto <= snapshot_last_log_id"; chaos
        // suite, power-all).
        let covered = self.store.log_growth().log_bytes();
        let path = data.path.clone();
        let file = data.into_file()?;
        let bytes = file.metadata()?.len();

        let _sets = self.sets.lock().expect("state-machine set lock poisoned");
        let store = &self.store;
        let db = store.db();
        let old = store.live_set();
        let new = 1 - old;
        clear_set(db, new)?;
        let file_meta = load_into_set(store, new, &file, || self.step("batch written"))?;
        // The checksum matched: the records are the file's. Now the header can be trusted.
        if file_meta.last_log_id != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot file covers {:?}, but the install is for {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ),
            ));
        }
        self.step("records written")?;
        // The records' batches were not synced; syncing the WAL makes them all durable
        // before the flip that makes them the state.
        db.flush_wal(true).map_err(db_err)?;
        if path != self.snapshot_path() {
            file.sync_all()?;
            self.publish(&path, meta)?;
        }
        self.step("file saved")?;
        let mut flip = WriteBatch::default();
        // The snapshot's own meta is authoritative for what it covers.
        let sm_meta = store.set_cf(new, CF_SM_META);
        if let Some(applied) = &meta.last_log_id {
            flip.put_cf(sm_meta, "applied", encode(applied)?);
        }
        flip.put_cf(sm_meta, "membership", encode(&meta.last_membership)?);
        flip.put_cf(db.cf_handle(CF_RAFT_META).expect("column families are checked at open"), SM_SET_KEY, [new]);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(flip, &opts).map_err(db_err)?;
        store.set.store(new, std::sync::atomic::Ordering::Release);
        store.task_changes().record(&[], true);
        store.runs_changed.send_modify(|n| *n += 1);
        store.log_growth().snapshotted(covered, bytes);
        self.step("flipped")?;
        drop(_sets);
        self.clear_later(old);
        Ok(bytes)
    }

    /// Writes the `current` snapshot of the state as it is now (a restored data dir's
    /// first one). Blocking.
    pub(super) fn build_current(&self) -> io::Result<()> {
        let snap = self.build()?;
        if snap.snapshot.path != self.snapshot_path() {
            return Err(io::Error::other(format!(
                "the snapshot file {} is ahead of the state ({:?}) and was kept",
                self.snapshot_path().display(),
                snap.meta.last_log_id
            )));
        }
        Ok(())
    }

    /// Installs the `current` snapshot file when it covers more than the state machine
    /// applied (a crash between saving it and flipping to it); whether it did. Blocking.
    pub(super) fn install_current_if_ahead(&self) -> io::Result<bool> {
        let path = self.snapshot_path();
        let meta = match read_meta(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if meta.last_log_id <= self.store.applied()? {
            return Ok(false);
        }
        self.install(&meta, SnapshotData::open(&path)?)?;
        Ok(true)
    }

    /// Clears the replaced set after [`OLD_SET_GRACE`], unless an install made it live
    /// again meanwhile, and gives its disk back. Holds the database only weakly while it
    /// waits: a node shutting down is not kept open by it.
    fn clear_later(&self, set: u8) {
        let db = Arc::downgrade(self.store.db());
        let live = self.store.set.clone();
        let sets = self.sets.clone();
        let spawned = std::thread::Builder::new().name("clear-old-set".into()).spawn(move || {
            std::thread::sleep(OLD_SET_GRACE);
            let Some(db) = db.upgrade() else { return };
            let cleared = {
                let _sets = sets.lock().expect("state-machine set lock poisoned");
                if live.load(std::sync::atomic::Ordering::Acquire) == set {
                    return;
                }
                clear_set(&db, set)
            };
            // Outside the lock: compacting is upkeep, harmless if the set fills again.
            match cleared {
                Ok(true) => compact_set(&db, set),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not clear the replaced state-machine set; the next start or install will"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start clearing the replaced state-machine set; the next start or install will");
        }
    }
}

/// Writes a snapshot of the state as it is now to `path` (a new file, synced; removed
/// again if the write fails): what a build publishes as `current`, and what `raftcron
/// snapshot save` sends. Blocking.
pub fn write_snapshot_file(store: &Store, path: &Path) -> io::Result<(std::fs::File, SnapshotMeta)> {
    let db = store.db().clone();
    // Everything applied so far must be durable before the log behind it is purged.
    db.flush_wal(true).map_err(db_err)?;
    let view = db.snapshot();
    let set = store.set_in(&view)?;
    let sm_meta = store.set_cf(set, CF_SM_META);
    let applied: Option<LogId> = view.get_cf(sm_meta, "applied").map_err(db_err)?.map(|v| decode(&v)).transpose()?;
    let membership: StoredMembership =
        view.get_cf(sm_meta, "membership").map_err(db_err)?.map(|v| decode(&v)).transpose()?.unwrap_or_default();
    let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
    let written = (|| {
        let mut out = SnapshotWriter::create(path, &meta)?;
        for (i, name) in SM_CFS.iter().enumerate() {
            for item in view.iterator_cf(store.set_cf(set, name), IteratorMode::Start) {
                let (k, v) = item.map_err(db_err)?;
                out.record(i as u8, &k, &v)?;
            }
        }
        out.finish()
    })();
    match written {
        Ok(file) => Ok((file, meta)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Applies one log entry in one batch with its log id as `applied`: a command through
/// [`apply_request`], a membership as the stored membership, a blank as nothing.
pub(super) fn apply_entry(store: &Store, entry: &crate::raft::Entry) -> io::Result<Response> {
    let log_id = entry.log_id();
    let mut tx = Tx::new(store);
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
    Ok(response)
}

/// Streams the records of the snapshot file `file` into state-machine set `set` (which
/// should be empty) in batches of about [`INSTALL_BATCH_BYTES`], calling `after_batch`
/// after each but the last, and returns the file's meta once its checksum has matched.
/// Nothing is synced, and nothing makes `set` the live one.
pub(super) fn load_into_set(
    store: &Store,
    set: u8,
    file: impl std::io::Read,
    mut after_batch: impl FnMut() -> io::Result<()>,
) -> io::Result<SnapshotMeta> {
    let db = store.db();
    let (file_meta, mut records) = SnapshotReader::open(file)?;
    let mut batch = WriteBatch::default();
    while let Some((name, k, v)) = records.next_record()? {
        batch.put_cf(store.set_cf(set, name), k, v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(db_err)?;
            after_batch()?;
        }
    }
    db.write(batch).map_err(db_err)?;
    if records.version() < crate::raft::FORMAT_VERSION {
        let mut derived = WriteBatch::default();
        super::migrate_set(db, set, records.version(), &mut derived)?;
        db.write(derived).map_err(db_err)?;
    }
    Ok(file_meta)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build()).await.map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.store.applied()?, self.store.membership()?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = apply_entry(&self.store, &entry)?;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    #[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "times the log line; no state reads it")]
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let bytes = this.install(&meta, snapshot)?;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::info!(last_log_id = ?meta.last_log_id, bytes, elapsed_ms, "installed snapshot");
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let path = self.snapshot_path();
        let data = match SnapshotData::open(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (meta, _) = SnapshotReader::open(&data.file)?;
        Ok(Some(Snapshot { meta, snapshot: data }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::storage::{open_db, CF_TASKS};

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(LeaderId { term: 1, node_id: 1 }, index)
    }

    /// A state machine with `tasks` entries of 1 KiB each (distinct by seed), applied up
    /// to `applied`.
    fn state_seeded(dir: &Path, tasks: u64, applied: u64, seed: u8) -> StateMachine {
        let store = Store::new(open_db(&dir.join("db")).unwrap());
        let mut tx = Tx::new(&store);
        for i in 0..tasks {
            tx.put_meta(&format!("filler-{i}"), &vec![seed; 1024]).unwrap();
        }
        tx.put_meta("applied", &log_id(applied)).unwrap();
        tx.put_meta("membership", &StoredMembership::default()).unwrap();
        tx.commit().unwrap();
        StateMachine::new(store, dir.join("snapshot")).unwrap()
    }

    fn state(dir: &Path, tasks: u64, applied: u64) -> StateMachine {
        state_seeded(dir, tasks, applied, b'x')
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta { last_log_id: Some(log_id(index)), last_membership: Default::default() }
    }

    /// A finished snapshot file at `path` covering `index`, with `n` filler records.
    fn snapshot_file(path: &Path, index: u64, n: usize) {
        let mut w = SnapshotWriter::create(path, &meta(index)).unwrap();
        for i in 0..n {
            w.record(0, format!("k{i}").as_bytes(), &vec![index as u8; 1024]).unwrap();
        }
        w.finish().unwrap();
    }

    /// What a leader would send: a copy of `snap`'s file as a fresh incoming file in
    /// `dir` (an install moves its file to `current`).
    fn as_incoming(snap: &Snapshot, dir: &Path) -> Snapshot {
        let path = dir.join(temp_name("incoming"));
        std::fs::copy(&snap.snapshot.path, &path).unwrap();
        Snapshot { meta: snap.meta.clone(), snapshot: SnapshotData::open(&path).unwrap() }
    }

    fn current_index(sm: &StateMachine) -> Option<LogId> {
        read_meta(&sm.snapshot_path()).unwrap().last_log_id
    }

    /// Keys in the set that is not live (it must be empty outside an install).
    fn idle_set_keys(store: &Store) -> usize {
        let idle = 1 - store.live_set();
        SM_CFS.iter().map(|n| store.db().iterator_cf(store.set_cf(idle, n), IteratorMode::Start).count()).sum()
    }

    /// The snapshot file never moves backwards: an older snapshot saved after a newer one
    /// (a build that captured its state before an install finished) is dropped.
    #[test]
    fn an_older_snapshot_saved_later_does_not_replace_the_newer() {
        let dir = tempfile::tempdir().unwrap();
        let sm = state(dir.path(), 0, 1);
        let (thirty, twenty) = (dir.path().join("30"), dir.path().join("20"));
        snapshot_file(&thirty, 30, 1);
        snapshot_file(&twenty, 20, 1);
        assert!(sm.publish(&thirty, &meta(30)).unwrap());
        assert!(!sm.publish(&twenty, &meta(20)).unwrap());
        assert_eq!(current_index(&sm), Some(log_id(30)));
        assert!(!twenty.exists(), "the dropped file was left behind");
    }

    /// Builds and saves from two threads at once, each through a file of its own: every
    /// save succeeds and the file left is the newest whole snapshot.
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
                        let path = sm.snapshot_dir.join(temp_name("current"));
                        snapshot_file(&path, index, 256 + index as usize);
                        sm.publish(&path, &meta(index)).unwrap_or_else(|e| panic!("save {index}: {e}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a save failed");
        }
        let (m, mut r) = SnapshotReader::open(std::fs::File::open(sm.snapshot_path()).unwrap()).unwrap();
        assert_eq!(m.last_log_id, Some(log_id(80)));
        let mut records = 0;
        while r.next_record().expect("the newest snapshot, whole").is_some() {
            records += 1;
        }
        assert_eq!(records, 256 + 80);
        let leftovers: Vec<_> = std::fs::read_dir(&sm.snapshot_dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("current")]);
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
        let incoming = as_incoming(&newer, a.path());
        // The crash, as a write that cannot happen: the snapshot dir is now a plain file.
        std::fs::remove_dir_all(b.path().join("snapshot")).unwrap();
        std::fs::write(b.path().join("snapshot"), b"not a directory").unwrap();
        assert!(sm.install_snapshot(&incoming.meta, incoming.snapshot).await.is_err());
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
        let newer_bytes = std::fs::read(&newer.snapshot.path).unwrap();
        let digest = newer_digest(&newer).await;
        for round in 0..8 {
            let b = tempfile::tempdir().unwrap();
            let mut sm = state(b.path(), 2 * 1024, 20);
            let mut builder = sm.clone();
            let incoming = as_incoming(&newer, &sm.snapshot_dir);
            let (built, installed) =
                tokio::join!(builder.build_snapshot(), sm.install_snapshot(&incoming.meta, incoming.snapshot));
            built.unwrap_or_else(|e| panic!("round {round}: build failed: {e}"));
            installed.unwrap_or_else(|e| panic!("round {round}: install failed: {e}"));
            let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot file");
            assert_eq!(current.meta.last_log_id, Some(log_id(30)), "round {round}: the older snapshot won");
            assert_eq!(std::fs::read(sm.snapshot_path()).unwrap(), newer_bytes, "round {round}: not the newer file");
            assert_eq!(sm.store.digest().unwrap(), digest, "round {round}: the installed state");
            let leftovers: Vec<_> =
                std::fs::read_dir(b.path().join("snapshot")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(leftovers, vec![std::ffi::OsString::from("current")], "round {round}: a temp file left behind");
        }
    }

    /// The digest of the state a snapshot holds (installed on a fresh node).
    async fn newer_digest(snap: &Snapshot) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = state(dir.path(), 0, 0);
        let incoming = as_incoming(snap, &sm.snapshot_dir);
        sm.install_snapshot(&incoming.meta, incoming.snapshot).await.unwrap();
        sm.store.digest().unwrap()
    }

    /// Installs replace the state whole, back and forth between the two sets, and the
    /// replaced set is emptied after the grace period.
    #[tokio::test]
    async fn installs_alternate_sets_and_empty_the_one_they_replace() {
        let a = tempfile::tempdir().unwrap();
        let first = state_seeded(a.path(), 3000, 30, b'a').build_snapshot().await.unwrap();
        let a2 = tempfile::tempdir().unwrap();
        let second = state_seeded(a2.path(), 1000, 40, b'b').build_snapshot().await.unwrap();
        let (d1, d2) = (newer_digest(&first).await, newer_digest(&second).await);
        assert_ne!(d1, d2);
        let b = tempfile::tempdir().unwrap();
        let mut sm = state(b.path(), 2000, 20);
        for (snap, digest, index) in [(&first, &d1, 30), (&second, &d2, 40)] {
            let set_before = sm.store.live_set();
            let incoming = as_incoming(snap, &sm.snapshot_dir);
            sm.install_snapshot(&incoming.meta, incoming.snapshot).await.unwrap();
            assert_ne!(sm.store.live_set(), set_before, "an install flips the set");
            assert_eq!(&sm.store.digest().unwrap(), digest);
            assert_eq!(sm.store.applied().unwrap(), Some(log_id(index)));
            tokio::time::sleep(OLD_SET_GRACE + std::time::Duration::from_millis(1500)).await;
            assert_eq!(idle_set_keys(&sm.store), 0, "the replaced set still holds data");
        }
        // A restart reads the live set from disk.
        let digest = sm.store.digest().unwrap();
        drop(sm);
        let store = Store::new(open_db(&b.path().join("db")).unwrap());
        assert_eq!(store.live_set(), 0, "two installs: back in set 0");
        assert_eq!(store.digest().unwrap(), digest);
    }

    /// A follower of a leader that still holds a format-4 `current` installs it into its
    /// idle set with the derived counts recomputed: the same content as the format-4 data
    /// dir that wrote it, migrated in place (tests/fixtures/format-v4: the dir and its
    /// backup at the same index).
    #[tokio::test]
    async fn a_format_4_snapshot_installs_into_the_idle_set_as_the_migrated_dir_holds() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v4");
        let b = tempfile::tempdir().unwrap();
        let mut sm = state(b.path(), 20, 5);
        let path = sm.snapshot_dir.join(temp_name("incoming"));
        std::fs::copy(fixture.join("state.rcsnap"), &path).unwrap();
        let meta = read_meta(&path).unwrap();
        sm.install_snapshot(&meta, SnapshotData::open(&path).unwrap()).await.unwrap();
        assert_eq!(sm.store.live_set(), 1, "installed into set 1");
        assert_eq!(sm.store.verify().unwrap(), Vec::<String>::new());
        assert_eq!(sm.store.counter(crate::storage::Counter::PendingOf(1)).unwrap(), 2);
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture.join("db")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let migrated = Store::new(open_db(dir.path()).unwrap());
        assert_eq!(migrated.applied().unwrap(), meta.last_log_id, "the dir and the backup are at one index");
        assert_eq!(migrated.content_digest().unwrap(), sm.store.content_digest().unwrap());
    }

    /// A crash at every step of an install (simulated by stopping there and reopening the
    /// database) restarts with the old state or the new one, never a mix, and never with
    /// the idle set holding anything; `current` is the old file until the new one's records
    /// are all in, and the new file from then on. What openraft and the leader do next —
    /// install `current` at start-up when it is newer than the state, or send the snapshot
    /// again — reaches the new state.
    #[tokio::test]
    async fn a_crash_at_any_step_of_an_install_leaves_the_old_state_or_the_new() {
        let a = tempfile::tempdir().unwrap();
        // 12 MiB: the records take several install batches.
        let newer = state_seeded(a.path(), 12 * 1024, 30, b'n').build_snapshot().await.unwrap();
        let new_digest = newer_digest(&newer).await;
        for step in ["batch written", "records written", "file saved", "flipped"] {
            let b = tempfile::tempdir().unwrap();
            let mut sm = state_seeded(b.path(), 6 * 1024, 20, b'o');
            let old_file = std::fs::read(&sm.build_snapshot().await.unwrap().snapshot.path).unwrap();
            let old_digest = sm.store.digest().unwrap();
            *sm.crash_at.lock().unwrap() = Some(step);
            let incoming = as_incoming(&newer, &sm.snapshot_dir);
            let err = sm.install_snapshot(&incoming.meta, incoming.snapshot).await.unwrap_err();
            assert!(err.to_string().contains(step), "{step}: {err}");
            drop(sm);
            let store = Store::new(open_db(&b.path().join("db")).unwrap());
            let mut sm = StateMachine::new(store.clone(), b.path().join("snapshot")).unwrap();
            assert_eq!(idle_set_keys(&store), 0, "{step}: the idle set was not cleared at start-up");
            let (applied, _) = sm.applied_state().await.unwrap();
            let digest = store.digest().unwrap();
            match applied.map(|l| l.index) {
                Some(20) => assert_eq!(digest, old_digest, "{step}: applied says old, the state is not"),
                Some(30) => assert_eq!(digest, new_digest, "{step}: applied says new, the state is not"),
                other => panic!("{step}: applied {other:?}"),
            }
            assert_eq!(applied.map(|l| l.index) == Some(30), step == "flipped", "{step}: which state survived");
            let saved = matches!(step, "file saved" | "flipped");
            let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot file");
            assert_eq!(current.meta.last_log_id, Some(log_id(if saved { 30 } else { 20 })), "{step}");
            if !saved {
                assert_eq!(std::fs::read(sm.snapshot_path()).unwrap(), old_file, "{step}: the old file changed");
            }
            if current.meta.last_log_id > applied {
                // openraft's start-up: the durable file is newer than the state.
                sm.install_snapshot(&current.meta, current.snapshot).await.unwrap();
            } else if applied < Some(log_id(30)) {
                // The leader sends it again.
                let again = as_incoming(&newer, &sm.snapshot_dir);
                sm.install_snapshot(&again.meta, again.snapshot).await.unwrap();
            }
            assert_eq!(store.digest().unwrap(), new_digest, "{step}: in the end");
            assert_eq!(std::fs::read(sm.snapshot_path()).unwrap(), std::fs::read(&newer.snapshot.path).unwrap());
        }
    }

    /// A received snapshot that fails its checks (here, one flipped byte) is refused before
    /// it replaces anything: `current` and the state stay as they were (before, the file
    /// became `current` first and the node could not start again).
    #[tokio::test]
    async fn a_damaged_snapshot_replaces_neither_the_file_nor_the_state() {
        let a = tempfile::tempdir().unwrap();
        let newer = state_seeded(a.path(), 300, 30, b'n').build_snapshot().await.unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut sm = state_seeded(b.path(), 100, 20, b'o');
        let old_file = std::fs::read(&sm.build_snapshot().await.unwrap().snapshot.path).unwrap();
        let old_digest = sm.store.digest().unwrap();
        let incoming = as_incoming(&newer, &sm.snapshot_dir);
        let mut bytes = std::fs::read(&incoming.snapshot.path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&incoming.snapshot.path, &bytes).unwrap();
        let damaged =
            Snapshot { meta: incoming.meta.clone(), snapshot: SnapshotData::open(&incoming.snapshot.path).unwrap() };
        let err = sm.install_snapshot(&damaged.meta, damaged.snapshot).await.unwrap_err();
        assert!(err.to_string().contains("checksum") || err.to_string().contains("corrupt"), "{err}");
        assert_eq!(std::fs::read(sm.snapshot_path()).unwrap(), old_file, "current was replaced");
        assert_eq!(sm.store.digest().unwrap(), old_digest);
        assert_eq!(sm.store.applied().unwrap(), Some(log_id(20)));
        // A file whose header covers another index than openraft installs is refused too.
        let other = as_incoming(&newer, &sm.snapshot_dir);
        let err = sm.install_snapshot(&meta(31), other.snapshot).await.unwrap_err();
        assert!(err.to_string().contains("covers"), "{err}");
        assert_eq!(std::fs::read(sm.snapshot_path()).unwrap(), old_file, "current was replaced");
    }

    /// Reads this process's peak resident set (VmHWM) in KiB after resetting it, or the
    /// current one (VmRSS).
    fn proc_status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line =
            status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/self/status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A 256 MiB snapshot installs with the process's peak memory growing by less than a
    /// 128 MiB cap (measured: ~87 MiB, most of it RocksDB's 64 MiB memtable budget): the
    /// file streams through small buffers into bounded batches, and RocksDB's memtables
    /// share one budget. (Before: the file was read into memory whole
    /// and every pair copied again into one batch — at least twice the snapshot.) Runs in
    /// a process of its own, so no other test's memory counts.
    #[test]
    fn an_install_bigger_than_the_memory_cap_stays_under_it() {
        const CAP_KIB: u64 = 128 * 1024;
        const SNAPSHOT_MIB: usize = 256;
        if std::env::var_os("NEXTEST").is_none() && std::env::var_os("RAFTCRON_ALONE").is_none() {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "storage::state_machine::tests::an_install_bigger_than_the_memory_cap_stays_under_it",
                ])
                .env("RAFTCRON_ALONE", "1")
                .status()
                .unwrap();
            assert!(status.success(), "the test failed in its own process");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut sm = state(dir.path(), 1, 1);
        let path = sm.snapshot_dir.join(temp_name("incoming"));
        {
            // Written straight to the file (a leader's state this size would take a while
            // to build), distinct values so nothing compresses away.
            let mut w = SnapshotWriter::create(&path, &meta(50)).unwrap();
            let mut value = vec![0u8; 4096];
            for i in 0..SNAPSHOT_MIB * 256 {
                value[..8].copy_from_slice(&(i as u64).to_be_bytes());
                w.record(1, &(i as u64).to_be_bytes(), &value).unwrap();
            }
            w.finish().unwrap();
        }
        let bytes = std::fs::metadata(&path).unwrap().len();
        assert!(bytes > (SNAPSHOT_MIB as u64) << 20);
        std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
        let before = proc_status_kib("VmRSS:");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(sm.install_snapshot(&meta(50), SnapshotData::open(&path).unwrap())).unwrap();
        let peak = proc_status_kib("VmHWM:");
        assert_eq!(sm.store.applied().unwrap(), Some(log_id(50)));
        let tasks =
            sm.store.db().iterator_cf(sm.store.set_cf(sm.store.live_set(), CF_TASKS), IteratorMode::Start).count();
        assert_eq!(tasks, SNAPSHOT_MIB * 256, "every record installed");
        let growth = peak.saturating_sub(before);
        eprintln!("snapshot {} MiB, peak RSS growth {} MiB (cap {} MiB)", bytes >> 20, growth >> 10, CAP_KIB >> 10);
        assert!(growth < CAP_KIB, "peak RSS grew by {} MiB installing {} MiB", growth >> 10, bytes >> 20);
    }
}
