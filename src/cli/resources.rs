//! `raftcron task|run|worker ...`: the task, run and worker API from the command line, as
//! tables for people and `--json` for scripts. Every command is one or a few REST calls
//! through [`Client`]; nothing here decides what the API would refuse.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{
    cell, fields_from_sets, is_transient, out, outln, print_fields, print_table, read_document, when, Client,
    ClientArgs, Exit,
};

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Create a task from a JSON or YAML file (`-f -` reads stdin), or a shell task from
    /// flags; `--set FIELD=VALUE` adds or overrides any field.
    Create {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        /// A shell command (the executor is `shell`).
        #[arg(long)]
        command: Option<String>,
        /// A cron expression, e.g. "0 2 * * *".
        #[arg(long)]
        schedule: Option<String>,
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
        /// Sent as `Idempotency-Key`: repeating the command with it creates one task.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List tasks (a page of them).
    List {
        /// active, paused or disabled.
        #[arg(long)]
        status: Option<String>,
        /// A substring of the name.
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: u64,
        #[arg(long, default_value_t = 20)]
        size: u64,
    },
    /// Show one task.
    Get { id: String },
    /// Change fields of a task: from a file of the fields to change, or `--set`.
    Update {
        id: String,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
        /// Apply only if the task's version is still this one (else the API answers 412).
        #[arg(long, value_name = "VERSION")]
        if_match: Option<u64>,
    },
    /// Delete a task and its run history.
    Delete {
        id: String,
        #[arg(long, value_name = "VERSION")]
        if_match: Option<u64>,
    },
    /// Stop firing its schedule (manual triggers still run).
    Pause { id: String },
    /// Fire its schedule again from now.
    Resume { id: String },
    /// Run it now.
    Trigger {
        id: String,
        /// Follow the run (and its retries) until it ends; exit 0 if it succeeded, 4 if
        /// not.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 5); the run goes on.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Its runs, newest first.
    Runs {
        id: String,
        #[arg(long, default_value_t = 1)]
        page: u64,
        #[arg(long, default_value_t = 20)]
        size: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Show one run.
    Get { id: String },
    /// Cancel a run that has not finished (a running one is killed by its worker).
    Cancel { id: String },
    /// Print a run's output (the tail of stdout and stderr the cluster keeps) and error.
    Logs { id: String },
}

#[derive(Debug, Subcommand)]
pub enum WorkerCmd {
    /// Workers, their status and slots.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one worker.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Cap a worker's slots or tags, or disable it (admin).
    Update {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        max_tasks: Option<u32>,
        /// Comma-separated; `--tags ""` clears them.
        #[arg(long)]
        tags: Option<String>,
        #[arg(long)]
        enabled: Option<bool>,
    },
}

/// Path segments are ids: refuse what would change the path before sending it.
fn segment(what: &str, id: &str) -> anyhow::Result<String> {
    let allowed = id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !allowed || id.bytes().all(|b| b == b'.') {
        return Err(Exit::usage(format!("{what} id {id:?}: letters, digits, '.', '_' and '-' only")));
    }
    Ok(id.to_string())
}

pub async fn task(client: &Client, cmd: TaskCmd) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Create { file, name, command, schedule, sets, idempotency_key } => {
            let mut body = match &file {
                Some(f) => read_document(f)?,
                None => json!({}),
            };
            let obj = body.as_object_mut().expect("read_document returns an object");
            if let Some(n) = name {
                obj.insert("name".into(), n.into());
            }
            if let Some(c) = command {
                obj.insert("executor".into(), "shell".into());
                obj.insert("command".into(), c.into());
            }
            if let Some(s) = schedule {
                obj.insert("schedule".into(), s.into());
            }
            obj.extend(fields_from_sets(&sets)?);
            if obj.is_empty() {
                return Err(Exit::usage("nothing to create: give -f FILE, or --name and --command"));
            }
            let mut rb = client.request(reqwest::Method::POST, "/api/tasks").json(&body);
            if let Some(k) = idempotency_key {
                rb = rb.header("idempotency-key", k);
            }
            let a = client.send(rb).await?;
            show_task(client, &a.data, &format!("created task {}", cell(&a.data["id"])));
        }
        TaskCmd::List { status, search, page, size } => {
            let mut q = vec![("page", page.to_string()), ("size", size.to_string())];
            q.extend(status.map(|s| ("status", s)));
            q.extend(search.map(|s| ("search", s)));
            let a = client.send(client.request(reqwest::Method::GET, "/api/tasks").query(&q)).await?;
            if client.json() {
                client.print_json(&a.data);
                return Ok(());
            }
            let items = a.data["items"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = items.iter().map(|t| task_row(t, client.wide())).collect();
            let mut header = vec!["ID", "NAME", "STATUS", "SCHEDULE", "NEXT RUN", "LAST RUN"];
            if client.wide() {
                header.extend(["EXECUTOR", "TIMEZONE", "VERSION", "FIRED", "SKIPPED", "TAGS"]);
            }
            print_table(&header, &rows);
            let total = a.data["total"].as_u64().unwrap_or(0);
            let plus = if a.data["total_exact"] == false { "+" } else { "" };
            eprintln!("page {page} of {total}{plus} tasks");
        }
        TaskCmd::Get { id } => {
            let a = client.get(&format!("/api/tasks/{}", segment("task", &id)?)).await?;
            show_task(client, &a.data, "");
        }
        TaskCmd::Update { id, file, sets, if_match } => {
            let mut body = match &file {
                Some(f) => read_document(f)?,
                None => json!({}),
            };
            body.as_object_mut().expect("an object").extend(fields_from_sets(&sets)?);
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(Exit::usage("nothing to change: give -f FILE or --set FIELD=VALUE"));
            }
            let mut rb = client.request(reqwest::Method::PUT, &format!("/api/tasks/{}", segment("task", &id)?));
            if let Some(v) = if_match {
                rb = rb.header("if-match", format!("\"{v}\""));
            }
            let a = client.send(rb.json(&body)).await?;
            show_task(client, &a.data, &format!("updated task {id} (version {})", cell(&a.data["version"])));
        }
        TaskCmd::Delete { id, if_match } => {
            let mut rb = client.request(reqwest::Method::DELETE, &format!("/api/tasks/{}", segment("task", &id)?));
            if let Some(v) = if_match {
                rb = rb.header("if-match", format!("\"{v}\""));
            }
            let a = client.send(rb).await?;
            match client.json() {
                true => client.print_json(&a.data),
                false => outln!("deleted task {id}"),
            }
        }
        TaskCmd::Pause { id } => {
            let a = client.post(&format!("/api/tasks/{}/pause", segment("task", &id)?), None).await?;
            show_task(client, &a.data, &format!("paused task {id}"));
        }
        TaskCmd::Resume { id } => {
            let a = client.post(&format!("/api/tasks/{}/resume", segment("task", &id)?), None).await?;
            show_task(client, &a.data, &format!("resumed task {id}"));
        }
        TaskCmd::Trigger { id, wait, timeout, idempotency_key } => {
            let mut rb =
                client.request(reqwest::Method::POST, &format!("/api/tasks/{}/trigger", segment("task", &id)?));
            if let Some(k) = idempotency_key {
                rb = rb.header("idempotency-key", k);
            }
            let a = client.send(rb).await?;
            if !wait {
                match client.json() {
                    true => client.print_json(&a.data),
                    false => outln!("triggered task {id}: run {}", cell(&a.data["id"])),
                }
                return Ok(());
            }
            return follow(client, a.data, Duration::from_secs(timeout)).await;
        }
        TaskCmd::Runs { id, page, size } => {
            let q = [("page", page.to_string()), ("size", size.to_string())];
            let path = format!("/api/tasks/{}/runs", segment("task", &id)?);
            let a = client.send(client.request(reqwest::Method::GET, &path).query(&q)).await?;
            if client.json() {
                client.print_json(&a.data);
                return Ok(());
            }
            let items = a.data["items"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = items.iter().map(|r| run_row(r, client.wide())).collect();
            print_table(&run_header(client.wide()), &rows);
            eprintln!("page {page} of {} runs", a.data["total"].as_u64().unwrap_or(0));
        }
    }
    Ok(())
}

fn show_task(client: &Client, t: &Value, said: &str) {
    if client.json() {
        return client.print_json(t);
    }
    if said.is_empty() {
        return print_fields(t);
    }
    outln!("{said}");
}

fn task_row(t: &Value, wide: bool) -> Vec<String> {
    let mut row = vec![
        cell(&t["id"]),
        cell(&t["name"]),
        cell(&t["status"]),
        cell(&t["schedule"]),
        when(&t["next_run_at"]),
        cell(&t["last_run"]),
    ];
    if wide {
        row.extend([
            cell(&t["executor"]),
            cell(&t["timezone"]),
            cell(&t["version"]),
            cell(&t["fire_count"]),
            cell(&t["skipped_ticks"]),
            cell(&t["tags"]),
        ]);
    }
    row
}

fn run_header(wide: bool) -> Vec<&'static str> {
    let mut h = vec!["ID", "TASK", "TRIGGER", "STATUS", "ATTEMPT", "WORKER", "STARTED", "DURATION", "EXIT"];
    if wide {
        h.extend(["SCHEDULED", "FINISHED", "ERROR"]);
    }
    h
}

