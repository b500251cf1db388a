//! The run supervisor (`raftcron run-shim`): one small process per run between the agent
//! and the job, so that a job never outlives the agent's right to run it.
//!
//! The agent starts the shim with a pipe on its stdin and writes the [`ShimSpec`] as one
//! JSON line. The shim makes itself a child subreaper (every process the job orphans —
//! a double fork, a `setsid` escape — is re-parented to it), prepares a per-run cgroup v2
//! when it can create one, and waits for `go`. Then it starts the job in its own process
//! group (inside that cgroup) and kills everything the job started — the cgroup, the
//! process group, and every descendant it can find — when any of these happens first:
//!
//! - the job's main process exits (a run's processes end with it);
//! - `timeout_ms` passes (the run timed out);
//! - the agent writes `stop <why>`;
//! - the agent's pipe reaches end of file: the agent died, and nobody holds the lease;
//! - the lease deadline passes: the agent pushes each renewed deadline down the pipe as
//!   `lease <CLOCK_MONOTONIC ns>`, so even an agent that is stopped (SIGSTOP, a frozen VM)
//!   cannot keep its jobs running past its lease.
//!
//! It reports on stdout in frames of `[tag: u8][length: u32 BE][payload]`: `H` (held:
//! JSON `{"cgroup": …}` once ready for `go`), `S` (started: `{"pid", "start_time"}`), `O`
//! (output bytes, stdout and stderr interleaved as they came) and `R` (the [`ShimResult`]
//! JSON, last). The shim runs as the agent's user; the job may run as another
//! (`uid`/`gid`). It uses no async runtime: plain threads and `waitpid`, so that reaping
//! orphans can never steal the job's own exit status from a runtime.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What an agent and a shim binary must agree on: the release, and the number of the
/// spec and frame protocol below (raise it when either changes). An agent uses the
/// separate `raftcron-shim` binary only when it prints exactly this (`--protocol`).
pub const PROTOCOL: &str = concat!(env!("CARGO_PKG_VERSION"), "/shim-protocol-1");

/// What to run, as the agent sends it (the first line on the shim's stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub program: String,
    pub args: Vec<String>,
    /// The job's complete environment (the shim's own is not passed on).
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub timeout_ms: u64,
    /// The agent's lease deadline on `CLOCK_MONOTONIC`, in nanoseconds.
    pub lease_deadline_ns: u64,
    /// The name of the per-run cgroup to create under the shim's own cgroup (if cgroup v2
    /// is mounted and writable); `None` for none.
    pub cgroup: Option<String>,
}

/// How the run ended, as the shim saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ShimResult {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    TimedOut,
    /// Stopped before it ended: by the agent (`stop <why>`), because the agent's pipe
    /// closed (`agent_gone`) or because the lease ran out (`lease_expired`).
    Stopped {
        why: String,
    },
    SpawnFailed {
        error: String,
    },
}

/// `H`: ready for `go`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub cgroup: Option<PathBuf>,
}

/// `S`: the job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// recorded pid cannot be confused with a later process that reuses it.
    pub start_time: u64,
}

pub const FRAME_HELD: u8 = b'H';
pub const FRAME_STARTED: u8 = b'S';
pub const FRAME_OUTPUT: u8 = b'O';
pub const FRAME_RESULT: u8 = b'R';

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the clock both the agent and the shim read
/// (libfaketime leaves it alone with `FAKETIME_DONT_FAKE_MONOTONIC=1`).
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64)
}

/// A process's start time (`/proc/<pid>/stat` field 22), if it exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every process in session `sid` that started no earlier than `since` (clock ticks
/// since boot, as [`process_start_time`]): what a shim's session holds.
pub fn session_members(sid: u32, since: u64) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, pgrp, session, ... starttime (the 20th).
        let session = fields.get(3).and_then(|f| f.parse::<u32>().ok());
        let start = fields.get(19).and_then(|f| f.parse::<u64>().ok());
        if session == Some(sid) && start.is_some_and(|t| t >= since) {
            out.push(pid);
        }
    }
    out
}

/// Every (pid, parent pid) in `/proc`.
fn process_parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            continue;
        };
        out.insert(pid, ppid);
    }
    out
}

/// Every live descendant of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let parents = process_parents();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, p)| **p == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// The cgroup v2 directory this process belongs to, if cgroup v2 is mounted.
fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... mount_point ... - cgroup2 ..."
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// A per-run cgroup: created at `dir`, the job placed in it by moving the shim in just
/// long enough to start it (no `pre_exec`, which would need `unsafe`).
struct RunCgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl RunCgroup {
    fn create(name: &str) -> Option<RunCgroup> {
        let home = own_cgroup_dir()?;
        let dir = home.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(RunCgroup { dir, home }),
            Err(e) => {
                eprintln!(
                    "run-shim: no per-run cgroup ({}: {e}); killing by process group and descendants",
                    dir.display()
                );
                None
            }
        }
    }

    fn enter(&self, at: &Path) -> std::io::Result<()> {
        std::fs::write(at.join("cgroup.procs"), std::process::id().to_string())
    }

    fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: signal each member instead.
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.procs")).map(|s| s.trim().is_empty()).unwrap_or(true)
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Kills a recorded run's leftovers: its cgroup if it still exists. Used by an agent
/// that restarts after a crash (see `worker::records`).
pub fn kill_cgroup(dir: &Path) {
    if dir.exists() {
        let cg = RunCgroup { dir: dir.to_path_buf(), home: PathBuf::new() };
        cg.kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cg.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        cg.remove();
    }
}

