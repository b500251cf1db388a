//! Cron expressions evaluated exactly as cronie (Vixie cron) does, in any IANA time zone.
//!
//! Syntax: five fields `minute hour day-of-month month day-of-week`, or six with a leading
//! seconds field; each field a `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
//! (from `a` to the field's end), or a comma-separated list of those; month and weekday
//! names (`JAN`, `MON`); weekday 0–7 with 0 and 7 Sunday; a step larger than the range
//! takes the first value only (`*/60` is minute 0). The macros `@yearly`/`@annually`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`, and `@every <duration>`
//! (anchored at the task's creation).
//!
//! Semantics (cronie's, not the `cron` crate's, which this module replaced: that crate
//! numbers weekdays from 1, treats `*/2` in a day field as a restriction, refuses steps
//! beyond a field's range and stops in 2100):
//!
//! - **Day fields.** A day field whose text starts with `*` (`*`, `*/2`) is unrestricted.
//!   Only when neither starts with `*` does a day match if *either* field matches;
//!   otherwise both must (so `0 0 15 * */1` is the 15th only, and `0 0 */15 * 1` is a
//!   Monday that is the 1st, 16th or 31st).
//! - **No year limit**; an expression that can never match (`0 0 30 2 *`) is refused.
//! - `?` in a day field counts as `*` (Quartz's "no specific value"); elsewhere it is
//!   refused. `a/n` (from `a` to the field's end) and a weekday range ending on Sunday as
//!   0 (`FRI-SUN`) are accepted, as Quartz and cronie do respectively.
//! - **DST.** A job is *fixed-time* when neither its minute nor its hour field starts with
//!   `*`, otherwise *wildcard*. Spring forward: a fixed-time job whose wall time falls in
//!   the gap fires once, at the first instant after it; a wildcard job has no run for the
//!   missing times. Fall back: a fixed-time job fires at the first occurrence of a
//!   repeated wall time only; a wildcard job fires at every real instant that matches.
//!   One deliberate difference: cronie runs a fixed-time job once per skipped minute that
//!   matches (`0,30 2 * * *` twice at the end of the gap); here a tick is one instant, so
//!   they are one run.
//!
//! Evaluation walks instants in segments of constant UTC offset: within a segment the wall
//! clock and real time move together, so the next match is one search on the wall clock
//! (skipping whole months, days, hours and minutes that cannot match); a DST transition is
//! handled once, where the segment ends. A per-second schedule costs the same across a
//! transition as anywhere else.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron(CronSpec),
    /// `@every <duration>`, anchored at the task's creation time.
    Every(std::time::Duration),
}

/// The sets of values each field allows, as bit masks, and cronie's two flags.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSpec {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1–31.
    days_of_month: u32,
    /// Bits 1–12.
    months: u16,
    /// Bits 0–6, Sunday = 0.
    days_of_week: u8,
    /// The day-of-month field's text starts with `*`.
    dom_star: bool,
    /// The day-of-week field's text starts with `*`.
    dow_star: bool,
    /// Neither the minute nor the hour field starts with `*` (cronie's fixed-time job).
    fixed_time: bool,
}

const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// How far ahead a match is searched for before an expression counts as never firing:
/// the Gregorian calendar repeats every 400 years.
const SEARCH_YEARS: i32 = 401;
/// How far apart the offset is probed when looking for a transition. A transition is
/// found by its probe or by the probe at the candidate itself; two transitions closer than
/// this that cancel out (none in the tz database since the 1940s) could only hide a
/// match that lies between them, and such a match's candidate lies between them too, so
/// the probe at the candidate sees it.
const TRANSITION_PROBE: Duration = Duration::days(7);

