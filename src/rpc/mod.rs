//! Node-to-node RPC over tarpc (bincode on a length-delimited TCP stream): the Raft
//! protocol messages, and the calls a follower makes on the leader on a client's behalf
//! (forwarded writes, read-index, membership changes), plus per-node status.
//!
//! Every call carries a [`Header`]: the format version, the sender's cluster id and the
//! cluster secret's hash. A receiver refuses a call whose version it does not speak, whose
//! cluster differs from its own, or whose secret is wrong — before decoding anything else
//! into its state.

mod network;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

pub use network::NetworkFactory;
pub use server::RpcServer;

use crate::model::{HeartbeatAck, HeartbeatBody, Seen};
use crate::raft::{NodeId, NodeInfo, Request, Response, SnapshotMeta, TypeConfig, Vote, FORMAT_VERSION};
use crate::storage::Store;

/// Largest frame either side accepts. Append batches are bounded by openraft's
/// `max_payload_entries` (entries are a few KiB at most) and snapshots travel in
/// [`SNAPSHOT_CHUNK`] pieces, so this leaves a wide margin without letting one peer make
/// another allocate without bound.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
pub const SNAPSHOT_CHUNK: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Sent with every call; see the module doc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: u8,
    pub from: NodeId,
    pub cluster_id: Option<String>,
    /// Hex SHA-256 of the cluster secret (empty when no secret is configured).
    pub secret: String,
}

/// Why a call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcFailure {
    /// Wrong format version, cluster or secret. Not retried.
    #[error("refused: {0}")]
    Refused(String),
    /// The receiver is not the leader; the write was not proposed.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Nothing was done (no quorum, shutting down); safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The request itself is wrong (e.g. removing the last voter).
    #[error("{0}")]
    Invalid(String),
    /// The caller acts on a state that moved on (e.g. a worker registration that another
    /// registration replaced).
    #[error("{0}")]
    Conflict(String),
}

/// One piece of a snapshot on its way to a follower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// One node's view of itself, for `GET /api/cluster` and `/api/health`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub http_addr: String,
    pub rpc_addr: String,
    pub cluster_id: Option<String>,
    pub state_digest: Option<String>,
    /// The data dir was found empty although the cluster had replicated to this node; it
    /// takes no part in Raft until removed and added again.
    pub quarantined: bool,
}

/// How a membership change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipDone {
    Done,
    /// An added node joined as a learner and is still catching up: the same request
    /// again promotes it once it has.
    CatchingUp,
}

/// A membership change a follower asks the leader to make.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Add as learner, wait until caught up, promote to voter.
    AddVoter {
        id: NodeId,
        node: NodeInfo,
    },
    Remove {
        id: NodeId,
    },
    TransferLeader {
        to: NodeId,
    },
}

