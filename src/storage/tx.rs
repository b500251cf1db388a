//! [`Tx`]: the writes of one applied entry, buffered into one RocksDB batch and committed
//! atomically together with the applied log id.
//!
//! Point reads through a `Tx` see the entry's own earlier writes (read-your-writes), so a
//! command that changes the same task or run twice works from the latest version. Every
//! index that follows a run (its task's run list, the placement queue, the delayed and
//! deadline indexes, its worker's assignments, its task's run count, the run counters of
//! `indexes.rs`) is maintained here and nowhere else, and so are the task indexes
//! ([`Tx::reindex_task`]): [`Tx::put_run`] replaces the old version's index entries with the new
//! one's, so no command can leave an index disagreeing with the runs. Iteration still
//! goes to the committed state ([`Tx::base`]): callers that iterate must not rely on
//! seeing this entry's writes.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::collections::BTreeMap;
use std::io;

use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::indexes::{in_progress, page_bucket, run_day, status_key, trigram_key, trigram_value, trigrams, Counter};
use super::keys::{assignment_key, deadline_key, delayed_key, queue_key};
use super::{
    decode, encode, idempotency_key, u64_key, IdempotencyRecord, Store, CF_ASSIGNMENTS, CF_COUNTERS, CF_IDEMPOTENCY,
    CF_IDEMPOTENCY_EXPIRY, CF_NAME_TRIGRAMS, CF_RUNS, CF_RUNS_BY_TASK, CF_RUN_COUNTS, CF_RUN_DEADLINES, CF_RUN_DELAYED,
    CF_RUN_QUEUE, CF_SM_META, CF_TASKS, CF_TASKS_BY_STATUS, CF_TASK_NAMES, CF_WORKERS,
};
use crate::model::{Run, RunStatus, Task, TaskStatus, Worker};

pub struct Tx<'a> {
    store: &'a Store,
    batch: WriteBatch,
    /// This entry's writes by (column family, key): `None` for a delete.
    written: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    /// Tasks this batch writes or deletes, announced through `TaskChanges` on commit.
    touched_tasks: Vec<u64>,
    /// Whether it wrote a run or a worker (see [`Store::runs_changed`]).
    touched_runs: bool,
}

impl<'a> Tx<'a> {
    pub fn new(store: &'a Store) -> Self {
        Tx {
            store,
            batch: WriteBatch::default(),
            written: BTreeMap::new(),
            touched_tasks: Vec::new(),
            touched_runs: false,
        }
    }

    /// The committed state, without this entry's writes: for iteration only.
    pub fn base(&self) -> &Store {
        self.store
    }

    fn put_bytes(&mut self, cf: &'static str, key: &[u8], value: Vec<u8>) {
        self.batch.put_cf(self.store.cf(cf), key, &value);
        self.written.insert((cf, key.to_vec()), Some(value));
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.store.note_delete(cf);
        self.batch.delete_cf(self.store.cf(cf), key);
        self.written.insert((cf, key.to_vec()), None);
    }

    fn put<T: Serialize>(&mut self, cf: &'static str, key: &[u8], value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.put_bytes(cf, key, bytes);
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, cf: &'static str, key: &[u8]) -> io::Result<Option<T>> {
        match self.written.get(&(cf, key.to_vec())) {
            Some(Some(bytes)) => decode(bytes).map(Some),
            Some(None) => Ok(None),
            None => self.store.get(cf, key),
        }
    }

