//! The receiving side of [`super::ClusterService`].

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use tarpc::context::Context;

use super::{ClusterService, Header, MembershipOp, NodeStatus, RpcFailure, SnapshotChunk};
use crate::model::{HeartbeatAck, HeartbeatBody, Principal, Seen};
use crate::node::NodeCore;
use crate::raft::{NodeId, Request, Response, Snapshot, TypeConfig};
use crate::scheduler::workers;
use crate::storage::IncomingSnapshot;

#[derive(Clone)]
pub struct RpcServer {
    core: Arc<NodeCore>,
}

impl RpcServer {
    pub fn new(core: Arc<NodeCore>) -> Self {
        RpcServer { core }
    }

    /// Counts a connection refused before its first frame.
    pub fn refused(&self, reason: &str) {
        self.core.metrics.rpc_refused.with_label_values(&[reason]).inc();
    }

    /// The check for Raft protocol messages: a quarantined node (empty data dir, but the
    /// cluster replicated to it before) takes no part in replication or elections.
    fn check_raft(&self, hdr: &Header) -> Result<(), RpcFailure> {
        self.core.identity.check(hdr)?;
        if self.core.quarantined.load(std::sync::atomic::Ordering::SeqCst) {
            self.core.metrics.quarantine_refusals.inc();
            return Err(RpcFailure::Refused(format!(
                "node {} lost its data; remove it from the cluster and add it again",
                self.core.id
            )));
        }
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> RpcFailure {
    RpcFailure::Unavailable(e.to_string())
}

impl ClusterService for RpcServer {
    async fn append_entries(
        self,
        _: Context,
        hdr: Header,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcFailure> {
        self.check_raft(&hdr)?;
        let leader = req.vote.leader_id().node_id;
        let resp = self.core.raft.append_entries(req).await.map_err(unavailable)?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.core.heard_from_leader(leader);
        }
        Ok(resp)
    }

    async fn vote(
        self,
        _: Context,
        hdr: Header,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure> {
        self.check_raft(&hdr)?;
        self.core.raft.vote(req).await.map_err(unavailable)
    }

    async fn pre_vote(
        self,
        _: Context,
        hdr: Header,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure> {
        self.check_raft(&hdr)?;
        self.core.raft.pre_vote(req).await.map_err(unavailable)
    }

    async fn snapshot_chunk(
        self,
        _: Context,
        hdr: Header,
        chunk: SnapshotChunk,
    ) -> Result<Option<SnapshotResponse<TypeConfig>>, RpcFailure> {
        self.check_raft(&hdr)?;
        let stored = |e: std::io::Error| RpcFailure::Unavailable(format!("cannot store the snapshot: {e}"));
        let mut partial = self.core.incoming_snapshot.lock().await;
        // The transfer is taken out of the slot while its chunk is written (the lock held
        // all along, so chunks never interleave); one that fails a check is dropped, its
        // file with it, and the leader starts again from offset 0.
        let incoming = if chunk.offset == 0 {
            // A new transfer replaces an unfinished one.
            drop(partial.take());
            IncomingSnapshot::start(&self.core.snapshot_dir, chunk.vote, chunk.meta.clone()).map_err(stored)?
        } else {
            partial
                .take()
                .ok_or_else(|| RpcFailure::Unavailable("snapshot chunk without a start; resend from offset 0".into()))?
        };
        if incoming.vote != chunk.vote || incoming.meta != chunk.meta || incoming.written() != chunk.offset {
            return Err(RpcFailure::Unavailable("snapshot chunk out of sequence; resend from offset 0".into()));
        }
        let (vote, meta, path) = (incoming.vote, incoming.meta.clone(), incoming.path().to_path_buf());
        let (done, data) = (chunk.done, chunk.data);
        // File work off the async workers: a chunk is 4 MiB, and the last one syncs and
        // reads back the whole file.
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<Result<_, _>> {
            let mut incoming = incoming;
            incoming.append(&data)?;
            if done {
                incoming.finish().map(Err)
            } else {
                Ok(Ok(incoming))
            }
        })
        .await
        .map_err(|e| RpcFailure::Unavailable(format!("the snapshot writer failed: {e}")))?
        .map_err(stored)?;
        let data = match written {
            Ok(incoming) => {
                *partial = Some(incoming);
                return Ok(None);
            }
            Err(data) => data,
        };
        drop(partial);
        let resp = self.core.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await;
        // Renamed to `current` by an install; still here if openraft had no use for it.
        let _ = std::fs::remove_file(&path);
        Ok(Some(resp.map_err(unavailable)?))
    }

    async fn transfer_leader(
        self,
        _: Context,
        hdr: Header,
        req: TransferLeaderRequest<TypeConfig>,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcFailure> {
        self.check_raft(&hdr)?;
        self.core.raft.handle_transfer_leader(req).await.map_err(unavailable)
    }

    async fn forward_write(
        self,
        _: Context,
        hdr: Header,
        who: Principal,
        req: Request,
    ) -> Result<Response, RpcFailure> {
        self.core.identity.check(&hdr)?;
        req.command.authorize(&who).map_err(RpcFailure::Forbidden)?;
        self.core.propose_local(req).await
    }

    async fn read_index(self, _: Context, hdr: Header) -> Result<u64, RpcFailure> {
        self.core.identity.check(&hdr)?;
        self.core.read_index_local().await
    }

    async fn change_membership(
        self,
        _: Context,
        hdr: Header,
        op: MembershipOp,
    ) -> Result<crate::rpc::MembershipDone, RpcFailure> {
        self.core.identity.check(&hdr)?;
        self.core.change_membership_local(op).await
    }

    async fn node_status(self, _: Context, hdr: Header, with_digest: bool) -> Result<NodeStatus, RpcFailure> {
        self.core.identity.check(&hdr)?;
        Ok(self.core.status(with_digest))
    }

    async fn admit(self, _: Context, hdr: Header) -> Result<(), RpcFailure> {
        self.core.identity.check(&hdr)?;
        if self.core.quarantined.swap(false, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(from = hdr.from, "admitted back into the cluster after losing data");
        }
        Ok(())
    }

    async fn replicated_to(self, _: Context, hdr: Header, node: NodeId) -> Result<bool, RpcFailure> {
        self.core.identity.check(&hdr)?;
        self.core.replicated_to(node).await
    }

    async fn worker_heartbeat(
        self,
        _: Context,
        hdr: Header,
        worker: String,
        body: HeartbeatBody,
    ) -> Result<Option<HeartbeatAck>, RpcFailure> {
        self.core.identity.check(&hdr)?;
        if !self.core.is_leader() {
            return Err(RpcFailure::NotLeader(self.core.leader()));
        }
        workers::heartbeat_local(&self.core, &worker, body).await
    }

    async fn worker_heartbeats(self, _: Context, hdr: Header) -> Result<BTreeMap<String, Seen>, RpcFailure> {
        self.core.identity.check(&hdr)?;
        if !self.core.is_leader() {
            return Err(RpcFailure::NotLeader(self.core.leader()));
        }
        Ok(self.core.heartbeats.snapshot())
    }
}
