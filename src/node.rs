//! One cluster node, wired: RocksDB storage, the Raft instance, the tarpc server, the REST
//! API, bootstrap, and the write/read paths that make any node serve everything (writes
//! forwarded to the leader, reads linearized through the leader's read index).

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{HeartbeatAck, HeartbeatBody, Principal, Seen};
use crate::raft::{Command, IdempotencyKey, NodeId, NodeInfo, Raft, Request, Response, TypeConfig};
use crate::rpc::{self, context, Identity, MembershipOp, NodeStatus, PeerClients, RpcFailure, RpcServer};
use crate::storage::{open_db, LogStore, StateMachine, Store};

/// How long a client write may take, forwarding and leader changes included, before the
/// API answers 503 (never proposed) or 504 (outcome unknown).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long one proposal on the leader may take before its outcome counts as unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a linearizable read waits for a leader and its read index.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node being added has to answer the leader.
const ADMIT_PATIENCE: Duration = Duration::from_secs(5);
/// How long an add waits for the new learner to catch up before answering that it is
/// still catching up (within the forwarding RPC's deadline).
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(8);
/// How long a membership entry may take to commit before the answer is "unknown" (504):
/// a change that needs a node that is down (a joint configuration without its quorum)
/// never holds a request open.
const MEMBERSHIP_PATIENCE: Duration = Duration::from_secs(5);

fn membership_unknown(after: Duration) -> RpcFailure {
    RpcFailure::Indeterminate(format!(
        "the membership change did not commit within {} s (is a member down?); it may still: check GET /api/cluster",
        after.as_secs()
    ))
}

/// A membership change's commit, within [`MEMBERSHIP_PATIENCE`].
async fn bounded<T, E>(
    change: impl std::future::Future<Output = Result<T, E>>,
    map: impl Fn(E) -> RpcFailure,
) -> Result<T, RpcFailure> {
    match tokio::time::timeout(MEMBERSHIP_PATIENCE, change).await {
        Ok(r) => r.map_err(map),
        Err(_) => Err(membership_unknown(MEMBERSHIP_PATIENCE)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Tls(#[from] crate::rpc::transport::TlsFileError),
}

/// The state every part of a node shares.
pub struct NodeCore {
    pub id: NodeId,
    pub config: Config,
    pub raft: Raft,
    pub store: Store,
    pub identity: Identity,
    pub peers: PeerClients,
    pub metrics: Metrics,
    pub auth: Auth,
    pub rate_limiter: crate::api::admission::RateLimiter,
    pub started_at: Instant,
    pub http_addr: String,
    pub rpc_addr: String,
    /// A snapshot arriving in chunks, written to a file as they come.
    pub incoming_snapshot: tokio::sync::Mutex<Option<crate::storage::IncomingSnapshot>>,
    /// Where snapshot files live (`<data_dir>/snapshot`).
    pub snapshot_dir: std::path::PathBuf,
    /// Set while this node's data dir is empty but the cluster remembers replicating to it:
    /// it must be removed and re-added, not silently rejoin (it may have voted before).
    pub quarantined: AtomicBool,
    /// The leader's memory of worker heartbeats (not replicated).
    pub heartbeats: crate::scheduler::workers::Heartbeats,
    /// The leader this node last accepted an append (a heartbeat) from, and when. With
    /// pre-vote a follower whose leader is gone keeps that leader's vote until someone
    /// wins an election, so openraft's `current_leader` alone would name a dead leader.
    pub leader_contact: std::sync::Mutex<Option<(NodeId, Instant)>>,
    /// The last command time this node stamped; held while a proposal is stamped and
    /// handed to Raft, so log order is stamp order (see [`NodeCore::propose_local`]).
    stamp: tokio::sync::Mutex<DateTime<Utc>>,
}

/// A started node; dropping it does not stop it, [`RunningNode::shutdown`] does.
pub struct RunningNode {
    pub core: Arc<NodeCore>,
    pub http_addr: std::net::SocketAddr,
    pub rpc_addr: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    http_shutdown: watch::Sender<bool>,
    http_task: Option<JoinHandle<()>>,
}

/// Already-bound sockets, so callers (and tests, on port 0) choose the addresses.
pub struct Listeners {
    pub http: TcpListener,
    pub rpc: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let http = TcpListener::bind(&config.node.http_addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {} (node.http_addr): {e}", config.node.http_addr))
        })?;
        let rpc = TcpListener::bind(&config.node.rpc_addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {} (node.rpc_addr): {e}", config.node.rpc_addr))
        })?;
        Ok(Listeners { http, rpc })
    }
}

