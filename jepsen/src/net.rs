//! The test network and the nodes on it.
//!
//! Layout: a control namespace `rcj-ctl` holds a bridge (10.77.0.254/24) and runs the
//! harness's clients; each node K runs in namespace `rcj-nK` at 10.77.0.K (worker K in
//! `rcj-n10K`, see `crate::worker`), joined to the bridge by a veth pair. The subnet exists only inside these namespaces. Faults are
//! applied inside the node namespaces: iptables for partitions and lossy links, signals
//! for kills and pauses, a libfaketime timestamp file per node for clock skew.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

pub const CTL_NS: &str = "rcj-ctl";
const BRIDGE: &str = "rcjbr0";
pub const SUBNET_PREFIX: &str = "10.77.0";
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub fn node_ns(id: u64) -> String {
    format!("rcj-n{id}")
}

pub fn node_ip(id: u64) -> String {
    format!("{SUBNET_PREFIX}.{id}")
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs a command inside a node's namespace.
pub fn in_ns(id: u64, args: &[&str]) -> anyhow::Result<()> {
    let ns = node_ns(id);
    let mut full = vec!["ip", "netns", "exec", ns.as_str()];
    full.extend_from_slice(args);
    sh(&full)
}

/// Runs a command inside a node's namespace and returns its standard output.
pub fn in_ns_output(id: u64, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(["netns", "exec", &node_ns(id)]).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?} in {} failed: {}", node_ns(id), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the namespaces, bridge and veths for the namespace ids `ids` (nodes, the
/// spare, workers). Idempotent: leftovers of an interrupted run are removed first.
pub fn setup(ids: &[u64]) -> anyhow::Result<()> {
    teardown(ids);
    sh(&["ip", "netns", "add", CTL_NS])?;
    sh(&["ip", "netns", "exec", CTL_NS, "ip", "link", "set", "lo", "up"])?;
    sh(&["ip", "netns", "exec", CTL_NS, "ip", "link", "add", BRIDGE, "type", "bridge"])?;
    sh(&["ip", "netns", "exec", CTL_NS, "ip", "addr", "add", &format!("{SUBNET_PREFIX}.254/24"), "dev", BRIDGE])?;
    sh(&["ip", "netns", "exec", CTL_NS, "ip", "link", "set", BRIDGE, "up"])?;
    for &id in ids {
        let ns = node_ns(id);
        let (inner, outer) = (format!("rcjv{id}"), format!("rcjb{id}"));
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        // Create the pair inside the node namespace, then move one end to the control one.
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &outer, "netns", CTL_NS])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", node_ip(id)), "dev", &inner])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
        sh(&["ip", "netns", "exec", CTL_NS, "ip", "link", "set", &outer, "master", BRIDGE])?;
        sh(&["ip", "netns", "exec", CTL_NS, "ip", "link", "set", &outer, "up"])?;
    }
    Ok(())
}

/// Kills whatever still runs in the namespaces `ids` and the control one, and deletes
/// them. Never fails: it runs on every exit path.
pub fn teardown(ids: &[u64]) {
    for &id in ids {
        kill_ns_processes(&node_ns(id));
        let _ = Command::new("ip").args(["netns", "del", &node_ns(id)]).stderr(Stdio::null()).status();
    }
    kill_ns_processes(CTL_NS);
    let _ = Command::new("ip").args(["netns", "del", CTL_NS]).stderr(Stdio::null()).status();
}

/// `bin` (raftcron) to run inside namespace `id` (`ip netns exec` execs it, so the child's
/// pid is raftcron's), its standard error appended to `log`; the caller adds the rest.
pub fn raftcron_in_ns(id: u64, bin: &Path, log: &Path) -> anyhow::Result<Command> {
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node_ns(id)]).arg(bin).stdout(Stdio::null()).stderr(log);
    Ok(cmd)
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
pub fn is_stopped(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3, after the parenthesized command name.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// The processes in namespace `id`.
pub fn ns_pids(id: u64) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", &node_ns(id)])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_ns_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// One raftcron node process, and the lossyfs under its data dir when power faults
/// are on.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Whether the data dir is a lossyfs mount over `disk/`.
    pub lossy: bool,
    /// The running lossyfs, if mounted.
    fs: Option<Child>,
}

pub const API_KEY: &str = "jepsen-admin-key";

/// What the node configs share, from the command line.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub snapshot_every: u64,
    pub snapshot_log_ratio: f64,
    /// openraft's `quorum_loss_probe_interval`, when set.
    pub quorum_loss_probe_ms: Option<u64>,
}

impl Node {
    pub fn http(&self) -> String {
        format!("{}:8080", node_ip(self.id))
    }

