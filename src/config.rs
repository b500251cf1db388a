//! Node configuration: the documented TOML schema, and how a file, environment variables
//! and command-line overrides combine into one validated [`Config`].
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `RAFTCRON_<SECTION>_<KEY>`
//! environment variables, then `--set section.key=value` flags (and the named flags of
//! `raftcron serve`, which are sugar for `--set`). Unknown keys are an error wherever they
//! come from, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything one node needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id; unique in the cluster, never reused for a wiped data dir.
    pub id: u64,
    /// RocksDB and snapshots live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// REST API listen address.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// Node-to-node tarpc listen address.
    #[serde(default = "default_rpc_addr")]
    pub rpc_addr: String,
    /// The HTTP address peers and clients should use (defaults to `http_addr`).
    #[serde(default)]
    pub advertise_http: Option<String>,
    /// The RPC address peers should use (defaults to `rpc_addr`).
    #[serde(default)]
    pub advertise_rpc: Option<String>,
    /// HTTPS for the REST API: the certificate chain (PEM). Both files or neither; the
    /// node reloads them on SIGHUP.
    #[serde(default)]
    pub http_tls_cert_file: Option<PathBuf>,
    /// HTTPS for the REST API: the private key (PEM).
    #[serde(default)]
    pub http_tls_key_file: Option<PathBuf>,
    /// Open HTTP connections the API holds at once (each worker agent keeps one or two);
    /// beyond it new connections wait in the kernel's backlog.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
}

fn default_http_max_connections() -> usize {
    1024
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Initial voters as `"id=host:rpc_port"`. Read only at the first bootstrap.
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// Build a snapshot (and purge the log behind it) once at least this many entries
    /// were applied since the last one ...
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_entries: u64,
    /// ... and the log appended since then holds at least this many times the last
    /// snapshot's bytes, so snapshot work stays proportional to the writes however large
    /// the state grows (0: the entry count alone decides).
    #[serde(default = "default_snapshot_log_ratio")]
    pub snapshot_log_ratio: f64,
    /// Shared secret a node proves it holds (challenge-response, never sent) before any
    /// node-to-node RPC; at least [`MIN_CLUSTER_SECRET_LEN`] bytes. May be empty only with
    /// TLS configured, or with `insecure`.
    #[serde(default)]
    pub secret: String,
    /// Read the secret from this file instead (trailing whitespace trimmed).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Mutual TLS between nodes: the PEM file of the cluster CA, which issued every
    /// node's certificate (and nothing else: any certificate it issued is a member).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// This node's certificate chain (PEM), naming its advertised RPC host.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Start with neither a secret nor TLS, so that anyone who reaches `node.rpc_addr`
    /// can act as a cluster member. `raftcron dev` (one node, loopback) sets it.
    #[serde(default)]
    pub insecure: bool,
    /// openraft's `quorum_loss_probe_interval`: a leader that has lost its quorum stops
    /// sending heartbeats for this long, then sends for this long, and so on, so that a
    /// follower it still reaches lets its lease lapse and can vote for a candidate of a
    /// connected majority (openraft#2080). Without it, an old leader that still reaches
    /// one "bridge" node keeps that node's vote forever and a connected majority cannot
    /// elect anyone: the chaos suite's `bridge-hold` saw no write for 30 s. Absent: 3 x
    /// `election_timeout_ms` (the smallest openraft accepts); 0: off.
    #[serde(default)]
    pub quorum_loss_probe_ms: Option<u64>,
}

