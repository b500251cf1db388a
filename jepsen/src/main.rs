//! `jepsen`: a Jepsen-style chaos harness for raftcron.
//!
//! `jepsen run` builds a private network of Linux namespaces, starts real `raftcron serve`
//! processes in it, drives client workloads while nemeses inject faults, heals, reads the
//! final state from every node, checks the history, and writes a report under
//! `jepsen/store/<run>/`. The last line printed is the verdict; the exit code is non-zero
//! when the checker found an anomaly (or the run could not be carried out).
//! `jepsen check <run dir>` re-checks a stored history.

mod checker;
mod history;
mod nemesis;
mod net;
mod proxy;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rand::SeedableRng;
use serde_json::json;

use crate::history::{Event, NemesisEvent, Recorder};
use crate::nemesis::{Family, Nemesis};
use crate::net::Node;
use crate::workload::{Client, Workload};

#[derive(Parser)]
#[command(name = "jepsen", about = "Chaos tests for raftcron")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a test: set up the network, start nodes, run workload and nemeses, check.
    Run(RunArgs),
    /// Check a stored run again.
    Check { dir: PathBuf },
    /// (internal) The delay nemesis's TCP proxy, run inside a node's namespace.
    #[command(hide = true)]
    DelayProxy {
        /// `listen_addr=upstream_addr`, repeatable.
        #[arg(long = "map", required = true)]
        maps: Vec<String>,
        #[arg(long)]
        delay_ms: u64,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
    },
    /// (internal) The part of `run` that executes inside the control namespace.
    #[command(hide = true)]
    Inner {
        #[command(flatten)]
        args: RunArgs,
        #[arg(long)]
        run_dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// register, set, or both comma-separated.
    #[arg(long, default_value = "register,set")]
    workload: String,
    /// kill, pause, partition, clock, flaky, delay, membership, all — comma-separated.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of workload under faults (healing and final reads come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Seconds each fault is held.
    #[arg(long, default_value_t = 8)]
    fault_s: u64,
    /// Seconds of calm after each heal.
    #[arg(long, default_value_t = 4)]
    calm_s: u64,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 6)]
    clients: u64,
    /// The raftcron binary.
    #[arg(long, env = "RAFTCRON_BIN")]
    bin: Option<PathBuf>,
    /// Where runs are stored.
    #[arg(long, default_value = "jepsen/store")]
    store: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = match cli.cmd {
        Cmd::Run(args) => rt.block_on(run_outer(args)),
        Cmd::Inner { args, run_dir } => rt.block_on(run_inner(args, run_dir)),
        Cmd::Check { dir } => check_dir(&dir),
        Cmd::DelayProxy { maps, delay_ms, jitter_ms } => rt.block_on(async move {
            let maps: Vec<(String, String)> = maps
                .iter()
                .map(|m| m.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect::<Option<_>>()
                .context("--map must be listen=upstream")?;
            proxy::run(&maps, Duration::from_millis(delay_ms), Duration::from_millis(jitter_ms)).await?;
            Ok(true)
        }),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("verdict: ERROR ({e})");
            ExitCode::from(2)
        }
    }
}

fn default_bin() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(target).join("debug/raftcron")
}

fn preflight(bin: &Path) -> anyhow::Result<()> {
    let uid = std::process::Command::new("id").arg("-u").output().context("running id")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("jepsen needs root (network namespaces and iptables)");
    }
    for tool in ["ip", "iptables"] {
        if std::process::Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            bail!(
                "{tool} is missing; install iproute2 and iptables (scripts/install-deps.sh iproute2 iptables faketime)"
            );
        }
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists() {
        bail!("libfaketime is missing; install the faketime package");
    }
    if !bin.exists() {
        bail!("raftcron binary {} not found; build it (cargo build) or pass --bin", bin.display());
    }
    Ok(())
}