/// Starts a node on the given listeners. `extra_keys` are admin API keys given outside the
/// config file (`RAFTCRON_API_KEY`, the key `raftcron dev` generates).
pub async fn start(mut config: Config, listeners: Listeners, extra_keys: &[String]) -> Result<RunningNode, NodeError> {
    let http_addr = listeners.http.local_addr()?;
    let rpc_addr = listeners.rpc.local_addr()?;
    // With port 0 the real port is known only now.
    if config.node.advertise_http.is_none() {
        config.node.advertise_http = Some(http_addr.to_string());
    }
    if config.node.advertise_rpc.is_none() {
        config.node.advertise_rpc = Some(rpc_addr.to_string());
    }
    config.require_member_authentication()?;
    let secret = config.cluster_secret()?;
    let reused = config.auth.api_keys.iter().any(|k| k.hash() == crate::config::hash_api_key(&secret))
        || extra_keys.contains(&secret);
    if !secret.is_empty() && reused {
        // Whoever holds that key (a worker, a script) would also hold the cluster's.
        return Err(NodeError::Config(crate::config::ConfigError::Invalid(
            "cluster.secret: the same as an API key; choose a secret used for nothing else".into(),
        )));
    }
    let security = member_security(&config, &secret)?;
    let db = open_db_retrying(&config.node.data_dir.join("db")).await?;
    let store = Store::new(db.clone());
    let snapshot_dir = config.node.data_dir.join("snapshot");
    let state_machine = StateMachine::new(store.clone(), snapshot_dir.clone())?;
    let log_store = LogStore::new(db.clone()).counting_into(store.log_growth().clone())?;
    let pristine = log_store.is_pristine()?;
    let identity = Identity { id: config.node.id, store: store.clone() };
    let peers = PeerClients::new(security.clone());
    let network = rpc::NetworkFactory::new(identity.clone(), peers.clone());
    let raft_config = openraft::Config {
        cluster_name: "raftcron".into(),
        heartbeat_interval: config.cluster.heartbeat_ms,
        election_timeout_min: config.cluster.election_timeout_ms,
        // Randomized in [t, 1.5t): enough spread to avoid split votes, and a failover bound
        // of a few timeouts.
        election_timeout_max: config.cluster.election_timeout_ms * 3 / 2,
        // crate::compaction decides, weighing the log's growth against the state's size.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.cluster.snapshot_every_entries.min(1000),
        install_snapshot_timeout: 10_000,
        quorum_loss_probe_interval: config.cluster.quorum_loss_probe(),
        // A restarted leader always stands for election again. Resuming its old term without
        // one (openraft's default) is safe only when applies and the commit marker are
        // synced; ours are not (the log is, and replay rebuilds the rest), so a leader back
        // from a power cut could take its old term's read index, below entries it had
        // committed, and serve a stale read. A new term's no-op puts the read index past
        // everything committed before the restart.
        enable_leader_restore: Some(false),
        // Pre-vote: a node asks whether it could win before it bumps its term. Without it, an
        // old leader cut off from all but one "bridge" follower steps down (quorum-loss
        // probe) and then campaigns again and again at ever higher terms; each vote the
        // bridge grants it restarts the bridge's election timer, and the bridge, whose log
        // is the longest of the connected majority (the old leader kept appending to it),
        // refuses everyone else: no leader for as long as the partition lasts (found by the
        // chaos suite's bridge-hold, seed 153230625: terms 6 to 18 all the old leader's).
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().map_err(|e| NodeError::Raft(e.to_string()))?);
    let raft = Raft::new(config.node.id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    // No `wait_for_recovery` here: it waits for a cluster commit, which needs a leader, which
    // may need this very node's RPC server. Linearizable reads are safe without it (they wait
    // for the leader's read index), and `?consistency=local` reads are stale by contract.

    let core = Arc::new(NodeCore {
        id: config.node.id,
        http_addr: config.advertise_http(),
        rpc_addr: config.advertise_rpc(),
        auth: Auth::from_config(&config.auth, extra_keys)?,
        rate_limiter: crate::api::admission::RateLimiter::new(&config.auth),
        metrics: Metrics::new(config.node.id),
        config,
        raft: raft.clone(),
        store,
        identity,
        peers,
        started_at: Instant::now(),
        incoming_snapshot: tokio::sync::Mutex::new(None),
        snapshot_dir,
        // A pristine node stays out of replication and elections until it knows it may
        // take part: its bootstrap initialized the cluster or found that the cluster never
        // replicated to it (static peers), or the leader admitted it (`POST
        // /api/cluster/nodes`). Any member whose data dir was wiped — listed in the static
        // peers or added at runtime — may have voted or acknowledged entries it no longer
        // has, so it must be removed and added again (the leader's `admit`).
        quarantined: AtomicBool::new(pristine),
        heartbeats: Default::default(),
        leader_contact: Default::default(),
        stamp: tokio::sync::Mutex::new(DateTime::<Utc>::MIN_UTC),
    });

    let mut tasks = Vec::new();
    tracing::info!(node_id = core.id, "peers are authenticated by {}", security.describe());
    tasks.push(tokio::spawn(rpc::serve(listeners.rpc, RpcServer::new(core.clone()), security)));
    {
        let core = core.clone();
        tasks.push(tokio::spawn(async move { core.metrics.follow_raft(core.raft.clone()).await }));
    }
    if pristine {
        let core = core.clone();
        tasks.push(tokio::spawn(async move { core.bootstrap().await }));
    }
    {
        let core = core.clone();
        tasks.push(tokio::spawn(async move { core.stamp_cluster_id().await }));
    }
    {
        let core = core.clone();
        tasks.push(tokio::spawn(async move { core.record_replication().await }));
    }
    tasks.push(tokio::spawn(crate::compaction::run(core.clone())));
    tasks.push(tokio::spawn(crate::storage::keep_churn_tidy(core.store.clone())));
    tasks.push(tokio::spawn(crate::scheduler::firing::run(core.clone())));
    tasks.push(tokio::spawn(crate::scheduler::workers::run(core.clone())));
    let (http_shutdown, rx) = watch::channel(false);
    let app = crate::api::router(core.clone());
    let https = match (&core.config.node.http_tls_cert_file, &core.config.node.http_tls_key_file) {
        (Some(cert), Some(key)) => {
            let https = crate::api::listener::HttpsCert::load(cert, key)?;
            tasks.push(crate::api::listener::reload_on_sighup(https.clone()));
            Some(https)
        }
        _ => None,
    };
    let max_connections = core.config.node.http_max_connections;
    let http_task = tokio::spawn(crate::api::listener::serve(listeners.http, app, https, max_connections, rx));
    tracing::info!(node_id = core.id, %http_addr, %rpc_addr, "node started");
    Ok(RunningNode { core, http_addr, rpc_addr, tasks, http_shutdown, http_task: Some(http_task) })
}

/// Why one attempt to forward a write to the leader failed.
enum Forwarding {
    /// Worth another attempt (with another leader, or after a while); `maybe_sent`: the
    /// write may be in the leader's log.
    Retry { maybe_sent: bool, reason: String },
    /// The leader's answer stands (it refused the caller).
    Final(RpcFailure),
}

/// How this node authenticates its peers and itself to them (see `rpc::transport`).
fn member_security(config: &Config, secret: &str) -> Result<rpc::Security, NodeError> {
    let c = &config.cluster;
    let tls = match (&c.tls_ca_file, &c.tls_cert_file, &c.tls_key_file) {
        (Some(ca), Some(cert), Some(key)) => Some(rpc::transport::MutualTls::from_files(ca, cert, key)?),
        _ => None,
    };
    Ok(rpc::Security::new(config.node.id, secret, tls))
}

/// RocksDB's lock is released only when the previous instance (in this process, a test's
/// killed node) has dropped its last handle; wait briefly for that instead of failing.
async fn open_db_retrying(dir: &std::path::Path) -> std::io::Result<Arc<rocksdb::DB>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open_db(dir) {
            Ok(db) => return Ok(db),
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl RunningNode {
    /// Stops the node. With `handover`, a leader first transfers leadership to a caught-up
    /// voter (what SIGTERM does), so the cluster does not wait out an election timeout.
    pub async fn shutdown(mut self, handover: bool) {
        if handover {
            self.core.hand_over_leadership().await;
        }
        let _ = self.http_shutdown.send(true);
        if let Some(t) = self.http_task.take() {
            if tokio::time::timeout(Duration::from_secs(3), t).await.is_err() {
                tracing::warn!("http connections did not close in 3s");
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!(node_id = self.core.id, "node stopped");
    }

    /// Stops abruptly, as close to a crash as one process can get for one node: no
    /// handover, no graceful drain. Acknowledged writes are on disk already.
    pub async fn kill(mut self) {
        if let Some(t) = self.http_task.take() {
            t.abort();
            let _ = t.await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let _ = self.core.raft.shutdown().await;
    }
}

impl NodeCore {
    /// The leader as this node knows it: itself while it leads, or the leader it heard
    /// from within the last election timeout and a half (openraft's follower lease); `None`
    /// otherwise.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_of(self.raft.metrics().borrow_watched().current_leader)
    }

    fn leader_of(&self, current: Option<NodeId>) -> Option<NodeId> {
        let leader = current?;
        if leader == self.id {
            return Some(leader);
        }
        let lease = Duration::from_millis(self.config.cluster.election_timeout_ms * 3 / 2);
        match *self.leader_contact.lock().expect("leader contact poisoned") {
            Some((id, at)) if id == leader && at.elapsed() <= lease => Some(leader),
            _ => None,
        }
    }

    /// Called for every append this node accepted (any answer but a higher vote).
    pub fn heard_from_leader(&self, leader: NodeId) {
        *self.leader_contact.lock().expect("leader contact poisoned") = Some((leader, Instant::now()));
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// On a leader that has not heard from a quorum within the election timeout (it may be
    /// cut off; openraft keeps such a node in the leader state): how long it has been, or
    /// `Duration::MAX` when no quorum ever acknowledged it. `None` on a healthy leader, a
    /// sole voter, or a node that does not lead.
    pub fn leader_out_of_touch(&self) -> Option<Duration> {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id) || m.membership_config.voter_ids().count() <= 1 {
            return None;
        }
        let age = m.last_quorum_acked.map_or(Duration::MAX, |t| t.elapsed());
        (age > Duration::from_millis(self.config.cluster.election_timeout_ms)).then_some(age)
    }

    fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        self.raft.metrics().borrow_watched().membership_config.get_node(&id).cloned()
    }

    /// Waits until the leader (as this node knows it) changes or `limit` passes.
    async fn await_leader_change(&self, known: Option<NodeId>, limit: Duration) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(limit, async {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                if rx.borrow_watched().current_leader != known {
                    return;
                }
            }
        })
        .await;
    }

    /// Resolves once this node knows a leader other than `leader` (not merely none): the
    /// moment to stop waiting on a call to `leader`, which may be paused or cut off.
    async fn leader_replaced(&self, leader: NodeId) {
        let mut rx = self.raft.metrics();
        loop {
            if rx.borrow_watched().current_leader.is_some_and(|l| l != leader) {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Proposes on this node, which must be the leader.
    ///
    /// Command time is stamped here, the one entry point for local and forwarded writes
    /// and the leader's own commands: `issued_at = max(this clock, the last stamp, the
    /// last applied command time)`, taken under a lock that is held until the entry is
    /// handed to Raft, so log order is stamp order. A follower's clock therefore never
    /// enters command time, however fast it runs; a leader's clock does, and a leader
    /// whose clock runs ahead fires that much early (see README, "Schedules").
    pub async fn propose_local(&self, req: Request) -> Result<Response, RpcFailure> {
        self.propose_stamped(req, None).await
    }

    /// [`Self::propose_local`], with command time at least `not_before`: the leader's own
    /// `Fire`, planned at `not_before` for ticks up to it, so no run is ever created
    /// before its tick even when this clock steps back between the plan and the stamp.
    pub async fn propose_not_before(&self, req: Request, not_before: DateTime<Utc>) -> Result<Response, RpcFailure> {
        self.propose_stamped(req, Some(not_before)).await
    }

    async fn propose_stamped(&self, mut req: Request, floor: Option<DateTime<Utc>>) -> Result<Response, RpcFailure> {
        use openraft::errors::ClientWriteError;
        use openraft::impls::ProgressResponder;
        let started = Instant::now();
        let hand_over = async {
            let mut last = self.stamp.lock().await;
            let applied = self.store.clock().ok().flatten().unwrap_or(DateTime::<Utc>::MIN_UTC);
            let stamp = Utc::now().max(*last).max(applied).max(floor.unwrap_or(DateTime::<Utc>::MIN_UTC));
            *last = stamp;
            req.issued_at = stamp;
            let (responder, rx) = ProgressResponder::complete_only();
            self.raft.client_write_ff(req, Some(responder)).await.map(|()| rx)
        };
        // Sending to Raft is cancel-safe: a timeout here means the entry was not handed over.
        let rx = match tokio::time::timeout(PROPOSE_TIMEOUT, hand_over).await {
            Ok(Ok(rx)) => rx,
            Ok(Err(e)) => {
                self.metrics.proposals.with_label_values(&["fatal"]).inc();
                return Err(RpcFailure::Unavailable(format!("raft stopped: {e}")));
            }
            Err(_) => {
                self.metrics.proposals.with_label_values(&["timeout"]).inc();
                return Err(RpcFailure::Unavailable("raft did not take the write in time".into()));
            }
        };
        let remaining = PROPOSE_TIMEOUT.saturating_sub(started.elapsed());
        let (label, out) = match tokio::time::timeout(remaining, rx).await {
            Err(_) => ("timeout", Err(RpcFailure::Indeterminate("the proposal did not commit in time".into()))),
            Ok(Ok(Ok(resp))) => ("ok", Ok(resp.data)),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                ("not_leader", Err(RpcFailure::NotLeader(f.leader_id)))
            }
            Ok(Ok(Err(ClientWriteError::LogEntryDiscarded(_)))) => {
                ("discarded", Err(RpcFailure::Indeterminate("leadership changed while the write was in flight".into())))
            }
            Ok(Ok(Err(e))) => ("error", Err(RpcFailure::Unavailable(e.to_string()))),
            // Raft stopped (shutdown, a crash) with the write handed to it: it may have
            // been appended and replicated, and a later leader may commit it. Never say 503
            // ("not applied") for that.
            Ok(Err(_)) => ("fatal", Err(RpcFailure::Indeterminate("raft stopped with the write in flight".into()))),
        };
        self.metrics.proposals.with_label_values(&[label]).inc();
        if label == "ok" {
            self.metrics.proposal_latency.observe(started.elapsed().as_secs_f64());
        }
        out
    }

    /// Builds a request (its command time is stamped by the leader that proposes it).
    /// Every client write carries an idempotency key: the client's, or one this node
    /// makes, so that its own retries across a leader change can never apply twice.
    pub fn request(&self, command: Command, idempotency: Option<IdempotencyKey>) -> Request {
        let idempotency = idempotency.or_else(|| {
            Some(IdempotencyKey {
                scope: format!("node-{}", self.id),
                key: uuid::Uuid::new_v4().to_string(),
                fingerprint: String::new(),
                ttl_ms: crate::raft::apply::INTERNAL_IDEMPOTENCY_TTL_MS,
                client: false,
            })
        });
        Request { issued_at: Utc::now(), idempotency, command }
    }

    /// A request for a command the leader makes for itself whose apply is idempotent on
    /// its own (`Fire` is a compare-and-set, `InitCluster` is set-once): no idempotency
    /// record, so a per-second task does not leave 86,400 of them a day.
    pub fn internal_request(&self, command: Command) -> Request {
        Request { issued_at: Utc::now(), idempotency: None, command }
    }

    /// Commits a write through whichever node leads, retrying across leader changes until
    /// [`WRITE_DEADLINE`]. Fails with `Unavailable` if it was certainly never proposed and
    /// `Indeterminate` if it may have been. `who` asked for it: the command must be one its
    /// role allows (checked here, and again by the leader when forwarded).
    pub async fn write(&self, who: &Principal, req: Request) -> Result<Response, RpcFailure> {
        req.command.authorize(who).map_err(RpcFailure::Forbidden)?;
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut maybe_proposed = false;
        let mut last_error = String::from("no leader elected");
        loop {
            let leader = self.leader();
            match leader {
                Some(id) if id == self.id => match self.propose_local(req.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(RpcFailure::NotLeader(_)) => {}
                    Err(RpcFailure::Indeterminate(m)) => {
                        maybe_proposed = true;
                        last_error = m;
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Some(id) => match self.forward_write(id, who, req.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(Forwarding::Final(e)) => return Err(e),
                    Err(Forwarding::Retry { maybe_sent, reason }) => {
                        maybe_proposed |= maybe_sent;
                        last_error = reason;
                    }
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(if maybe_proposed {
                    RpcFailure::Indeterminate(last_error)
                } else {
                    RpcFailure::Unavailable(last_error)
                });
            }
            self.await_leader_change(leader, Duration::from_millis(200)).await;
        }
    }

    /// One forwarding attempt. A failure says whether the request may have reached the
    /// leader's log, or that asking again would change nothing.
    async fn forward_write(&self, leader: NodeId, who: &Principal, req: Request) -> Result<Response, Forwarding> {
        let retry = |maybe_sent: bool, reason: String| Forwarding::Retry { maybe_sent, reason };
        let Some(info) = self.node_info(leader) else {
            return Err(retry(false, format!("leader {leader} is not in this node's membership view")));
        };
        let client = self.peers.get(leader, &info.rpc_addr).await.map_err(|e| retry(false, e.to_string()))?;
        self.metrics.forwarded_writes.inc();
        // A leader that stops answering (paused, cut off) is replaced within an election
        // timeout or two; waiting for this call's own timeout would hold the client for
        // seconds longer. Given up, the write may still sit in the old leader's log, so
        // it counts as maybe proposed, and the retry carries the same idempotency key.
        let ctx = context(PROPOSE_TIMEOUT + Duration::from_secs(1));
        let call = client.forward_write(ctx, self.identity.header(), who.clone(), req);
        let answer = tokio::select! {
            answer = call => answer,
            () = self.leader_replaced(leader) => {
                return Err(retry(true, format!("leader {leader} was replaced while the write was forwarded to it")));
            }
        };
        match answer {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(RpcFailure::NotLeader(_))) => Err(retry(false, format!("node {leader} is no longer the leader"))),
            Ok(Err(RpcFailure::Indeterminate(m))) => Err(retry(true, m)),
            // The leader refused the caller: asking again changes nothing.
            Ok(Err(e @ RpcFailure::Forbidden(_))) => Err(Forwarding::Final(e)),
            Ok(Err(e)) => Err(retry(false, e.to_string())),
            Err(e) => {
                self.peers.forget(&info.rpc_addr).await;
                Err(retry(rpc::maybe_sent(&e), format!("forwarding to leader {leader} failed: {e}")))
            }
        }
    }

    /// On the leader: confirms leadership with a quorum, returns the read index.
    pub async fn read_index_local(&self) -> Result<u64, RpcFailure> {
        use openraft::errors::{LinearizableReadError, RaftError};
        match tokio::time::timeout(RPC_TIMEOUT, self.raft.get_read_log_id(ReadPolicy::ReadIndex)).await {
            Err(_) => Err(RpcFailure::Unavailable("leadership not confirmed in time".into())),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(RpcFailure::NotLeader(f.leader_id))
            }
            Ok(Err(e)) => Err(RpcFailure::Unavailable(e.to_string())),
        }
    }

    /// Makes the following local read linearizable: obtains the read index (from the leader
    /// over RPC when this node follows) and waits until this node applied it.
    pub async fn linearize(&self) -> Result<(), RpcFailure> {
        let deadline = Instant::now() + READ_DEADLINE;
        let mut last_error;
        loop {
            let leader = self.leader();
            let index = match leader {
                Some(id) if id == self.id => self.read_index_local().await,
                Some(id) => self.remote_read_index(id).await,
                None => Err(RpcFailure::Unavailable("no leader".into())),
            };
            match index {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                    return self.wait_applied(index, remaining).await;
                }
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(RpcFailure::Unavailable(last_error));
            }
            self.await_leader_change(leader, Duration::from_millis(200)).await;
        }
    }

    /// Waits until this node applied `index` (a read index), for at most `within`.
    async fn wait_applied(&self, index: u64, within: Duration) -> Result<(), RpcFailure> {
        self.raft
            .wait(Some(within))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| RpcFailure::Unavailable(format!("this node did not catch up for the read: {e}")))
    }

    async fn remote_read_index(&self, leader: NodeId) -> Result<u64, RpcFailure> {
        let info = self.node_info(leader).ok_or_else(|| RpcFailure::Unavailable(format!("leader {leader} unknown")))?;
        let client =
            self.peers.get(leader, &info.rpc_addr).await.map_err(|e| RpcFailure::Unavailable(e.to_string()))?;
        let answer = tokio::select! {
            answer = client.read_index(context(RPC_TIMEOUT), self.identity.header()) => answer,
            () = self.leader_replaced(leader) => {
                return Err(RpcFailure::Unavailable(format!("leader {leader} was replaced during the read")));
            }
        };
        match answer {
            Ok(r) => r,
            Err(e) => {
                self.peers.forget(&info.rpc_addr).await;
                Err(RpcFailure::Unavailable(format!("read index from leader {leader}: {e}")))
            }
        }
    }

    /// Runs a call on the leader: `local` when this node leads, otherwise `remote` with a
    /// client to the leader. Retried across leader changes while the answer is
    /// `NotLeader` or `Unavailable`, until `within` has passed.
    async fn on_leader<T, LF, RF>(
        &self,
        within: Duration,
        local: impl Fn() -> LF,
        remote: impl Fn(rpc::ClusterServiceClient) -> RF,
    ) -> Result<T, RpcFailure>
    where
        LF: std::future::Future<Output = Result<T, RpcFailure>>,
        RF: std::future::Future<Output = Result<T, RpcFailure>>,
    {
        let deadline = Instant::now() + within;
        loop {
            let leader = self.leader();
            let res = match leader {
                Some(id) if id == self.id => local().await,
                Some(id) => match self.leader_client(id).await {
                    Ok(client) => remote(client).await,
                    Err(e) => Err(e),
                },
                None => Err(RpcFailure::Unavailable("no leader".into())),
            };
            match res {
                Err(RpcFailure::NotLeader(_)) | Err(RpcFailure::Unavailable(_)) if Instant::now() < deadline => {
                    self.await_leader_change(leader, Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn leader_client(&self, leader: NodeId) -> Result<rpc::ClusterServiceClient, RpcFailure> {
        let info = self.node_info(leader).ok_or_else(|| RpcFailure::Unavailable(format!("leader {leader} unknown")))?;
        self.peers.get(leader, &info.rpc_addr).await.map_err(|e| RpcFailure::Unavailable(e.to_string()))
    }

    /// A worker's heartbeat, delivered to the leader (forwarded when this node follows),
    /// retried across a leader change for a few seconds. `Ok(None)`: not registered.
    pub async fn worker_heartbeat(
        &self,
        worker: &str,
        body: HeartbeatBody,
    ) -> Result<Option<HeartbeatAck>, RpcFailure> {
        let local = || {
            let body = body.clone();
            async move { crate::scheduler::workers::heartbeat_local(self, worker, body).await }
        };
        let remote = |c: rpc::ClusterServiceClient| {
            let (hdr, body) = (self.identity.header(), body.clone());
            async move {
                c.worker_heartbeat(context(RPC_TIMEOUT), hdr, worker.to_string(), body)
                    .await
                    .unwrap_or_else(|e| Err(RpcFailure::Unavailable(e.to_string())))
            }
        };
        self.on_leader(RPC_TIMEOUT, local, remote).await
    }

    /// The leader's memory of heartbeats (empty when no leader answers).
    pub async fn worker_heartbeats(&self) -> BTreeMap<String, Seen> {
        let local = || async { Ok(self.heartbeats.snapshot()) };
        let remote = |c: rpc::ClusterServiceClient| {
            let hdr = self.identity.header();
            async move {
                c.worker_heartbeats(context(RPC_TIMEOUT), hdr)
                    .await
                    .unwrap_or_else(|e| Err(RpcFailure::Unavailable(e.to_string())))
            }
        };
        self.on_leader(Duration::ZERO, local, remote).await.unwrap_or_default()
    }

    /// Membership changes run on the leader; a follower forwards them.
    pub async fn change_membership(&self, op: MembershipOp) -> Result<rpc::MembershipDone, RpcFailure> {
        let local = || self.change_membership_local(op.clone());
        let remote = |c: rpc::ClusterServiceClient| {
            let (hdr, op) = (self.identity.header(), op.clone());
            async move {
                c.change_membership(context(WRITE_DEADLINE * 2), hdr, op)
                    .await
                    .unwrap_or_else(|e| Err(RpcFailure::Indeterminate(e.to_string())))
            }
        };
        self.on_leader(WRITE_DEADLINE * 3, local, remote).await
    }

    /// Makes a membership change on this node, the leader, within a bound: an added node
    /// must answer within [`ADMIT_PATIENCE`], and one still catching up after
    /// [`CATCH_UP_PATIENCE`] stays a learner ([`rpc::MembershipDone::CatchingUp`]) rather
    /// than holding the request open.
    pub async fn change_membership_local(&self, op: MembershipOp) -> Result<rpc::MembershipDone, RpcFailure> {
        use openraft::errors::{ClientWriteError, RaftError};
        use rpc::MembershipDone::{CatchingUp, Done};
        let map = |e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RpcFailure::NotLeader(f.leader_id),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => RpcFailure::Invalid(e.to_string()),
            other => RpcFailure::Unavailable(other.to_string()),
        };
        match op {
            MembershipOp::AddVoter { id, node } => {
                let voters: Vec<NodeId> = self.raft.metrics().borrow_watched().membership_config.voter_ids().collect();
                if voters.contains(&id) {
                    return Ok(Done);
                }
                // Adding a node is the operator's consent to (re)admit it, also if it
                // quarantined itself after losing its data dir.
                let addr = node.rpc_addr.clone();
                let admit = async {
                    let client = self.peers.get(id, &addr).await.map_err(|e| e.to_string())?;
                    client.admit(context(RPC_TIMEOUT), self.identity.header()).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(ADMIT_PATIENCE, admit).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => return Err(RpcFailure::Invalid(format!("node {id} refused to join: {e}"))),
                    Ok(Err(e)) => {
                        return Err(RpcFailure::Invalid(format!(
                            "node {id} at {addr} did not answer ({e}): check the address and that it runs"
                        )))
                    }
                    Err(_) => {
                        return Err(RpcFailure::Invalid(format!(
                            "node {id} at {addr} did not answer within {} s: check the address and that it runs",
                            ADMIT_PATIENCE.as_secs()
                        )))
                    }
                }
                // Blocking add: returns once the learner has caught up, so promoting it
                // never stalls commits on a node that is far behind. A long catch-up (a
                // big snapshot) is not waited for: the learner stays, and the request
                // repeated promotes it.
                match tokio::time::timeout(CATCH_UP_PATIENCE, self.raft.add_learner(id, node, true)).await {
                    Ok(r) => r.map_err(map)?,
                    // A learner now (its entry committed) is catching up; otherwise even
                    // that entry did not commit in time, and may still.
                    Err(_) if self.raft.metrics().borrow_watched().membership_config.get_node(&id).is_some() => {
                        return Ok(CatchingUp)
                    }
                    Err(_) => return Err(membership_unknown(CATCH_UP_PATIENCE)),
                };
                bounded(self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false), map).await?;
                Ok(Done)
            }
            MembershipOp::Remove { id } => {
                let m = self.raft.metrics().borrow_watched().membership_config.clone();
                let voters: Vec<NodeId> = m.voter_ids().collect();
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(RpcFailure::Invalid("cannot remove the last voter".into()));
                    }
                    bounded(self.raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false), map).await?;
                } else if m.get_node(&id).is_some() {
                    bounded(self.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false), map).await?;
                } else {
                    return Err(RpcFailure::Invalid(format!("node {id} is not a member")));
                }
                Ok(Done)
            }
            MembershipOp::TransferLeader { to } => {
                let voters: Vec<NodeId> = self.raft.metrics().borrow_watched().membership_config.voter_ids().collect();
                if !voters.contains(&to) {
                    return Err(RpcFailure::Invalid(format!("node {to} is not a voter")));
                }
                if to == self.id {
                    return Ok(Done);
                }
                self.raft.trigger().transfer_leader(to).await.map_err(|e| RpcFailure::Unavailable(e.to_string()))?;
                // A transfer is one vote round; the floor is for a loaded cluster.
                let patience =
                    Duration::from_millis(3 * self.config.cluster.election_timeout_ms).max(Duration::from_secs(2));
                self.await_leader_change(Some(self.id), patience).await;
                // openraft's own view: the filtered `leader()` may not have recorded the
                // new leader's first heartbeat yet.
                if self.raft.metrics().borrow_watched().current_leader == Some(to) {
                    Ok(Done)
                } else {
                    Err(RpcFailure::Unavailable(format!("node {to} did not take over in time")))
                }
            }
        }
    }

    pub fn status(&self, with_digest: bool) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatus {
            node_id: self.id,
            role: role.into(),
            leader_id: self.leader_of(m.current_leader),
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            http_addr: self.http_addr.clone(),
            rpc_addr: self.rpc_addr.clone(),
            cluster_id: self.store.cluster_id().ok().flatten(),
            state_digest: with_digest.then(|| self.store.digest().ok()).flatten(),
            quarantined: self.quarantined.load(Ordering::SeqCst),
        }
    }

    /// Static bootstrap, run only on a node whose storage is empty: once a quorum of the
    /// configured peers answers and none of them belongs to a formed cluster, initialize
    /// with all configured peers as voters. Every pristine peer does the same with the
    /// same membership, which openraft allows. A pristine node that a formed cluster has already
    /// replicated to lost its data: it stays quarantined until removed.
    async fn bootstrap(self: Arc<Self>) {
        let Ok(peers) = self.config.peers() else { return };
        if peers.is_empty() {
            return;
        }
        let quorum = peers.len() / 2 + 1;
        let mut warned = false;
        loop {
            if self.raft.is_initialized().await.unwrap_or(true) {
                self.quarantined.store(false, Ordering::SeqCst);
                return;
            }
            let mut reachable = 0;
            let mut formed = None;
            for peer in &peers {
                if peer.id == self.id {
                    reachable += 1;
                    continue;
                }
                let Ok(client) = self.peers.get(peer.id, &peer.rpc_addr).await else { continue };
                match client.node_status(context(Duration::from_secs(1)), self.identity.header(), false).await {
                    Ok(Ok(st)) => {
                        if st.cluster_id.is_some() || st.leader_id.is_some() {
                            formed = Some(st.clone());
                        }
                        reachable += 1;
                    }
                    _ => self.peers.forget(&peer.rpc_addr).await,
                }
            }
            if let Some(st) = formed {
                // Unknown (no leader to ask right now) keeps the current state.
                // The decision only ever lifts the quarantine: once lifted, the cluster may
                // replicate to this node, and that must not put it back.
                let verdict = self.leader_replicated_to_me(&st).await;
                tracing::debug!(node_id = self.id, ?verdict, leader = ?st.leader_id, "bootstrap: formed cluster found");
                match verdict {
                    Some(false) => self.quarantined.store(false, Ordering::SeqCst),
                    Some(true) if self.quarantined.load(Ordering::SeqCst) && !warned => {
                        warned = true;
                        tracing::error!(
                            node_id = self.id,
                            "this node's data dir is empty but the cluster has replicated to it before; \
                             remove it (DELETE /api/cluster/nodes/{}) and add it again",
                            self.id
                        );
                    }
                    _ => {}
                }
                // A formed cluster that has not reached this node yet will replicate to it.
            } else if reachable >= quorum {
                // Always the whole configured peer list, identical on every node: nodes that
                // initialized with whichever peers they happened to reach formed clusters
                // with different voter sets (found by the chaos suite). The HTTP address is
                // left empty here for the same reason; each node reports its own.
                let members: BTreeMap<NodeId, NodeInfo> = peers
                    .iter()
                    .map(|p| (p.id, NodeInfo { rpc_addr: p.rpc_addr.clone(), http_addr: String::new() }))
                    .collect();
                match self.raft.initialize(members).await {
                    Ok(()) => tracing::info!(peers = peers.len(), "bootstrapped cluster"),
                    Err(e) => tracing::info!(error = %e, "bootstrap: initialize declined"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asks the leader named in `st` whether the cluster has ever replicated to this node;
    /// `None` when that cannot be learned right now.
    async fn leader_replicated_to_me(&self, st: &NodeStatus) -> Option<bool> {
        let leader = st.leader_id?;
        let peers = self.config.peers().ok()?;
        let addr = peers.iter().find(|p| p.id == leader).map(|p| p.rpc_addr.clone())?;
        let client = self.peers.get(leader, &addr).await.ok()?;
        match client.replicated_to(context(Duration::from_secs(1)), self.identity.header(), self.id).await {
            Ok(Ok(replicated)) => Some(replicated),
            _ => None,
        }
    }

    /// On the leader: whether the cluster has replicated to `node` — recorded in the state
    /// machine (`MarkReplicated`, so any later leader knows it too), or seen by this leader
    /// and not recorded yet. The record is read linearizably: a new leader that has not
    /// applied its predecessor's `MarkReplicated` yet must not answer "never".
    pub async fn replicated_to(&self, node: NodeId) -> Result<bool, RpcFailure> {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.id) {
            return Err(RpcFailure::NotLeader(leader));
        }
        // This node's own read index (refused unless it still leads), then its replication
        // view, which only a leader has: a node deposed meanwhile must not answer.
        self.wait_applied(self.read_index_local().await?, RPC_TIMEOUT).await?;
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id) {
            return Err(RpcFailure::NotLeader(m.current_leader));
        }
        let recorded = self.store.replicated_members().map_err(|e| RpcFailure::Unavailable(e.to_string()))?;
        let matched = m.replication.as_ref().and_then(|r| r.get(&node).cloned().flatten()).is_some();
        Ok(recorded.contains(&node) || matched)
    }

    /// While leading: records every member the leader has replicated to (and itself) that
    /// the state machine does not list yet. Runs on every node, acts only while leading.
    async fn record_replication(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        loop {
            let m = rx.borrow_watched().clone();
            if m.current_leader == Some(self.id) {
                let mut reached: Vec<NodeId> = m
                    .replication
                    .as_ref()
                    .map(|r| r.iter().filter(|(_, l)| l.is_some()).map(|(id, _)| *id).collect())
                    .unwrap_or_default();
                reached.push(self.id);
                let recorded = self.store.replicated_members().unwrap_or_default();
                reached.retain(|id| !recorded.contains(id));
                reached.sort_unstable();
                reached.dedup();
                if !reached.is_empty() {
                    let req = self.internal_request(Command::MarkReplicated { nodes: reached });
                    if let Err(e) = self.propose_local(req).await {
                        tracing::debug!(error = %e, "replicated members not recorded yet");
                    }
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            // Metrics change with every entry; look at most twice a second.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The first leader of a cluster fixes its id; nodes then refuse RPCs from any other
    /// cluster. Runs on every node, acts only while leading and only once.
    async fn stamp_cluster_id(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        loop {
            if matches!(self.store.cluster_id(), Ok(Some(_))) {
                return;
            }
            if self.is_leader() {
                let req = self.internal_request(Command::InitCluster { cluster_id: uuid::Uuid::new_v4().to_string() });
                if let Err(e) = self.propose_local(req).await {
                    tracing::debug!(error = %e, "cluster id not stamped yet");
                }
            }
            // Woken by leadership changes, and polled too: a new leader may see no metrics
            // change after it first looked.
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Transfers leadership to the most caught-up other voter that acknowledged a heartbeat
    /// within the last election timeout, if this node leads.
    pub async fn hand_over_leadership(&self) {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id) {
            return;
        }
        let fresh = Duration::from_millis(self.config.cluster.election_timeout_ms);
        let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
        let acked_recently = |id: &NodeId| {
            m.heartbeat.as_ref().and_then(|h| h.get(id).cloned().flatten()).is_some_and(|t| t.elapsed() < fresh)
        };
        let best = m.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.id && voters.contains(id) && acked_recently(id))
                .max_by_key(|(_, l)| l.as_ref().map(|l| l.index))
                .map(|(id, _)| *id)
        });
        let Some(to) = best else {
            tracing::info!("no caught-up voter to hand leadership to");
            return;
        };
        tracing::info!(to, "handing over leadership before shutdown");
        if let Err(e) = self.change_membership_local(MembershipOp::TransferLeader { to }).await {
            tracing::warn!(error = %e, "leadership handover failed; followers will elect after the timeout");
        }
    }
}