#[tarpc::service]
pub trait ClusterService {
    async fn append_entries(
        hdr: Header,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcFailure>;
    async fn vote(hdr: Header, req: VoteRequest<TypeConfig>) -> Result<VoteResponse<TypeConfig>, RpcFailure>;
    async fn pre_vote(hdr: Header, req: VoteRequest<TypeConfig>) -> Result<VoteResponse<TypeConfig>, RpcFailure>;
    async fn snapshot_chunk(
        hdr: Header,
        chunk: SnapshotChunk,
    ) -> Result<Option<SnapshotResponse<TypeConfig>>, RpcFailure>;
    async fn transfer_leader(
        hdr: Header,
        req: TransferLeaderRequest<TypeConfig>,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcFailure>;
    /// Proposes a client write on the leader and returns what applying it produced.
    async fn forward_write(hdr: Header, req: Request) -> Result<Response, RpcFailure>;
    /// The leader confirms its leadership with a quorum and returns the index a follower
    /// must have applied before serving a linearizable read.
    async fn read_index(hdr: Header) -> Result<u64, RpcFailure>;
    async fn change_membership(hdr: Header, op: MembershipOp) -> Result<MembershipDone, RpcFailure>;
    async fn node_status(hdr: Header, with_digest: bool) -> Result<NodeStatus, RpcFailure>;
    /// On the leader: whether the cluster has ever replicated to `node` (recorded in the
    /// state machine, or matched by this leader). A pristine node asks this to learn
    /// whether it lost data the cluster still counts on.
    async fn replicated_to(hdr: Header, node: NodeId) -> Result<bool, RpcFailure>;
    /// The leader, adding this node on an operator's request, lifts its quarantine.
    async fn admit(hdr: Header) -> Result<(), RpcFailure>;
    /// A worker's heartbeat, forwarded to the leader (which alone tracks liveness).
    /// `None`: the worker is not registered.
    async fn worker_heartbeat(
        hdr: Header,
        worker: String,
        body: HeartbeatBody,
    ) -> Result<Option<HeartbeatAck>, RpcFailure>;
    /// The leader's memory of worker heartbeats.
    async fn worker_heartbeats(hdr: Header) -> Result<BTreeMap<String, Seen>, RpcFailure>;
}

/// Builds and checks headers for this node.
#[derive(Clone)]
pub struct Identity {
    pub id: NodeId,
    pub store: Store,
    pub secret_hash: String,
}

impl Identity {
    pub fn header(&self) -> Header {
        Header {
            format: FORMAT_VERSION,
            from: self.id,
            cluster_id: self.store.cluster_id().ok().flatten(),
            secret: self.secret_hash.clone(),
        }
    }

    pub fn check(&self, hdr: &Header) -> Result<(), RpcFailure> {
        if hdr.format != FORMAT_VERSION {
            return Err(RpcFailure::Refused(format!(
                "node {} speaks format {}, this node speaks {FORMAT_VERSION}",
                hdr.from, hdr.format
            )));
        }
        if hdr.secret != self.secret_hash {
            return Err(RpcFailure::Refused(format!("node {} presented a wrong cluster secret", hdr.from)));
        }
        let ours = self.store.cluster_id().map_err(|e| RpcFailure::Unavailable(e.to_string()))?;
        if let (Some(theirs), Some(ours)) = (&hdr.cluster_id, &ours) {
            if theirs != ours {
                return Err(RpcFailure::Refused(format!(
                    "node {} belongs to cluster {theirs}, this node to cluster {ours}",
                    hdr.from
                )));
            }
        }
        Ok(())
    }
}

/// Cached tarpc clients, one connection per peer address. A connection leaves the cache
/// as soon as it dies, so a call rarely meets a connection that was already dead — which
/// matters because a failure on a live-looking connection must count as "maybe sent".
#[derive(Clone, Default)]
pub struct PeerClients {
    clients: Arc<Mutex<BTreeMap<String, (u64, ClusterServiceClient)>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a peer could not be reached at all (nothing was sent).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {addr}: {reason}")]
pub struct ConnectError {
    pub addr: String,
    pub reason: String,
}

impl PeerClients {
    pub async fn get(&self, addr: &str) -> Result<ClusterServiceClient, ConnectError> {
        if let Some((_, c)) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let err = |reason: String| ConnectError { addr: addr.to_string(), reason };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        stream.set_nodelay(true).ok();
        let framed = codec().new_framed(stream);
        let transport = serde_transport::new(framed, Bincode::default());
        let tarpc::client::NewClient { client, dispatch } =
            ClusterServiceClient::new(tarpc::client::Config::default(), transport);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let clients = self.clients.clone();
        let key = addr.to_string();
        tokio::spawn(async move {
            let _ = dispatch.await;
            let mut map = clients.lock().await;
            if map.get(&key).is_some_and(|(cur, _)| *cur == id) {
                map.remove(&key);
            }
        });
        self.clients.lock().await.insert(addr.to_string(), (id, client.clone()));
        Ok(client)
    }

    /// Drops a connection after an error so the next call reconnects.
    pub async fn forget(&self, addr: &str) {
        self.clients.lock().await.remove(addr);
    }
}

/// Whether a failed call may have reached the peer. Only a request that could not even be
/// handed to the transport certainly did not.
pub fn maybe_sent(e: &tarpc::client::RpcError) -> bool {
    !matches!(e, tarpc::client::RpcError::Send(_))
}

fn codec() -> tarpc::tokio_util::codec::length_delimited::Builder {
    let mut b = LengthDelimitedCodec::builder();
    b.max_frame_length(MAX_FRAME);
    b
}

/// A tarpc context whose deadline is `timeout` from now.
pub fn context(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + timeout;
    ctx
}

/// Serves the cluster RPC on an already-bound listener until the returned future is
/// dropped. Each connection runs inside this future, so dropping it ends them all.
pub async fn serve(listener: TcpListener, server: RpcServer) {
    use tarpc::server::{BaseChannel, Channel};
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer): (TcpStream, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "rpc accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                stream.set_nodelay(true).ok();
                let transport = serde_transport::new(codec().new_framed(stream), Bincode::default());
                let server = server.clone();
                connections.spawn(async move {
                    BaseChannel::with_defaults(transport)
                        .execute(server.serve())
                        .for_each_concurrent(None, |response| response)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &std::path::Path, secret: &str, cluster: Option<&str>) -> Identity {
        let store = Store::new(crate::storage::open_db(dir).unwrap());
        if let Some(id) = cluster {
            let mut tx = crate::storage::Tx::new(&store);
            tx.put_meta("cluster_id", &id.to_string()).unwrap();
            tx.commit().unwrap();
        }
        Identity { id: 1, store, secret_hash: secret.into() }
    }

    #[test]
    fn refuses_another_cluster_a_wrong_secret_and_an_unknown_format() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ours = identity(a.path(), "s", Some("cluster-a"));
        let theirs = identity(b.path(), "s", Some("cluster-b"));
        assert!(matches!(ours.check(&theirs.header()), Err(RpcFailure::Refused(m)) if m.contains("cluster-b")));

        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = identity(fresh_dir.path(), "s", None);
        assert!(ours.check(&fresh.header()).is_ok(), "a node that has not joined yet is accepted");
        assert!(fresh.check(&ours.header()).is_ok());

        let mut wrong_secret = fresh.header();
        wrong_secret.secret = "other".into();
        assert!(matches!(ours.check(&wrong_secret), Err(RpcFailure::Refused(m)) if m.contains("secret")));

        let mut newer = fresh.header();
        newer.format = FORMAT_VERSION + 1;
        assert!(matches!(ours.check(&newer), Err(RpcFailure::Refused(m)) if m.contains("format")));
    }
}
