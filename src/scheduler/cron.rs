//! Cron expressions with standard (Vixie/POSIX) semantics, on top of the `cron` crate.
//!
//! The crate numbers days of the week 1–7 from Sunday and requires both day fields to
//! match; standard cron numbers them 0–7 (0 and 7 are Sunday) and, when both day-of-month
//! and day-of-week are restricted, fires when *either* matches. So the day-of-week field
//! is expanded here to explicit day names, and an expression that restricts both day
//! fields becomes two crate schedules whose fire times are merged.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed schedule expression.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// One or two crate schedules (two for the day-of-month OR day-of-week rule),
    /// evaluated on the local wall clock of the task's time zone.
    Cron {
        schedules: Vec<cron::Schedule>,
        /// The hour field names specific hours only (no `*`, range or step): in a
        /// fall-back overlap such an expression fires once, at the first occurrence.
        fixed_hour: bool,
    },
    /// `@every <duration>`, anchored at the task's creation time.
    Every(std::time::Duration),
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Schedule {
    /// Parses a 5-field (`min hour dom month dow`) or 6-field (leading seconds) expression,
    /// a macro (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
    /// `@hourly`) or `@every <duration>` (e.g. `@every 90s`, `@every 5m`).
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        if let Some(rest) = expr.strip_prefix("@every") {
            let d = parse_duration(rest.trim())?;
            if d.as_secs() == 0 {
                return Err("@every needs a duration of at least 1s".into());
            }
            return Ok(Schedule::Every(d));
        }
        let expanded = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("unknown macro {e:?}")),
            e => e,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => return Err(format!("expected 5 fields (min hour dom month dow) or 6 with seconds, got {n}")),
        };
        let [min, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
        let hour = hour.trim();
        let days = expand_dow(dow)?;
        let dow_restricted = !matches!(dow, "*" | "?");
        let dom_restricted = !matches!(dom, "*" | "?");
        let all_days = DAY_NAMES.join(",");
        let dow_names = days.iter().map(|d| DAY_NAMES[*d]).collect::<Vec<_>>().join(",");
        let build = |dom: &str, dow: &str| {
            cron::Schedule::from_str(&format!("{sec} {min} {hour} {dom} {month} {dow}"))
                .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
        };
        let schedules = if dom_restricted && dow_restricted {
            vec![build(dom, &all_days)?, build("*", &dow_names)?]
        } else {
            vec![build(dom, if dow_restricted { &dow_names } else { &all_days })?]
        };
        let fixed_hour = hour.chars().all(|c| c.is_ascii_digit() || c == ',');
        Ok(Schedule::Cron { schedules, fixed_hour })
    }

    /// The first fire time strictly after `after`, in time zone `tz`. `anchor` is the
    /// task's creation time (only `@every` uses it).
    ///
    /// DST: a local time inside a spring-forward gap fires at the first instant after the
    /// gap (several gap times collapse into that one instant); in a fall-back overlap a
    /// fixed-hour expression fires at the first occurrence only, any other at every real
    /// instant that matches.
    pub fn next_after(&self, tz: Tz, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => {
                let step = chrono::Duration::from_std(*d).ok()?;
                if after < anchor {
                    return Some(anchor);
                }
                let elapsed = (after - anchor).num_milliseconds();
                let k = elapsed / step.num_milliseconds() + 1;
                anchor.checked_add_signed(step * i32::try_from(k).ok()?)
            }
            Schedule::Cron { schedules, fixed_hour } => {
                schedules.iter().filter_map(|s| next_cron(s, *fixed_hour, tz, after)).min()
            }
        }
    }

    /// The next `count` fire times strictly after `from`.
    pub fn fire_times(&self, tz: Tz, anchor: DateTime<Utc>, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut at = from;
        while out.len() < count {
            match self.next_after(tz, anchor, at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }
}

/// How far a DST transition can move the wall clock; candidates are searched this far
/// around the local time of `after`.
const MAX_SHIFT_HOURS: i64 = 3;

/// Evaluates one crate schedule on naive local wall-clock times (the crate runs in UTC
/// as a stand-in for "local time without a zone"), then maps each local time to the real
/// instants it denotes in `tz`.
fn next_cron(s: &cron::Schedule, fixed_hour: bool, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local_after = after.with_timezone(&tz).naive_local();
    let shift = chrono::Duration::hours(MAX_SHIFT_HOURS);
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
    let (before, later) = (offset(after - shift), offset(after + shift));
    if before == later {
        // No transition near `after`: wall-clock order is instant order here, so the first
        // local time after `after`'s is the answer (resolved, in case it lies in a far
        // gap or overlap).
        let local = s.after(&Utc.from_utc_datetime(&local_after)).next()?.naive_utc();
        return resolve(tz, local, fixed_hour)
            .into_iter()
            .flatten()
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after);
    }
    // Near a transition a later local time can be an earlier instant: search the window
    // the offset change spans.
    let window = chrono::Duration::seconds(i64::from((before - later).abs())) + chrono::Duration::minutes(1);
    let window_end = local_after + window;
    let start = Utc.from_utc_datetime(&(local_after - window));
    let mut best: Option<DateTime<Utc>> = None;
    for candidate in s.after(&start).take(200_000) {
        let local = candidate.naive_utc();
        if local > window_end && best.is_some() {
            break;
        }
        for t in resolve(tz, local, fixed_hour).into_iter().flatten().map(|t| t.with_timezone(&Utc)) {
            if t > after && best.is_none_or(|b| t < b) {
                best = Some(t);
            }
        }
    }
    best
}

