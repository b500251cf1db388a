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

use super::{db_err, decode, decode_versioned, encode, encode_versioned, key_u64, u64_key, CF_RAFT_LOG, CF_RAFT_META};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        LogStore { db }
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true).map_err(db_err)).await.map_err(io::Error::other)?
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
        let last_log_id = last.or(last_purged_log_id);
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
        // Not synced: it only lets a restarted node apply sooner; losing it is harmless.
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
        for entry in entries {
            batch.put_cf(self.cf_log(), u64_key(entry.index()), encode_versioned(&entry)?);
        }
        // The entries must be readable when this returns; durability is reported through
        // the callback once the WAL is on disk.
        self.db.write(batch).map_err(db_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            callback.io_completed(db.flush_wal(true).map_err(db_err));
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
        // Record the purge point first: openraft ignores entries at or before it, so a crash
        // between the two writes leaves only garbage that the next purge removes.
        self.put_meta("purged", &log_id)?;
        self.db.delete_range_cf(self.cf_log(), u64_key(0), u64_key(log_id.index() + 1)).map_err(db_err)?;
        Ok(())
    }
}
