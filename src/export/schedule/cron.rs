//! Cron expressions, evaluated in UTC like a Kubernetes CronJob's `schedule`.
//!
//! Five fields, `minute hour day-of-month month day-of-week`, or six with a leading `second`
//! field (short intervals, e.g. tests: `*/5 * * * * *`). Each field is a comma list of `*`,
//! `n`, `a-b`, each optionally with `/step`; months also take `JAN`–`DEC` and days of the
//! week `SUN`–`SAT` (0 and 7 are Sunday). As in cron, when both day fields are restricted a
//! day matches either. The macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly` are accepted. No time zones: every time is UTC.
//!
//! Our own parser rather than a crate (`cron`, `croner`): UTC only means no daylight-saving
//! rules, the grammar above is all a schedule needs, and the evaluation below is a bitmask walk
//! over days of at most [`MAX_SEARCH_DAYS`].

use crate::timestamp;

/// How far [`Cron::next_after`] looks ahead: enough for `0 0 29 2 *` across a century's
/// non-leap year.
pub const MAX_SEARCH_DAYS: i64 = 9 * 366;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// A cron expression that does not parse (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// One field: its name, range and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const WEEKDAY: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

impl Cron {
    /// Parses `text` (five or six fields, or a macro).
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            _ => {
                return Err(CronError(
                    "must have 5 fields (minute hour day-of-month month day-of-week) or 6 \
                     (with a leading second)"
                        .into(),
                ));
            }
        };
        let mut weekdays = parse_field(rest[4], &WEEKDAY)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Cron {
            seconds: parse_field(second, &SECOND)?,
            minutes: parse_field(rest[0], &MINUTE)?,
            hours: parse_field(rest[1], &HOUR)?,
            days: parse_field(rest[2], &DAY)?,
            months: parse_field(rest[3], &MONTH)?,
            weekdays,
            days_restricted: rest[2] != "*",
            weekdays_restricted: rest[4] != "*",
        })
    }

    /// The first time this expression fires strictly after `after_us` (microseconds since the
    /// epoch, UTC), within [`MAX_SEARCH_DAYS`]; `None` when it never does (`0 0 31 2 *`).
    pub fn next_after(&self, after_us: i64) -> Option<i64> {
        let start = after_us.div_euclid(MICROS_PER_SECOND).checked_add(1)?;
        let first_day = start.div_euclid(86_400);
        let first_second = start.rem_euclid(86_400);
        for offset in 0..=MAX_SEARCH_DAYS {
            let day = first_day.checked_add(offset)?;
            if !self.day_matches(day) {
                continue;
            }
            let from = if offset == 0 { first_second } else { 0 };
            if let Some(second) = self.first_time_from(from) {
                return day
                    .checked_mul(86_400)?
                    .checked_add(second)?
                    .checked_mul(MICROS_PER_SECOND);
            }
        }
        None
    }

    /// The shortest time between two consecutive firings, in seconds, at most one day: the
    /// smallest gap between the matching seconds of a day, and the gap from a day's last
    /// firing to the next day's first (assumed possible: conservative for expressions whose
    /// matching days are never consecutive). A day's matching seconds are the same on every
    /// matching day, so this is exact for every expression whose day fields allow two
    /// consecutive days.
    pub fn min_interval_seconds(&self) -> i64 {
        let mut first = None;
        let mut previous: Option<i64> = None;
        let mut smallest = 86_400;
        for hour in (0..24).filter(|hour| has(self.hours, *hour)) {
            for minute in (0..60).filter(|minute| has(self.minutes, *minute)) {
                for second in (0..60).filter(|second| has(self.seconds, *second)) {
                    let at = hour * 3600 + minute * 60 + second;
                    if let Some(before) = previous {
                        smallest = smallest.min(at - before);
                    }
                    first.get_or_insert(at);
                    previous = Some(at);
                }
            }
        }
        if let (Some(first), Some(last)) = (first, previous) {
            smallest = smallest.min(86_400 - last + first);
        }
        smallest
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, month, day_of_month) = timestamp::civil_from_days(day);
        if !has(self.months, month) {
            return false;
        }
        let weekday = (day + 4).rem_euclid(7); // 1970-01-01 was a Thursday
        let by_day = has(self.days, day_of_month);
        let by_weekday = has(self.weekdays, weekday);
        if self.days_restricted && self.weekdays_restricted {
            by_day || by_weekday
        } else {
            by_day && by_weekday
        }
    }

    /// The first second of a day at or after `from` (seconds into the day) that matches.
    fn first_time_from(&self, from: i64) -> Option<i64> {
        let (h0, m0, s0) = (from / 3600, from / 60 % 60, from % 60);
        for hour in h0..24 {
            if !has(self.hours, hour) {
                continue;
            }
            let m_start = if hour == h0 { m0 } else { 0 };
            for minute in m_start..60 {
                if !has(self.minutes, minute) {
                    continue;
                }
                let s_start = if hour == h0 && minute == m0 { s0 } else { 0 };
                let rest = self.seconds >> s_start;
                if rest != 0 {
                    let second = s_start + i64::from(rest.trailing_zeros());
                    return Some(hour * 3600 + minute * 60 + second);
                }
            }
        }
        None
    }
}

