//! Schedule evaluation. Cron expressions and time zones are evaluated here, on the node
//! that receives a request or (later) on the leader that fires ticks — never in `apply`.

pub mod cron;
pub mod firing;
