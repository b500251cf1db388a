//! Real `raftcron` processes: SIGKILL durability, SIGTERM handover, clock skew under
//! libfaketime, stopped worker agents, and what a job can see of its agent.

mod fixture;

mod auth;
mod backup;
mod cli;
mod clock;
mod durability;
mod fencing;
mod isolation;
mod lifecycle;
mod liveness;
mod reads;
mod tls;
mod upgrade;
mod workers;
