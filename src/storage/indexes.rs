//! The task indexes and counters that keep lists, searches and `/api/system/status` from
//! scanning the tables: tasks by status, name trigrams, and counts of tasks by status and
//! of stored runs by status, by day of creation and in progress per task. [`super::Tx`]
//! maintains them in the same batch as the change they follow (`reindex_task`, and
//! `put_run`/`delete_run` for runs); this file owns their keys, the reads over them, and
//! [`Store::verify`], which recomputes every one from the tables.
//!
//! Column families (state-machine state: snapshots carry them, the digest covers them):
//!
//! | cf                | key                                   | value       |
//! |-------------------|---------------------------------------|-------------|
//! | `counters`        | see [`Counter`]                       | bincode u64 (absent = 0) |
//! | `tasks_by_status` | status code, task id BE               | empty       |
//! | `name_trigrams`   | 3 bytes of the lowercased name, task id BE | empty  |

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use rocksdb::{Direction, IteratorMode};

use super::{db_err, decode, key_u64, u64_key, Store, CF_NAME_TRIGRAMS, CF_TASKS_BY_STATUS, CF_TASK_NAMES};
use crate::model::{Run, RunStatus, Task, TaskStatus};

/// A key of the `counters` column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Tasks in this status.
    Tasks(TaskStatus),
    /// Stored runs in this status.
    Runs(RunStatus),
    /// Stored runs created on this day (days since 1970-01-01 UTC).
    RunsOnDay(i64),
    /// Runs of this task that hold a worker slot (assigned or running).
    InProgress(u64),
    /// Tasks with at least one run in progress.
    TasksRunning,
}

impl Counter {
    pub fn key(self) -> Vec<u8> {
        match self {
            Counter::Tasks(s) => vec![b'T', task_status_code(s)],
            Counter::Runs(s) => vec![b'R', run_status_code(s)],
            Counter::RunsOnDay(day) => {
                let mut k = vec![b'D'];
                // Sign bit flipped: days before 1970 sort before it.
                k.extend_from_slice(&((day as u64) ^ (1 << 63)).to_be_bytes());
                k
            }
            Counter::InProgress(task) => {
                let mut k = vec![b'P'];
                k.extend_from_slice(&u64_key(task));
                k
            }
            Counter::TasksRunning => vec![b'A'],
        }
    }
}

fn task_status_code(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::Active => 0,
        TaskStatus::Paused => 1,
        TaskStatus::Disabled => 2,
    }
}

fn run_status_code(s: RunStatus) -> u8 {
    match s {
        RunStatus::Pending => 0,
        RunStatus::Assigned => 1,
        RunStatus::Running => 2,
        RunStatus::Succeeded => 3,
        RunStatus::Failed => 4,
        RunStatus::TimedOut => 5,
        RunStatus::Cancelled => 6,
        RunStatus::Lost => 7,
    }
}

/// The day a run counts towards in [`Counter::RunsOnDay`].
pub fn run_day(run: &Run) -> i64 {
    run.created_at.timestamp().div_euclid(86_400)
}

/// Whether a run holds a worker slot (counts in [`Counter::InProgress`]).
pub fn in_progress(run: &Run) -> bool {
    matches!(run.status, RunStatus::Assigned | RunStatus::Running)
}

pub fn status_key(status: TaskStatus, id: u64) -> Vec<u8> {
    let mut k = vec![task_status_code(status)];
    k.extend_from_slice(&u64_key(id));
    k
}

