//! The Raft log and vote in RocksDB. An append is acknowledged to openraft only after the
//! write-ahead log is fsync'd; the vote is fsync'd before `save_vote` returns.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch, DB};

use super::{
    db_err, decode, decode_versioned, encode, encode_versioned, key_u64, u64_key, LogGrowth, CF_RAFT_LOG, CF_RAFT_META,
};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

/// How the store makes what it wrote durable: RocksDB's `flush_wal(true)` (write and
/// fsync the write-ahead log). A seam so a test can watch the order of sync and report.
type WalSync = Arc<dyn Fn(&DB) -> io::Result<()> + Send + Sync>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync: WalSync,
    growth: Arc<LogGrowth>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        LogStore { db, sync: Arc::new(|db: &DB| db.flush_wal(true).map_err(db_err)), growth: Arc::default() }
    }

    /// Counts appended bytes into `growth`, starting from the log on disk now (what the
    /// last snapshot did not purge).
    pub fn counting_into(mut self, growth: Arc<LogGrowth>) -> io::Result<Self> {
        let mut bytes = 0u64;
        for item in self.db.iterator_cf(self.cf_log(), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err)?;
            bytes += v.len() as u64;
        }
        growth.appended(bytes);
        self.growth = growth;
        Ok(self)
    }

    fn cf_log(&self) -> &ColumnFamily {
        self.db.cf_handle(CF_RAFT_LOG).expect("column families are checked at open")
    }

    fn cf_meta(&self) -> &ColumnFamily {
        self.db.cf_handle(CF_RAFT_META).expect("column families are checked at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.db.get_cf(self.cf_meta(), key).map_err(db_err)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        self.db.put_cf(self.cf_meta(), key, encode(value)?).map_err(db_err)
    }

    /// Whether this node has ever voted or logged anything: a restarted node has, so it
    /// never bootstraps again.
    pub fn is_pristine(&self) -> io::Result<bool> {
        let has_vote = self.get_meta::<Vote>("vote")?.is_some();
        let has_log = self.db.iterator_cf(self.cf_log(), IteratorMode::Start).next().is_some();
        let purged = self.get_meta::<LogId>("purged")?.is_some();
        Ok(!has_vote && !has_log && !purged)
    }

    async fn sync_wal(&self) -> io::Result<()> {
        let (db, sync) = (self.db.clone(), self.sync.clone());
        tokio::task::spawn_blocking(move || sync(&db)).await.map_err(io::Error::other)?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(self.cf_log(), IteratorMode::From(&u64_key(start), Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let index = key_u64(&k)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode_versioned("log entry", &v)?;
            if entry.index() != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log key {index} holds entry {}", entry.index()),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta("vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last = match self.db.iterator_cf(self.cf_log(), IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(db_err)?;
                Some(decode_versioned::<Entry>("log entry", &v)?.log_id())
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId> = self.get_meta("purged")?;
        // Entries at or below the purge point that a purge did not get to delete are
        // garbage (the purge point may lie beyond the last entry, after a snapshot was
        // installed): the log ends at the later of the two.
        let last_log_id = last.max(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta("vote", vote)?;
        self.sync_wal().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: it only lets a restarted node apply sooner. Losing it is harmless only
        // because a restarted leader never resumes its term without an election
        // (`enable_leader_restore: false` in node.rs).
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut bytes = 0u64;
        for entry in entries {
            let value = encode_versioned(&entry)?;
            bytes += value.len() as u64;
            batch.put_cf(self.cf_log(), u64_key(entry.index()), value);
        }
        self.growth.appended(bytes);
        // The entries must be readable when this returns; durability is reported through
        // the callback once the WAL is on disk.
        self.db.write(batch).map_err(db_err)?;
        let (db, sync) = (self.db.clone(), self.sync.clone());
        tokio::task::spawn_blocking(move || {
            callback.io_completed(sync(&db));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        self.db.delete_range_cf(self.cf_log(), u64_key(from), u64_key(u64::MAX)).map_err(db_err)?;
        // A later append of the same indexes must not be undone by a crash that keeps the
        // truncation's absence: sync it like an append.
        self.sync_wal().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // One batch: the purge point and the deletion are durable together or not at all.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf_meta(), "purged", encode(&log_id)?);
        batch.delete_range_cf(self.cf_log(), u64_key(0), u64_key(log_id.index() + 1));
        self.db.write(batch).map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::storage::open_db;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    /// `append` may return before the entries are durable, but it must report them
    /// durable (the callback openraft waits on before acknowledging) only after the
    /// write-ahead log sync returned; `save_vote` and `truncate_after` return only after
    /// one. The store's own sync runs, wrapped to record when it returned: removing or
    /// reordering a sync fails this. (That the sync reaches the disk is what the chaos
    /// suite's power faults check: on lossyfs an unsynced write dies with the power.)
    #[tokio::test]
    async fn appends_votes_and_truncations_are_durable_before_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let mut store = LogStore::new(open_db(dir.path()).unwrap());
        let real = store.sync.clone();
        store.sync = Arc::new(move |db: &DB| {
            std::thread::sleep(Duration::from_millis(100));
            let synced = real(db);
            seen.lock().unwrap().push("synced");
            synced
        });
        let record = |what: &'static str| events.lock().unwrap().push(what);
        let (tx, rx) = TypeConfig::oneshot();
        store.append((1..=3).map(|i| Entry::new_blank(log_id(1, i))), IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        record("append reported");
        store.save_vote(&Vote::new(2, 1)).await.unwrap();
        record("vote saved");
        store.truncate_after(Some(log_id(1, 1))).await.unwrap();
        record("truncated");
        assert_eq!(
            *events.lock().unwrap(),
            ["synced", "append reported", "synced", "vote saved", "synced", "truncated"]
        );
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(1..4).await.unwrap().len(), 1);
        assert_eq!(reader.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    }

    /// Regression test: a purge wrote its purge point and its deletion as two unsynced
    /// writes, and the log state took the last entry over the purge point, so a crash
    /// between them (after a snapshot install had purged past the last entry) left
    /// `last < purged` and openraft refused to start ("inverted log order"). The crafted
    /// state now reads as a log ending at the purge point, and a purge is one batch.
    #[tokio::test]
    async fn a_purge_point_beyond_the_last_entry_reads_as_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::new(open_db(dir.path()).unwrap());
        let (tx, rx) = TypeConfig::oneshot();
        store.append((1..=5).map(|i| Entry::new_blank(log_id(1, i))), IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        // The crash: the purge point to 9 recorded, entries 1..=5 not deleted.
        store.put_meta("purged", &log_id(2, 9)).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 9)));
        assert_eq!(state.last_log_id, Some(log_id(2, 9)), "the log ends at the purge point, not before it");
        // A purge is whole: the point and the deletion together.
        store.purge(log_id(2, 9)).await.unwrap();
        assert!(store.db.iterator_cf(store.cf_log(), IteratorMode::Start).next().is_none());
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(2, 9)));
    }
}
