//! Event time and durations, both with microsecond precision.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in event time: microseconds since the Unix epoch, UTC.
///
/// The range is bounded to ±2^62 µs (about ±146,000 years) and [`Duration`] to 2^60 µs, so adding or
/// subtracting one duration to a time can never overflow `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(i64);

impl EventTime {
    /// The earliest representable time.
    pub const MIN: EventTime = EventTime(-(1 << 62));
    /// The latest representable time.
    pub const MAX: EventTime = EventTime(1 << 62);
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: EventTime = EventTime(0);

    /// A time from microseconds since the epoch, or `None` outside [`EventTime::MIN`, `EventTime::MAX`].
    pub const fn from_micros(us: i64) -> Option<Self> {
        if us < Self::MIN.0 || us > Self::MAX.0 { None } else { Some(EventTime(us)) }
    }

    /// A time from milliseconds since the epoch.
    pub fn from_millis(ms: i64) -> Option<Self> {
        ms.checked_mul(1_000).and_then(Self::from_micros)
    }

    /// A time from whole seconds since the epoch.
    pub fn from_secs(s: i64) -> Option<Self> {
        s.checked_mul(1_000_000).and_then(Self::from_micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 timestamp (any offset). Digits below the microsecond are truncated toward the
    /// past.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        let secs = dt.timestamp();
        let micros = i64::from(dt.timestamp_subsec_micros());
        secs.checked_mul(1_000_000)?.checked_add(micros).and_then(Self::from_micros)
    }

    /// `self + d`, clamped to [`EventTime::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        EventTime((self.0 + d.0).min(Self::MAX.0))
    }

    /// `self - d`, clamped to [`EventTime::MIN`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        EventTime((self.0 - d.0).max(Self::MIN.0))
    }

    /// The span from `earlier` to `self`, or `None` if `earlier` is later than `self` or the span exceeds
    /// [`Duration::MAX`].
    pub fn since(self, earlier: EventTime) -> Option<Duration> {
        self.0.checked_sub(earlier.0).and_then(Duration::from_micros)
    }
}

impl fmt::Display for EventTime {
    /// RFC 3339 in UTC with as many fractional digits as needed (`2026-11-24T08:00:00.25Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(dt) => f.write_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            None => write!(f, "{}us", self.0),
        }
    }
}

impl FromStr for EventTime {
    type Err = String;
    /// RFC 3339; also reads back everything `Display` writes (signed years beyond 9999 such as
    /// `+148108-07-06T14:00:27Z` near [`EventTime::MAX`], and `<n>us`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventTime::parse_rfc3339(s)
            .or_else(|| {
                let dt = s.parse::<chrono::DateTime<chrono::Utc>>().ok()?;
                EventTime::from_micros(dt.timestamp_micros())
            })
            .or_else(|| s.strip_suffix("us")?.parse().ok().and_then(EventTime::from_micros))
            .ok_or_else(|| format!("{s:?} is not an RFC 3339 timestamp such as 2026-11-24T08:00:00Z"))
    }
}

/// RFC 3339 text in human-readable formats (JSON, TOML); microseconds since the epoch in binary ones.
impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_string()) } else { s.serialize_i64(self.0) }
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let us = i64::deserialize(d)?;
            EventTime::from_micros(us).ok_or_else(|| serde::de::Error::custom(format!("{us} µs is out of range")))
        }
    }
}

/// A non-negative span of time with microsecond precision, at most [`Duration::MAX`] (2^60 µs, about
/// 36,000 years). Written in specs as `"250ms"`, `"30s"`, `"5m"`, `"1h 30m"`, `"1d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(i64);

impl Duration {
    /// No time at all.
    pub const ZERO: Duration = Duration(0);
    /// The longest representable duration.
    pub const MAX: Duration = Duration(1 << 60);

    /// A duration of `us` microseconds, or `None` if negative or above [`Duration::MAX`].
    pub const fn from_micros(us: i64) -> Option<Self> {
        if us < 0 || us > Self::MAX.0 { None } else { Some(Duration(us)) }
    }

    /// A duration of `ms` milliseconds (panics above [`Duration::MAX`]; for constants).
    pub const fn from_millis(ms: u32) -> Self {
        Duration(ms as i64 * 1_000)
    }

    /// A duration of `s` seconds (for constants; every `u32` fits).
    pub const fn from_secs(s: u32) -> Self {
        Duration(s as i64 * 1_000_000)
    }

    /// Microseconds in this duration.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whether this is [`Duration::ZERO`].
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The same span as a `std::time::Duration`.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.unsigned_abs())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.to_std()))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let std = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"250ms\", \"30s\", \"5m\", \"1h 30m\""))?;
        if std.subsec_nanos() % 1_000 != 0 {
            return Err(format!("{s:?} is finer than a microsecond"));
        }
        i64::try_from(std.as_micros())
            .ok()
            .and_then(Duration::from_micros)
            .ok_or_else(|| format!("{s:?} is longer than the maximum of {}", Duration::MAX))
    }
}

/// Text (`"30s"`) in human-readable formats; microseconds in binary ones.
impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_string()) } else { s.serialize_i64(self.0) }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let us = i64::deserialize(d)?;
            Duration::from_micros(us).ok_or_else(|| serde::de::Error::custom(format!("{us} µs is not a duration")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        let cases = [
            ("250ms", 250_000, "250ms"),
            ("30s", 30_000_000, "30s"),
            ("5m", 300_000_000, "5m"),
            ("1h 30m", 5_400_000_000, "1h 30m"),
            ("90s", 90_000_000, "1m 30s"),
            ("0s", 0, "0s"),
            ("1d", 86_400_000_000, "1day"),
        ];
        for (text, us, printed) in cases {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_micros(), us, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Duration>().unwrap(), d, "round trip of {text}");
        }
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for bad in ["5 mins ago", "abc", "", "-5s", "1ns", "5"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        let t = EventTime::parse_rfc3339("2026-11-24T10:00:00.123456789+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-24T08:00:00.123456Z");
        assert_eq!(EventTime::parse_rfc3339("1970-01-01T00:00:01Z").unwrap().as_micros(), 1_000_000);
        assert!(EventTime::parse_rfc3339("2026-11-24 10:00").is_none());
    }

    #[test]
    fn time_arithmetic_is_bounded() {
        assert_eq!(EventTime::MAX.saturating_add(Duration::MAX), EventTime::MAX);
        assert_eq!(EventTime::MIN.saturating_sub(Duration::MAX), EventTime::MIN);
        assert_eq!(EventTime::from_micros(EventTime::MAX.as_micros() + 1), None);
        let a = EventTime::from_secs(10).unwrap();
        assert_eq!(a.since(EventTime::from_secs(4).unwrap()), Some(Duration::from_secs(6)));
        assert_eq!(EventTime::from_secs(4).unwrap().since(a), None);
    }

    #[test]
    fn display_reads_back_at_the_extremes() {
        for t in
            [EventTime::MIN, EventTime::MAX, EventTime::UNIX_EPOCH, EventTime(1_700_000_000_123_456), EventTime(-1)]
        {
            let text = t.to_string();
            assert_eq!(text.parse::<EventTime>(), Ok(t), "{text}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EventTime>(&json).unwrap(), t, "{json}");
        }
    }
}
