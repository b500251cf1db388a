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
mod lossyfs;
mod nemesis;
mod net;
mod phases;
mod proxy;
mod report;
mod runs;
mod schedule;
mod truth;
mod worker;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rand::SeedableRng;
use serde_json::json;

use crate::checker::{Anomaly, Minimums};
use crate::history::{Event, NemesisEvent, Recorder};
use crate::nemesis::{Family, Nemesis, Timing};
use crate::net::{Node, NodeConfig};
use crate::workload::{Client, Route, Workload};

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
    /// A FUSE file system over `--backing` at `--mountpoint` that keeps unsynced writes
    /// in memory: SIGTERM (or SIGKILL) is a power cut that loses them. Runs in the
    /// foreground; needs root and /dev/fuse.
    Lossyfs {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
    },
    /// (internal) The job of the runs workload's tasks: logs its run, attempt, worker and
    /// CLOCK_MONOTONIC times to `--out` while it runs `--ms` milliseconds.
    #[command(hide = true)]
    Job {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        ms: u64,
    },
    /// (internal) The part of `run` that executes inside the control namespace; reads
    /// its arguments from `<run_dir>/args.json`.
    #[command(hide = true)]
    Inner {
        #[arg(long)]
        run_dir: PathBuf,
    },
}

#[derive(Args, Clone, serde::Serialize, serde::Deserialize)]
struct RunArgs {
    /// register, set, runs, schedule, comma-separated.
    #[arg(long, default_value = "register,set")]
    workload: String,
    /// Worker agents (each in its own namespace) for the runs and schedule workloads.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// Comma-separated nemesis families (see the README): kill, kill-majority, kill-all,
    /// power, power-majority, power-all, pause, partition, clock, flaky, delay, leader,
    /// membership, membership-partition, bridge-hold, all.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of workload under faults (healing and final reads come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Apply each nemesis family exactly once (in a seeded order), then stop; the time
    /// limit is ignored. CI's run: every family is covered, however long each takes.
    #[arg(long)]
    once: bool,
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
    /// Concurrent client processes, split between the workloads; each workload's first
    /// clients stick to one node each, the rest go through a round-robin balancer.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// After each heal, a write must succeed within this many seconds.
    #[arg(long, default_value_t = 30)]
    recovery_s: u64,
    /// How long `bridge-hold` holds its partition (writes must succeed during it).
    #[arg(long, default_value_t = 30)]
    bridge_hold_s: u64,
    /// The nodes' `snapshot_every_entries` (small values put snapshots under pressure).
    #[arg(long, default_value_t = 500)]
    snapshot_every: u64,
    /// The nodes' `snapshot_log_ratio`: 0 (the default here) lets `--snapshot-every` alone
    /// decide, so a small value keeps snapshots frequent however the state grows.
    #[arg(long, default_value_t = 0.0)]
    snapshot_log_ratio: f64,
    /// The nodes' `quorum_loss_probe_ms` (openraft's opt-in `quorum_loss_probe_interval`);
    /// 0 turns it off, unset keeps raftcron's default.
    #[arg(long)]
    quorum_loss_probe_ms: Option<u64>,
    /// Run every node on lossyfs even without power faults (power faults imply it).
    #[arg(long)]
    lossyfs: bool,
    /// Fail the run unless each workload has this many ok operations (default: 2 per
    /// second of time limit, at least 50).
    #[arg(long)]
    min_ok: Option<u64>,
    /// Fail the run unless each workload has this many acknowledged writes (default: one
    /// per 2 s of time limit, at least 20).
    #[arg(long)]
    min_writes: Option<u64>,
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
        Cmd::Inner { run_dir } => rt.block_on(run_inner(run_dir)),
        Cmd::Lossyfs { backing, mountpoint } => lossyfs::run(&backing, &mountpoint).map(|()| true),
        Cmd::Job { out, ms } => truth::job(&out, ms).map(|()| true),
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

/// Unix time now, in ns.
fn wall_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
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
    let workloads = Workload::parse(&args.workload)?;
    for f in Family::parse(&args.nemesis)? {
        if args.nodes < f.min_nodes() {
            bail!("nemesis {} needs at least {} nodes (--nodes)", f.name(), f.min_nodes());
        }
        if f.needs_workers() && !workloads.iter().any(|w| w.needs_workers()) {
            bail!("nemesis {} needs workers: add the runs or schedule workload (--workload ...,runs)", f.name());
        }
    }
    if workloads.iter().any(|w| w.needs_workers()) && args.workers < 2 {
        bail!("the runs and schedule workloads need at least 2 workers (--workers)");
    }
    if args.clients < 2 || (args.clients as usize) < workloads.len() {
        bail!("--clients must be at least 2 and at least one per workload ({})", workloads.len());
    }
    std::fs::create_dir_all(&args.store)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let run_dir = std::fs::canonicalize(&args.store)?.join(format!(
        "{stamp}-{}-{}-s{}",
        args.workload.replace(',', "+"),
        args.nemesis.replace(',', "+"),
        args.seed
    ));
    std::fs::create_dir_all(&run_dir)?;

