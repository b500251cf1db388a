//! The task indexes and counters that keep lists, searches and `/api/system/status` from
//! scanning the tables: tasks by status, name trigrams, and counts of tasks by status and
//! of stored runs by status, by day of creation and in progress per task, and of tasks per
//! bucket of ids (so a deep page starts where it should without walking what comes
//! before it). [`super::Tx`]
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
//! | `name_trigrams`   | 3 bytes of the ASCII-lowercased name and two NULs, task id BE; or 0xFFFFFF, task id BE for a name not all ASCII | empty; the name for 0xFFFFFF |

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
    /// Runs of this task waiting for a worker (`pending`): admission control's per-task
    /// count (format 5).
    PendingOf(u64),
    /// Tasks with at least one run in progress.
    TasksRunning,
    /// Tasks (in this status, or all of them for `None`) whose id falls in this bucket of
    /// [`PAGE_BUCKET`] ids: a deep page sums these to find where it starts, then skips
    /// less than a bucket of keys (O(tasks / PAGE_BUCKET + PAGE_BUCKET), not O(skip)).
    TaskBucket(Option<TaskStatus>, u64),
}

/// Ids per [`Counter::TaskBucket`]. Ids are handed out in sequence, so a million tasks
/// fill about a thousand buckets: the counters a deep page reads.
pub const PAGE_BUCKET: u64 = 1024;

/// The bucket of a task id in [`Counter::TaskBucket`].
pub fn page_bucket(id: u64) -> u64 {
    id / PAGE_BUCKET
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
            Counter::PendingOf(task) => {
                let mut k = vec![b'Q'];
                k.extend_from_slice(&u64_key(task));
                k
            }
            Counter::TasksRunning => vec![b'A'],
            Counter::TaskBucket(status, bucket) => {
                let mut k = bucket_prefix(status);
                k.extend_from_slice(&u64_key(bucket));
                k
            }
        }
    }
}

