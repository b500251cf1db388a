//! openraft's outgoing network over [`super::ClusterServiceClient`]. A failed connect is
//! `Unreachable` (openraft backs off); any other failure is `Network` (retried soon).

use std::future::Future;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};

use super::{context, ClusterServiceClient, Identity, PeerClients, RpcFailure, SnapshotChunk, SNAPSHOT_CHUNK};
use crate::raft::{NodeId, NodeInfo, Snapshot, TypeConfig, Vote};

#[derive(Clone)]
pub struct NetworkFactory {
    identity: Identity,
    peers: PeerClients,
}

impl NetworkFactory {
    pub fn new(identity: Identity, peers: PeerClients) -> Self {
        NetworkFactory { identity, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork { target, addr: node.rpc_addr.clone(), identity: self.identity.clone(), peers: self.peers.clone() }
    }
}

/// The least time an AppendEntries that carries entries may take. openraft gives every
/// append the heartbeat interval (50 ms by default) as its deadline, which a large entry
/// (a `Fire` of hundreds of tasks) with the follower's fsync overshoots under load: the
/// call failed, the follower wrote the entries anyway, the connection was dropped and
/// redialed, and the leader sent them again (the firing bench logged `DeadlineExceeded`
/// throughout a 100k-task fire). Liveness does not rest on this deadline: heartbeats
/// (appends without entries) keep openraft's, and a replaced leader's stream is dropped.
/// The cost: a connection that went dead silently is given up on after this long.
const MIN_APPEND_DEADLINE: Duration = Duration::from_secs(2);

/// How long the last chunk of a snapshot may take: the follower installs the whole state
/// before it answers (a million tasks take tens of seconds on a small disk).
const SNAPSHOT_INSTALL_DEADLINE: Duration = Duration::from_secs(300);

pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    identity: Identity,
    peers: PeerClients,
}

/// How one call failed, before it is mapped to the error type openraft wants.
enum CallError {
    Unreachable(String),
    Network(String),
}

impl From<CallError> for RPCError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }
}

impl From<CallError> for StreamingError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => StreamingError::Network(NetworkError::from_string(m)),
        }
    }
}

impl PeerNetwork {
    async fn client(&self) -> Result<ClusterServiceClient, CallError> {
        self.peers.get(self.target, &self.addr).await.map_err(|e| CallError::Unreachable(e.to_string()))
    }

    /// Maps a finished call: transport errors drop the cached connection; a refusal (wrong
    /// cluster or secret) is treated as unreachable so openraft backs off from that peer.
    async fn finish<T>(&self, res: Result<Result<T, RpcFailure>, tarpc::client::RpcError>) -> Result<T, CallError> {
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(RpcFailure::Refused(m))) => {
                tracing::warn!(target_node = self.target, reason = %m, "peer refused rpc");
                Err(CallError::Unreachable(m))
            }
            Ok(Err(e)) => Err(CallError::Network(e.to_string())),
            Err(e) => {
                self.peers.forget(&self.addr).await;
                Err(CallError::Network(format!("rpc to node {} failed: {e}", self.target)))
            }
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = crate::storage::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let client = self.client().await?;
        // A heartbeat (no entries) keeps openraft's deadline.
        let deadline =
            if rpc.entries.is_empty() { option.hard_ttl() } else { option.hard_ttl().max(MIN_APPEND_DEADLINE) };
        let res = client.append_entries(context(deadline), self.identity.header(), rpc).await;
        Ok(self.finish(res).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let client = self.client().await?;
        let res = client.vote(context(option.hard_ttl()), self.identity.header(), rpc).await;
        Ok(self.finish(res).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let client = self.client().await?;
        let res = client.pre_vote(context(option.hard_ttl()), self.identity.header(), rpc).await;
        Ok(self.finish(res).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = async {
            use tokio::io::AsyncReadExt;
            let io = |e: std::io::Error| CallError::Network(format!("cannot read the snapshot file: {e}"));
            let total = snapshot.snapshot.size().map_err(io)?;
            // The file is read a chunk at a time: memory is one chunk, whatever the state.
            let mut file = tokio::fs::File::from_std(snapshot.snapshot.into_file().map_err(io)?);
            let mut offset = 0u64;
            loop {
                let want = (total - offset).min(SNAPSHOT_CHUNK as u64) as usize;
                let mut data = vec![0u8; want];
                file.read_exact(&mut data).await.map_err(io)?;
                let done = offset + want as u64 == total;
                let chunk = SnapshotChunk { vote, meta: snapshot.meta.clone(), offset, data, done };
                let client = self.client().await?;
                // A chunk gets the whole per-RPC budget, at least a few seconds; the last
                // one waits for the follower's install, which grows with the state.
                let floor = if done { SNAPSHOT_INSTALL_DEADLINE } else { Duration::from_secs(5) };
                let ttl = option.hard_ttl().max(floor);
                let res = client.snapshot_chunk(context(ttl), self.identity.header(), chunk).await;
                match self.finish(res).await? {
                    Some(resp) => return Ok(resp),
                    None if done => {
                        return Err(CallError::Network("peer did not answer the last snapshot chunk".into()))
                    }
                    None => offset += want as u64,
                }
            }
        };
        tokio::select! {
            res = send => res.map_err(StreamingError::from),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let client = self.client().await?;
        let res = client.transfer_leader(context(option.hard_ttl()), self.identity.header(), req).await;
        Ok(self.finish(res).await?)
    }
}
