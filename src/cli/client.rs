//! The REST client under every `raftcron` command that talks to a running cluster
//! (`task`, `run`, `worker`, `cluster`, `snapshot save`): where the server and credential
//! come from (flag, environment, or a named context in the client config file), one
//! request with the API's envelope unwrapped, the exit codes scripts rely on, and aligned
//! tables. It never holds state between invocations and never writes the config file.
//!
//! Exit codes: 0 ok; 1 the API refused (its message on one line); 2 usage (clap's own,
//! and a flag or file this module cannot use); 3 no node answered; 4 `trigger --wait`
//! saw the run end without success; 5 `trigger --wait` gave up (`--timeout`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::Value;

use crate::worker;

/// An error that ends the command with a chosen exit code (see the module docs).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
    /// The HTTP status of an API refusal.
    pub status: Option<u16>,
}

impl Exit {
    pub const API: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const RUN_FAILED: u8 = 4;
    pub const WAIT_TIMEOUT: u8 = 5;

    pub fn error(code: u8, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit { code, message: message.into(), status: None })
    }

    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::error(Self::USAGE, message)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Writes client output to stdout; a closed pipe (`raftcron task list | head -1`) ends the
/// process quietly instead of panicking as `println!` would (SIGPIPE is ignored by Rust
/// programs, and restoring it needs `unsafe`).
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for client output (see [`write_out`]).
macro_rules! outln {
    () => { $crate::cli::client::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::client::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for client output (see [`write_out`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::client::write_out(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

/// Whether a failed request may succeed if repeated: no answer, an overloaded or leaderless
/// cluster (429, 503), or an outcome not known yet (502, 504).
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Exit>().is_some_and(|x| x.code == Exit::UNREACHABLE || matches!(x.status, Some(429 | 502..=504)))
}

/// The exit code of a failed command: an [`Exit`]'s own, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Exit>().map_or(Exit::API, |x| x.code)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// More columns.
    Wide,
    /// The answer's `data`, as JSON.
    Json,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of any node or the load balancer [env: RAFTCRON_SERVER; default: the
    /// context's, else http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// API key (or JWT) [env: RAFTCRON_API_KEY; default: the context's].
    #[arg(long, global = true)]
    pub api_key: Option<String>,
    /// A context of the client config file [env: RAFTCRON_CONTEXT; default: its
    /// `current_context`]. A named context is used whole: RAFTCRON_SERVER and
    /// RAFTCRON_API_KEY do not mix into it (flags still do).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Print the answer's data as JSON (the same as `-o json`).
    #[arg(long, global = true)]
    pub json: bool,
    /// How to print answers.
    #[arg(short = 'o', long = "output", value_enum, global = true)]
    pub output: Option<Output>,
    /// PEM file of the CA that issued the nodes' HTTPS certificates [env:
    /// RAFTCRON_CA_FILE; default: the context's].
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
}

/// Where a client goes when nothing names a server: `raftcron dev`'s address.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `~/.config/raftcron/config.toml` (or `$RAFTCRON_CLIENT_CONFIG`, or under
/// `$XDG_CONFIG_HOME`): named contexts, like kubectl's.
///
/// ```toml
/// current_context = "prod"
/// [contexts.prod]
/// server = "https://raftcron.example.com"
/// api_key_file = "/home/me/.config/raftcron/prod.key"
/// ca_file = "/home/me/.config/raftcron/prod-ca.pem"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextEntry {
    pub server: Option<String>,
    pub api_key: Option<String>,
    /// A file holding the key (its surrounding whitespace ignored), so the config file
    /// itself holds no secret.
    pub api_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// Where the client config lives, and whether the user named it (then it must exist).
fn config_path() -> Option<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os("RAFTCRON_CLIENT_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some((base.join("raftcron").join("config.toml"), false))
}

fn load_config(path: &Path, required: bool) -> anyhow::Result<ClientConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(ClientConfig::default()),
        Err(e) => return Err(Exit::usage(format!("cannot read the client config {}: {e}", path.display()))),
    };
    toml::from_str(&text).map_err(|e| Exit::usage(format!("client config {}: {}", path.display(), e.message())))
}

impl ClientArgs {
    /// The output format asked for.
    pub fn output(&self) -> Output {
        match (self.json, self.output) {
            (true, _) => Output::Json,
            (false, Some(o)) => o,
            (false, None) => Output::Table,
        }
    }

    /// Server, credential and CA. Each flag wins; the rest comes from one source, never a
    /// mix of two (a key must not travel to another source's server): a context named by
    /// `--context` or RAFTCRON_CONTEXT, else the variables RAFTCRON_SERVER and
    /// RAFTCRON_API_KEY when either is set, else the config file's `current_context`. A
    /// context's key is sent only to the context's own server (without one, the default).
    pub fn resolve(&self) -> anyhow::Result<(String, Option<String>, Option<PathBuf>)> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let named = self.context.clone().or_else(|| var("RAFTCRON_CONTEXT"));
        let from_env = ContextEntry {
            server: var("RAFTCRON_SERVER"),
            api_key: var("RAFTCRON_API_KEY"),
            api_key_file: None,
            ca_file: var("RAFTCRON_CA_FILE").map(PathBuf::from),
        };
        // RAFTCRON_CA_FILE alone picks no source: it applies like a flag, below.
        let env_set = from_env.server.is_some() || from_env.api_key.is_some();
        let env_ca = from_env.ca_file.clone();
        let from_context = named.is_some() || !env_set;
        let source = match (named, env_set) {
            (Some(name), _) => {
                let Some((path, _)) = config_path() else {
                    return Err(Exit::usage(
                        "--context needs a client config file (set HOME or RAFTCRON_CLIENT_CONFIG)",
                    ));
                };
                let config = load_config(&path, true)?;
                config.contexts.get(&name).cloned().ok_or_else(|| {
                    let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
                    Exit::usage(format!(
                        "no context {name:?} in {} (it has: {})",
                        path.display(),
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ))
                })?
            }
            (None, true) => from_env,
            (None, false) => match config_path() {
                Some((path, named_file)) => {
                    let config = load_config(&path, named_file)?;
                    match config.current_context {
                        Some(name) => config.contexts.get(&name).cloned().ok_or_else(|| {
                            Exit::usage(format!("current_context {name:?} is not a context of {}", path.display()))
                        })?,
                        None => ContextEntry::default(),
                    }
                }
                None => ContextEntry::default(),
            },
        };
        let trim = |s: &str| s.trim_end_matches('/').to_string();
        let bound = source.server.as_deref().map(trim);
        let server = trim(&self.server.clone().or(source.server).unwrap_or_else(|| DEFAULT_SERVER.into()));
        // A context's key belongs to the context's server: `--server` elsewhere needs its
        // own `--api-key` (the environment's key, set by the user for this shell, goes
        // wherever `--server` says).
        let context_key = source.api_key.is_some() || source.api_key_file.is_some();
        let home = bound.as_deref().unwrap_or(DEFAULT_SERVER);
        if from_context && self.api_key.is_none() && context_key && home != server {
            return Err(Exit::usage(format!("the context's key is for {home}; give --api-key for {server}")));
        }
        match reqwest::Url::parse(&server) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => return Err(Exit::usage(format!("server {server:?} is not an http:// or https:// URL"))),
        }
        let key = match (&self.api_key, source.api_key, &source.api_key_file) {
            (Some(k), _, _) => Some(k.clone()),
            (None, Some(k), _) => Some(k),
            (None, None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| Exit::usage(format!("api_key_file {}: {e}", file.display())))?
                    .trim()
                    .to_string(),
            ),
            (None, None, None) => None,
        };
        Ok((server, key, self.ca_file.clone().or(env_ca).or(source.ca_file)))
    }

    pub fn connect(&self) -> anyhow::Result<Client> {
        let (base, key, ca_file) = self.resolve()?;
        let http = worker::trusting(reqwest::Client::builder(), ca_file.as_deref())
            .map_err(|e| Exit::usage(format!("{e:#}")))?
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client { http, base, key, output: self.output() })
    }
}

