//! The cronie semantics, case by case, and against an independent brute-force reference.

use rand::{Rng, SeedableRng};

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let tz = parse_timezone(tz).unwrap();
    s.fire_times(tz, utc(from), utc(from), n)
        .iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect()
}

#[test]
fn accepts_the_documented_forms_and_rejects_garbage_naming_the_problem() {
    for ok in [
        "0 */6 * * *",
        "0 2 * * *",
        "*/5 * * * * *",
        "@daily",
        "@every 90s",
        "0 0 1 * MON",
        "0 12 * * 0-7",
        "*/60 * * * *",
        "0 */24 * * *",
        "0 9 * jan-mar mon-fri",
        "5/15 * * * *",
    ] {
        Schedule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        ("", "expected 5 fields"),
        ("* * *", "expected 5 fields"),
        ("61 * * * *", "minute"),
        ("0 25 * * *", "hour"),
        ("0 0 0 * *", "day-of-month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * * 8", "day-of-week"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("0 0 * * FUNDAY", "day-of-week"),
        ("@sometimes", "unknown macro"),
        ("@every", "duration"),
        ("@every 5x", "duration"),
        ("0 0 30 2 *", "can never fire"),
        ("0 0 31 4,6,9,11 *", "can never fire"),
        ("? 0 * * *", "only in the day"),
        ("0 0 * ? *", "only in the day"),
        ("@every 400d", "at most 366d"),
    ] {
        let err = Schedule::parse(bad).expect_err(bad);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

/// Every case of the cronie semantics the module doc promises (2027-01-01 is a Friday).
#[test]
fn cronie_table() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // Sunday as 0 and as 7.
        ("0 0 * * 0", "UTC", "2027-01-01T00:00:00Z", &["2027-01-03T00:00:00Z", "2027-01-10T00:00:00Z"]),
        ("0 0 * * 7", "UTC", "2027-01-01T00:00:00Z", &["2027-01-03T00:00:00Z", "2027-01-10T00:00:00Z"]),
        // Both day fields restricted: the 13th, or any Friday.
        (
            "0 0 13 * 5",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2027-01-08T00:00:00Z", "2027-01-13T00:00:00Z", "2027-01-15T00:00:00Z"],
        ),
        // A day field starting with `*` is unrestricted: both must match. `*/1` in the
        // weekday field makes this the 15th only (not daily).
        ("0 0 15 * */1", "UTC", "2027-01-01T00:00:00Z", &["2027-01-15T00:00:00Z", "2027-02-15T00:00:00Z"]),
        // `*/15` in the day-of-month field: a Monday that is the 1st, 16th or 31st
        // (2027-02-01, 2027-03-01 and 2027-05-31 are Mondays; the 15th of no month in
        // between is, nor a 16th).
        (
            "0 0 */15 * 1",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z", "2027-05-31T00:00:00Z"],
        ),
        ("0 0 13 * *", "UTC", "2027-01-01T00:00:00Z", &["2027-01-13T00:00:00Z", "2027-02-13T00:00:00Z"]),
        // Steps beyond the range take the first value.
        ("*/60 * * * *", "UTC", "2027-01-01T00:00:30Z", &["2027-01-01T01:00:00Z", "2027-01-01T02:00:00Z"]),
        ("0 */24 * * *", "UTC", "2027-01-01T00:00:30Z", &["2027-01-02T00:00:00Z", "2027-01-03T00:00:00Z"]),
        // `a/n`: from a to the end.
        (
            "50/5 * * * *",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2027-01-01T00:50:00Z", "2027-01-01T00:55:00Z", "2027-01-01T01:50:00Z"],
        ),
        (
            "*/20 9-10 * * *",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2027-01-01T09:00:00Z", "2027-01-01T09:20:00Z", "2027-01-01T09:40:00Z", "2027-01-01T10:00:00Z"],
        ),
        ("0 9 * FEB mon", "UTC", "2027-01-01T00:00:00Z", &["2027-02-01T09:00:00Z", "2027-02-08T09:00:00Z"]),
        (
            "0 0 31 * *",
            "UTC",
            "2027-01-01T00:00:00Z",
            &["2027-01-31T00:00:00Z", "2027-03-31T00:00:00Z", "2027-05-31T00:00:00Z"],
        ),
        // No year limit: 2100 is not a leap year.
        ("0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z", &["2104-02-29T00:00:00Z", "2108-02-29T00:00:00Z"]),
        ("*/30 * * * * *", "UTC", "2027-01-01T00:00:00Z", &["2027-01-01T00:00:30Z", "2027-01-01T00:01:00Z"]),
        ("@monthly", "UTC", "2027-01-15T00:00:00Z", &["2027-02-01T00:00:00Z"]),
        ("0 9 * * *", "Asia/Tokyo", "2027-01-01T00:00:00Z", &["2027-01-02T00:00:00Z"]),
        // Spring forward in New York (2027-03-14, 02:00 EST -> 03:00 EDT).
        // A fixed-time job in the gap fires once as the gap ends (03:00 EDT = 07:00Z).
        ("30 2 * * *", "America/New_York", "2027-03-13T12:00:00Z", &["2027-03-14T07:00:00Z", "2027-03-15T06:30:00Z"]),
        ("0,30 2 * * *", "America/New_York", "2027-03-14T06:00:00Z", &["2027-03-14T07:00:00Z", "2027-03-15T06:00:00Z"]),
        // A wildcard job gets no run for the missing times: `15 * * * *` has no extra run,
        // `*/20 2 * * *` none at all that day.
        (
            "15 * * * *",
            "America/New_York",
            "2027-03-14T06:00:00Z",
            &["2027-03-14T06:15:00Z", "2027-03-14T07:15:00Z", "2027-03-14T08:15:00Z"],
        ),
        ("*/20 2 * * *", "America/New_York", "2027-03-14T06:00:00Z", &["2027-03-15T06:00:00Z", "2027-03-15T06:20:00Z"]),
        // Fall back (2027-11-07, 02:00 EDT -> 01:00 EST): a fixed-time job fires at the
        // first occurrence only — `30 1-2 * * *` is fixed-time — and a wildcard job at
        // every matching instant: `*/30 1 * * *` fires in both 1 a.m. hours.
        ("30 1 * * *", "America/New_York", "2027-11-07T04:00:00Z", &["2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"]),
        (
            "30 1-2 * * *",
            "America/New_York",
            "2027-11-07T04:00:00Z",
            &["2027-11-07T05:30:00Z", "2027-11-07T07:30:00Z", "2027-11-08T06:30:00Z"],
        ),
        (
            "*/30 1 * * *",
            "America/New_York",
            "2027-11-07T04:45:00Z",
            &["2027-11-07T05:00:00Z", "2027-11-07T05:30:00Z", "2027-11-07T06:00:00Z", "2027-11-07T06:30:00Z"],
        ),
        (
            "30 * * * *",
            "America/New_York",
            "2027-11-07T04:45:00Z",
            &["2027-11-07T05:30:00Z", "2027-11-07T06:30:00Z", "2027-11-07T07:30:00Z"],
        ),
        // Starting inside the second 1 a.m.: a fixed-time job does not fire again.
        ("30 1 * * *", "America/New_York", "2027-11-07T06:10:00Z", &["2027-11-08T06:30:00Z"]),
        // Lord Howe moves by 30 minutes (2027-10-03 02:00 -> 02:30 local).
        (
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2027-10-02T12:00:00Z",
            &["2027-10-02T15:30:00Z", "2027-10-03T15:15:00Z"],
        ),
        ("@every 90m", "UTC", "2027-01-01T00:00:00Z", &["2027-01-01T01:30:00Z", "2027-01-01T03:00:00Z"]),
        // `?` is `*` in a day field: Mondays only (2027-01-04 is one), not every day.
        ("0 0 ? * 1", "UTC", "2027-01-01T00:00:00Z", &["2027-01-04T00:00:00Z", "2027-01-11T00:00:00Z"]),
        ("0 0 9 ? * MON-FRI", "UTC", "2027-01-01T10:00:00Z", &["2027-01-04T09:00:00Z", "2027-01-05T09:00:00Z"]),
        // A weekday range may end on Sunday as 0.
        (
            "0 0 * * FRI-SUN",
            "UTC",
            "2027-01-01T00:00:01Z",
            &["2027-01-02T00:00:00Z", "2027-01-03T00:00:00Z", "2027-01-08T00:00:00Z"],
        ),
        // Regression: a fixed-time job whose cursor lies in the repeated hour skips the rest
        // of that hour in one step (it used to give up after a few thousand matches and
        // never fire again).
        ("* 0-59 1 * * *", "America/New_York", "2027-11-07T06:00:05Z", &["2027-11-08T06:00:00Z"]),
        // Year boundaries.
        (
            "59 23 31 12 *",
            "Pacific/Auckland",
            "2027-06-01T00:00:00Z",
            &["2027-12-31T10:59:00Z", "2028-12-31T10:59:00Z"],
        ),
    ];
    for (expr, tz, from, want) in cases {
        assert_eq!(
            fires(expr, tz, from, want.len()),
            want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{expr} in {tz} from {from}"
        );
    }
}

/// One generated field: its text and the set of values it allows.
struct Field {
    text: String,
    set: Vec<u32>,
}

fn gen_field(rng: &mut rand::rngs::StdRng, lo: u32, hi: u32) -> Field {
    let all: Vec<u32> = (lo..=hi).collect();
    // Day fields may say `?` (`*` for the day rule); weekdays and months may use names.
    let names: &[&str] = match (lo, hi) {
        (0, 7) => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        (1, 12) => &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        _ => &[],
    };
    let day_field = matches!((lo, hi), (1, 31) | (0, 7));
    if day_field && rng.random_range(0..8) == 0 {
        return Field { text: "?".into(), set: all };
    }
    if !names.is_empty() && rng.random_range(0..4) == 0 {
        let (a, b) = (rng.random_range(0..names.len()), rng.random_range(0..names.len()));
        let (a, b) = (a.min(b), a.max(b));
        let base = if lo == 1 { 1 } else { 0 };
        return Field {
            text: format!("{}-{}", names[a], names[b]),
            set: (a as u32 + base..=b as u32 + base).collect(),
        };
    }
    match rng.random_range(0..6) {
        0 => Field { text: "*".into(), set: all },
        1 => {
            let step = rng.random_range(1..=(hi - lo + 3));
            Field { text: format!("*/{step}"), set: all.iter().copied().step_by(step as usize).collect() }
        }
        2 => {
            let v = rng.random_range(lo..=hi);
            Field { text: v.to_string(), set: vec![v] }
        }
        3 => {
            let (a, b) = (rng.random_range(lo..=hi), rng.random_range(lo..=hi));
            let (a, b) = (a.min(b), a.max(b));
            Field { text: format!("{a}-{b}"), set: (a..=b).collect() }
        }
        4 => {
            let (a, b) = (rng.random_range(lo..=hi), rng.random_range(lo..=hi));
            let mut set = vec![a, b];
            set.sort();
            set.dedup();
            Field { text: format!("{a},{b}"), set }
        }
        _ => {
            let a = rng.random_range(lo..=hi);
            let step = rng.random_range(1..=4);
            Field { text: format!("{a}/{step}"), set: (a..=hi).step_by(step).collect() }
        }
    }
}

/// Brute force, one minute at a time over real instants, written from the rules alone and
/// from wall-clock readings only (instant → wall time, never wall time → instant): a
/// minute fires if its wall time matches — for a fixed-time job not when an instant up to
/// three hours earlier read the same wall time (a repeated hour) — or, for a fixed-time
/// job, if the wall clock jumped over a matching minute to get there (a gap).
fn reference(
    fields: &[Field; 5],
    text: &[String; 5],
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let [min, hour, dom, month, dow] = fields;
    let dow_set: Vec<u32> = dow.set.iter().map(|d| d % 7).collect();
    let unrestricted = |t: &str| t.starts_with('*') || t.starts_with('?');
    let (dom_star, dow_star) = (unrestricted(&text[2]), unrestricted(&text[4]));
    let fixed = !text[0].starts_with('*') && !text[1].starts_with('*');
    let matches = |l: NaiveDateTime| {
        let d = dom.set.contains(&l.day());
        let w = dow_set.contains(&l.weekday().num_days_from_sunday());
        let day = if dom_star || dow_star { d && w } else { d || w };
        min.set.contains(&l.minute()) && hour.set.contains(&l.hour()) && month.set.contains(&l.month()) && day
    };
    let wall = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
    let mut out = Vec::new();
    let mut t = from.with_second(0).unwrap().with_nanosecond(0).unwrap() + Duration::minutes(1);
    // The latest wall time read so far (from three hours before): a wall time at or before
    // it was read before, so this minute repeats it.
    let mut latest = (1..=180).map(|k| wall(t - Duration::minutes(k))).max().unwrap();
    while t <= to {
        let local = wall(t);
        let repeated = local <= latest;
        latest = latest.max(local);
        let mut fire = matches(local) && (!fixed || !repeated);
        let advanced = local - wall(t - Duration::minutes(1));
        if !fire && fixed && advanced > Duration::minutes(1) {
            let skipped = advanced.num_minutes() - 1;
            fire = (1..=skipped).any(|k| matches(local - Duration::minutes(k)));
        }
        if fire {
            out.push(t);
        }
        t += Duration::minutes(1);
    }
    out
}

/// Property: for random expressions in zones with DST (including Lord Howe's 30-minute
/// shift), starting near a transition, the evaluator's fire times equal the reference's.
#[test]
fn agrees_with_a_brute_force_reference_around_transitions() {
    let zones = [
        ("America/New_York", ["2027-03-14T07:00:00Z", "2027-11-07T06:00:00Z"]),
        ("Europe/Berlin", ["2027-03-28T01:00:00Z", "2027-10-31T01:00:00Z"]),
        ("Australia/Lord_Howe", ["2027-04-03T15:00:00Z", "2027-10-02T15:30:00Z"]),
        ("America/Santiago", ["2027-04-04T03:00:00Z", "2027-09-05T04:00:00Z"]),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261129);
    let mut compared = 0;
    for case in 0..200 {
        // Months: usually every month (the transitions must be in range); sometimes not.
        let month = match rng.random_range(0..4) {
            0 => gen_field(&mut rng, 1, 12),
            _ => Field { text: "*".into(), set: (1..=12).collect() },
        };
        let fields = [
            gen_field(&mut rng, 0, 59),
            gen_field(&mut rng, 0, 23),
            gen_field(&mut rng, 1, 31),
            month,
            gen_field(&mut rng, 0, 7),
        ];
        let text: [String; 5] = std::array::from_fn(|i| fields[i].text.clone());
        let expr = text.join(" ");
        let schedule = match Schedule::parse(&expr) {
            Ok(s) => s,
            // Only a day-of-month/month/weekday combination that never exists may be refused.
            Err(e) if e.contains("can never fire") => continue,
            Err(e) => panic!("{expr:?} refused: {e}"),
        };
        let (zone, transitions) = zones[case % zones.len()];
        let tz = parse_timezone(zone).unwrap();
        let at = utc(transitions[rng.random_range(0..2)]);
        // From anywhere within a day and a half either side of it: before, inside a
        // repeated hour, just after a gap.
        let from = at + Duration::minutes(rng.random_range(-36 * 60..36 * 60));
        let to = from + Duration::days(3);
        let want = reference(&fields, &text, tz, from, to);
        let mut got = Vec::new();
        let mut t = from;
        while let Some(next) = schedule.next_after(tz, from, t).filter(|n| *n <= to) {
            got.push(next);
            t = next;
        }
        assert_eq!(got, want, "{expr:?} in {zone} from {from}");
        compared += 1;
    }
    assert!(compared >= 150, "only {compared} expressions compared");
}