/// The real instants a local wall-clock time denotes under the DST rules above.
fn resolve(tz: Tz, local: NaiveDateTime, fixed_hour: bool) -> [Option<DateTime<Tz>>; 2] {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => [Some(t), None],
        LocalResult::Ambiguous(first, second) => [Some(first), (!fixed_hour).then_some(second)],
        LocalResult::None => [first_instant_after_gap(tz, local), None],
    }
}

/// The instant a spring-forward gap containing `local` ends at.
fn first_instant_after_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Tz>> {
    let mut probe = local.with_second(0)?;
    for _ in 0..(MAX_SHIFT_HOURS * 60) {
        probe += chrono::Duration::minutes(1);
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return Some(t);
        }
    }
    None
}

/// Expands a standard day-of-week field to a sorted set of days, 0 = Sunday.
fn expand_dow(field: &str) -> Result<Vec<usize>, String> {
    let bad = |why: &str| format!("day-of-week {field:?}: {why}");
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<usize>().ok().filter(|s| *s > 0).ok_or_else(|| bad("bad step"))?),
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => {
                    (dow_value(a).ok_or_else(|| bad("bad day"))?, dow_value(b).ok_or_else(|| bad("bad day"))?)
                }
                None => {
                    let v = dow_value(r).ok_or_else(|| bad("bad day"))?;
                    // `5/2` means from 5 to the end, stepping by 2.
                    (v, if part.contains('/') { 7 } else { v })
                }
            },
        };
        if lo > hi {
            return Err(bad("range runs backwards"));
        }
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    Ok((0..7).filter(|d| days[*d]).collect())
}

/// A day number 0–7 or a three-letter name.
fn dow_value(s: &str) -> Option<usize> {
    if let Ok(n) = s.parse::<usize>() {
        return (n <= 7).then_some(n);
    }
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(s))
}