impl Schedule {
    /// Parses an expression (see the module doc). Refuses one that can never fire.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        if let Some(rest) = expr.strip_prefix("@every") {
            let d = parse_duration(rest.trim())?;
            if d.as_secs() == 0 {
                return Err("@every needs a duration of at least 1s".into());
            }
            if d > MAX_EVERY {
                return Err("@every allows at most 366d".into());
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
        let spec = CronSpec {
            seconds: parse_field(no_question_mark(sec, "second")?, "second", 0, 59, &[])?,
            minutes: parse_field(no_question_mark(min, "minute")?, "minute", 0, 59, &[])?,
            hours: parse_field(no_question_mark(hour, "hour")?, "hour", 0, 23, &[])? as u32,
            days_of_month: parse_field(dom, "day-of-month", 1, 31, &[])? as u32,
            months: parse_field(no_question_mark(month, "month")?, "month", 1, 12, &MONTH_NAMES)? as u16,
            days_of_week: {
                let bits = parse_field(dow, "day-of-week", 0, 7, &DAY_NAMES)?;
                // 7 is Sunday too.
                ((bits | (bits >> 7)) & 0x7f) as u8
            },
            // `?` (Quartz's "no specific value") counts as `*` in the day fields.
            dom_star: dom.starts_with(['*', '?']),
            dow_star: dow.starts_with(['*', '?']),
            fixed_time: !min.starts_with('*') && !hour.starts_with('*'),
        };
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).expect("valid date");
        if spec.next_local(epoch).is_none() {
            return Err(format!("{expr:?} can never fire: no date matches its day-of-month, month and day-of-week"));
        }
        Ok(Schedule::Cron(spec))
    }

    /// The first fire time strictly after `after`, in time zone `tz`. `anchor` is the
    /// task's creation time (only `@every` uses it).
    pub fn next_after(&self, tz: Tz, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => {
                let step = Duration::from_std(*d).ok()?;
                if after < anchor {
                    return Some(anchor);
                }
                let elapsed = (after - anchor).num_milliseconds();
                let k = elapsed / step.num_milliseconds() + 1;
                anchor.checked_add_signed(step * i32::try_from(k).ok()?)
            }
            Schedule::Cron(spec) => spec.next_instant(tz, after),
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

impl CronSpec {
    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = self.days_of_month & (1 << d.day()) != 0;
        let dow = self.days_of_week & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first wall-clock time strictly after `after` (whole seconds) that matches.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        let last_year = after.year().saturating_add(SEARCH_YEARS);
        loop {
            if t.year() > last_year {
                return None;
            }
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            match next_bit(u64::from(self.hours), t.hour()) {
                None => {
                    t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
                    continue;
                }
                Some(h) if h != t.hour() => {
                    t = t.date().and_hms_opt(h, 0, 0)?;
                    continue;
                }
                Some(_) => {}
            }
            match next_bit(self.minutes, t.minute()) {
                None => {
                    t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
                    continue;
                }
                Some(m) if m != t.minute() => {
                    t = t.with_minute(m)?.with_second(0)?;
                    continue;
                }
                Some(_) => {}
            }
            match next_bit(self.seconds, t.second()) {
                None => {
                    t = t.with_second(0)? + Duration::minutes(1);
                    continue;
                }
                Some(s) => return t.with_second(s),
            }
        }
    }

    /// The first instant strictly after `after` at which the job fires in `tz`.
    fn next_instant(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let offset_at = |t: DateTime<Utc>| {
            Duration::seconds(i64::from(tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc()))
        };
        // The segment starts at `from` (exclusive) with offset `off`; wall-clock matches
        // are searched strictly after `wall`.
        let mut from = after;
        let mut off = offset_at(after);
        let mut wall = after.naive_utc() + off;
        for _ in 0..(SEARCH_YEARS * 4) {
            let local = self.next_local(wall)?;
            let candidate = DateTime::<Utc>::from_naive_utc_and_offset(local - off, Utc);
            match first_transition(&offset_at, from, candidate) {
                None => {
                    // In this segment. A fixed-time job's repeated wall time fires at its
                    // first occurrence only: in the second, skip the rest of the repeated
                    // hour at once (it may hold thousands of matches).
                    if self.fixed_time {
                        if let LocalResult::Ambiguous(first, _) = tz.from_local_datetime(&local) {
                            let first = first.with_timezone(&Utc);
                            if first < candidate {
                                let fell_back = first_transition(&offset_at, first, candidate)?;
                                // The repetition ends where the wall clock reaches the time
                                // it showed when it was set back.
                                wall = fell_back.naive_utc() + offset_at(first) - Duration::seconds(1);
                                from = candidate;
                                continue;
                            }
                        }
                    }
                    if candidate > after {
                        return Some(candidate);
                    }
                    wall = local;
                    from = candidate;
                }
                Some(at) => {
                    let next_off = offset_at(at);
                    let (gap_start, gap_end) = (at.naive_utc() + off, at.naive_utc() + next_off);
                    if next_off > off {
                        // Spring forward: wall times in [gap_start, gap_end) never happen.
                        // A fixed-time job with a match there fires once, as the gap ends.
                        let in_gap = self.next_local(gap_start - Duration::seconds(1)).is_some_and(|l| l < gap_end);
                        if self.fixed_time && in_gap && at > after {
                            return Some(at);
                        }
                        wall = gap_end - Duration::seconds(1);
                    } else {
                        // Fall back: wall times in [gap_end, gap_start) come again. A
                        // wildcard job fires in them again; a fixed-time job does not.
                        wall = if self.fixed_time { gap_start } else { gap_end } - Duration::seconds(1);
                    }
                    from = at;
                    off = next_off;
                }
            }
        }
        None
    }
}

