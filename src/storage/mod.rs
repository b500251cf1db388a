//! RocksDB: one database per node holding the Raft log, the vote and the state machine,
//! each in its own column family, and the typed reads and batched writes over them.
//!
//! Column families (checked at open):
//!
//! | cf                   | key                          | value                           |
//! |----------------------|------------------------------|---------------------------------|
//! | `raft_log`           | log index, u64 big-endian    | format byte + bincode entry     |
//! | `raft_meta`          | `vote`, `committed`, `purged` | bincode                        |
//! | `sm_meta`            | `applied`, `membership`, `clock`, `next_task_id`, `cluster_id` | bincode |
//! | `tasks`              | task id, u64 big-endian      | bincode [`Task`]                |
//! | `task_names`         | task name, UTF-8             | task id, u64 big-endian         |
//! | `idempotency`        | scope, 0x00, key             | bincode [`IdempotencyRecord`]   |
//! | `idempotency_expiry` | expiry ms BE, scope, 0x00, key | empty                         |
//! | `runs`               | run id, u64 big-endian       | bincode [`Run`]                 |
//! | `runs_by_task`       | task id BE, run id BE        | empty                           |
//! | `run_queue`          | priority rank (0 = critical), run id BE | empty: the pending runs |
//! | `workers`            | worker id, UTF-8             | bincode [`Worker`]              |
//! | `assignments`        | worker id, 0x00, run id BE   | empty: runs holding a slot      |
//!
//! Everything but `raft_log` and `raft_meta` is state-machine state: it is what snapshots
//! carry and what [`Store::digest`] covers.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

mod log_store;
mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use crate::model::{Run, RunStatus, Task, Worker};
use crate::raft::{LogId, Response, StoredMembership};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_SM_META: &str = "sm_meta";
pub const CF_TASKS: &str = "tasks";
pub const CF_TASK_NAMES: &str = "task_names";
pub const CF_IDEMPOTENCY: &str = "idempotency";
pub const CF_IDEMPOTENCY_EXPIRY: &str = "idempotency_expiry";
pub const CF_RUNS: &str = "runs";
pub const CF_RUNS_BY_TASK: &str = "runs_by_task";
pub const CF_RUN_QUEUE: &str = "run_queue";
pub const CF_WORKERS: &str = "workers";
pub const CF_ASSIGNMENTS: &str = "assignments";

/// The state-machine column families, in the fixed order snapshots and digests use.
pub const SM_CFS: [&str; 10] = [
    CF_SM_META,
    CF_TASKS,
    CF_TASK_NAMES,
    CF_IDEMPOTENCY,
    CF_IDEMPOTENCY_EXPIRY,
    CF_RUNS,
    CF_RUNS_BY_TASK,
    CF_RUN_QUEUE,
    CF_WORKERS,
    CF_ASSIGNMENTS,
];

/// The Raft log's own column families (not state-machine state).
const RAFT_CFS: [&str; 2] = [CF_RAFT_LOG, CF_RAFT_META];

fn all_cfs() -> impl Iterator<Item = &'static str> {
    RAFT_CFS.into_iter().chain(SM_CFS)
}

/// A stored answer to an idempotent write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub expires_at_ms: i64,
    pub response: Response,
}

/// One entry of the idempotency expiry index.
pub struct ExpiredIdempotency {
    pub expires_at_ms: i64,
    pub expiry_key: Vec<u8>,
    pub record_key: Vec<u8>,
}

/// Opens (or creates) the node's database, requiring every column family this binary
/// knows; an unexpected extra column family means a newer binary wrote here.
pub fn open_db(dir: &Path) -> io::Result<Arc<DB>> {
    std::fs::create_dir_all(dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let existing = DB::list_cf(&opts, dir).unwrap_or_default();
    if let Some(unknown) = existing.iter().find(|cf| *cf != "default" && !all_cfs().any(|known| known == cf.as_str())) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("data dir {} has column family {unknown:?} that this version does not know; was it written by a newer raftcron?", dir.display()),
        ));
    }
    let cfs = all_cfs().map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|e| io::Error::other(format!("cannot open database in {}: {e}", dir.display())))?;
    for name in all_cfs() {
        db.cf_handle(name).ok_or_else(|| io::Error::other(format!("column family {name} missing after open")))?;
    }
    Ok(Arc::new(db))
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "trailing bytes after value"));
    }
    Ok(value)
}

