//! Node-to-node RPC over tarpc (bincode on a length-delimited TCP stream): the Raft
//! protocol messages, and the calls a follower makes on the leader on a client's behalf
//! (forwarded writes, read-index, membership changes), plus per-node status.
//!
//! A connection is admitted by [`transport`] (mutual TLS and/or a challenge-response on
//! the cluster secret) before a single frame is read. Every call then carries a
//! [`Header`]: the format version, the sender's node id and cluster id. A receiver refuses
//! a call whose version it does not speak or whose cluster differs from its own — before
//! decoding anything else into its state.

mod network;
mod server;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
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
pub use transport::Security;

use crate::model::{HeartbeatAck, HeartbeatBody, Principal, Seen};
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
}

/// Why a call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcFailure {
    /// Wrong format version or cluster, or a caller not allowed the command. Not retried.
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
    /// The caller's role does not allow the command (checked again by the leader).
    #[error("{0}")]
    Forbidden(String),
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
    /// Proposes a client write on the leader and returns what applying it produced. The
    /// leader checks `who` may ask for the command before proposing it.
    async fn forward_write(hdr: Header, who: Principal, req: Request) -> Result<Response, RpcFailure>;
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
}

impl Identity {
    pub fn header(&self) -> Header {
        Header { format: FORMAT_VERSION, from: self.id, cluster_id: self.store.cluster_id().ok().flatten() }
    }

    pub fn check(&self, hdr: &Header) -> Result<(), RpcFailure> {
        if hdr.format != FORMAT_VERSION {
            return Err(RpcFailure::Refused(format!(
                "node {} speaks format {}, this node speaks {FORMAT_VERSION}",
                hdr.from, hdr.format
            )));
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
/// A dial (TCP, then the transport's handshake) runs in a task of its own that every call
/// needing that peer waits on, so a call that gives up early (a heartbeat's short
/// deadline) does not throw away a handshake a slow link needs more time for.
#[derive(Clone)]
pub struct PeerClients {
    security: Security,
    clients: Arc<Mutex<BTreeMap<String, Cached>>>,
    dials: Arc<Mutex<BTreeMap<String, SharedDial>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// A live connection: its serial (so a dead one removes only itself), the node it reaches,
/// the client.
type Cached = (u64, NodeId, ClusterServiceClient);
type SharedDial =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<ClusterServiceClient, ConnectError>>>;

/// Why a peer could not be reached at all (nothing was sent).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to {addr}: {reason}")]
pub struct ConnectError {
    pub addr: String,
    pub reason: String,
}

impl PeerClients {
    pub fn new(security: Security) -> Self {
        PeerClients { security, clients: Default::default(), dials: Default::default(), next_id: Default::default() }
    }

    /// A client for node `id` at `addr`.
    pub async fn get(&self, id: NodeId, addr: &str) -> Result<ClusterServiceClient, ConnectError> {
        if let Some((_, node, c)) = self.clients.lock().await.get(addr) {
            if *node == id {
                return Ok(c.clone());
            }
        }
        let dial = {
            let mut dials = self.dials.lock().await;
            dials
                .entry(addr.to_string())
                .or_insert_with(|| {
                    let (this, addr, failed_addr) = (self.clone(), addr.to_string(), addr.to_string());
                    let task = tokio::spawn(async move {
                        let result = this.dial(id, &addr).await;
                        this.dials.lock().await.remove(&addr);
                        result
                    });
                    task.map(move |joined| {
                        let reason = |e: tokio::task::JoinError| format!("dial task failed: {e}");
                        joined.unwrap_or_else(|e| Err(ConnectError { addr: failed_addr, reason: reason(e) }))
                    })
                    .boxed()
                    .shared()
                })
                .clone()
        };
        dial.await
    }

    async fn dial(&self, node: NodeId, addr: &str) -> Result<ClusterServiceClient, ConnectError> {
        let err = |reason: String| ConnectError { addr: addr.to_string(), reason };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        stream.set_nodelay(true).ok();
        let stream = tokio::time::timeout(transport::DIAL_HANDSHAKE_TIMEOUT, self.security.connect(stream, node, addr))
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| err(format!("handshake: {e}")))?;
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
            if map.get(&key).is_some_and(|(cur, _, _)| *cur == id) {
                map.remove(&key);
            }
        });
        self.clients.lock().await.insert(addr.to_string(), (id, node, client.clone()));
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
/// dropped. Each connection runs inside this future, so dropping it ends them all. At most
/// [`transport::MAX_CONNECTIONS`] authenticated connections at once; each must finish its
/// handshake within [`transport::HANDSHAKE_TIMEOUT`], holding one of the few handshake
/// slots meanwhile, before its first frame is read.
pub async fn serve(listener: TcpListener, server: RpcServer, security: Security) {
    use tarpc::server::{BaseChannel, Channel};
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(transport::MAX_CONNECTIONS));
    let handshakes = transport::HandshakeSlots::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer): (TcpStream, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "rpc accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(handshake) = handshakes.take(peer.ip()) else {
                    server.refused("handshake cap");
                    tracing::debug!(%peer, "rpc connection refused: too many handshakes open");
                    continue;
                };
                stream.set_nodelay(true).ok();
                let (server, security, slots) = (server.clone(), security.clone(), slots.clone());
                connections.spawn(async move {
                    let stream = match tokio::time::timeout(transport::HANDSHAKE_TIMEOUT, security.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            server.refused(match e {
                                transport::HandshakeError::WrongSecret => "secret",
                                transport::HandshakeError::Tls(_) => "tls",
                                _ => "protocol",
                            });
                            tracing::warn!(%peer, error = %e, "rpc connection refused");
                            return;
                        }
                        Err(_) => {
                            server.refused("timeout");
                            tracing::debug!(%peer, "rpc connection refused: no handshake within {:?}", transport::HANDSHAKE_TIMEOUT);
                            return;
                        }
                    };
                    drop(handshake);
                    let Ok(_slot) = slots.try_acquire_owned() else {
                        server.refused("connection cap");
                        tracing::warn!(%peer, limit = transport::MAX_CONNECTIONS, "rpc connection refused: at the connection cap");
                        return;
                    };
                    let transport = serde_transport::new(codec().new_framed(stream), Bincode::default());
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

    fn identity(dir: &std::path::Path, cluster: Option<&str>) -> Identity {
        let store = Store::new(crate::storage::open_db(dir).unwrap());
        if let Some(id) = cluster {
            let mut tx = crate::storage::Tx::new(&store);
            tx.put_meta("cluster_id", &id.to_string()).unwrap();
            tx.commit().unwrap();
        }
        Identity { id: 1, store }
    }

    #[test]
    fn refuses_another_cluster_and_an_unknown_format() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ours = identity(a.path(), Some("cluster-a"));
        let theirs = identity(b.path(), Some("cluster-b"));
        assert!(matches!(ours.check(&theirs.header()), Err(RpcFailure::Refused(m)) if m.contains("cluster-b")));

        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = identity(fresh_dir.path(), None);
        assert!(ours.check(&fresh.header()).is_ok(), "a node that has not joined yet is accepted");
        assert!(fresh.check(&ours.header()).is_ok());

        let mut newer = fresh.header();
        newer.format = FORMAT_VERSION + 1;
        assert!(matches!(ours.check(&newer), Err(RpcFailure::Refused(m)) if m.contains("format")));
    }
}
