//! Executors: run one task's command (shell, python) or request (http) to completion, a
//! timeout, or a stop, and capture the tail of its output.
//!
//! A process task (shell, python) runs under its own supervisor process, `raftcron
//! run-shim` ([`super::shim`]): the job's whole process tree is killed at the timeout, on a
//! stop, when its main process exits (a run's processes end with it), when the agent dies
//! and when the agent's lease runs out — even if the agent itself is stopped. An HTTP task
//! runs in the agent.
//!
//! The job environment contract: a process starts from an empty environment, then gets
//! the agent's `PATH`, `HOME`, `LANG` and `TZ` (where set; `HOME` is the `run_as` user's
//! home when jobs run as another user), the task's own `environment`, and last — so a task
//! cannot shadow them — `RAFTCRON_RUN_ID`, `RAFTCRON_TASK_ID`, `RAFTCRON_ATTEMPT`,
//! `RAFTCRON_SCHEDULED_AT` (RFC 3339, UTC) and `RAFTCRON_WORKER_ID`. Nothing else of the agent's environment — API
//! keys, the cluster secret — ever reaches a job. The agent's own descriptors are opened
//! close-on-exec (Rust's and RocksDB's default), so a job inherits only its stdin
//! (`/dev/null`) and its two output pipes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use nix::unistd::{Gid, Uid, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::shim::{
    monotonic_ns, Held, ShimResult, ShimSpec, Started, FRAME_HELD, FRAME_OUTPUT, FRAME_RESULT, FRAME_STARTED,
};
use crate::model::{output_tail, ExecutorKind, RunStatus, TaskSpec, MAX_OUTPUT};

/// Why a run was stopped before it finished; a stopped run is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The run is no longer assigned to this worker (cancelled, or lost and re-queued).
    Withdrawn,
    /// This worker could not renew its lease: its runs may be re-queued elsewhere.
    Fenced,
    /// The worker is shutting down and its drain period ended.
    Shutdown,
    /// The agent is being killed as a crash would kill it (tests): nothing is reported.
    Crashed,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Withdrawn => "withdrawn",
            Stop::Fenced => "fenced",
            Stop::Shutdown => "shutdown",
            Stop::Crashed => "crashed",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    pub output: String,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl Finished {
    pub(super) fn failed(error: String, started: Instant) -> Finished {
        Finished {
            status: RunStatus::Failed,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: Some(error),
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// The run a job belongs to: what the job environment contract tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobContext {
    pub run_id: u64,
    pub task_id: u64,
    pub attempt: u32,
    pub scheduled_at: DateTime<Utc>,
    /// The worker running it.
    pub worker_id: String,
}

/// The agent's variables a job inherits. Everything else is dropped.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// `PATH` for a job when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The user jobs run as, when it is not the agent's own (`[worker] run_as`, `--run-as`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the user database. Switching user needs root; a non-root agent
    /// may only name itself.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        let user = User::from_name(name)
            .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
            .ok_or_else(|| format!("no user named {name:?}"))?;
        if !Uid::effective().is_root() && user.uid != Uid::effective() {
            return Err(format!("running jobs as {name:?} needs root; this agent runs as uid {}", Uid::effective()));
        }
        Ok(RunAs { name: name.to_string(), uid: user.uid, gid: user.gid, home: user.dir })
    }
}

/// How a process job is started: through which shim, where, and as whom.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary (`raftcron-shim` or `raftcron`) whose `run-shim` supervises each process job.
    pub shim: PathBuf,
    /// Where a job without a `working_directory` starts (default: the agent's directory).
    pub work_dir: Option<PathBuf>,
    pub run_as: Option<RunAs>,
}

