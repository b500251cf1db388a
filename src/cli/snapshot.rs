//! `raftcron snapshot save|restore` and `raftcron recover --force-new-cluster` (backup and
//! disaster recovery), and `raftcron debug generate` (a synthetic state for benchmarks, as
//! a snapshot file to restore).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{TimeZone, Utc};

use super::ClientArgs;
use crate::model::{Run, RunStatus, RunTrigger, TaskField, TaskSpec};
use crate::raft::apply::apply_request;
use crate::raft::{Command, LogId, NodeInfo, Outcome, Request};
use crate::storage::{check_snapshot_file, open_db, write_snapshot_file, Store, Tx};

/// Streams `GET /api/cluster/snapshot` into `file` (through a temp file beside it, synced
/// and checked whole before it takes the name), or to stdout for `-`.
pub async fn save(client: ClientArgs, file: &Path) -> anyhow::Result<()> {
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
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        return Ok(());
    }
    let tmp = PathBuf::from(format!("{}.partial", file.display()));
    let received = async {
        let mut out = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.context("the snapshot stream broke off")? {
            out.write_all(&chunk)?;
            bytes += chunk.len() as u64;
        }
        out.sync_all()?;
        let tmp = tmp.clone();
        let (meta, records) = tokio::task::spawn_blocking(move || check_snapshot_file(&tmp))
            .await?
            .context("the snapshot received is not whole")?;
        anyhow::Ok((bytes, meta, records))
    }
    .await;
    let (bytes, meta, records) = match received {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("nothing was saved to {}", file.display())));
        }
    };
    std::fs::rename(&tmp, file)?;
    println!(
        "saved {} ({bytes} bytes, {records} records, checksum verified): cluster {cluster_id}, up to log index {index} ({:?})",
        file.display(),
        meta.last_log_id
    );
    Ok(())
}

/// `raftcron snapshot restore`: see [`crate::storage::restore`].
pub fn restore(file: &Path, data_dir: &Path, node_id: u64, info: NodeInfo) -> anyhow::Result<()> {
    let cluster_id = uuid::Uuid::new_v4().to_string();
    let r = crate::storage::restore(file, data_dir, node_id, info, &cluster_id)?;
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
