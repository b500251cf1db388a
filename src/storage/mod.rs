//! RocksDB: one database per node holding the Raft log, the vote and the state machine,
//! each in its own column family, and the typed reads and batched writes over them.
//!
//! Column families (checked at open):
//!
//! | cf                   | key                          | value                           |
//! |----------------------|------------------------------|---------------------------------|
//! | `raft_log`           | log index, u64 big-endian    | format byte + bincode entry     |
//! | `raft_meta`          | `vote`, `committed`, `purged` | bincode                        |
//! | `sm_meta`            | `applied`, `membership`, `clock`, `next_task_id`, `cluster_id`, `replicated` | bincode |
//! | `tasks`              | task id, u64 big-endian      | bincode [`Task`]                |
//! | `task_names`         | task name, UTF-8             | task id, u64 big-endian         |
//! | `idempotency`        | scope, 0x00, key             | bincode [`IdempotencyRecord`]   |
//! | `idempotency_expiry` | expiry ms BE, scope, 0x00, key | empty                         |
//! | `runs`               | run id, u64 big-endian       | bincode [`Run`]                 |
//! | `runs_by_task`       | task id BE, run id BE        | empty                           |
//! | `run_queue`          | class (tags), priority rank, run id BE | empty: pending runs ready to place |
//! | `run_delayed`        | not_before ms BE, run id BE  | empty: pending runs in a backoff |
//! | `run_deadlines`      | pending deadline ms BE, run id BE | empty: pending runs that may time out |
//! | `run_counts`         | task id BE                   | bincode u64: the task's stored runs |
//! | `workers`            | worker id, UTF-8             | bincode [`Worker`]              |
//! | `assignments`        | worker id, 0x00, run id BE   | empty: runs holding a slot      |
//! | `counters`, `tasks_by_status`, `name_trigrams` | see `indexes.rs` | maintained counts and task indexes |
//!
//! `run_queue`, `run_delayed`, `run_deadlines` and `assignments` churn: every run puts a
//! key in each and deletes it soon after, while the live set stays as small as the work in
//! flight. RocksDB keeps a deleted key as a tombstone until its memtable is flushed and the
//! file compacted to the last level, and every seek skips the tombstones in its way: a
//! burst of 2,000 runs left placement and each worker's poll skipping about a thousand per
//! read (a quarter of the leader's CPU, in `perf`). [`keep_churn_tidy`] flushes and
//! compacts these four (small) column families after every [`CHURN_TIDY_AFTER`] deletes.
//!
//! Everything but `raft_log` and `raft_meta` is state-machine state: it is what snapshots
//! carry and what [`Store::digest`] covers.
//!
//! The state machine lives in one of two sets of these column families: set 0 under the
//! names above, set 1 under the same names with a `.1` suffix. `raft_meta`'s `sm_set`
//! (absent = 0) names the live one; the other is empty except while a snapshot install
//! fills it, and one synced batch that writes its `applied` and `membership` flips
//! `sm_set` to it. So an install, however large and in however many batches, leaves
//! after a crash either the old state or the new one, never a mix.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

mod indexes;
mod keys;
mod log_store;
mod restore;
mod snapshot_file;
mod state_machine;
mod tx;

