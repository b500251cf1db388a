//! The domain types that Raft replicates and the API shows, and their validation. Pure:
//! no IO, no clock.

pub mod run;
pub mod task;

pub use run::{Run, RunStatus, RunTrigger};
pub use task::{
    ConcurrencyPolicy, ExecutorKind, FieldError, MisfirePolicy, Priority, Task, TaskField, TaskSpec, TaskStatus,
    TaskView,
};
