//! The `raftcron` command line: `dev`, `serve`, and admin clients over the REST API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod client;
mod crypto;
mod resources;
mod snapshot;

pub use client::{exit_code, ClientArgs, Exit};
pub use resources::{RunCmd, TaskCmd, WorkerCmd};
pub use snapshot::generate_state;

use crate::config::Config;
use crate::node::{self, Listeners};
use crate::worker::{self, AgentConfig, RunningAgent};

#[derive(Debug, Parser)]
#[command(name = "raftcron", version, about = "A distributed job scheduler replicated through Raft")]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a single-node cluster for development (data in ./data, API on 127.0.0.1:8080).
    /// Runs an embedded worker (id `dev-worker`, 4 slots) unless `--no-worker`.
    Dev {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Do not start the embedded worker.
        #[arg(long)]
        no_worker: bool,
        /// Run the embedded worker's jobs as this user (needs root).
        #[arg(long, value_name = "USER")]
        run_as: Option<String>,
    },
    /// Run one cluster node.
    Serve(ServeArgs),
    /// Run a worker agent against any node (or the load balancer); or, with a
    /// subcommand, list, show or update workers through the REST API.
    Worker(WorkerArgs),
    /// Exit 0 when the local node answers `/api/health` with 200 (a container HEALTHCHECK
    /// that needs no curl).
    Healthcheck {
        /// The node's HTTP address; default from RAFTCRON_NODE_HTTP_ADDR, else 127.0.0.1:8080
        /// (a wildcard host is checked on 127.0.0.1).
        #[arg(long)]
        addr: Option<String>,
        /// The node serves HTTPS (default when RAFTCRON_NODE_HTTP_TLS_CERT_FILE is set). The
        /// certificate is not checked: this only asks the local process whether it is up,
        /// and sends no credential.
        #[arg(long)]
        https: bool,
    },
    /// Schedule tools.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCmd,
    },
    /// Back up a running cluster's state, and seed a new cluster from a backup.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Disaster recovery when a quorum is lost for good: turn one stopped survivor's data
    /// dir into the only voter of a new cluster (every entry in its log applied, a new
    /// cluster id), then start it and add new nodes. Nodes of the old cluster are refused.
    Recover {
        /// Required: this discards the old cluster's membership for good.
        #[arg(long, required = true)]
        force_new_cluster: bool,
        /// The survivor's data dir (`node.data_dir`); the node must be stopped.
        #[arg(long)]
        data_dir: PathBuf,
        /// The survivor's node id (`node.id`).
        #[arg(long)]
        node_id: u64,
        /// Its RPC address, if not the one the old membership lists for it.
        #[arg(long)]
        rpc_addr: Option<String>,
        #[arg(long, default_value = "", requires = "rpc_addr")]
        http_addr: String,
    },
    /// Inspect a node's data dir (the node must be stopped), or generate a state.
    Debug {
        #[command(subcommand)]
        command: DebugCmd,
    },
    /// The per-run supervisor a worker agent starts for each process run (internal).
    #[command(hide = true)]
    RunShim,
    /// JSON Web Tokens for the API.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// TLS certificates for a cluster without a PKI of its own.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Cluster administration through any node's REST API.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Tasks through any node's REST API: create, list, get, update, delete, pause,
    /// resume, trigger (`--wait` follows the run), runs.
    Task {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TaskCmd,
    },
    /// Runs: get, cancel, logs.
    Run {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RunCmd,
    },
    /// Print a shell completion script: `source <(raftcron completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cmd {
    /// A short-lived client of a cluster or a tool, not a long-running node or agent.
    pub fn is_client(&self) -> bool {
        !matches!(self, Cmd::Dev { .. } | Cmd::Serve(_) | Cmd::RunShim | Cmd::Worker(WorkerArgs { command: None, .. }))
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/example.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `node.id`.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Overrides `node.data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `node.http_addr`.
    #[arg(long)]
    pub http: Option<String>,
    /// Overrides `node.rpc_addr`.
    #[arg(long)]
    pub rpc: Option<String>,
    /// Overrides `cluster.peers`, comma-separated `id=host:port`.
    #[arg(long)]
    pub peers: Option<String>,
    /// Sets any config key: `--set section.key=value` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Start even with neither a cluster secret nor TLS between nodes (`cluster.insecure`):
    /// anyone who reaches the RPC port can then act as a member.
    #[arg(long)]
    pub insecure: bool,
    /// Also run a worker agent in this process with this id (it talks to this node).
    #[arg(long, value_name = "WORKER_ID")]
    pub worker: Option<String>,
    /// Slots of the embedded worker.
    #[arg(long, default_value_t = 4)]
    pub worker_max_tasks: u32,
}

#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    /// Without one, this process is a worker agent.
    #[command(subcommand)]
    pub command: Option<WorkerCmd>,
    /// Base URL of any node or the load balancer; or several, comma-separated, to fail
    /// over between nodes without a load balancer.
    #[arg(long, env = "RAFTCRON_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// This worker's id (letters, digits, `.`, `_`, `-`); a `worker`-role key must be
    /// named after it.
    #[arg(long, env = "RAFTCRON_WORKER_ID", required = true)]
    pub id: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// API key: a `worker`-role key named after `--id`, or an admin key.
    #[arg(long, env = "RAFTCRON_WORKER_KEY", hide_env_values = true, required = true)]
    pub key: Option<String>,
    /// Runs executed at once.
    #[arg(long, default_value_t = 4)]
    pub max_tasks: u32,
    /// Comma-separated tags; a task runs here only if this worker carries all of its tags.
    #[arg(long, default_value = "")]
    pub tags: String,
    /// Where runs without a `working_directory` start (default: the current directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// On SIGTERM, how long running runs may finish before they are killed.
    #[arg(long, default_value_t = 30)]
    pub drain_s: u64,
    /// Run jobs as this user (the agent must run as root). Without it jobs run as the
    /// agent's user, which cannot read the agent's memory or environment (the agent is
    /// non-dumpable) but can read that user's files.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Where the agent records the runs it supervises and the reports it has not
    /// delivered yet, so a restarted agent kills what its crashed predecessor left running
    /// and still reports what finished (default: ./.raftcron-worker-ID).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// PEM file of the CA that issued the nodes' HTTPS certificates.
    #[arg(long, env = "RAFTCRON_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a cluster CA (or reuse the one in --dir) and a certificate per node, for the
    /// nodes' mutual TLS (`cluster.tls_*`) and HTTPS (`node.http_tls_*`); clients trust
    /// `ca.pem` (`--ca-file`).
    Init {
        /// Where ca.pem, ca.key, node-ID.pem and node-ID.key are written.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A node: `ID`, or `ID=HOST+HOST` with the names or IPs it is reached by
        /// (repeatable). Each certificate also names `node-ID`.
        #[arg(long = "node", required = true)]
        nodes: Vec<crate::certs::NodeCert>,
        /// Hosts every node certificate names, comma-separated (e.g. 127.0.0.1,localhost
        /// for a cluster on one machine).
        #[arg(long, default_value = "")]
        hosts: String,
        /// Validity of the node certificates, in days (the CA's is ten times longer).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum DebugCmd {
    /// Recompute every maintained index and counter (task status and name indexes, task
    /// and run counts) from the tasks and runs tables and report where they differ; exit 1
    /// if anything does.
    Verify {
        /// The node's data dir (`node.data_dir`).
        data_dir: PathBuf,
    },
    /// Build a synthetic state through the real apply path and write it as a snapshot
    /// file, for `raftcron snapshot restore`: tasks named `job-teamNN-<n>` (every 100th
    /// paused) with finished runs. How the scale bench starts from a million tasks.
    Generate {
        /// Where to write the snapshot file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        tasks: u64,
        /// Finished runs stored per task.
        #[arg(long, default_value_t = 0)]
        runs_per_task: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent snapshot of the cluster's whole state (as of a linearizable
    /// read) to FILE, through any node's API (admin). The file holds every task secret:
    /// keep it as you keep the nodes' data dirs.
    Save {
        #[command(flatten)]
        client: ClientArgs,
        /// Where to write it (`-` for stdout).
        file: PathBuf,
        /// Encrypt it (age, X25519) to this public key (`age1...`, from `snapshot keygen`
        /// or `age-keygen`); repeatable. The machine taking backups needs no secret key.
        #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
        recipients: Vec<String>,
        /// Encrypt it to the public keys of this age identity file.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Make a key for encrypted backups: an age identity file (mode 0600, never over an
    /// existing file); prints its public key for `snapshot save --recipient`.
    Keygen { file: PathBuf },
    /// Seed a new node's data dir from a snapshot file: the node starts as the only voter
    /// of a new cluster (a new cluster id) holding the snapshot's state; add more nodes
    /// with `raftcron cluster add-node`, and they catch up from it.
    Restore {
        file: PathBuf,
        /// The new node's data dir; it must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The node id the node will be started with (`node.id`).
        #[arg(long)]
        node_id: u64,
        /// The address other nodes reach it at (`node.rpc_addr`, or its advertised address).
        #[arg(long)]
        rpc_addr: String,
        /// Its REST address, as the cluster view shows it.
        #[arg(long, default_value = "")]
        http_addr: String,
        /// The age identity file an encrypted backup was encrypted to.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// The next fire times of an expression (computed locally, as the scheduler does).
    Preview {
        /// e.g. "0 */6 * * *", "@daily", "@every 90s".
        expr: String,
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// RFC 3339 instant; default now.
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Mint a JWT under the `[auth.jwt]` of a node's config (HS256: signed with its
    /// secret; RS256/ES256: with `--private-key`), with its issuer and audience if set,
    /// and print it.
    Create {
        /// The node config file that holds `[auth.jwt]` (environment and `--set` apply
        /// as for `serve`).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// admin, operator, viewer or worker.
        #[arg(long, value_parser = parse_role)]
        role: crate::config::Role,
        /// Who the token speaks for (a `worker` token: the worker id).
        #[arg(long)]
        sub: String,
        /// How long it is valid: `30m`, `12h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// PEM private key, for RS256 and ES256.
        #[arg(long)]
        private_key: Option<PathBuf>,
    },
}

