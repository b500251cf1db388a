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
//! | `name_trigrams`   | 3 bytes of the ASCII-lowercased name, task id BE; or 0xFFFFFF, task id BE for a name not all ASCII | empty; the name for 0xFFFFFF |

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use rocksdb::IteratorMode;

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

/// The key under which every task with a non-ASCII name is listed instead of its
/// trigrams: such a name is a candidate for every search. (Unicode case mapping changes
/// with the Unicode version of the toolchain, and replicated keys must not: ASCII case
/// folding never changes. UTF-8 never holds 0xFF, so no real trigram is this.)
pub const UNINDEXED: [u8; 3] = [0xFF; 3];

/// The distinct trigrams a name is indexed under, in order: its ASCII-lowercased
/// trigrams, or [`UNINDEXED`] alone for a name that is not all ASCII.
pub fn trigrams(name: &str) -> BTreeSet<[u8; 3]> {
    if !name.is_ascii() {
        return BTreeSet::from([UNINDEXED]);
    }
    name.to_ascii_lowercase().as_bytes().windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

/// What a trigram key holds: nothing, but the name itself under [`UNINDEXED`] (a search
/// checks it there without decoding the task).
pub fn trigram_value(trigram: [u8; 3], name: &str) -> Vec<u8> {
    if trigram == UNINDEXED {
        name.as_bytes().to_vec()
    } else {
        Vec::new()
    }
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
        // A raw iterator: skipping copies nothing.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_TASKS_BY_STATUS));
        it.seek(prefix);
        let (mut passed, mut items) = (0u64, Vec::new());
        while let Some(k) = it.key() {
            if k.first() != Some(&prefix[0]) || items.len() as u64 >= limit {
                break;
            }
            if passed >= skip {
                if let Some(task) = self.task(key_u64(&k[1..])?)? {
                    items.push(task);
                }
            }
            passed += 1;
            it.next();
        }
        it.status().map_err(db_err)?;
        Ok((items, total))
    }

    /// Tasks whose lowercased name contains `needle` (already lowercased), and in
    /// `status` when given, in id order: a page and the count. An ASCII needle of three
    /// bytes or more walks the name trigram index, joining the needle's trigrams' lists by
    /// seeking (the cost follows the shortest list), plus every non-ASCII name (listed
    /// with the name itself); a non-ASCII needle can match only non-ASCII names; a shorter
    /// one reads every name (keys only). A candidate the index cannot vouch for has its
    /// name checked as a scan would; only the page's tasks are decoded otherwise.
    pub fn search_tasks(
        &self,
        needle: &str,
        status: Option<TaskStatus>,
        skip: u64,
        limit: u64,
    ) -> io::Result<TaskPage> {
        let contains = |name: &[u8]| String::from_utf8_lossy(name).to_lowercase().contains(needle);
        let grams: Vec<[u8; 3]> =
            needle.as_bytes().windows(3).map(|w| [w[0], w[1], w[2]]).collect::<BTreeSet<_>>().into_iter().collect();
        // (id, whether its name is known to match), ascending.
        let mut candidates: Vec<(u64, bool)> = Vec::new();
        if grams.is_empty() {
            for item in self.db.iterator_cf(self.cf(CF_TASK_NAMES), IteratorMode::Start) {
                let (name, id) = item.map_err(db_err)?;
                if contains(&name) {
                    candidates.push((key_u64(&id)?, true));
                }
            }
        } else {
            let mut it = self.db.raw_iterator_cf(self.cf(CF_NAME_TRIGRAMS));
            it.seek(UNINDEXED);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k.len() != 11 || k[..3] != UNINDEXED {
                    break;
                }
                if contains(v) {
                    candidates.push((key_u64(&k[3..])?, true));
                }
                it.next();
            }
            it.status().map_err(db_err)?;
            if needle.is_ascii() {
                candidates.extend(self.trigram_join(&grams)?.into_iter().map(|id| (id, false)));
            }
        }
        candidates.sort_unstable();
        let (mut total, mut items) = (0u64, Vec::new());
        for (id, name_matches) in candidates {
            let in_page = total >= skip && (items.len() as u64) < limit;
            if name_matches {
                if let Some(s) = status {
                    if self.db.get_pinned_cf(self.cf(CF_TASKS_BY_STATUS), status_key(s, id)).map_err(db_err)?.is_none()
                    {
                        continue;
                    }
                }
                if in_page {
                    match self.task(id)? {
                        Some(task) => items.push(task),
                        None => continue,
                    }
                }
                total += 1;
            } else if let Some(task) = self.task(id)? {
                if status.is_some_and(|s| task.spec.status != s) || !task.spec.name.to_lowercase().contains(needle) {
                    continue;
                }
                if in_page {
                    items.push(task);
                }
                total += 1;
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

    /// Recomputes every index and counter this file owns, the run counts and the runs by
    /// task from the tasks and runs tables of one consistent view, and lists where the
    /// stored ones differ (empty: consistent; at most [`MAX_PROBLEMS`] listed). Memory stays
    /// small whatever the state: each expected index key is looked up, and each index's
    /// size compared with the number the tables account for (distinct expected keys, all
    /// present, as many as stored: equal sets). Reads the whole state: for `raftcron debug
    /// verify` and tests, not for a serving path.
    pub fn verify(&self) -> io::Result<Vec<String>> {
        let view = self.db.snapshot();
        let set = self.set_in(&view)?;
        let cf = |name: &str| self.set_cf(set, name);
        let mut problems = Problems::default();
        let mut counters: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        // Every index is size-checked, also one the tables expect nothing in.
        let mut expected: BTreeMap<&str, u64> =
            [CF_TASKS_BY_STATUS, CF_NAME_TRIGRAMS, CF_TASK_NAMES, super::CF_RUNS_BY_TASK].map(|n| (n, 0)).into();
        let mut expect = |problems: &mut Problems, name: &'static str, key: &[u8], value: &[u8]| -> io::Result<()> {
            *expected.entry(name).or_insert(0) += 1;
            match view.get_cf(cf(name), key).map_err(db_err)? {
                None => problems.push(format!("{name}: missing {}", hex::encode(key))),
                Some(v) if v != value => problems.push(format!(
                    "{name}: {} holds {} where the tables say {}",
                    hex::encode(key),
                    hex::encode(&v),
                    hex::encode(value)
                )),
                Some(_) => {}
            }
            Ok(())
        };
        for item in view.iterator_cf(cf(super::CF_TASKS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            let task: Task = decode(&v)?;
            *counters.entry(Counter::Tasks(task.spec.status).key()).or_insert(0) += 1;
            expect(&mut problems, CF_TASKS_BY_STATUS, &status_key(task.spec.status, task.id), &[])?;
            for g in trigrams(&task.spec.name) {
                expect(&mut problems, CF_NAME_TRIGRAMS, &trigram_key(g, task.id), &trigram_value(g, &task.spec.name))?;
            }
            expect(&mut problems, CF_TASK_NAMES, task.spec.name.as_bytes(), &u64_key(task.id))?;
        }
        let mut running_tasks = BTreeSet::new();
        for item in view.iterator_cf(cf(super::CF_RUNS), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            let run: Run = decode(&v)?;
            *counters.entry(Counter::Runs(run.status).key()).or_insert(0) += 1;
            *counters.entry(Counter::RunsOnDay(run_day(&run)).key()).or_insert(0) += 1;
            if in_progress(&run) {
                *counters.entry(Counter::InProgress(run.task_id).key()).or_insert(0) += 1;
                running_tasks.insert(run.task_id);
            }
            let mut k = u64_key(run.task_id).to_vec();
            k.extend_from_slice(&u64_key(run.id));
            expect(&mut problems, super::CF_RUNS_BY_TASK, &k, &[])?;
        }
        if !running_tasks.is_empty() {
            counters.insert(Counter::TasksRunning.key(), running_tasks.len() as u64);
        }
        for (name, want) in expected {
            let mut have = 0u64;
            for item in view.iterator_cf(cf(name), IteratorMode::Start) {
                item.map_err(db_err)?;
                have += 1;
            }
            if have != want {
                problems.push(format!("{name}: {have} entries where the tables account for {want}"));
            }
        }
        // The counters: a few per status and day, one per task with a run in progress.
        let mut stored = BTreeMap::new();
        for item in view.iterator_cf(cf(super::CF_COUNTERS), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            stored.insert(k.to_vec(), decode::<u64>(&v)?);
        }
        for (k, want) in &counters {
            let have = stored.remove(k).unwrap_or(0);
            if have != *want {
                problems.push(format!("counters: {} is {have} where the tables say {want}", hex::encode(k)));
            }
        }
        for (k, have) in stored {
            problems.push(format!("counters: {} is {have} with nothing to count", hex::encode(k)));
        }
        // Run counts against runs by task, both in task order: one pass over each.
        let mut per_task = view.iterator_cf(cf(super::CF_RUNS_BY_TASK), IteratorMode::Start).peekable();
        let mut counts = view.iterator_cf(cf(super::CF_RUN_COUNTS), IteratorMode::Start).peekable();
        loop {
            let next_listed = match per_task.peek() {
                Some(Ok((k, _))) => Some(key_u64(k.get(..8).unwrap_or(k))?),
                Some(Err(_)) => return Err(db_err(per_task.next().expect("peeked").expect_err("an error"))),
                None => None,
            };
            let next_counted = match counts.peek() {
                Some(Ok((k, _))) => Some(key_u64(k)?),
                Some(Err(_)) => return Err(db_err(counts.next().expect("peeked").expect_err("an error"))),
                None => None,
            };
            let task = match (next_listed, next_counted) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
            };
            let mut listed = 0u64;
            while let Some(Ok((k, _))) = per_task.peek() {
                if key_u64(k.get(..8).unwrap_or(k))? != task {
                    break;
                }
                listed += 1;
                per_task.next();
            }
            let counted = match counts.peek() {
                Some(Ok((k, v))) if key_u64(k)? == task => {
                    let n = decode::<u64>(v)?;
                    counts.next();
                    n
                }
                _ => 0,
            };
            if listed != counted {
                problems.push(format!("run_counts: task {task} counts {counted} runs, {listed} are stored"));
            }
        }
        Ok(problems.finish())
    }
}

/// At most this many problems are listed one by one; the rest are counted.
pub const MAX_PROBLEMS: usize = 100;

#[derive(Default)]
struct Problems {
    listed: Vec<String>,
    more: u64,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(p);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.listed.push(format!("... and {} more", self.more));
        }
        self.listed
    }
}