/// The key prefix of one list's [`Counter::TaskBucket`]s.
fn bucket_prefix(status: Option<TaskStatus>) -> Vec<u8> {
    match status {
        None => vec![b'b'],
        Some(s) => vec![b'B', task_status_code(s)],
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

/// The distinct trigrams a name is indexed under, in order: those of its ASCII-lowercased
/// bytes followed by two NULs (a name holds no control character), so every position
/// of the name starts one — a needle of one or two bytes finds every name it occurs in
/// among the trigrams it begins; or [`UNINDEXED`] alone for a name that is not all ASCII.
pub fn trigrams(name: &str) -> BTreeSet<[u8; 3]> {
    if !name.is_ascii() {
        return BTreeSet::from([UNINDEXED]);
    }
    let mut bytes = name.to_ascii_lowercase().into_bytes();
    bytes.extend_from_slice(&[0, 0]);
    bytes.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
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

/// A search counts this many matches past the end of its page, then stops counting: a
/// search that matches 1% of a million names would otherwise check ten thousand of them
/// for every page (the way search engines bound `total`; see `total_exact` in the API).
pub const SEARCH_COUNT_AHEAD: u64 = 1_000;

/// A search's page of tasks, and how many match: all of them when `exact`, else at least.
#[derive(Debug)]
pub struct SearchPage {
    pub items: Vec<Task>,
    pub total: u64,
    pub exact: bool,
}

impl Store {
    pub fn counter(&self, c: Counter) -> io::Result<u64> {
        Ok(self.get(super::CF_COUNTERS, &c.key())?.unwrap_or(0))
    }

    /// How many tasks there are, from the counters.
    pub fn task_count(&self) -> io::Result<u64> {
        TaskStatus::ALL.into_iter().map(|s| self.counter(Counter::Tasks(s))).sum()
    }

    /// The ids, ascending and each once, listed under any trigram that begins with
    /// `prefix` (one or two bytes: every name it occurs in, see [`trigrams`]), read in one
    /// pass over those lists; `None` past `budget` entries.
    fn ids_under_prefix(&self, prefix: &[u8], budget: usize) -> io::Result<Option<Vec<u64>>> {
        let mut ids = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_NAME_TRIGRAMS));
        it.seek(prefix);
        while let Some(k) = it.key() {
            if k.len() != 11 || !k.starts_with(prefix) || k[..3] == UNINDEXED {
                break;
            }
            if ids.len() == budget {
                return Ok(None);
            }
            ids.push(key_u64(&k[3..])?);
            it.next();
        }
        it.status().map_err(db_err)?;
        ids.sort_unstable();
        ids.dedup();
        Ok(Some(ids))
    }

    /// A task's name, read from the front of its record without decoding the rest.
    pub fn task_name(&self, id: u64) -> io::Result<Option<String>> {
        match self.db.get_pinned_cf(self.cf(super::CF_TASKS), u64_key(id)).map_err(db_err)? {
            Some(bytes) => {
                let (stored_id, name): (u64, String) = super::decode_prefix(&bytes)?;
                debug_assert_eq!(stored_id, id, "a task record starts with its id");
                Ok(Some(name))
            }
            None => Ok(None),
        }
    }

    /// Where the task list (in `status`, or all tasks for `None`) goes on after its first
    /// `skip` tasks: the first id of the bucket the page starts in, and how many of that
    /// bucket's tasks to pass over; `None` when the list is not that long. Reads the
    /// list's [`Counter::TaskBucket`]s, one per [`PAGE_BUCKET`] ids in use.
    pub fn page_start(&self, status: Option<TaskStatus>, skip: u64) -> io::Result<Option<(u64, u64)>> {
        let prefix = bucket_prefix(status);
        let mut it = self.db.raw_iterator_cf(self.cf(super::CF_COUNTERS));
        it.seek(&prefix);
        let mut passed = 0u64;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != prefix.len() + 8 || !k.starts_with(&prefix) {
                break;
            }
            let in_bucket: u64 = decode(v)?;
            if passed + in_bucket > skip {
                return Ok(Some((key_u64(&k[prefix.len()..])?.saturating_mul(PAGE_BUCKET), skip - passed)));
            }
            passed += in_bucket;
            it.next();
        }
        it.status().map_err(db_err)?;
        Ok(None)
    }

    /// Tasks in `status`, in id order: `limit` of them after the first `skip`, and the count.
    pub fn tasks_with_status(&self, status: TaskStatus, skip: u64, limit: u64) -> io::Result<TaskPage> {
        let total = self.counter(Counter::Tasks(status))?;
        let Some((from_id, skip)) = self.page_start(Some(status), skip)? else {
            return Ok((Vec::new(), total));
        };
        let prefix = [task_status_code(status)];
        // A raw iterator: skipping copies nothing.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_TASKS_BY_STATUS));
        it.seek(status_key(status, from_id));
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
    /// `status` when given, in id order: the page after the first `skip`, and the count of
    /// matches — exact up to [`SEARCH_COUNT_AHEAD`] matches past the page, a lower bound
    /// (`exact: false`) when the search stopped counting there.
    ///
    /// An ASCII needle of three bytes or more joins its trigrams' lists in id order (the
    /// cost follows the shortest list and stops with the count); a shorter one collects
    /// the lists of every trigram it begins, or reads names in id order when it occurs
    /// too often for that; every non-ASCII name (listed with the name
    /// itself) is checked too, and a non-ASCII needle can match only those. A candidate the
    /// index cannot vouch for (a needle longer than one trigram) has its name checked;
    /// only the page's tasks are decoded.
    pub fn search_tasks(
        &self,
        needle: &str,
        status: Option<TaskStatus>,
        skip: u64,
        limit: u64,
    ) -> io::Result<SearchPage> {
        let mut page = SearchPage { items: Vec::new(), total: 0, exact: true };
        if needle.chars().any(char::is_control) {
            return Ok(page); // No name holds one (`TaskSpec::validate`).
        }
        if needle.is_empty() {
            let (items, total) = match status {
                None => self.task_page(skip, limit)?,
                Some(s) => self.tasks_with_status(s, skip, limit)?,
            };
            return Ok(SearchPage { items, total, exact: true });
        }
        let contains = |name: &[u8]| String::from_utf8_lossy(name).to_lowercase().contains(needle);
        let grams: Vec<[u8; 3]> =
            needle.as_bytes().windows(3).map(|w| [w[0], w[1], w[2]]).collect::<BTreeSet<_>>().into_iter().collect();
        // Ids whose name is known to match, ascending: the non-ASCII names (listed with
        // the name itself), the only ones a non-ASCII needle can match.
        let mut vouched: Vec<u64> = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_NAME_TRIGRAMS));
        it.seek(UNINDEXED);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != 11 || k[..3] != UNINDEXED {
                break;
            }
            if contains(v) {
                vouched.push(key_u64(&k[3..])?);
            }
            it.next();
        }
        it.status().map_err(db_err)?;
        let mut join = match (needle.is_ascii(), grams.is_empty()) {
            (false, _) => Candidates::None,
            (true, false) => Candidates::Join(TrigramJoin::new(self, &grams, needle.len() > 3)?),
            (true, true) => match self.ids_under_prefix(needle.as_bytes(), MAX_PREFIX_IDS)? {
                Some(ids) => Candidates::Ids(ids.into_iter()),
                // The needle occurs that often: names in id order meet the page and the
                // count bound soon.
                None => Candidates::Scan(NameScan::new(self, needle)),
            },
        };
        // A needle of exactly one trigram matches exactly the names listed under it; one
        // shorter, exactly the names listed under a trigram it begins.
        let join_vouches = needle.len() <= 3;
        let count_to = skip.saturating_add(limit).saturating_add(SEARCH_COUNT_AHEAD);
        let mut vouched = vouched.into_iter().peekable();
        let mut joined = None;
        let mut last = None;
        loop {
            if joined.is_none() {
                joined = join.next()?;
            }
            // The smaller id of the two ascending streams.
            let (id, name_matches) = match (vouched.peek().copied(), joined) {
                (None, None) => break,
                (Some(v), Some(j)) if j < v => (joined.take().expect("some"), join_vouches),
                (Some(_), _) => (vouched.next().expect("peeked"), true),
                (None, Some(_)) => (joined.take().expect("some"), join_vouches),
            };
            // A task renamed between non-ASCII and ASCII while the streams were read can
            // be in both: once is enough.
            if last.replace(id) == Some(id) {
                continue;
            }
            // A name the index cannot vouch for is read (alone) and checked.
            if !name_matches && !self.task_name(id)?.is_some_and(|name| name.to_lowercase().contains(needle)) {
                continue;
            }
            if let Some(s) = status {
                if self.db.get_pinned_cf(self.cf(CF_TASKS_BY_STATUS), status_key(s, id)).map_err(db_err)?.is_none() {
                    continue;
                }
            }
            if page.total >= count_to {
                page.exact = false; // One more match than counted: stop here.
                break;
            }
            if page.total >= skip && (page.items.len() as u64) < limit {
                match self.task(id)? {
                    Some(task) => page.items.push(task),
                    None => continue,
                }
            }
            page.total += 1;
        }
        Ok(page)
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
            for c in [
                Counter::Tasks(task.spec.status),
                Counter::TaskBucket(None, page_bucket(task.id)),
                Counter::TaskBucket(Some(task.spec.status), page_bucket(task.id)),
            ] {
                *counters.entry(c.key()).or_insert(0) += 1;
            }
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
            if run.status == RunStatus::Pending {
                *counters.entry(Counter::PendingOf(run.task_id).key()).or_insert(0) += 1;
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

/// The ids listed under every one of a needle's trigrams, ascending, one at a time: a
/// leapfrog join, each list an iterator that moves to the largest id another list is at —
/// by a few steps when that is near (a step costs a fraction of a seek), else by a seek.
struct TrigramJoin<'a> {
    lists: Vec<PostingList<'a>>,
    /// The smallest id the next match may have; `None` once a list is exhausted.
    target: Option<u64>,
}

