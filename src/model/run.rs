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
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: None,
            pending_reason: Some("waiting for an eligible worker".into()),
        }
    }
}
