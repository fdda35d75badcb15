//! How values cross to Postgres: times as µs since the Unix epoch (SQL fragments that convert exactly
//! within the stored range and clamp outside it, and a binary `timestamptz` for COPY), and JSON text as a
//! binary `jsonb`.

use tidemark_core::EventTime;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Postgres' timestamptz covers 4713 BC to 294276 AD; tidemark keeps every stored time within years
/// 1..=9999 and lets the two bounds stand for [`EventTime::MIN`] / [`EventTime::MAX`] (e.g. the watermark
/// of an early pane before any watermark exists), so those round-trip exactly.
const PG_MIN_US: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const PG_MAX_US: i64 = 253_402_300_800_000_000; // 10000-01-01T00:00:00Z

/// µs since the epoch (a bigint expression) as timestamptz: exact within the bounds, clamped outside.
const TS: &str = "(timestamptz 'epoch' + LEAST(GREATEST(({}), -62135596800000000), 253402300800000000) \
                  * interval '1 microsecond')";
/// timestamptz as µs since the epoch, exactly (extract returns numeric); the bounds read back as
/// `EventTime::MIN` / `EventTime::MAX`.
const US: &str = "(CASE WHEN ({}) <= timestamptz '0001-01-01 00:00:00+00' THEN -4611686018427387904 \
                  WHEN ({}) >= timestamptz '10000-01-01 00:00:00+00' THEN 4611686018427387904 \
                  ELSE (extract(epoch from {}) * 1000000)::bigint END)";

/// Microseconds clamped to the stored range, so that a range read may pass `EventTime::MIN` /
/// `EventTime::MAX`.
pub(super) fn pg_clamp(t: EventTime) -> i64 {
    t.as_micros().clamp(PG_MIN_US, PG_MAX_US)
}

pub(super) fn ts(expr: &str) -> String {
    TS.replace("{}", expr)
}

pub(super) fn us(expr: &str) -> String {
    US.replace("{}", expr)
}

/// µs since the Unix epoch sent as a binary `timestamptz`, clamped like [`TS`] (same values, no SQL).
#[derive(Debug, Clone, Copy)]
pub(super) struct PgTime(pub(super) i64);

/// 2000-01-01T00:00:00Z, Postgres' own epoch, in Unix µs.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for PgTime {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i64(self.0.clamp(PG_MIN_US, PG_MAX_US) - PG_EPOCH_US);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// A binary `timestamptz` read as µs since the Unix epoch, with the bounds of [`US`]: at or before
/// 0001-01-01 (or `-infinity`) it reads as `EventTime::MIN`, at or after 10000-01-01 (or `infinity`) as
/// `EventTime::MAX` (the same values as the SQL conversion, without its numeric arithmetic on the server).
impl<'a> tokio_postgres::types::FromSql<'a> for PgTime {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| format!("timestamptz of {} bytes", raw.len()))?;
        let unix = i64::from_be_bytes(bytes).saturating_add(PG_EPOCH_US);
        Ok(PgTime(if unix <= PG_MIN_US {
            EventTime::MIN.as_micros()
        } else if unix >= PG_MAX_US {
            EventTime::MAX.as_micros()
        } else {
            unix
        }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// JSON text sent as a binary `jsonb` (version byte 1, then the text): parsed once, by the COPY.
#[derive(Debug, Clone, Copy)]
pub(super) struct Jsonb<'a>(pub(super) &'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::{FromSql, ToSql, Type};

    use super::*;

    fn read(pg_us: i64) -> i64 {
        PgTime::from_sql(&Type::TIMESTAMPTZ, &pg_us.to_be_bytes()).unwrap().0
    }

    /// Binary reads give the values of the SQL conversion `US`: exact inside the stored range, the bounds
    /// (and the infinities) as `EventTime::MIN` / `EventTime::MAX`; what `PgTime` writes reads back.
    #[test]
    fn binary_times_read_like_the_sql_conversion() {
        assert_eq!(read(0), PG_EPOCH_US);
        assert_eq!(read(-PG_EPOCH_US + 1_767_225_600_000_000), 1_767_225_600_000_000, "2026-01-01");
        assert_eq!(read(i64::MAX), EventTime::MAX.as_micros());
        assert_eq!(read(i64::MIN), EventTime::MIN.as_micros());
        assert_eq!(read(PG_MIN_US - PG_EPOCH_US), EventTime::MIN.as_micros(), "0001-01-01 is the lower bound");
        assert_eq!(read(PG_MAX_US - PG_EPOCH_US), EventTime::MAX.as_micros(), "10000-01-01 is the upper bound");
        assert_eq!(read(PG_MAX_US - PG_EPOCH_US - 1), PG_MAX_US - 1);
        for t in [EventTime::MIN.as_micros(), -1, 0, 1_767_225_600_123_456, EventTime::MAX.as_micros()] {
            let mut out = bytes::BytesMut::new();
            PgTime(t).to_sql(&Type::TIMESTAMPTZ, &mut out).unwrap();
            let back = PgTime::from_sql(&Type::TIMESTAMPTZ, &out).unwrap().0;
            assert_eq!(back, t, "{t}");
        }
        assert!(PgTime::from_sql(&Type::TIMESTAMPTZ, &[0; 4]).is_err(), "a short value is an error");
    }
}