/// Outside the namespaces: set up the network, run the inner part in the control
/// namespace, always tear down.
async fn run_outer(mut args: RunArgs) -> anyhow::Result<bool> {
    let bin = std::fs::canonicalize(args.bin.clone().unwrap_or_else(default_bin)).unwrap_or_else(|_| default_bin());
    preflight(&bin)?;
    args.bin = Some(bin);
    Workload::parse(&args.workload)?;
    Family::parse(&args.nemesis)?;
    std::fs::create_dir_all(&args.store)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let run_dir = std::fs::canonicalize(&args.store)?.join(format!(
        "{stamp}-{}-{}-s{}",
        args.workload.replace(',', "+"),
        args.nemesis.replace(',', "+"),
        args.seed
    ));
    std::fs::create_dir_all(&run_dir)?;

    struct Teardown(u64);
    impl Drop for Teardown {
        fn drop(&mut self) {
            net::teardown(self.0);
        }
    }
    // One namespace more than the cluster size: the spare node the membership nemesis adds.
    let _guard = Teardown(args.nodes + 1);
    net::setup(args.nodes + 1).context("setting up network namespaces")?;
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", net::CTL_NS]).arg(exe).arg("inner");
    cmd.args(["--workload", &args.workload, "--nemesis", &args.nemesis]);
    cmd.args(["--time-limit", &args.time_limit.to_string(), "--seed", &args.seed.to_string()]);
    cmd.args(["--nodes", &args.nodes.to_string(), "--fault-s", &args.fault_s.to_string()]);
    cmd.args(["--calm-s", &args.calm_s.to_string(), "--clients", &args.clients.to_string()]);
    cmd.arg("--bin")
        .arg(args.bin.as_ref().expect("set above"))
        .arg("--store")
        .arg(&args.store)
        .arg("--run-dir")
        .arg(&run_dir);
    let status = cmd.status().await.context("running the inner harness")?;
    drop(_guard);
    let _ = report::write_index(&std::fs::canonicalize(&args.store)?);
    let results: serde_json::Value = std::fs::read_to_string(run_dir.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    println!("report: {}", run_dir.display());
    match results["valid"].as_bool() {
        Some(true) if status.success() => {
            println!("verdict: VALID ({} ops, 0 anomalies)", results["ops"]);
            Ok(true)
        }
        Some(_) => {
            let n = results["verdict"]["anomalies"].as_array().map_or(0, |a| a.len());
            println!("verdict: INVALID ({n} anomalies; see {}/results.json)", run_dir.display());
            Ok(false)
        }
        None => bail!("the run did not complete ({status}); see {}", run_dir.display()),
    }
}

async fn wait_healthy(nodes: &[Node], within: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let deadline = Instant::now() + within;
    loop {
        let mut healthy = 0;
        for n in nodes {
            if let Ok(r) = http.get(format!("http://{}/api/health", n.http())).send().await {
                if r.status() == 200 {
                    healthy += 1;
                }
            }
        }
        if healthy == nodes.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {healthy}/{} nodes healthy after {within:?}", nodes.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After healing: every node reports the same applied index and state digest.
async fn convergence(nodes: &[Node], within: Duration) -> Result<String, String> {
    let client = Client::new(nodes.iter().map(Node::http).collect());
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let workload::Outcome::Ok(v) =
            client.request(reqwest::Method::GET, &client.nodes[0], "/api/cluster?digest=true", None, None).await
        {
            let states: std::collections::BTreeSet<(String, String)> = v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| (m["status"]["applied_index"].to_string(), m["status"]["state_digest"].to_string()))
                .collect();
            let reachable = v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["reachable"] == true).count());
            if states.len() == 1 && reachable == nodes.len() {
                let (idx, digest) = states.into_iter().next().expect("one");
                return Ok(format!("all {} nodes at applied index {idx}, digest {digest}", nodes.len()));
            }
            last = format!("{states:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("nodes did not converge within {within:?}: {last}"))
}

/// Inside the control namespace: nodes, clients, nemesis, final phase, check, report.
async fn run_inner(args: RunArgs, run_dir: PathBuf) -> anyhow::Result<bool> {
    let bin = args.bin.clone().unwrap_or_else(default_bin);
    let workloads = Workload::parse(&args.workload)?;
    let families = Family::parse(&args.nemesis)?;
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let mut n = Node::prepare(id, args.nodes, &run_dir)?;
        n.start(&bin)?;
        nodes.push(n);
    }
    let mut spare = Node::prepare(args.nodes + 1, args.nodes, &run_dir)?;
    spare.start(&bin)?;
    let outcome = drive(&args, &bin, &workloads, &families, &mut nodes, &mut spare, &run_dir).await;
    for n in nodes.iter_mut().chain(std::iter::once(&mut spare)) {
        n.kill();
    }
    outcome
}

async fn drive(
    args: &RunArgs,
    bin: &Path,
    workloads: &[Workload],
    families: &[Family],
    nodes: &mut Vec<Node>,
    spare: &mut Node,
    run_dir: &Path,
) -> anyhow::Result<bool> {
    wait_healthy(nodes, Duration::from_secs(60)).await?;
    let client = Arc::new(Client::new(nodes.iter().map(Node::http).collect()));
    let mut registers = Vec::new();
    if workloads.contains(&Workload::Register) {
        workload::setup_registers(&client).await?;
        registers = workload::register_ids(&client).await?;
    }
    let start = Instant::now();
    let rec = Recorder::new(start);
    let stop = start + Duration::from_secs(args.time_limit);
    let mut handles = Vec::new();
    for slot in 0..args.clients {
        let w = workloads[slot as usize % workloads.len()];
        handles.push(tokio::spawn(workload::run_client(
            slot,
            args.clients,
            w,
            client.clone(),
            registers.clone(),
            rec.clone(),
            stop,
        )));
    }
    let rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut nem = Nemesis::new(nodes, spare, bin, rng, rec.clone());
    let nem_result = nem.run(families, stop, Duration::from_secs(args.fault_s), Duration::from_secs(args.calm_s)).await;
    nem.heal().await?;
    let nemesis_events: Vec<NemesisEvent> = std::mem::take(&mut nem.events);
    nem_result?;
    for h in handles {
        h.await?;
    }
    // Final phase: everything healed; one leader; read through every node.
    wait_healthy(nodes, Duration::from_secs(60)).await?;
    workload::final_reads(&client, &registers, &rec).await;
    let converged = convergence(nodes, Duration::from_secs(30)).await;

    let events: Vec<Event> = rec.events();
    history::write_jsonl(&run_dir.join("history.jsonl"), &events)?;
    history::write_jsonl(&run_dir.join("nemesis.jsonl"), &nemesis_events)?;
    std::fs::write(run_dir.join("latency.svg"), report::latency_svg(&events, &nemesis_events))?;
    let mut verdict = checker::check(&events);
    match &converged {
        Ok(_) => {}
        Err(e) => {
            verdict.anomalies.push(format!("convergence: {e}"));
            verdict.valid = false;
        }
    }
    let ops = events.iter().filter(|e| e.kind == history::Kind::Invoke).count();
    let results = json!({
        "workload": args.workload, "nemesis": args.nemesis, "seed": args.seed, "nodes": args.nodes,
        "time_limit_s": args.time_limit, "ops": ops, "valid": verdict.valid,
        "convergence": converged.as_ref().map_or_else(|e| e.clone(), |s| s.clone()),
        "nemesis_applied": nemesis_events.iter().map(|n| format!("{} @{:.1}s: {}", n.name, n.start_ns as f64 / 1e9, n.detail)).collect::<Vec<_>>(),
        "verdict": verdict,
    });
    std::fs::write(run_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    for n in &nemesis_events {
        println!(
            "nemesis {:>6.1}s–{:>6.1}s {:<9} {}",
            n.start_ns as f64 / 1e9,
            n.end_ns as f64 / 1e9,
            n.name,
            n.detail
        );
    }
    for (f, (ok, fail, info)) in &verdict.counts {
        println!("ops {f:<10} ok {ok:>6}  fail {fail:>6}  info {info:>6}");
    }
    println!("convergence: {}", results["convergence"].as_str().unwrap_or(""));
    for a in &verdict.anomalies {
        println!("ANOMALY: {a}");
    }
    Ok(verdict.valid)
}

fn check_dir(dir: &Path) -> anyhow::Result<bool> {
    let events: Vec<Event> = history::read_jsonl(&dir.join("history.jsonl"))?;
    let verdict = checker::check(&events);
    for a in &verdict.anomalies {
        println!("ANOMALY: {a}");
    }
    println!(
        "verdict: {} ({} events, {} anomalies)",
        if verdict.valid { "VALID" } else { "INVALID" },
        events.len(),
        verdict.anomalies.len()
    );
    Ok(verdict.valid)
}
