//! Schedule evaluation cost: one `next_after` call, far from a DST transition and across
//! one, for expressions from every second to once a year. Prints a table of the median
//! nanoseconds per call over several rounds (`cargo bench --bench cron`).

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use raftcron::scheduler::cron::{parse_timezone, Schedule};

mod support;

use support::percentile;

const ROUNDS: usize = 7;
const CALLS: usize = 2000;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Median ns per call of `CALLS` consecutive `next_after` calls from `from`.
fn measure(expr: &str, zone: &str, from: DateTime<Utc>) -> (f64, DateTime<Utc>) {
    let schedule = Schedule::parse(expr).unwrap();
    let tz = parse_timezone(zone).unwrap();
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut last = from;
    for _ in 0..ROUNDS {
        let mut at = from;
        let started = Instant::now();
        for _ in 0..CALLS {
            at = schedule.next_after(tz, from, at).expect("fires");
        }
        samples.push(started.elapsed().as_nanos() as f64 / CALLS as f64);
        last = at;
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), last)
}

fn main() {
    // New York: 2027-03-14 07:00Z spring forward, 2027-11-07 06:00Z fall back.
    let rows = [
        ("* * * * * *", "UTC", "2027-06-01T00:00:00Z", "per second, no DST"),
        ("* * * * * *", "America/New_York", "2027-06-01T00:00:00Z", "per second, far from a transition"),
        ("* * * * * *", "America/New_York", "2027-03-14T06:59:00Z", "per second, across spring forward"),
        ("* * * * * *", "America/New_York", "2027-11-07T05:59:00Z", "per second, across fall back"),
        ("*/5 * * * *", "America/New_York", "2027-11-07T00:00:00Z", "every 5 minutes, across fall back"),
        ("30 2 * * *", "America/New_York", "2027-03-01T00:00:00Z", "daily in the gap, across spring forward"),
        ("0 0 1 1 *", "America/New_York", "2027-01-02T00:00:00Z", "yearly"),
        ("0 0 29 2 1", "Europe/Berlin", "2027-01-02T00:00:00Z", "leap day or Monday (OR rule)"),
    ];
    println!("{:<22} {:<18} {:<42} {:>12} {:>22}", "expression", "zone", "case", "ns/call p50", "reached");
    for (expr, zone, from, case) in rows {
        let (ns, last) = measure(expr, zone, utc(from));
        println!("{expr:<22} {zone:<18} {case:<42} {ns:>12.0} {:>22}", last.to_rfc3339());
    }
    // How far the per-second row across spring forward got: it crossed the transition.
    let (_, last) = measure("* * * * * *", "America/New_York", utc("2027-03-14T06:59:00Z"));
    assert!(last > utc("2027-03-14T07:00:00Z") + Duration::seconds(CALLS as i64 - 120));
}
