//! The deterministic heart: applying one committed request to the state machine.
//!
//! Invariant: the result is a function of (state, request) alone. No clock, no randomness,
//! no network, no time-zone data, no hash-map iteration; every timestamp and id comes from
//! the request or the state. Clippy enforces the clock/randomness/hash-map part below.
//!
//! This module owns the request envelope (command clock, idempotency); one submodule per
//! command family does the rest: [`tasks`] (specs, status, firing, history pruning),
//! [`runs`] (triggers, reports, expiry, retries), [`workers`] (registration, liveness,
//! placement). None of them may read anything but the state and the command.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

mod runs;
mod tasks;
#[cfg(test)]
mod tests;
mod workers;

use std::io;

use chrono::{DateTime, Utc};

use super::command::{Command, Outcome, Rejection, Request, Response};
use crate::storage::{IdempotencyRecord, Tx};

/// How long a client's idempotent answer is kept, in command time.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a node's own retry key is kept: far beyond its write deadline.
pub const INTERNAL_IDEMPOTENCY_TTL_MS: i64 = 10 * 60 * 1000;

/// Expired idempotency records removed per applied request; bounded so one entry's
/// batch stays small, and enough to keep up with any write rate the cluster accepts.
const IDEMPOTENCY_SWEEP: usize = 16;

/// Applies one request, writing its effects into `tx`.
pub fn apply_request(tx: &mut Tx<'_>, req: &Request) -> io::Result<Response> {
    let now = match tx.meta("clock")? {
        Some(last) if last > req.issued_at => last,
        _ => req.issued_at,
    };
    tx.put_meta("clock", &now)?;
    let now_ms = now.timestamp_millis();
    // Sweep before anything else writes: a batch applies in order, so a record this request
    // stores below must come after any delete of the expired record under the same key.
    sweep_idempotency(tx, now_ms)?;

    if let Some(idem) = &req.idempotency {
        if let Some(record) = tx.idempotency(&idem.scope, &idem.key)? {
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
    // A refused command changes nothing at all (not even the command clock) unless a
    // client's key must remember its answer: bad input and fenced reports leave the state
    // — and its digest — as they were.
    if response.result.is_err() && !req.idempotency.as_ref().is_some_and(|k| k.client) {
        tx.discard();
        return Ok(response);
    }

    if let Some(idem) = &req.idempotency {
        let record = IdempotencyRecord {
            fingerprint: idem.fingerprint.clone(),
            expires_at_ms: now_ms.saturating_add(idem.ttl_ms.clamp(0, IDEMPOTENCY_TTL_MS)),
            response: response.clone(),
        };
        tx.put_idempotency(&idem.scope, &idem.key, &record)?;
    }
    Ok(response)
}

/// Removes up to [`IDEMPOTENCY_SWEEP`] expired records. It reads the expiry index from the
/// instant its last removal had reached (`idempotency_swept_ms`), never from the start:
/// every entry removed before lies there as a deletion tombstone until RocksDB compacts
/// it, and a read from the start stepped over all of them — after 10 minutes of sustained
/// creates (the node-made keys' lifetime), hundreds of thousands per applied entry (the
/// scale bench: 8 writes/s at 637k tasks). Nothing can be indexed below the cursor: a new
/// record expires at command time or later, and command time never runs backwards.
fn sweep_idempotency(tx: &mut Tx<'_>, now_ms: i64) -> io::Result<()> {
    let from_ms: i64 = tx.meta("idempotency_swept_ms")?.unwrap_or(0);
    let expired = tx.base().expired_idempotency(from_ms, now_ms, IDEMPOTENCY_SWEEP)?;
    let Some(last) = expired.last().map(|e| e.expires_at_ms) else { return Ok(()) };
    for e in expired {
        // The key may have been reused after it expired; then the record is newer than this
        // index entry and stays.
        let stale = tx.idempotency_by_record_key(&e.record_key)?.is_some_and(|r| r.expires_at_ms == e.expires_at_ms);
        tx.delete_idempotency(&e.expiry_key, stale.then_some(e.record_key.as_slice()));
    }
    if last > from_ms {
        tx.put_meta("idempotency_swept_ms", &last)?;
    }
    Ok(())
}

fn apply_command(tx: &mut Tx<'_>, command: &Command, now: DateTime<Utc>) -> io::Result<Response> {
    match command {
        Command::InitCluster { cluster_id } => {
            if tx.meta::<String>("cluster_id")?.is_none() {
                tx.put_meta("cluster_id", cluster_id)?;
            }
            Ok(Response::ok(Outcome::Done))
        }
        Command::MarkReplicated { nodes } => {
            let mut known: std::collections::BTreeSet<u64> = tx.meta("replicated")?.unwrap_or_default();
            let before = known.len();
            known.extend(nodes.iter().copied());
            if known.len() != before {
                tx.put_meta("replicated", &known)?;
            }
            Ok(Response::ok(Outcome::Done))
        }
        Command::CreateTask { spec } => tasks::create(tx, spec, now),
        Command::UpdateTask { id, fields, expected_version } => tasks::update(tx, *id, fields, *expected_version, now),
        Command::DeleteTask { id, expected_version } => tasks::delete(tx, *id, *expected_version),
        Command::SetTaskStatus { id, status, may_enable } => tasks::set_status(tx, *id, *status, *may_enable, now),
        Command::Fire { fires, keep_runs, misfire_threshold_ms } => {
            let threshold = chrono::Duration::milliseconds(i64::try_from(*misfire_threshold_ms).unwrap_or(i64::MAX));
            tasks::fire(tx, fires, *keep_runs, threshold, now)
        }
        Command::TriggerRun { task_id, keep_runs } => runs::trigger(tx, *task_id, *keep_runs, now),
        Command::CancelRun { run_id } => runs::cancel(tx, *run_id, now),
        Command::RegisterWorker { id, name, max_tasks, tags, max_lost_requeues, killed, requeue_delay_ms } => {
            workers::register(tx, id, name, *max_tasks, tags, *max_lost_requeues, killed, *requeue_delay_ms, now)
        }
        Command::UpdateWorker { id, update } => workers::update(tx, id, update),
        Command::SetWorkerLiveness { id, liveness, max_lost_requeues, reason } => {
            workers::set_liveness(tx, id, *liveness, *max_lost_requeues, reason, now)
        }
        Command::AssignRuns { assignments, released, expired } => {
            workers::assign_runs(tx, assignments, released, expired, now)
        }
        Command::ExpireRun { run_id, attempt, reason, retry_jitter_ms } => {
            runs::expire(tx, *run_id, *attempt, reason, *retry_jitter_ms, now)
        }
        Command::ReportRun { run_id, attempt, worker_id, epoch, report, retry_jitter_ms } => {
            runs::report(tx, *run_id, *attempt, worker_id, *epoch, report, *retry_jitter_ms, now)
        }
    }
}
