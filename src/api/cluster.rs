//! `/api/cluster`: membership and per-node Raft state, and the admin operations on them.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{parse_id, typed_json_body, ApiError, Envelope, Reply};
use crate::node::NodeCore;
use crate::raft::{NodeId, NodeInfo};
use crate::rpc::{context, MembershipDone, MembershipOp, NodeStatus};

pub fn routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new()
        .routes(routes!(cluster_view))
        .routes(routes!(add_node))
        .routes(routes!(remove_node))
        .routes(routes!(transfer_leader))
        .routes(routes!(save_snapshot))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    /// As this node sees it.
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: NodeId,
    /// `voter` or `learner` in the membership config.
    pub membership: String,
    pub rpc_addr: String,
    pub http_addr: String,
    pub reachable: bool,
    /// The node's own report (role, term, commit and applied index); absent when unreachable.
    pub status: Option<NodeStatus>,
}

/// Members, leader, term, and each node's commit and applied index.
#[utoipa::path(
    get, path = "/api/cluster", tag = "cluster",
    params(("digest" = Option<bool>, Query, description = "include each node's state digest (SHA-256 over the state machine)")),
    responses((status = 200, body = Envelope<ClusterView>), (status = 400), (status = 401)),
    security(("bearer" = []))
)]
async fn cluster_view(
    State(core): State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<ClusterView>, ApiError> {
    let with_digest = match q.get("digest").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(ApiError::BadRequest(format!("digest: {v:?} is not true or false"))),
    };
    let m = core.raft.metrics().borrow_watched().clone();
    let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
    let nodes: Vec<(NodeId, NodeInfo)> = m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let statuses = futures::future::join_all(nodes.iter().map(|(id, info)| {
        let core = core.clone();
        let (id, addr) = (*id, info.rpc_addr.clone());
        async move {
            if id == core.id {
                return Some(core.status(with_digest));
            }
            let client = core.peers.get(id, &addr).await.ok()?;
            match client.node_status(context(Duration::from_secs(2)), core.identity.header(), with_digest).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    core.peers.forget(&addr).await;
                    None
                }
            }
        }
    }))
    .await;
    let members = nodes
        .into_iter()
        .zip(statuses)
        .map(|((id, info), status)| MemberView {
            id,
            membership: if voters.contains(&id) { "voter" } else { "learner" }.into(),
            rpc_addr: info.rpc_addr,
            http_addr: status.as_ref().map(|s| s.http_addr.clone()).unwrap_or(info.http_addr),
            reachable: status.is_some(),
            status,
        })
        .collect();
    Ok(Reply::ok(ClusterView {
        cluster_id: core.store.cluster_id()?,
        leader_id: core.leader(),
        term: m.current_term,
        members,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNodeRequest {
    pub id: NodeId,
    /// The new node's tarpc address as the other nodes reach it.
    pub rpc_addr: String,
    #[serde(default)]
    pub http_addr: String,
}

/// Add a node: it joins as a learner, and is promoted to voter once caught up. Answers
/// within about 20 s: 200 when the node is a voter; 202 when it joined as a learner and is
/// still catching up (send the same request again to promote it; `GET /api/cluster`
/// shows its progress); 400 when the node does not answer within 5 s; 504 when an entry
/// did not commit in time (a member down), whose outcome `GET /api/cluster` shows.
#[utoipa::path(
    post, path = "/api/cluster/nodes", tag = "cluster", request_body = AddNodeRequest,
    responses(
        (status = 200, description = "the node is a voter"),
        (status = 202, description = "the node is a learner, still catching up: repeat the request to promote it"),
        (status = 400), (status = 401), (status = 403), (status = 503),
    ),
    security(("bearer" = []))
)]
async fn add_node(
    State(core): State<Arc<NodeCore>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<NodeId>, ApiError> {
    let req: AddNodeRequest = typed_json_body(body)?;
    if req.id == 0 {
        return Err(ApiError::BadRequest("id: node ids start at 1".into()));
    }
    if req.rpc_addr.trim().is_empty() {
        return Err(ApiError::BadRequest("rpc_addr: is required".into()));
    }
    let node = NodeInfo { rpc_addr: req.rpc_addr, http_addr: req.http_addr };
    match core.change_membership(MembershipOp::AddVoter { id: req.id, node }).await? {
        MembershipDone::Done => Ok(Reply::ok(req.id).message(format!("node {} is a voter", req.id))),
        MembershipDone::CatchingUp => Ok(Reply::ok(req.id).status(StatusCode::ACCEPTED).message(format!(
            "node {} joined as a learner and is still catching up; send this request again to promote it",
            req.id
        ))),
    }
}

/// Remove a node from the cluster.
#[utoipa::path(
    delete, path = "/api/cluster/nodes/{node_id}", tag = "cluster",
    params(("node_id" = u64, Path)),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 503)),
    security(("bearer" = []))
)]
async fn remove_node(State(core): State<Arc<NodeCore>>, Path(node_id): Path<String>) -> Result<Reply<()>, ApiError> {
    let id = parse_id("node", &node_id)?;
    core.change_membership(MembershipOp::Remove { id }).await?;
    Ok(Reply::ok(()).status(StatusCode::NO_CONTENT))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    /// The voter to hand leadership to.
    pub to: NodeId,
}

