//! What reaches a node's RPC port without the cluster's credential, and what crosses the
//! wire with it (`rpc::transport`): forged Raft messages and forwarded writes are refused
//! before a frame is read and change nothing; a member's forwarded write is checked
//! against its caller's role by the leader; the secret never travels, in any form.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use raftcron::config::Role;
use raftcron::model::{Principal, TaskField, TaskSpec};
use raftcron::raft::{Command, Request};
use raftcron::rpc::{context, ClusterServiceClient, Header, PeerClients, RpcFailure, Security};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};
use tarpc::serde_transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fixture::{Opts, TestCluster};

const SECRET: &str = "test-cluster-secret";

/// Term, last log index and state digest of every node, once the leader's own first
/// entries (cluster id, replicated members) are in and nothing moved for a while.
async fn settled(c: &TestCluster) -> Vec<(u64, u64, Option<u64>, Option<String>)> {
    let mut last = state_of(c);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let now = state_of(c);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the cluster never settled: {last:?}");
}

fn state_of(c: &TestCluster) -> Vec<(u64, u64, Option<u64>, Option<String>)> {
    c.running_ids()
        .iter()
        .map(|id| {
            let st = c.core(*id).status(true);
            (*id, st.term, st.last_log_index, st.state_digest)
        })
        .collect()
}

fn create_request(name: &str) -> Request {
    let fields = TaskField::parse_object(json!({"name": name, "executor": "shell", "command": "id"})).unwrap();
    let spec = TaskSpec::from_fields(fields, "UTC").unwrap();
    Request { issued_at: Utc::now(), idempotency: None, command: Command::CreateTask { spec: Box::new(spec) } }
}

fn header(from: u64) -> Header {
    Header { format: raftcron::raft::FORMAT_VERSION, from, cluster_id: None }
}

/// A tarpc client on a raw TCP stream: what a process that skips the handshake sends.
async fn raw_client(addr: SocketAddr) -> ClusterServiceClient {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let framed = LengthDelimitedCodec::builder().new_framed(tcp);
    let transport = serde_transport::new(framed, Bincode::default());
    let tarpc::client::NewClient { client, dispatch } =
        ClusterServiceClient::new(tarpc::client::Config::default(), transport);
    tokio::spawn(dispatch.map(|_| ()));
    client
}

