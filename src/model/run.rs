//! A run: one execution (attempt) of a task, from creation to a final state.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Priority;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Assigned,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
}

impl RunStatus {
    /// No further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::TimedOut | RunStatus::Cancelled | RunStatus::Lost
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    Schedule,
    Manual,
    Retry,
}

/// Stored and shown as is (no `flatten`, no skipped fields: bincode-safe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: u64,
    pub task_id: u64,
    /// The task's priority when the run was created; orders the placement queue.
    pub priority: Priority,
    pub trigger: RunTrigger,
    /// The nominal tick for scheduled runs; the request time for manual ones.
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub status: RunStatus,
    pub worker_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the leader placed it on its worker.
    pub assigned_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    /// The tail of stdout and stderr (capped in replicated state).
    pub output: String,
    pub error: Option<String>,
    /// Why a pending run is still pending (e.g. no worker carries the task's tags).
    pub pending_reason: Option<String>,
    /// A retry waits for its backoff: not placed before this instant.
    pub not_before: Option<DateTime<Utc>>,
    /// The attempt this one re-runs (a retry after a failure, or a re-queue after a loss).
    pub retry_of: Option<u64>,
    /// How many times this run's chain was re-queued because its worker was lost (capped).
    pub lost_requeues: u32,
}

impl Run {
    pub fn pending(
        id: u64,
        task_id: u64,
        priority: Priority,
        trigger: RunTrigger,
        scheduled_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Run {
        Run {
            id,
            task_id,
            priority,
            trigger,
            scheduled_at,
            attempt: 1,
            status: RunStatus::Pending,
            worker_id: None,
            created_at: now,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: None,
            pending_reason: Some("waiting for an eligible worker".into()),
            not_before: None,
            retry_of: None,
            lost_requeues: 0,
        }
    }

    /// The next attempt of this run, pending: a retry after a failure or a re-queue after
    /// its worker was lost. Same task and tick; a new run id, so the old attempt's record
    /// (and any late report for it) stays fenced off.
    pub fn next_attempt(&self, id: u64, now: DateTime<Utc>, not_before: Option<DateTime<Utc>>) -> Run {
        let mut next = Run::pending(id, self.task_id, self.priority, RunTrigger::Retry, self.scheduled_at, now);
        next.attempt = self.attempt + 1;
        next.retry_of = Some(self.id);
        next.lost_requeues = self.lost_requeues;
        next.not_before = not_before;
        next
    }

    /// Holds a worker's slot.
    pub fn is_assigned(&self) -> bool {
        matches!(self.status, RunStatus::Assigned | RunStatus::Running)
    }
}

/// The replicated part of a run's output is capped so Raft entries stay small.
pub const MAX_OUTPUT: usize = 8 * 1024;

/// The last `MAX_OUTPUT` bytes of `s`, cut at a character boundary.
pub fn output_tail(s: &str) -> String {
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut start = s.len() - MAX_OUTPUT;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}
