//! Executors: run one task's command (shell, python) or request (http) to completion, a
//! timeout, or a stop, and capture the tail of its output.
//!
//! A process task runs in its own process group; the whole group is killed at the timeout,
//! on a stop, and also when the main process exits (a run's processes end with it, so no
//! grandchild outlives the run that started it).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
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

/// Runs `spec` once. `stop` carries `Some(reason)` when the run must end now.
pub async fn execute(
    spec: &TaskSpec,
    work_dir: Option<&Path>,
    stop: watch::Receiver<Option<Stop>>,
) -> Result<Finished, Stop> {
    let timeout = Duration::from_secs(spec.timeout_seconds.max(1));
    match spec.executor {
        ExecutorKind::Shell => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(spec.command.as_deref().unwrap_or_default());
            run_process(cmd, spec, work_dir, timeout, stop).await
        }
        ExecutorKind::Python => {
            let mut cmd = tokio::process::Command::new(spec.python_path.as_deref().unwrap_or("python3"));
            cmd.arg(spec.command.as_deref().unwrap_or_default()).args(&spec.arguments);
            run_process(cmd, spec, work_dir, timeout, stop).await
        }
        ExecutorKind::Http => run_http(spec, timeout, stop).await,
    }
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
    cmd.envs(&spec.environment)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
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
