//! The byte stream under the cluster RPC, and who may open one.
//!
//! A connection is admitted in two steps, both bounded by [`HANDSHAKE_TIMEOUT`] and both
//! done before the length-delimited codec (whose frames may be large) sees a byte:
//!
//! 1. **Mutual TLS** when `cluster.tls_*` is configured: each side presents a certificate
//!    issued by the cluster's CA; the dialing side also checks that the peer's
//!    certificate names the host it dialed. One crypto provider (ring) is passed to
//!    every builder explicitly.
//! 2. **A challenge-response on the cluster secret** (HMAC-SHA256), with or without TLS
//!    underneath. Neither the secret nor a hash of it crosses the wire, and a recorded
//!    exchange is worthless later (both sides contribute a fresh nonce). The acceptor
//!    speaks first with only a nonce, reads exactly one fixed-size answer, and proves
//!    itself only to a dialer that proved itself first — so a stranger learns nothing
//!    but a random number, and cannot make the acceptor buffer more than
//!    [`CLIENT_HELLO`] bytes.
//!
//! ```text
//! acceptor → dialer   MAGIC | PROTOCOL | nonce_a                                       40 bytes
//! dialer → acceptor   MAGIC | PROTOCOL | nonce_d | HMAC(k, "dialer" | id | nonce_a | nonce_d)   72
//! acceptor → dialer   HMAC(k, "acceptor" | id | nonce_a | nonce_d)                     32
//! ```
//!
//! `id` is the node the dialer means to reach, and the acceptor checks it is its own: a
//! process that a member dials by mistake (a stale address) cannot relay that member's
//! proof to another node, or back to the member itself. Without TLS, the secret
//! authenticates the connection's start but not each frame: an attacker on the path
//! between a member and the very node it means to reach could take the connection over.
//! Across a network you do not control, configure TLS.
//!
//! Until a connection has authenticated it holds one of [`MAX_HANDSHAKES`] handshake
//! slots (at most [`MAX_HANDSHAKES_PER_IP`] per source address, so one host cannot take
//! them all); an authenticated one holds one of [`MAX_CONNECTIONS`]. With neither a secret nor TLS every connection is
//! admitted; a node starts that way only with `cluster.insecure` (see `config`).
//!
//! This module must never read a frame before the handshake has succeeded.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long an accepted connection may take to finish TLS and the secret exchange: the
/// dialer's own budget (it gives up then anyway).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a dialing node waits for a peer's handshake (three one-way trips, five with
/// TLS, over a link that may be slow). Dials run in the background, shared by every call
/// that needs the peer, so a call that gives up sooner does not waste the handshake.
pub const DIAL_HANDSHAKE_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
/// Authenticated connections an RPC listener holds at once; a cluster needs a few per peer.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections still handshaking, in all and from one source address; beyond them new
/// connections are closed unread.
pub const MAX_HANDSHAKES: usize = 64;
pub const MAX_HANDSHAKES_PER_IP: usize = 8;

const MAGIC: &[u8; 7] = b"raftcrn";
/// The handshake's own version; a peer of another version is refused by name.
const PROTOCOL: u8 = 1;
const NONCE: usize = 32;
const MAC: usize = 32;
const SERVER_HELLO: usize = MAGIC.len() + 1 + NONCE;
/// The most an acceptor reads from a connection that has not authenticated.
pub const CLIENT_HELLO: usize = MAGIC.len() + 1 + NONCE + MAC;

/// A stream the RPC codec runs on: TLS or plain TCP, after the handshake.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}
pub type PeerStream = Box<dyn PeerIo>;

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("{0}")]
    Protocol(String),
    /// Either side's proof did not verify: the other holds another secret, or the node
    /// dialed is not the one listening at that address.
    #[error("the peer does not hold this cluster's secret, or is not the node dialed")]
    WrongSecret,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsFileError {
    pub what: &'static str,
    pub path: String,
    pub reason: String,
}

