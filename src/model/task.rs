//! The task: what a client writes (its specification), what the cluster adds to it, and
//! the structural validation both the API and `apply` rely on.
//!
//! Replicated types are encoded with bincode, which is not self-describing: no
//! `skip_serializing_if`, `flatten` or internally tagged enums on them. The JSON view
//! ([`TaskView`]) is a separate type for that reason.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Upper bounds that keep one task (and so one Raft entry) small.
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_TEXT_LEN: usize = 64 * 1024;
pub const MAX_ITEMS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    Shell,
    Http,
    Python,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    /// Queue order: 0 for `critical` (placed first) … 3 for `low`.
    pub fn rank(self) -> u8 {
        match self {
            Priority::Critical => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    #[default]
    Active,
    Paused,
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    #[default]
    FireOnce,
    Skip,
    CatchUp,
}

/// Everything a client writes about a task. `version` counts changes to this, and only this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskSpec {
    pub name: String,
    pub executor: ExecutorKind,
    /// shell: the command line; python: the script path.
    pub command: Option<String>,
    pub working_directory: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub url: Option<String>,
    pub method: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// The HTTP status that counts as success; any 2xx when unset.
    pub expected_status: Option<u16>,
    pub arguments: Vec<String>,
    pub python_path: Option<String>,
    /// Cron expression; a task without one runs only when triggered.
    pub schedule: Option<String>,
    /// IANA time zone the schedule is evaluated in.
    pub timezone: String,
    pub priority: Priority,
    pub retry_count: u32,
    pub retry_backoff_seconds: u32,
    pub timeout_seconds: u64,
    pub status: TaskStatus,
    /// A worker must carry all of them.
    pub tags: Vec<String>,
    pub concurrency_policy: ConcurrencyPolicy,
    pub misfire_policy: MisfirePolicy,
    /// A run that waits longer than this for a worker fails (none: it waits as long as it
    /// takes, visibly pending).
    pub pending_timeout_s: Option<u64>,
}

/// A task as the state machine stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    pub spec: TaskSpec,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_run: Option<u64>,
    /// Ticks fired, ever; pruning run history never lowers it.
    pub fire_count: u64,
    pub skipped_ticks: u64,
    /// The last schedule tick accounted for (fired or skipped); only moves forward.
    pub cursor: Option<DateTime<Utc>>,
    /// When the task last became active again after a pause or disable: ticks between the
    /// cursor and this instant are skipped (and counted) by the next `Fire`.
    pub resumed_at: Option<DateTime<Utc>>,
    /// How many runs the last pruning left (the kept history plus unfinished runs): the
    /// next pruning waits until a tenth more than that has accumulated, so a task with
    /// thousands of unfinished runs is not rescanned on every new run. (How many runs are
    /// stored is counted by the storage layer, not here.)
    pub prune_floor: u64,
}

impl Task {
    /// A task as created at `now`: version 1, its schedule cursor at `now` (no tick before
    /// its creation fires).
    pub fn new(id: u64, spec: TaskSpec, now: DateTime<Utc>) -> Task {
        Task {
            id,
            spec,
            version: 1,
            created_at: now,
            updated_at: now,
            last_run: None,
            fire_count: 0,
            skipped_ticks: 0,
            cursor: Some(now),
            resumed_at: None,
            prune_floor: 0,
        }
    }
}

/// The JSON shape of a task: the specification's fields at the top level, as in the seed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: u64,
    #[serde(flatten)]
    pub spec: TaskSpec,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the schedule fires next (null without a schedule, or while paused or
    /// disabled); a time in the past means a tick is due and about to fire.
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run: Option<u64>,
    pub fire_count: u64,
    pub skipped_ticks: u64,
    /// The last schedule tick accounted for (fired or skipped).
    pub cursor: Option<DateTime<Utc>>,
}

impl TaskView {
    /// The view of `t`, whose next fire time (evaluated from its schedule and cursor by the
    /// node that serves the read) is `next_run_at`.
    pub fn new(t: Task, next_run_at: Option<DateTime<Utc>>) -> Self {
        TaskView {
            id: t.id,
            spec: t.spec,
            version: t.version,
            created_at: t.created_at,
            updated_at: t.updated_at,
            next_run_at,
            last_run: t.last_run,
            fire_count: t.fire_count,
            skipped_ticks: t.skipped_ticks,
            cursor: t.cursor,
        }
    }
}

/// A request field that is wrong, with the field's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        FieldError { field: field.to_string(), reason: reason.into() }
    }
}