/// The first instant in `(from, to]` where the offset differs from the offset at `from`,
/// to the second (transitions fall on whole seconds).
fn first_transition(
    offset_at: &impl Fn(DateTime<Utc>) -> Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let base = offset_at(from);
    let mut lo = from;
    // Find a probe where the offset changed, then narrow it down.
    let hi = loop {
        let probe = (lo + TRANSITION_PROBE).min(to);
        if offset_at(probe) != base {
            break probe;
        }
        if probe >= to {
            return None;
        }
        lo = probe;
    };
    let (mut lo, mut hi) = (lo, hi);
    while hi - lo > Duration::seconds(1) {
        let mid = lo + (hi - lo) / 2;
        if offset_at(mid) == base {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // `hi` has the new offset; the transition is at a whole second in (lo, hi].
    let whole = hi.with_nanosecond(0)?;
    Some(if whole > lo && offset_at(whole) != base { whole } else { hi })
}

/// The lowest set bit at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    let rest = mask.checked_shr(from)?;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// Parses one field into a bit mask over `lo..=hi`.
fn parse_field(text: &str, name: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let bad = |why: String| format!("{name} field {text:?}: {why}");
    let value = |s: &str| -> Result<u32, String> {
        let v = match s.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                // Month names count from 1, weekday names from 0.
                Some(i) => i as u32 + if lo == 1 { 1 } else { 0 },
                None => {
                    return Err(bad(format!(
                        "{s:?} is not a number{}",
                        if names.is_empty() { "" } else { " or a name" }
                    )))
                }
            },
        };
        if v < lo || v > hi {
            return Err(bad(format!("{v} is outside {lo}-{hi}")));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step = s.parse::<u32>().map_err(|_| bad(format!("step {s:?} is not a number")))?;
                if step == 0 {
                    return Err(bad("a step must be at least 1".into()));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" | "?" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n`: from a to the end of the field.
                None if part.contains('/') => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        // A weekday range may end on Sunday as 0 (`FRI-SUN`): 7.
        let last = if hi == 7 && last == 0 && first > 0 { 7 } else { last };
        if first > last {
            return Err(bad(format!("range {first}-{last} runs backwards")));
        }
        for v in (first..=last).step_by(step as usize) {
            mask |= 1 << v;
        }
    }
    Ok(mask)
}

/// `?` means "no specific value" in the day fields only.
fn no_question_mark<'a>(text: &'a str, name: &str) -> Result<&'a str, String> {
    match text.contains('?') {
        true => Err(format!("{name} field {text:?}: `?` is allowed only in the day-of-month and day-of-week fields")),
        false => Ok(text),
    }
}

/// The longest `@every` interval.
const MAX_EVERY: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// `90s`, `5m`, `1h30m`, `2d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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
mod tests;