fn run_row(r: &Value, wide: bool) -> Vec<String> {
    let exit = match (&r["exit_code"], &r["http_status"]) {
        (Value::Null, Value::Null) => "-".to_string(),
        (Value::Null, http) => format!("http {http}"),
        (code, _) => code.to_string(),
    };
    let duration = r["duration_ms"].as_u64().map_or("-".to_string(), |ms| format!("{ms}ms"));
    let mut row = vec![
        cell(&r["id"]),
        cell(&r["task_id"]),
        cell(&r["trigger"]),
        cell(&r["status"]),
        cell(&r["attempt"]),
        cell(&r["worker_id"]),
        when(&r["started_at"]),
        duration,
        exit,
    ];
    if wide {
        row.extend([when(&r["scheduled_at"]), when(&r["finished_at"]), cell(&r["error"])]);
    }
    row
}

const FINAL: [&str; 5] = ["succeeded", "failed", "timed_out", "cancelled", "lost"];

/// `trigger --wait`: polls the run (and the retry that replaces a failed attempt) until it
/// ends, printing each status change; a spinner line on a terminal. Polls back off from
/// 250 ms to 2 s while nothing changes; a request that may succeed later (no answer, 429,
/// 503, 504: an election, the caller's own rate) is repeated until `timeout`.
async fn follow(client: &Client, mut run: Value, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !client.json();
    let spin = ['|', '/', '-', '\\'];
    let mut shown = String::new();
    let mut tick = 0usize;
    let mut pause = Duration::from_millis(250);
    let mut trouble = String::new();
    loop {
        let id = run["id"].as_u64().unwrap_or(0);
        let status = run["status"].as_str().unwrap_or("?").to_string();
        let line = format!("run {id} (attempt {}): {status}", cell(&run["attempt"]));
        if line != shown {
            if tty {
                eprint!("\r\x1b[2K");
            }
            if !client.json() {
                eprintln!("{line}");
            }
            shown = line;
            pause = Duration::from_millis(250);
        }
        if FINAL.contains(&status.as_str()) {
            // A failed attempt with retries left is followed by its retry.
            let next = match status == "succeeded" {
                true => Ok(None),
                false => retry_of(client, &run).await,
            };
            match next {
                Ok(Some(next)) => {
                    run = next;
                    continue;
                }
                Ok(None) => {
                    if tty {
                        eprint!("\r\x1b[2K");
                    }
                    return finish(client, &run);
                }
                Err(e) if is_transient(&e) => trouble = format!(" ({e:#})"),
                Err(e) => return Err(e),
            }
        }
        if started.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            return Err(Exit::error(
                Exit::WAIT_TIMEOUT,
                format!("run {id} is still {status} after {}s (it goes on){trouble}", timeout.as_secs()),
            ));
        }
        if tty {
            tick += 1;
            let waited = started.elapsed().as_secs_f64();
            eprint!("\r\x1b[2K{} {shown} ({waited:.0}s){trouble}", spin[tick % spin.len()]);
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
        if FINAL.contains(&status.as_str()) {
            continue; // Looking for its retry again.
        }
        match client.get(&format!("/api/runs/{id}")).await {
            Ok(a) => (run, trouble) = (a.data, String::new()),
            Err(e) if is_transient(&e) => trouble = format!(" ({e:#})"),
            Err(e) => return Err(e),
        }
    }
}