/// Prefixes an encoding with [`crate::raft::FORMAT_VERSION`].
pub(crate) fn encode_versioned<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut out = vec![crate::raft::FORMAT_VERSION];
    out.extend(encode(value)?);
    Ok(out)
}

/// Decodes a [`encode_versioned`] value, refusing an unknown version with a clear error.
pub(crate) fn decode_versioned<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    match bytes.first() {
        Some(&v) if v == crate::raft::FORMAT_VERSION => decode(&bytes[1..]),
        Some(&v) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what} has format version {v}, this binary reads version {}; upgrade this node",
                crate::raft::FORMAT_VERSION
            ),
        )),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what} is empty"))),
    }
}

pub(crate) fn db_err(e: rocksdb::Error) -> io::Error {
    io::Error::other(e.to_string())
}

pub(crate) fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn key_u64(k: &[u8]) -> io::Result<u64> {
    let arr: [u8; 8] = k.try_into().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad u64 key"))?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn idempotency_key(scope: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + key.len() + 1);
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// How many changed task ids are remembered one by one; beyond it, "everything changed".
const MAX_TRACKED_CHANGES: usize = 100_000;

/// The tasks that applied entries touched since the firing loop last looked, so the
/// leader keeps its due index current without rescanning every task. Not state: nothing
/// here is replicated, and losing it (a restart) only costs one full rescan.
#[derive(Default)]
pub struct TaskChanges {
    pending: std::sync::Mutex<ChangedTasks>,
    notify: tokio::sync::Notify,
}

/// What changed: these ids, or (after a snapshot install or too many to list) everything.
#[derive(Debug, Default, PartialEq)]
pub struct ChangedTasks {
    pub ids: std::collections::BTreeSet<u64>,
    pub all: bool,
}

impl TaskChanges {
    fn record(&self, ids: &[u64], all: bool) {
        if ids.is_empty() && !all {
            return;
        }
        {
            let mut p = self.pending.lock().expect("task change set poisoned");
            p.all |= all || p.ids.len() + ids.len() > MAX_TRACKED_CHANGES;
            if p.all {
                p.ids.clear();
            } else {
                p.ids.extend(ids);
            }
        }
        self.notify.notify_one();
    }

    /// Takes what changed since the last call.
    pub fn take(&self) -> ChangedTasks {
        std::mem::take(&mut *self.pending.lock().expect("task change set poisoned"))
    }

    /// Resolves once something changed after the last [`TaskChanges::take`] (at once if
    /// something already has).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// Typed reads of the state machine, shared by `apply` and the API.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    changes: Arc<TaskChanges>,
    /// Bumped after every committed batch that wrote a run or a worker: wakes placement
    /// on the leader and workers' long polls on every node.
    runs_changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    pub fn new(db: Arc<DB>) -> Self {
        Store { db, changes: Arc::default(), runs_changed: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    /// Changes whenever a committed batch wrote a run or a worker.
    pub fn runs_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.runs_changed.subscribe()
    }

    pub fn worker(&self, id: &str) -> io::Result<Option<Worker>> {
        self.get(CF_WORKERS, id.as_bytes())
    }

    /// Every registered worker, in id order.
    pub fn workers(&self) -> io::Result<Vec<Worker>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_WORKERS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    /// The runs holding a slot on `worker`, in id order.
    pub fn assignments_of(&self, worker: &str) -> io::Result<Vec<u64>> {
        let prefix = assignment_prefix(worker);
        let mut out = Vec::new();
        for item in
            self.db.iterator_cf(self.cf(CF_ASSIGNMENTS), IteratorMode::From(&prefix, rocksdb::Direction::Forward))
        {
            let (k, _) = item.map_err(db_err)?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            out.push(key_u64(&k[prefix.len()..])?);
        }
        Ok(out)
    }

    /// Up to `limit` pending run ids in placement order (priority, then oldest).
    pub fn queue(&self, limit: usize) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_RUN_QUEUE), IteratorMode::Start).take(limit) {
            let (k, _) = item.map_err(db_err)?;
            out.push(key_u64(&k[1..])?);
        }
        Ok(out)
    }

    /// Which tasks applied entries changed; see [`TaskChanges`].
    pub fn task_changes(&self) -> &TaskChanges {
        &self.changes
    }

    /// Number of pending runs (the placement queue's depth).
    pub fn queued_runs(&self) -> io::Result<u64> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_RUN_QUEUE), IteratorMode::Start) {
            item.map_err(db_err)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are checked at open")
    }

    fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key).map_err(db_err)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        self.get(CF_SM_META, key.as_bytes())
    }

    pub fn applied(&self) -> io::Result<Option<LogId>> {
        self.meta("applied")
    }

    pub fn membership(&self) -> io::Result<StoredMembership> {
        Ok(self.meta("membership")?.unwrap_or_default())
    }

    /// The command time of the last applied request.
    pub fn clock(&self) -> io::Result<Option<DateTime<Utc>>> {
        self.meta("clock")
    }

    pub fn cluster_id(&self) -> io::Result<Option<String>> {
        self.meta("cluster_id")
    }

    pub fn task(&self, id: u64) -> io::Result<Option<Task>> {
        self.get(CF_TASKS, &u64_key(id))
    }

    pub fn task_id_by_name(&self, name: &str) -> io::Result<Option<u64>> {
        match self.db.get_pinned_cf(self.cf(CF_TASK_NAMES), name.as_bytes()).map_err(db_err)? {
            Some(bytes) => key_u64(&bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn idempotency(&self, scope: &str, key: &str) -> io::Result<Option<IdempotencyRecord>> {
        self.get(CF_IDEMPOTENCY, &idempotency_key(scope, key))
    }

    pub fn idempotency_by_record_key(&self, record_key: &[u8]) -> io::Result<Option<IdempotencyRecord>> {
        self.get(CF_IDEMPOTENCY, record_key)
    }

    pub fn run(&self, id: u64) -> io::Result<Option<Run>> {
        self.get(CF_RUNS, &u64_key(id))
    }

    /// Runs of a task, newest first: skips `skip`, returns up to `limit`, and the total.
    pub fn runs_of_task(&self, task_id: u64, skip: usize, limit: usize) -> io::Result<(Vec<Run>, u64)> {
        let prefix = u64_key(task_id);
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&[0xff; 8]);
        let mut runs = Vec::new();
        let mut total = 0u64;
        let iter =
            self.db.iterator_cf(self.cf(CF_RUNS_BY_TASK), IteratorMode::From(&upper, rocksdb::Direction::Reverse));
        for item in iter {
            let (k, _) = item.map_err(db_err)?;
            if k.len() != 16 || k[..8] != prefix {
                break;
            }
            if total as usize >= skip && runs.len() < limit {
                let run_id = key_u64(&k[8..])?;
                if let Some(r) = self.run(run_id)? {
                    runs.push(r);
                }
            }
            total += 1;
        }
        Ok((runs, total))
    }

    /// The task's runs that have not reached a final state, oldest first.
    pub fn unfinished_runs_of_task(&self, task_id: u64) -> io::Result<Vec<Run>> {
        let prefix = u64_key(task_id);
        let mut out = Vec::new();
        for item in
            self.db.iterator_cf(self.cf(CF_RUNS_BY_TASK), IteratorMode::From(&prefix, rocksdb::Direction::Forward))
        {
            let (k, _) = item.map_err(db_err)?;
            if k.len() != 16 || k[..8] != prefix {
                break;
            }
            if let Some(r) = self.run(key_u64(&k[8..])?)? {
                if !r.status.is_final() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Visits runs in id order until `visit` returns false.
    pub fn scan_runs(&self, mut visit: impl FnMut(Run) -> bool) -> io::Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_RUNS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            if !visit(decode(&v)?) {
                break;
            }
        }
        Ok(())
    }

    /// One page of tasks in id order, and the number of tasks; only the page is decoded.
    pub fn task_page(&self, skip: u64, limit: u64) -> io::Result<(Vec<Task>, u64)> {
        let mut tasks = Vec::new();
        let mut total = 0u64;
        for item in self.db.iterator_cf(self.cf(CF_TASKS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            if total >= skip && (tasks.len() as u64) < limit {
                tasks.push(decode(&v)?);
            }
            total += 1;
        }
        Ok((tasks, total))
    }

    /// Visits tasks in id order until `visit` returns false.
    pub fn scan_tasks(&self, mut visit: impl FnMut(Task) -> bool) -> io::Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_TASKS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            if !visit(decode(&v)?) {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` idempotency expiry index entries at or before `now_ms`.
    pub fn expired_idempotency(&self, now_ms: i64, limit: usize) -> io::Result<Vec<ExpiredIdempotency>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_IDEMPOTENCY_EXPIRY), IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            if k.len() < 8 || out.len() >= limit {
                break;
            }
            let expires = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            if expires > now_ms {
                break;
            }
            out.push(ExpiredIdempotency {
                expires_at_ms: expires,
                expiry_key: k.to_vec(),
                record_key: k[8..].to_vec(),
            });
        }
        Ok(out)
    }

    /// SHA-256 over every state-machine column family, in a fixed order. Equal on every
    /// replica at the same applied index, however it got there (log replay or snapshot).
    /// The applied log id itself is left out (it is compared on its own), so an entry that
    /// changed nothing — a refused report, say — leaves the digest as it was.
    pub fn digest(&self) -> io::Result<String> {
        let snapshot = self.db.snapshot();
        let mut h = Sha256::new();
        for name in SM_CFS {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            for item in snapshot.iterator_cf(self.cf(name), IteratorMode::Start) {
                let (k, v) = item.map_err(db_err)?;
                if name == CF_SM_META && &*k == b"applied" {
                    continue;
                }
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// Buffered writes of one applied entry, committed atomically together with the applied
/// log id (so data, applied index and membership never disagree after a crash).
pub struct Tx<'a> {
    pub store: &'a Store,
    batch: WriteBatch,
    /// Run ids handed out within this batch (reads see only the committed state).
    pub next_run_id: u64,
    /// Tasks this batch writes or deletes, announced through [`TaskChanges`] on commit.
    touched_tasks: Vec<u64>,
    /// Whether it wrote a run or a worker (see [`Store::runs_changed`]).
    touched_runs: bool,
}

impl<'a> Tx<'a> {
    pub fn new(store: &'a Store) -> Self {
        Tx { store, batch: WriteBatch::default(), next_run_id: 0, touched_tasks: Vec::new(), touched_runs: false }
    }

    fn put<T: Serialize>(&mut self, cf: &str, key: &[u8], value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.batch.put_cf(self.store.cf(cf), key, bytes);
        Ok(())
    }

    pub fn put_meta<T: Serialize>(&mut self, key: &str, value: &T) -> io::Result<()> {
        self.put(CF_SM_META, key.as_bytes(), value)
    }

    pub fn put_task(&mut self, task: &Task) -> io::Result<()> {
        self.touched_tasks.push(task.id);
        self.put(CF_TASKS, &u64_key(task.id), task)
    }

    /// Stores a run, indexes it under its task, keeps it in the placement queue exactly
    /// while it is pending and in its worker's assignments exactly while it holds a slot.
    /// A run changes worker only by becoming a new attempt (a new run), so its
    /// `worker_id` names the one assignment entry it can have.
    pub fn put_run(&mut self, run: &Run) -> io::Result<()> {
        self.touched_runs = true;
        let mut k = u64_key(run.task_id).to_vec();
        k.extend_from_slice(&u64_key(run.id));
        self.batch.put_cf(self.store.cf(CF_RUNS_BY_TASK), k, []);
        if run.status == RunStatus::Pending {
            self.batch.put_cf(self.store.cf(CF_RUN_QUEUE), queue_key(run), []);
        } else {
            self.batch.delete_cf(self.store.cf(CF_RUN_QUEUE), queue_key(run));
        }
        if let Some(worker) = &run.worker_id {
            if run.is_assigned() {
                self.batch.put_cf(self.store.cf(CF_ASSIGNMENTS), assignment_key(worker, run.id), []);
            } else {
                self.batch.delete_cf(self.store.cf(CF_ASSIGNMENTS), assignment_key(worker, run.id));
            }
        }
        self.put(CF_RUNS, &u64_key(run.id), run)
    }

    /// Deletes a run and its index entries.
    pub fn delete_run(&mut self, run: &Run) {
        self.touched_runs = true;
        let mut k = u64_key(run.task_id).to_vec();
        k.extend_from_slice(&u64_key(run.id));
        self.batch.delete_cf(self.store.cf(CF_RUNS_BY_TASK), k);
        self.batch.delete_cf(self.store.cf(CF_RUN_QUEUE), queue_key(run));
        if let Some(worker) = &run.worker_id {
            self.batch.delete_cf(self.store.cf(CF_ASSIGNMENTS), assignment_key(worker, run.id));
        }
        self.batch.delete_cf(self.store.cf(CF_RUNS), u64_key(run.id));
    }

    pub fn put_worker(&mut self, worker: &Worker) -> io::Result<()> {
        self.touched_runs = true;
        self.put(CF_WORKERS, worker.id.as_bytes(), worker)
    }

    pub fn delete_task(&mut self, id: u64) {
        self.touched_tasks.push(id);
        self.batch.delete_cf(self.store.cf(CF_TASKS), u64_key(id));
    }

    pub fn put_task_name(&mut self, name: &str, id: u64) {
        self.batch.put_cf(self.store.cf(CF_TASK_NAMES), name.as_bytes(), u64_key(id));
    }

    pub fn delete_task_name(&mut self, name: &str) {
        self.batch.delete_cf(self.store.cf(CF_TASK_NAMES), name.as_bytes());
    }

    pub fn put_idempotency(&mut self, scope: &str, key: &str, record: &IdempotencyRecord) -> io::Result<()> {
        let k = idempotency_key(scope, key);
        let mut expiry = record.expires_at_ms.to_be_bytes().to_vec();
        expiry.extend_from_slice(&k);
        self.batch.put_cf(self.store.cf(CF_IDEMPOTENCY_EXPIRY), expiry, []);
        self.put(CF_IDEMPOTENCY, &k, record)
    }

    /// Removes an expiry index entry and, when given, the record it pointed at.
    pub fn delete_idempotency(&mut self, expiry_key: &[u8], record_key: Option<&[u8]>) {
        self.batch.delete_cf(self.store.cf(CF_IDEMPOTENCY_EXPIRY), expiry_key);
        if let Some(k) = record_key {
            self.batch.delete_cf(self.store.cf(CF_IDEMPOTENCY), k);
        }
    }

    /// Drops everything buffered so far: the entry applies as a no-op.
    pub fn discard(&mut self) {
        self.batch.clear();
        self.touched_tasks.clear();
        self.touched_runs = false;
        self.next_run_id = 0;
    }

    /// Writes the batch. Not synced: the log entry it came from is, and on restart openraft
    /// re-applies everything after the persisted applied index.
    pub fn commit(self) -> io::Result<()> {
        self.store.db.write(self.batch).map_err(db_err)?;
        self.store.changes.record(&self.touched_tasks, false);
        if self.touched_runs {
            self.store.runs_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

fn assignment_prefix(worker: &str) -> Vec<u8> {
    let mut k = worker.as_bytes().to_vec();
    k.push(0);
    k
}

fn assignment_key(worker: &str, run_id: u64) -> Vec<u8> {
    let mut k = assignment_prefix(worker);
    k.extend_from_slice(&u64_key(run_id));
    k
}

/// A pending run's place in the queue: higher priority first, then older (lower id) first.
fn queue_key(run: &Run) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = run.priority.rank();
    k[1..].copy_from_slice(&u64_key(run.id));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_values_refuse_an_unknown_version_clearly() {
        let bytes = encode_versioned(&("task", 7u64)).unwrap();
        let back: (String, u64) = decode_versioned("log entry", &bytes).unwrap();
        assert_eq!(back, ("task".to_string(), 7));
        let mut newer = bytes.clone();
        newer[0] = crate::raft::FORMAT_VERSION + 1;
        let err = decode_versioned::<(String, u64)>("log entry", &newer).unwrap_err().to_string();
        assert!(err.contains("format version") && err.contains("upgrade"), "{err}");
        assert!(decode_versioned::<(String, u64)>("snapshot", &[]).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn an_unknown_column_family_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let _db = DB::open_cf(&opts, dir.path(), ["runs_v9"]).unwrap();
        }
        let err = open_db(dir.path()).unwrap_err().to_string();
        assert!(err.contains("runs_v9") && err.contains("newer"), "{err}");
    }
}
