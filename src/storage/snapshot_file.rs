//! The snapshot file: what `build_snapshot` writes, what travels to a follower byte for
//! byte, and what `install_snapshot` reads back. Every step is a stream through a small
//! buffer, so no step holds the state in memory, however large it is.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! FORMAT_VERSION (u8)  b"RCSNAP"  meta length (u32)  meta (bincode SnapshotMeta)
//! record*:  column family (u8, its index in SM_CFS)  key length (u32)  key  value length (u32)  value
//! 0xFF      SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! A reader checks the version and the magic first (a file from another version is
//! refused naming both), and the checksum when it reaches the end: a caller must not act
//! on the records before [`SnapshotReader::next_record`] returned `None`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{decode, encode, SM_CFS};
use crate::raft::{SnapshotMeta, Vote, FORMAT_VERSION, OLDEST_READABLE_FORMAT};

const MAGIC: &[u8; 6] = b"RCSNAP";
const END: u8 = 0xFF;
/// No key or value is near this; a length beyond it is corruption, not a reason to
/// allocate gigabytes.
const MAX_FIELD: u32 = 256 * 1024 * 1024;
const BUFFER: usize = 1024 * 1024;

/// A snapshot on disk, open for reading from its start: openraft's `SnapshotData`.
#[derive(Debug)]
pub struct SnapshotData {
    pub(crate) file: File,
    /// Where the file was when it was opened (it may have been renamed or replaced since:
    /// the handle still reads what was opened).
    pub(crate) path: PathBuf,
    /// A received file nobody consumed is removed when dropped (a transfer whose RPC was
    /// cancelled after the file was complete would otherwise stay until a restart).
    remove_unconsumed: bool,
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if self.remove_unconsumed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotData {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotData::new(File::open(path)?, path.to_path_buf()))
    }

    pub(crate) fn new(file: File, path: PathBuf) -> Self {
        SnapshotData { file, path, remove_unconsumed: false }
    }

    /// The file from its start, for the one reader that consumes this handle (which then
    /// owns the file's fate: an install renames it, or leaves it to its caller).
    pub fn into_file(mut self) -> io::Result<File> {
        self.remove_unconsumed = false;
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        Ok(file)
    }

    /// The file's size in bytes.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A snapshot arriving from the leader in chunks, written to a file of its own in the
/// snapshot dir as they come (memory: one chunk). Dropped unfinished, the file goes too.
pub struct IncomingSnapshot {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    path: PathBuf,
    file: File,
    written: u64,
    finished: bool,
}

