//! The deterministic heart: applying one committed request to the state machine.
//!
//! Invariant: the result is a function of (state, request) alone. No clock, no randomness,
//! no network, no time-zone data, no hash-map iteration; every timestamp and id comes from
//! the request or the state. Clippy enforces the clock/randomness/hash-map part below.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io;

use chrono::{DateTime, Utc};

use super::command::{Command, Outcome, Rejection, Request, Response};
use crate::model::{Task, TaskField};
use crate::storage::{IdempotencyRecord, Tx};

/// How long a stored idempotent answer is kept, in command time.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Expired idempotency records removed per applied request; bounded so one entry's
/// batch stays small, and enough to keep up with any write rate the cluster accepts.
const IDEMPOTENCY_SWEEP: usize = 16;

/// Applies one request, writing its effects into `tx`.
pub fn apply_request(tx: &mut Tx<'_>, req: &Request) -> io::Result<Response> {
    let now = match tx.store.clock()? {
        Some(last) if last > req.issued_at => last,
        _ => req.issued_at,
    };
    tx.put_meta("clock", &now)?;
    let now_ms = now.timestamp_millis();
    // Sweep before anything else writes: a batch applies in order, so a record this request
    // stores below must come after any delete of the expired record under the same key.
    sweep_idempotency(tx, now_ms)?;

    if let Some(idem) = &req.idempotency {
        if let Some(record) = tx.store.idempotency(&idem.scope, &idem.key)? {
            if record.expires_at_ms > now_ms {
                return Ok(if record.fingerprint == idem.fingerprint {
                    record.response
                } else {
                    Response::rejected(Rejection::IdempotencyKeyReused)
                });
            }
        }
    }

    let response = apply_command(tx, &req.command, now)?;

    if let Some(idem) = &req.idempotency {
        let record = IdempotencyRecord {
            fingerprint: idem.fingerprint.clone(),
            expires_at_ms: now_ms.saturating_add(IDEMPOTENCY_TTL_MS),
            response: response.clone(),
        };
        tx.put_idempotency(&idem.scope, &idem.key, &record)?;
    }
    Ok(response)
}

fn sweep_idempotency(tx: &mut Tx<'_>, now_ms: i64) -> io::Result<()> {
    for e in tx.store.expired_idempotency(now_ms, IDEMPOTENCY_SWEEP)? {
        // The key may have been reused after it expired; then the record is newer than this
        // index entry and stays.
        let stale =
            tx.store.idempotency_by_record_key(&e.record_key)?.is_some_and(|r| r.expires_at_ms == e.expires_at_ms);
        tx.delete_idempotency(&e.expiry_key, stale.then_some(e.record_key.as_slice()));
    }
    Ok(())
}

fn apply_command(tx: &mut Tx<'_>, command: &Command, now: DateTime<Utc>) -> io::Result<Response> {
    match command {
        Command::InitCluster { cluster_id } => {
            if tx.store.cluster_id()?.is_none() {
                tx.put_meta("cluster_id", cluster_id)?;
            }
            Ok(Response::ok(Outcome::Done))
        }
        Command::CreateTask { spec } => {
            if let Err(e) = spec.validate() {
                return Ok(Response::rejected(Rejection::Invalid(e)));
            }
            if tx.store.task_id_by_name(&spec.name)?.is_some() {
                return Ok(Response::rejected(Rejection::NameTaken(spec.name.clone())));
            }
            let id: u64 = tx.store.meta("next_task_id")?.unwrap_or(1);
            tx.put_meta("next_task_id", &(id + 1))?;
            let task = Task {
                id,
                spec: (**spec).clone(),
                version: 1,
                created_at: now,
                updated_at: now,
                next_run_at: None,
                last_run: None,
                fire_count: 0,
                skipped_ticks: 0,
            };
            tx.put_task(&task)?;
            tx.put_task_name(&task.spec.name, id);
            Ok(Response::ok(Outcome::Task(Box::new(task))))
        }
        Command::UpdateTask { id, fields, expected_version } => {
            let Some(mut task) = tx.store.task(*id)? else {
                return Ok(Response::rejected(Rejection::TaskNotFound(*id)));
            };
            if let Some(expected) = expected_version {
                if *expected != task.version {
                    return Ok(Response::rejected(Rejection::VersionMismatch {
                        expected: *expected,
                        actual: task.version,
                    }));
                }
            }
            let old_name = task.spec.name.clone();
            for f in fields.iter().cloned() {
                TaskField::apply_to(f, &mut task.spec);
            }
            if let Err(e) = task.spec.validate() {
                return Ok(Response::rejected(Rejection::Invalid(e)));
            }
            if task.spec.name != old_name {
                if tx.store.task_id_by_name(&task.spec.name)?.is_some() {
                    return Ok(Response::rejected(Rejection::NameTaken(task.spec.name.clone())));
                }
                tx.delete_task_name(&old_name);
                tx.put_task_name(&task.spec.name, task.id);
            }
            task.version += 1;
            task.updated_at = now;
            tx.put_task(&task)?;
            Ok(Response::ok(Outcome::Task(Box::new(task))))
        }
        Command::DeleteTask { id, expected_version } => {
            let Some(task) = tx.store.task(*id)? else {
                return Ok(Response::rejected(Rejection::TaskNotFound(*id)));
            };
            if let Some(expected) = expected_version {
                if *expected != task.version {
                    return Ok(Response::rejected(Rejection::VersionMismatch {
                        expected: *expected,
                        actual: task.version,
                    }));
                }
            }
            tx.delete_task(*id);
            tx.delete_task_name(&task.spec.name);
            Ok(Response::ok(Outcome::TaskDeleted { id: *id }))
        }
    }
}