/// `90s`, `5m`, `1h30m`, `2d`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 5m or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Parses an IANA time-zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| format!("{name:?} is not an IANA time zone"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_of_week_follows_standard_numbering() {
        assert_eq!(expand_dow("0").unwrap(), vec![0]);
        assert_eq!(expand_dow("7").unwrap(), vec![0]);
        assert_eq!(expand_dow("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(expand_dow("5-7").unwrap(), vec![0, 5, 6]);
        assert_eq!(expand_dow("MON,wed").unwrap(), vec![1, 3]);
        assert_eq!(expand_dow("*/2").unwrap(), vec![0, 2, 4, 6]);
        assert!(expand_dow("8").is_err());
        assert!(expand_dow("5-1").is_err());
    }

    #[test]
    fn accepts_the_documented_forms_and_rejects_garbage() {
        for ok in ["0 */6 * * *", "0 2 * * *", "*/5 * * * * *", "@daily", "@every 90s", "0 0 1 * MON", "0 12 * * 0-7"] {
            Schedule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "* * *", "61 * * * *", "0 25 * * *", "@sometimes", "@every", "@every 5x", "every day"] {
            assert!(Schedule::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        let tz = parse_timezone(tz).unwrap();
        s.fire_times(tz, utc(from), utc(from), n).iter().map(|t| t.to_rfc3339()).collect()
    }

    /// Standard cron semantics, case by case (2027-01-01 is a Friday).
    #[test]
    fn standard_cron_table() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // Sunday as 0 and as 7.
            ("0 0 * * 0", "UTC", "2027-01-01T00:00:00Z", &["2027-01-03T00:00:00+00:00", "2027-01-10T00:00:00+00:00"]),
            ("0 0 * * 7", "UTC", "2027-01-01T00:00:00Z", &["2027-01-03T00:00:00+00:00", "2027-01-10T00:00:00+00:00"]),
            // Day of month OR day of week: the 13th, or any Friday.
            (
                "0 0 13 * 5",
                "UTC",
                "2027-01-01T00:00:00Z",
                &["2027-01-08T00:00:00+00:00", "2027-01-13T00:00:00+00:00", "2027-01-15T00:00:00+00:00"],
            ),
            // Only one day field restricted: plain AND with the wildcard.
            ("0 0 13 * *", "UTC", "2027-01-01T00:00:00Z", &["2027-01-13T00:00:00+00:00", "2027-02-13T00:00:00+00:00"]),
            // Steps and ranges.
            (
                "*/20 9-10 * * *",
                "UTC",
                "2027-01-01T00:00:00Z",
                &[
                    "2027-01-01T09:00:00+00:00",
                    "2027-01-01T09:20:00+00:00",
                    "2027-01-01T09:40:00+00:00",
                    "2027-01-01T10:00:00+00:00",
                ],
            ),
            // Names.
            (
                "0 9 * FEB mon",
                "UTC",
                "2027-01-01T00:00:00Z",
                &["2027-02-01T09:00:00+00:00", "2027-02-08T09:00:00+00:00"],
            ),
            // Month ends: only months with a 31st.
            (
                "0 0 31 * *",
                "UTC",
                "2027-01-01T00:00:00Z",
                &["2027-01-31T00:00:00+00:00", "2027-03-31T00:00:00+00:00", "2027-05-31T00:00:00+00:00"],
            ),
            // Leap day.
            ("0 0 29 2 *", "UTC", "2027-01-01T00:00:00Z", &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
            // Seconds field and macros.
            (
                "*/30 * * * * *",
                "UTC",
                "2027-01-01T00:00:00Z",
                &["2027-01-01T00:00:30+00:00", "2027-01-01T00:01:00+00:00"],
            ),
            ("@monthly", "UTC", "2027-01-15T00:00:00Z", &["2027-02-01T00:00:00+00:00"]),
            // A time zone: 09:00 in Tokyo is 00:00 UTC.
            ("0 9 * * *", "Asia/Tokyo", "2027-01-01T00:00:00Z", &["2027-01-02T00:00:00+00:00"]),
            // Spring forward in New York (2027-03-14, 02:00 -> 03:00): 02:30 does not exist
            // and fires at the first instant after the gap, 03:00 EDT = 07:00Z.
            (
                "30 2 * * *",
                "America/New_York",
                "2027-03-13T12:00:00Z",
                &["2027-03-14T07:00:00+00:00", "2027-03-15T06:30:00+00:00"],
            ),
            // Several gap times collapse into one instant.
            (
                "*/20 2 * * *",
                "America/New_York",
                "2027-03-14T06:00:00Z",
                &["2027-03-14T07:00:00+00:00", "2027-03-15T06:00:00+00:00"],
            ),
            // Fall back (2027-11-07, 02:00 EDT -> 01:00 EST): a fixed hour fires once, at
            // the first 01:30 (05:30Z); a wildcard hour fires at both real 01:30s.
            (
                "30 1 * * *",
                "America/New_York",
                "2027-11-07T04:00:00Z",
                &["2027-11-07T05:30:00+00:00", "2027-11-08T06:30:00+00:00"],
            ),
            (
                "30 * * * *",
                "America/New_York",
                "2027-11-07T04:45:00Z",
                &["2027-11-07T05:30:00+00:00", "2027-11-07T06:30:00+00:00", "2027-11-07T07:30:00+00:00"],
            ),
            // @every is anchored at creation (here: `from`).
            ("@every 90m", "UTC", "2027-01-01T00:00:00Z", &["2027-01-01T01:30:00+00:00", "2027-01-01T03:00:00+00:00"]),
        ];
        for (expr, tz, from, want) in cases {
            assert_eq!(
                fires(expr, tz, from, want.len()),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{expr} in {tz} from {from}"
            );
        }
    }

    /// Property: fire times strictly increase, and each is a local time the expression
    /// matches (or the end of a DST gap that swallowed one).
    #[test]
    fn fire_times_increase_and_match() {
        use rand::{Rng, SeedableRng};
        let exprs =
            ["*/7 * * * *", "0 */5 * * 1-5", "15 2 * * *", "0 0 1,15 * 0", "30 1 * * *", "0 * * * *", "59 23 31 12 *"];
        let zones = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..60 {
            let expr = exprs[rng.random_range(0..exprs.len())];
            let tz = parse_timezone(zones[rng.random_range(0..zones.len())]).unwrap();
            let from = utc("2026-01-01T00:00:00Z") + chrono::Duration::minutes(rng.random_range(0..2 * 365 * 24 * 60));
            let s = Schedule::parse(expr).unwrap();
            let Schedule::Cron { schedules, .. } = &s else { unreachable!("cron expressions only") };
            let times = s.fire_times(tz, from, from, 40);
            assert_eq!(times.len(), 40, "{expr}");
            let mut prev = from;
            for t in times {
                assert!(t > prev, "{expr} in {tz}: {t} after {prev}");
                let local = t.with_timezone(&tz).naive_local();
                let matches = schedules.iter().any(|c| c.includes(Utc.from_utc_datetime(&local)));
                let gap_end = tz.from_local_datetime(&(local - chrono::Duration::minutes(1))).single().is_none();
                assert!(matches || gap_end, "{expr} in {tz}: {t} (local {local}) does not match");
                prev = t;
            }
        }
    }

    #[test]
    fn timezone_names() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Mars/Base").is_err());
    }
}
