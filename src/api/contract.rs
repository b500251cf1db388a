//! The OpenAPI document as a contract: what utoipa derives from the handlers' types,
//! tightened to state every constraint the server enforces — the bounds, lengths,
//! patterns, enums and required fields of each parameter and body, that a task needs a
//! `command` or a `url` depending on its executor, that an update names at least one
//! field — and every status code an operation can answer, each error with the envelope.
//! A client that sends what this document allows is never refused for its shape
//! (schemathesis holds the server to that in CI, see `scripts/schemathesis.sh`), and
//! what it forbids is refused with a 4xx.
//!
//! Three string formats are raftcron's own: `cron` (an expression `scheduler::cron`
//! accepts), `iana-time-zone` and `http-url` (what the http executor can fetch); no JSON
//! Schema can spell them out, so the document names and describes them. What depends on
//! stored state — a name already taken, an update that leaves a task without what its
//! executor needs — is a 409.
//!
//! This module must never change what the server accepts: it only says it.

use serde_json::{json, Map, Value};

use super::access::{access_of, Access};
use crate::model::secret::REDACTED;
use crate::model::task::{
    ENV_NAME_PATTERN, ENV_VALUE_PATTERN, HEADER_NAME_PATTERN, HEADER_VALUE_PATTERN, MAX_ITEMS, MAX_NAME_LEN,
    MAX_TEXT_LEN, MAX_VALUE_LEN, MAX_VALUE_NAME_LEN,
};
use crate::model::worker::{MAX_SLOTS, MAX_WORKER_ID};

/// A name or tag: at least one visible character, no control characters.
const NON_BLANK_NO_CONTROL: &str =
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// A worker id.
const WORKER_ID: &str = "^[A-Za-z0-9._-]+$";
/// An `Idempotency-Key`: visible ASCII, no surrounding blanks.
const IDEMPOTENCY_KEY: &str = "^[!-~]([ -~]*[!-~])?$";
/// An `If-Match`: `*` or a task version as an ETag.
const IF_MATCH: &str = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$";
/// An HTTP method, in any case.
const METHOD: &str = "^([Gg][Ee][Tt]|[Pp][Oo][Ss][Tt]|[Pp][Uu][Tt]|[Pp][Aa][Tt][Cc][Hh]|[Dd][Ee][Ll][Ee][Tt][Ee]|[Hh][Ee][Aa][Dd]|[Oo][Pp][Tt][Ii][Oo][Nn][Ss])$";

/// The document the server publishes at `/api/openapi.json`.
pub fn document(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut v = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    tighten(&mut v);
    v
}

fn text(max: usize) -> Value {
    json!({"type": ["string", "null"], "maxLength": max})
}

/// `environment` or `headers`: names to values, each a string or an object that marks it
/// secret. A create may not send the redaction marker as a secret's value; an update may,
/// to keep the secret stored under that name (refused, 400, if there is none: that
/// depends on the stored task, which no schema sees).
fn values(create: bool, headers: bool) -> Value {
    let (name, value) = match headers {
        true => (HEADER_NAME_PATTERN, HEADER_VALUE_PATTERN),
        false => (ENV_NAME_PATTERN, ENV_VALUE_PATTERN),
    };
    let plain = json!({"type": "string", "maxLength": MAX_VALUE_LEN, "pattern": value});
    let mut secret = json!({
        "type": "object", "additionalProperties": false, "required": ["value"],
        "properties": {"value": plain, "secret": {"type": "boolean"}},
    });
    if create {
        secret["not"] = json!({
            "required": ["value", "secret"],
            "properties": {"value": {"const": REDACTED}, "secret": {"const": true}},
        });
    }
    json!({
        "type": ["object", "null"], "maxProperties": MAX_ITEMS,
        "propertyNames": {"maxLength": MAX_VALUE_NAME_LEN, "pattern": name},
        "additionalProperties": {"oneOf": [plain, secret]},
        "description": format!(
            "each value a string, or {{\"value\": string, \"secret\": true}}: a secret, write-only (every view \
             shows {{\"value\": \"{REDACTED}\", \"secret\": true}}); in an update, that redacted form keeps the stored \
             secret of the same name"
        ),
    })
}