/// One trigram's list of task ids, read forward.
struct PostingList<'a> {
    gram: [u8; 3],
    it: rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>,
    positioned: bool,
}

/// Steps a posting list takes towards a target before it seeks instead.
const STEPS_BEFORE_SEEK: usize = 4;

impl PostingList<'_> {
    /// The id the iterator is at, `None` past the list's end.
    fn current(&self) -> io::Result<Option<u64>> {
        match self.it.key() {
            Some(k) if k.len() == 11 && k[..3] == self.gram[..] => Ok(Some(key_u64(&k[3..])?)),
            _ => {
                self.it.status().map_err(db_err)?;
                Ok(None)
            }
        }
    }

    /// Moves to the smallest id at or after `target`; `None` when there is none.
    fn advance_to(&mut self, target: u64) -> io::Result<Option<u64>> {
        if self.positioned {
            // The iterator sits at the smallest id at or after an earlier, smaller target.
            for _ in 0..STEPS_BEFORE_SEEK {
                match self.current()? {
                    Some(id) if id < target => self.it.next(),
                    other => return Ok(other),
                }
            }
        }
        self.it.seek(trigram_key(self.gram, target));
        self.positioned = true;
        self.current()
    }
}

/// A search whose candidates' names are checked anyway joins only this many of its
/// needle's trigram lists, the sparsest: a list that most names are on (`job` in a fleet
/// of `job-*` tasks) narrows nothing and would cost a seek per candidate.
const LISTS_JOINED: usize = 2;

