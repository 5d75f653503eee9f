//! RFC 3339 timestamps as integer microseconds since the Unix epoch (UTC).
//!
//! Event timestamps are strict RFC 3339 (a `T`, seconds, an offset); time *parameters* (`from`
//! and `to` of queries, summaries, checkpoints and exports) also take the ISO 8601 forms
//! ScaiVault's reference uses in practice ([`parse_time_param`]). Formatting is the ScaiVault
//! output form `2026-04-23T18:00:00.123456Z`, written by hand because exports format millions.

use std::str::FromStr;

/// Microseconds since the Unix epoch of an RFC 3339 timestamp with any offset.
///
/// Sub-microsecond digits are truncated. Returns a short reason on failure.
pub fn parse_rfc3339_micros(text: &str) -> Result<i64, &'static str> {
    check_rfc3339_shape(text)?;
    let timestamp = jiff::Timestamp::from_str(text).map_err(|_| "not a valid date or time")?;
    Ok(timestamp.as_microsecond())
}

/// What a time parameter may be, for messages.
pub const TIME_PARAM_FORMS: &str = "an RFC 3339 timestamp (2026-04-23T18:00:00Z, \
     2026-04-23T20:00:00+02:00), a date (2026-04-23, midnight UTC) or a date and time without \
     offset (2026-04-23T18:00:00, UTC)";

/// Microseconds since the epoch of a time parameter (`from`, `to`): an RFC 3339 timestamp, a
/// date alone (`2026-04-23`, midnight UTC) or a date and time without an offset (UTC).
///
/// Anything else is an error naming the accepted forms; an offset whose `+` arrived as a space
/// (an unencoded `+` in a query string decodes to a space) gets a message saying to encode it.
pub fn parse_time_param(text: &str) -> Result<i64, String> {
    let strict = match parse_rfc3339_micros(text) {
        Ok(micros) => return Ok(micros),
        Err(reason) => reason,
    };
    let is_date = text.len() == 10 && !text.contains(['T', 't']);
    if is_date && let Ok(micros) = parse_rfc3339_micros(&format!("{text}T00:00:00Z")) {
        return Ok(micros);
    }
    // Appending `Z` yields RFC 3339 exactly when the text is a date and time without offset.
    if let Ok(micros) = parse_rfc3339_micros(&format!("{text}Z")) {
        return Ok(micros);
    }
    if text.matches(' ').count() == 1 && parse_rfc3339_micros(&text.replacen(' ', "+", 1)).is_ok() {
        return Err(format!(
            "the offset's '+' arrived as a space: a '+' in a query string means a space, so \
             percent-encode it as %2B ({})",
            text.replacen(' ', "%2B", 1)
        ));
    }
    Err(format!("must be {TIME_PARAM_FORMS} ({strict})"))
}

