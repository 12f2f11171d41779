//! The one duration grammar, shared by command-line flags (`--ttl 2w`) and site.toml
//! (`logs_max_age = "2w"`): a whole number and one unit, `s`, `m`, `h`, `d` or `w`.

use std::time::Duration;

/// The longest duration anything accepts: a century is "forever" without overflowing a clock.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// Text that is not a duration, saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number followed by a unit.
    #[error(
        "{0:?} is not a duration: expected a whole number and a unit (s, m, h, d, w), e.g. 90s, 30m, 12h, 7d or 2w"
    )]
    Malformed(String),
    /// Past a century.
    #[error("{0:?} is not a duration: it is more than 100 years")]
    TooLong(String),
}

/// Parses `90s`, `30m`, `12h`, `7d`, `2w`, at most 100 years. Zero parses: whether it means
/// anything (a retention age of `0s` deletes at once; a grant TTL of zero is useless) is the
/// caller's to say.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(malformed)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| malformed())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(malformed()),
    };
    number
        .checked_mul(unit_seconds)
        .filter(|seconds| *seconds <= MAX_SECONDS)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn nonsense_is_refused_saying_why() {
        for bad in ["", "7", "d", "7y", "-1h", "1.5h", " 7d", "7d ", "7 d", "7D"] {
            assert_eq!(
                parse_duration(bad),
                Err(DurationError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for long in ["5300w", "99999999999999w", "99999999999999999999999s"] {
            assert!(parse_duration(long).is_err(), "{long:?} was accepted");
        }
        assert_eq!(
            parse_duration("5300w"),
            Err(DurationError::TooLong("5300w".into()))
        );
    }
}
