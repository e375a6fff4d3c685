//! Durations as people write them: `500ms`, `1.5s`, `10s`, `2m`, `1h`, `1d`, or plain seconds.
//! Configuration files and the command line share this grammar.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a duration: write a number with a unit of ms, s, m, h or d (e.g. 10s)")]
pub struct DurationError {
    /// What was given.
    pub text: String,
}

/// Parse a duration.
///
/// # Errors
/// [`DurationError`] for an unknown unit, a negative or non-finite number, or no number.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        text: text.to_owned(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(err()),
    };
    if number.is_empty() {
        return Err(err());
    }
    // Whole numbers stay exact (no float rounding of large values).
    if let Ok(n) = number.parse::<u64>() {
        return Ok(match unit.trim() {
            "ms" => Duration::from_millis(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => Duration::from_secs(n),
        });
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    if !value.is_finite() || value < 0.0 {
        return Err(err());
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration(" 10s ").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn refusals_say_what_to_write() {
        for bad in ["", "s", "10 parsecs", "-1s", "1.2.3s", "ten"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("e.g. 10s"), "{bad}: {e}");
        }
    }
}
