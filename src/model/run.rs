//! A run: one execution (attempt) of a task, from creation to a final state.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Liveness, Priority, Task, Worker};

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
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Pending,
        RunStatus::Assigned,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Cancelled,
        RunStatus::Lost,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Assigned => "assigned",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Lost => "lost",
        }
    }

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

/// Stored and shown as is (no `flatten`, no skipped fields: bincode-safe). The API adds
/// `pending_reason`, which it computes from the replicated workers when it reads the run.
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
    /// The registration epoch of the worker it was placed on: its reports must carry it,
    /// so a second agent under the same worker id (or a restarted one) cannot act on it.
    pub worker_epoch: u64,
    /// The tags a worker must carry: the task's when the run was created, or when the
    /// task's tags changed while it was pending. Sorted, no duplicates.
    pub tags: Vec<String>,
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
    /// A retry waits for its backoff: not placed before this instant.
    pub not_before: Option<DateTime<Utc>>,
    /// A pending run still unplaced at this instant fails (the task's `pending_timeout_s`).
    pub pending_deadline: Option<DateTime<Utc>>,
    /// The attempt this one re-runs (a retry after a failure, or a re-queue after a loss).
    pub retry_of: Option<u64>,
    /// How many times this run's chain was re-queued because its worker was lost (capped).
    pub lost_requeues: u32,
}

impl Run {
    /// A new pending run of `task`.
    pub fn pending(id: u64, task: &Task, trigger: RunTrigger, scheduled_at: DateTime<Utc>, now: DateTime<Utc>) -> Run {
        Run {
            id,
            task_id: task.id,
            priority: task.spec.priority,
            trigger,
            scheduled_at,
            attempt: 1,
            status: RunStatus::Pending,
            worker_id: None,
            worker_epoch: 0,
            tags: required_tags(&task.spec.tags),
            created_at: now,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: None,
            not_before: None,
            pending_deadline: task.spec.pending_timeout_s.map(|s| now + chrono::Duration::seconds(clamp_secs(s))),
            retry_of: None,
            lost_requeues: 0,
        }
    }

    /// The next attempt of this run, pending: a retry after a failure or a re-queue after
    /// its worker was lost. Same task and tick; a new run id, so the old attempt's record
    /// (and any late report for it) stays fenced off. It requires `task`'s current tags.
    pub fn next_attempt(&self, id: u64, task: &Task, now: DateTime<Utc>, not_before: Option<DateTime<Utc>>) -> Run {
        let mut next = Run::pending(id, task, RunTrigger::Retry, self.scheduled_at, now);
        next.priority = self.priority;
        next.attempt = self.attempt + 1;
        next.retry_of = Some(self.id);
        next.lost_requeues = self.lost_requeues;
        next.not_before = not_before;
        // The pending timeout counts from when the attempt can first be placed.
        next.pending_deadline =
            task.spec.pending_timeout_s.map(|s| not_before.unwrap_or(now) + chrono::Duration::seconds(clamp_secs(s)));
        next
    }

    /// Holds a worker's slot.
    pub fn is_assigned(&self) -> bool {
        matches!(self.status, RunStatus::Assigned | RunStatus::Running)
    }

    #[cfg(test)]
    pub fn test_pending(id: u64, priority: Priority, tags: &[&str]) -> Run {
        let spec = crate::model::TaskSpec::from_fields(
            crate::model::TaskField::parse_object(serde_json::json!({"name": "t", "executor": "shell", "command": "true", "tags": tags, "priority": priority}))
                .expect("test spec"),
            "UTC",
        )
        .expect("test spec");
        let task = Task::new(1, spec, DateTime::<Utc>::MIN_UTC);
        Run::pending(id, &task, RunTrigger::Manual, DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC)
    }
}

/// A task's tags as a run's requirement: sorted, without duplicates.
pub fn required_tags(tags: &[String]) -> Vec<String> {
    let mut t = tags.to_vec();
    t.sort();
    t.dedup();
    t
}

fn clamp_secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX).min(100 * 365 * 24 * 3600)
}

/// A worker as placement sees it: its record and the slots its assignments use.
#[derive(Debug, Clone)]
pub struct WorkerLoad {
    pub worker: Worker,
    pub used: u32,
}

impl WorkerLoad {
    /// Online, enabled, a free slot, and every tag in `tags`.
    pub fn can_take(&self, tags: &[String]) -> bool {
        self.worker.liveness == Liveness::Online
            && self.worker.enabled
            && self.used < self.worker.max_tasks
            && self.worker.carries(tags)
    }
}

/// Why a pending run is still pending, judged from the replicated workers (and `now` for
/// a retry's backoff); `None` for a run that is not pending.
pub fn pending_reason(run: &Run, workers: &[WorkerLoad], now: DateTime<Utc>) -> Option<String> {
    if run.status != RunStatus::Pending {
        return None;
    }
    if let Some(t) = run.not_before.filter(|t| *t > now) {
        return Some(format!("retry backoff until {}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    let up: Vec<&WorkerLoad> =
        workers.iter().filter(|w| w.worker.liveness == Liveness::Online && w.worker.enabled).collect();
    Some(if up.is_empty() {
        "no worker is online and enabled".to_string()
    } else if !up.iter().any(|w| w.worker.carries(&run.tags)) {
        format!("no online worker carries every tag of the run ({})", run.tags.join(", "))
    } else if !up.iter().any(|w| w.can_take(&run.tags)) {
        "every eligible worker is at max_tasks".to_string()
    } else {
        "waiting for placement".to_string()
    })
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