/// The distinct trigrams of a name, lowercased as a search lowercases it, in order.
pub fn trigrams(name: &str) -> BTreeSet<[u8; 3]> {
    let lower = name.to_lowercase();
    lower.as_bytes().windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

pub fn trigram_key(trigram: [u8; 3], id: u64) -> Vec<u8> {
    let mut k = trigram.to_vec();
    k.extend_from_slice(&u64_key(id));
    k
}

/// A task list's page and the number of all matches.
pub type TaskPage = (Vec<Task>, u64);

impl Store {
    pub fn counter(&self, c: Counter) -> io::Result<u64> {
        Ok(self.get(super::CF_COUNTERS, &c.key())?.unwrap_or(0))
    }

    /// Tasks in `status`, in id order: `limit` of them after the first `skip`, and the count.
    pub fn tasks_with_status(&self, status: TaskStatus, skip: u64, limit: u64) -> io::Result<TaskPage> {
        let total = self.counter(Counter::Tasks(status))?;
        let prefix = [task_status_code(status)];
        let mut items = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_TASKS_BY_STATUS), IteratorMode::From(&prefix, Direction::Forward));
        for item in iter.skip(skip as usize) {
            let (k, _) = item.map_err(db_err)?;
            if k[0] != prefix[0] || items.len() as u64 >= limit {
                break;
            }
            if let Some(task) = self.task(key_u64(&k[1..])?)? {
                items.push(task);
            }
        }
        Ok((items, total))
    }

    /// Tasks whose lowercased name contains `needle` (already lowercased), and in
    /// `status` when given, in id order: a page and the count. A needle of three bytes or
    /// more walks the name trigram index, joining the needle's trigrams' lists by seeking
    /// (the cost follows the shortest list); a shorter one reads every name (keys only).
    pub fn search_tasks(
        &self,
        needle: &str,
        status: Option<TaskStatus>,
        skip: u64,
        limit: u64,
    ) -> io::Result<TaskPage> {
        let mut total = 0u64;
        let mut items = Vec::new();
        let mut consider = |task: Task| {
            if status.is_some_and(|s| task.spec.status != s) || !task.spec.name.to_lowercase().contains(needle) {
                return;
            }
            if total >= skip && (items.len() as u64) < limit {
                items.push(task);
            }
            total += 1;
        };
        let grams: Vec<[u8; 3]> =
            needle.as_bytes().windows(3).map(|w| [w[0], w[1], w[2]]).collect::<BTreeSet<_>>().into_iter().collect();
        if grams.is_empty() {
            let mut ids = Vec::new();
            for item in self.db.iterator_cf(self.cf(CF_TASK_NAMES), IteratorMode::Start) {
                let (name, id) = item.map_err(db_err)?;
                if String::from_utf8_lossy(&name).to_lowercase().contains(needle) {
                    ids.push(key_u64(&id)?);
                }
            }
            ids.sort_unstable();
            for id in ids {
                if let Some(task) = self.task(id)? {
                    consider(task);
                }
            }
            return Ok((items, total));
        }
        for id in self.trigram_join(&grams)? {
            if let Some(task) = self.task(id)? {
                consider(task);
            }
        }
        Ok((items, total))
    }

    /// The ids (ascending) listed under every one of `grams`: a leapfrog join, each list
    /// an iterator that seeks to the largest id any other list is at.
    fn trigram_join(&self, grams: &[[u8; 3]]) -> io::Result<Vec<u64>> {
        let cf = self.cf(CF_NAME_TRIGRAMS);
        let mut lists: Vec<_> = grams.iter().map(|g| (*g, self.db.raw_iterator_cf(cf))).collect();
        let mut out = Vec::new();
        let mut target = 0u64;
        'outer: loop {
            let mut all_at_target = true;
            for (gram, it) in lists.iter_mut() {
                it.seek(trigram_key(*gram, target));
                let id = match it.key() {
                    Some(k) if k.len() == 11 && k[..3] == gram[..] => key_u64(&k[3..])?,
                    _ => {
                        it.status().map_err(db_err)?;
                        break 'outer; // This list is exhausted: no more common ids.
                    }
                };
                if id != target {
                    target = id;
                    all_at_target = false;
                    break;
                }
            }
            if all_at_target {
                out.push(target);
                match target.checked_add(1) {
                    Some(next) => target = next,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Recomputes every index and counter this file owns, and the run counts, from the
    /// tasks and runs tables of one consistent view, and lists where the stored ones
    /// differ (empty: consistent). Reads the whole state: for `raftcron debug verify` and
    /// tests, not for a serving path.
    pub fn verify(&self) -> io::Result<Vec<String>> {
        let view = self.db.snapshot();
        let set = self.set_in(&view)?;
        let read_cf = |name: &str| -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
            view.iterator_cf(self.set_cf(set, name), IteratorMode::Start)
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_err))
                .collect()
        };
        let mut want_counters: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut want_status = BTreeMap::new();
        let mut want_grams = BTreeMap::new();
        let mut want_names = BTreeMap::new();
        let mut want_run_counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut want_by_task = BTreeMap::new();
        let bump = |m: &mut BTreeMap<Vec<u8>, u64>, k: Vec<u8>| *m.entry(k).or_insert(0) += 1;
        for (_, v) in read_cf(super::CF_TASKS)? {
            let task: Task = decode(&v)?;
            bump(&mut want_counters, Counter::Tasks(task.spec.status).key());
            want_status.insert(status_key(task.spec.status, task.id), Vec::new());
            for g in trigrams(&task.spec.name) {
                want_grams.insert(trigram_key(g, task.id), Vec::new());
            }
            want_names.insert(task.spec.name.as_bytes().to_vec(), u64_key(task.id).to_vec());
        }
        let mut running_tasks = BTreeSet::new();
        for (_, v) in read_cf(super::CF_RUNS)? {
            let run: Run = decode(&v)?;
            bump(&mut want_counters, Counter::Runs(run.status).key());
            bump(&mut want_counters, Counter::RunsOnDay(run_day(&run)).key());
            if in_progress(&run) {
                bump(&mut want_counters, Counter::InProgress(run.task_id).key());
                running_tasks.insert(run.task_id);
            }
            bump(&mut want_run_counts, u64_key(run.task_id).to_vec());
            let mut k = u64_key(run.task_id).to_vec();
            k.extend_from_slice(&u64_key(run.id));
            want_by_task.insert(k, Vec::new());
        }
        if !running_tasks.is_empty() {
            want_counters.insert(Counter::TasksRunning.key(), running_tasks.len() as u64);
        }
        let encode_all = |m: BTreeMap<Vec<u8>, u64>| -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
            m.into_iter().map(|(k, n)| Ok((k, super::encode(&n)?))).collect()
        };
        let mut problems = Vec::new();
        let mut compare = |name: &str, want: BTreeMap<Vec<u8>, Vec<u8>>| -> io::Result<()> {
            let have = read_cf(name)?;
            for (k, v) in &want {
                match have.get(k) {
                    None => problems.push(format!("{name}: missing {}", hex::encode(k))),
                    Some(h) if h != v => problems.push(format!(
                        "{name}: {} holds {} where the tables say {}",
                        hex::encode(k),
                        hex::encode(h),
                        hex::encode(v)
                    )),
                    Some(_) => {}
                }
            }
            for k in have.keys().filter(|k| !want.contains_key(*k)) {
                problems.push(format!("{name}: {} has no reason to be there", hex::encode(k)));
            }
            Ok(())
        };
        compare(super::CF_COUNTERS, encode_all(want_counters)?)?;
        compare(CF_TASKS_BY_STATUS, want_status)?;
        compare(CF_NAME_TRIGRAMS, want_grams)?;
        compare(CF_TASK_NAMES, want_names)?;
        compare(super::CF_RUN_COUNTS, encode_all(want_run_counts)?)?;
        compare(super::CF_RUNS_BY_TASK, want_by_task)?;
        Ok(problems)
    }
}
