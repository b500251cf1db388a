//! Executors: run one task's command (shell, python) or request (http) to completion, a
//! timeout, or a stop, and capture the tail of its output.
//!
//! A process task runs in its own process group; the whole group is killed at the timeout,
//! on a stop, and also when the main process exits (a run's processes end with it, so no
//! grandchild outlives the run that started it).
//!
//! The job environment contract: a process starts from an empty environment, then gets
//! the agent's `PATH`, `HOME`, `LANG` and `TZ` (where set; `HOME` is the `run_as` user's
//! home when jobs run as another user), the task's own `environment`, and last — so a task
//! cannot shadow them — `RAFTCRON_RUN_ID`, `RAFTCRON_TASK_ID`, `RAFTCRON_ATTEMPT` and
//! `RAFTCRON_SCHEDULED_AT` (RFC 3339, UTC). Nothing else of the agent's environment — API
//! keys, the cluster secret — ever reaches a job. The agent's own descriptors are opened
//! close-on-exec (Rust's and RocksDB's default), so a job inherits only its stdin
//! (`/dev/null`) and its two output pipes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

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
    fn failed(error: String, started: Instant) -> Finished {
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

/// How a process job is started: where, and as whom.
#[derive(Debug, Clone, Default)]
pub struct Launch {
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
    env.extend(spec.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("RAFTCRON_RUN_ID".into(), job.run_id.to_string()));
    env.push(("RAFTCRON_TASK_ID".into(), job.task_id.to_string()));
    env.push(("RAFTCRON_ATTEMPT".into(), job.attempt.to_string()));
    env.push(("RAFTCRON_SCHEDULED_AT".into(), job.scheduled_at.to_rfc3339_opts(SecondsFormat::Secs, true)));
    env
}

/// Runs `spec` once. `stop` carries `Some(reason)` when the run must end now.
pub async fn execute(
    spec: &TaskSpec,
    job: &JobContext,
    launch: &Launch,
    stop: watch::Receiver<Option<Stop>>,
) -> Result<Finished, Stop> {
    let timeout = Duration::from_secs(spec.timeout_seconds.max(1));
    let mut cmd = match spec.executor {
        ExecutorKind::Shell => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(spec.command.as_deref().unwrap_or_default());
            cmd
        }
        ExecutorKind::Python => {
            let mut cmd = tokio::process::Command::new(spec.python_path.as_deref().unwrap_or("python3"));
            cmd.arg(spec.command.as_deref().unwrap_or_default()).args(&spec.arguments);
            cmd
        }
        ExecutorKind::Http => return run_http(spec, timeout, stop).await,
    };
    cmd.env_clear().envs(job_environment(spec, job, launch.run_as.as_ref(), |k| std::env::var(k).ok()));
    if let Some(user) = &launch.run_as {
        // std drops the supplementary groups too when root switches user.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    run_process(cmd, spec, launch.work_dir.as_deref(), timeout, stop).await
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

async fn drain(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        into.lock().expect("output tail poisoned").push(&buf[..n]);
    }
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        // ESRCH (the group is already gone) is the normal case after a clean exit.
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
}

async fn run_process(
    mut cmd: tokio::process::Command,
    spec: &TaskSpec,
    work_dir: Option<&Path>,
    timeout: Duration,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Result<Finished, Stop> {
    let started = Instant::now();
    if let Some(dir) = spec.working_directory.as_deref().map(Path::new).or(work_dir) {
        cmd.current_dir(dir);
    }
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Finished::failed(format!("cannot start the process: {e}"), started)),
    };
    let pgid = child.id();
    let tail = Arc::new(Mutex::new(Tail::default()));
    let readers = [
        child.stdout.take().map(|o| tokio::spawn(drain(o, tail.clone()))),
        child.stderr.take().map(|e| tokio::spawn(drain(e, tail.clone()))),
    ];
    let outcome = tokio::select! {
        status = child.wait() => Ok(status),
        _ = tokio::time::sleep(timeout) => Err(None),
        reason = stop.wait_for(Option::is_some) => Err(reason.ok().and_then(|r| *r).or(Some(Stop::Shutdown))),
    };
    kill_group(pgid);
    let status = match outcome {
        Ok(status) => status,
        Err(stopped) => {
            let _ = child.wait().await;
            if let Some(reason) = stopped {
                return Err(reason);
            }
            Err(std::io::Error::other("timed out"))
        }
    };
    // The group is dead, so the pipes close; the readers finish promptly.
    for r in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let output = tail.lock().expect("output tail poisoned").text();
    let duration_ms = started.elapsed().as_millis() as u64;
    Ok(match status {
        Err(_) => Finished {
            status: RunStatus::TimedOut,
            exit_code: None,
            http_status: None,
            output,
            error: Some(format!("killed after the {}s timeout", timeout.as_secs())),
            duration_ms,
        },
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            let (status, error) = match (st.code(), st.signal()) {
                (Some(0), _) => (RunStatus::Succeeded, None),
                (Some(code), _) => (RunStatus::Failed, Some(format!("exited with code {code}"))),
                (None, Some(sig)) => (RunStatus::Failed, Some(format!("killed by signal {sig}"))),
                (None, None) => (RunStatus::Failed, Some("ended without an exit code".into())),
            };
            Finished { status, exit_code: st.code(), http_status: None, output, error, duration_ms }
        }
    })
}

async fn run_http(
    spec: &TaskSpec,
    timeout: Duration,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Result<Finished, Stop> {
    let started = Instant::now();
    let url = spec.url.as_deref().unwrap_or_default();
    let method = spec.method.as_deref().unwrap_or("GET");
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Ok(Finished::failed(format!("invalid HTTP method {method:?}"), started)),
    };
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return Ok(Finished::failed(format!("cannot build an HTTP client: {e}"), started)),
    };
    let mut req = client.request(method, url);
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &spec.body {
        req = req.body(body.clone());
    }
    let call = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
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
                output: output_tail(&body),
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
        }
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
            ])
        );
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