fn parse_role(s: &str) -> Result<crate::config::Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?} is not a role: admin, operator, viewer or worker"))
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, leader, term, and each node's indexes.
    Status,
    /// Add a node (learner first, voter once caught up).
    AddNode {
        id: u64,
        rpc_addr: String,
        #[arg(long, default_value = "")]
        http_addr: String,
    },
    /// Remove a node.
    RemoveNode { id: u64 },
    /// Hand leadership to a voter.
    TransferLeader { to: u64 },
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn process_env() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("RAFTCRON_")).collect()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if !cli.command.is_client() {
        // These hold credentials (API keys, the cluster secret) and may start jobs.
        worker::protect_process_memory();
    }
    match cli.command {
        Cmd::Dev { data_dir, http, no_worker, run_as } => run_dev(data_dir, http, !no_worker, run_as).await,
        Cmd::Serve(args) => run_serve(args).await,
        Cmd::Worker(WorkerArgs { command: Some(command), .. }) => resources::worker(command).await,
        Cmd::Worker(args) => run_worker(args).await,
        Cmd::Healthcheck { addr, https } => healthcheck(addr, https).await,
        Cmd::RunShim => bail!("run-shim runs before the async runtime starts (see main.rs)"),
        Cmd::Cluster { client, command } => run_cluster(&client.connect()?, command).await,
        Cmd::Task { client, command } => resources::task(&client.connect()?, command).await,
        Cmd::Run { client, command } => resources::run(&client.connect()?, command).await,
        Cmd::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "raftcron", &mut script);
            client::out!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Cmd::Certs { command: CertsCmd::Init { dir, nodes, hosts, days } } => {
            let hosts: Vec<String> =
                hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(String::from).collect();
            let issued = crate::certs::init(&dir, &nodes, &hosts, days)?;
            if issued.ca_created {
                println!("created the cluster CA in {} (keep ca.key offline once nodes are issued)", dir.display());
            }
            for path in &issued.written {
                println!("wrote {}", path.display());
            }
            for path in &issued.kept {
                println!("kept {} (exists)", path.display());
            }
            Ok(())
        }
        Cmd::Token { command: TokenCmd::Create { config, sets, role, sub, ttl, private_key } } => {
            let token = create_token(config.as_deref(), &sets, role, &sub, &ttl, private_key.as_deref())?;
            println!("{token}");
            Ok(())
        }
        Cmd::Snapshot { command: SnapshotCmd::Save { client, file, recipients, key_file } } => {
            let recipients = crypto::recipients(&recipients, key_file.as_deref())?;
            snapshot::save(client, &file, recipients).await
        }
        Cmd::Snapshot { command: SnapshotCmd::Keygen { file } } => {
            let public = crypto::keygen(&file)?;
            eprintln!("wrote {} (keep it secret; restores need it); its public key:", file.display());
            client::outln!("{public}");
            Ok(())
        }
        Cmd::Snapshot { command: SnapshotCmd::Restore { file, data_dir, node_id, rpc_addr, http_addr, key_file } } => {
            let info = crate::raft::NodeInfo { rpc_addr, http_addr };
            snapshot::restore(&file, &data_dir, node_id, info, key_file.as_deref())
        }
        Cmd::Recover { force_new_cluster: _, data_dir, node_id, rpc_addr, http_addr } => snapshot::recover(
            &data_dir,
            node_id,
            rpc_addr.map(|rpc_addr| crate::raft::NodeInfo { rpc_addr, http_addr }),
        ),
        Cmd::Debug { command: DebugCmd::Generate { out, tasks, runs_per_task } } => {
            snapshot::generate(&out, tasks, runs_per_task)
        }
        Cmd::Debug { command: DebugCmd::Verify { data_dir } } => {
            let db_dir = data_dir.join("db");
            if !db_dir.is_dir() {
                anyhow::bail!("{} holds no database (is it a node's data_dir?)", data_dir.display());
            }
            // Verifying must not change the dir: one of an older format is not migrated here.
            if let Some(old) = crate::storage::stored_format(&db_dir)?.filter(|f| *f < crate::raft::FORMAT_VERSION) {
                anyhow::bail!(
                    "{} is in format {old}; this binary ({}) would migrate it: start the node once with it first, \
                     or verify it with the release that wrote it",
                    data_dir.display(),
                    crate::raft::FORMAT_VERSION
                );
            }
            let db = crate::storage::open_db(&db_dir).with_context(|| {
                format!("cannot open {} (a running node holds it: stop it first)", db_dir.display())
            })?;
            let problems = crate::storage::Store::new(db).verify()?;
            if problems.is_empty() {
                println!("{}: every index and counter agrees with the tables", data_dir.display());
                return Ok(());
            }
            for p in &problems {
                println!("{p}");
            }
            anyhow::bail!("{} indexes or counters disagree with the tables", problems.len())
        }
        Cmd::Schedule { command: ScheduleCmd::Preview { expr, timezone, count, from } } => {
            let from = match from {
                Some(f) => chrono::DateTime::parse_from_rfc3339(&f)
                    .with_context(|| format!("--from {f:?} is not an RFC 3339 instant"))?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let preview =
                crate::api::schedule::compute(&expr, &timezone, count, from).map_err(|e| anyhow::anyhow!("{e}"))?;
            for t in preview.fire_times {
                println!("{t}");
            }
            Ok(())
        }
    }
}