/// The properties a task body may carry, with what `TaskSpec::validate` and the
/// handlers check of each.
fn task_properties() -> Value {
    json!({
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": NON_BLANK_NO_CONTROL},
        "executor": {"$ref": "#/components/schemas/ExecutorKind"},
        "command": text(MAX_TEXT_LEN),
        "working_directory": text(MAX_TEXT_LEN),
        "environment": values(false, false),
        "url": {
            "anyOf": [{"type": "string", "format": "http-url", "maxLength": MAX_TEXT_LEN}, {"type": "string", "maxLength": 0}, {"type": "null"}],
            "description": "an http(s) URL with a host; empty or null: none"
        },
        "method": {
            "anyOf": [{"type": "string", "pattern": METHOD}, {"type": "string", "maxLength": 0}, {"type": "null"}],
            "description": "an HTTP method, in any case; empty or null: none"
        },
        "headers": values(false, true),
        "body": text(MAX_TEXT_LEN),
        "expected_status": {"type": ["integer", "null"], "minimum": 100, "maximum": 599},
        "arguments": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": MAX_ITEMS},
        "python_path": text(MAX_TEXT_LEN),
        "schedule": {
            "type": ["string", "null"], "format": "cron", "maxLength": MAX_TEXT_LEN,
            "description": "cron as cronie reads it (5 fields, or 6 with seconds first), a macro (@daily, …) or @every <duration>; one that can never fire is refused"
        },
        "timezone": {"type": "string", "format": "iana-time-zone", "description": "an IANA time zone name; default the cluster's"},
        "priority": {"$ref": "#/components/schemas/Priority"},
        "retry_count": {"type": "integer", "minimum": 0, "maximum": 100},
        "retry_backoff_seconds": {"type": "integer", "minimum": 0, "maximum": 86400},
        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 604800},
        "status": {"$ref": "#/components/schemas/TaskStatus"},
        "tags": {
            "type": ["array", "null"], "maxItems": MAX_ITEMS,
            "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NON_BLANK_NO_CONTROL}
        },
        "concurrency_policy": {"$ref": "#/components/schemas/ConcurrencyPolicy"},
        "misfire_policy": {"$ref": "#/components/schemas/MisfirePolicy"},
        "pending_timeout_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 31536000},
    })
}

/// A new task: a name and an executor, and what that executor needs.
fn task_create() -> Value {
    let mut props = task_properties();
    props["environment"] = values(true, false);
    props["headers"] = values(true, true);
    let branch = |executors: Value, required: &str| {
        let mut p = props.clone();
        p["executor"] = json!({"type": "string", "enum": executors});
        p[required] = if required == "url" {
            json!({"type": "string", "format": "http-url", "maxLength": MAX_TEXT_LEN})
        } else {
            json!({"type": "string", "maxLength": MAX_TEXT_LEN, "pattern": "\\S"})
        };
        json!({
            "type": "object", "additionalProperties": false, "properties": p,
            "required": ["name", "executor", required],
        })
    };
    json!({
        "description": "A task to create: the seed's fields; `command` for shell and python, `url` for http.",
        "oneOf": [branch(json!(["shell", "python"]), "command"), branch(json!(["http"]), "url")],
    })
}

/// An update: any of the task's fields, at least one, merged into the task. A merge that
/// leaves the task without what its executor needs (a shell task's `command` removed,
/// say) depends on the stored task, which no schema sees: it is a 409.
fn task_update() -> Value {
    let p = task_properties();
    json!({
        "description": "Fields to change; at least one.",
        "type": "object", "additionalProperties": false, "minProperties": 1, "properties": p,
    })
}

fn worker_tags() -> Value {
    json!({"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 64}})
}

/// Patches parameter `name`'s schema (and whether it is required) wherever it appears.
fn parameter_schema(name: &str, in_path: Option<&str>) -> Option<(Value, bool)> {
    let s = match (name, in_path) {
        ("consistency", _) => json!({"type": "string", "enum": ["linearizable", "local"]}),
        ("page", _) => json!({"type": "integer", "minimum": 1, "maximum": super::MAX_PAGE}),
        ("size", _) => json!({"type": "integer", "minimum": 1, "maximum": 100}),
        ("status", Some("/api/tasks")) => json!({"type": "string", "enum": ["active", "paused", "disabled"]}),
        // A comma-separated list (`style: form, explode: false`, set below): an array of
        // states, from the enum itself.
        ("status", Some("/api/runs")) => {
            let states: Vec<&str> = crate::model::RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            json!({"type": "array", "minItems": 1, "items": {"type": "string", "enum": states}})
        }
        ("since", _) => json!({"type": "string", "format": "date-time"}),
        ("worker_id", _) => {
            json!({"type": "string", "minLength": 1, "maxLength": MAX_WORKER_ID, "pattern": WORKER_ID})
        }
        ("Idempotency-Key", _) => {
            json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY})
        }
        ("If-Match", _) => json!({"type": "string", "pattern": IF_MATCH}),
        ("cron", _) => return Some((json!({"type": "string", "format": "cron", "minLength": 1}), true)),
        ("timezone", _) => json!({"type": "string", "format": "iana-time-zone"}),
        ("count", _) => json!({"type": "integer", "minimum": 1, "maximum": 100}),
        ("from", _) => json!({"type": "string", "format": "date-time"}),
        ("wait_ms", _) => json!({"type": "integer", "minimum": 0, "maximum": 30000}),
        ("epoch", _) => json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
        _ => return None,
    };
    Some((s, false))
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    })
}

