//! Set-full: task creates as set elements, read during the run and after it.
//!
//! Every `add` creates a task with a unique name; every `set-read` lists all tasks (page
//! by page in id order; nothing is ever deleted and new tasks get higher ids, so each
//! element sits at a fixed position and a paged read misses nothing that existed when it
//! began). For each element `e`, let `t(e)` be the earliest of: the end of its
//! acknowledged add, the end of a read that returned it. Then:
//!
//! - **lost**: a read that began after `t(e)` lacks `e` (an acknowledged add went missing,
//!   or an element once seen disappeared);
//! - **phantom**: a read returns an element nobody tried to add, whose add failed
//!   definitely (4xx, 503, a refused connection), or whose add began only after the read
//!   had ended;
//! - **duplicate**: a read returns an element twice.
//!
//! An indeterminate add may or may not appear; once it appears, it must stay.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Anomaly, Op};
use crate::history::Kind;

/// How many missing elements one anomaly lists by name.
const SHOWN: usize = 10;

pub fn check(ops: &[Op]) -> Vec<Anomaly> {
    let adds: HashMap<&str, &Op> =
        ops.iter().filter(|o| o.f == "add").filter_map(|o| Some((o.args.as_str()?, o))).collect();
    let mut reads: Vec<(&Op, Vec<&str>)> = ops
        .iter()
        .filter(|o| o.f == "set-read" && o.kind == Kind::Ok)
        .map(|o| (o, o.result.as_array().into_iter().flatten().filter_map(Value::as_str).collect()))
        .collect();
    let mut out = Vec::new();
    if adds.is_empty() && reads.is_empty() {
        return out;
    }
    if !ops.iter().any(|o| o.f == "set-read" && o.kind == Kind::Ok && o.args["final"] != true) {
        out.push(Anomaly::new("set", "no read during the run succeeded".into(), Vec::new()));
    }
    reads.sort_by_key(|(r, _)| r.start);

    // t(e): when the element is known to exist.
    let mut known: HashMap<&str, (u64, &Op)> = HashMap::new();
    for (name, add) in &adds {
        if add.kind == Kind::Ok {
            known.insert(name, (add.end, add));
        }
    }
    for (r, names) in &reads {
        let mut once = HashSet::new();
        for &n in names {
            if !once.insert(n) {
                out.push(Anomaly::new("set", format!("{n} appears twice in one read"), vec![r.describe()]));
            }
            match adds.get(n) {
                None => out.push(Anomaly::new(
                    "set",
                    format!("read returned {n}, which nobody tried to add"),
                    vec![r.describe()],
                )),
                Some(a) if a.kind == Kind::Fail => out.push(Anomaly::new(
                    "set",
                    format!("read returned {n}, whose add failed definitely ({})", a.error.as_deref().unwrap_or("?")),
                    vec![a.describe(), r.describe()],
                )),
                Some(a) if a.start > r.end => out.push(Anomaly::new(
                    "set",
                    format!("read returned {n} before its add began"),
                    vec![r.describe(), a.describe()],
                )),
                Some(_) => {}
            }
            let t = known.entry(n).or_insert((r.end, r));
            if r.end < t.0 {
                *t = (r.end, r);
            }
        }
    }

    // Every read must contain every element known before it began.
    let mut elements: Vec<(&str, u64, &Op)> = known.iter().map(|(n, (t, why))| (*n, *t, *why)).collect();
    elements.sort_by_key(|e| e.1);
    let mut ready = 0;
    for (r, names) in &reads {
        while ready < elements.len() && elements[ready].1 < r.start {
            ready += 1;
        }
        let present: HashSet<&str> = names.iter().copied().collect();
        let missing: Vec<&(&str, u64, &Op)> = elements[..ready].iter().filter(|e| !present.contains(e.0)).collect();
        if missing.is_empty() {
            continue;
        }
        let mut involved = vec![r.describe()];
        involved.extend(missing.iter().take(SHOWN).map(|e| e.2.describe()));
        out.push(Anomaly::new(
            "set",
            format!(
                "lost: a read on {} at {:.3} s lacks {} elements known to exist before it began: {:?}",
                r.node,
                r.start as f64 / 1e9,
                missing.len(),
                missing.iter().take(SHOWN).map(|e| e.0).collect::<Vec<_>>()
            ),
            involved,
        ));
    }
    out
}