/// One field a client sets, create or update alike. Updates travel through Raft as a list
/// of these and are merged in `apply`, so two concurrent partial updates never lose each
/// other's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskField {
    Name(String),
    Executor(ExecutorKind),
    Command(Option<String>),
    WorkingDirectory(Option<String>),
    Environment(BTreeMap<String, String>),
    Url(Option<String>),
    Method(Option<String>),
    Headers(BTreeMap<String, String>),
    Body(Option<String>),
    ExpectedStatus(Option<u16>),
    Arguments(Vec<String>),
    PythonPath(Option<String>),
    Schedule(Option<String>),
    Timezone(String),
    Priority(Priority),
    RetryCount(u32),
    RetryBackoffSeconds(u32),
    TimeoutSeconds(u64),
    Status(TaskStatus),
    Tags(Vec<String>),
    ConcurrencyPolicy(ConcurrencyPolicy),
    MisfirePolicy(MisfirePolicy),
    PendingTimeoutS(Option<u64>),
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// An http(s) URL with a host (whatever the executor: a URL that could never be fetched is
/// refused when it is written, not when an executor change would need it).
fn check_url(url: &str) -> Result<(), FieldError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(FieldError::new("url", format!("{url:?} is not an http(s) URL"))),
    }
}

fn check_method(m: &str) -> Result<(), FieldError> {
    if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) {
        Ok(())
    } else {
        Err(FieldError::new("method", format!("{m:?} is not one of {}", HTTP_METHODS.join(", "))))
    }
}

fn check_expected_status(s: u16) -> Result<(), FieldError> {
    if (100..=599).contains(&s) {
        Ok(())
    } else {
        Err(FieldError::new("expected_status", "must be between 100 and 599"))
    }
}

fn typed<T: serde::de::DeserializeOwned>(key: &str, value: Value) -> Result<T, FieldError> {
    serde_json::from_value(value).map_err(|e| FieldError::new(key, e.to_string()))
}

impl TaskField {
    /// Parses one JSON member of a create or update body. Unknown keys are rejected so a
    /// misspelt field is not silently dropped.
    pub fn parse(key: &str, value: Value) -> Result<TaskField, FieldError> {
        use TaskField as F;
        Ok(match key {
            "name" => F::Name(typed(key, value)?),
            "executor" => F::Executor(
                typed(key, value)
                    .map_err(|_| FieldError::new(key, "unknown executor; expected one of shell, http, python"))?,
            ),
            "command" => F::Command(typed(key, value)?),
            "working_directory" => F::WorkingDirectory(typed(key, value)?),
            "environment" => F::Environment(typed::<Option<_>>(key, value)?.unwrap_or_default()),
            // An empty string is no value (forms send one for fields they do not use).
            "url" => F::Url(non_empty(typed(key, value)?).map(|u| check_url(&u).map(|()| u)).transpose()?),
            "method" => F::Method(non_empty(typed(key, value)?).map(|m| check_method(&m).map(|()| m)).transpose()?),
            "headers" => F::Headers(typed::<Option<_>>(key, value)?.unwrap_or_default()),
            "body" => F::Body(typed(key, value)?),
            "expected_status" => F::ExpectedStatus(
                typed::<Option<u16>>(key, value)?.map(|s| check_expected_status(s).map(|()| s)).transpose()?,
            ),
            "arguments" => F::Arguments(typed::<Option<_>>(key, value)?.unwrap_or_default()),
            "python_path" => F::PythonPath(typed(key, value)?),
            "schedule" => F::Schedule(typed(key, value)?),
            "timezone" => F::Timezone(typed(key, value)?),
            "priority" => F::Priority(
                typed(key, value).map_err(|_| FieldError::new(key, "expected one of low, normal, high, critical"))?,
            ),
            "retry_count" => F::RetryCount(typed(key, value)?),
            "retry_backoff_seconds" => F::RetryBackoffSeconds(typed(key, value)?),
            "timeout_seconds" => F::TimeoutSeconds(typed(key, value)?),
            "status" => F::Status(
                typed(key, value).map_err(|_| FieldError::new(key, "expected one of active, paused, disabled"))?,
            ),
            "tags" => F::Tags(typed::<Option<_>>(key, value)?.unwrap_or_default()),
            "concurrency_policy" => F::ConcurrencyPolicy(
                typed(key, value).map_err(|_| FieldError::new(key, "expected one of allow, forbid, replace"))?,
            ),
            "misfire_policy" => F::MisfirePolicy(
                typed(key, value).map_err(|_| FieldError::new(key, "expected one of fire_once, skip, catch_up"))?,
            ),
            "pending_timeout_s" => F::PendingTimeoutS(typed(key, value)?),
            _ => return Err(FieldError::new(key, "unknown field")),
        })
    }