/// What this node requires of its peers and proves to them.
#[derive(Clone)]
pub struct Security {
    /// This node, which a dialer must name to be admitted.
    id: u64,
    /// The HMAC key: the cluster secret's bytes (empty: no secret).
    key: Arc<[u8]>,
    tls: Option<(TlsAcceptor, TlsConnector)>,
}

impl Security {
    pub fn new(id: u64, secret: &str, tls: Option<MutualTls>) -> Self {
        Security { id, key: secret.as_bytes().into(), tls: tls.map(|t| (t.acceptor, t.connector)) }
    }

    /// How connections are authenticated, for the start-up log.
    pub fn describe(&self) -> &'static str {
        match (self.tls.is_some(), self.key.is_empty()) {
            (true, false) => "mutual TLS and the cluster secret",
            (true, true) => "mutual TLS",
            (false, false) => "the cluster secret (no TLS)",
            (false, true) => "nothing (insecure)",
        }
    }

    /// The acceptor's side; the caller bounds it with [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> Result<PeerStream, HandshakeError> {
        let mut stream: PeerStream = match &self.tls {
            Some((acceptor, _)) => Box::new(acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?),
            None => Box::new(tcp),
        };
        let nonce_a = nonce();
        let mut hello = Vec::with_capacity(SERVER_HELLO);
        hello.extend_from_slice(MAGIC);
        hello.push(PROTOCOL);
        hello.extend_from_slice(&nonce_a);
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut answer = [0u8; CLIENT_HELLO];
        stream.read_exact(&mut answer).await?;
        check_magic(&answer)?;
        let nonce_d = &answer[MAGIC.len() + 1..MAGIC.len() + 1 + NONCE];
        if !verify(&self.key, b"dialer", self.id, &nonce_a, nonce_d, &answer[MAGIC.len() + 1 + NONCE..]) {
            return Err(HandshakeError::WrongSecret);
        }
        stream.write_all(&mac(&self.key, b"acceptor", self.id, &nonce_a, nonce_d)).await?;
        stream.flush().await?;
        Ok(stream)
    }

    /// The dialer's side, towards node `target` at `addr` (`host:port`; the host is what
    /// the peer's certificate must name). The caller bounds it with
    /// [`DIAL_HANDSHAKE_TIMEOUT`].
    pub async fn connect(&self, tcp: TcpStream, target: u64, addr: &str) -> Result<PeerStream, HandshakeError> {
        let mut stream: PeerStream = match &self.tls {
            Some((_, connector)) => {
                let name = server_name(addr).map_err(HandshakeError::Protocol)?;
                Box::new(connector.connect(name, tcp).await.map_err(HandshakeError::Tls)?)
            }
            None => Box::new(tcp),
        };
        let mut hello = [0u8; SERVER_HELLO];
        stream.read_exact(&mut hello).await?;
        check_magic(&hello)?;
        let nonce_a = &hello[MAGIC.len() + 1..];
        let nonce_d = nonce();
        let mut answer = Vec::with_capacity(CLIENT_HELLO);
        answer.extend_from_slice(MAGIC);
        answer.push(PROTOCOL);
        answer.extend_from_slice(&nonce_d);
        answer.extend_from_slice(&mac(&self.key, b"dialer", target, nonce_a, &nonce_d));
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut proof = [0u8; MAC];
        match stream.read_exact(&mut proof).await {
            Ok(_) => {}
            // The acceptor closes on a wrong secret without a word.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HandshakeError::WrongSecret),
            Err(e) => return Err(e.into()),
        }
        if !verify(&self.key, b"acceptor", target, nonce_a, &nonce_d, &proof) {
            return Err(HandshakeError::WrongSecret);
        }
        Ok(stream)
    }
}

fn nonce() -> [u8; NONCE] {
    rand::random()
}

fn keyed(key: &[u8], role: &[u8], target: u64, nonce_a: &[u8], nonce_d: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(b"raftcron-rpc ");
    m.update(role);
    m.update(&target.to_be_bytes());
    m.update(nonce_a);
    m.update(nonce_d);
    m
}