enum Control {
    Go,
    Lease(u64),
    Stop(String),
    AgentGone,
    /// SIGCHLD: a child of the shim (the job, or an orphan it adopted) changed state.
    ChildExited,
}

type Out = Arc<Mutex<std::io::Stdout>>;

fn frame(out: &Out, tag: u8, payload: &[u8]) {
    let mut o = out.lock().expect("stdout lock poisoned");
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.push(tag);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    // The agent may be gone; then nobody reads, and the shim carries on killing.
    let _ = o.write_all(&buf).and_then(|_| o.flush());
}

fn frame_json<T: Serialize>(out: &Out, tag: u8, value: &T) {
    frame(out, tag, &serde_json::to_vec(value).expect("shim frames serialize"));
}

/// Reads control lines from the agent until its pipe closes.
fn read_control(stdin: impl BufRead, tx: mpsc::Sender<Control>) {
    for line in stdin.lines() {
        let Ok(line) = line else { break };
        let msg = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("go", _) => Control::Go,
            ("lease", ns) => match ns.trim().parse() {
                Ok(ns) => Control::Lease(ns),
                Err(_) => continue,
            },
            ("stop", why) => Control::Stop(why.trim().to_string()),
            _ => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Control::AgentGone);
}

/// Turns SIGTERM, SIGINT, SIGHUP and SIGQUIT into a stop, so `kill` or a closing
/// terminal ends the run's processes with the shim instead of orphaning them, and SIGCHLD
/// into a wake-up, so the job's end is seen when it happens rather than at the next tick
/// of a polling loop. The signals are blocked in every thread (this runs first, before any
/// other thread starts) and taken by one thread with `sigwait` (a blocked SIGCHLD stays
/// pending though its default is to be ignored); the job starts with a clear mask, as
/// Rust's process spawning resets it.
fn stop_on_signals(tx: mpsc::Sender<Control>) {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGCHLD] {
        set.add(sig);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("run-shim: cannot take over termination signals: {e}");
        return;
    }
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let msg =
                if sig == Signal::SIGCHLD { Control::ChildExited } else { Control::Stop(format!("signal {sig}")) };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

/// The shim's main: returns its exit code. Everything it has to say goes in frames.
pub fn run() -> i32 {
    let (tx, rx) = mpsc::channel();
    stop_on_signals(tx.clone());
    // A session of its own (and so a process group): a terminal's Ctrl-C or SIGHUP to the
    // agent's group does not reach it, and every process of the run that does not call
    // setsid itself stays in this session, where the agent finds it by session id even if
    // the shim dies before it could say which pid the job has.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("run-shim: cannot start a session of its own: {e}");
    }
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("run-shim: cannot become a child subreaper: {e}");
    }
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut first = String::new();
    if stdin.read_line(&mut first).unwrap_or(0) == 0 {
        return 2;
    }
    let spec: ShimSpec = match serde_json::from_str(&first) {
        Ok(s) => s,
        Err(e) => {
            frame_json(&out, FRAME_RESULT, &ShimResult::SpawnFailed { error: format!("bad shim spec: {e}") });
            return 2;
        }
    };
    let cgroup = spec.cgroup.as_deref().and_then(RunCgroup::create);
    std::thread::spawn(move || read_control(stdin, tx));
    frame_json(&out, FRAME_HELD, &Held { cgroup: cgroup.as_ref().map(|c| c.dir.clone()) });

    let mut lease_deadline_ns = spec.lease_deadline_ns;
    // Held until `go`: nothing runs yet, so a stop or a lapse simply ends here.
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Control::Go) => break None,
            Ok(Control::Lease(ns)) => lease_deadline_ns = lease_deadline_ns.max(ns),
            Ok(Control::ChildExited) => {}
            Ok(Control::Stop(why)) => break Some(ShimResult::Stopped { why }),
            Ok(Control::AgentGone) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Some(ShimResult::Stopped { why: "agent_gone".into() })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if monotonic_ns() >= lease_deadline_ns {
            break Some(ShimResult::Stopped { why: "lease_expired".into() });
        }
    };
    let result = match result {
        Some(stopped) => stopped,
        None => supervise(&spec, cgroup.as_ref(), &rx, lease_deadline_ns, &out),
    };
    frame_json(&out, FRAME_RESULT, &result);
    if let Some(cg) = &cgroup {
        cg.remove();
    }
    0
}