/// Entries a list's density is sampled over, from its start.
const DENSITY_SAMPLE: usize = 16;

impl<'a> TrigramJoin<'a> {
    /// The join of `grams`' lists; with `narrowing_only` (every candidate's name is
    /// checked after), of the [`LISTS_JOINED`] sparsest ones by a sample of each.
    fn new(store: &'a Store, grams: &[[u8; 3]], narrowing_only: bool) -> io::Result<Self> {
        let cf = store.cf(CF_NAME_TRIGRAMS);
        let mut lists: Vec<PostingList<'a>> = grams
            .iter()
            .map(|g| PostingList { gram: *g, it: store.db.raw_iterator_cf(cf), positioned: false })
            .collect();
        if narrowing_only && lists.len() > LISTS_JOINED {
            // The id span of a list's first entries: the wider, the sparser the list (a
            // list shorter than the sample is the sparsest of all).
            let mut spans = Vec::with_capacity(lists.len());
            for list in lists.iter_mut() {
                let first = list.advance_to(0)?;
                let mut last = first;
                for _ in 1..DENSITY_SAMPLE {
                    if last.is_none() {
                        break;
                    }
                    list.it.next();
                    last = list.current()?;
                }
                spans.push(match (first, last) {
                    (Some(a), Some(b)) => b - a,
                    _ => u64::MAX,
                });
                list.positioned = false;
            }
            let mut order: Vec<usize> = (0..lists.len()).collect();
            order.sort_by_key(|i| std::cmp::Reverse(spans[*i]));
            let keep: BTreeSet<usize> = order.into_iter().take(LISTS_JOINED).collect();
            lists = lists.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, l)| l).collect();
        }
        Ok(TrigramJoin { lists, target: Some(0) })
    }

    fn next(&mut self) -> io::Result<Option<u64>> {
        'search: while let Some(target) = self.target {
            for list in self.lists.iter_mut() {
                let Some(id) = list.advance_to(target)? else {
                    self.target = None; // This list is exhausted: no more common ids.
                    break 'search;
                };
                if id != target {
                    self.target = Some(id);
                    continue 'search;
                }
            }
            self.target = target.checked_add(1);
            return Ok(Some(target));
        }
        Ok(None)
    }
}

/// Where a search's index candidates come from.
enum Candidates<'a> {
    None,
    Join(TrigramJoin<'a>),
    Ids(std::vec::IntoIter<u64>),
    Scan(NameScan<'a>),
}

impl Candidates<'_> {
    fn next(&mut self) -> io::Result<Option<u64>> {
        match self {
            Candidates::None => Ok(None),
            Candidates::Join(j) => j.next(),
            Candidates::Ids(ids) => Ok(ids.next()),
            Candidates::Scan(s) => s.next(),
        }
    }
}

/// The ids, ascending, of the ASCII names that contain a needle, read from the front of
/// every task record in id order (non-ASCII names are searched apart).
struct NameScan<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>,
    needle: Vec<u8>,
}

impl<'a> NameScan<'a> {
    fn new(store: &'a Store, needle: &str) -> Self {
        let mut it = store.db.raw_iterator_cf(store.cf(super::CF_TASKS));
        it.seek_to_first();
        NameScan { it, needle: needle.as_bytes().to_vec() }
    }

    fn next(&mut self) -> io::Result<Option<u64>> {
        while let Some(v) = self.it.value() {
            let (id, name): (u64, String) = super::decode_prefix(v)?;
            self.it.next();
            let name = name.into_bytes();
            if name.is_ascii() && name.to_ascii_lowercase().windows(self.needle.len()).any(|w| w == self.needle) {
                return Ok(Some(id));
            }
        }
        self.it.status().map_err(db_err)?;
        Ok(None)
    }
}

/// A needle of one or two bytes collects at most this many entries of the trigram lists
/// it begins (8 bytes each, read in one pass); beyond, it occurs often enough that a
/// [`NameScan`] meets the page and the count bound sooner.
const MAX_PREFIX_IDS: usize = 20_000;