use std::io;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rocksdb::{ColumnFamily, IteratorMode, Options, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use indexes::{Counter, SearchPage, TaskPage, PAGE_BUCKET, SEARCH_COUNT_AHEAD};
pub use log_store::LogStore;
pub use restore::{recover, restore, restore_from, Recovered, Restored};
pub use snapshot_file::{
    check_file as check_snapshot_file, check_stream as check_snapshot_stream, IncomingSnapshot, SnapshotData,
};
pub use state_machine::{temp_name, write_snapshot_file, StateMachine};
pub use tx::Tx;

use crate::model::{Run, RunStatus, Task, Worker, WorkerLoad};
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
pub const CF_RUN_DELAYED: &str = "run_delayed";
pub const CF_RUN_DEADLINES: &str = "run_deadlines";
pub const CF_RUN_COUNTS: &str = "run_counts";
pub const CF_COUNTERS: &str = "counters";
pub const CF_TASKS_BY_STATUS: &str = "tasks_by_status";
pub const CF_NAME_TRIGRAMS: &str = "name_trigrams";

/// The state-machine column families, in the fixed order snapshots and digests use.
pub const SM_CFS: [&str; 16] = [
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
    CF_RUN_DELAYED,
    CF_RUN_DEADLINES,
    CF_RUN_COUNTS,
    CF_COUNTERS,
    CF_TASKS_BY_STATUS,
    CF_NAME_TRIGRAMS,
];

/// [`SM_CFS`] as named in set 1 (see the module's doc), in the same order.
const SM_CFS_1: [&str; 16] = [
    "sm_meta.1",
    "tasks.1",
    "task_names.1",
    "idempotency.1",
    "idempotency_expiry.1",
    "runs.1",
    "runs_by_task.1",
    "run_queue.1",
    "workers.1",
    "assignments.1",
    "run_delayed.1",
    "run_deadlines.1",
    "run_counts.1",
    "counters.1",
    "tasks_by_status.1",
    "name_trigrams.1",
];

/// `raft_meta` key naming the live state-machine set (one byte, 0 or 1; absent = 0).
const SM_SET_KEY: &[u8] = b"sm_set";

/// Empties state-machine set `set` with range deletions, which (unlike deleting files)
/// leave alone what an open RocksDB snapshot of it sees. Not synced: an interrupted clear
/// is redone at the next start or install. Whether it held anything.
fn clear_set(db: &DB, set: u8) -> io::Result<bool> {
    let mut batch = WriteBatch::default();
    for name in SM_CFS {
        let cf = db.cf_handle(physical(set, name)).expect("column families are checked at open");
        let Some((first, _)) = db.iterator_cf(cf, IteratorMode::Start).next().transpose().map_err(db_err)? else {
            continue;
        };
        let (last, _) = db
            .iterator_cf(cf, IteratorMode::End)
            .next()
            .transpose()
            .map_err(db_err)?
            .ok_or_else(|| io::Error::other(format!("{name} has a first key and no last")))?;
        batch.delete_range_cf(cf, &first, &last);
        batch.delete_cf(cf, &last);
    }
    if batch.is_empty() {
        return Ok(false);
    }
    db.write(batch).map_err(db_err)?;
    Ok(true)
}

/// Compacts set `set`'s column families: after [`clear_set`], this gives the disk back
/// (unless a RocksDB snapshot still holds the data).
fn compact_set(db: &DB, set: u8) {
    for name in SM_CFS {
        let cf = db.cf_handle(physical(set, name)).expect("column families are checked at open");
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    }
}

/// The Raft log's own column families (not state-machine state).
const RAFT_CFS: [&str; 2] = [CF_RAFT_LOG, CF_RAFT_META];

fn all_cfs() -> impl Iterator<Item = &'static str> {
    RAFT_CFS.into_iter().chain(SM_CFS).chain(SM_CFS_1)
}

/// The name column family `name` (one of [`SM_CFS`]) has in state-machine set `set`.
/// Set 0 keeps the plain names, so the lookup by position (on every read and write of
/// apply) happens only while set 1 is live.
fn physical(set: u8, name: &str) -> &str {
    if set == 0 {
        return name;
    }
    let i = SM_CFS.iter().position(|n| *n == name).expect("a state-machine column family");
    SM_CFS_1[i]
}

/// Reads the live set's number through `get` (the database, or a snapshot of it).
fn read_set(get: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>) -> io::Result<u8> {
    match get(SM_SET_KEY).map_err(db_err)?.as_deref() {
        None => Ok(0),
        Some([set @ (0 | 1)]) => Ok(*set),
        Some(other) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("raft_meta sm_set is corrupt: {other:?}")))
        }
    }
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

/// What [`Store::recent_runs`] found.
#[derive(Debug, Default)]
pub struct RecentRuns {
    pub runs: Vec<Run>,
    pub matched: u64,
    pub scanned: u64,
    pub by_status: std::collections::BTreeMap<&'static str, u64>,
    pub complete: bool,
}

