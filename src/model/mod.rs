//! The domain types that Raft replicates and the API shows, and their validation. Pure:
//! no IO, no clock.

pub mod lease;
pub mod run;
pub mod task;
pub mod worker;

pub use lease::{HeartbeatAck, HeartbeatBody, Seen, SystemInfo};
pub use run::{output_tail, pending_reason, required_tags, Run, RunStatus, RunTrigger, WorkerLoad, MAX_OUTPUT};
pub use task::{
    ConcurrencyPolicy, ExecutorKind, FieldError, MisfirePolicy, Priority, Task, TaskField, TaskSpec, TaskStatus,
    TaskView,
};
pub use worker::{Liveness, Registration, RunAttempt, Worker, WorkerUpdate};