/// Hand leadership to another voter.
#[utoipa::path(
    post, path = "/api/cluster/transfer-leader", tag = "cluster", request_body = TransferLeaderRequest,
    responses((status = 200), (status = 400), (status = 401), (status = 403), (status = 503)),
    security(("bearer" = []))
)]
async fn transfer_leader(
    State(core): State<Arc<NodeCore>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply<NodeId>, ApiError> {
    let req: TransferLeaderRequest = typed_json_body(body)?;
    core.change_membership(MembershipOp::TransferLeader { to: req.to }).await?;
    Ok(Reply::ok(req.to).message(format!("node {} is the leader", req.to)))
}

/// One snapshot export at a time per node: each reads the whole state and writes it out.
static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The whole state as a snapshot file (the format a node sends a joining node: header,
/// records, SHA-256), consistent as of a linearizable read through this node: a backup,
/// which `raftcron snapshot restore` seeds a new cluster from. It holds every task secret.
/// `X-Raftcron-Cluster-Id` and `X-Raftcron-Last-Log-Index` say what it covers.
#[utoipa::path(
    get, path = "/api/cluster/snapshot", tag = "cluster",
    responses(
        (status = 200, description = "the snapshot file", content_type = "application/octet-stream"),
        (status = 401), (status = 403), (status = 503, description = "no quorum, or an export is already running on this node"),
    ),
    security(("bearer" = []))
)]
async fn save_snapshot(State(core): State<Arc<NodeCore>>) -> Result<axum::response::Response, ApiError> {
    // Held until the body is sent or dropped (and by the file's write if the client
    // leaves before it is done): the unlinked file of an export holds disk until then.
    let permit = EXPORTS.try_acquire().map_err(|_| {
        ApiError::Unavailable("a snapshot export is already running on this node; retry when it is done".into())
    })?;
    core.linearize().await?;
    let (store, path) = (core.store.clone(), core.snapshot_dir.join(crate::storage::temp_name("export")));
    let (file, meta, permit) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let written = crate::storage::write_snapshot_file(&store, &path);
        // Open to read, then unlink: the response streams from the open file, and nothing
        // is left behind however the download ends.
        let file = written.and_then(|(_, meta)| Ok((std::fs::File::open(&path)?, meta)));
        let _ = std::fs::remove_file(&path);
        let (file, meta) = file?;
        Ok((file, meta, permit))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("snapshot export: {e}")))??;
    let len = file.metadata()?.len();
    let chunks = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
    let body = axum::body::Body::from_stream(futures::StreamExt::map(chunks, move |chunk| {
        let _held = &permit;
        chunk
    }));
    let mut resp = axum::response::Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    headers.insert(axum::http::header::CONTENT_LENGTH, len.into());
    if let Some(id) = core.store.cluster_id()?.and_then(|id| axum::http::HeaderValue::from_str(&id).ok()) {
        headers.insert("x-raftcron-cluster-id", id);
    }
    headers.insert("x-raftcron-last-log-index", meta.last_log_id.map_or(0, |l| l.index).into());
    Ok(resp)
}