/// Opens (or creates) the node's database, requiring every column family this binary
/// knows; an unexpected extra column family means a newer binary wrote here.
pub fn open_db(dir: &Path) -> io::Result<Arc<DB>> {
    std::fs::create_dir_all(dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // One memtable budget for all column families together (each would otherwise take up
    // to 2 x 64 MiB on its own): what RocksDB holds in memory does not grow with the
    // number of column families nor with the size of a snapshot being installed.
    opts.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
    let existing = DB::list_cf(&opts, dir).unwrap_or_default();
    if let Some(unknown) = existing.iter().find(|cf| *cf != "default" && !all_cfs().any(|known| known == cf.as_str())) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("data dir {} has column family {unknown:?} that this version does not know; was it written by a newer raftcron?", dir.display()),
        ));
    }
    // What is there first, and its format checked before anything is added: a column
    // family of this format created in a dir of another would make the release that wrote
    // the dir refuse it in turn.
    let mut db = DB::open_cf(&opts, dir, &existing)
        .map_err(|e| io::Error::other(format!("cannot open database in {}: {e}", dir.display())))?;
    let found = check_format(&db, dir)?;
    let fresh = found.is_none();
    for name in all_cfs() {
        if db.cf_handle(name).is_none() {
            db.create_cf(name, &Options::default()).map_err(|e| {
                io::Error::other(format!("cannot create column family {name} in {}: {e}", dir.display()))
            })?;
        }
    }
    let meta = db.cf_handle(CF_RAFT_META).expect("created above");
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    if fresh {
        db.put_cf_opt(meta, FORMAT_KEY, [crate::raft::FORMAT_VERSION], &sync).map_err(db_err)?;
    }
    let set = read_set(|k| db.get_cf(meta, k))?;
    if let Some(old) = found.filter(|v| *v < crate::raft::FORMAT_VERSION) {
        // In place, in one synced batch with the new format mark: a crash before it
        // leaves the dir as it was, to be migrated at the next start.
        let mut batch = WriteBatch::default();
        migrate_set(&db, set, old, &mut batch)?;
        batch.put_cf(meta, FORMAT_KEY, [crate::raft::FORMAT_VERSION]);
        db.write_opt(batch, &sync).map_err(db_err)?;
        tracing::info!(dir = %dir.display(), from = old, to = crate::raft::FORMAT_VERSION, "data dir migrated");
    }
    Ok(Arc::new(db))
}

/// The format of the database in `dir`, read without changing anything (`None`: nothing
/// written yet); an error for a format this binary cannot read. What a command that must
/// not migrate (`raftcron debug verify`) checks first.
pub fn stored_format(dir: &Path) -> io::Result<Option<u8>> {
    let opts = Options::default();
    let cfs = DB::list_cf(&opts, dir).map_err(|e| io::Error::other(format!("{}: {e}", dir.display())))?;
    let db = DB::open_cf_for_read_only(&opts, dir, &cfs, false)
        .map_err(|e| io::Error::other(format!("cannot open database in {}: {e}", dir.display())))?;
    check_format(&db, dir)
}

/// Brings state-machine set `set`, written in format `from` (at least
/// [`crate::raft::OLDEST_READABLE_FORMAT`]), to this binary's format, in `batch`: a data
/// dir as it opens, a snapshot as it loads. 4 → 5: every task's pending runs counted
/// ([`Counter::PendingOf`]), from one pass over the runs.
pub(super) fn migrate_set(db: &DB, set: u8, from: u8, batch: &mut WriteBatch) -> io::Result<()> {
    if from >= 5 {
        return Ok(());
    }
    let runs = db.cf_handle(physical(set, CF_RUNS)).expect("column families are checked at open");
    let counters = db.cf_handle(physical(set, CF_COUNTERS)).expect("column families are checked at open");
    let mut pending: std::collections::BTreeMap<u64, u64> = Default::default();
    for item in db.iterator_cf(runs, IteratorMode::Start) {
        let (_, v) = item.map_err(db_err)?;
        let run: Run = decode(&v)?;
        if run.status == RunStatus::Pending {
            *pending.entry(run.task_id).or_default() += 1;
        }
    }
    for (task, n) in pending {
        batch.put_cf(counters, Counter::PendingOf(task).key(), encode(&n)?);
    }
    Ok(())
}

