//! The domain types that Raft replicates and the API shows, and their validation. Pure:
//! no IO, no clock.

pub mod lease;
pub mod run;
pub mod secret;
pub mod task;
pub mod worker;

pub use lease::{HeartbeatAck, HeartbeatBody, Seen, SystemInfo};
pub use run::{output_tail, pending_reason, required_tags, Run, RunStatus, RunTrigger, WorkerLoad, MAX_OUTPUT};
pub use secret::{EnvValue, REDACTED};
pub use task::{
    ConcurrencyPolicy, ExecutorKind, FieldError, MisfirePolicy, Priority, Task, TaskField, TaskSpec, TaskStatus,
    TaskView,
};
pub use worker::{Liveness, Registration, RunAttempt, Worker, WorkerUpdate};

/// Who asked for a client write: an API key's name or a JWT's `sub`, and its role. It
/// travels with a forwarded write so that the leader checks the role again
/// (`raft::Command::authorize`) rather than trusting whichever node forwarded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub name: String,
    pub role: crate::config::Role,
}