impl ClusterConfig {
    /// The effective quorum-loss probe interval (`None`: off).
    pub fn quorum_loss_probe(&self) -> Option<u64> {
        match self.quorum_loss_probe_ms {
            None => Some(3 * self.election_timeout_ms),
            Some(0) => None,
            Some(ms) => Some(ms),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys, stored as SHA-256 hashes of the key. Several may share a role (rotation:
    /// add the new key, move clients, remove the old one).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// JSON Web Tokens, accepted beside the API keys when set.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Requests per second one credential (an API key's or a token subject's name) may
    /// make to this node, on average; beyond it the node answers 429 with `Retry-After`.
    /// 0 (the default) turns the limit off. Worker credentials are not limited (their
    /// agents pace themselves). Each node counts on its own: behind a load balancer over
    /// N nodes a client may reach N times this.
    #[serde(default)]
    pub rate_limit_per_s: u32,
    /// Requests a credential may make at once before the rate applies (default: one
    /// second's worth).
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
}

/// How this node verifies JWTs. The algorithm is this setting, never the token's `alg`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret (at least 32 bytes), or `secret_file`.
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// RS256 / ES256: the PEM file of the public key tokens are verified with.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A token's `iss` must equal it (and `raftcron token create` sets it); required for
    /// RS256 and ES256, whose key belongs to an issuer that may serve other services.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required: a token's `aud` must contain it (and `raftcron token create` sets it), so
    /// a token the same issuer minted for another service is refused here.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_jwt_leeway")]
    pub leeway_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

fn default_jwt_leeway() -> u64 {
    30
}

/// The most clock skew `auth.jwt.leeway_s` may allow.
pub const MAX_JWT_LEEWAY_S: u64 = 300;

/// The shortest cluster secret accepted (a random 24-byte hex string has 48).
pub const MIN_CLUSTER_SECRET_LEN: usize = 16;

/// The shortest HS256 secret accepted: 256 bits, the hash's own size.
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl JwtConfig {
    /// The HS256 secret, from `secret_file` if set (surrounding whitespace trimmed).
    pub fn hs_secret(&self) -> Result<String, ConfigError> {
        match &self.secret_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|source| ConfigError::Read { path: path.clone(), source }),
            None => Ok(self.secret.clone()),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who the key is; for the `worker` role, the worker id it may act for, or a prefix
    /// ending in `*` for a pool of workers (`raftcron-worker-*`).
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`). Set this or `key`.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself, for deployments that hand it over in the environment (e.g.
    /// `RAFTCRON_AUTH_API_KEYS` filled from a Kubernetes Secret); hashed at load, never
    /// printed. Set this or `sha256`.
    #[serde(default)]
    pub key: Option<String>,
}

impl ApiKeyConfig {
    /// The hex SHA-256 the key is compared by.
    pub fn hash(&self) -> String {
        match (&self.sha256, &self.key) {
            (Some(h), _) => h.to_ascii_lowercase(),
            (None, Some(k)) => hash_api_key(k),
            (None, None) => String::new(),
        }
    }
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("sha256", &self.sha256)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// The IANA time zone a task gets when it names none.
    #[serde(default = "default_timezone")]
    pub default_timezone: String,
    /// A tick older than this when the leader gets to it (e.g. after the cluster had no
    /// leader) is a misfire, handled by the task's `misfire_policy`.
    #[serde(default = "default_misfire_threshold")]
    pub misfire_threshold_s: u64,
    /// Finished runs kept per task (older ones are pruned through Raft; unfinished runs are
    /// never pruned, and `fire_count` keeps counting).
    #[serde(default = "default_run_history")]
    pub run_history_per_task: u32,
    /// A worker silent this long goes offline; its runs become `lost` and are re-queued.
    #[serde(default = "default_worker_timeout")]
    pub worker_timeout_s: u64,
    /// How many times one run may be re-queued after losing its worker.
    #[serde(default = "default_max_lost_requeues")]
    pub max_lost_requeues: u32,
    /// Admission: runs waiting for a worker (`pending`) in the whole cluster. At the cap a
    /// manual trigger is answered 429 and a schedule tick is skipped (counted in the
    /// task's `skipped_ticks` and `raftcron_ticks_skipped_total{reason="pending_cap"}`).
    #[serde(default = "default_max_pending_runs")]
    pub max_pending_runs: u64,
    /// The same, per task.
    #[serde(default = "default_max_pending_runs_per_task")]
    pub max_pending_runs_per_task: u64,
}

/// The embedded worker of `raftcron serve --worker` (a standalone `raftcron worker` takes
/// the same settings as flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Run jobs as this user instead of the node's (the node must run as root). An
    /// embedded worker otherwise shares the node's user, so its jobs are trusted as much
    /// as the node's operator.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Where jobs without a `working_directory` start (default: the node's directory).
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// With HTTPS (`node.http_tls_*`), the CA that issued this node's certificate: the
    /// embedded worker reaches its node at `https://<advertise_http>` and checks it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            default_timezone: default_timezone(),
            misfire_threshold_s: default_misfire_threshold(),
            run_history_per_task: default_run_history(),
            worker_timeout_s: default_worker_timeout(),
            max_lost_requeues: default_max_lost_requeues(),
            max_pending_runs: default_max_pending_runs(),
            max_pending_runs_per_task: default_max_pending_runs_per_task(),
        }
    }
}

fn default_max_pending_runs() -> u64 {
    1_000_000
}

fn default_max_pending_runs_per_task() -> u64 {
    1_000
}

fn default_misfire_threshold() -> u64 {
    60
}

fn default_run_history() -> u32 {
    100
}

fn default_worker_timeout() -> u64 {
    30
}

fn default_max_lost_requeues() -> u32 {
    3
}

/// What a credential may do. Ordered: each role can do everything the roles below it can,
/// except `Worker`, which is a separate principal (heartbeat, poll and report only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    /// Whether this role may do what `needed` may: admin ⊇ operator ⊇ viewer; a worker
    /// covers only `Worker` (and no other role covers it: what a worker may do is checked
    /// per route, see `api::access`).
    pub fn covers(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) | (_, Role::Worker) => false,
            (have, need) => have >= need,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_ms: default_election_timeout_ms(),
            snapshot_every_entries: default_snapshot_every(),
            snapshot_log_ratio: default_snapshot_log_ratio(),
            secret: String::new(),
            secret_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            insecure: false,
            quorum_loss_probe_ms: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_http_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_rpc_addr() -> String {
    "127.0.0.1:9080".into()
}
/// Four heartbeats per minimum election timeout: a follower notices a dead leader only
/// after its lease (`1.5 × election_timeout_ms`, openraft's leader lease is the maximum
/// election timeout) and its own randomized timeout, so failover takes about
/// `2.5–3 × election_timeout_ms` before the new leader's first commit. See
/// config/example.toml for the trade-off.
fn default_heartbeat_ms() -> u64 {
    50
}
fn default_election_timeout_ms() -> u64 {
    250
}
fn default_snapshot_every() -> u64 {
    10_000
}
fn default_snapshot_log_ratio() -> f64 {
    1.0
}
fn default_timezone() -> String {
    "UTC".into()
}

/// A configuration problem, phrased for the operator: it names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// One parsed `id=host:port` peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub rpc_addr: String,
}