/// One cluster, as the command line sees it.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    key: Option<String>,
    pub output: Output,
}

/// What the API answered: the envelope's `data` and `message`, and the headers a command
/// may print (the ETag).
pub struct Answer {
    pub data: Value,
    pub message: String,
    pub etag: Option<String>,
}

impl Client {
    /// A request that must be answered within a minute.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.stream(method, path).timeout(Duration::from_secs(60))
    }

    /// A request with no overall deadline (a snapshot download), only the connect timeout.
    pub fn stream(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Sends `rb` and unwraps the envelope: a refusal becomes exit 1 with the API's
    /// message, no answer exit 3.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = v["message"].as_str().unwrap_or_default().to_string();
        if v.is_null() && status.as_u16() == 503 {
            // Not raftcron's answer: a load balancer with no node behind it.
            return Err(Exit::error(
                Exit::UNREACHABLE,
                format!("{} answered {status}: no node behind it answers", self.base),
            ));
        }
        if v.is_null() && matches!(status.as_u16(), 502 | 504) {
            // A load balancer lost the node's answer: the request may have been carried out.
            let message =
                format!("{} answered {status}: the outcome is unknown (it may have been carried out)", self.base);
            return Err(anyhow::Error::new(Exit { code: Exit::API, message, status: Some(status.as_u16()) }));
        }
        if !status.is_success() {
            let why = match message.is_empty() {
                true => text.chars().take(200).collect::<String>().replace('\n', " "),
                false => message,
            };
            let message = format!("{why} ({status})");
            return Err(anyhow::Error::new(Exit { code: Exit::API, message, status: Some(status.as_u16()) }));
        }
        if v.is_null() && !text.is_empty() {
            return Err(Exit::error(
                Exit::API,
                format!("{} answered something that is not JSON ({status})", self.base),
            ));
        }
        Ok(Answer { data: v["data"].clone(), message, etag })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        let rb = self.request(reqwest::Method::POST, path);
        self.send(match body {
            Some(b) => rb.json(b),
            None => rb,
        })
        .await
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let what = match (e.is_timeout(), e.is_connect()) {
            (true, _) => "did not answer in time",
            (false, true) => "cannot be reached",
            (false, false) => "broke off the exchange",
        };
        // reqwest's chain names the cause (connection refused, dns error, ...).
        let cause = std::iter::successors(std::error::Error::source(&e), |s| s.source())
            .last()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        Exit::error(Exit::UNREACHABLE, format!("{} {what}{cause}", self.base))
    }

    /// Prints `data` as JSON (pretty), for `--json`.
    pub fn print_json(&self, data: &Value) {
        outln!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
    }

    pub fn wide(&self) -> bool {
        self.output == Output::Wide
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// Reads a JSON or YAML document (by extension; `-` is stdin, read as YAML, which JSON
/// is a subset of).
pub fn read_document(file: &Path) -> anyhow::Result<Value> {
    let text = match file == Path::new("-") {
        true => std::io::read_to_string(std::io::stdin()).map_err(|e| Exit::usage(format!("-f -: {e}")))?,
        false => std::fs::read_to_string(file).map_err(|e| Exit::usage(format!("-f {}: {e}", file.display())))?,
    };
    let json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value: Value = match json {
        true => serde_json::from_str(&text).map_err(|e| Exit::usage(format!("-f {}: {e}", file.display())))?,
        false => serde_yaml_ng::from_str(&text).map_err(|e| Exit::usage(format!("-f {}: {e}", file.display())))?,
    };
    if !value.is_object() {
        return Err(Exit::usage(format!("-f {}: must hold one object (a task's fields)", file.display())));
    }
    Ok(value)
}

/// `KEY=VALUE` pairs into an object: VALUE as JSON when it parses (numbers, booleans,
/// arrays, null, quoted strings), else as a string.
pub fn fields_from_sets(sets: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut fields = serde_json::Map::new();
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| Exit::usage(format!("--set {s:?}: expected FIELD=VALUE")))?;
        if k.is_empty() {
            return Err(Exit::usage(format!("--set {s:?}: the field name is empty")));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        fields.insert(k.to_string(), value);
    }
    Ok(fields)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                out.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A cell: strings bare, null as `-`, anything else as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.replace(['\n', '\t'], " "),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// An RFC 3339 instant shortened to seconds, UTC (`2027-01-01 00:00:00Z`).
pub fn when(v: &Value) -> String {
    match v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
        Some(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => cell(v),
    }
}

/// `key: value` lines for one object, in its order, nested objects as JSON.
pub fn print_fields(v: &Value) {
    let Some(obj) = v.as_object() else {
        outln!("{}", cell(v));
        return;
    };
    let width = obj.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, val) in obj {
        let shown = match val {
            Value::Object(_) => val.to_string(),
            Value::String(s) if s.contains('\n') => format!("|\n{}", indent(s)),
            _ => cell(val),
        };
        outln!("{k:<width$}  {shown}");
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_parse_json_values_and_fall_back_to_strings() {
        let f =
            fields_from_sets(&["retry_count=3".into(), "schedule=0 * * * *".into(), "tags=[\"a\"]".into()]).unwrap();
        assert_eq!(f["retry_count"], 3);
        assert_eq!(f["schedule"], "0 * * * *");
        assert_eq!(f["tags"], serde_json::json!(["a"]));
        let e = fields_from_sets(&["nothing".into()]).unwrap_err();
        assert_eq!(exit_code(&e), Exit::USAGE);
    }

    #[test]
    fn the_client_config_reads_contexts_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("k");
        std::fs::write(&key_file, "  secret-key\n").unwrap();
        let config: ClientConfig = toml::from_str(&format!(
            "current_context = \"a\"\n[contexts.a]\nserver = \"http://a:1/\"\napi_key_file = {:?}\n",
            key_file
        ))
        .unwrap();
        assert_eq!(config.contexts["a"].server.as_deref(), Some("http://a:1/"));
        let bad = toml::from_str::<ClientConfig>("[contexts.a]\nsrever = \"x\"\n").unwrap_err();
        assert!(bad.message().contains("srever"), "{bad}");
    }

    #[test]
    fn cells_show_nulls_lists_and_instants_plainly() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(["gpu", "py"])), "gpu,py");
        assert_eq!(when(&serde_json::json!("2027-01-01T01:02:03.456+00:00")), "2027-01-01 01:02:03Z");
    }
}