/// Refuses a data dir written in a format this binary cannot read; the format it was
/// written in, `None` when it is new (nothing written: the caller marks it with this
/// binary's format). Data dirs of format 1 predate the marker: one that holds anything at
/// all is format 1.
fn check_format(db: &DB, dir: &Path) -> io::Result<Option<u8>> {
    let marked = match db.cf_handle(CF_RAFT_META) {
        Some(meta) => db.get_cf(meta, FORMAT_KEY).map_err(db_err)?,
        None => None,
    };
    let found = match marked {
        Some(bytes) => bytes.first().copied().unwrap_or(0),
        None => {
            let written = all_cfs()
                .filter_map(|name| db.cf_handle(name))
                .any(|cf| db.iterator_cf(cf, IteratorMode::Start).next().is_some());
            if !written {
                return Ok(None);
            }
            1
        }
    };
    if !(crate::raft::OLDEST_READABLE_FORMAT..=crate::raft::FORMAT_VERSION).contains(&found) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "data dir {} has format version {found}, this binary reads format version {} (and migrates {} and later); \
                 it cannot be opened in place: restore its tasks into a new cluster, or run the release that wrote it",
                dir.display(),
                crate::raft::FORMAT_VERSION,
                crate::raft::OLDEST_READABLE_FORMAT
            ),
        ));
    }
    Ok(Some(found))
}

/// The memtables of all column families together; beyond it RocksDB flushes the largest.
const DB_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// `raft_meta` key of the data dir's format version (one byte).
const FORMAT_KEY: &[u8] = b"format";

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
/// Decodes the leading fields of a bincode value as `T`, ignoring the rest: bincode
/// writes a struct's fields in order, nested structs inline, so `(u64, String)` reads a
/// [`Task`]'s id and name without the rest of it.
pub(crate) fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(value, _)| value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn decode_versioned<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    match bytes.first() {
        // Format 4 encodes entries as 5 does.
        Some(&v) if (crate::raft::OLDEST_READABLE_FORMAT..=crate::raft::FORMAT_VERSION).contains(&v) => {
            decode(&bytes[1..])
        }
        Some(&v) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what} has format version {v}, this binary reads versions {} to {}",
                crate::raft::OLDEST_READABLE_FORMAT,
                crate::raft::FORMAT_VERSION
            ),
        )),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what} is empty"))),
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}"))
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

/// What the snapshot trigger weighs (not state: a restart recounts it): bytes appended to
/// the Raft log since the last snapshot, and the size of that snapshot.
#[derive(Debug, Default)]
pub struct LogGrowth {
    log_bytes: std::sync::atomic::AtomicU64,
    snapshot_bytes: std::sync::atomic::AtomicU64,
}

impl LogGrowth {
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn appended(&self, bytes: u64) {
        self.log_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A snapshot of `bytes` now stands for the log that had grown by `covered` when it
    /// began (what came after still counts towards the next).
    pub(crate) fn snapshotted(&self, covered: u64, bytes: u64) {
        let _ = self.log_bytes.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(covered)),
        );
        self.snapshot_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Typed reads of the state machine, shared by `apply` and the API.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// The live state-machine set (see the module's doc); changed by a snapshot install
    /// alone, after the batch that flips it on disk.
    set: Arc<std::sync::atomic::AtomicU8>,
    changes: Arc<TaskChanges>,
    /// Bumped after every committed batch that wrote a run or a worker: wakes placement
    /// on the leader and workers' long polls on every node.
    runs_changed: Arc<tokio::sync::watch::Sender<u64>>,
    growth: Arc<LogGrowth>,
    /// Deletes in the [`CHURNING`] column families since they were last tidied.
    churn: Arc<std::sync::atomic::AtomicU64>,
}

/// The column families whose keys live briefly (see the module's doc).
const CHURNING: [&str; 4] = [CF_RUN_QUEUE, CF_RUN_DELAYED, CF_RUN_DEADLINES, CF_ASSIGNMENTS];
/// Deletes in [`CHURNING`] after which they are flushed and compacted.
pub const CHURN_TIDY_AFTER: u64 = 512;

