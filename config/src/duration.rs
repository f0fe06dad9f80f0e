//! Durations written as a number and a unit: `"500ms"`, `"2s"`, `"5m"`, `"1h"`.

use std::time::Duration;

/// Parse a duration such as `"500ms"`, `"2s"`, `"5m"` or `"1h"`.
///
/// The number is a non-negative integer; the unit is required, so that `"30"` cannot be
/// read as seconds by one operator and milliseconds by another.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("duration {text:?} must start with a whole number"));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "-1s",
            "2 days",
            "5 s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("30").unwrap_err().contains("unit"));
    }
}