fn refused(c: &TestCluster, id: u64, reason: &str) -> u64 {
    c.core(id).metrics.rpc_refused.with_label_values(&[reason]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_call_without_the_cluster_credential_is_refused_and_changes_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.create_task(leader, "before").await;
    let before = settled(&c).await;
    let addr = c.nodes[&leader].rpc;

    // Skipping the handshake: the acceptor's hello is answered with a tarpc frame, which
    // is not a hello — closed before a frame is decoded.
    let forger_a = raw_client(addr).await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(before[0].1 + 100, 99), None);
    let r = forger_a.vote(context(Duration::from_secs(2)), header(99), vote).await;
    assert!(r.is_err(), "a vote without a handshake was answered: {r:?}");
    let forger_b = raw_client(addr).await;
    let who = Principal { name: "admin".into(), role: Role::Admin };
    let r = forger_b.forward_write(context(Duration::from_secs(2)), header(99), who, create_request("forged")).await;
    assert!(r.is_err(), "a forwarded write without a handshake was answered: {r:?}");
    // A frame shorter than a hello leaves the acceptor waiting for the rest: closing the
    // connection (or the handshake deadline) ends it, counted either way.
    drop((forger_a, forger_b));

    // A wrong secret, and none: refused at the handshake, on both sides.
    for secret in ["a-wrong-secret-0123456789", ""] {
        let err = PeerClients::new(Security::new(99, secret, None)).get(leader, &addr.to_string()).await.err();
        let err = err.expect("a dial with the wrong secret succeeded").to_string();
        assert!(err.contains("secret"), "{err}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raw = refused(&c, leader, "protocol") + refused(&c, leader, "timeout");
    assert!(raw >= 2, "the raw calls were not counted as refused");
    assert!(refused(&c, leader, "secret") >= 2, "the wrong secrets were not counted as refused");
    let after = c.converged_digests(Duration::from_secs(10)).await;
    let now = state_of(&c);
    for ((id, term, last, digest), (_, term2, last2, digest2)) in before.iter().zip(&now) {
        assert_eq!((term, last, digest), (term2, last2, digest2), "node {id} changed: {after:?}");
    }
    let names = c.get(leader, "/api/tasks").await;
    assert!(!names.body.to_string().contains("forged"), "{}", names.body);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_checks_a_forwarded_writes_caller_again() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let before = settled(&c).await;
    // A member (it holds the secret) forwarding writes its callers may not make.
    let peers = PeerClients::new(Security::new(2, SECRET, None));
    let client = peers.get(leader, &c.nodes[&leader].rpc.to_string()).await.expect("a member connects");
    let viewer = Principal { name: "viewer".into(), role: Role::Viewer };
    let worker = Principal { name: "w-1".into(), role: Role::Worker };
    let admin = Principal { name: "admin".into(), role: Role::Admin };
    let register_other = Command::RegisterWorker {
        id: "w-2".into(),
        name: "w-2".into(),
        max_tasks: 1,
        tags: vec![],
        max_lost_requeues: 1,
        killed: vec![],
        requeue_delay_ms: 0,
    };
    let fire = Command::Fire { fires: vec![], keep_runs: 10, misfire_threshold_ms: 60_000 };
    let cases = [
        (viewer, create_request("by-a-viewer")),
        (worker.clone(), create_request("by-a-worker")),
        (worker, Request { issued_at: Utc::now(), idempotency: None, command: register_other }),
        (admin, Request { issued_at: Utc::now(), idempotency: None, command: fire }),
    ];
    for (who, req) in cases {
        let what = req.to_string();
        let r = client.forward_write(context(Duration::from_secs(5)), header(2), who.clone(), req).await.unwrap();
        assert!(matches!(r, Err(RpcFailure::Forbidden(_))), "{what} by {who:?}: {r:?}");
    }
    assert_eq!(state_of(&c), before, "a refused forwarded write changed a node");
    c.shutdown().await;
}

/// Copies bytes between a client and `target` (known once the node has bound its port),
/// keeping a copy of both directions.
async fn recording_proxy(target: Arc<OnceLock<SocketAddr>>, record: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Some(target) = target.get() else { continue };
            let Ok(outbound) = TcpStream::connect(target).await else { continue };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, record.clone()));
            tokio::spawn(pump(ro, wi, record.clone()));
        }
    });
    addr
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        record.lock().unwrap().extend_from_slice(&buf[..n]);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every node's inbound RPC traffic goes through a recording proxy. With the secret
/// alone the stream is plaintext (the task name shows, so the capture is real), yet it
/// holds neither the secret nor its hash; with TLS it holds neither the task name.
async fn capture(tls: Option<&std::path::Path>) -> Vec<u8> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut proxies = Vec::new();
    for _ in 1..=3 {
        let target = Arc::new(OnceLock::new());
        let proxy = recording_proxy(target.clone(), seen.clone()).await;
        proxies.push((target, proxy));
    }
    let advertised = move |id: u64, bound: SocketAddr| {
        let (target, proxy) = &proxies[id as usize - 1];
        target.set(bound).unwrap();
        proxy.to_string()
    };
    let tls_dir = tls.map(|d| d.to_path_buf());
    let tweak = move |id: u64, config: &mut raftcron::config::Config| {
        if let Some(dir) = &tls_dir {
            config.cluster.tls_ca_file = Some(dir.join("ca.pem"));
            config.cluster.tls_cert_file = Some(dir.join(format!("node-{id}.pem")));
            config.cluster.tls_key_file = Some(dir.join(format!("node-{id}.key")));
        }
    };
    let c = TestCluster::start_shaped(3, Opts::default(), &[], advertised, tweak).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let a =
        c.post(leader, "/api/tasks", json!({"name": "plainly-named-task", "executor": "shell", "command": "id"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    c.converged_digests(Duration::from_secs(10)).await;
    let seen = seen.lock().unwrap().clone();
    c.shutdown().await;
    seen
}

fn assert_no_secret(seen: &[u8]) {
    let hash = Sha256::digest(SECRET.as_bytes());
    assert!(!contains(seen, SECRET.as_bytes()), "the secret crossed the wire");
    assert!(!contains(seen, hex::encode(hash).as_bytes()), "the secret's hex hash crossed the wire");
    assert!(!contains(seen, &hash), "the secret's hash crossed the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_nor_a_hash_of_one_crosses_the_wire() {
    let seen = capture(None).await;
    assert!(seen.len() > 1000, "the proxy saw almost nothing: {} bytes", seen.len());
    assert!(contains(&seen, b"plainly-named-task"), "the capture missed the replicated entry");
    assert_no_secret(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_the_wire_carries_no_data_in_the_clear() {
    let certs = tempfile::tempdir().unwrap();
    let nodes: Vec<raftcron::certs::NodeCert> = (1..=3).map(|i| i.to_string().parse().unwrap()).collect();
    raftcron::certs::init(certs.path(), &nodes, &["127.0.0.1".into()], 1).unwrap();
    let seen = capture(Some(certs.path())).await;
    assert!(seen.len() > 1000, "the proxy saw almost nothing: {} bytes", seen.len());
    assert!(!contains(&seen, b"plainly-named-task"), "replicated data crossed the wire in the clear");
    assert_no_secret(&seen);
}