/// Flushes and compacts the [`CHURNING`] column families whenever [`CHURN_TIDY_AFTER`]
/// deletes piled up in them (looked at twice a second), off the async workers. Their live
/// data is a few keys per run in flight, so a pass costs milliseconds; it changes no value.
pub async fn keep_churn_tidy(store: Store) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.tidy_churn(CHURN_TIDY_AFTER)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot compact the run indexes"),
            Err(e) => tracing::warn!(error = %e, "compacting the run indexes panicked"),
        }
    }
}

impl Store {
    /// The store over a database from [`open_db`] (which checked the set pointer).
    pub fn new(db: Arc<DB>) -> Self {
        let meta = db.cf_handle(CF_RAFT_META).expect("column families are checked at open");
        let set = read_set(|k| db.get_cf(meta, k)).expect("the state-machine set pointer is checked at open");
        Store {
            db,
            set: Arc::new(set.into()),
            changes: Arc::default(),
            runs_changed: Arc::new(tokio::sync::watch::channel(0).0),
            growth: Arc::default(),
            churn: Arc::default(),
        }
    }

    /// Log growth against the last snapshot, for the snapshot trigger; the log store
    /// counts its appends into it ([`LogStore::counting_into`]).
    pub fn log_growth(&self) -> &Arc<LogGrowth> {
        &self.growth
    }