    struct Teardown(Vec<u64>);
    impl Drop for Teardown {
        fn drop(&mut self) {
            net::teardown(&self.0);
        }
    }
    // One namespace more than the cluster size (the spare node the membership nemesis
    // adds), and one per worker.
    let mut ns_ids: Vec<u64> = (1..=args.nodes + 1).collect();
    if workloads.iter().any(|w| w.needs_workers()) {
        ns_ids.extend((1..=args.workers).map(|k| worker::WORKER_NS_BASE + k));
    }
    let _guard = Teardown(ns_ids.clone());
    net::setup(&ns_ids).context("setting up network namespaces")?;
    std::fs::write(run_dir.join("args.json"), serde_json::to_string_pretty(&args)?)?;
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", net::CTL_NS]).arg(exe).arg("inner").arg("--run-dir").arg(&run_dir);
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
/// After the final reads: stops every node and runs `raftcron debug verify` on its data
/// dir, which recomputes the maintained counters and indexes from the tables.
fn verify_indexes(bin: &Path, nodes: &mut [Node]) -> Result<(), String> {
    let mut failed = Vec::new();
    for n in nodes.iter_mut() {
        n.kill();
        match std::process::Command::new(bin).arg("debug").arg("verify").arg(n.data()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failed.push(format!(
                "n{}: {}{}",
                n.id,
                String::from_utf8_lossy(&out.stdout).lines().take(5).collect::<Vec<_>>().join("; "),
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )),
            Err(e) => failed.push(format!("n{}: cannot run {}: {e}", n.id, bin.display())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("indexes disagree with the tables: {}", failed.join(" | ")))
    }
}

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
async fn run_inner(run_dir: PathBuf) -> anyhow::Result<bool> {
    let args: RunArgs = serde_json::from_str(&std::fs::read_to_string(run_dir.join("args.json"))?)?;
    let bin = args.bin.clone().unwrap_or_else(default_bin);
    let workloads = Workload::parse(&args.workload)?;
    let families = Family::parse(&args.nemesis)?;
    let lossy = args.lossyfs || families.iter().any(|f| f.needs_lossyfs());
    let cfg = NodeConfig {
        snapshot_every: args.snapshot_every,
        snapshot_log_ratio: args.snapshot_log_ratio,
        quorum_loss_probe_ms: args.quorum_loss_probe_ms,
    };
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(Node::prepare(id, args.nodes, &run_dir, &cfg, lossy)?);
    }
    let mut spare = Node::prepare(args.nodes + 1, args.nodes, &run_dir, &cfg, lossy)?;
    let mut workers = Vec::new();
    if workloads.iter().any(|w| w.needs_workers()) {
        for k in 1..=args.workers {
            workers.push(worker::Worker::prepare(k, &run_dir)?);
        }
    }
    let mut started = Ok(());
    for n in nodes.iter_mut().chain(std::iter::once(&mut spare)) {
        started = started.and_then(|()| n.start(&bin));
    }
    let node_ids: Vec<u64> = (1..=args.nodes).collect();
    for w in &mut workers {
        started = started.and_then(|()| w.start(&bin, &node_ids));
    }
    let outcome = match started {
        Ok(()) => {
            drive(&args, &bin, &workloads, &families, lossy, &mut nodes, &mut spare, &mut workers, &run_dir).await
        }
        Err(e) => Err(e),
    };
    for w in &mut workers {
        w.kill();
    }
    for n in nodes.iter_mut().chain(std::iter::once(&mut spare)) {
        n.shut_down();
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &RunArgs,
    bin: &Path,
    workloads: &[Workload],
    families: &[Family],
    lossy: bool,
    nodes: &mut Vec<Node>,
    spare: &mut Node,
    workers: &mut Vec<worker::Worker>,
    run_dir: &Path,
) -> anyhow::Result<bool> {
    wait_healthy(nodes, Duration::from_secs(60)).await?;
    let client = Arc::new(Client::new(nodes.iter().map(Node::http).collect()));
    let mut registers = Vec::new();
    if workloads.contains(&Workload::Register) {
        workload::setup_registers(&client).await?;
        registers = workload::register_ids(&client).await?;
    }
    let truth_path = run_dir.join("truth.log");
    let mut runs_tasks = Vec::new();
    if workloads.contains(&Workload::Runs) {
        runs_tasks = runs::setup(&client, &std::env::current_exe()?, &truth_path).await?;
    }
    let start = Instant::now();
    // The history's clock and the jobs' truth lines share CLOCK_MONOTONIC (Instant's);
    // the schedule checker maps ticks to it through the wall clock read at the same time.
    let start_mono_ns = truth::monotonic_ns();
    let start_wall_ns = wall_ns();
    let rec = Recorder::new(start);
    let sched_truth_path = run_dir.join("sched-truth.log");
    let mut sched_tasks = Vec::new();
    if workloads.contains(&Workload::Schedule) {
        sched_tasks = schedule::setup(&client, &std::env::current_exe()?, &sched_truth_path, &rec).await?;
    }
    let stop = workload::Stop::default();
    let mut handles = Vec::new();
    // Client slot k serves workload k % w as that workload's client k / w. Process ids
    // are the slot plus multiples of the slot count (a retired process's successor).
    let slots = args.clients;
    let sched_clients = (0..slots).filter(|s| workloads[*s as usize % workloads.len()] == Workload::Schedule).count();
    for slot in 0..slots {
        let w = workloads[slot as usize % workloads.len()];
        let route = Route::for_client(slot / workloads.len() as u64, nodes.len());
        if w == Workload::Schedule {
            let (client, tasks, rec, stop) = (client.clone(), sched_tasks.clone(), rec.clone(), stop.clone());
            let own = (slot / workloads.len() as u64) as usize;
            handles.push(tokio::spawn(schedule::run_client(
                slot,
                slots,
                own,
                sched_clients,
                route,
                client,
                tasks,
                rec,
                stop,
            )));
            continue;
        }
        if w == Workload::Runs {
            let (client, tasks, rec, stop) = (client.clone(), runs_tasks.clone(), rec.clone(), stop.clone());
            let clients = (0..slots).filter(|s| workloads[*s as usize % workloads.len()] == Workload::Runs).count();
            handles.push(tokio::spawn(runs::run_client(slot, slots, clients, route, client, tasks, rec, stop)));
            continue;
        }
        handles.push(tokio::spawn(workload::run_client(
            slot,
            slots,
            route,
            w,
            client.clone(),
            registers.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    if workloads.contains(&Workload::Set) {
        handles.push(tokio::spawn(workload::run_set_reader(
            workload::READER_PROCESS,
            client.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    let rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let timing = Timing {
        fault: Duration::from_secs(args.fault_s),
        calm: Duration::from_secs(args.calm_s),
        bridge_hold: Duration::from_secs(args.bridge_hold_s),
        recovery: Duration::from_secs(args.recovery_s),
    };
    let mut nem = Nemesis::new(nodes, spare, workers, bin, rng, rec.clone(), timing, lossy);
    let nem_result = if args.once {
        nem.run_once(families).await
    } else {
        nem.run(families, start + Duration::from_secs(args.time_limit)).await
    };
    let heal_result = nem.heal().await;
    stop.set();
    let nemesis_events: Vec<NemesisEvent> = std::mem::take(&mut nem.events);
    // A fault the nemesis could not apply or undo (a membership change that never
    // committed, say) is a finding about the cluster: recorded, and the history checked.
    for h in handles {
        h.await?;
    }
    let run_end_ns = rec.now_ns();
    let seconds = run_end_ns / 1_000_000_000;
    // Final phase: everything healed; one leader; read through every node. A cluster that
    // never comes back is an anomaly of the run (lost data, a stuck election), not an
    // error of the harness: the history so far is still checked.
    let healthy = wait_healthy(nodes, Duration::from_secs(60)).await;
    workload::final_reads(&client, &registers, workloads.contains(&Workload::Set), &rec).await;
    if workloads.contains(&Workload::Runs) {
        runs::final_reads(&client, &runs_tasks, &rec).await;
    }
    if workloads.contains(&Workload::Schedule) {
        schedule::final_reads(&client, &sched_tasks, &rec, runs::SETTLE).await;
    }
    let converged = convergence(nodes, Duration::from_secs(30)).await;
    let indexes = verify_indexes(bin, nodes);

    let events: Vec<Event> = rec.events();
    history::write_jsonl(&run_dir.join("history.jsonl"), &events)?;
    history::write_jsonl(&run_dir.join("nemesis.jsonl"), &nemesis_events)?;
    let defaults = Minimums::for_seconds(seconds);
    let minimums = Minimums {
        ok_ops: args.min_ok.unwrap_or(defaults.ok_ops),
        acked_writes: args.min_writes.unwrap_or(defaults.acked_writes),
    };
    let evidence = checker::Evidence {
        runs: checker::runs::Truth { lines: truth::read(&truth_path)?, start_mono_ns },
        schedule: checker::runs::Truth { lines: truth::read(&sched_truth_path)?, start_mono_ns },
        faults: nemesis_events.clone(),
        start_wall_ns,
    };
    let mut verdict = checker::check(&events, minimums, &evidence);
    let (fault_anomalies, availability) = phases::judge(&events, &nemesis_events, run_end_ns);
    for a in fault_anomalies {
        verdict.push(a);
    }
    if let Err(e) = &nem_result {
        verdict.push(Anomaly::new("nemesis", format!("a fault could not be carried out: {e:#}"), Vec::new()));
    }
    if let Err(e) = &heal_result {
        verdict.push(Anomaly::new("nemesis", format!("the last heal failed: {e:#}"), Vec::new()));
    }
    if let Err(e) = &healthy {
        verdict.push(Anomaly::new("final", format!("after healing: {e:#}"), Vec::new()));
    }
    if let Err(e) = &converged {
        verdict.push(Anomaly::new("convergence", e.clone(), Vec::new()));
    }
    if let Err(e) = &indexes {
        verdict.push(Anomaly::new("indexes", e.clone(), Vec::new()));
    }
    let ops = events.iter().filter(|e| e.kind == history::Kind::Invoke).count();
    let results = json!({
        "workload": args.workload, "nemesis": args.nemesis, "seed": args.seed, "nodes": args.nodes,
        "time_limit_s": args.time_limit, "seconds": seconds, "once": args.once, "ops": ops, "valid": verdict.valid,
        "lossyfs": lossy, "snapshot_every": args.snapshot_every, "quorum_loss_probe_ms": args.quorum_loss_probe_ms,
        "workers": if workloads.iter().any(|w| w.needs_workers()) { args.workers } else { 0 },
        "start_mono_ns": start_mono_ns, "start_wall_ns": start_wall_ns.to_string(),
        "truth_lines": evidence.runs.lines.len(), "sched_truth_lines": evidence.schedule.lines.len(),
        "minimums": {"ok_ops": minimums.ok_ops, "acked_writes": minimums.acked_writes},
        "convergence": converged.as_ref().map_or_else(|e| e.clone(), |s| s.clone()),
        "faults": nemesis_events,
        "availability": availability,
        "verdict": verdict,
    });
    std::fs::write(run_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    report::write_run(run_dir, &events, &nemesis_events, &results)?;
    for n in &nemesis_events {
        println!(
            "nemesis {:>6.1}s–{:>6.1}s {:<20} {}{}",
            n.start_ns as f64 / 1e9,
            n.end_ns as f64 / 1e9,
            n.name,
            n.detail,
            n.recovery_ms.map_or(" | NOT RECOVERED".into(), |ms| format!(" | recovered in {ms} ms"))
        );
    }
    for p in &availability.phases {
        println!(
            "phase {:<20} quorum {:<5} ok/s faulty {:>7.1} healed {:>7.1}{}",
            p.name,
            p.quorum,
            p.ok_per_s_faulty,
            p.ok_per_s_healed,
            p.liveness_ms.map_or(String::new(), |ms| format!(" | first write during the fault after {ms} ms"))
        );
    }
    println!(
        "availability: ok/s {:.1} under faults that keep a quorum, {:.1} under quorum-less faults, {:.1} healed",
        availability.ok_per_s_faulty_with_quorum,
        availability.ok_per_s_faulty_without_quorum,
        availability.ok_per_s_healed
    );
    for (f, (ok, fail, info)) in &verdict.counts {
        println!("ops {f:<12} ok {ok:>6}  fail {fail:>6}  info {info:>6}");
    }
    if workloads.contains(&Workload::Schedule) {
        let s = &verdict.schedule;
        println!(
            "schedule: {} tasks, {} changes, {} ticks fired, {} skipped, {} jobs ran; {} ticks due in calm time, fired at most {} ms late",
            s.tasks, s.changes, s.fired, s.skipped, s.executions, s.calm_ticks, s.max_calm_lag_ms
        );
    }
    println!("convergence: {}", results["convergence"].as_str().unwrap_or(""));
    for a in &verdict.anomalies {
        println!("ANOMALY: {a}");
    }
    Ok(verdict.valid)
}

fn check_dir(dir: &Path) -> anyhow::Result<bool> {
    let events: Vec<Event> = history::read_jsonl(&dir.join("history.jsonl"))?;
    let faults: Vec<NemesisEvent> = history::read_jsonl(&dir.join("nemesis.jsonl")).unwrap_or_default();
    let results: serde_json::Value = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let seconds = results["seconds"].as_u64().or(results["time_limit_s"].as_u64()).unwrap_or(0);
    let minimums = Minimums {
        ok_ops: results["minimums"]["ok_ops"].as_u64().unwrap_or(Minimums::for_seconds(seconds).ok_ops),
        acked_writes: results["minimums"]["acked_writes"]
            .as_u64()
            .unwrap_or(Minimums::for_seconds(seconds).acked_writes),
    };
    let start_mono_ns = results["start_mono_ns"].as_u64().unwrap_or(0);
    let evidence = checker::Evidence {
        runs: checker::runs::Truth { lines: truth::read(&dir.join("truth.log"))?, start_mono_ns },
        schedule: checker::runs::Truth { lines: truth::read(&dir.join("sched-truth.log"))?, start_mono_ns },
        faults: faults.clone(),
        start_wall_ns: results["start_wall_ns"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    let mut verdict = checker::check(&events, minimums, &evidence);
    let end = events.iter().map(|e| e.time_ns).max().unwrap_or(0);
    for a in phases::judge(&events, &faults, end).0 {
        verdict.push(a);
    }
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