/// The complete environment of a job (see the module doc for the contract).
pub fn job_environment(
    spec: &TaskSpec,
    job: &JobContext,
    run_as: Option<&RunAs>,
    agent_env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for name in INHERITED_ENV {
        let value = match (name, run_as) {
            ("HOME", Some(user)) => Some(user.home.to_string_lossy().into_owned()),
            ("PATH", _) => Some(agent_env(name).unwrap_or_else(|| DEFAULT_PATH.to_string())),
            _ => agent_env(name),
        };
        if let Some(v) = value {
            env.push((name.to_string(), v));
        }
    }
    // Secrets as written: the job is the one place they are meant for.
    env.extend(spec.environment.iter().map(|(k, v)| (k.clone(), v.value().to_string())));
    env.push(("RAFTCRON_RUN_ID".into(), job.run_id.to_string()));
    env.push(("RAFTCRON_TASK_ID".into(), job.task_id.to_string()));
    env.push(("RAFTCRON_ATTEMPT".into(), job.attempt.to_string()));
    env.push(("RAFTCRON_SCHEDULED_AT".into(), job.scheduled_at.to_rfc3339_opts(SecondsFormat::Secs, true)));
    env.push(("RAFTCRON_WORKER_ID".into(), job.worker_id.clone()));
    env
}

/// Builds the shim's instructions for a process task (`None` for an HTTP task, which the
/// agent runs itself).
pub fn shim_spec(spec: &TaskSpec, job: &JobContext, launch: &Launch, lease_deadline_ns: u64) -> Option<ShimSpec> {
    let (program, args) = match spec.executor {
        ExecutorKind::Shell => {
            ("/bin/sh".to_string(), vec!["-c".to_string(), spec.command.clone().unwrap_or_default()])
        }
        ExecutorKind::Python => {
            let mut args = vec![spec.command.clone().unwrap_or_default()];
            args.extend(spec.arguments.iter().cloned());
            (spec.python_path.clone().unwrap_or_else(|| "python3".into()), args)
        }
        ExecutorKind::Http => return None,
    };
    Some(ShimSpec {
        program,
        args,
        env: job_environment(spec, job, launch.run_as.as_ref(), |k| std::env::var(k).ok()),
        cwd: spec.working_directory.as_deref().map(PathBuf::from).or_else(|| launch.work_dir.clone()),
        uid: launch.run_as.as_ref().map(|u| u.uid.as_raw()),
        gid: launch.run_as.as_ref().map(|u| u.gid.as_raw()),
        timeout_ms: spec.timeout_seconds.max(1).saturating_mul(1000),
        lease_deadline_ns,
        cgroup: Some(format!("raftcron-run-{}-{}-{}", job.run_id, job.attempt, uuid::Uuid::new_v4().simple())),
    })
}

/// `until` (this process's monotonic clock) as `CLOCK_MONOTONIC` nanoseconds, the form the
/// shim compares against.
pub fn monotonic_deadline_ns(until: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    if until >= now {
        now_ns.saturating_add((until - now).as_nanos() as u64)
    } else {
        now_ns.saturating_sub((now - until).as_nanos() as u64)
    }
}

/// How long a shim may take to answer before the agent treats it as broken.
const SHIM_ANSWER: Duration = Duration::from_secs(10);

/// A run's shim process, held before its job starts and then watched until it ends.
pub struct Supervised {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    pub shim_pid: u32,
    /// The shim's start time (clock ticks since boot), read at spawn: it names the shim
    /// and its session even after the shim is gone.
    pub shim_start_time: u64,
    pub held: Held,
    started: Option<Started>,
}