/// utoipa writes a `u64` as `int64` and a `u32` as `int32` with `minimum: 0`; the
/// server takes the whole unsigned range, so the document says that range instead.
fn unsigned_bounds(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(Value::as_u64) == Some(0) && map.get("maximum").is_none();
            let max = match map.get("format").and_then(Value::as_str) {
                Some("int64") if unsigned => Some(json!(u64::MAX)),
                Some("int32") if unsigned => Some(json!(u32::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.insert("maximum".into(), max);
            }
            map.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

fn tighten(doc: &mut Value) {
    let schemas = doc["components"]["schemas"].as_object_mut().expect("components.schemas");
    schemas.insert("TaskCreate".into(), task_create());
    schemas.insert("TaskUpdate".into(), task_update());
    schemas.insert(
        "ErrorEnvelope".into(),
        json!({
            "type": "object", "required": ["success", "message", "timestamp", "error"],
            "properties": {
                "success": {"type": "boolean", "const": false}, "data": {"type": "null"},
                "message": {"type": "string", "description": "what was wrong, naming the field or header"},
                "timestamp": {"type": "string"}, "error": {"type": "string", "description": "a stable code: bad_request, unauthorized, forbidden, not_found, …"},
            },
        }),
    );
    if let Some(r) = schemas.get_mut("Registration") {
        r["properties"]["max_tasks"] = json!({"type": "integer", "minimum": 1, "maximum": MAX_SLOTS});
        r["properties"]["tags"] = worker_tags();
        r["properties"]["killed"]["maxItems"] = json!(10000);
    }
    if let Some(u) = schemas.get_mut("WorkerUpdate") {
        // A null says nothing, so it does not count as a field to update.
        u["minProperties"] = json!(1);
        u["properties"]["max_tasks"] = json!({"type": "integer", "minimum": 1, "maximum": MAX_SLOTS});
        u["properties"]["tags"] = worker_tags();
        u["properties"]["enabled"] = json!({"type": "boolean"});
    }
    if let Some(r) = schemas.get_mut("ReportBody") {
        r["properties"]["worker_id"] =
            json!({"type": "string", "minLength": 1, "maxLength": MAX_WORKER_ID, "pattern": WORKER_ID});
        r["properties"]["status"] = json!({"type": "string", "enum": ["running", "succeeded", "failed", "timed_out"]});
        r["properties"]["http_status"] = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u16::MAX});
    }
    unsigned_bounds(&mut doc["components"]);

    unsigned_bounds(&mut doc["paths"]);
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            tighten_operation(path, method, op);
        }
    }
}

fn tighten_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let mut has_key = false;
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            has_key |= name == "Idempotency-Key";
            if let Some((schema, required)) = parameter_schema(&name, Some(path)) {
                if schema["type"] == "array" {
                    p["style"] = json!("form");
                    p["explode"] = json!(false);
                }
                p["schema"] = schema;
                if required {
                    p["required"] = json!(true);
                }
            }
        }
    }
    let body = op.contains_key("requestBody");
    if body && (path, method) == ("/api/tasks", "post") {
        op["requestBody"]["content"]["application/json"]["schema"] = json!({"$ref": "#/components/schemas/TaskCreate"});
    }
    if body && (path, method) == ("/api/tasks/{task_id}", "put") {
        op["requestBody"]["content"]["application/json"]["schema"] = json!({"$ref": "#/components/schemas/TaskUpdate"});
    }
    if body {
        op["requestBody"]["required"] = json!(true);
    }

    let open = access_of(&method.to_ascii_uppercase(), path) == Some(Access::Open);
    if !open {
        // An API key or a JWT, whichever the node is configured for.
        op.insert("security".into(), json!([{"bearer": []}, {"jwt": []}]));
    }
    let responses = op.entry("responses").or_insert_with(|| json!({})).as_object_mut().expect("responses");
    // The open operations answer in their own shapes (a 503 health report carries data).
    if open {
        return;
    }
    // Every error an operation documents carries the envelope.
    for (code, r) in responses.iter_mut() {
        if code.as_str() >= "400" {
            r["content"] = error_response("")["content"].clone();
        }
    }
    let mut add = |code: &str, what: &str| {
        responses.entry(code.to_string()).or_insert_with(|| error_response(what));
    };
    add("400", "a parameter, header or body the server refuses; the message names it");
    add("401", "no credential, or one that is unknown, expired, not yet valid or wrongly signed");
    add("403", "the caller's role may not do this");
    if path.contains('{') {
        add("404", "no such resource");
    }
    if body {
        add("413", "the body is larger than 1 MiB");
    }
    if has_key {
        add("422", "this Idempotency-Key was used for another request");
    }
    add("503", "no leader (a linearizable read or a write could not be served); retry");
    add("500", "the node failed to read its own storage; the message says how");
    if method != "get" {
        add("504", "the outcome is unknown (the leader changed mid-flight); retry with the same Idempotency-Key");
    }
}
