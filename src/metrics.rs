//! Prometheus metrics of one node, served at `/metrics`.

use openraft::async_runtime::WatchReceiver;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::raft::Raft;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub raft_term: IntGauge,
    pub raft_leader_changes: IntCounter,
    pub raft_is_leader: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub proposals: IntCounterVec,
    pub proposal_latency: Histogram,
    pub forwarded_writes: IntCounter,
    pub ticks_fired: IntCounter,
    pub ticks_skipped: IntCounterVec,
    pub admission_rejected: IntCounterVec,
    pub fires_deduplicated: IntCounter,
    pub schedule_lag: Histogram,
    pub runs_pending: IntGauge,
    pub runs_assigned: IntCounter,
    pub runs_lost: IntCounter,
    pub quarantine_refusals: IntCounter,
    pub rpc_refused: IntCounterVec,
    pub leader_out_of_touch: IntGauge,
    // Read from the state and the process at each scrape (`api::system::metrics`).
    pub tasks: IntGaugeVec,
    pub runs: IntGaugeVec,
    pub workers: IntGaugeVec,
    pub resident_memory: IntGauge,
    pub data_dir_bytes: IntGauge,
    pub disk_available: IntGauge,
}

const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    pub fn new(node_id: u64) -> Metrics {
        let registry =
            Registry::new_custom(Some("raftcron".into()), Some([("node".to_string(), node_id.to_string())].into()))
                .expect("static registry config");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let http_requests = counter_vec(
            "http_requests_total",
            "HTTP requests by route, method and status.",
            &["route", "method", "status"],
        );
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route and method.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("static metric");
        registry.register(Box::new(http_latency.clone())).expect("unique metric");
        let raft_leader_changes =
            IntCounter::new("raft_leader_changes_total", "Leader changes this node observed.").expect("static metric");
        registry.register(Box::new(raft_leader_changes.clone())).expect("unique metric");
        let proposal_latency = Histogram::with_opts(
            HistogramOpts::new(
                "raft_proposal_duration_seconds",
                "Time from proposing a write on the leader to its apply.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static metric");
        registry.register(Box::new(proposal_latency.clone())).expect("unique metric");
        let forwarded_writes =
            IntCounter::new("forwarded_writes_total", "Client writes this node forwarded to the leader.")
                .expect("static metric");
        registry.register(Box::new(forwarded_writes.clone())).expect("unique metric");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let schedule_lag = Histogram::with_opts(
            HistogramOpts::new(
                "schedule_lag_seconds",
                "Commit time of a fired tick minus its nominal time, measured on the leader.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static metric");
        registry.register(Box::new(schedule_lag.clone())).expect("unique metric");
        let metrics = Metrics {
            ticks_fired: counter("ticks_fired_total", "Schedule ticks that created a run."),
            ticks_skipped: counter_vec(
                "ticks_skipped_total",
                "Schedule ticks accounted for without a run, by reason: misfire (the misfire policy, or ticks while paused), concurrency (forbid), late (skip policy, past the threshold at commit), pending_cap (admission).",
                &["reason"],
            ),
            admission_rejected: counter_vec(
                "admission_rejected_total",
                "Requests answered 429, by reason: rate_limit (per credential), pending_cap, task_pending_cap (manual triggers).",
                &["reason"],
            ),
            fires_deduplicated: counter(
                "fires_deduplicated_total",
                "Fire proposals refused by the cursor compare-and-set (already accounted for).",
            ),
            schedule_lag,
            runs_pending: gauge(
                "runs_pending",
                "Runs waiting for a worker (the placement queue's depth), as this node has applied it.",
            ),
            runs_assigned: counter("runs_assigned_total", "Runs this node placed on a worker as leader."),
            runs_lost: counter("runs_lost_total", "Runs lost with a worker that stopped heartbeating."),
            quarantine_refusals: counter(
                "quarantine_refusals_total",
                "Raft messages this node refused while quarantined (it lost its data dir; remove and add it again).",
            ),
            rpc_refused: counter_vec(
                "rpc_connections_refused_total",
                "Node-to-node connections refused before their first frame, by reason (secret, tls, protocol, timeout, connection cap, handshake cap).",
                &["reason"],
            ),
            tasks: gauge_vec("tasks", "Tasks by status, as this node has applied them.", &["status"]),
            runs: gauge_vec("runs", "Stored runs by status, as this node has applied them.", &["status"]),
            workers: gauge_vec("workers", "Registered workers by liveness, as this node has applied them.", &["liveness"]),
            resident_memory: gauge("resident_memory_bytes", "Resident memory of this node's process."),
            leader_out_of_touch: gauge(
                "raft_leader_out_of_touch",
                "1 when this node leads but has not heard from a quorum for an election timeout (it cannot commit).",
            ),
            data_dir_bytes: gauge(
                "data_dir_bytes",
                "Bytes of the files in this node's data dir: RocksDB (SST files, WAL) and snapshot files.",
            ),
            disk_available: gauge(
                "disk_available_bytes",
                "Bytes available to this node on the file system of its data dir.",
            ),
            http_requests,
            http_latency,
            raft_term: gauge("raft_term", "Current Raft term."),
            raft_leader_changes,
            raft_is_leader: gauge("raft_is_leader", "1 when this node is the leader."),
            raft_last_log_index: gauge("raft_last_log_index", "Index of the last entry in this node's log."),
            raft_commit_index: gauge("raft_commit_index", "Highest log index known committed."),
            raft_applied_index: gauge("raft_applied_index", "Highest log index applied to the state machine."),
            proposals: counter_vec(
                "raft_proposals_total",
                "Client writes proposed on this node, by result.",
                &["result"],
            ),
            proposal_latency,
            forwarded_writes,
            registry,
        };
        metrics.init_labels();
        metrics
    }

    /// The label values a counter vector is known to take, set to zero, so a dashboard or
    /// an alert finds the series before the first event (and `increase` sees the first one).
    fn init_labels(&self) {
        for reason in ["secret", "tls", "protocol", "timeout", "connection cap", "handshake cap"] {
            self.rpc_refused.with_label_values(&[reason]);
        }
        for reason in ["misfire", "concurrency", "late", "pending_cap"] {
            self.ticks_skipped.with_label_values(&[reason]);
        }
        for reason in ["rate_limit", "pending_cap", "task_pending_cap"] {
            self.admission_rejected.with_label_values(&[reason]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    /// Mirrors openraft's metrics into the gauges until the node stops.
    pub async fn follow_raft(&self, raft: Raft) {
        let mut rx = raft.metrics();
        let mut leader = None;
        loop {
            {
                let m = rx.borrow_watched().clone();
                self.raft_term.set(m.current_term as i64);
                self.raft_is_leader.set(i64::from(m.current_leader == Some(m.id)));
                self.raft_last_log_index.set(m.last_log_index.map_or(0, |i| i as i64));
                self.raft_commit_index.set(m.local_committed.as_ref().map_or(0, |l| l.index as i64));
                self.raft_applied_index.set(m.last_applied.as_ref().map_or(0, |l| l.index as i64));
                if m.current_leader.is_some() && m.current_leader != leader {
                    if leader.is_some() {
                        self.raft_leader_changes.inc();
                    }
                    leader = m.current_leader;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
