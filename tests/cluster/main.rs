//! Multi-node tests of the replicated core: real nodes (RocksDB, tarpc, HTTP) in one
//! process, started on port 0 with temp dirs by [`fixture::TestCluster`].

mod fixture;
mod support;

mod admission;
mod agent;
mod auth;
mod backup;
mod bad_input;
mod dashboard;
mod failover;
mod firing;
mod idempotency;
mod linearizability;
mod membership;
mod metrics;
mod openapi;
mod placement;
mod replication;
mod secrets;
mod snapshot;
mod transport;
mod workers;
