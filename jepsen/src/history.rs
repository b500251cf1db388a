//! The history: every operation as an `invoke` and a completion (`ok`, `fail`, `info`),
//! one JSON object per line, with monotonic times in nanoseconds since the run started.
//!
//! Outcome contract (see README): `ok` means the operation took effect; `fail` means it
//! certainly did not (a 4xx that rejected it, a 503, a refused connection); `info` means
//! the outcome is unknown (a timeout, a reset after the request was sent, a 504). An `info`
//! write may take effect at any later time, so its client process is retired and a fresh
//! process id continues in its place.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    pub kind: Kind,
    /// `read`, `cas`, `add`, `set-read`.
    pub f: String,
    /// For invokes: the arguments; for completions: the result.
    pub value: Value,
    pub node: String,
    pub time_ns: u64,
    /// On completions, a short reason (status code, error).
    #[serde(default)]
    pub error: Option<String>,
}

/// One fault: what was done, what shows it took effect, and how the cluster fared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NemesisEvent {
    pub name: String,
    pub start_ns: u64,
    /// When the heal began (the fault was in place from `start_ns` to here).
    #[serde(default)]
    pub heal_ns: u64,
    /// When the heal was done.
    pub end_ns: u64,
    pub detail: String,
    /// Observations that the fault took effect (packets dropped, a process stopped, a
    /// clock seen skewed, unsynced bytes dropped).
    #[serde(default)]
    pub evidence: Vec<String>,
    /// Parts of the fault that did not take effect; any makes the run fail (coverage).
    #[serde(default)]
    pub missed: Vec<String>,
    /// Whether, by design, a majority of voters stayed up and connected to each other.
    #[serde(default)]
    pub quorum: bool,
    /// After the heal: milliseconds until a write succeeded (`None`: not within the
    /// recovery deadline).
    #[serde(default)]
    pub recovery_ms: Option<u64>,
    /// Whether writes must succeed while the fault is in place (`bridge-hold`).
    #[serde(default)]
    pub liveness: bool,
    /// For liveness faults: milliseconds into the fault until a write succeeded.
    #[serde(default)]
    pub liveness_ms: Option<u64>,
}

#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    last_completion: Arc<Mutex<std::collections::BTreeMap<u64, Kind>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder { start, events: Arc::default(), last_completion: Arc::default() }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, process: u64, kind: Kind, f: &str, value: Value, node: &str, error: Option<String>) {
        if kind != Kind::Invoke {
            self.last_completion.lock().expect("history lock").insert(process, kind);
        }
        let e = Event { process, kind, f: f.into(), value, node: node.into(), time_ns: self.now_ns(), error };
        self.events.lock().expect("history lock").push(e);
    }

    /// Whether the last completion recorded (by any process) for `process` was `ok`; a
    /// retired process's successor has none yet and counts as not ok.
    pub fn last_ok(&self, process: u64) -> bool {
        self.last_completion.lock().expect("history lock").get(&process).copied() == Some(Kind::Ok)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("history lock").clone()
    }
}

pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for e in items {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}
