//! A worker's lease: the heartbeat it sends, the acknowledgement that renews it, and the
//! arithmetic that keeps a fenced worker's runs from overlapping their re-queued attempts.
//!
//! The bound (PRODUCT.md §4.5): an agent sends a heartbeat at `s` on its own monotonic
//! clock. A leader acknowledges it only while its Raft leader lease holds (no other
//! leader can exist then), and no leader takes a worker's runs away before it has been
//! silent for `worker_timeout` — counted from the leader's record of the heartbeat, which
//! is after `s`, or from a new leader's takeover, which is after the acknowledgement. The
//! agent holds its lease until `s + lease`, measured on a clock that may run slower than
//! the leader's by [`MAX_CLOCK_DRIFT`], and its processes are dead within [`KILL_BOUND`]
//! after that. So a re-queued attempt never starts while the old one runs as long as
//!
//! ```text
//! margin = worker_timeout − lease · (1 + MAX_CLOCK_DRIFT) − KILL_BOUND > 0
//! ```
//!
//! With `lease = worker_timeout / 2` that needs `worker_timeout` > 2.02 s; configuration
//! refuses less than [`MIN_WORKER_TIMEOUT_S`] (a margin of at least 0.98 s).
//!
//! Liveness itself uses only monotonic clocks (the agent's and the leader's). Two fences
//! compare wall clocks of different nodes and so also assume the nodes' clocks agree to
//! within `lease − KILL_BOUND` (NTP does far better): the delay before a replaced
//! registration's possibly running runs are re-queued (`worker_timeout` in command time,
//! released by whichever leader's clock), and the overdue check (`started_at` on one
//! leader's clock against another's). A larger offset can only start such a re-queued
//! attempt up to that offset early.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest rate difference assumed between an agent's monotonic clock and a
/// leader's: 1 %, far beyond what NTP-disciplined or even free-running crystal clocks do.
pub const MAX_CLOCK_DRIFT: f64 = 0.01;
/// How long an agent may take from its lease running out to its runs' processes being
/// dead: its timer firing, the signal, the kernel tearing the processes down.
pub const KILL_BOUND: Duration = Duration::from_secs(1);
/// The shortest `worker_timeout_s` the configuration accepts.
pub const MIN_WORKER_TIMEOUT_S: u64 = 4;

/// The lease an acknowledged heartbeat grants: half the worker timeout.
pub fn lease_for(worker_timeout: Duration) -> Duration {
    worker_timeout / 2
}

/// How often an agent heartbeats: a sixth of the worker timeout, so it renews twice within
/// one lease.
pub fn heartbeat_interval_for(worker_timeout: Duration) -> Duration {
    (worker_timeout / 6).max(Duration::from_millis(100))
}

/// `worker_timeout − lease · (1 + MAX_CLOCK_DRIFT) − KILL_BOUND`, in seconds; negative when
/// the worker timeout is too short to fence safely.
pub fn fencing_margin_s(worker_timeout: Duration) -> f64 {
    worker_timeout.as_secs_f64()
        - lease_for(worker_timeout).as_secs_f64() * (1.0 + MAX_CLOCK_DRIFT)
        - KILL_BOUND.as_secs_f64()
}

/// A worker's load figures, as its heartbeat reports them (seed body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemInfo {
    #[serde(default)]
    pub cpu_usage: Option<f64>,
    #[serde(default)]
    pub memory_usage: Option<f64>,
    #[serde(default)]
    pub disk_usage: Option<f64>,
}

/// `POST /api/workers/{id}/heartbeat`'s body (the seed's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// What the worker says of itself (`online`, `busy`); informational.
    #[serde(default)]
    pub status: Option<String>,
    /// What the worker says it runs; informational (capacity comes from assignments).
    #[serde(default)]
    pub current_tasks: Option<u32>,
    #[serde(default)]
    pub system_info: Option<SystemInfo>,
    /// The registration epoch the agent holds (from its registration's answer). A
    /// heartbeat from an older registration is refused (409): another agent registered
    /// under this worker id since. Without it the heartbeat is not fenced.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// The worker must stop its running processes if it cannot renew for this long,
    /// counted from when it sent the heartbeat this acknowledges.
    pub lease_ms: u64,
    /// How often it should renew.
    pub heartbeat_ms: u64,
    /// The worker's current registration epoch: polls and reports carry it.
    pub epoch: u64,
}

impl HeartbeatAck {
    pub fn for_timeout(worker_timeout: Duration, epoch: u64) -> HeartbeatAck {
        HeartbeatAck {
            lease_ms: lease_for(worker_timeout).as_millis() as u64,
            heartbeat_ms: heartbeat_interval_for(worker_timeout).as_millis() as u64,
            epoch,
        }
    }
}

/// The last heartbeat the leader received from one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub at: DateTime<Utc>,
    pub body: HeartbeatBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_accepted_timeout_leaves_a_positive_margin_and_shorter_ones_may_not() {
        let at_floor = fencing_margin_s(Duration::from_secs(MIN_WORKER_TIMEOUT_S));
        assert!((at_floor - 0.98).abs() < 1e-9, "{at_floor}");
        assert!(fencing_margin_s(Duration::from_secs(2)) < 0.0);
        assert_eq!(lease_for(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(
            HeartbeatAck::for_timeout(Duration::from_secs(30), 3),
            HeartbeatAck { lease_ms: 15_000, heartbeat_ms: 5_000, epoch: 3 }
        );
    }
}
