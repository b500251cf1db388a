//! A worker: an agent process that executes runs. What is replicated is its registration,
//! its configuration and its liveness *transitions*; the time of its last heartbeat lives
//! only on the leader (a heartbeat is not a Raft write).

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldError;

/// Longest worker id; ids are also API key names and path segments.
pub const MAX_WORKER_ID: usize = 64;
/// Most slots a worker may declare.
pub const MAX_SLOTS: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Online,
    Offline,
}

/// A worker as the state machine stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub max_tasks: u32,
    pub tags: Vec<String>,
    /// An admin may disable a worker: it keeps its runs but gets no new ones.
    pub enabled: bool,
    pub liveness: Liveness,
    /// Bumped by every registration: the agent that registered last holds the id, and
    /// what an older registration's agent says (heartbeats, polls, reports) is refused.
    pub epoch: u64,
    pub registered_at: DateTime<Utc>,
    /// Command time of the last liveness transition.
    pub liveness_changed_at: DateTime<Utc>,
    /// What the agent registered last: its own slots and tags.
    pub registered_max_tasks: u32,
    pub registered_tags: Vec<String>,
    /// What an admin set (`PUT /api/workers/{id}`), kept apart from what the agent
    /// registers, and winning over it: `max_tasks` and `tags` above are the registered
    /// ones limited by these — an agent may carry fewer of the admin's tags and fewer
    /// slots, never more, however it re-registers.
    pub admin_max_tasks: Option<u32>,
    pub admin_tags: Option<Vec<String>>,
}

impl Worker {
    /// Recomputes the slots and tags placement uses: what the agent registered, limited by
    /// what an admin set.
    pub fn settle_limits(&mut self) {
        self.max_tasks = match self.admin_max_tasks {
            Some(cap) => self.registered_max_tasks.min(cap),
            None => self.registered_max_tasks,
        };
        self.tags = match &self.admin_tags {
            Some(allowed) => self.registered_tags.iter().filter(|t| allowed.contains(t)).cloned().collect(),
            None => self.registered_tags.clone(),
        };
    }

    /// Whether it carries every one of `tags`.
    pub fn carries(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }
}

/// What an agent says about itself when it starts (and re-registers after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    #[serde(default)]
    pub name: Option<String>,
    pub max_tasks: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Runs of a previous registration this agent saw killed (from its state dir): they
    /// are re-queued at once. Any other run the previous registration held may still be
    /// running on an agent that does not know it was replaced, so its re-queue waits one
    /// `worker_timeout_s`, by which time that agent's lease has run out.
    #[serde(default)]
    pub killed: Vec<RunAttempt>,
}

/// One attempt of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct RunAttempt {
    pub run_id: u64,
    pub attempt: u32,
}

/// What an admin may change (`PUT /api/workers/{id}`); absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerUpdate {
    pub max_tasks: Option<u32>,
    pub tags: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// Whether a `worker`-role credential named `name` may act for worker `id`: its own id,
/// or, for a name ending in `*` (a pool key, e.g. `raftcron-worker-*` for the pods of a
/// Kubernetes Deployment), any id that starts with what precedes the `*`.
pub fn acts_for(name: &str, id: &str) -> bool {
    match name.strip_suffix('*') {
        Some(prefix) => !prefix.is_empty() && id.starts_with(prefix),
        None => name == id,
    }
}

/// Checks a worker id: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn validate_worker_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > MAX_WORKER_ID {
        return Err(FieldError::new("worker_id", format!("must be 1 to {MAX_WORKER_ID} characters")));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(FieldError::new("worker_id", "may contain only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

pub fn validate_slots(max_tasks: u32) -> Result<(), FieldError> {
    if max_tasks == 0 || max_tasks > MAX_SLOTS {
        return Err(FieldError::new("max_tasks", format!("must be between 1 and {MAX_SLOTS}")));
    }
    Ok(())
}

pub fn validate_tags(tags: &[String]) -> Result<(), FieldError> {
    if tags.len() > 64 || tags.iter().any(|t| t.is_empty() || t.chars().count() > 64) {
        return Err(FieldError::new("tags", "at most 64 tags of 1 to 64 characters each"));
    }
    Ok(())
}

#[cfg(test)]
mod acts_for_tests {
    use super::acts_for;

    #[test]
    fn a_pool_name_covers_the_ids_with_its_prefix_and_a_plain_name_only_itself() {
        assert!(acts_for("w-1", "w-1") && !acts_for("w-1", "w-10"));
        assert!(acts_for("pool-*", "pool-7") && acts_for("pool-*", "pool-"));
        assert!(!acts_for("pool-*", "pool") && !acts_for("pool-*", "other-7") && !acts_for("*", "anything"));
    }
}