impl IncomingSnapshot {
    pub fn start(snapshot_dir: &Path, vote: Vote, meta: SnapshotMeta) -> io::Result<Self> {
        let path = snapshot_dir.join(super::state_machine::temp_name("incoming"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(IncomingSnapshot { vote, meta, path, file, written: 0, finished: false })
    }

    /// Bytes received so far: the offset the next chunk must carry.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// The whole file, synced and checked (its checksum, and a header covering the log id
    /// the leader announced), for openraft's install (which renames it to `current`); a
    /// damaged transfer fails here, before openraft sees it. Blocking: reads the file.
    /// Whoever installs it removes [`IncomingSnapshot::path`] afterwards if it is still
    /// there (an install openraft skipped).
    pub fn finish(mut self) -> io::Result<SnapshotData> {
        self.file.sync_all()?;
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        let (meta, mut records) = SnapshotReader::open(&file)?;
        while records.next_record()?.is_some() {}
        if meta.last_log_id != self.meta.last_log_id {
            return Err(corrupt(format!(
                "the snapshot file covers {:?}, the leader announced {:?}",
                meta.last_log_id, self.meta.last_log_id
            )));
        }
        file.rewind()?;
        self.finished = true;
        Ok(SnapshotData { file, path: self.path.clone(), remove_unconsumed: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One record: its column family's name (in [`SM_CFS`]), key and value.
pub type Record = (&'static str, Vec<u8>, Vec<u8>);

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Sha256,
}

impl SnapshotWriter {
    pub fn create(path: &Path, meta: &SnapshotMeta) -> io::Result<Self> {
        let mut w = SnapshotWriter { out: BufWriter::with_capacity(BUFFER, File::create(path)?), hash: Sha256::new() };
        let meta = encode(meta)?;
        w.write(&[FORMAT_VERSION])?;
        w.write(MAGIC)?;
        w.write(&(meta.len() as u32).to_le_bytes())?;
        w.write(&meta)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, cf: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        let field = |len: usize| -> io::Result<[u8; 4]> {
            u32::try_from(len)
                .ok()
                .filter(|n| *n <= MAX_FIELD)
                .map(u32::to_le_bytes)
                .ok_or_else(|| corrupt(format!("a snapshot record field of {len} bytes is too large")))
        };
        self.write(&[cf])?;
        self.write(&field(key.len())?)?;
        self.write(key)?;
        self.write(&field(value.len())?)?;
        self.write(value)
    }

    /// Ends the file with its checksum and makes it durable.
    pub fn finish(mut self) -> io::Result<File> {
        self.write(&[END])?;
        let sum = self.hash.finalize_reset();
        self.out.write_all(&sum)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

/// Reads the whole snapshot file at `path` and checks it (header, records, checksum):
/// its meta and how many records it holds. What `raftcron snapshot save` does to what it
/// received before it calls it a backup.
pub fn check_file(path: &Path) -> io::Result<(SnapshotMeta, u64)> {
    check_stream(File::open(path)?)
}

/// [`check_file`] on a stream: a download checked as it arrives.
pub fn check_stream(input: impl Read) -> io::Result<(SnapshotMeta, u64)> {
    let (meta, mut records) = SnapshotReader::open(input)?;
    let mut n = 0u64;
    while records.next_record()?.is_some() {
        n += 1;
    }
    Ok((meta, n))
}

/// Reads a snapshot file record by record, checking its checksum at the end.
pub struct SnapshotReader<R> {
    input: BufReader<R>,
    hash: Sha256,
    done: bool,
    version: u8,
}

impl<R: Read> SnapshotReader<R> {
    /// The format the file was written in (a loader brings older ones up to date).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Reads the header; refuses a file of another version or no snapshot at all.
    pub fn open(input: R) -> io::Result<(SnapshotMeta, Self)> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(BUFFER, input),
            hash: Sha256::new(),
            done: false,
            version: 0,
        };
        let mut head = [0u8; 1 + MAGIC.len()];
        r.read_exact(&mut head).map_err(|_| corrupt("snapshot file is shorter than its header".into()))?;
        if &head[1..] != MAGIC {
            return Err(corrupt("not a raftcron snapshot file (no RCSNAP header)".into()));
        }
        if !(OLDEST_READABLE_FORMAT..=FORMAT_VERSION).contains(&head[0]) {
            return Err(corrupt(format!(
                "snapshot has format version {}, this binary reads versions {OLDEST_READABLE_FORMAT} to {FORMAT_VERSION}",
                head[0]
            )));
        }
        r.version = head[0];
        let len = r.length("meta")?;
        let mut meta = vec![0u8; len];
        r.read_exact(&mut meta)?;
        let meta = decode(&meta)?;
        Ok((meta, r))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf)?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn length(&mut self, what: &str) -> io::Result<usize> {
        let mut n = [0u8; 4];
        self.read_exact(&mut n).map_err(|_| corrupt(format!("snapshot file ends inside a {what} length")))?;
        let n = u32::from_le_bytes(n);
        if n > MAX_FIELD {
            return Err(corrupt(format!("snapshot {what} length {n} is corrupt")));
        }
        Ok(n as usize)
    }

    /// The next record as (column family name, key, value); `None` once the end marker
    /// and a matching checksum were read.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut cf = [0u8; 1];
        self.read_exact(&mut cf).map_err(|_| corrupt("snapshot file is truncated (no end marker)".into()))?;
        if cf[0] == END {
            let mut sum = [0u8; 32];
            self.input.read_exact(&mut sum).map_err(|_| corrupt("snapshot file is truncated (no checksum)".into()))?;
            if sum[..] != self.hash.finalize_reset()[..] {
                return Err(corrupt("snapshot file checksum mismatch: the file is corrupt".into()));
            }
            self.done = true;
            return Ok(None);
        }
        let name = *SM_CFS
            .get(cf[0] as usize)
            .ok_or_else(|| corrupt(format!("snapshot record names unknown column family #{}", cf[0])))?;
        let mut key = vec![0u8; self.length("key")?];
        self.read_exact(&mut key).map_err(|_| corrupt("snapshot file is truncated inside a key".into()))?;
        let mut value = vec![0u8; self.length("value")?];
        self.read_exact(&mut value).map_err(|_| corrupt("snapshot file is truncated inside a value".into()))?;
        Ok(Some((name, key, value)))
    }
}

/// The meta of the snapshot file at `path` (its header only).
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    SnapshotReader::open(File::open(path)?).map(|(meta, _)| meta)
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(LeaderId { term: 3, node_id: 1 }, 42)),
            last_membership: Default::default(),
        }
    }

    fn write(path: &Path, records: &[(u8, &[u8], &[u8])]) {
        let mut w = SnapshotWriter::create(path, &meta()).unwrap();
        for (cf, k, v) in records {
            w.record(*cf, k, v).unwrap();
        }
        w.finish().unwrap();
    }

    fn read_all(path: &Path) -> io::Result<Vec<Record>> {
        let (m, mut r) = SnapshotReader::open(File::open(path)?)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        // Checked after the checksum, as an install does.
        if m != meta() {
            return Err(corrupt("another meta".into()));
        }
        Ok(out)
    }

    #[test]
    fn records_come_back_in_order_with_their_column_family() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write(&path, &[(1, b"k1", b"v1"), (1, b"", b""), (12, b"k3", &[7u8; 5000])]);
        let got = read_all(&path).unwrap();
        assert_eq!(
            got,
            vec![
                (SM_CFS[1], b"k1".to_vec(), b"v1".to_vec()),
                (SM_CFS[1], vec![], vec![]),
                (SM_CFS[12], b"k3".to_vec(), vec![7u8; 5000])
            ]
        );
        assert_eq!(read_meta(&path).unwrap(), meta());
    }

    /// Every single flipped byte and every truncation is refused: none of them can pass
    /// as a snapshot, so a damaged file never becomes state.
    #[test]
    fn any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write(&path, &[(1, b"key", b"value"), (2, b"other", b"x")]);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert!(read_all(&path).is_err(), "a flipped bit at byte {i} went unnoticed");
        }
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(read_all(&path).is_err(), "a file cut at {len} bytes went unnoticed");
        }
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write(&path, &[]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_meta(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("version {}", FORMAT_VERSION + 1)) && err.contains(&format!("{FORMAT_VERSION}")));
        std::fs::write(&path, b"{\"not\": \"a snapshot\"}").unwrap();
        assert!(read_meta(&path).unwrap_err().to_string().contains("not a raftcron snapshot"));
    }
}