/// The run that retries `run`, if the task made one: it is created in the same replicated
/// write as the failure, so it exists once the failure is seen. Runs are listed newest
/// first; the pages are read down to the failed run.
async fn retry_of(client: &Client, run: &Value) -> anyhow::Result<Option<Value>> {
    let (Some(id), Some(task)) = (run["id"].as_u64(), run["task_id"].as_u64()) else { return Ok(None) };
    for page in 1.. {
        let items = client.get(&format!("/api/tasks/{task}/runs?size=100&page={page}")).await?.data["items"].clone();
        let items = items.as_array().cloned().unwrap_or_default();
        if let Some(retry) = items.iter().find(|r| r["retry_of"].as_u64() == Some(id)) {
            return Ok(Some(retry.clone()));
        }
        if items.is_empty() || items.iter().any(|r| r["id"].as_u64().is_some_and(|r| r <= id)) {
            break;
        }
    }
    Ok(None)
}

fn finish(client: &Client, run: &Value) -> anyhow::Result<()> {
    let status = run["status"].as_str().unwrap_or("?");
    if client.json() {
        client.print_json(run);
    } else {
        let out = run["output"].as_str().unwrap_or_default();
        if !out.is_empty() {
            out!("{out}");
            if !out.ends_with('\n') {
                outln!();
            }
        }
    }
    if status == "succeeded" {
        return Ok(());
    }
    let why = match (&run["error"], &run["exit_code"]) {
        (Value::String(e), _) => format!(": {e}"),
        (_, Value::Number(n)) => format!(": exit code {n}"),
        _ => String::new(),
    };
    Err(Exit::error(Exit::RUN_FAILED, format!("run {} {status}{why}", cell(&run["id"]))))
}

