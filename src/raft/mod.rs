//! Raft plumbing: the openraft type configuration, the replicated commands and their
//! responses (the log entry payloads), and the deterministic `apply`.

pub mod apply;
pub mod command;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use command::{Command, Fired, IdempotencyKey, Outcome, Rejection, Request, Response, RunReport, TaskFire};

pub type NodeId = u64;

/// What the membership config stores per node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// tarpc address, node to node.
    pub rpc_addr: String,
    /// REST address; empty when the node joined through static bootstrap and has not been
    /// seen yet (the cluster view then asks the node itself).
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rpc={} http={}", self.rpc_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// raftcron's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::storage::SnapshotData>;

/// The version of every encoded thing that leaves this binary: log entries, snapshots,
/// node-to-node messages, and the data dir itself. bincode is not self-describing, so a
/// reader checks it first and refuses what it does not know instead of decoding garbage.
///
/// History: 1 — the first release. 2 — worker registration epochs, run requirements (tags)
/// and pending deadlines, the placement queue by class of tags, the backoff and deadline
/// indexes, run counts kept by the storage layer, `next_run_at` no longer stored (computed
/// on read), idempotency keys that say whether they are a client's, a worker's admin caps
/// kept apart from its registration, task `environment` and `headers` values that may be
/// secret (`model::EnvValue`, a tagged enum, plain values included). 3 — snapshots as a
/// streamed file (`storage/snapshot_file.rs`), the state machine in two sets of column
/// families, maintained counters and task indexes (status, name trigrams), `Fire`'s
/// misfire threshold. 4 — tasks counted per bucket of ids (`Counter::TaskBucket`), so a
/// deep page seeks to where it starts. 5 — pending runs counted per task
/// (`Counter::PendingOf`, for admission control); entries and messages encode as in 4.
/// A format is settled with the release that ships it; the commits between carry no
/// compatibility promise. A node reads data dirs, log entries and snapshot files of
/// [`OLDEST_READABLE_FORMAT`] and later: a data dir is migrated in place when it opens, a
/// snapshot's derived state is recomputed as it loads. Older ones, and any message of
/// another version (node to node), are refused with an error naming both versions (see
/// ARCHITECTURE.md, "Formats", and docs/operations.md, upgrades).
pub const FORMAT_VERSION: u8 = 5;

/// The oldest format this binary reads (from disk: data dirs, log entries, snapshot
/// files). Format 4 differs from 5 only in state derived from the tables.
pub const OLDEST_READABLE_FORMAT: u8 = 4;
