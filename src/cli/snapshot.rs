//! `raftcron snapshot save|restore` and `raftcron recover --force-new-cluster` (backup and
//! disaster recovery), and `raftcron debug generate` (a synthetic state for benchmarks, as
//! a snapshot file to restore).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{TimeZone, Utc};

use super::crypto;
use super::ClientArgs;
use crate::model::{Run, RunStatus, RunTrigger, TaskField, TaskSpec};
use crate::raft::apply::apply_request;
use crate::raft::{Command, LogId, NodeInfo, Outcome, Request};
use crate::storage::{check_snapshot_stream, open_db, write_snapshot_file, Store, Tx};

/// Streams `GET /api/cluster/snapshot` into `file` (through `FILE.partial-<random>`,
/// mode 0600, synced, and renamed only once whole), or to stdout for `-`; encrypted to
/// `recipients` when there are any. The plaintext is checked as it arrives (header, every record, the checksum)
/// on a thread of its own, so an encrypted backup is verified without being decrypted.
pub async fn save(
    client: ClientArgs,
    file: &Path,
    recipients: Vec<Box<dyn age::Recipient + Send>>,
) -> anyhow::Result<()> {
    let client = client.connect()?;
    let rb = client.stream(reqwest::Method::GET, "/api/cluster/snapshot");
    let mut resp = rb.send().await.map_err(|e| client.unreachable(e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let why = v["message"].as_str().unwrap_or("request failed");
        return Err(super::Exit::error(super::Exit::API, format!("{why} ({status})")));
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    let (cluster_id, index) = (header("x-raftcron-cluster-id"), header("x-raftcron-last-log-index"));
    let to_stdout = file == Path::new("-");
    // A name of its own (a second save to the same name at once must not write into it),
    // created new and readable by its owner only: a backup holds every secret.
    let tmp = PathBuf::from(format!("{}.partial-{}", file.display(), uuid::Uuid::new_v4().simple()));
    let encrypted = !recipients.is_empty();
    let received = async {
        let out: Box<dyn Output> = match to_stdout {
            true => Box::new(std::io::stdout()),
            false => {
                use std::os::unix::fs::OpenOptionsExt;
                let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
                Box::new(out.with_context(|| format!("cannot create {}", tmp.display()))?)
            }
        };
        let mut sink = Sink::new(out, &recipients)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let checker = std::thread::spawn(move || check_snapshot_stream(ChunkReader { rx, chunk: Vec::new(), at: 0 }));
        let mut bytes = 0u64;
        let streamed = async {
            while let Some(chunk) = resp.chunk().await.context("the snapshot stream broke off")? {
                sink.write_all(&chunk)?;
                bytes += chunk.len() as u64;
                if tx.send(chunk.to_vec()).is_err() {
                    break; // The checker stopped at a fault; it says which below.
                }
            }
            drop(tx);
            anyhow::Ok(())
        }
        .await;
        let checked = checker.join().map_err(|_| anyhow::anyhow!("the snapshot checker panicked"))?;
        streamed?;
        let (meta, records) = checked.context("the snapshot received is not whole")?;
        sink.finish()?;
        anyhow::Ok((bytes, meta, records))
    }
    .await;
    let (bytes, meta, records) = match received {
        Ok(ok) => ok,
        Err(e) if to_stdout => return Err(e),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("nothing was saved to {}", file.display())));
        }
    };
    let what = if encrypted { format!("encrypted to {} key(s), ", recipients.len()) } else { String::new() };
    let report = format!(
        "({bytes} bytes, {records} records, {what}checksum verified): cluster {cluster_id}, up to log index {index} ({:?})",
        meta.last_log_id
    );
    if to_stdout {
        eprintln!("saved to stdout {report}");
        return Ok(());
    }
    std::fs::rename(&tmp, file)?;
    // The rename itself made durable.
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    println!("saved {} {report}", file.display());
    Ok(())
}

/// Where a backup goes: a file (synced when done) or stdout.
trait Output: Write {
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Output for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

impl Output for std::io::Stdout {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// The output, through an age encryptor when there are recipients.
enum Sink {
    Plain(Box<dyn Output>),
    Encrypted(age::stream::StreamWriter<Box<dyn Output>>),
}

impl Sink {
    fn new(out: Box<dyn Output>, recipients: &[Box<dyn age::Recipient + Send>]) -> anyhow::Result<Sink> {
        if recipients.is_empty() {
            return Ok(Sink::Plain(out));
        }
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| anyhow::anyhow!("cannot encrypt to these keys: {e}"))?;
        Ok(Sink::Encrypted(encryptor.wrap_output(out)?))
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(out) => out.write_all(bytes),
            Sink::Encrypted(out) => out.write_all(bytes),
        }
    }

    /// Writes the encryption's last chunk, if any, and syncs the output.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut out) => out.sync(),
            Sink::Encrypted(out) => out.finish()?.sync(),
        }
    }
}