/// `raftcron token create`: a JWT the nodes configured like `config` accept.
fn create_token(
    config: Option<&std::path::Path>,
    sets: &[String],
    role: crate::config::Role,
    sub: &str,
    ttl: &str,
    private_key: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let cfg = Config::load(config, &process_env(), sets)?;
    let jwt = cfg.auth.jwt.as_ref().context("the config has no [auth.jwt] section: JWTs are not enabled")?;
    if sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let ttl = crate::scheduler::cron::parse_duration(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    if ttl.is_zero() {
        bail!("--ttl must be positive");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = crate::api::jwt::Claims {
        sub: sub.to_string(),
        role,
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone().map(serde_json::Value::String),
    };
    crate::api::jwt::mint(jwt, &claims, private_key).map_err(|e| anyhow::anyhow!("{e}"))
}

/// An agent in this process, talking to the node at `http` with a key that exists only in
/// this process.
async fn embedded_worker(
    server: String,
    id: &str,
    key: &str,
    max_tasks: u32,
    settings: crate::config::WorkerConfig,
    state_dir: PathBuf,
) -> anyhow::Result<RunningAgent> {
    let mut config = AgentConfig::new(server, id, key);
    config.max_tasks = max_tasks;
    config.ca_file = settings.ca_file;
    config.work_dir = settings.work_dir;
    config.run_as = settings.run_as;
    config.state_dir = Some(state_dir);
    worker::start(config).await
}

async fn healthcheck(addr: Option<String>, https: bool) -> anyhow::Result<()> {
    let addr =
        addr.or_else(|| std::env::var("RAFTCRON_NODE_HTTP_ADDR").ok()).unwrap_or_else(|| "127.0.0.1:8080".into());
    let addr = addr.trim_matches('"').replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let https = https || std::env::var_os("RAFTCRON_NODE_HTTP_TLS_CERT_FILE").is_some();
    let url = format!("{}://{addr}/api/health", if https { "https" } else { "http" });
    let resp = reqwest::Client::builder()
        .danger_accept_invalid_certs(https)
        .build()?
        .get(&url)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(())
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let (Some(id), Some(key)) = (args.id, args.key) else {
        return Err(Exit::usage("the worker agent needs --id and --key"));
    };
    crate::model::worker::validate_worker_id(&id).map_err(|e| anyhow::anyhow!("--id: {}", e.reason))?;
    crate::model::worker::validate_slots(args.max_tasks).map_err(|e| anyhow::anyhow!("--max-tasks: {}", e.reason))?;
    let tags: Vec<String> = args.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    let state_dir = args.state_dir.unwrap_or_else(|| PathBuf::from(format!(".raftcron-worker-{id}")));
    let agent = worker::start(AgentConfig {
        server: args.server,
        id,
        name: args.name,
        api_key: key,
        max_tasks: args.max_tasks,
        tags,
        work_dir: args.work_dir,
        drain: std::time::Duration::from_secs(args.drain_s),
        run_as: args.run_as,
        shim: None,
        state_dir: Some(state_dir),
        ca_file: args.ca_file,
    })
    .await?;
    println!("raftcron worker started");
    wait_for_shutdown_signal().await;
    agent.shutdown().await;
    Ok(())
}

async fn run_dev(data_dir: PathBuf, http: String, with_worker: bool, run_as: Option<String>) -> anyhow::Result<()> {
    let sets = vec![
        "node.id=1".to_string(),
        format!("node.data_dir={}", toml_string(&data_dir.to_string_lossy())),
        format!("node.http_addr={}", toml_string(&http)),
        "node.rpc_addr=\"127.0.0.1:0\"".to_string(),
        // One voter on a loopback port no peer ever dials.
        "cluster.insecure=true".to_string(),
    ];
    let mut config = Config::load(None, &BTreeMap::new(), &sets)?;
    let listeners = Listeners::bind(&config).await?;
    // A single voter: itself, at the RPC port it actually got.
    config.cluster.peers = vec![format!("1={}", listeners.rpc.local_addr()?)];
    let (key, generated) = match std::env::var("RAFTCRON_API_KEY") {
        Ok(k) if !k.is_empty() => (k, false),
        _ => (format!("rc_{}", uuid::Uuid::new_v4().simple()), true),
    };
    let running = node::start(config, listeners, std::slice::from_ref(&key)).await?;
    let agent = match with_worker {
        true => {
            let settings = crate::config::WorkerConfig { run_as, work_dir: None, ca_file: None };
            let state_dir = data_dir.join("worker");
            let server = format!("http://{}", running.http_addr);
            Some(embedded_worker(server, "dev-worker", &key, 4, settings, state_dir).await?)
        }
        false => None,
    };
    println!("raftcron dev: API at http://{}/api", running.http_addr);
    println!("dashboard at http://{}/ui/ (sign in with the admin API key)", running.http_addr);
    if agent.is_some() {
        println!("worker dev-worker runs triggered tasks (4 slots; --no-worker to disable)");
    }
    if generated {
        println!("admin API key (generated; set RAFTCRON_API_KEY to choose one): {key}");
    } else {
        println!("admin API key: from RAFTCRON_API_KEY");
    }
    println!("try: curl -H \"Authorization: Bearer $KEY\" http://{}/api/tasks", running.http_addr);
    wait_for_shutdown_signal().await;
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    running.shutdown(true).await;
    Ok(())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut sets = Vec::new();
    if let Some(id) = args.node_id {
        sets.push(format!("node.id={id}"));
    }
    if let Some(d) = &args.data_dir {
        sets.push(format!("node.data_dir={}", toml_string(&d.to_string_lossy())));
    }
    if let Some(h) = &args.http {
        sets.push(format!("node.http_addr={}", toml_string(h)));
    }
    if let Some(r) = &args.rpc {
        sets.push(format!("node.rpc_addr={}", toml_string(r)));
    }
    if let Some(p) = &args.peers {
        let list: Vec<toml::Value> = p.split(',').map(|s| toml::Value::String(s.trim().into())).collect();
        sets.push(format!("cluster.peers={}", toml::Value::Array(list)));
    }
    if args.insecure {
        sets.push("cluster.insecure=true".into());
    }
    sets.extend(args.sets);
    let env = process_env();
    let config = Config::load(args.config.as_deref(), &env, &sets)?;
    let mut extra_keys: Vec<String> =
        env.get("RAFTCRON_API_KEY").filter(|k| !k.is_empty()).cloned().into_iter().collect();
    // The embedded worker's key exists only in this process.
    let worker_key = format!("rc_{}", uuid::Uuid::new_v4().simple());
    if args.worker.is_some() {
        extra_keys.push(worker_key.clone());
    }
    let listeners = Listeners::bind(&config).await?;
    let worker_settings = config.worker.clone();
    // With HTTPS the embedded worker must reach its node by a name the certificate holds.
    let https = config.node.http_tls_cert_file.is_some();
    if https && args.worker.is_some() && (worker_settings.ca_file.is_none() || config.node.advertise_http.is_none()) {
        bail!(
            "--worker with HTTPS needs worker.ca_file (the CA that issued node.http_tls_cert_file) and \
             node.advertise_http (a name the certificate holds, which the worker dials)"
        );
    }
    let worker_state_dir = config.node.data_dir.join("worker");
    let running = node::start(config, listeners, &extra_keys).await?;
    println!("raftcron node {} serving http://{} (rpc {})", running.core.id, running.http_addr, running.rpc_addr);
    let agent = match &args.worker {
        Some(id) => {
            let (slots, dir) = (args.worker_max_tasks, worker_state_dir);
            let server = match https {
                true => format!("https://{}", running.core.http_addr),
                false => format!("http://{}", running.http_addr),
            };
            Some(embedded_worker(server, id, &worker_key, slots, worker_settings, dir).await?)
        }
        None => None,
    };
    wait_for_shutdown_signal().await;
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    running.shutdown(true).await;
    Ok(())
}

async fn wait_for_shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops this node");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

async fn run_cluster(client: &client::Client, cmd: ClusterCmd) -> anyhow::Result<()> {
    let answer = match &cmd {
        ClusterCmd::Status => client.get("/api/cluster").await?,
        ClusterCmd::AddNode { id, rpc_addr, http_addr } => {
            let body = serde_json::json!({"id": id, "rpc_addr": rpc_addr, "http_addr": http_addr});
            client.post("/api/cluster/nodes", Some(&body)).await?
        }
        ClusterCmd::RemoveNode { id } => {
            client.send(client.request(reqwest::Method::DELETE, &format!("/api/cluster/nodes/{id}"))).await?
        }
        ClusterCmd::TransferLeader { to } => {
            client.post("/api/cluster/transfer-leader", Some(&serde_json::json!({"to": to}))).await?
        }
    };
    match (client.json(), &cmd) {
        (true, _) => client.print_json(&answer.data),
        (false, ClusterCmd::Status) => print_cluster_status(&answer.data),
        (false, _) => client::outln!("{}", if answer.message.is_empty() { "ok" } else { &answer.message }),
    }
    Ok(())
}

fn print_cluster_status(d: &serde_json::Value) {
    use client::cell;
    client::outln!("cluster {}  leader {}  term {}", cell(&d["cluster_id"]), d["leader_id"], d["term"]);
    let rows: Vec<Vec<String>> = d["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let s = &m["status"];
            vec![
                cell(&m["id"]),
                cell(&m["membership"]),
                s["role"].as_str().unwrap_or("unreachable").to_string(),
                cell(&m["http_addr"]),
                cell(&m["rpc_addr"]),
                cell(&s["commit_index"]),
                cell(&s["applied_index"]),
            ]
        })
        .collect();
    client::print_table(&["ID", "MEMBER", "ROLE", "HTTP", "RPC", "COMMIT", "APPLIED"], &rows);
}
