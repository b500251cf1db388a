//! Key encodings of the run indexes. All big-endian, so RocksDB's byte order is the order
//! the readers want.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use chrono::{DateTime, Utc};

use super::u64_key;
use crate::model::Run;

/// The placement queue: `[class length: u16][class][priority rank][run id]`, where the
/// class is the run's required tags (sorted) joined by NUL. Runs of one class are
/// contiguous, in placement order (higher priority, then older); the leader skips a
/// whole class no worker can take with one seek.
pub fn queue_key(run: &Run) -> Vec<u8> {
    let mut k = class_prefix(&run.tags);
    k.push(run.priority.rank());
    k.extend_from_slice(&u64_key(run.id));
    k
}

/// The key prefix shared by every queued run of a class.
pub fn class_prefix(tags: &[String]) -> Vec<u8> {
    let class = tags.join("\0");
    // Tags are at most 64 of 64 bytes each (validated), far below u16::MAX.
    let len = u16::try_from(class.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + class.len() + 9);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(class.as_bytes());
    k
}

/// Splits a queue key into (class tags, priority rank, run id).
pub fn parse_queue_key(k: &[u8]) -> Option<(Vec<String>, u8, u64)> {
    let len = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    let class = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    let rank = *k.get(2 + len)?;
    let id = u64::from_be_bytes(k.get(3 + len..11 + len)?.try_into().ok()?);
    let tags = if class.is_empty() { Vec::new() } else { class.split('\0').map(String::from).collect() };
    Some((tags, rank, id))
}

/// Pending runs in a retry's backoff: `[not_before ms][run id]`.
pub fn delayed_key(not_before: DateTime<Utc>, run_id: u64) -> [u8; 16] {
    time_key(not_before, run_id)
}

/// Pending runs that fail if still unplaced: `[deadline ms][run id]`.
pub fn deadline_key(deadline: DateTime<Utc>, run_id: u64) -> [u8; 16] {
    time_key(deadline, run_id)
}

fn time_key(at: DateTime<Utc>, run_id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    // Instants before 1970 sort first; none occur in practice.
    k[..8].copy_from_slice(&u64::try_from(at.timestamp_millis()).unwrap_or(0).to_be_bytes());
    k[8..].copy_from_slice(&u64_key(run_id));
    k
}

/// Splits a delayed or deadline key into (milliseconds since the epoch, run id).
pub fn parse_time_key(k: &[u8]) -> Option<(i64, u64)> {
    let ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((i64::try_from(ms).ok()?, id))
}

pub fn assignment_prefix(worker: &str) -> Vec<u8> {
    let mut k = worker.as_bytes().to_vec();
    k.push(0);
    k
}

pub fn assignment_key(worker: &str, run_id: u64) -> Vec<u8> {
    let mut k = assignment_prefix(worker);
    k.extend_from_slice(&u64_key(run_id));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_group_by_class_then_order_by_priority_and_age() {
        let mut run = Run::test_pending(7, crate::model::Priority::High, &["gpu", "linux"]);
        let k = queue_key(&run);
        assert_eq!(parse_queue_key(&k), Some((vec!["gpu".into(), "linux".into()], 1, 7)));
        run.tags.clear();
        assert_eq!(parse_queue_key(&queue_key(&run)), Some((vec![], 1, 7)));
        // A class's keys all sort before the next class: its prefix plus 0xff is past it.
        let mut next = class_prefix(&["gpu".to_string()]);
        next.push(0xff);
        let gpu_low = queue_key(&Run::test_pending(1, crate::model::Priority::Low, &["gpu"]));
        assert!(gpu_low < next);
    }
}