pub async fn run(client: &Client, cmd: RunCmd) -> anyhow::Result<()> {
    match cmd {
        RunCmd::Get { id } => {
            let a = client.get(&format!("/api/runs/{}", segment("run", &id)?)).await?;
            match client.json() {
                true => client.print_json(&a.data),
                false => print_fields(&a.data),
            }
        }
        RunCmd::Cancel { id } => {
            let a = client.post(&format!("/api/runs/{}/cancel", segment("run", &id)?), None).await?;
            match client.json() {
                true => client.print_json(&a.data),
                false => outln!("run {id}: {}", cell(&a.data["status"])),
            }
        }
        RunCmd::Logs { id } => {
            let a = client.get(&format!("/api/runs/{}", segment("run", &id)?)).await?;
            if client.json() {
                let logs = json!({"id": a.data["id"], "output": a.data["output"], "error": a.data["error"]});
                client.print_json(&logs);
                return Ok(());
            }
            out!("{}", a.data["output"].as_str().unwrap_or_default());
            if let Some(e) = a.data["error"].as_str() {
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

/// `raftcron worker list|get|update` (the agent's own flags live beside them, so each
/// subcommand carries the client flags itself).
pub async fn worker(cmd: WorkerCmd) -> anyhow::Result<()> {
    let (WorkerCmd::List { client } | WorkerCmd::Get { client, .. } | WorkerCmd::Update { client, .. }) = &cmd;
    let client = &client.connect()?;
    match cmd {
        WorkerCmd::List { .. } => {
            let a = client.get("/api/workers").await?;
            if client.json() {
                client.print_json(&a.data);
                return Ok(());
            }
            let rows: Vec<Vec<String>> =
                a.data.as_array().into_iter().flatten().map(|w| worker_row(w, client.wide())).collect();
            let mut header = vec!["ID", "STATUS", "SLOTS", "TAGS", "ENABLED", "LAST HEARTBEAT"];
            if client.wide() {
                header.extend(["NAME", "REGISTERED SLOTS", "REGISTERED TAGS", "EPOCH"]);
            }
            print_table(&header, &rows);
        }
        WorkerCmd::Get { id, .. } => {
            let a = client.get(&format!("/api/workers/{}", segment("worker", &id)?)).await?;
            match client.json() {
                true => client.print_json(&a.data),
                false => print_fields(&a.data),
            }
        }
        WorkerCmd::Update { id, max_tasks, tags, enabled, .. } => {
            let mut body = serde_json::Map::new();
            if let Some(m) = max_tasks {
                body.insert("max_tasks".into(), m.into());
            }
            if let Some(t) = tags {
                let list: Vec<&str> = t.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
                body.insert("tags".into(), list.into());
            }
            if let Some(e) = enabled {
                body.insert("enabled".into(), e.into());
            }
            if body.is_empty() {
                return Err(Exit::usage("nothing to change: give --max-tasks, --tags or --enabled"));
            }
            let rb = client.request(reqwest::Method::PUT, &format!("/api/workers/{}", segment("worker", &id)?));
            let a = client.send(rb.json(&body)).await?;
            match client.json() {
                true => client.print_json(&a.data),
                false => outln!(
                    "updated worker {id}: {} slots, tags {}, {}",
                    cell(&a.data["max_tasks"]),
                    cell(&a.data["tags"]),
                    if a.data["enabled"] == true { "enabled" } else { "disabled" }
                ),
            }
        }
    }
    Ok(())
}

fn worker_row(w: &Value, wide: bool) -> Vec<String> {
    let mut row = vec![
        cell(&w["id"]),
        cell(&w["status"]),
        format!("{}/{}", cell(&w["current_tasks"]), cell(&w["max_tasks"])),
        cell(&w["tags"]),
        cell(&w["enabled"]),
        when(&w["last_heartbeat"]),
    ];
    if wide {
        row.extend([
            cell(&w["name"]),
            cell(&w["registered_max_tasks"]),
            cell(&w["registered_tags"]),
            cell(&w["epoch"]),
        ]);
    }
    row
}
