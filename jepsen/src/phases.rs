//! Judging each fault from the nemesis log and the history.
//!
//! - **Coverage**: a fault part that did not take effect (a partition that dropped no
//!   packet, a kill of a dead process, a clock never seen skewed) fails the run: a chaos
//!   run that injected nothing must not pass.
//! - **Recovery**: after every heal a write must succeed within the deadline.
//! - **Liveness**: during a liveness fault (`bridge-hold`), which leaves a connected
//!   majority up, a write must succeed.
//! - **Availability**: successful operations per second while each fault was in place
//!   and in the healed time after it, with whether a quorum stayed up and connected by
//!   design (reported, not judged: a quorum-less fault is unavailable by design).

use serde::Serialize;

use crate::checker::Anomaly;
use crate::history::{Event, Kind, NemesisEvent};
use crate::workload::FINAL_PROCESS;

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub start_s: f64,
    pub heal_s: f64,
    pub quorum: bool,
    /// ok client operations per second while the fault was in place.
    pub ok_per_s_faulty: f64,
    /// ok client operations per second from the heal to the next fault.
    pub ok_per_s_healed: f64,
    pub recovery_ms: Option<u64>,
    pub liveness_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Availability {
    pub phases: Vec<Phase>,
    /// Over all faults that kept a quorum by design / all healed time.
    pub ok_per_s_faulty_with_quorum: f64,
    pub ok_per_s_faulty_without_quorum: f64,
    pub ok_per_s_healed: f64,
}

/// ok completions of client operations (not the final reads), by time.
fn ok_times(history: &[Event]) -> Vec<u64> {
    let mut t: Vec<u64> =
        history.iter().filter(|e| e.kind == Kind::Ok && e.process < FINAL_PROCESS).map(|e| e.time_ns).collect();
    t.sort_unstable();
    t
}

fn count_in(times: &[u64], from: u64, to: u64) -> u64 {
    (times.partition_point(|t| *t < to) - times.partition_point(|t| *t < from)) as u64
}

fn rate(n: u64, from: u64, to: u64) -> f64 {
    if to > from {
        n as f64 / ((to - from) as f64 / 1e9)
    } else {
        0.0
    }
}

/// The anomalies the nemesis log shows, and the availability table. `run_end_ns` closes
/// the healed window after the last fault.
pub fn judge(history: &[Event], faults: &[NemesisEvent], run_end_ns: u64) -> (Vec<Anomaly>, Availability) {
    let mut anomalies = Vec::new();
    for f in faults {
        let at = format!("{} at {:.1} s ({})", f.name, f.start_ns as f64 / 1e9, f.detail);
        for m in &f.missed {
            anomalies.push(Anomaly::new("coverage", format!("{at}: did not take effect: {m}"), Vec::new()));
        }
        if f.liveness && f.liveness_ms.is_none() {
            anomalies.push(Anomaly::new(
                "liveness",
                format!(
                    "{at}: no write succeeded while the fault was in place ({:.0} s), although a connected majority was up",
                    (f.heal_ns - f.start_ns) as f64 / 1e9
                ),
                Vec::new(),
            ));
        }
        if f.recovery_ms.is_none() {
            anomalies.push(Anomaly::new(
                "recovery",
                format!("{at}: no write succeeded within the recovery deadline after the heal"),
                Vec::new(),
            ));
        }
    }
    let times = ok_times(history);
    let mut phases = Vec::new();
    let (mut q_n, mut q_t, mut nq_n, mut nq_t, mut h_n, mut h_t) = (0, 0, 0, 0, 0, 0);
    for (i, f) in faults.iter().enumerate() {
        let next = faults.get(i + 1).map_or(run_end_ns, |n| n.start_ns).max(f.end_ns);
        let faulty = count_in(&times, f.start_ns, f.heal_ns);
        let healed = count_in(&times, f.end_ns, next);
        if f.quorum {
            (q_n, q_t) = (q_n + faulty, q_t + (f.heal_ns - f.start_ns));
        } else {
            (nq_n, nq_t) = (nq_n + faulty, nq_t + (f.heal_ns - f.start_ns));
        }
        (h_n, h_t) = (h_n + healed, h_t + (next - f.end_ns));
        phases.push(Phase {
            name: f.name.clone(),
            start_s: f.start_ns as f64 / 1e9,
            heal_s: f.heal_ns as f64 / 1e9,
            quorum: f.quorum,
            ok_per_s_faulty: rate(faulty, f.start_ns, f.heal_ns),
            ok_per_s_healed: rate(healed, f.end_ns, next),
            recovery_ms: f.recovery_ms,
            liveness_ms: f.liveness_ms,
        });
    }
    let per_s = |n: u64, t: u64| rate(n, 0, t);
    let availability = Availability {
        phases,
        ok_per_s_faulty_with_quorum: per_s(q_n, q_t),
        ok_per_s_faulty_without_quorum: per_s(nq_n, nq_t),
        ok_per_s_healed: per_s(h_n, h_t),
    };
    (anomalies, availability)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(missed: &[&str], recovery_ms: Option<u64>) -> NemesisEvent {
        NemesisEvent {
            name: "partition".into(),
            start_ns: 1_000_000_000,
            heal_ns: 3_000_000_000,
            end_ns: 3_100_000_000,
            detail: "split".into(),
            missed: missed.iter().map(|m| m.to_string()).collect(),
            quorum: true,
            recovery_ms,
            ..NemesisEvent::default()
        }
    }

    #[test]
    fn a_fault_that_did_not_take_effect_or_recover_fails_the_run() {
        let (a, _) = judge(&[], &[fault(&["rcj-partition rules dropped nothing"], Some(5))], 10_000_000_000);
        assert_eq!(a.len(), 1);
        assert!(a[0].message.contains("did not take effect"), "{}", a[0]);
        let (a, _) = judge(&[], &[fault(&[], None)], 10_000_000_000);
        assert!(a.iter().any(|a| a.checker == "recovery"), "{a:?}");
        let (a, _) = judge(&[], &[fault(&[], Some(5))], 10_000_000_000);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn availability_counts_ok_operations_inside_and_after_each_fault() {
        let ok = |t_ms: u64| Event {
            process: 1,
            kind: Kind::Ok,
            f: "read".into(),
            value: serde_json::Value::Null,
            node: "n1".into(),
            time_ns: t_ms * 1_000_000,
            error: None,
        };
        // 2 ok inside the 2 s fault, 7 in the 6.9 s after it, one final read ignored.
        let mut h: Vec<Event> = [1500, 2500, 4000, 5000, 6000, 7000, 8000, 9000, 9500].map(ok).into();
        h.push(Event { process: FINAL_PROCESS, ..ok(9600) });
        let (_, av) = judge(&h, &[fault(&[], Some(5))], 10_000_000_000);
        assert_eq!(av.phases.len(), 1);
        assert!((av.phases[0].ok_per_s_faulty - 1.0).abs() < 1e-9, "{:?}", av.phases[0]);
        assert!((av.phases[0].ok_per_s_healed - 7.0 / 6.9).abs() < 1e-9, "{:?}", av.phases[0]);
    }
}