impl Config {
    /// Loads a config: `file` (if any), then `env` (`RAFTCRON_<SECTION>_<KEY>`), then `sets`
    /// (`section.key=value`). The environment is a parameter so tests need not mutate the
    /// process environment.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>, sets: &[String]) -> Result<Config, ConfigError> {
        let mut root = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {}", path.display(), e.message())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("RAFTCRON_") else { continue };
            // RAFTCRON_API_KEY and RAFTCRON_LOG are not config keys.
            let Some((section, key)) = rest.split_once('_') else { continue };
            let section = section.to_ascii_lowercase();
            if !matches!(section.as_str(), "node" | "cluster" | "auth" | "scheduler" | "worker") {
                continue;
            }
            // The standalone agent's own variables (`raftcron worker`), not config keys.
            if matches!(name.as_str(), "RAFTCRON_WORKER_KEY" | "RAFTCRON_WORKER_ID") {
                continue;
            }
            set_key(&mut root, &section, &key.to_ascii_lowercase(), value, name)?;
        }
        for set in sets {
            let (path, value) = set
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("--set {set}: expected section.key=value")))?;
            let (section, key) = path
                .split_once('.')
                .ok_or_else(|| ConfigError::Invalid(format!("--set {set}: expected section.key=value")))?;
            set_key(&mut root, section, key, value, &format!("--set {path}"))?;
        }
        let config: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses parse, peers are well-formed, timings are sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.node.id == 0 {
            return bad("node.id", "must be at least 1".into());
        }
        for (key, addr) in [("node.http_addr", &self.node.http_addr), ("node.rpc_addr", &self.node.rpc_addr)] {
            if addr.parse::<SocketAddr>().is_err() {
                return bad(key, format!("{addr:?} is not an ip:port address"));
            }
        }
        if self.node.http_tls_cert_file.is_some() != self.node.http_tls_key_file.is_some() {
            return bad("node.http_tls_cert_file", "HTTPS needs both http_tls_cert_file and http_tls_key_file".into());
        }
        if self.node.http_max_connections == 0 {
            return bad("node.http_max_connections", "must be positive".into());
        }
        let peers = self.peers()?;
        if !peers.is_empty() && !peers.iter().any(|p| p.id == self.node.id) {
            return bad("cluster.peers", format!("does not list this node (id {})", self.node.id));
        }
        if self.scheduler.max_pending_runs == 0 || self.scheduler.max_pending_runs_per_task == 0 {
            return bad("scheduler.max_pending_runs", "the pending caps must be positive".into());
        }
        if self.auth.rate_limit_burst == Some(0) {
            return bad("auth.rate_limit_burst", "must be positive".into());
        }
        if self.cluster.heartbeat_ms == 0 {
            return bad("cluster.heartbeat_ms", "must be positive".into());
        }
        if self.cluster.election_timeout_ms < 3 * self.cluster.heartbeat_ms {
            return bad("cluster.election_timeout_ms", "must be at least 3 x cluster.heartbeat_ms".into());
        }
        if self.cluster.snapshot_every_entries == 0 {
            return bad("cluster.snapshot_every_entries", "must be positive".into());
        }
        if !(0.0..=1000.0).contains(&self.cluster.snapshot_log_ratio) {
            return bad(
                "cluster.snapshot_log_ratio",
                format!("{} is not a number from 0 to 1000", self.cluster.snapshot_log_ratio),
            );
        }
        match self.cluster.quorum_loss_probe_ms {
            Some(ms) if ms > 0 && ms < 3 * self.cluster.election_timeout_ms => {
                return bad(
                    "cluster.quorum_loss_probe_ms",
                    format!(
                        "must be 0 (off) or at least 3 x cluster.election_timeout_ms ({}): a lease and a longest \
                         election timeout must fit in each quiet phase",
                        3 * self.cluster.election_timeout_ms
                    ),
                );
            }
            _ => {}
        }
        self.validate_transport()?;
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            match (&key.sha256, &key.key) {
                (Some(h), None) if h.len() == 64 && hex::decode(h).is_ok() => {}
                (Some(_), None) => return bad(&format!("auth.api_keys[{i}].sha256"), "must be 64 hex digits".into()),
                (None, Some(k)) if k.len() >= MIN_CLUSTER_SECRET_LEN => {}
                (None, Some(_)) => {
                    return bad(
                        &format!("auth.api_keys[{i}].key"),
                        format!("at least {MIN_CLUSTER_SECRET_LEN} characters"),
                    )
                }
                _ => return bad(&format!("auth.api_keys[{i}]"), "set sha256 or key (one of them)".into()),
            }
            let pool = key.name.strip_suffix('*');
            if key.name.is_empty() || pool.is_some_and(|p| p.is_empty() || p.contains('*')) {
                return bad(
                    &format!("auth.api_keys[{i}].name"),
                    "must be a name, or a worker-id prefix ending in *".into(),
                );
            }
            if pool.is_some() && key.role != Role::Worker {
                return bad(
                    &format!("auth.api_keys[{i}].name"),
                    "only a worker key may name a pool (a prefix ending in *)".into(),
                );
            }
        }
        if let Some(jwt) = &self.auth.jwt {
            // A token minted for another service by the same issuer must not pass here.
            if jwt.audience.as_deref().is_none_or(str::is_empty) {
                return bad("auth.jwt.audience", "is required: tokens must name this cluster".into());
            }
            if jwt.algorithm != JwtAlgorithm::HS256 && jwt.issuer.as_deref().is_none_or(str::is_empty) {
                return bad(
                    "auth.jwt.issuer",
                    format!("is required with {:?}: the key belongs to an issuer", jwt.algorithm),
                );
            }
            if jwt.leeway_s > MAX_JWT_LEEWAY_S {
                return bad(
                    "auth.jwt.leeway_s",
                    format!("at most {MAX_JWT_LEEWAY_S}: more would outlive short tokens"),
                );
            }
            if !jwt.secret.is_empty() && jwt.secret_file.is_some() {
                return bad("auth.jwt.secret", "set secret or secret_file, not both".into());
            }
            match jwt.algorithm {
                JwtAlgorithm::HS256 => {
                    if jwt.public_key_file.is_some() {
                        return bad("auth.jwt.public_key_file", "is for RS256 and ES256; HS256 uses secret".into());
                    }
                    if jwt.hs_secret()?.len() < MIN_JWT_SECRET_LEN {
                        return bad("auth.jwt.secret", format!("HS256 needs at least {MIN_JWT_SECRET_LEN} bytes"));
                    }
                }
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                    if jwt.public_key_file.is_none() {
                        return bad("auth.jwt.public_key_file", format!("{:?} needs a PEM public key", jwt.algorithm));
                    }
                    if !jwt.secret.is_empty() || jwt.secret_file.is_some() {
                        return bad(
                            "auth.jwt.secret",
                            format!("{:?} verifies with a public key, not a secret", jwt.algorithm),
                        );
                    }
                }
            }
        }
        let min = crate::model::lease::MIN_WORKER_TIMEOUT_S;
        if self.scheduler.worker_timeout_s > 86_400 {
            return bad("scheduler.worker_timeout_s", "must be at most 86400 (a day)".into());
        }
        if self.scheduler.worker_timeout_s < min {
            return bad(
                "scheduler.worker_timeout_s",
                format!(
                    "must be at least {min}: a worker holds its lease for half of it, and the rest must cover clock \
                     drift and the time to kill its processes (see model/lease.rs)"
                ),
            );
        }
        if self.scheduler.default_timezone.parse::<chrono_tz::Tz>().is_err() {
            return bad(
                "scheduler.default_timezone",
                format!("{:?} is not an IANA time zone", self.scheduler.default_timezone),
            );
        }
        Ok(())
    }

    /// The parsed `[cluster] peers`.
    pub fn peers(&self) -> Result<Vec<Peer>, ConfigError> {
        let mut peers = Vec::new();
        for p in &self.cluster.peers {
            let parsed = p.split_once('=').and_then(|(id, addr)| {
                let id = id.trim().parse::<u64>().ok()?;
                (id > 0 && !addr.trim().is_empty()).then(|| Peer { id, rpc_addr: addr.trim().to_string() })
            });
            match parsed {
                Some(peer) if peers.iter().any(|q: &Peer| q.id == peer.id) => {
                    return Err(ConfigError::Invalid(format!("cluster.peers: node id {} is listed twice", peer.id)))
                }
                Some(peer) => peers.push(peer),
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "cluster.peers: {p:?} is not of the form \"id=host:port\""
                    )))
                }
            }
        }
        Ok(peers)
    }

    pub fn advertise_http(&self) -> String {
        self.node.advertise_http.clone().unwrap_or_else(|| self.node.http_addr.clone())
    }

    pub fn advertise_rpc(&self) -> String {
        self.node.advertise_rpc.clone().unwrap_or_else(|| self.node.rpc_addr.clone())
    }

    /// How nodes authenticate each other: a secret, TLS, both, or — only when asked for —
    /// neither.
    fn validate_transport(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let c = &self.cluster;
        if !c.secret.is_empty() && c.secret_file.is_some() {
            return bad("cluster.secret", "set secret or secret_file, not both".into());
        }
        let secret = self.cluster_secret()?;
        if !secret.is_empty() && secret.len() < MIN_CLUSTER_SECRET_LEN {
            return bad(
                "cluster.secret",
                format!(
                    "at least {MIN_CLUSTER_SECRET_LEN} bytes (e.g. `openssl rand -hex 24`); a short one can be guessed"
                ),
            );
        }
        let tls = [
            ("cluster.tls_ca_file", &c.tls_ca_file),
            ("cluster.tls_cert_file", &c.tls_cert_file),
            ("cluster.tls_key_file", &c.tls_key_file),
        ];
        let set = tls.iter().filter(|(_, v)| v.is_some()).count();
        if set != 0 && set != tls.len() {
            let missing: Vec<&str> = tls.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
            return bad(missing[0], format!("TLS between nodes needs all three files; missing {}", missing.join(", ")));
        }
        Ok(())
    }

    /// Refuses to run a node whose RPC port would admit anyone: no secret, no TLS, and no
    /// `insecure`. Checked when a node starts, not at load, so that client commands
    /// (`token create`) can read a config that lacks them.
    pub fn require_member_authentication(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let c = &self.cluster;
        let secret = self.cluster_secret()?;
        let set = [&c.tls_ca_file, &c.tls_cert_file, &c.tls_key_file].iter().filter(|f| f.is_some()).count();
        if secret.is_empty() && set == 0 && !c.insecure {
            return bad(
                "cluster.secret",
                "empty, and no cluster.tls_* files: anyone who reaches node.rpc_addr could act as a member \
                 (write tasks, change membership). Set a secret (secret_file, RAFTCRON_CLUSTER_SECRET), configure \
                 TLS (`raftcron certs init`), or start with --insecure"
                    .into(),
            );
        }
        Ok(())
    }

    /// The node-to-node secret, from `secret_file` if set.
    pub fn cluster_secret(&self) -> Result<String, ConfigError> {
        match &self.cluster.secret_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end().to_string())
                .map_err(|source| ConfigError::Read { path: path.clone(), source }),
            None => Ok(self.cluster.secret.clone()),
        }
    }
}

