//! The idempotency sweep after a long run of writes: N records in the expiry index, all
//! but the last 1,000 already swept (so their deletions lie in RocksDB as tombstones until
//! compaction), then one sweep's read of up to 16 expired entries — from the start of the
//! index, as the sweep read before, and from its cursor (`idempotency_swept_ms`), as it
//! reads now. Every applied entry makes one such read; after 10 minutes of sustained
//! creates (the node-made keys' lifetime) N is hundreds of thousands.
//!
//! `cargo bench --bench sweep [-- 10000 100000 300000]` prints a table of medians.

use std::time::Instant;

use raftcron::raft::{Outcome, Response};
use raftcron::storage::{open_db, IdempotencyRecord, Store, Tx};

mod support;

use support::percentile;

fn row(n: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::new(open_db(dir.path()).expect("open"));
    let record = |ms: i64| IdempotencyRecord {
        fingerprint: "f".into(),
        expires_at_ms: ms,
        response: Response::ok(Outcome::Done),
    };
    for chunk in (1..=n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = Tx::new(&store);
        for ms in chunk {
            tx.put_idempotency("s", &format!("k{ms}"), &record(*ms)).expect("put");
        }
        tx.commit().expect("commit");
    }
    let swept = n - 1000;
    for chunk in store.expired_idempotency(0, swept, usize::MAX).expect("read").chunks(1000) {
        let mut tx = Tx::new(&store);
        for e in chunk {
            tx.delete_idempotency(&e.expiry_key, Some(&e.record_key));
        }
        tx.commit().expect("commit");
    }
    let time = |from: i64| {
        let mut ms: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let got = store.expired_idempotency(from, n, 16).expect("read");
                assert_eq!(got.len(), 16);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        percentile(&ms, 0.5)
    };
    let (start, cursor) = (time(0), time(swept));
    println!("| {n} | {swept} | {start:.3} | {cursor:.3} | {:.0}× |", start / cursor);
}

fn main() {
    let sizes: Vec<i64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 300_000] } else { sizes };
    println!("| records | swept (tombstones) | read from the start, ms | from the cursor, ms | ratio |");
    println!("|---|---|---|---|---|");
    for n in sizes {
        row(n);
    }
}
