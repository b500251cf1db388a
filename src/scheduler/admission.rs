//! Admission control for runs: how many more `pending` runs the cluster (and one task)
//! may take now, under `scheduler.max_pending_runs` and `max_pending_runs_per_task`. The
//! leader's firing loop skips ticks beyond the room (counted, never silently dropped) and
//! the trigger API answers 429. Read from this node's applied state, so the caps hold up to
//! the writes in flight; never consulted by `apply` (its caps are not replicated).

use std::io;

use crate::config::SchedulerConfig;
use crate::model::{RunStatus, Task};
use crate::storage::{Counter, Store};

/// Room for new pending runs in the whole cluster.
pub fn global_room(store: &Store, cfg: &SchedulerConfig) -> io::Result<u64> {
    Ok(cfg.max_pending_runs.saturating_sub(store.counter(Counter::Runs(RunStatus::Pending))?))
}

/// Room for new pending runs of `task`: one counter read (apply keeps the count).
pub fn task_room(store: &Store, task: &Task, cfg: &SchedulerConfig) -> io::Result<u64> {
    Ok(cfg.max_pending_runs_per_task.saturating_sub(store.counter(Counter::PendingOf(task.id))?))
}
