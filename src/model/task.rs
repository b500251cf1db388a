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

use super::secret::{EnvValue, REDACTED};

/// Upper bounds that keep one task (and so one Raft entry) small.
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_TEXT_LEN: usize = 64 * 1024;
pub const MAX_ITEMS: usize = 100;
/// The longest value of `environment` or `headers`, in characters.
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// The longest name in `environment` or `headers`.
pub const MAX_VALUE_NAME_LEN: usize = 256;
/// An environment variable's name: no `=` (it ends the name) and no NUL (it ends the
/// string execve reads).
pub const ENV_NAME_PATTERN: &str = "^[^=\\u0000]+$";
pub const ENV_VALUE_PATTERN: &str = "^[^\\u0000]*$";
/// A header's name: an HTTP token (RFC 9110 §5.6.2).
pub const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// A header's value: visible ASCII, space and tab (a CR or LF would split the request).
pub const HEADER_VALUE_PATTERN: &str = "^[\\t\\u0020-\\u007E]*$";

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

impl TaskStatus {
    pub const ALL: [TaskStatus; 3] = [TaskStatus::Active, TaskStatus::Paused, TaskStatus::Disabled];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Active => "active",
            TaskStatus::Paused => "paused",
            TaskStatus::Disabled => "disabled",
        }
    }
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
    /// A value may be secret (see [`EnvValue`]): views show it redacted.
    pub environment: BTreeMap<String, EnvValue>,
    pub url: Option<String>,
    pub method: Option<String>,
    /// A value may be secret, as in `environment`.
    pub headers: BTreeMap<String, EnvValue>,
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
    /// node that serves the read) is `next_run_at`. Its secrets are redacted: every API
    /// answer that shows a task is built here, whoever asks.
    pub fn new(t: Task, next_run_at: Option<DateTime<Utc>>) -> Self {
        let mut spec = t.spec;
        spec.redact();
        TaskView {
            id: t.id,
            spec,
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
    Environment(BTreeMap<String, EnvValue>),
    Url(Option<String>),
    Method(Option<String>),
    Headers(BTreeMap<String, EnvValue>),
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

/// `environment` or `headers` as written: an object (null: none) whose values are strings
/// or `{"value", "secret"}` objects. An error names the entry (`environment.DB_PASS`) and
/// never quotes a value.
fn parse_values(field: &str, value: Value) -> Result<BTreeMap<String, EnvValue>, FieldError> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(name, v)| {
                let v = EnvValue::from_json(v).map_err(|reason| FieldError::new(&format!("{field}.{name}"), reason))?;
                Ok::<_, FieldError>((name, v))
            })
            .collect(),
        _ => Err(FieldError::new(field, "expected an object of names to values")),
    }
}

