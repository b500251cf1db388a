//! The replicated commands (log entry payloads) and what applying one answers.
//!
//! Everything `apply` needs that is time- or chance-dependent is carried here: the
//! proposal time, ids, the idempotency key. The set grows with the product (firing, runs,
//! workers, assignments — see ARCHITECTURE.md); each variant is handled in
//! [`super::apply`].

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::model::{
    FieldError, Liveness, Principal, Run, RunAttempt, RunStatus, Task, TaskField, TaskSpec, TaskStatus, Worker,
    WorkerUpdate,
};

/// One log entry's application data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Command time, stamped by the leader as it proposes the entry (`propose_local`):
    /// never a follower's clock. `apply` uses `max(issued_at, last applied time)`, so
    /// command time never runs backwards.
    pub issued_at: DateTime<Utc>,
    /// Deduplicates retries of the same client write (PRODUCT.md §4.8).
    pub idempotency: Option<IdempotencyKey>,
    pub command: Command,
}

/// Identifies one logical write for deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// Whose key it is: the caller's identity (an API key's name), or `node-N` for a key a
    /// node attached itself to make its own retries safe.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request (method, path, body): the same key with another request is
    /// refused rather than answered with the first request's result.
    pub fingerprint: String,
    /// How long the answer is kept, in command time: a day for a client's key, minutes
    /// for a node's own (its retries end within the write deadline).
    pub ttl_ms: i64,
    /// A client's key (`Idempotency-Key`): its answer is kept whatever it was, so a retry
    /// gets the same answer. A node's own key keeps only an applied write's answer: a
    /// refused command leaves no trace at all, and a retry simply tries again (the first
    /// attempt changed nothing, so at most one of them applies).
    pub client: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Fixes the cluster id; proposed once by the first leader. Later proposals are no-ops.
    InitCluster {
        cluster_id: String,
    },
    CreateTask {
        spec: Box<TaskSpec>,
    },
    /// Merges `fields` into the task; with `expected_version`, only if it still matches.
    UpdateTask {
        id: u64,
        fields: Vec<TaskField>,
        expected_version: Option<u64>,
    },
    DeleteTask {
        id: u64,
        expected_version: Option<u64>,
    },
    /// Pause or resume (`active`) a task. A disabled task changes only when
    /// `may_enable` (an admin asked): pausing or resuming it is otherwise refused.
    SetTaskStatus {
        id: u64,
        status: TaskStatus,
        may_enable: bool,
    },
    /// The leader's firing decisions for a batch of tasks (one entry for every task due in
    /// the same instant): each a compare-and-set on its task's cursor and spec version,
    /// applied independently. Ticks are computed by the leader (cron and time zones never
    /// run in apply); apply only checks and records them. Each task's finished runs
    /// beyond the newest `keep_runs` are pruned as it fires. A tick of a `skip` task that
    /// is more than `misfire_threshold_ms` old in the entry's command time is counted as
    /// skipped, not run: the leader planned it on time, but the entry may commit later.
    Fire {
        fires: Vec<TaskFire>,
        keep_runs: u32,
        misfire_threshold_ms: u64,
    },
    /// A manual run of a task (its history pruned to `keep_runs`, as for `Fire`).
    TriggerRun {
        task_id: u64,
        keep_runs: u32,
    },
    /// Cancels a run that has not finished (a worker running it sees it go and stops it).
    CancelRun {
        run_id: u64,
    },
    /// An agent starts (or restarts): creates or updates the worker, online, under a new
    /// epoch. Runs still assigned to it belong to an earlier registration, whose agent is
    /// gone or replaced: they are lost and re-queued — at once if the registering agent
    /// saw them killed (`killed`) or they never started, otherwise after
    /// `requeue_delay_ms` (the worker timeout, by which an agent that does not know it was
    /// replaced has fenced itself).
    RegisterWorker {
        id: String,
        name: String,
        max_tasks: u32,
        tags: Vec<String>,
        max_lost_requeues: u32,
        killed: Vec<RunAttempt>,
        requeue_delay_ms: u64,
    },
    /// An admin's change to a worker's slots, tags or `enabled`.
    UpdateWorker {
        id: String,
        update: WorkerUpdate,
    },
    /// The leader's liveness decision. Going offline loses the worker's runs: each becomes
    /// `lost` and, while its chain was re-queued fewer than `max_lost_requeues` times, a
    /// new pending attempt.
    SetWorkerLiveness {
        id: String,
        liveness: Liveness,
        max_lost_requeues: u32,
        reason: String,
    },
    /// The leader's placement pass, each part checked again in apply: `(run, worker)`
    /// pairs (pending, worker online and enabled with a free slot and the run's tags);
    /// `released`: retries whose backoff ended, moved to the placement queue; `expired`:
    /// pending runs past their `pending_deadline`, failed.
    AssignRuns {
        assignments: Vec<(u64, String)>,
        released: Vec<u64>,
        expired: Vec<u64>,
    },
    /// A worker's report on its run, fenced: accepted only from the worker holding the
    /// run's current attempt (guarantee 6). A failed attempt with retries left is followed
    /// by a new pending attempt after its backoff, `retry_jitter_ms` (chosen by the node
    /// that took the report; apply has no randomness) added.
    ReportRun {
        run_id: u64,
        attempt: u32,
        worker_id: String,
        /// The registration epoch the reporting agent holds.
        epoch: u64,
        report: RunReport,
        retry_jitter_ms: u64,
    },
    /// The leader's verdict on a run its worker holds past `timeout_seconds` plus a grace
    /// (the worker kills at the timeout, so it is hung or its reports are lost): the
    /// attempt becomes `timed_out`, retried like any timed-out attempt. Refused unless
    /// that attempt still holds its slot.
    ExpireRun {
        run_id: u64,
        attempt: u32,
        reason: String,
        retry_jitter_ms: u64,
    },
    /// Records that the cluster has replicated to these members (the leader saw each
    /// match a log index, or is itself one of them). Persistent, unlike the leader's
    /// in-memory progress: a member that restarts with an empty data dir is recognized as
    /// one that lost its data by any later leader, and stays quarantined.
    MarkReplicated {
        nodes: Vec<u64>,
    },
}

