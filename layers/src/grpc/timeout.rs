//! The `grpc-timeout` request header: how long the caller is willing to wait.
//!
//! Retry reads it once to fix the call's deadline and rewrites it on every later attempt with
//! the time that is left, so the server never works for a caller that has already given up.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H M S m u n`).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, using the finest unit that fits in 8 digits.
///
/// Rounding is down, so the server's deadline never ends after the caller's.
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (amount, unit) = units
        .iter()
        .map(|&(scale, unit)| (nanos / scale, unit))
        .find(|&(amount, _)| amount <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::try_from(format!("{amount}{unit}"))
        .expect("digits and a unit are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values round-trip through the header format and malformed values are refused.
    #[test]
    fn parses_and_formats_timeouts() {
        let parse = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "m", "10", "10x", "-1m", "123456789m"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(format_timeout(Duration::from_millis(25)), "25000000n");
        assert_eq!(format_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(format_timeout(Duration::from_secs(86_400)), "86400000m");
        assert_eq!(format_timeout(Duration::from_secs(100_000)), "100000S");
        let d = Duration::from_millis(1234);
        assert_eq!(parse_timeout(&format_timeout(d)), Some(d));
    }
}