/// The chunks of a download, as a `Read` for the checker's thread.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `raftcron snapshot restore`: see [`crate::storage::restore`]; an age-encrypted file is
/// decrypted with `key_file` as it is read.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: u64,
    info: NodeInfo,
    key_file: Option<&Path>,
) -> anyhow::Result<()> {
    let cluster_id = uuid::Uuid::new_v4().to_string();
    let encrypted = crypto::is_encrypted(file).map_err(|e| anyhow::anyhow!("snapshot file {}: {e}", file.display()))?;
    let r = match (encrypted, key_file) {
        (true, None) => {
            return Err(super::Exit::usage(format!(
                "{} is encrypted: give --key-file, the age identity it was encrypted to",
                file.display()
            )))
        }
        (true, Some(key)) => {
            let bytes = std::fs::metadata(file)?.len();
            let plaintext = crypto::decrypting_reader(file, key)?;
            crate::storage::restore_from(plaintext, bytes, data_dir, node_id, info, &cluster_id)?
        }
        (false, key) => {
            if key.is_some() {
                eprintln!("note: {} is not encrypted; --key-file is not used", file.display());
            }
            crate::storage::restore(file, data_dir, node_id, info, &cluster_id)?
        }
    };
    println!(
        "restored {} tasks up to log index {} into {} as node {node_id}, the only voter of cluster {} (the snapshot came from cluster {}); start the node, then add the others",
        r.tasks,
        r.last_log_id.index,
        data_dir.display(),
        r.cluster_id,
        r.old_cluster_id.as_deref().unwrap_or("?"),
    );
    Ok(())
}

/// Fills an empty `store` with `tasks` tasks named `job-teamNN-<n>` (every 100th paused,
/// ~200-byte specs, no schedule) created through `apply` — so every index and counter is
/// the one a cluster keeps — each with `runs_per_task` succeeded runs stored through the
/// writes apply uses, as if entry N of term 1 were the last applied. The runs stored.
pub fn generate_state(store: &Store, tasks: u64, runs_per_task: u64) -> anyhow::Result<u64> {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single().expect("a valid instant");
    let pad = "x".repeat(120);
    let mut index = 0u64;
    let mut tx = Tx::new(store);
    let mut apply = |tx: &mut Tx<'_>, command: Command| -> anyhow::Result<Outcome> {
        index += 1;
        let resp = apply_request(tx, &Request { issued_at: at, idempotency: None, command })?;
        resp.result.map_err(|e| anyhow::anyhow!("entry {index}: {e:?}"))
    };
    apply(&mut tx, Command::InitCluster { cluster_id: "generated".into() })?;
    let mut next_run: u64 = 1;
    for i in 1..=tasks {
        let mut spec = serde_json::json!({
            "name": format!("job-team{:02}-{i:08}", i % 100),
            "executor": "shell",
            "command": format!("echo {pad}"),
        });
        if i % 100 == 0 {
            spec["status"] = "paused".into();
        }
        let spec = TaskSpec::from_fields(TaskField::parse_object(spec)?, "UTC")?;
        let task = match apply(&mut tx, Command::CreateTask { spec: Box::new(spec) })? {
            Outcome::Task(task) => task,
            other => bail!("a create answered {other:?}"),
        };
        for r in 0..runs_per_task {
            let when = at + chrono::Duration::seconds((i * runs_per_task + r) as i64 % 604_800);
            let mut run = Run::pending(next_run, &task, RunTrigger::Schedule, when, when);
            run.status = RunStatus::Succeeded;
            run.started_at = Some(when);
            run.finished_at = Some(when + chrono::Duration::milliseconds(40));
            run.duration_ms = Some(40);
            run.exit_code = Some(0);
            run.output = "ok\n".into();
            run.pending_deadline = None;
            tx.put_run(&run)?;
            next_run += 1;
        }
        if i % GENERATE_BATCH == 0 {
            tx.put_meta("next_run_id", &next_run)?;
            std::mem::replace(&mut tx, Tx::new(store)).commit()?;
        }
    }
    tx.put_meta("next_run_id", &next_run)?;
    // The state as if entry `index` of term 1 had been applied last: a restore starts its
    // node's log after it.
    let applied = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index);
    tx.put_meta("applied", &applied)?;
    tx.commit()?;
    Ok(next_run - 1)
}

/// `raftcron recover --force-new-cluster`: see [`crate::storage::recover`].
pub fn recover(data_dir: &Path, node_id: u64, info: Option<NodeInfo>) -> anyhow::Result<()> {
    let cluster_id = uuid::Uuid::new_v4().to_string();
    let r = crate::storage::recover(data_dir, node_id, info, &cluster_id)
        .with_context(|| format!("cannot recover {} (a running node holds it: stop it first)", data_dir.display()))?;
    println!(
        "recovered {}: {} tasks, {} log entries replayed, up to log index {}; node {node_id} is the only voter of new cluster {} (was {}). Start it, then add new nodes; the old cluster's nodes will be refused",
        data_dir.display(),
        r.tasks,
        r.replayed,
        r.last_log_id.index,
        r.cluster_id,
        r.old_cluster_id.as_deref().unwrap_or("?"),
    );
    Ok(())
}

/// Tasks (with their runs) written per batch by [`generate_state`].
const GENERATE_BATCH: u64 = 1_000;

/// `raftcron debug generate`: the state of [`generate_state`] in a scratch database
/// beside `out`, written as the snapshot file `out`. Deterministic: the same arguments
/// give the same state.
pub fn generate(out: &Path, tasks: u64, runs_per_task: u64) -> anyhow::Result<()> {
    let scratch = PathBuf::from(format!("{}.generating", out.display()));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let started = std::time::Instant::now();
    let result = (|| -> anyhow::Result<(u64, u64)> {
        let store = Store::new(open_db(&scratch)?);
        let runs = generate_state(&store, tasks, runs_per_task)?;
        let problems = store.verify()?;
        if !problems.is_empty() {
            bail!("the generated state is inconsistent: {problems:?}");
        }
        let (file, _) = write_snapshot_file(&store, out)?;
        Ok((file.metadata()?.len(), runs))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (bytes, runs) = result?;
    println!(
        "generated {tasks} tasks and {runs} runs in {:.1} s: {} ({bytes} bytes)",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