    /// Parses a whole JSON object body into fields, in key order.
    pub fn parse_object(body: Value) -> Result<Vec<TaskField>, FieldError> {
        let Value::Object(map) = body else {
            return Err(FieldError::new("body", "expected a JSON object"));
        };
        map.into_iter().map(|(k, v)| TaskField::parse(&k, v)).collect()
    }

    pub fn apply_to(self, spec: &mut TaskSpec) {
        use TaskField as F;
        match self {
            F::Name(v) => spec.name = v,
            F::Executor(v) => spec.executor = v,
            F::Command(v) => spec.command = v,
            F::WorkingDirectory(v) => spec.working_directory = v,
            F::Environment(v) => spec.environment = v,
            F::Url(v) => spec.url = v,
            F::Method(v) => spec.method = v,
            F::Headers(v) => spec.headers = v,
            F::Body(v) => spec.body = v,
            F::ExpectedStatus(v) => spec.expected_status = v,
            F::Arguments(v) => spec.arguments = v,
            F::PythonPath(v) => spec.python_path = v,
            F::Schedule(v) => spec.schedule = v,
            F::Timezone(v) => spec.timezone = v,
            F::Priority(v) => spec.priority = v,
            F::RetryCount(v) => spec.retry_count = v,
            F::RetryBackoffSeconds(v) => spec.retry_backoff_seconds = v,
            F::TimeoutSeconds(v) => spec.timeout_seconds = v,
            F::Status(v) => spec.status = v,
            F::Tags(v) => spec.tags = v,
            F::ConcurrencyPolicy(v) => spec.concurrency_policy = v,
            F::MisfirePolicy(v) => spec.misfire_policy = v,
            F::PendingTimeoutS(v) => spec.pending_timeout_s = v,
        }
    }
}