/// Starts the job and watches it until it ends or must be killed; kills whatever it left.
fn supervise(
    spec: &ShimSpec,
    cgroup: Option<&RunCgroup>,
    rx: &mpsc::Receiver<Control>,
    mut lease_deadline_ns: u64,
    out: &Out,
) -> ShimResult {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if let Some(uid) = spec.uid {
            cmd.uid(uid);
        }
        if let Some(gid) = spec.gid {
            cmd.gid(gid);
        }
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // The job inherits the cgroup the shim is in when it starts; the shim steps out again.
    let in_cgroup = cgroup.is_some_and(|cg| cg.enter(&cg.dir).is_ok());
    let spawned = cmd.spawn();
    if let (true, Some(cg)) = (in_cgroup, cgroup) {
        if let Err(e) = cg.enter(&cg.home) {
            eprintln!("run-shim: cannot leave the run's cgroup: {e}");
        }
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return ShimResult::SpawnFailed { error: format!("cannot start the process: {e}") },
    };
    let pid = child.id();
    let (read_all, output_done) = mpsc::channel::<()>();
    frame_json(out, FRAME_STARTED, &Started { pid, start_time: process_start_time(pid).unwrap_or(0) });
    let mut readers = 0;
    for mut r in [
        child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
        child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (out, read_all) = (out.clone(), read_all.clone());
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                frame(&out, FRAME_OUTPUT, &buf[..n]);
            }
            let _ = read_all.send(());
        });
    }
    drop(read_all);

    let started = Instant::now();
    let timeout = Duration::from_millis(spec.timeout_ms);
    let job = Pid::from_raw(pid as i32);
    let result = loop {
        if let Some(status) = reap(job) {
            break status;
        }
        // SIGCHLD wakes this at the job's end; the tick only bounds how late a timeout or
        // a lapsed lease is noticed.
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Control::Lease(ns)) => lease_deadline_ns = lease_deadline_ns.max(ns),
            Ok(Control::Go | Control::ChildExited) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Control::Stop(why)) => break ShimResult::Stopped { why },
            Ok(Control::AgentGone) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break ShimResult::Stopped { why: "agent_gone".into() }
            }
        }
        if monotonic_ns() >= lease_deadline_ns {
            break ShimResult::Stopped { why: "lease_expired".into() };
        }
        if started.elapsed() >= timeout {
            break ShimResult::TimedOut;
        }
    };
    kill_all(job, cgroup);
    // Every writer of the pipes is dead now, so the readers reach end of file — unless
    // something escaped the kill; then the result goes out without the rest of the output.
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..readers {
        if output_done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
            break;
        }
    }
    result
}

/// Reaps every exited child (orphans included); returns the job's end if it was among them.
fn reap(job: Pid) -> Option<ShimResult> {
    reap_all(job).0
}

/// Reaps every exited child; returns the job's end if it was among them, and whether the
/// shim has any child left. None left means no descendant is left either: the shim is a
/// child subreaper, so a process of the run whose parent died became the shim's child.
fn reap_all(job: Pid) -> (Option<ShimResult>, bool) {
    let mut ended = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == job => ended = Some(ShimResult::Exited { code }),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == job => {
                ended = Some(ShimResult::Signaled { signal: sig as i32 })
            }
            Ok(WaitStatus::StillAlive) => return (ended, true),
            Err(nix::errno::Errno::ECHILD) => return (ended, false),
            // EINTR and the like: the children are not known to be gone.
            Err(_) => return (ended, true),
            Ok(_) => {}
        }
    }
}

/// Kills the job's cgroup, its process group and every descendant of the shim, until none
/// is left (bounded: a process can fork only until it is killed).
fn kill_all(job: Pid, cgroup: Option<&RunCgroup>) {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    let _ = killpg(job, Signal::SIGKILL);
    let me = std::process::id();
    for _ in 0..200 {
        // With no child left there is no descendant to look for (the common case: the job
        // ended alone), and /proc — every process's stat file — is not read at all.
        let (_, children) = reap_all(job);
        let left = if children { descendants(me) } else { Vec::new() };
        if left.is_empty() && cgroup.is_none_or(|cg| cg.is_empty()) {
            break;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        reap(job);
        std::thread::sleep(Duration::from_millis(10));
    }
    reap(job);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_and_parents_read_from_proc() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some_and(|t| t > 0));
        assert_eq!(process_parents().get(&me).copied(), Some(nix::unistd::getppid().as_raw() as u32));
        assert!(process_start_time(u32::MAX).is_none());
    }

    #[test]
    fn results_serialize_with_an_outcome_tag() {
        let r = serde_json::to_value(ShimResult::Exited { code: 3 }).unwrap();
        assert_eq!(r, serde_json::json!({"outcome": "exited", "code": 3}));
        let back: ShimResult =
            serde_json::from_value(serde_json::json!({"outcome": "stopped", "why": "fenced"})).unwrap();
        assert_eq!(back, ShimResult::Stopped { why: "fenced".into() });
    }
}