/// What a worker says about the run it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunReport {
    Started,
    Finished {
        /// `succeeded`, `failed` or `timed_out`.
        status: RunStatus,
        exit_code: Option<i32>,
        http_status: Option<u16>,
        /// The tail of the output; apply keeps at most [`crate::model::MAX_OUTPUT`] bytes.
        output: String,
        error: Option<String>,
        duration_ms: u64,
    },
    /// The agent starts the job only now, after an earlier `Started` was applied but its
    /// answer lost (the agent starts a job only on an accepted `Started`): the run is timed
    /// from now. A `Started` retried is the same report and changes nothing.
    Restarted,
}

/// One task's share of a [`Command::Fire`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFire {
    pub task_id: u64,
    /// The task version the ticks were computed from.
    pub spec_version: u64,
    /// The cursor they were computed from.
    pub expected_cursor: Option<DateTime<Utc>>,
    /// Ticks to run, increasing, each after the cursor and at or before `new_cursor`.
    pub fired: Vec<DateTime<Utc>>,
    /// Ticks accounted for without a run (misfire policy, or while paused).
    pub skipped: u64,
    pub new_cursor: DateTime<Utc>,
}

/// What one [`TaskFire`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// The runs it created.
    pub runs: Vec<u64>,
    /// Ticks its concurrency policy (`forbid`) skipped.
    pub forbidden: u64,
    /// Ticks of a `skip` task more than the misfire threshold old by the entry's command
    /// time, skipped.
    pub late: u64,
}

/// What applying a request produced. Stored with an idempotency key, so a retry returns
/// exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub result: Result<Outcome, Rejection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Membership entries, blank entries, `InitCluster`, `MarkReplicated`.
    Done,
    Task(Box<Task>),
    TaskDeleted {
        id: u64,
    },
    Run(Box<Run>),
    /// Per [`TaskFire`] of a `Fire`, in order.
    Fired(Vec<Result<Fired, Rejection>>),
    Worker(Box<Worker>),
    /// Runs lost with a worker, and the new attempts that re-queue them.
    Lost {
        lost: Vec<u64>,
        requeued: Vec<u64>,
    },
    /// What an `AssignRuns` did: runs placed, and pending runs failed at their deadline.
    Assigned {
        placed: u64,
        expired: u64,
    },
}

/// A command that applied without changing anything, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("task {0} not found")]
    TaskNotFound(u64),
    #[error("a task named {0:?} already exists")]
    NameTaken(String),
    #[error("task version is {actual}, not {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("{0}")]
    Invalid(FieldError),
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// A `Fire` whose cursor or spec version no longer matches: another proposal (or a
    /// deposed leader's) already accounted for these ticks, or the task changed.
    #[error("stale fire for task {0}")]
    StaleFire(u64),
    #[error("task {0} is disabled")]
    TaskDisabled(u64),
    #[error("run {0} not found")]
    RunNotFound(u64),
    #[error("run {0} has already finished")]
    RunFinished(u64),
    #[error("worker {0:?} not found")]
    WorkerNotFound(String),
    /// A report from anyone but the holder of the run's current attempt (under the epoch
    /// it was placed with), or one that contradicts what was already recorded for it.
    #[error("run {run_id} attempt {attempt} is not held by worker {worker_id:?} epoch {epoch} (current attempt {current}, status {status:?})")]
    StaleAttempt { run_id: u64, attempt: u32, worker_id: String, epoch: u64, current: u32, status: RunStatus },
    /// An update whose fields are each valid but leave the stored task without what its
    /// executor needs (a shell task's `command`, an http task's `url`): a conflict with
    /// the task's state, not a malformed request. (Appended: variants are encoded by index.)
    #[error("the task as stored and this change together lack a field: {0}")]
    Incomplete(FieldError),
}

