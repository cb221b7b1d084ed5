//! Go's duration syntax (`300ms`, `1.5h`, `2h45m`), which gdn's flags and the CLI's grace times
//! take; a plain number is seconds.

use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration {0:?}")]
    Negative(String),
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses a Go duration or a plain number of seconds. Negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.into()));
    }
    let body = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos: f64 = 0.0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| DurationError::MissingUnit(text.into()))?;
        if number_len == 0 {
            return Err(DurationError::Invalid(text.into()));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError::Invalid(text.into()))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.into(),
                    text: text.into(),
                })
            }
        };
        rest = &rest[unit_len..];
        total_nanos += number * unit;
    }
    if !total_nanos.is_finite() || total_nanos > i64::MAX as f64 {
        return Err(DurationError::TooLarge(text.into()));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(
            parse_duration("2h45m0.5s"),
            Ok(Duration::from_millis(9_900_500))
        );
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
        assert!(matches!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(parse_duration("m"), Err(DurationError::Invalid("m".into())));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("1.5"),
            Err(DurationError::MissingUnit("1.5".into()))
        );
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(parse_duration("1e300h").is_err());
    }
}