    pub fn faketime_file(&self) -> PathBuf {
        self.dir.join("faketime")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The lossyfs backing directory: the node's disk as it would be after a power cut.
    fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// Writes the node's config (data dir kept across restarts) and clock file. Nodes
    /// `1..=n` are the bootstrap voters; a spare (id > n) lists no peers and waits to be
    /// added through the API.
    pub fn prepare(id: u64, n: u64, store: &Path, cfg: &NodeConfig, lossy: bool) -> anyhow::Result<Node> {
        let dir = store.join(format!("n{id}"));
        fs::create_dir_all(dir.join("data"))?;
        if lossy {
            fs::create_dir_all(dir.join("disk"))?;
        }
        let peers: Vec<String> =
            if id <= n { (1..=n).map(|k| format!("\"{k}={}:9080\"", node_ip(k))).collect() } else { Vec::new() };
        let probe = cfg.quorum_loss_probe_ms.map_or(String::new(), |ms| format!("quorum_loss_probe_ms = {ms}\n"));
        // Heartbeat and election timeout are the binary's defaults (50 / 250 ms): the suite
        // proves the timing raftcron ships with, delay nemesis included.
        fs::write(
            dir.join("config.toml"),
            format!(
                "[node]\nid = {id}\ndata_dir = {:?}\nhttp_addr = \"{ip}:8080\"\nrpc_addr = \"{ip}:9080\"\n\n\
                 [cluster]\npeers = [{}]\n\
                 snapshot_every_entries = {}\nsnapshot_log_ratio = {:?}\nsecret = \"jepsen-cluster-secret-0f3a\"\n{probe}\n\
                 [scheduler]\nworker_timeout_s = 6\nrun_history_per_task = 100000\nmisfire_threshold_s = {misfire}\n",
                dir.join("data"),
                peers.join(", "),
                cfg.snapshot_every,
                cfg.snapshot_log_ratio,
                ip = node_ip(id),
                misfire = crate::checker::schedule::MISFIRE_THRESHOLD_S
            ),
        )?;
        fs::write(dir.join("faketime"), "+0s\n")?;
        Ok(Node { id, dir, child: None, paused: false, lossy, fs: None })
    }

    /// Whether the process is alive (a paused one counts).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        if self.lossy && self.fs.is_none() {
            self.mount()?;
        }
        let child = raftcron_in_ns(self.id, bin, &self.dir.join("node.log"))?
            .args(["serve", "--config"])
            .arg(self.dir.join("config.toml"))
            .env("RAFTCRON_API_KEY", API_KEY)
            // JEPSEN_NODE_LOG overrides the nodes' log filter (e.g. `info` to see elections).
            .env("RUST_LOG", std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME_TIMESTAMP_FILE", self.faketime_file())
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_NO_CACHE", "1")
            .spawn()
            .context("starting raftcron")?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Starts lossyfs over `disk/` at `data/` and waits until the mount is in place. It
    /// runs in the harness's mount namespace; a node started afterwards gets a copy.
    fn mount(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("lossyfs.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("lossyfs")
            .arg("--backing")
            .arg(self.disk())
            .arg("--mountpoint")
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lossyfs")?;
        self.fs = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_mount_point(&self.data()) {
            if std::time::Instant::now() > deadline {
                bail!("lossyfs for n{} did not mount within 10 s (see {}/lossyfs.log)", self.id, self.dir.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Cuts the power: SIGKILL the node, stop lossyfs so every unsynced byte is lost, and
    /// bring the disk back as it is now. Returns what lossyfs said it dropped.
    pub fn power_off(&mut self) -> anyhow::Result<String> {
        self.kill();
        let dropped = self.unmount()?;
        self.mount()?;
        Ok(dropped)
    }

    /// Stops lossyfs (SIGTERM: report and exit without writing) and detaches the mount.
    /// Returns what this lossyfs said as it went (its log is shared by every mount of the
    /// node, so only what it wrote after the SIGTERM counts).
    fn unmount(&mut self) -> anyhow::Result<String> {
        let Some(mut fs_child) = self.fs.take() else { return Ok("lossyfs was not mounted".into()) };
        let log_path = self.dir.join("lossyfs.log");
        let before = fs::metadata(&log_path).map_or(0, |m| m.len()) as usize;
        let said = if matches!(fs_child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &fs_child.id().to_string()]).status();
            let _ = fs_child.wait();
            let log = fs::read(&log_path).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(before..).unwrap_or_default()).into_owned();
            new.lines().find(|l| l.contains("power off")).unwrap_or("lossyfs said nothing").to_string()
        } else {
            "lossyfs had already died".to_string()
        };
        match nix::mount::umount2(&self.data(), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => bail!("unmounting lossyfs of n{}: {e}", self.id),
        }
        Ok(said)
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// SIGKILL, then reap. `ip netns exec` execs the program, so the pid is raftcron's.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// Kills the node and unmounts its disk, at the end of a run.
    pub fn shut_down(&mut self) {
        self.kill();
        let _ = self.unmount();
    }

    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    /// Kills the node and empties its data dir, as a replaced disk would; `start` then
    /// brings it back with nothing.
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        self.kill();
        let data = if self.lossy {
            self.unmount()?;
            self.disk()
        } else {
            self.data()
        };
        for entry in fs::read_dir(&data)? {
            let path = entry?.path();
            if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
                .with_context(|| format!("wiping {}", path.display()))?;
        }
        Ok(())
    }

    pub fn set_clock_offset(&self, offset: &str) -> anyhow::Result<()> {
        fs::write(self.faketime_file(), format!("{offset}\n")).context("writing faketime file")
    }
}

/// Whether something is mounted at `path` (it sits on another device than its parent).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}