impl Supervised {
    /// Starts the shim and waits until it is ready to start the job.
    pub async fn spawn(shim_exe: &Path, spec: &ShimSpec) -> std::io::Result<Supervised> {
        // The shim makes itself a session (and process group) of its own at once: a
        // terminal's Ctrl-C or SIGHUP to the agent's group must reach the agent only; the
        // shim outlives it just long enough to kill the job. (Not `process_group(0)`
        // here: a group leader cannot start a session.)
        let mut child = tokio::process::Command::new(shim_exe)
            .arg("run-shim")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {} run-shim: {e}", shim_exe.display())))?;
        let shim_pid = child.id().unwrap_or(0);
        let shim_start_time = super::shim::process_start_time(shim_pid).unwrap_or(0);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = serde_json::to_vec(spec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        let mut s = Supervised {
            child,
            stdin: Some(stdin),
            stdout,
            shim_pid,
            shim_start_time,
            held: Held { cgroup: None },
            started: None,
        };
        match tokio::time::timeout(SHIM_ANSWER, read_frame(&mut s.stdout)).await {
            Ok(Ok((FRAME_HELD, payload))) => {
                s.held = serde_json::from_slice(&payload).map_err(std::io::Error::other)?;
                Ok(s)
            }
            Ok(Ok((tag, payload))) => Err(std::io::Error::other(format!(
                "run-shim answered {:?} {} instead of being ready",
                tag as char,
                String::from_utf8_lossy(&payload)
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("run-shim did not answer in time")),
        }
    }

    async fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            // A shim that already ended cannot read; its result frame says why.
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        }
    }

    /// Tells a held shim to end without starting the job, and waits for it.
    pub async fn abort(mut self) {
        self.send("stop withdrawn").await;
        self.stdin = None;
        let _ = tokio::time::timeout(SHIM_ANSWER, self.child.wait()).await;
    }

    /// Starts the job under the lease deadline `lease_ns` (the current one: renewals since
    /// the shim was spawned count). `Ok(Err(result))` when the shim ended instead of
    /// starting it (it could not start it, or the lease ran out while it was held).
    pub async fn go(&mut self, lease_ns: u64) -> std::io::Result<Result<Started, ShimResult>> {
        self.send(&format!("lease {lease_ns}")).await;
        self.send("go").await;
        match tokio::time::timeout(SHIM_ANSWER, peek_started(&mut self.stdout)).await {
            Ok(Ok(started)) => {
                self.started = started.as_ref().ok().cloned();
                Ok(started)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("run-shim did not start the job in time")),
        }
    }

    /// Follows the run to its end: collects its output, forwards lease renewals, passes a
    /// stop on. Returns how it ended, or why it was stopped.
    pub async fn watch(
        mut self,
        mut stop: watch::Receiver<Option<Stop>>,
        mut lease: watch::Receiver<Instant>,
        timeout: Duration,
    ) -> Result<Finished, Stop> {
        let started = Instant::now();
        let mut tail = Tail::default();
        let mut asked: Option<Stop> = None;
        let mut pending_output = Vec::new();
        // Renewals that came while the job was being started.
        let ns = monotonic_deadline_ns(*lease.borrow_and_update());
        let renewal = format!("lease {ns}");
        self.send(&renewal).await;
        // The shim enforces the timeout; this only bounds a shim that stopped answering.
        let give_up = tokio::time::sleep(timeout + SHIM_ANSWER * 3);
        tokio::pin!(give_up);
        let result = loop {
            tokio::select! {
                frame = read_frame(&mut self.stdout) => match frame {
                    Ok((FRAME_OUTPUT, bytes)) => tail.push(&bytes),
                    Ok((FRAME_RESULT, payload)) => break serde_json::from_slice::<ShimResult>(&payload).ok(),
                    Ok(_) => {}
                    Err(e) => {
                        // The shim died without killing the job (it was SIGKILLed, or the
                        // job killed it): the job may still run. Kill it from here.
                        self.kill_hard().await;
                        pending_output.push(format!("the run's supervisor died ({e}); its processes were killed"));
                        break None;
                    }
                },
                why = stop_reason(&mut stop), if asked.is_none() => {
                    asked = Some(why);
                    self.send(&format!("stop {}", why.as_str())).await;
                }
                changed = lease.changed() => {
                    if changed.is_ok() {
                        let ns = monotonic_deadline_ns(*lease.borrow_and_update());
                        self.send(&format!("lease {ns}")).await;
                    }
                }
                _ = &mut give_up => {
                    pending_output.push("the run's supervisor stopped answering; killed".into());
                    self.kill_hard().await;
                    break None;
                }
            }
        };
        self.stdin = None;
        let _ = tokio::time::timeout(SHIM_ANSWER, self.child.wait()).await;
        let output = tail.text();
        let duration_ms = started.elapsed().as_millis() as u64;
        let ended = |status, exit_code, error: Option<String>| Finished {
            status,
            exit_code,
            http_status: None,
            output: output.clone(),
            error,
            duration_ms,
        };
        match result {
            Some(ShimResult::Exited { code: 0 }) => Ok(ended(RunStatus::Succeeded, Some(0), None)),
            Some(ShimResult::Exited { code }) => {
                Ok(ended(RunStatus::Failed, Some(code), Some(format!("exited with code {code}"))))
            }
            Some(ShimResult::Signaled { signal }) => {
                Ok(ended(RunStatus::Failed, None, Some(format!("killed by signal {signal}"))))
            }
            Some(ShimResult::TimedOut) => {
                Ok(ended(RunStatus::TimedOut, None, Some(format!("killed after the {}s timeout", timeout.as_secs()))))
            }
            Some(ShimResult::SpawnFailed { error }) => Ok(ended(RunStatus::Failed, None, Some(error))),
            Some(ShimResult::Stopped { why }) => match asked {
                Some(asked) => Err(asked),
                None if why == "lease_expired" => Err(Stop::Fenced),
                // Someone signalled the shim (it killed the job on the way out).
                None => Ok(ended(
                    RunStatus::Failed,
                    None,
                    Some(format!("the run's supervisor got {why}; the run was killed")),
                )),
            },
            None => match asked {
                Some(why) => Err(why),
                None => Ok(ended(RunStatus::Failed, None, Some(pending_output.join("; ")))),
            },
        }
    }

    /// For a shim that died or stopped answering: kill it, the job's cgroup, the job's
    /// process group and the shim's session (what a restarted agent would do with the
    /// run's record). The scan and the kernel's kill take a moment: off the runtime's
    /// threads, which Raft's timers share under `serve --worker`.
    async fn kill_hard(&mut self) {
        let _ = self.child.start_kill();
        let record = super::records::RunRecord {
            run_id: 0,
            attempt: 0,
            shim_pid: self.shim_pid,
            shim_start_time: self.shim_start_time,
            cgroup: self.held.cgroup.clone(),
            job: self.started.as_ref().map(|s| (s.pid, s.start_time)),
            boot_id: None,
        };
        let _ = tokio::task::spawn_blocking(move || super::records::kill_recorded(&record)).await;
    }

    /// The outcome of a run whose shim ended before starting the job.
    pub fn result_without_start(self, result: ShimResult) -> Result<Finished, Stop> {
        match result {
            ShimResult::SpawnFailed { error } => Ok(Finished::failed(error, Instant::now())),
            ShimResult::Stopped { why } if why == "lease_expired" => Err(Stop::Fenced),
            other => Ok(Finished::failed(
                format!("the run's supervisor ended before starting it: {other:?}"),
                Instant::now(),
            )),
        }
    }
}

/// Waits until a stop is asked for (a dropped sender counts as a shutdown).
async fn stop_reason(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    match stop.wait_for(Option::is_some).await {
        Ok(r) => r.unwrap_or(Stop::Shutdown),
        Err(_) => Stop::Shutdown,
    }
}

/// Reads frames until `S` (started) or `R` (ended without starting); output that arrives
/// first is impossible (the job is not running yet).
async fn peek_started(from: &mut tokio::process::ChildStdout) -> std::io::Result<Result<Started, ShimResult>> {
    loop {
        match read_frame(from).await? {
            (FRAME_STARTED, payload) => return serde_json::from_slice(&payload).map(Ok).map_err(std::io::Error::other),
            (FRAME_RESULT, payload) => return serde_json::from_slice(&payload).map(Err).map_err(std::io::Error::other),
            _ => {}
        }
    }
}

/// One `[tag][len u32 BE][payload]` frame from the shim.
async fn read_frame(from: &mut tokio::process::ChildStdout) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    from.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 1 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("shim frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

/// The last [`MAX_OUTPUT`] bytes written to stdout and stderr, interleaved as they came.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * MAX_OUTPUT {
            self.0.drain(..self.0.len() - MAX_OUTPUT);
        }
    }

    fn text(&self) -> String {
        output_tail(&String::from_utf8_lossy(&self.0))
    }
}

