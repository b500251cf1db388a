//! Cron expressions with standard (Vixie/POSIX) semantics, on top of the `cron` crate.
//!
//! The crate numbers days of the week 1–7 from Sunday and requires both day fields to
//! match; standard cron numbers them 0–7 (0 and 7 are Sunday) and, when both day-of-month
//! and day-of-week are restricted, fires when *either* matches. So the day-of-week field
//! is expanded here to explicit day names, and an expression that restricts both day
//! fields becomes two crate schedules whose fire times are merged.

use std::str::FromStr;

use chrono_tz::Tz;

/// A parsed schedule expression.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// One or two crate schedules (two for the day-of-month OR day-of-week rule).
    Cron(Vec<cron::Schedule>),
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
        Ok(Schedule::Cron(schedules))
    }
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

    #[test]
    fn timezone_names() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Mars/Base").is_err());
    }
}
