//! Worker agents under chaos: `raftcron worker` processes, each in a network namespace of
//! its own (`rcj-n10K` at 10.77.0.10K), given every node's URL so the agent fails over
//! between them as it would behind a load balancer.
//!
//! Two ways to stop a worker, proving different things:
//! - **pause** (SIGSTOP the agent alone): its jobs keep running under their shims, and
//!   only the shim's lease deadline can stop them before the cluster re-queues the run
//!   elsewhere. Overlapping executions here mean the fencing failed.
//! - **freeze** (SIGSTOP the agent, its shims and its jobs: the whole machine stalls, as
//!   a VM pause would): on resume the shim finds its lease long gone and kills the job;
//!   whatever the job did between its own wake-up and that kill is a zombie tail no
//!   lease can prevent. The checker bounds that tail instead of forbidding it.
//!
//! No nemesis skews a worker's clock: the agent and its shims time leases, timeouts and
//! kills on `CLOCK_MONOTONIC` alone (see raftcron's `model/lease.rs`), so a wall-clock
//! fault there would exercise nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::net::{node_ip, API_KEY};

/// Namespace ids of workers start here: worker `k` (from 1) is namespace `100 + k`.
pub const WORKER_NS_BASE: u64 = 100;
/// Slots per worker.
pub const SLOTS: u32 = 4;

pub struct Worker {
    /// 1-based.
    pub k: u64,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// SIGSTOPped: the agent alone, or (frozen) everything in its namespace.
    pub paused: bool,
    pub frozen: Vec<u32>,
}

impl Worker {
    pub fn ns_id(&self) -> u64 {
        WORKER_NS_BASE + self.k
    }

    pub fn name(&self) -> String {
        format!("w{}", self.k)
    }

    pub fn prepare(k: u64, store: &Path) -> anyhow::Result<Worker> {
        let dir = store.join(format!("w{k}"));
        fs::create_dir_all(&dir)?;
        Ok(Worker { k, dir, child: None, paused: false, frozen: Vec::new() })
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the agent against `nodes` (node ids), with its state dir kept across
    /// restarts, so a restarted agent kills what its predecessor left and reports it.
    pub fn start(&mut self, bin: &Path, nodes: &[u64]) -> anyhow::Result<()> {
        let servers: Vec<String> = nodes.iter().map(|id| format!("http://{}:8080", node_ip(*id))).collect();
        let child = crate::net::raftcron_in_ns(self.ns_id(), bin, &self.dir.join("worker.log"))?
            .args(["worker", "--server", &servers.join(","), "--id", &self.name(), "--key", API_KEY])
            .args(["--max-tasks", &SLOTS.to_string(), "--drain-s", "2", "--state-dir"])
            .arg(self.dir.join("state"))
            .current_dir(&self.dir)
            .env("RUST_LOG", std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .spawn()
            .context("starting a worker")?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// One `kill` for all `pids`, so they stop (or continue) within microseconds of each
    /// other.
    fn signal(pids: &[u32], sig: &str) {
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg(sig).args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
    }

    /// SIGKILL the agent (its shims then kill their jobs), and reap it.
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP the agent alone.
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            Self::signal(&[pid], "-STOP");
            self.paused = true;
        }
    }

    /// SIGSTOP every process in the worker's namespace (agent, shims, jobs); returns how
    /// many were stopped.
    pub fn freeze(&mut self) -> usize {
        let pids = crate::net::ns_pids(self.ns_id());
        Self::signal(&pids, "-STOP");
        self.frozen = pids;
        self.paused = true;
        self.frozen.len()
    }

    /// Undoes a pause or a freeze.
    pub fn resume(&mut self) {
        Self::signal(&std::mem::take(&mut self.frozen), "-CONT");
        if self.paused {
            if let Some(pid) = self.pid() {
                Self::signal(&[pid], "-CONT");
            }
        }
        self.paused = false;
    }
}