impl Response {
    pub fn ok(outcome: Outcome) -> Self {
        Response { result: Ok(outcome) }
    }
    pub fn rejected(r: Rejection) -> Self {
        Response { result: Err(r) }
    }
}

impl Command {
    /// Whether `who` may ask for this command. The node that takes a client's request
    /// checks it before proposing or forwarding, and the leader checks it again for a
    /// forwarded write. This mirrors `api::access` (which answers the client first, with
    /// the route's rule); commands the leader makes for itself are never a client's.
    pub fn authorize(&self, who: &Principal) -> Result<(), String> {
        let need = |role: Role| match who.role.covers(role) {
            true => Ok(()),
            false => Err(format!("{} ({:?}) may not {}", who.name, who.role, self)),
        };
        let own_worker = |id: &str| match who.role {
            Role::Admin => Ok(()),
            Role::Worker if crate::model::worker::acts_for(&who.name, id) => Ok(()),
            _ => Err(format!("{} ({:?}) may not act for worker {id}", who.name, who.role)),
        };
        match self {
            Command::CreateTask { .. }
            | Command::UpdateTask { .. }
            | Command::DeleteTask { .. }
            | Command::UpdateWorker { .. } => need(Role::Admin),
            // Resuming a disabled task is an admin's (the node sets `may_enable` for one).
            Command::SetTaskStatus { may_enable: true, .. } => need(Role::Admin),
            Command::SetTaskStatus { .. } | Command::TriggerRun { .. } | Command::CancelRun { .. } => {
                need(Role::Operator)
            }
            Command::RegisterWorker { id, .. } => own_worker(id),
            Command::ReportRun { worker_id, .. } => own_worker(worker_id),
            Command::InitCluster { .. }
            | Command::Fire { .. }
            | Command::SetWorkerLiveness { .. }
            | Command::AssignRuns { .. }
            | Command::ExpireRun { .. }
            | Command::MarkReplicated { .. } => {
                Err(format!("{} is proposed by the leader itself, never on a client's behalf", self))
            }
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.command.fmt(f)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitCluster { cluster_id } => write!(f, "init-cluster({cluster_id})"),
            Command::CreateTask { spec } => write!(f, "create-task({:?})", spec.name),
            Command::UpdateTask { id, .. } => write!(f, "update-task({id})"),
            Command::DeleteTask { id, .. } => write!(f, "delete-task({id})"),
            Command::SetTaskStatus { id, status, .. } => write!(f, "set-task-status({id}, {status:?})"),
            Command::Fire { fires, .. } => {
                let ticks: usize = fires.iter().map(|t| t.fired.len()).sum();
                write!(f, "fire({} tasks, {ticks} ticks)", fires.len())
            }
            Command::TriggerRun { task_id, .. } => write!(f, "trigger(task {task_id})"),
            Command::CancelRun { run_id } => write!(f, "cancel(run {run_id})"),
            Command::RegisterWorker { id, .. } => write!(f, "register-worker({id})"),
            Command::UpdateWorker { id, .. } => write!(f, "update-worker({id})"),
            Command::SetWorkerLiveness { id, liveness, .. } => write!(f, "worker-liveness({id}, {liveness:?})"),
            Command::AssignRuns { assignments, released, expired } => {
                write!(f, "assign({} runs, {} released, {} expired)", assignments.len(), released.len(), expired.len())
            }
            Command::ExpireRun { run_id, attempt, .. } => write!(f, "expire(run {run_id} attempt {attempt})"),
            Command::MarkReplicated { nodes } => write!(f, "mark-replicated({nodes:?})"),
            Command::ReportRun { run_id, attempt, report, .. } => match report {
                RunReport::Started => write!(f, "report(run {run_id} attempt {attempt}: started)"),
                RunReport::Restarted => write!(f, "report(run {run_id} attempt {attempt}: started late)"),
                RunReport::Finished { status, .. } => write!(f, "report(run {run_id} attempt {attempt}: {status:?})"),
            },
        }
    }
}
