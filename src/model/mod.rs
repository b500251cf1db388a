//! The domain types that Raft replicates and the API shows, and their validation. Pure:
//! no IO, no clock.

pub mod task;

pub use task::{ExecutorKind, FieldError, Task, TaskField, TaskSpec, TaskStatus, TaskView};