fn mac(key: &[u8], role: &[u8], target: u64, nonce_a: &[u8], nonce_d: &[u8]) -> [u8; MAC] {
    keyed(key, role, target, nonce_a, nonce_d).finalize().into_bytes().into()
}

/// Constant-time comparison (`verify_slice`).
fn verify(key: &[u8], role: &[u8], target: u64, nonce_a: &[u8], nonce_d: &[u8], tag: &[u8]) -> bool {
    keyed(key, role, target, nonce_a, nonce_d).verify_slice(tag).is_ok()
}

/// The handshake slots of one listener (see the module doc).
#[derive(Clone, Default)]
pub struct HandshakeSlots {
    by_ip: Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::IpAddr, usize>>>,
}

/// A handshake slot, given back on drop.
pub struct HandshakeSlot {
    slots: HandshakeSlots,
    ip: std::net::IpAddr,
}

impl HandshakeSlots {
    /// A slot for a connection from `ip`, or `None` when the listener or that address has
    /// as many handshakes open as it may.
    pub fn take(&self, ip: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut by_ip = self.by_ip.lock().expect("handshake slots poisoned");
        let total: usize = by_ip.values().sum();
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        by_ip.insert(ip, mine + 1);
        Some(HandshakeSlot { slots: self.clone(), ip })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self.slots.by_ip.lock().expect("handshake slots poisoned");
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

fn check_magic(msg: &[u8]) -> Result<(), HandshakeError> {
    if &msg[..MAGIC.len()] != MAGIC {
        return Err(HandshakeError::Protocol("not a raftcron RPC peer (or an older release's)".into()));
    }
    let theirs = msg[MAGIC.len()];
    if theirs != PROTOCOL {
        return Err(HandshakeError::Protocol(format!(
            "the peer speaks RPC handshake version {theirs}, this node speaks {PROTOCOL}"
        )));
    }
    Ok(())
}

/// The name a dialed peer's certificate must carry: the host part of `host:port`.
fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// The TLS half of [`Security`]: a server config that demands a client certificate from
/// the cluster CA, and a client config that presents this node's.
pub struct MutualTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl MutualTls {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<MutualTls, TlsFileError> {
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca, "cluster.tls_ca_file")? {
            roots.add(cert).map_err(|e| file_error("cluster.tls_ca_file", ca, e))?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs(cert, "cluster.tls_cert_file")?;
        let key_der = read_key(key, "cluster.tls_key_file")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_error("cluster.tls_ca_file", ca, e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| file_error("cluster.tls_cert_file", cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| file_error("cluster.tls_key_file", key, e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| file_error("cluster.tls_cert_file", cert, e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| file_error("cluster.tls_key_file", key, e))?;
        Ok(MutualTls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
    }
}

/// The one crypto provider raftcron's TLS uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsFileError {
    TlsFileError { what, path: path.display().to_string(), reason: e.to_string() }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(what, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(acceptor: Security, dialer: Security) -> (Result<(), String>, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Bounded as the callers bound them: two sides that speak past each other wait.
        let bound = |r: Result<Result<PeerStream, HandshakeError>, _>| match r {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            bound(tokio::time::timeout(Duration::from_secs(2), acceptor.accept(tcp)).await)
        });
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let dialed = bound(tokio::time::timeout(Duration::from_secs(2), dialer.connect(tcp, 1, &addr)).await);
        (accepting.await.unwrap(), dialed)
    }

    #[tokio::test]
    async fn the_same_secret_is_admitted_and_another_is_refused_on_both_sides() {
        let s = |k: &str| Security::new(1, k, None);
        assert_eq!(pair(s("the-secret-0123456789"), s("the-secret-0123456789")).await, (Ok(()), Ok(())));
        let (accepted, dialed) = pair(s("the-secret-0123456789"), s("another-secret-012345")).await;
        assert!(accepted.unwrap_err().contains("secret"));
        assert!(dialed.unwrap_err().contains("secret"));
        // A dialer without a secret is refused too.
        let (accepted, _) = pair(s("the-secret-0123456789"), s("")).await;
        assert!(accepted.is_err());
    }

    fn tls_member(dir: &Path, id: u64, secret: &str) -> Security {
        let tls = MutualTls::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("node-{id}.pem")),
            &dir.join(format!("node-{id}.key")),
        )
        .unwrap();
        // Every member here answers as node 1, the id `pair` dials.
        Security::new(1, secret, Some(tls))
    }

    #[tokio::test]
    async fn mutual_tls_admits_the_cluster_ca_and_refuses_another_ca_either_way() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = ["127.0.0.1".to_string()];
        crate::certs::init(ours.path(), &["1".parse().unwrap()], &hosts, 1).unwrap();
        // Node 2 is issued by a second run that reuses the CA read back from disk.
        crate::certs::init(ours.path(), &["2".parse().unwrap()], &hosts, 1).unwrap();
        crate::certs::init(theirs.path(), &["3".parse().unwrap()], &hosts, 1).unwrap();
        let (a, b) = (tls_member(ours.path(), 1, ""), tls_member(ours.path(), 2, ""));
        assert_eq!(pair(a.clone(), b.clone()).await, (Ok(()), Ok(())));
        let stranger = tls_member(theirs.path(), 3, "");
        let (accepted, dialed) = pair(a.clone(), stranger.clone()).await;
        assert!(accepted.unwrap_err().starts_with("TLS"), "an acceptor took another CA's certificate");
        assert!(dialed.is_err());
        let (accepted, dialed) = pair(stranger, b).await;
        assert!(accepted.is_err() && dialed.unwrap_err().starts_with("TLS"), "a dialer trusted another CA");
        // A dialer that trusts our CA (so it gets as far as presenting its certificate)
        // but holds another CA's certificate: the acceptor's client check refuses it.
        let impostor = MutualTls::from_files(
            &ours.path().join("ca.pem"),
            &theirs.path().join("node-3.pem"),
            &theirs.path().join("node-3.key"),
        )
        .unwrap();
        let (accepted, dialed) = pair(a.clone(), Security::new(1, "", Some(impostor))).await;
        assert!(accepted.unwrap_err().starts_with("TLS"), "an acceptor took a client certificate of another CA");
        assert!(dialed.is_err());
        // No certificate at all: a plain dialer gets nowhere with a TLS acceptor.
        let (accepted, dialed) = pair(a, Security::new(1, "", None)).await;
        assert!(accepted.is_err() && dialed.is_err());
    }

    #[tokio::test]
    async fn a_dialers_proof_is_good_only_for_the_node_it_meant() {
        let secret = "the-secret-0123456789";
        // Node 2 is dialed as if it were node 1 (what a relay of a proof meant for node 1
        // to node 2 amounts to): both sides refuse.
        let (accepted, dialed) = pair(Security::new(2, secret, None), Security::new(3, secret, None)).await;
        assert!(accepted.unwrap_err().contains("secret") && dialed.is_err());
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let slots = HandshakeSlots::default();
        let stranger: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<_> = (0..MAX_HANDSHAKES_PER_IP).map(|_| slots.take(stranger).unwrap()).collect();
        assert!(slots.take(stranger).is_none());
        assert!(slots.take("10.0.0.1".parse().unwrap()).is_some(), "a member was locked out");
        drop(held);
        assert!(slots.take(stranger).is_some(), "slots were not given back");
    }

    #[tokio::test]
    async fn an_acceptor_reads_no_more_than_a_hello_from_a_stranger() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stranger = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut hello = [0u8; SERVER_HELLO];
            tcp.read_exact(&mut hello).await.unwrap();
            // A length prefix announcing a huge frame, then a flood.
            let flood = vec![0xffu8; 1 << 20];
            let _ = tcp.write_all(&flood).await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let err = Security::new(1, "the-secret-0123456789", None).accept(tcp).await.err().unwrap();
        assert!(matches!(err, HandshakeError::Protocol(_)), "{err}");
        stranger.await.unwrap();
    }
}