/// Checks the RFC 3339 grammar that jiff's more lenient parser would also accept variants of.
fn check_rfc3339_shape(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let at = |index: usize, expected: &[u8]| bytes.get(index).is_some_and(|b| expected.contains(b));
    let date_time_ok = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !date_time_ok {
        return Err("expected YYYY-MM-DDTHH:MM:SS");
    }
    let mut rest = &bytes[19..];
    if let Some((b'.', after_dot)) = rest.split_first() {
        let fraction_len = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction_len == 0 || fraction_len > 9 {
            return Err("fractional seconds must have 1 to 9 digits");
        }
        rest = &after_dot[fraction_len..];
    }
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    if offset_ok {
        Ok(())
    } else {
        Err("expected an offset such as Z or +02:00")
    }
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_micros(micros: i64) -> String {
    let mut out = String::with_capacity(27);
    write_micros(micros, &mut out);
    out
}

/// Appends the [`format_micros`] form to `out`.
pub fn write_micros(micros: i64, out: &mut String) {
    let text = FormattedMicros::of(micros);
    // The text is ASCII.
    out.push_str(std::str::from_utf8(text.as_bytes()).unwrap_or_default());
}

/// Appends the [`format_micros`] form to `out` as bytes (the canonical encoder's form).
pub fn write_micros_bytes(micros: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(FormattedMicros::of(micros).as_bytes());
}

/// The [`format_micros`] text in a stack buffer, digits written by hand: this runs for every
/// ingested event (canonical bytes) and every exported one.
struct FormattedMicros {
    /// Long enough for the widest year of the `i64` range (`-294247`) and the rest.
    text: [u8; 32],
    len: usize,
}

impl FormattedMicros {
    fn of(micros: i64) -> Self {
        let seconds = micros.div_euclid(1_000_000);
        let fraction = micros.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let mut text = FormattedMicros {
            text: [0; 32],
            len: 0,
        };
        text.padded(year, 4);
        text.push(b'-');
        text.padded(month, 2);
        text.push(b'-');
        text.padded(day, 2);
        text.push(b'T');
        text.padded(second_of_day / 3600, 2);
        text.push(b':');
        text.padded(second_of_day % 3600 / 60, 2);
        text.push(b':');
        text.padded(second_of_day % 60, 2);
        text.push(b'.');
        text.padded(fraction, 6);
        text.push(b'Z');
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.text.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// `value` zero-padded to `width` characters, sign included, as `{value:0width$}` does.
    fn padded(&mut self, value: i64, width: usize) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut width = width;
        if value < 0 {
            self.push(b'-');
            width = width.saturating_sub(1);
        }
        for _ in digits.len() - start..width {
            self.push(b'0');
        }
        for &digit in &digits[start..] {
            self.push(digit);
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01: Howard Hinnant's days-to-civil
/// algorithm (proleptic Gregorian calendar), infallible and cheap enough for exports.
pub fn civil_from_days(days_since_epoch: i64) -> (i64, i64, i64) {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_truncates_to_micros() {
        let utc = parse_rfc3339_micros("2026-04-23T18:00:00.123456Z").unwrap();
        assert_eq!(
            parse_rfc3339_micros("2026-04-23T20:00:00.123456+02:00"),
            Ok(utc)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-04-23T18:00:00.123456789Z"),
            Ok(utc)
        );
        assert_eq!(parse_rfc3339_micros("2026-04-23t18:00:00.123456z"), Ok(utc));
        assert_eq!(
            parse_rfc3339_micros("2026-04-23T18:00:00.1Z"),
            Ok(utc - 23_456)
        );
    }

    #[test]
    fn rejects_what_rfc3339_does_not_allow() {
        for text in [
            "2026-04-23",
            "2026-04-23T18:00:00",
            "2026-04-23 18:00:00Z",
            "2026-04-23T18:00Z",
            "2026-04-23T18:00:00.Z",
            "2026-04-23T18:00:00+0200",
            "2026-04-23T18:00:00+02",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-23T18:00:00Z[UTC]",
            "",
        ] {
            assert!(parse_rfc3339_micros(text).is_err(), "{text}");
        }
    }

    #[test]
    fn time_params_also_take_a_date_and_a_time_without_offset_as_utc() {
        let midnight = parse_rfc3339_micros("2026-04-23T00:00:00Z").unwrap();
        assert_eq!(parse_time_param("2026-04-23"), Ok(midnight));
        assert_eq!(parse_time_param("2026-04-23T00:00:00"), Ok(midnight));
        assert_eq!(
            parse_time_param("2026-04-23T18:00:00.5"),
            Ok(midnight + 18 * 3_600_000_000 + 500_000)
        );
        assert_eq!(parse_time_param("2026-04-23T02:00:00+02:00"), Ok(midnight));
        assert_eq!(parse_time_param("2026-04-23T00:00:00Z"), Ok(midnight));
    }

    #[test]
    fn time_params_refuse_everything_else_naming_the_forms() {
        for text in [
            "yesterday",
            "",
            "2026-04-23T18:00",
            "2026-04-23 18:00:00",
            "2026-13-01",
            "2026-02-29",
            "2026-04-23T18:00:00+0200",
            "20260423",
            "2026-04-23T18:00:00Z ",
            "1776902400",
        ] {
            let message = parse_time_param(text).unwrap_err();
            assert!(message.contains("a date (2026-04-23"), "{text}: {message}");
        }
    }

    #[test]
    fn an_offset_plus_decoded_to_a_space_is_told_to_be_encoded() {
        let message = parse_time_param("2026-04-23T20:00:00 02:00").unwrap_err();
        assert!(message.contains("%2B"), "{message}");
        assert!(message.contains("2026-04-23T20:00:00%2B02:00"), "{message}");
        // A minus offset needs no encoding and parses.
        assert!(parse_time_param("2026-04-23T20:00:00-02:00").is_ok());
    }

    #[test]
    fn formats_like_jiff_across_the_calendar() {
        let mut rng = fastrand::Rng::with_seed(3);
        let samples = (0..5_000).map(|_| rng.i64(-2_000_000_000_000_000..253_402_300_799_000_000));
        for micros in samples.chain([0, -1, 951_782_400_000_000, 1_776_967_200_123_456]) {
            let expected = jiff::Timestamp::from_microsecond(micros)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
                .to_string();
            assert_eq!(format_micros(micros), expected, "{micros}");
        }
    }

    #[test]
    fn formats_years_outside_four_digits_like_padded_formatting() {
        for micros in [
            i64::MIN,
            i64::MAX,
            -62_167_219_200_000_001,
            253_402_300_800_000_000,
        ] {
            let seconds = micros.div_euclid(1_000_000);
            let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
            let of_day = seconds.rem_euclid(86_400);
            let expected = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
                of_day / 3600,
                of_day % 3600 / 60,
                of_day % 60,
                micros.rem_euclid(1_000_000)
            );
            assert_eq!(format_micros(micros), expected, "{micros}");
            let mut bytes = Vec::new();
            write_micros_bytes(micros, &mut bytes);
            assert_eq!(bytes, expected.as_bytes());
        }
    }

    #[test]
    fn format_round_trips_through_parse() {
        let micros = 1_776_967_200_123_456;
        assert_eq!(parse_rfc3339_micros(&format_micros(micros)), Ok(micros));
    }
}
