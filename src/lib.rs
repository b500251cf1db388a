//! raftcron: a distributed job scheduler whose task, run and worker state is replicated
//! through Raft.
//!
//! Layout (see ARCHITECTURE.md for the bird's-eye view and the invariants):
//!
//! - [`config`] — the documented TOML config, env and flag overrides, validation.
//! - [`node`] — wiring of one node, and the write/read paths that let any node serve.
//! - [`model`] — tasks (and later runs and workers) and their validation; pure.
//! - [`raft`] — openraft type config, the replicated commands, the deterministic `apply`.
//! - [`storage`] — RocksDB: log store, state machine, snapshots, the state digest.
//! - [`compaction`] — when a node snapshots its state and purges its log.
//! - [`rpc`] — tarpc node-to-node service: Raft messages, forwarded writes, read index.
//! - [`api`] — the REST API (axum), auth, the one error → status map, OpenAPI.
//! - [`scheduler`] — schedule evaluation (cron, time zones); firing comes later.
//! - [`metrics`] — Prometheus metrics.
//! - [`cli`] — the `raftcron` command line.
//! - [`certs`] — `raftcron certs init`: a cluster CA and node certificates.

pub mod api;
pub mod certs;
pub mod cli;
pub mod compaction;
pub mod config;
pub mod metrics;
pub mod model;
pub mod node;
pub mod raft;
pub mod rpc;
pub mod scheduler;
pub mod storage;
pub mod ui;
pub mod worker;