    // --- reads that see this entry's writes

    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        self.get(CF_SM_META, key.as_bytes())
    }

    pub fn task(&self, id: u64) -> io::Result<Option<Task>> {
        self.get(CF_TASKS, &u64_key(id))
    }

    pub fn task_id_by_name(&self, name: &str) -> io::Result<Option<u64>> {
        match self.written.get(&(CF_TASK_NAMES, name.as_bytes().to_vec())) {
            Some(Some(bytes)) => super::key_u64(bytes).map(Some),
            Some(None) => Ok(None),
            None => self.store.task_id_by_name(name),
        }
    }

    pub fn run(&self, id: u64) -> io::Result<Option<Run>> {
        self.get(CF_RUNS, &u64_key(id))
    }

    pub fn worker(&self, id: &str) -> io::Result<Option<Worker>> {
        self.get(CF_WORKERS, id.as_bytes())
    }

    pub fn idempotency(&self, scope: &str, key: &str) -> io::Result<Option<IdempotencyRecord>> {
        self.get(CF_IDEMPOTENCY, &idempotency_key(scope, key))
    }

    pub fn idempotency_by_record_key(&self, record_key: &[u8]) -> io::Result<Option<IdempotencyRecord>> {
        match self.written.get(&(CF_IDEMPOTENCY, record_key.to_vec())) {
            Some(Some(bytes)) => decode(bytes).map(Some),
            Some(None) => Ok(None),
            None => self.store.idempotency_by_record_key(record_key),
        }
    }

    /// How many runs of the task are stored (kept by [`Tx::put_run`] and
    /// [`Tx::delete_run`] alone).
    pub fn runs_stored(&self, task_id: u64) -> io::Result<u64> {
        Ok(self.get(CF_RUN_COUNTS, &u64_key(task_id))?.unwrap_or(0))
    }

    // --- writes

    pub fn put_meta<T: Serialize>(&mut self, key: &str, value: &T) -> io::Result<()> {
        self.put(CF_SM_META, key.as_bytes(), value)
    }

    pub fn put_task(&mut self, task: &Task) -> io::Result<()> {
        self.touched_tasks.push(task.id);
        self.put(CF_TASKS, &u64_key(task.id), task)
    }

    /// Deletes a task and its run counter (its runs must be deleted by the caller).
    pub fn delete_task(&mut self, id: u64) {
        self.touched_tasks.push(id);
        self.delete(CF_TASKS, &u64_key(id));
        self.delete(CF_RUN_COUNTS, &u64_key(id));
    }

    /// Keeps the task indexes in step with a task's name and status going from `old` to
    /// `new` (`None`: no task): name → id, the name trigrams, the status index and the
    /// task counts. Creating or deleting a task, and every change of its name or status,
    /// calls this (`raftcron debug verify` checks that they did).
    pub fn reindex_task(
        &mut self,
        id: u64,
        old: Option<(&str, TaskStatus)>,
        new: Option<(&str, TaskStatus)>,
    ) -> io::Result<()> {
        let (old_name, old_status) = (old.map(|o| o.0), old.map(|o| o.1));
        let (new_name, new_status) = (new.map(|n| n.0), new.map(|n| n.1));
        if old_name != new_name {
            // Deletes before puts: a trigram both names share ends up present.
            if let Some(name) = old_name {
                self.delete(CF_TASK_NAMES, name.as_bytes());
                for g in trigrams(name) {
                    self.delete(CF_NAME_TRIGRAMS, &trigram_key(g, id));
                }
            }
            if let Some(name) = new_name {
                self.put_bytes(CF_TASK_NAMES, name.as_bytes(), u64_key(id).to_vec());
                for g in trigrams(name) {
                    self.put_bytes(CF_NAME_TRIGRAMS, &trigram_key(g, id), trigram_value(g, name));
                }
            }
        }
        if old_status != new_status {
            let bucket = page_bucket(id);
            if let Some(s) = old_status {
                self.delete(CF_TASKS_BY_STATUS, &status_key(s, id));
                self.bump(Counter::Tasks(s), -1)?;
                self.bump(Counter::TaskBucket(Some(s), bucket), -1)?;
            }
            if let Some(s) = new_status {
                self.put_bytes(CF_TASKS_BY_STATUS, &status_key(s, id), Vec::new());
                self.bump(Counter::Tasks(s), 1)?;
                self.bump(Counter::TaskBucket(Some(s), bucket), 1)?;
            }
            self.move_count(
                old_status.map(|_| Counter::TaskBucket(None, bucket)),
                new_status.map(|_| Counter::TaskBucket(None, bucket)),
            )?;
        }
        Ok(())
    }

    /// Adds `delta` to a counter (absent = 0; one that reaches 0 is removed) and returns
    /// its new value. A counter that would go below zero stays at zero, loudly: failing
    /// the entry instead would stop every replica at it, for good (apply is deterministic),
    /// over a wrong count that `raftcron debug verify` can name.
    fn bump(&mut self, counter: Counter, delta: i64) -> io::Result<u64> {
        let key = counter.key();
        let now: u64 = self.get(CF_COUNTERS, &key)?.unwrap_or(0);
        let next = now.checked_add_signed(delta).unwrap_or_else(|| {
            tracing::error!(?counter, now, delta, "a counter would go below zero: kept at 0 (raftcron debug verify)");
            0
        });
        if next == 0 {
            self.delete(CF_COUNTERS, &key);
        } else {
            self.put(CF_COUNTERS, &key, &next)?;
        }
        Ok(next)
    }

    /// Moves one count from `from` to `to` (`None`: nothing there) unless they are the same.
    fn move_count(&mut self, from: Option<Counter>, to: Option<Counter>) -> io::Result<()> {
        if from != to {
            if let Some(c) = from {
                self.bump(c, -1)?;
            }
            if let Some(c) = to {
                self.bump(c, 1)?;
            }
        }
        Ok(())
    }

    /// Keeps the run counters in step with a run going from `old` to `new` (`None`: no
    /// run): by status, by day of creation, in progress per task and tasks running.
    fn count_run_change(&mut self, old: Option<&Run>, new: Option<&Run>) -> io::Result<()> {
        self.move_count(old.map(|r| Counter::Runs(r.status)), new.map(|r| Counter::Runs(r.status)))?;
        self.move_count(old.map(|r| Counter::RunsOnDay(run_day(r))), new.map(|r| Counter::RunsOnDay(run_day(r))))?;
        let pending =
            |r: Option<&Run>| r.filter(|r| r.status == RunStatus::Pending).map(|r| Counter::PendingOf(r.task_id));
        self.move_count(pending(old), pending(new))?;
        let (was, is) = (old.is_some_and(in_progress), new.is_some_and(in_progress));
        if let (true, Some(task)) = (was != is, old.or(new).map(|r| r.task_id)) {
            let after = self.bump(Counter::InProgress(task), if is { 1 } else { -1 })?;
            if (is && after == 1) || (!is && after == 0) {
                self.bump(Counter::TasksRunning, if is { 1 } else { -1 })?;
            }
        }
        Ok(())
    }

    /// Stores a run and keeps every index that follows it in step: its old version's
    /// entries go, the new version's come. A new run counts towards its task's
    /// `runs_stored`.
    pub fn put_run(&mut self, run: &Run) -> io::Result<()> {
        self.touched_runs = true;
        let old = self.run(run.id)?;
        match &old {
            Some(old) => self.delete_run_indexes(old),
            None => {
                self.adjust_runs_stored(run.task_id, 1)?;
                self.put_bytes(CF_RUNS_BY_TASK, &run_by_task_key(run), Vec::new());
            }
        }
        self.count_run_change(old.as_ref(), Some(run))?;
        self.put_run_indexes(run);
        self.put(CF_RUNS, &u64_key(run.id), run)
    }

    /// Deletes a run and its index entries.
    pub fn delete_run(&mut self, id: u64) -> io::Result<()> {
        let Some(old) = self.run(id)? else { return Ok(()) };
        self.touched_runs = true;
        self.delete_run_indexes(&old);
        self.count_run_change(Some(&old), None)?;
        self.delete(CF_RUNS_BY_TASK, &run_by_task_key(&old));
        self.adjust_runs_stored(old.task_id, -1)?;
        self.delete(CF_RUNS, &u64_key(id));
        Ok(())
    }

    fn adjust_runs_stored(&mut self, task_id: u64, delta: i64) -> io::Result<()> {
        let now = self.runs_stored(task_id)?;
        // As for the counters: kept at zero, loudly, rather than failing every replica.
        let next = now.checked_add_signed(delta).unwrap_or_else(|| {
            tracing::error!(task_id, now, delta, "a run count would go below zero: kept at 0 (raftcron debug verify)");
            0
        });
        // A task without runs has no count (as `debug verify` expects).
        if next == 0 {
            self.delete(CF_RUN_COUNTS, &u64_key(task_id));
            return Ok(());
        }
        self.put(CF_RUN_COUNTS, &u64_key(task_id), &next)
    }

    /// A run is in exactly one of: the placement queue (pending, placeable now), the
    /// delayed index (pending, in a retry's backoff), its worker's assignments (holding a
    /// slot); and in the deadline index while pending with a `pending_deadline`.
    fn put_run_indexes(&mut self, run: &Run) {
        if run.status == RunStatus::Pending {
            match run.not_before {
                Some(t) => self.put_bytes(CF_RUN_DELAYED, &delayed_key(t, run.id), Vec::new()),
                None => self.put_bytes(CF_RUN_QUEUE, &queue_key(run), Vec::new()),
            }
            if let Some(t) = run.pending_deadline {
                self.put_bytes(CF_RUN_DEADLINES, &deadline_key(t, run.id), Vec::new());
            }
        }
        if let (Some(worker), true) = (&run.worker_id, run.is_assigned()) {
            self.put_bytes(CF_ASSIGNMENTS, &assignment_key(worker, run.id), Vec::new());
        }
    }

    fn delete_run_indexes(&mut self, run: &Run) {
        if run.status == RunStatus::Pending {
            match run.not_before {
                Some(t) => self.delete(CF_RUN_DELAYED, &delayed_key(t, run.id)),
                None => self.delete(CF_RUN_QUEUE, &queue_key(run)),
            }
            if let Some(t) = run.pending_deadline {
                self.delete(CF_RUN_DEADLINES, &deadline_key(t, run.id));
            }
        }
        if let (Some(worker), true) = (&run.worker_id, run.is_assigned()) {
            self.delete(CF_ASSIGNMENTS, &assignment_key(worker, run.id));
        }
    }

    pub fn put_worker(&mut self, worker: &Worker) -> io::Result<()> {
        self.touched_runs = true;
        self.put(CF_WORKERS, worker.id.as_bytes(), worker)
    }

    pub fn put_idempotency(&mut self, scope: &str, key: &str, record: &IdempotencyRecord) -> io::Result<()> {
        let k = idempotency_key(scope, key);
        let mut expiry = record.expires_at_ms.to_be_bytes().to_vec();
        expiry.extend_from_slice(&k);
        self.put_bytes(CF_IDEMPOTENCY_EXPIRY, &expiry, Vec::new());
        self.put(CF_IDEMPOTENCY, &k, record)
    }

    /// Removes an expiry index entry and, when given, the record it pointed at.
    pub fn delete_idempotency(&mut self, expiry_key: &[u8], record_key: Option<&[u8]>) {
        self.delete(CF_IDEMPOTENCY_EXPIRY, expiry_key);
        if let Some(k) = record_key {
            self.delete(CF_IDEMPOTENCY, k);
        }
    }

    /// Drops everything buffered so far: the entry applies as a no-op.
    pub fn discard(&mut self) {
        self.batch.clear();
        self.written.clear();
        self.touched_tasks.clear();
        self.touched_runs = false;
    }

    /// Writes the batch. Not synced: the log entry it came from is, and on restart openraft
    /// re-applies everything after the persisted applied index.
    pub fn commit(self) -> io::Result<()> {
        self.store.write_batch(self.batch, &self.touched_tasks, self.touched_runs)
    }

    /// Adds the applied log id (and membership) writes made outside the apply functions.
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }
}

fn run_by_task_key(run: &Run) -> Vec<u8> {
    let mut k = u64_key(run.task_id).to_vec();
    k.extend_from_slice(&u64_key(run.id));
    k
}