/// An update's `environment` or `headers` merged with the stored one: a secret sent back
/// as [`REDACTED`] (what the views show) keeps the secret stored under that name, so a
/// client can write back what it read. With no stored secret of that name there is
/// nothing to keep, and the update is refused.
fn keep_stored_secrets(
    field: &str,
    written: BTreeMap<String, EnvValue>,
    stored: &BTreeMap<String, EnvValue>,
) -> Result<BTreeMap<String, EnvValue>, FieldError> {
    written
        .into_iter()
        .map(|(name, v)| {
            if !v.is_redaction_marker() {
                return Ok((name, v));
            }
            match stored.get(&name) {
                Some(kept) if kept.is_secret() => Ok((name, kept.clone())),
                _ => Err(FieldError::new(
                    &format!("{field}.{name}"),
                    format!("{REDACTED:?} keeps a stored secret, and this task has none of this name; send the value"),
                )),
            }
        })
        .collect()
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
            "environment" => F::Environment(parse_values(key, value)?),
            // An empty string is no value (forms send one for fields they do not use).
            "url" => F::Url(non_empty(typed(key, value)?).map(|u| check_url(&u).map(|()| u)).transpose()?),
            "method" => F::Method(non_empty(typed(key, value)?).map(|m| check_method(&m).map(|()| m)).transpose()?),
            "headers" => F::Headers(parse_values(key, value)?),
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

    /// Merges this field of an update into a stored task's spec: as [`Self::apply_to`],
    /// except that a secret sent back as [`REDACTED`] keeps the stored one, and is refused
    /// when there is none to keep.
    pub fn merge_into(self, spec: &mut TaskSpec) -> Result<(), FieldError> {
        match self {
            TaskField::Environment(v) => spec.environment = keep_stored_secrets("environment", v, &spec.environment)?,
            TaskField::Headers(v) => spec.headers = keep_stored_secrets("headers", v, &spec.headers)?,
            other => other.apply_to(spec),
        }
        Ok(())
    }

    /// Sets this field on a spec, as written (a create, or a default spec).
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

    /// Replaces every secret value by [`REDACTED`], as the API shows a task.
    pub fn redact(&mut self) {
        for v in self.environment.values_mut().chain(self.headers.values_mut()) {
            if v.is_secret() {
                *v = v.redacted();
            }
        }
    }

    /// This spec as the API shows it: every secret value [`REDACTED`].
    pub fn redacted(&self) -> TaskSpec {
        let mut spec = self.clone();
        spec.redact();
        spec
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
        for (field, values, headers) in [("environment", &self.environment, false), ("headers", &self.headers, true)] {
            for (name, value) in values.iter() {
                check_value(field, name, value.value(), headers)?;
            }
        }
        // The marker stands for a stored secret (an update replaces it by that secret before
        // this check): as a value it would be indistinguishable from a redacted one.
        for (field, values) in [("environment", &self.environment), ("headers", &self.headers)] {
            if let Some((name, _)) = values.iter().find(|(_, v)| v.is_redaction_marker()) {
                return Err(FieldError::new(
                    &format!("{field}.{name}"),
                    format!("{REDACTED:?} is the redaction marker, not a secret's value"),
                ));
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

/// One entry of `environment` or `headers`: a name and value a process or a request can
/// carry. The reason never quotes the value (it may be a secret).
fn check_value(field: &str, name: &str, value: &str, header: bool) -> Result<(), FieldError> {
    let shown: String = name.chars().take(40).collect();
    let bad = |why: String| Err(FieldError::new(&format!("{field}.{shown}"), why));
    let name_ok = match header {
        true => name.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+.^_`|~-".contains(c)),
        false => !name.contains(['=', '\0']),
    };
    if name.is_empty() || name.chars().count() > MAX_VALUE_NAME_LEN || !name_ok {
        let what = if header { "an HTTP token" } else { "without '=' or NUL" };
        return bad(format!("the name must be 1 to {MAX_VALUE_NAME_LEN} characters, {what}"));
    }
    if value.chars().count() > MAX_VALUE_LEN {
        return bad(format!("the value is longer than {MAX_VALUE_LEN} characters"));
    }
    let value_ok = match header {
        true => value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)),
        false => !value.contains('\0'),
    };
    if !value_ok {
        let what = if header { "a character other than visible ASCII, space and tab" } else { "a NUL" };
        return bad(format!("the value contains {what}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(body: Value) -> Result<TaskSpec, FieldError> {
        TaskSpec::from_fields(TaskField::parse_object(body)?, "UTC")
    }

    #[test]
    fn environment_and_header_entries_a_process_or_request_cannot_carry_are_refused_by_name() {
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        let cases = [
            (json!({"executor": "shell", "command": "env", "environment": {"A=B": "1"}}), "environment.A=B"),
            (json!({"executor": "shell", "command": "env", "environment": {"": "1"}}), "environment."),
            (json!({"executor": "shell", "command": "env", "environment": {"A": "a\0b"}}), "environment.A"),
            (
                json!({"executor": "shell", "command": "env", "environment": {"A": {"value": long, "secret": true}}}),
                "environment.A",
            ),
            (json!({"executor": "http", "url": "http://x.test/", "headers": {"X Y": "1"}}), "headers.X Y"),
            (json!({"executor": "http", "url": "http://x.test/", "headers": {"X": "a\r\nInjected: 1"}}), "headers.X"),
        ];
        for (mut body, field) in cases {
            body["name"] = json!("t");
            let err = spec(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
        let ok = json!({"name": "t", "executor": "http", "url": "http://x.test/", "headers": {"X-A": "tab\tok ~"}});
        assert!(spec(ok).is_ok());
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
            "headers": {
                "Content-Type": "application/json",
                "Authorization": {"value": "Bearer hunter2", "secret": true},
            },
            "environment": {"MODE": "prod", "DB_PASS": {"value": "hunter2", "secret": true}},
            "body": "{}", "tags": ["a"]
        }))
        .unwrap();
        // As the log, snapshots and the state machine store it: secrets as written.
        let bytes = crate::storage::encode(&s).unwrap();
        assert_eq!(crate::storage::decode::<TaskSpec>(&bytes).unwrap(), s);
        let update = TaskField::Environment(s.environment.clone());
        let bytes = crate::storage::encode(&update).unwrap();
        assert_eq!(crate::storage::decode::<TaskField>(&bytes).unwrap(), update);
    }

    fn with_secrets() -> TaskSpec {
        spec(json!({
            "name": "hook", "executor": "http", "url": "https://example.com/x",
            "environment": {
                "MODE": "prod",
                "DB_PASS": {"value": "hunter2", "secret": true},
                "LEVEL": {"value": "3", "secret": false},
            },
            "headers": {"Authorization": {"value": "Bearer hunter2", "secret": true}, "Accept": "text/plain"},
        }))
        .unwrap()
    }

    #[test]
    fn secrets_are_written_in_either_form_and_every_view_redacts_them() {
        let s = with_secrets();
        assert_eq!(s.environment["MODE"], EnvValue::Plain("prod".into()));
        assert_eq!(s.environment["DB_PASS"], EnvValue::Secret("hunter2".into()));
        assert_eq!(s.environment["LEVEL"], EnvValue::Plain("3".into()));
        assert_eq!(s.headers["Authorization"], EnvValue::Secret("Bearer hunter2".into()));

        let created = chrono::TimeZone::timestamp_opt(&Utc, 0, 0).unwrap();
        let view = serde_json::to_value(TaskView::new(Task::new(1, s.clone(), created), None)).unwrap();
        let redacted = json!({"MODE": "prod", "DB_PASS": {"value": "***", "secret": true}, "LEVEL": "3"});
        assert_eq!(view["environment"], redacted);
        assert_eq!(view["headers"], json!({"Authorization": {"value": "***", "secret": true}, "Accept": "text/plain"}));
        assert!(!view.to_string().contains("hunter2"), "{view}");
        assert_eq!(serde_json::to_value(s.redacted()).unwrap()["environment"], view["environment"]);

        // The spec itself (what the worker holding a run is sent) carries the values, and
        // reads back as it was.
        let sent = serde_json::to_value(&s).unwrap();
        assert_eq!(sent["environment"]["DB_PASS"], json!({"value": "hunter2", "secret": true}));
        assert_eq!(sent["environment"]["MODE"], json!("prod"));
        assert_eq!(serde_json::from_value::<TaskSpec>(sent).unwrap(), s);
    }

    #[test]
    fn malformed_values_are_refused_naming_the_entry_never_quoting_it() {
        let shell = |env: Value| json!({"name": "a", "executor": "shell", "command": "x", "environment": env});
        let cases = [
            (shell(json!({"DB_PASS": {"value": "hunter2", "secret": true, "rotate": true}})), "environment.DB_PASS"),
            (shell(json!({"DB_PASS": {"secret": true}})), "environment.DB_PASS"),
            (shell(json!({"DB_PASS": {"value": "hunter2", "secret": "yes"}})), "environment.DB_PASS"),
            (shell(json!({"DB_PASS": {"value": 7, "secret": true}})), "environment.DB_PASS"),
            (shell(json!({"DB_PASS": 7})), "environment.DB_PASS"),
            (shell(json!(["DB_PASS"])), "environment"),
            // The redaction marker is no secret's value.
            (shell(json!({"DB_PASS": {"value": "***", "secret": true}})), "environment.DB_PASS"),
            (
                json!({"name": "a", "executor": "http", "url": "https://example.com",
                       "headers": {"X-Token": {"value": "hunter2", "sekret": true}}}),
                "headers.X-Token",
            ),
        ];
        for (body, field) in cases {
            let err = spec(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{body}: {err}");
        }
        // A plain "***" is an ordinary value.
        assert_eq!(spec(shell(json!({"STARS": "***"}))).unwrap().environment["STARS"], EnvValue::Plain("***".into()));
        assert!(spec(shell(json!(null))).unwrap().environment.is_empty());
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let s = with_secrets();
        let update = TaskField::parse_object(json!({"headers": {"X-Token": {"value": "hunter2", "secret": true}}}));
        let command = crate::raft::Command::CreateTask { spec: Box::new(s.clone()) };
        for shown in [format!("{s:?}"), format!("{update:?}"), format!("{command:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert!(format!("{s:?}").contains("\"prod\""), "plain values stay readable");
    }

    #[test]
    fn an_update_sent_back_redacted_keeps_the_stored_secret() {
        let mut stored = with_secrets();
        // What a client read, written back with one plain value changed.
        let mut environment = serde_json::to_value(&stored.redacted().environment).unwrap();
        environment["MODE"] = json!("staging");
        for f in TaskField::parse_object(json!({"environment": environment})).unwrap() {
            f.merge_into(&mut stored).unwrap();
        }
        assert_eq!(stored.environment["DB_PASS"], EnvValue::Secret("hunter2".into()));
        assert_eq!(stored.environment["MODE"], EnvValue::Plain("staging".into()));
        stored.validate().unwrap();
        // Nothing to keep: no such name, or a plain value of that name.
        for name in ["OTHER", "MODE"] {
            let written = json!({"environment": {name: {"value": "***", "secret": true}}});
            let f = TaskField::parse_object(written).unwrap().remove(0);
            let err = f.merge_into(&mut stored).unwrap_err();
            assert_eq!(err.field, format!("environment.{name}"));
        }
        assert_eq!(stored.environment["MODE"], EnvValue::Plain("staging".into()), "a refused merge changes nothing");
        // A header is kept the same way.
        let f = TaskField::Headers(BTreeMap::from([("Authorization".to_string(), EnvValue::Secret(REDACTED.into()))]));
        f.merge_into(&mut stored).unwrap();
        assert_eq!(stored.headers["Authorization"], EnvValue::Secret("Bearer hunter2".into()));
    }
}