fn has(mask: u64, value: i64) -> bool {
    (0..64).contains(&value) && mask & (1 << value) != 0
}

/// One field as a bitmask (bit `n` = value `n`).
fn parse_field(text: &str, field: &Field) -> Result<u64, CronError> {
    let bad = |what: &str| CronError(format!("{} field '{text}': {what}", field.name));
    let mut mask = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|step| *step >= 1)
                    .ok_or_else(|| bad("a step must be a positive integer"))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low, field, &bad)?, value(high, field, &bad)?)
        } else {
            let single = value(range, field, &bad)?;
            // `n/step` runs from n to the end of the range, as in cron.
            (single, if step > 1 { field.max } else { single })
        };
        if low > high {
            return Err(bad("a range must not run backwards"));
        }
        let mut current = low;
        while current <= high {
            mask |= 1 << current;
            current += step;
        }
    }
    Ok(mask)
}

/// A number or name of `field`, within its range.
fn value(text: &str, field: &Field, bad: &dyn Fn(&str) -> CronError) -> Result<u32, CronError> {
    let named = field
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .map(|index| index as u32 + field.min);
    let number = named.or_else(|| text.parse::<u32>().ok());
    match number {
        Some(number) if (field.min..=field.max).contains(&number) => Ok(number),
        Some(_) => Err(bad(&format!(
            "values must lie in {}-{}",
            field.min, field.max
        ))),
        None => Err(bad("not a number, range, list or step")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(text: &str) -> i64 {
        timestamp::parse_rfc3339_micros(text).unwrap()
    }

    fn next(cron: &str, after: &str) -> String {
        let next = Cron::parse(cron).unwrap().next_after(at(after)).unwrap();
        timestamp::format_micros(next)
    }

    #[test]
    fn the_shortest_interval_matches_the_firings() {
        let cases = [
            ("*/2 * * * * *", 2),
            ("0,59 * * * * *", 1),
            ("* * * * *", 60),
            ("*/10 * * * *", 600),
            ("0,50 * * * *", 600),
            ("0 0,23 * * *", 3600),
            ("15 3 * * *", 86_400),
            ("@hourly", 3600),
            ("@weekly", 86_400),
            ("0 */7 * * *", 3 * 3600),
        ];
        for (text, expected) in cases {
            let cron = Cron::parse(text).unwrap();
            assert_eq!(cron.min_interval_seconds(), expected, "{text}");
            // The firings over two days never come closer, and (for daily and shorter
            // patterns) some pair is exactly that close.
            let mut at_us = at("2026-12-03T00:00:00Z");
            let end = at_us + 2 * 86_400 * 1_000_000;
            let mut smallest = i64::MAX;
            while let Some(next) = cron.next_after(at_us).filter(|next| *next < end) {
                if at_us > at("2026-12-03T00:00:00Z") {
                    smallest = smallest.min((next - at_us) / 1_000_000);
                }
                at_us = next;
            }
            if text != "@weekly" {
                assert_eq!(smallest, expected, "{text}");
            }
        }
    }

    #[test]
    fn next_runs_follow_the_fields_in_utc() {
        let cases = [
            (
                "*/5 * * * *",
                "2026-12-03T14:07:31Z",
                "2026-12-03T14:10:00.000000Z",
            ),
            (
                "0 * * * *",
                "2026-12-03T14:00:00Z",
                "2026-12-03T15:00:00.000000Z",
            ),
            (
                "30 2 * * *",
                "2026-12-31T03:00:00Z",
                "2027-01-01T02:30:00.000000Z",
            ),
            (
                "*/3 * * * * *",
                "2026-12-03T14:07:31.5Z",
                "2026-12-03T14:07:33.000000Z",
            ),
            (
                "0 0 29 2 *",
                "2026-03-01T00:00:00Z",
                "2028-02-29T00:00:00.000000Z",
            ),
            // Both day fields restricted: either matches (Monday 2026-12-07, or the 15th).
            (
                "0 9 15 * MON",
                "2026-12-03T00:00:00Z",
                "2026-12-07T09:00:00.000000Z",
            ),
            (
                "0 9 * * 7",
                "2026-12-03T00:00:00Z",
                "2026-12-06T09:00:00.000000Z",
            ),
            (
                "0 0 1 jan-mar/2 *",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00.000000Z",
            ),
            (
                "@hourly",
                "2026-12-03T14:59:59.999999Z",
                "2026-12-03T15:00:00.000000Z",
            ),
            (
                "15,45 10 * * 1-5",
                "2026-12-04T10:45:00Z",
                "2026-12-07T10:15:00.000000Z",
            ),
        ];
        for (cron, after, expected) in cases {
            assert_eq!(next(cron, after), expected, "{cron} after {after}");
        }
    }

    #[test]
    fn bad_expressions_name_their_field() {
        for (text, field) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "minute"),
            ("5-1 * * * *", "minute"),
            ("x * * * *", "minute"),
            ("* * * * * * *", "5 fields"),
        ] {
            let error = Cron::parse(text).unwrap_err().to_string();
            assert!(error.contains(field), "{text}: {error}");
        }
        assert_eq!(
            Cron::parse("0 0 31 2 *").unwrap().next_after(0),
            None,
            "never fires"
        );
    }
}