    /// The live state-machine set.
    fn live_set(&self) -> u8 {
        self.set.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The state-machine column family `name` of set `set`.
    fn set_cf(&self, set: u8, name: &str) -> &ColumnFamily {
        self.db.cf_handle(physical(set, name)).expect("column families are checked at open")
    }

    /// The live set as a RocksDB snapshot of the database sees it: whoever reads a
    /// consistent view must take the set from that view, not from [`Store::live_set`].
    fn set_in(&self, view: &rocksdb::Snapshot<'_>) -> io::Result<u8> {
        let meta = self.db.cf_handle(CF_RAFT_META).expect("column families are checked at open");
        read_set(|k| view.get_cf(meta, k))
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

    /// Every worker with the number of slots its assignments take.
    pub fn worker_loads(&self) -> io::Result<Vec<WorkerLoad>> {
        let mut out = Vec::new();
        for worker in self.workers()? {
            let used = self.assignments_of(&worker.id)?.len() as u32;
            out.push(WorkerLoad { worker, used });
        }
        Ok(out)
    }

    /// The runs holding a slot on `worker`, in id order.
    pub fn assignments_of(&self, worker: &str) -> io::Result<Vec<u64>> {
        let prefix = keys::assignment_prefix(worker);
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

    /// The distinct classes (required tag sets) that have runs in the placement queue,
    /// one seek each.
    pub fn queued_classes(&self) -> io::Result<Vec<Vec<String>>> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut iter =
                self.db.iterator_cf(self.cf(CF_RUN_QUEUE), IteratorMode::From(&from, rocksdb::Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (k, _) = item.map_err(db_err)?;
            let (tags, _, _) = keys::parse_queue_key(&k).ok_or_else(|| corrupt("run_queue key"))?;
            from = keys::class_prefix(&tags);
            from.push(0xff);
            out.push(tags);
        }
        Ok(out)
    }

    /// Up to `limit` queued runs of one class in placement order: (priority rank, run id).
    pub fn queued_of_class(&self, tags: &[String], limit: usize) -> io::Result<Vec<(u8, u64)>> {
        let prefix = keys::class_prefix(tags);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_RUN_QUEUE), IteratorMode::From(&prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, _) = item.map_err(db_err)?;
            let (class, rank, id) = keys::parse_queue_key(&k).ok_or_else(|| corrupt("run_queue key"))?;
            if out.len() >= limit || class != tags {
                break;
            }
            out.push((rank, id));
        }
        Ok(out)
    }

    /// Up to `limit` runs of a time index (`run_delayed`, `run_deadlines`) due at or before
    /// `now_ms`, earliest first; and the time of the first entry not returned.
    pub fn due_runs(&self, index: &str, now_ms: i64, limit: usize) -> io::Result<(Vec<u64>, Option<i64>)> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(index), IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            let (at, id) = keys::parse_time_key(&k).ok_or_else(|| corrupt("run time index key"))?;
            if at > now_ms || out.len() >= limit {
                return Ok((out, Some(at)));
            }
            out.push(id);
        }
        Ok((out, None))
    }

    /// Which tasks applied entries changed; see [`TaskChanges`].
    pub fn task_changes(&self) -> &TaskChanges {
        &self.changes
    }

    /// Number of pending runs (placeable now or in a backoff).
    pub fn queued_runs(&self) -> io::Result<u64> {
        let mut n = 0;
        for cf in [CF_RUN_QUEUE, CF_RUN_DELAYED] {
            for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
                item.map_err(db_err)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many runs of the task are stored.
    pub fn runs_stored(&self, task_id: u64) -> io::Result<u64> {
        Ok(self.get(CF_RUN_COUNTS, &u64_key(task_id))?.unwrap_or(0))
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Counts a delete in `cf` toward the next tidy of the [`CHURNING`] column families.
    fn note_delete(&self, cf: &str) {
        if CHURNING.contains(&cf) {
            self.churn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Flushes and compacts the [`CHURNING`] column families of the live set, dropping
    /// their tombstones, when at least `after` deletes were made in them since the last
    /// time. Returns whether it did.
    pub fn tidy_churn(&self, after: u64) -> io::Result<bool> {
        use std::sync::atomic::Ordering;
        if self.churn.load(Ordering::Relaxed) < after {
            return Ok(false);
        }
        // Deletes counted from here on count toward the next pass.
        self.churn.swap(0, Ordering::Relaxed);
        // Rewritten to the last level even when one file could simply be moved there: a
        // move would keep its tombstones.
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in CHURNING {
            let cf = self.cf(name);
            self.db.flush_cf(cf).map_err(db_err)?;
            self.db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(true)
    }

    /// The live set's column family `name` (one of [`SM_CFS`]).
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.set_cf(self.live_set(), name)
    }

    /// Commits one entry's batch and tells the watchers what it touched.
    fn write_batch(&self, batch: WriteBatch, touched_tasks: &[u64], touched_runs: bool) -> io::Result<()> {
        self.db.write(batch).map_err(db_err)?;
        self.changes.record(touched_tasks, false);
        if touched_runs {
            self.runs_changed.send_modify(|n| *n += 1);
        }
        Ok(())
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

    /// The members the cluster is recorded to have replicated to (`MarkReplicated`).
    pub fn replicated_members(&self) -> io::Result<std::collections::BTreeSet<u64>> {
        Ok(self.meta("replicated")?.unwrap_or_default())
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

    /// The newest runs across all tasks, newest first, looking at no more than `scan_cap`
    /// of them and none created before `since`: those `matches` admits, after skipping
    /// `skip`, up to `limit`; how many matched among those looked at; how many were looked
    /// at per status; and whether the look reached the end of the window (every run since
    /// `since`, or every run) rather than the cap. Run ids grow with creation, so the walk
    /// is the run table backwards.
    pub fn recent_runs(
        &self,
        since: Option<DateTime<Utc>>,
        scan_cap: usize,
        matches: impl Fn(&Run) -> bool,
        skip: usize,
        limit: usize,
    ) -> io::Result<RecentRuns> {
        let mut out = RecentRuns { complete: true, ..RecentRuns::default() };
        for item in self.db.iterator_cf(self.cf(CF_RUNS), IteratorMode::End) {
            if out.scanned as usize >= scan_cap {
                out.complete = false;
                break;
            }
            let (_, v) = item.map_err(db_err)?;
            let run: Run = decode(&v)?;
            if since.is_some_and(|t| run.created_at < t) {
                break;
            }
            out.scanned += 1;
            *out.by_status.entry(run.status.as_str()).or_default() += 1;
            if matches(&run) {
                if out.matched as usize >= skip && out.runs.len() < limit {
                    out.runs.push(run);
                }
                out.matched += 1;
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

    /// `limit` tasks after the first `skip`, in id order, and how many there are (from the
    /// task counters: no scan). Only the page is decoded; the skip starts from the page's
    /// bucket ([`Store::page_start`]), so a deep page costs about what the first one does.
    pub fn task_page(&self, skip: u64, limit: u64) -> io::Result<(Vec<Task>, u64)> {
        let total = self.task_count()?;
        let Some((from_id, skip)) = self.page_start(None, skip)? else {
            return Ok((Vec::new(), total));
        };
        // A raw iterator: skipping copies nothing.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_TASKS));
        it.seek(u64_key(from_id));
        let (mut passed, mut tasks) = (0u64, Vec::new());
        while let Some(v) = it.value() {
            if tasks.len() as u64 >= limit {
                break;
            }
            if passed >= skip {
                tasks.push(decode(v)?);
            }
            passed += 1;
            it.next();
        }
        it.status().map_err(db_err)?;
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
    /// Up to `limit` entries of the expiry index that expire from `from_ms` to `now_ms`, in
    /// order (the seek to `from_ms` steps over nothing before it, tombstones included).
    pub fn expired_idempotency(&self, from_ms: i64, now_ms: i64, limit: usize) -> io::Result<Vec<ExpiredIdempotency>> {
        let mut out = Vec::new();
        let from = from_ms.to_be_bytes();
        let mode = IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_IDEMPOTENCY_EXPIRY), mode) {
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
        self.digest_without(&[b"applied"])
    }

    /// [`Store::digest`] without what names the cluster rather than its state: the
    /// membership, the cluster id and the members replicated to. Equal between a cluster
    /// and one restored from its backup (`raftcron snapshot restore`), at the backup's index.
    pub fn content_digest(&self) -> io::Result<String> {
        self.digest_without(&[b"applied", b"membership", b"cluster_id", b"replicated"])
    }

    fn digest_without(&self, meta_keys: &[&[u8]]) -> io::Result<String> {
        let snapshot = self.db.snapshot();
        let set = self.set_in(&snapshot)?;
        let mut h = Sha256::new();
        for name in SM_CFS {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            for item in snapshot.iterator_cf(self.set_cf(set, name), IteratorMode::Start) {
                let (k, v) = item.map_err(db_err)?;
                if name == CF_SM_META && meta_keys.contains(&&*k) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tidy pass takes the tombstones of finished runs out of every later read's way:
    /// a worker's assignments skipped 990 deleted keys before it and none after, with the
    /// same answer.
    #[test]
    fn tidying_the_run_indexes_drops_the_tombstones_a_read_would_skip() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(open_db(dir.path()).unwrap());
        let cf = store.cf(CF_ASSIGNMENTS);
        for id in 0..1000 {
            store.db.put_cf(cf, keys::assignment_key("w1", id), b"").unwrap();
        }
        for id in 0..990 {
            store.db.delete_cf(cf, keys::assignment_key("w1", id)).unwrap();
            store.note_delete(CF_ASSIGNMENTS);
        }
        store.note_delete(CF_TASKS); // not a churning family: not counted
        let read = |store: &Store| {
            set_perf_stats(PerfStatsLevel::EnableCount);
            let mut ctx = PerfContext::default();
            ctx.reset();
            let ids = store.assignments_of("w1").unwrap();
            (ids, ctx.metric(PerfMetric::InternalDeleteSkippedCount))
        };
        let (ids, skipped) = read(&store);
        assert_eq!(ids, (990..1000).collect::<Vec<u64>>());
        assert!(skipped >= 990, "skipped {skipped}");
        assert!(!store.tidy_churn(991).unwrap(), "990 deletes are fewer than asked for");
        assert!(store.tidy_churn(990).unwrap());
        let (ids, skipped) = read(&store);
        assert_eq!((ids, skipped), ((990..1000).collect::<Vec<u64>>(), 0));
        assert!(!store.tidy_churn(1).unwrap(), "the count starts again");
    }

    #[test]
    fn versioned_values_refuse_an_unknown_version_clearly() {
        let bytes = encode_versioned(&("task", 7u64)).unwrap();
        let back: (String, u64) = decode_versioned("log entry", &bytes).unwrap();
        assert_eq!(back, ("task".to_string(), 7));
        let mut newer = bytes.clone();
        newer[0] = crate::raft::FORMAT_VERSION + 1;
        let err = decode_versioned::<(String, u64)>("log entry", &newer).unwrap_err().to_string();
        let reads =
            format!("reads versions {} to {}", crate::raft::OLDEST_READABLE_FORMAT, crate::raft::FORMAT_VERSION);
        assert!(err.contains(&format!("format version {}", newer[0])) && err.contains(&reads), "{err}");
        let mut older = bytes.clone();
        older[0] = crate::raft::OLDEST_READABLE_FORMAT - 1;
        let err = decode_versioned::<(String, u64)>("log entry", &older).unwrap_err().to_string();
        assert!(err.contains(&format!("format version {}", older[0])) && err.contains(&reads), "{err}");
        assert!(decode_versioned::<(String, u64)>("snapshot", &[]).unwrap_err().to_string().contains("empty"));
    }

    fn copy_fixture(name: &str) -> tempfile::TempDir {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }

    /// A data dir of the previous format (checked in under tests/fixtures/format-v4, three
    /// runs pending: two of task 1, one of task 2) opens under this binary, migrated in
    /// place: marked with this format, the per-task pending counts derived, every index
    /// and counter agreeing with the tables, and it opens again as it is.
    #[test]
    fn a_format_4_data_dir_is_migrated_in_place() {
        let dir = copy_fixture("format-v4/db");
        let db = open_db(dir.path()).expect("a format 4 dir opens");
        let format = db.get_cf(db.cf_handle(CF_RAFT_META).unwrap(), FORMAT_KEY).unwrap();
        assert_eq!(format, Some(vec![crate::raft::FORMAT_VERSION]));
        let store = Store::new(db.clone());
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        assert_eq!(store.counter(Counter::PendingOf(1)).unwrap(), 2);
        assert_eq!(store.counter(Counter::PendingOf(2)).unwrap(), 1);
        assert_eq!(store.counter(Counter::PendingOf(3)).unwrap(), 0);
        assert_eq!(store.task_count().unwrap(), 3);
        // Its log entries, written in format 4, read back.
        let entries = store.db().iterator_cf(store.db().cf_handle(CF_RAFT_LOG).unwrap(), IteratorMode::Start).count();
        assert!(entries >= 8, "{entries} log entries");
        for item in store.db().iterator_cf(store.db().cf_handle(CF_RAFT_LOG).unwrap(), IteratorMode::Start) {
            let (_, v) = item.unwrap();
            assert_eq!(v[0], 4, "written by format 4");
            decode_versioned::<crate::raft::Entry>("log entry", &v).expect("a format 4 entry decodes");
        }
        drop((store, db));
        let again = Store::new(open_db(dir.path()).unwrap());
        assert_eq!(again.counter(Counter::PendingOf(1)).unwrap(), 2);
    }

    /// A data dir written by format 1 (before this binary's changes to replicated types,
    /// checked in under tests/fixtures) is refused with both versions named, and left as
    /// it was.
    #[test]
    fn a_format_1_data_dir_is_refused_naming_both_versions() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1/db");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let before = DB::list_cf(&Options::default(), dir.path()).unwrap();
        let err = open_db(dir.path()).unwrap_err().to_string();
        let ours = format!("format version {}", crate::raft::FORMAT_VERSION);
        assert!(err.contains("format version 1") && err.contains(&ours), "{err}");
        // Refused without a trace: no column family of this format was added, so the
        // release that wrote the dir still opens it.
        assert_eq!(DB::list_cf(&Options::default(), dir.path()).unwrap(), before);
        assert!(open_db(dir.path()).unwrap_err().to_string().contains("format version 1"), "still refused");
        // A fresh dir is marked and opens again.
        let fresh = tempfile::tempdir().unwrap();
        drop(open_db(fresh.path()).unwrap());
        drop(open_db(fresh.path()).unwrap());
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