/// Runs an HTTP task in the agent, to its response, its timeout, or a stop.
pub async fn run_http(spec: &TaskSpec, mut stop: watch::Receiver<Option<Stop>>) -> Result<Finished, Stop> {
    let timeout = Duration::from_secs(spec.timeout_seconds.max(1));
    let started = Instant::now();
    let url = spec.url.as_deref().unwrap_or_default();
    let method = spec.method.as_deref().unwrap_or("GET");
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Ok(Finished::failed(format!("invalid HTTP method {method:?}"), started)),
    };
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if spec.headers.values().any(|v| v.is_secret()) {
        // A secret header must reach only the origin the task names: reqwest strips just
        // Authorization and Cookie on a redirect elsewhere, so a redirect to another
        // scheme, host or port is not followed (the 3xx is the response).
        builder = builder.redirect(reqwest::redirect::Policy::custom(|attempt| {
            let origin = |u: &reqwest::Url| {
                (u.scheme().to_string(), u.host_str().map(str::to_string), u.port_or_known_default())
            };
            let same = attempt.previous().first().is_some_and(|first| origin(first) == origin(attempt.url()));
            if !same {
                attempt.stop()
            } else if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        }));
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return Ok(Finished::failed(format!("cannot build an HTTP client: {e}"), started)),
    };
    let mut req = client.request(method, url);
    for (name, value) in &spec.headers {
        let Ok(mut header) = reqwest::header::HeaderValue::from_str(value.value()) else {
            return Ok(Finished::failed(format!("header {name:?}: not a valid HTTP header value"), started));
        };
        // A secret stays out of the client's debug output and HTTP/2 header compression.
        header.set_sensitive(value.is_secret());
        req = req.header(name, header);
    }
    if let Some(body) = &spec.body {
        req = req.body(body.clone());
    }
    // The body is streamed and only its tail kept: a response of any size costs the agent
    // at most twice `MAX_OUTPUT`. A body cut off midway keeps what arrived.
    let call = async {
        let mut resp = req.send().await?;
        let status = resp.status().as_u16();
        let mut tail = Tail::default();
        while let Ok(Some(chunk)) = resp.chunk().await {
            tail.push(&chunk);
        }
        Ok::<_, reqwest::Error>((status, tail.text()))
    };
    let result = tokio::select! {
        r = call => r,
        reason = stop.wait_for(Option::is_some) => return Err(reason.ok().and_then(|r| *r).unwrap_or(Stop::Shutdown)),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    Ok(match result {
        Ok((code, body)) => {
            let ok = match spec.expected_status {
                Some(expected) => code == expected,
                None => (200..300).contains(&code),
            };
            let error = (!ok).then(|| match spec.expected_status {
                Some(expected) => format!("HTTP status {code}, expected {expected}"),
                None => format!("HTTP status {code}, expected 2xx"),
            });
            Finished {
                status: if ok { RunStatus::Succeeded } else { RunStatus::Failed },
                exit_code: None,
                http_status: Some(code),
                output: body,
                error,
                duration_ms,
            }
        }
        Err(e) if e.is_timeout() => Finished {
            status: RunStatus::TimedOut,
            exit_code: None,
            http_status: None,
            output: String::new(),
            error: Some(format!("no response within the {}s timeout", timeout.as_secs())),
            duration_ms,
        },
        Err(e) => Finished::failed(format!("request failed: {e}"), started),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::model::TaskField;

    fn shell(env: serde_json::Value) -> TaskSpec {
        let fields =
            TaskField::parse_object(json!({"name": "t", "executor": "shell", "command": "env", "environment": env}))
                .unwrap();
        TaskSpec::from_fields(fields, "UTC").unwrap()
    }

    fn job() -> JobContext {
        JobContext {
            run_id: 7,
            task_id: 3,
            attempt: 2,
            scheduled_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            worker_id: "w-1".into(),
        }
    }

    /// A large response is streamed and only its tail kept, so a body cut off midway (the
    /// server died after 10 of the 20 MB it announced) still leaves the run what arrived;
    /// read whole, the cut body was an error and the run kept no output at all.
    #[tokio::test]
    async fn an_http_tasks_response_keeps_its_tail_even_when_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 20 * 1024 * 1024);
            conn.write_all(head.as_bytes()).await.unwrap();
            let block = vec![b'x'; 1024 * 1024];
            for _ in 0..10 {
                conn.write_all(&block).await.unwrap();
            }
            conn.write_all(b"LAST-BYTES-BEFORE-THE-CUT").await.unwrap();
            conn.shutdown().await.unwrap();
        });
        let fields = TaskField::parse_object(
            json!({"name": "big", "executor": "http", "url": format!("http://{addr}/big"), "timeout_seconds": 30}),
        )
        .unwrap();
        let spec = TaskSpec::from_fields(fields, "UTC").unwrap();
        let (_tx, rx) = watch::channel(None);
        let done = run_http(&spec, rx).await.expect("not stopped");
        assert_eq!((done.status, done.http_status), (RunStatus::Succeeded, Some(200)));
        assert!(done.output.len() <= MAX_OUTPUT, "{}", done.output.len());
        assert!(
            done.output.ends_with("LAST-BYTES-BEFORE-THE-CUT"),
            "{:?}",
            done.output.get(done.output.len().saturating_sub(30)..)
        );
    }

    #[test]
    fn a_job_gets_the_allow_list_its_task_env_and_its_run_never_the_agents_credentials() {
        let agent: BTreeMap<&str, &str> = [
            ("PATH", "/opt/bin:/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("RAFTCRON_API_KEY", "admin-key"),
            ("RAFTCRON_WORKER_KEY", "worker-key"),
            ("RAFTCRON_CLUSTER_SECRET", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
        ]
        .into();
        // A task may not impersonate another run.
        let spec = shell(json!({"GREETING": "hi", "RAFTCRON_RUN_ID": "999"}));
        let env = job_environment(&spec, &job(), None, |k| agent.get(k).map(|v| v.to_string()));
        let last: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            last,
            BTreeMap::from([
                ("PATH", "/opt/bin:/usr/bin"),
                ("LANG", "C.UTF-8"),
                ("GREETING", "hi"),
                ("RAFTCRON_RUN_ID", "7"),
                ("RAFTCRON_TASK_ID", "3"),
                ("RAFTCRON_ATTEMPT", "2"),
                ("RAFTCRON_SCHEDULED_AT", "2026-01-02T03:04:05Z"),
                ("RAFTCRON_WORKER_ID", "w-1"),
            ])
        );
    }

    /// Views redact a secret; the job gets it as written.
    #[test]
    fn a_job_gets_its_tasks_secrets_as_written() {
        let spec = shell(json!({"DB_PASS": {"value": "hunter2", "secret": true}, "MODE": "prod"}));
        let env = job_environment(&spec, &job(), None, |_| None);
        assert!(env.contains(&("DB_PASS".into(), "hunter2".into())), "{env:?}");
        assert!(env.contains(&("MODE".into(), "prod".into())), "{env:?}");
    }

    #[test]
    fn a_job_run_as_another_user_gets_that_users_home_and_a_default_path() {
        let user = RunAs {
            name: "nobody".into(),
            uid: Uid::from_raw(65534),
            gid: Gid::from_raw(65534),
            home: "/nonexistent".into(),
        };
        let env = job_environment(&shell(json!({})), &job(), Some(&user), |k| (k == "HOME").then(|| "/root".into()));
        assert!(env.contains(&("HOME".into(), "/nonexistent".into())), "{env:?}");
        assert!(env.contains(&("PATH".into(), DEFAULT_PATH.into())), "{env:?}");
    }
}