const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl TaskSpec {
    /// A spec with every optional field at its default; `name` and `executor` must be set
    /// by the caller's fields (checked by [`TaskSpec::from_fields`]).
    fn blank(default_timezone: &str) -> TaskSpec {
        TaskSpec {
            name: String::new(),
            executor: ExecutorKind::Shell,
            command: None,
            working_directory: None,
            environment: BTreeMap::new(),
            url: None,
            method: None,
            headers: BTreeMap::new(),
            body: None,
            expected_status: None,
            arguments: Vec::new(),
            python_path: None,
            schedule: None,
            timezone: default_timezone.to_string(),
            priority: Priority::Normal,
            retry_count: 0,
            retry_backoff_seconds: 10,
            timeout_seconds: 3600,
            status: TaskStatus::Active,
            tags: Vec::new(),
            concurrency_policy: ConcurrencyPolicy::Allow,
            misfire_policy: MisfirePolicy::FireOnce,
            pending_timeout_s: None,
        }
    }

    /// Builds a spec for a create request.
    pub fn from_fields(fields: Vec<TaskField>, default_timezone: &str) -> Result<TaskSpec, FieldError> {
        let has = |f: fn(&TaskField) -> bool| fields.iter().any(f);
        if !has(|f| matches!(f, TaskField::Name(_))) {
            return Err(FieldError::new("name", "is required"));
        }
        if !has(|f| matches!(f, TaskField::Executor(_))) {
            return Err(FieldError::new("executor", "is required (shell, http or python)"));
        }
        let mut spec = TaskSpec::blank(default_timezone);
        for f in fields {
            f.apply_to(&mut spec);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// What the executor needs: a non-blank `command` for shell and python, a `url` for
    /// http. Apart from [`Self::validate`] because an update that leaves it unmet is a
    /// conflict with the stored task (409), not a malformed request.
    pub fn executor_needs(&self) -> Result<(), FieldError> {
        let (field, value) = match self.executor {
            ExecutorKind::Shell | ExecutorKind::Python => ("command", &self.command),
            ExecutorKind::Http => ("url", &self.url),
        };
        match value.as_deref().map(str::trim) {
            None | Some("") => {
                Err(FieldError::new(field, format!("is required for the {:?} executor", self.executor).to_lowercase()))
            }
            Some(_) => Ok(()),
        }
    }

    /// Structural checks that need no outside data (no time-zone database, no clock), so
    /// `apply` can run them too on a merged update. Cron and time-zone checks live in
    /// [`crate::scheduler::cron`] and run on the node that receives the request.
    pub fn validate(&self) -> Result<(), FieldError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if self.name.chars().count() > MAX_NAME_LEN {
            return Err(FieldError::new("name", format!("longer than {MAX_NAME_LEN} characters")));
        }
        if self.name.chars().any(char::is_control) {
            return Err(FieldError::new("name", "must not contain control characters"));
        }
        self.executor_needs()?;
        // The http executor's fields, checked as written (`TaskField::parse`) and here for
        // an http task whatever it stored before (a task made an http task by an update).
        if self.executor == ExecutorKind::Http {
            if let Some(url) = &self.url {
                check_url(url)?;
            }
            if let Some(m) = &self.method {
                check_method(m)?;
            }
            if let Some(s) = self.expected_status {
                check_expected_status(s)?;
            }
        }
        if self.timeout_seconds == 0 || self.timeout_seconds > 7 * 24 * 3600 {
            return Err(FieldError::new("timeout_seconds", "must be between 1 and 604800"));
        }
        if self.retry_count > 100 {
            return Err(FieldError::new("retry_count", "must be at most 100"));
        }
        if self.retry_backoff_seconds > 24 * 3600 {
            return Err(FieldError::new("retry_backoff_seconds", "must be at most 86400"));
        }
        for (field, text) in [
            ("command", &self.command),
            ("working_directory", &self.working_directory),
            ("url", &self.url),
            ("body", &self.body),
            ("python_path", &self.python_path),
            ("schedule", &self.schedule),
        ] {
            if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT_LEN) {
                return Err(FieldError::new(field, format!("longer than {MAX_TEXT_LEN} characters")));
            }
        }
        for (field, len) in [
            ("environment", self.environment.len()),
            ("headers", self.headers.len()),
            ("arguments", self.arguments.len()),
            ("tags", self.tags.len()),
        ] {
            if len > MAX_ITEMS {
                return Err(FieldError::new(field, format!("more than {MAX_ITEMS} entries")));
            }
        }
        if self.tags.iter().any(|t| t.trim().is_empty() || t.chars().count() > 64 || t.chars().any(char::is_control)) {
            return Err(FieldError::new(
                "tags",
                "each tag must be 1 to 64 characters, not all blank, without control characters",
            ));
        }
        if self.pending_timeout_s.is_some_and(|s| s == 0 || s > 365 * 24 * 3600) {
            return Err(FieldError::new("pending_timeout_s", "must be between 1 and 31536000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(body: Value) -> Result<TaskSpec, FieldError> {
        TaskSpec::from_fields(TaskField::parse_object(body)?, "UTC")
    }

    #[test]
    fn seed_example_parses_with_defaults() {
        let s = spec(json!({
            "name": "database_backup", "executor": "shell",
            "command": "pg_dump mydb > /backup/$(date +%Y%m%d).sql",
            "schedule": "0 2 * * *", "priority": "high", "retry_count": 2, "timeout_seconds": 1800
        }))
        .unwrap();
        assert_eq!(s.priority, Priority::High);
        assert_eq!(s.timezone, "UTC");
        assert_eq!(s.status, TaskStatus::Active);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"executor": "shell", "command": "x"}), "name"),
            (json!({"name": "a", "executor": "ruby", "command": "x"}), "executor"),
            (json!({"name": "a", "executor": "shell"}), "command"),
            (json!({"name": "a", "executor": "http", "url": "ftp://x"}), "url"),
            (json!({"name": "a", "executor": "shell", "command": "x", "retry_count": "3"}), "retry_count"),
            (json!({"name": "a", "executor": "shell", "command": "x", "retry_count": -1}), "retry_count"),
            (json!({"name": "a", "executor": "shell", "command": "x", "priority": "urgent"}), "priority"),
            (json!({"name": "a", "executor": "shell", "command": "x", "colour": "red"}), "colour"),
            (json!({"name": "a", "executor": "shell", "command": "x", "timeout_seconds": 0}), "timeout_seconds"),
            (json!([1, 2]), "body"),
        ];
        for (body, field) in cases {
            let err = spec(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn bincode_round_trip_of_a_full_spec() {
        let s = spec(json!({
            "name": "hook", "executor": "http", "url": "https://example.com/x", "method": "POST",
            "headers": {"Content-Type": "application/json"}, "body": "{}", "tags": ["a"]
        }))
        .unwrap();
        let bytes = bincode::serde::encode_to_vec(&s, bincode::config::standard()).unwrap();
        let (back, _): (TaskSpec, _) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, s);
    }
}