/// Sets `section.key` from a string, keeping the type the key needs: TOML syntax first
/// (`3`, `true`, `["a","b"]`), a bare string otherwise.
fn set_key(root: &mut toml::Table, section: &str, key: &str, raw: &str, origin: &str) -> Result<(), ConfigError> {
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    let table = root
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid(format!("{origin}: [{section}] is not a table")))?;
    table.insert(key.to_string(), value);
    Ok(())
}

/// Hex SHA-256 of an API key, the form keys are stored and compared in.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let f = write("[node]\nid = 1\nhttp_adr = \"127.0.0.1:1\"\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("http_adr"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_set_overrides_env() {
        let f = write("[node]\nid = 1\nhttp_addr = \"127.0.0.1:1\"\n");
        let e = env(&[("RAFTCRON_NODE_HTTP_ADDR", "127.0.0.1:2"), ("RAFTCRON_API_KEY", "x")]);
        let c = Config::load(Some(f.path()), &e, &[]).unwrap();
        assert_eq!(c.node.http_addr, "127.0.0.1:2");
        let c = Config::load(Some(f.path()), &e, &["node.http_addr=127.0.0.1:3".into()]).unwrap();
        assert_eq!(c.node.http_addr, "127.0.0.1:3");
        let c = Config::load(Some(f.path()), &e, &["cluster.heartbeat_ms=20".into()]).unwrap();
        assert_eq!(c.cluster.heartbeat_ms, 20);
    }

    #[test]
    fn wrong_type_and_bad_values_name_the_key() {
        let f = write("[node]\nid = \"one\"\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("id"), "{err}");
        let f = write("[node]\nid = 2\n[cluster]\npeers = [\"1=127.0.0.1:9\"]\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("cluster.peers") && err.contains("id 2"), "{err}");
        let f = write("[node]\nid = 1\n[cluster]\npeers = [\"x\"]\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("cluster.peers"), "{err}");
        let f = write("[node]\nid = 1\n[scheduler]\ndefault_timezone = \"Mars/Base\"\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("scheduler.default_timezone"), "{err}");
        // Too short to fence a worker safely (model::lease): refused, the floor accepted.
        let f = write("[node]\nid = 1\n[scheduler]\nworker_timeout_s = 3\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("scheduler.worker_timeout_s") && err.contains("at least 4"), "{err}");
        let f = write("[node]\nid = 1\n[scheduler]\nworker_timeout_s = 4\n");
        assert!(Config::load(Some(f.path()), &env(&[]), &[]).is_ok());
        // A quorum-loss probe shorter than openraft accepts is refused by name; 0 is off.
        // (The floor is 2 x the maximum election timeout: 2 x 375 ms by default.)
        let f = write("[node]\nid = 1\n[cluster]\nquorum_loss_probe_ms = 749\n");
        let err = Config::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("cluster.quorum_loss_probe_ms") && err.contains("750"), "{err}");
        let f = write("[node]\nid = 1\n[cluster]\nquorum_loss_probe_ms = 0\n");
        assert_eq!(Config::load(Some(f.path()), &env(&[]), &[]).unwrap().cluster.quorum_loss_probe(), None);
        let f = write("[node]\nid = 1\n");
        assert_eq!(Config::load(Some(f.path()), &env(&[]), &[]).unwrap().cluster.quorum_loss_probe(), Some(750));
    }

    #[test]
    fn jwt_settings_that_would_let_foreign_or_stale_tokens_in_are_refused() {
        let jwt = |body: &str| write(&format!("[node]\nid = 1\n[auth.jwt]\n{body}\n"));
        let secret = "secret = \"0123456789abcdef0123456789abcdef\"";
        let cases = [
            (format!("algorithm = \"HS256\"\n{secret}"), "auth.jwt.audience"),
            (format!("algorithm = \"HS256\"\n{secret}\naudience = \"rc\"\nleeway_s = 301"), "auth.jwt.leeway_s"),
            ("algorithm = \"HS256\"\nsecret = \"short\"\naudience = \"rc\"".into(), "auth.jwt.secret"),
            (format!("algorithm = \"HS256\"\n{secret}\nsecret_file = \"/x\"\naudience = \"rc\""), "not both"),
            ("algorithm = \"RS256\"\npublic_key_file = \"/x\"\naudience = \"rc\"".into(), "auth.jwt.issuer"),
            (format!("algorithm = \"RS256\"\n{secret}\nissuer = \"i\"\naudience = \"rc\""), "auth.jwt.public_key_file"),
        ];
        for (body, named) in cases {
            let err = Config::load(Some(jwt(&body).path()), &env(&[]), &[]).unwrap_err().to_string();
            assert!(err.contains(named), "{body}: {err}");
        }
        let ok = jwt(&format!("algorithm = \"HS256\"\n{secret}\naudience = \"rc\""));
        assert!(Config::load(Some(ok.path()), &env(&[]), &[]).is_ok());
    }

    #[test]
    fn a_node_needs_a_secret_or_tls_unless_told_it_is_insecure() {
        let load = |body: &str| {
            Config::load(Some(write(&format!("[node]\nid = 1\n[cluster]\n{body}\n")).path()), &env(&[]), &[])
        };
        let open = load("").unwrap();
        let err = open.require_member_authentication().unwrap_err().to_string();
        assert!(err.contains("cluster.secret") && err.contains("--insecure"), "{err}");
        assert!(load("insecure = true").unwrap().require_member_authentication().is_ok());
        assert!(load("secret = \"0123456789abcdef\"").unwrap().require_member_authentication().is_ok());
        let err = load("secret = \"short\"").unwrap_err().to_string();
        assert!(err.contains("cluster.secret") && err.contains("16"), "{err}");
        let err = load("tls_ca_file = \"/ca.pem\"\ntls_key_file = \"/k.pem\"").unwrap_err().to_string();
        assert!(err.contains("cluster.tls_cert_file"), "{err}");
        let tls = load("tls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"").unwrap();
        assert!(tls.require_member_authentication().is_ok());
        let e = env(&[("RAFTCRON_CLUSTER_SECRET", "0123456789abcdef0123")]);
        let from_env = Config::load(Some(write("[node]\nid = 1\n").path()), &e, &[]).unwrap();
        assert!(from_env.require_member_authentication().is_ok());
    }

    #[test]
    fn api_keys_by_hash_or_by_value_and_pool_names_only_for_workers() {
        let load = |keys: &str| {
            Config::load(Some(write(&format!("[node]\nid = 1\n[auth]\napi_keys = [{keys}]\n")).path()), &env(&[]), &[])
        };
        let c = load("{name = \"pool-*\", role = \"worker\", key = \"0123456789abcdef\"}").unwrap();
        assert_eq!(c.auth.api_keys[0].hash(), hash_api_key("0123456789abcdef"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "a key in the config was printed");
        let cases = [
            ("{name = \"a\", role = \"admin\"}", "sha256 or key"),
            ("{name = \"a\", role = \"admin\", key = \"short\"}", "auth.api_keys[0].key"),
            ("{name = \"ops-*\", role = \"operator\", key = \"0123456789abcdef\"}", "only a worker key"),
            ("{name = \"*\", role = \"worker\", key = \"0123456789abcdef\"}", "auth.api_keys[0].name"),
        ];
        for (keys, named) in cases {
            let err = load(keys).unwrap_err().to_string();
            assert!(err.contains(named), "{keys}: {err}");
        }
    }

    #[test]
    fn example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["example.toml", "node1.toml", "node2.toml", "node3.toml"] {
            Config::load(Some(&dir.join(name)), &env(&[]), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
