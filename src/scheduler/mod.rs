//! Schedule evaluation. Cron expressions and time zones are evaluated here, on the node
//! that receives a request or the leader that fires ticks — never in `apply`.

pub mod admission;
pub mod cron;
pub mod firing;
pub mod workers;
