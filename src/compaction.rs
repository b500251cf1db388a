//! When this node snapshots its state and purges the log behind it. openraft's own
//! policy counts entries only (`SnapshotPolicy::Never` turns it off here); this loop asks
//! for a snapshot once at least `cluster.snapshot_every_entries` entries were applied since
//! the last one and the log appended since then is at least `cluster.snapshot_log_ratio`
//! times the last snapshot's size. A snapshot rewrites the whole state, so with a fixed
//! entry count its cost per write grows with the state (a 100k-task state was rebuilt
//! every few seconds under load); against the log's growth it stays a fixed share of the
//! writes, and the log on disk stays within about ratio x state.
//!
//! Every node runs it for itself (snapshots are local). It never writes state.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use crate::node::NodeCore;
use crate::storage::LogGrowth;

/// How often the loop looks.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// After asking, how long it waits for the snapshot before it may ask again.
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether a snapshot is due: `entries` applied since the last one, under the policy.
pub fn due(entries: u64, growth: &LogGrowth, every_entries: u64, log_ratio: f64) -> bool {
    entries >= every_entries && growth.log_bytes() as f64 >= log_ratio * growth.snapshot_bytes() as f64
}

pub async fn run(core: Arc<NodeCore>) {
    let growth = core.store.log_growth().clone();
    let (every, ratio) = (core.config.cluster.snapshot_every_entries, core.config.cluster.snapshot_log_ratio);
    let metrics = core.raft.metrics();
    let mut asked: Option<(tokio::time::Instant, Option<u64>)> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let (applied, snapshot) = {
            let m = metrics.borrow_watched();
            (m.last_applied.as_ref().map_or(0, |l| l.index), m.snapshot.as_ref().map(|l| l.index))
        };
        if let Some((at, for_snapshot)) = asked {
            if snapshot == for_snapshot && at.elapsed() < PATIENCE {
                continue;
            }
            asked = None;
        }
        if !due(applied.saturating_sub(snapshot.unwrap_or(0)), &growth, every, ratio) {
            continue;
        }
        tracing::debug!(
            applied,
            ?snapshot,
            log_bytes = growth.log_bytes(),
            snapshot_bytes = growth.snapshot_bytes(),
            "asking for a snapshot"
        );
        if core.raft.trigger().snapshot().await.is_err() {
            return; // Raft shut down.
        }
        asked = Some((tokio::time::Instant::now(), snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_both_the_entries_and_the_log_bytes() {
        let g = LogGrowth::default();
        g.snapshotted(0, 1000);
        g.appended(999);
        assert!(!due(10_000, &g, 10_000, 1.0), "log smaller than the state");
        g.appended(1);
        assert!(due(10_000, &g, 10_000, 1.0));
        assert!(!due(9_999, &g, 10_000, 1.0), "too few entries");
        assert!(due(10_000, &g, 10_000, 0.0), "ratio 0: entries alone");
        // The log a snapshot covered no longer counts; what came after it does.
        g.appended(500);
        g.snapshotted(1000, 4000);
        assert_eq!(g.log_bytes(), 500);
        assert!(!due(20_000, &g, 10_000, 0.5));
        g.appended(1500);
        assert!(due(20_000, &g, 10_000, 0.5));
    }
}
