//! Ground truth from the jobs themselves: what really ran, where and when.
//!
//! The `runs` and `schedule` workloads' tasks run `jepsen job`, which reads the job
//! environment contract (`RAFTCRON_RUN_ID`, `RAFTCRON_TASK_ID`, `RAFTCRON_ATTEMPT`,
//! `RAFTCRON_SCHEDULED_AT`, `RAFTCRON_WORKER_ID`) and appends one JSON line per event to
//! an `O_APPEND` file: `start`, a `tick` every 100 ms while it runs, and `end`. Each line
//! is one `write(2)` of far less than a page, so lines from concurrent jobs never
//! interleave. Times are `CLOCK_MONOTONIC`, which every namespace shares and libfaketime
//! does not move (jobs start from an empty environment, without its `LD_PRELOAD`), so
//! intervals from different workers compare directly with the harness's own clock. A
//! killed job leaves its interval up to its last tick: an overlap shorter than one tick
//! (100 ms, more on a loaded machine) between a killed attempt and the next is below
//! what this log can see.
//!
//! This module must never ask the cluster anything: its lines are what the checkers
//! trust over the API.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One line of the truth log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// `start`, `tick` or `end`.
    pub e: String,
    pub run: u64,
    pub attempt: u32,
    pub task: u64,
    /// `RAFTCRON_SCHEDULED_AT` as given.
    pub sched: String,
    pub worker: String,
    /// `CLOCK_MONOTONIC`, in nanoseconds.
    pub t: u64,
    /// On the first line after the job itself stood still for over [`THAW_GAP_MS`] (its
    /// whole worker was frozen): how long, in ms. What it logs from here until its shim,
    /// thawed at the same moment, kills it, no lease can prevent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
}

/// A job that slept 100 ms and woke this much later was frozen for at least a whole
/// worker lease (the harness's nodes run with `worker_timeout_s = 6`, a 3 s lease): its
/// lease ran out while it stood still, and its shim, thawed with it, kills it at once. A
/// shorter stall leaves the lease valid, so nothing excuses what the job does after it.
pub const THAW_GAP_MS: u64 = 3000;

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the truth lines, and the one the
/// harness converts its own history times to.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not in the job's environment"))
}

/// `jepsen job`: runs for `ms` milliseconds, logging to `out`, then prints which attempt
/// of which run it was (the run's stored output, compared with its attempt by the
/// checker) and exits 0.
pub fn job(out: &Path, ms: u64) -> anyhow::Result<()> {
    let mut line = Line {
        e: "start".into(),
        run: env("RAFTCRON_RUN_ID")?.parse().context("RAFTCRON_RUN_ID")?,
        attempt: env("RAFTCRON_ATTEMPT")?.parse().context("RAFTCRON_ATTEMPT")?,
        task: env("RAFTCRON_TASK_ID")?.parse().context("RAFTCRON_TASK_ID")?,
        sched: env("RAFTCRON_SCHEDULED_AT")?,
        worker: env("RAFTCRON_WORKER_ID")?,
        t: monotonic_ns(),
        gap_ms: None,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    let mut emit = |line: &Line| -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        // One write per line: O_APPEND makes it atomic against the other jobs' lines.
        file.write_all(&bytes)?;
        Ok(())
    };
    emit(&line)?;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        std::thread::sleep(Duration::from_millis(100).min(Duration::from_millis(ms).saturating_sub(start.elapsed())));
        line.e = "tick".into();
        let now = monotonic_ns();
        line.gap_ms = thaw_gap(line.t, now);
        line.t = now;
        emit(&line)?;
    }
    line.e = "end".into();
    line.t = monotonic_ns();
    line.gap_ms = None;
    emit(&line)?;
    println!("{}", attempt_marker(line.run, line.attempt));
    Ok(())
}

/// The stall between two lines at `prev` and `now` (ns), in ms, when it outlasted a
/// lease ([`THAW_GAP_MS`]); `None` for an ordinary or merely slow tick.
pub fn thaw_gap(prev: u64, now: u64) -> Option<u64> {
    let gap_ms = now.saturating_sub(prev) / 1_000_000;
    (gap_ms >= THAW_GAP_MS).then_some(gap_ms)
}

/// What a job prints as its output: the run's stored output must name the attempt the
/// run says finished it.
pub fn attempt_marker(run: u64, attempt: u32) -> String {
    format!("truth: run {run} attempt {attempt}")
}

/// Reads a truth log. A torn last line (a job killed mid-write cannot tear one, but a
/// full disk could) is skipped, as are blank lines.
pub fn read(path: &Path) -> anyhow::Result<Vec<Line>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_stall_as_long_as_a_lease_marks_a_thaw() {
        let s = 1_000_000_000;
        assert_eq!(super::thaw_gap(10 * s, 10 * s + 100_000_000), None, "an ordinary tick");
        assert_eq!(super::thaw_gap(10 * s, 12 * s), None, "2 s on a loaded machine: the lease still held");
        assert_eq!(super::thaw_gap(10 * s, 14 * s), Some(4000), "a freeze past the 3 s lease");
    }
}
