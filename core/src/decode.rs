//! Decoding one event from JSON bytes into a typed [`Event`], with one reason code per failure class.
//!
//! Both layers decode with this code, so an event the stream service dead-letters is dead-lettered by the
//! batch layer too, with the same [`ReasonCode`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::aggregate::Num;
use crate::time::{Duration, EventTime};

/// Why an event could not be decoded. The snake_case names are stable: they are stored with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Zero bytes, or only white space.
    Empty,
    /// Larger than the schema's `max_event_bytes`.
    Oversize,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not well-formed JSON (includes a byte-order mark and trailing garbage).
    NotJson,
    /// Arrays/objects nested deeper than [`MAX_NESTING`].
    TooDeep,
    /// JSON, but not an object.
    NotObject,
    /// The same key twice in the object.
    DuplicateField,
    /// A required field is absent.
    MissingField,
    /// A required field is `null`.
    NullField,
    /// A field has the wrong JSON type (or a fraction in an integer field).
    WrongType,
    /// The event-time field does not parse in the declared format.
    BadTime,
    /// Event time before 1970-01-01 or after 9999-12-31.
    TimeOutOfRange,
    /// NaN or an infinite number.
    NonFinite,
    /// An integer outside the signed 64-bit range.
    IntegerOverflow,
    /// Event time later than the receive time plus `max_future_skew`.
    FutureEvent,
}

impl ReasonCode {
    /// Every code, in declaration order.
    pub const ALL: [ReasonCode; 15] = [
        ReasonCode::Empty,
        ReasonCode::Oversize,
        ReasonCode::InvalidUtf8,
        ReasonCode::NotJson,
        ReasonCode::TooDeep,
        ReasonCode::NotObject,
        ReasonCode::DuplicateField,
        ReasonCode::MissingField,
        ReasonCode::NullField,
        ReasonCode::WrongType,
        ReasonCode::BadTime,
        ReasonCode::TimeOutOfRange,
        ReasonCode::NonFinite,
        ReasonCode::IntegerOverflow,
        ReasonCode::FutureEvent,
    ];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Empty => "empty",
            ReasonCode::Oversize => "oversize",
            ReasonCode::InvalidUtf8 => "invalid_utf8",
            ReasonCode::NotJson => "not_json",
            ReasonCode::TooDeep => "too_deep",
            ReasonCode::NotObject => "not_object",
            ReasonCode::DuplicateField => "duplicate_field",
            ReasonCode::MissingField => "missing_field",
            ReasonCode::NullField => "null_field",
            ReasonCode::WrongType => "wrong_type",
            ReasonCode::BadTime => "bad_time",
            ReasonCode::TimeOutOfRange => "time_out_of_range",
            ReasonCode::NonFinite => "non_finite",
            ReasonCode::IntegerOverflow => "integer_overflow",
            ReasonCode::FutureEvent => "future_event",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event that could not be decoded: the reason code, the field (if one is to blame) and a
/// human-readable detail. The detail never quotes more than 64 bytes of the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}: {detail}", field.as_ref().map(|f| format!(" (field {f:?})")).unwrap_or_default())]
pub struct DecodeError {
    /// The class of failure.
    pub reason: ReasonCode,
    /// The field to blame, if any.
    pub field: Option<String>,
    /// What exactly is wrong.
    pub detail: String,
}

impl DecodeError {
    fn new(reason: ReasonCode, detail: impl Into<String>) -> Self {
        DecodeError { reason, field: None, detail: detail.into() }
    }

    fn field(reason: ReasonCode, field: &str, detail: impl Into<String>) -> Self {
        DecodeError { reason, field: Some(field.to_owned()), detail: detail.into() }
    }
}

/// How the event-time field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// An RFC 3339 string, any offset.
    Rfc3339,
    /// Seconds since the epoch (integer or fractional number).
    EpochS,
    /// Milliseconds since the epoch (integer or fractional number).
    EpochMs,
    /// Microseconds since the epoch (integer).
    EpochUs,
}

/// The type of a numeric value field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// Signed 64-bit integer; a JSON number with a fraction is `wrong_type`.
    Int,
    /// 64-bit float; integers are accepted and converted.
    Float,
}

/// A decoded event. `dims` and `values` are in the order of the schema's `dimensions` and `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event id (an integer id is kept as its decimal text).
    pub id: Box<str>,
    /// Event time.
    pub time: EventTime,
    /// Dimension values (strings; integers and booleans as their JSON text).
    pub dims: Vec<Box<str>>,
    /// Value fields.
    pub values: Vec<Num>,
}

/// What the decoder needs from the pipeline spec.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    /// Field holding the event id.
    pub id_field: String,
    /// Field holding the event time.
    pub time_field: String,
    /// Format of the event-time field.
    pub time_format: TimeFormat,
    /// Dimension fields, in order.
    pub dimensions: Vec<String>,
    /// Value fields and their types, in order.
    pub values: Vec<(String, ValueType)>,
    /// Larger payloads are `oversize`.
    pub max_event_bytes: usize,
    /// Events later than the receive time plus this are `future_event`.
    pub max_future_skew: Duration,
}

/// Events nesting arrays/objects deeper than this are `too_deep`.
pub const MAX_NESTING: usize = 32;

/// Whether `text` nests arrays/objects deeper than `limit` (brackets inside strings do not count).
fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    // fast path: with no more than `limit` opening brackets in all, nothing can nest deeper
    if text.iter().filter(|&&b| b == b'[' || b == b'{').count() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The latest event time the decoder accepts, 9999-12-31T23:59:59.999999Z in µs (the earliest is the epoch).
pub const MAX_EVENT_TIME_US: i64 = 253_402_300_799_999_999;

/// Which schema slot a key fills.
#[derive(Clone, Copy)]
enum Slot {
    Id,
    Time,
    Dim(usize),
    Value(usize),
}

/// One scalar JSON value, or a note that it was an array/object.
enum Scalar<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Compound(&'static str),
}

impl Scalar<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::I64(_) | Scalar::U64(_) | Scalar::F64(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Compound(t) => t,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound("an object"))
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A map key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The raw slots of one event, filled while walking the object.
struct Collected<'a> {
    id: Option<Scalar<'a>>,
    time: Option<Scalar<'a>>,
    dims: Vec<Option<Scalar<'a>>>,
    values: Vec<Option<Scalar<'a>>>,
    /// The first key that repeats; reported after parsing succeeds.
    duplicate: Option<String>,
}

struct EventSeed<'s> {
    schema: &'s EventSchema,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Option<Collected<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    /// `None` when the JSON value is not an object.
    type Value = Option<Collected<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let s = self.schema;
        let mut c = Collected {
            id: None,
            time: None,
            dims: (0..s.dimensions.len()).map(|_| None).collect(),
            values: (0..s.values.len()).map(|_| None).collect(),
            duplicate: None,
        };
        // keys outside the schema seen so far (a schema key repeats when its slot is already filled)
        let mut others: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let slot = if key == s.id_field {
                Some(Slot::Id)
            } else if key == s.time_field {
                Some(Slot::Time)
            } else if let Some(i) = s.dimensions.iter().position(|d| *d == key) {
                Some(Slot::Dim(i))
            } else {
                s.values.iter().position(|(v, _)| *v == key).map(Slot::Value)
            };
            let target = match slot {
                None => {
                    map.next_value::<IgnoredAny>()?;
                    if c.duplicate.is_none() && others.contains(&key) {
                        c.duplicate = Some(key.to_string());
                    }
                    others.push(key);
                    continue;
                }
                Some(Slot::Id) => &mut c.id,
                Some(Slot::Time) => &mut c.time,
                Some(Slot::Dim(i)) => &mut c.dims[i],
                Some(Slot::Value(i)) => &mut c.values[i],
            };
            let v: Scalar<'de> = map.next_value()?;
            if target.is_some() && c.duplicate.is_none() {
                c.duplicate = Some(key.to_string());
            }
            *target = Some(v);
        }
        Ok(Some(c))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn classify_json_error(e: &serde_json::Error, text: &str) -> DecodeError {
    let msg = e.to_string();
    if msg.contains("recursion limit") {
        return DecodeError::new(ReasonCode::TooDeep, msg);
    }
    if msg.contains("number out of range") {
        return DecodeError::new(ReasonCode::NonFinite, msg);
    }
    // Producers such as Python's json module write bare NaN / Infinity tokens.
    if e.is_syntax() {
        let at = text.lines().nth(e.line().saturating_sub(1)).and_then(|l| l.get(e.column().saturating_sub(1)..));
        if let Some(rest) = at {
            let rest = rest.trim_start_matches('-');
            if rest.starts_with("NaN") || rest.starts_with("Infinity") {
                return DecodeError::new(ReasonCode::NonFinite, format!("bare non-finite number: {msg}"));
            }
        }
    }
    if text.starts_with('\u{feff}') {
        return DecodeError::new(ReasonCode::NotJson, "starts with a UTF-8 byte-order mark");
    }
    DecodeError::new(ReasonCode::NotJson, msg)
}

fn required<'a>(v: Option<Scalar<'a>>, field: &str) -> Result<Scalar<'a>, DecodeError> {
    match v {
        None => Err(DecodeError::field(ReasonCode::MissingField, field, "required field is absent")),
        Some(Scalar::Null) => Err(DecodeError::field(ReasonCode::NullField, field, "required field is null")),
        Some(v) => Ok(v),
    }
}

fn non_finite_string(s: &str) -> bool {
    matches!(s.trim().to_ascii_lowercase().trim_start_matches(['-', '+']), "nan" | "inf" | "infinity")
}

fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn float_to_micros(x: f64, scale: f64, field: &str) -> Result<i64, DecodeError> {
    if !x.is_finite() {
        return Err(DecodeError::field(ReasonCode::NonFinite, field, "event time is not finite"));
    }
    let us = (x * scale).round();
    if us.abs() > 9.2e18 {
        return Err(DecodeError::field(ReasonCode::TimeOutOfRange, field, format!("{x} is out of range")));
    }
    Ok(us as i64)
}

impl EventSchema {
    /// Decodes one payload. `received_at` is when the event reached tidemark (the Kafka timestamp or ingest
    /// time); events later than it by more than `max_future_skew` are refused.
    pub fn decode(&self, bytes: &[u8], received_at: EventTime) -> Result<Event, DecodeError> {
        if bytes.len() > self.max_event_bytes {
            return Err(DecodeError::new(
                ReasonCode::Oversize,
                format!("{} bytes exceeds max_event_bytes = {}", bytes.len(), self.max_event_bytes),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            DecodeError::new(ReasonCode::InvalidUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to()))
        })?;
        if text.trim().is_empty() {
            return Err(DecodeError::new(ReasonCode::Empty, "empty payload"));
        }
        if nesting_exceeds(bytes, MAX_NESTING) {
            return Err(DecodeError::new(ReasonCode::TooDeep, format!("nested deeper than {MAX_NESTING} levels")));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let collected = EventSeed { schema: self }
            .deserialize(&mut de)
            .and_then(|c| de.end().map(|()| c))
            .map_err(|e| classify_json_error(&e, text))?;
        let c = collected.ok_or_else(|| DecodeError::new(ReasonCode::NotObject, "the event is not a JSON object"))?;
        if let Some(key) = c.duplicate {
            return Err(DecodeError::field(ReasonCode::DuplicateField, &key, "key appears more than once"));
        }

        let id = match required(c.id, &self.id_field)? {
            Scalar::Str(s) if !s.is_empty() => s.into_owned().into_boxed_str(),
            Scalar::I64(i) => i.to_string().into_boxed_str(),
            Scalar::U64(u) => u.to_string().into_boxed_str(),
            other => {
                return Err(DecodeError::field(
                    ReasonCode::WrongType,
                    &self.id_field,
                    format!("event id must be a non-empty string or an integer, found {}", other.type_name()),
                ));
            }
        };
        let time = self.decode_time(required(c.time, &self.time_field)?)?;
        if time.as_micros() < 0 || time.as_micros() > MAX_EVENT_TIME_US {
            return Err(DecodeError::field(
                ReasonCode::TimeOutOfRange,
                &self.time_field,
                format!("{time} is outside 1970-01-01 .. 9999-12-31"),
            ));
        }
        let limit = received_at.saturating_add(self.max_future_skew);
        if time > limit {
            return Err(DecodeError::field(
                ReasonCode::FutureEvent,
                &self.time_field,
                format!("{time} is more than max_future_skew = {} after {received_at}", self.max_future_skew),
            ));
        }

        let mut dims = Vec::with_capacity(self.dimensions.len());
        for (name, v) in self.dimensions.iter().zip(c.dims) {
            dims.push(match required(v, name)? {
                Scalar::Str(s) => s.into_owned().into_boxed_str(),
                Scalar::I64(i) => i.to_string().into_boxed_str(),
                Scalar::U64(u) => u.to_string().into_boxed_str(),
                Scalar::Bool(b) => (if b { "true" } else { "false" }).into(),
                other => {
                    return Err(DecodeError::field(
                        ReasonCode::WrongType,
                        name,
                        format!("dimension must be a string, integer or boolean, found {}", other.type_name()),
                    ));
                }
            });
        }
        let mut values = Vec::with_capacity(self.values.len());
        for ((name, ty), v) in self.values.iter().zip(c.values) {
            values.push(Self::decode_value(name, *ty, required(v, name)?)?);
        }
        Ok(Event { id, time, dims, values })
    }

    fn decode_value(name: &str, ty: ValueType, v: Scalar<'_>) -> Result<Num, DecodeError> {
        let overflow = |x: &dyn fmt::Display| {
            DecodeError::field(
                ReasonCode::IntegerOverflow,
                name,
                format!("{x} does not fit in a signed 64-bit integer"),
            )
        };
        match (ty, v) {
            (ValueType::Int, Scalar::I64(i)) => Ok(Num::Int(i)),
            (ValueType::Int, Scalar::U64(u)) => i64::try_from(u).map(Num::Int).map_err(|_| overflow(&u)),
            (ValueType::Int, Scalar::F64(f)) if f.fract() == 0.0 && f.is_finite() => {
                // serde_json reads integers beyond the i64/u64 ranges as floats, so an integral float outside
                // (-2^63, 2^63) may have been an integer literal: -9223372036854775809 rounds to exactly
                // -2^63. Such values are overflows; inside the open range a float can only come from a
                // literal with a fraction or an exponent.
                if f > -9_223_372_036_854_775_808.0 && f < 9_223_372_036_854_775_808.0 {
                    Err(DecodeError::field(
                        ReasonCode::WrongType,
                        name,
                        format!("{f} is written as a float in an int field"),
                    ))
                } else {
                    Err(overflow(&f))
                }
            }
            (ValueType::Int, Scalar::F64(f)) => {
                Err(DecodeError::field(ReasonCode::WrongType, name, format!("{f} has a fraction; the field is int")))
            }
            (ValueType::Float, Scalar::I64(i)) => Ok(Num::Float(i as f64)),
            (ValueType::Float, Scalar::U64(u)) => Ok(Num::Float(u as f64)),
            (ValueType::Float, Scalar::F64(f)) if f.is_finite() => Ok(Num::Float(f)),
            (_, Scalar::F64(f)) => Err(DecodeError::field(ReasonCode::NonFinite, name, format!("{f} is not finite"))),
            (_, Scalar::Str(s)) if non_finite_string(&s) => Err(DecodeError::field(
                ReasonCode::NonFinite,
                name,
                format!("{:?} is not a finite number", excerpt(&s)),
            )),
            (_, other) => Err(DecodeError::field(
                ReasonCode::WrongType,
                name,
                format!("expected a number, found {}", other.type_name()),
            )),
        }
    }

    fn decode_time(&self, v: Scalar<'_>) -> Result<EventTime, DecodeError> {
        let f = self.time_field.as_str();
        let wrong = |found: &str| {
            DecodeError::field(
                ReasonCode::WrongType,
                f,
                format!("event time in format {:?} cannot be {found}", self.time_format),
            )
        };
        let (scale, us) = match self.time_format {
            TimeFormat::Rfc3339 => {
                return match v {
                    Scalar::Str(s) => EventTime::parse_rfc3339(&s).ok_or_else(|| {
                        DecodeError::field(ReasonCode::BadTime, f, format!("{:?} is not RFC 3339", excerpt(&s)))
                    }),
                    other => Err(wrong(other.type_name())),
                };
            }
            TimeFormat::EpochS => (1e6, 1_000_000i64),
            TimeFormat::EpochMs => (1e3, 1_000),
            TimeFormat::EpochUs => (1.0, 1),
        };
        let micros = match v {
            Scalar::I64(i) => i.checked_mul(us),
            Scalar::U64(u) => i64::try_from(u).ok().and_then(|i| i.checked_mul(us)),
            Scalar::F64(x) if self.time_format != TimeFormat::EpochUs => Some(float_to_micros(x, scale, f)?),
            Scalar::F64(x) => {
                return Err(DecodeError::field(ReasonCode::BadTime, f, format!("{x}: epoch_us must be an integer")));
            }
            Scalar::Str(s) => {
                return Err(DecodeError::field(
                    ReasonCode::BadTime,
                    f,
                    format!("{:?} is a string; format {:?} expects a number", excerpt(&s), self.time_format),
                ));
            }
            other => return Err(wrong(other.type_name())),
        };
        micros
            .and_then(EventTime::from_micros)
            .ok_or_else(|| DecodeError::field(ReasonCode::TimeOutOfRange, f, "event time is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(format: TimeFormat) -> EventSchema {
        EventSchema {
            id_field: "id".into(),
            time_field: "ts".into(),
            time_format: format,
            dimensions: vec!["page".into(), "country".into()],
            values: vec![("latency_ms".into(), ValueType::Int), ("bytes".into(), ValueType::Float)],
            max_event_bytes: 512,
            max_future_skew: Duration::from_secs(60),
        }
    }

    fn now() -> EventTime {
        EventTime::parse_rfc3339("2026-11-24T08:00:00Z").unwrap()
    }

    fn ok(format: TimeFormat, json: &str) -> Event {
        schema(format).decode(json.as_bytes(), now()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn err(json: &[u8]) -> DecodeError {
        schema(TimeFormat::Rfc3339).decode(json, now()).expect_err(&String::from_utf8_lossy(json))
    }

    const GOOD: &str = r#"{"id":"e1","ts":"2026-11-24T07:59:00.5Z","page":"/a","country":"DE","latency_ms":12,"bytes":3.5,"extra":[1,{"x":2}]}"#;

    #[test]
    fn decodes_a_good_event() {
        let e = ok(TimeFormat::Rfc3339, GOOD);
        assert_eq!(&*e.id, "e1");
        assert_eq!(e.time.to_string(), "2026-11-24T07:59:00.500Z");
        assert_eq!(e.dims, vec!["/a".into(), "DE".into()]);
        assert_eq!(e.values, vec![Num::Int(12), Num::Float(3.5)]);
    }

    #[test]
    fn epoch_formats() {
        let base = r#""page":"/a","country":7,"latency_ms":1,"bytes":2"#;
        let want = EventTime::parse_rfc3339("2026-11-24T07:59:00.25Z").unwrap();
        for (format, ts) in [
            (TimeFormat::EpochS, "1795507140.25"),
            (TimeFormat::EpochMs, "1795507140250"),
            (TimeFormat::EpochMs, "1795507140250.0"),
            (TimeFormat::EpochUs, "1795507140250000"),
        ] {
            let e = ok(format, &format!(r#"{{"id":5,"ts":{ts},{base}}}"#));
            assert_eq!(e.time, want, "{format:?} {ts}");
            assert_eq!(&*e.id, "5");
            assert_eq!(e.dims[1].as_ref(), "7");
            assert_eq!(e.values[1], Num::Float(2.0));
        }
        let e = ok(TimeFormat::EpochS, &format!(r#"{{"id":5,"ts":1795507140,{base}}}"#));
        assert_eq!(e.time.as_micros(), 1_795_507_140_000_000);
    }

    #[test]
    fn every_reason_code_has_a_case() {
        let long = format!(r#"{{"id":"e","pad":"{}"}}"#, "x".repeat(600));
        let cases: Vec<(Vec<u8>, ReasonCode, Option<&str>)> = vec![
            (b"".to_vec(), ReasonCode::Empty, None),
            (b"  \n".to_vec(), ReasonCode::Empty, None),
            (long.into_bytes(), ReasonCode::Oversize, None),
            (b"{\"id\":\"\xff\"}".to_vec(), ReasonCode::InvalidUtf8, None),
            (br#"{"id":"e1","ts":"#.to_vec(), ReasonCode::NotJson, None),
            ("\u{feff}{}".as_bytes().to_vec(), ReasonCode::NotJson, None),
            (br#"{"id":"e1"} trailing"#.to_vec(), ReasonCode::NotJson, None),
            (format!(r#"{{"id":{}{}}}"#, "[".repeat(200), "]".repeat(200)).into_bytes(), ReasonCode::TooDeep, None),
            (format!(r#"{{"x":{}{},"ts":"2026-11-24T07:00:00Z"}}"#, "[".repeat(40), "]".repeat(40)).into_bytes(), ReasonCode::TooDeep, None),
            // brackets inside strings are not nesting
            (format!(r#"{{"x":"{}\"{}","ts":"2026-11-24T07:00:00Z"}}"#, "[".repeat(40), "{".repeat(40)).into_bytes(), ReasonCode::MissingField, Some("id")),
            (br#"[1,2]"#.to_vec(), ReasonCode::NotObject, None),
            (br#""str""#.to_vec(), ReasonCode::NotObject, None),
            (br#"{"id":"a","id":"b"}"#.to_vec(), ReasonCode::DuplicateField, Some("id")),
            (br#"{"x":1,"x":2,"id":"a"}"#.to_vec(), ReasonCode::DuplicateField, Some("x")),
            (br#"{"ts":"2026-11-24T07:00:00Z"}"#.to_vec(), ReasonCode::MissingField, Some("id")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1}"#.to_vec(), ReasonCode::MissingField, Some("bytes")),
            (br#"{"id":null,"ts":"2026-11-24T07:00:00Z"}"#.to_vec(), ReasonCode::NullField, Some("id")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":null}"#.to_vec(), ReasonCode::NullField, Some("page")),
            (br#"{"id":"","ts":"2026-11-24T07:00:00Z"}"#.to_vec(), ReasonCode::WrongType, Some("id")),
            (br#"{"id":1.5,"ts":"2026-11-24T07:00:00Z"}"#.to_vec(), ReasonCode::WrongType, Some("id")),
            (br#"{"id":"e","ts":12}"#.to_vec(), ReasonCode::WrongType, Some("ts")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":{"a":1},"country":"DE"}"#.to_vec(), ReasonCode::WrongType, Some("page")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":"12","bytes":1}"#.to_vec(), ReasonCode::WrongType, Some("latency_ms")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1.5,"bytes":1}"#.to_vec(), ReasonCode::WrongType, Some("latency_ms")),
            (br#"{"id":"e","ts":"yesterday"}"#.to_vec(), ReasonCode::BadTime, Some("ts")),
            (br#"{"id":"e","ts":"1969-12-31T23:59:59Z"}"#.to_vec(), ReasonCode::TimeOutOfRange, Some("ts")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1,"bytes":NaN}"#.to_vec(), ReasonCode::NonFinite, None),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1,"bytes":-Infinity}"#.to_vec(), ReasonCode::NonFinite, None),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1,"bytes":"NaN"}"#.to_vec(), ReasonCode::NonFinite, Some("bytes")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":1,"bytes":1e999}"#.to_vec(), ReasonCode::NonFinite, None),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":9223372036854775808,"bytes":1}"#.to_vec(), ReasonCode::IntegerOverflow, Some("latency_ms")),
            (br#"{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":-99999999999999999999,"bytes":1}"#.to_vec(), ReasonCode::IntegerOverflow, Some("latency_ms")),
            (br#"{"id":"e","ts":"2026-11-24T08:01:00.000001Z"}"#.to_vec(), ReasonCode::FutureEvent, Some("ts")),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (payload, reason, field) in cases {
            let e = err(&payload);
            assert_eq!(e.reason, reason, "{}: {e}", String::from_utf8_lossy(&payload));
            assert_eq!(e.field.as_deref(), field, "{}: {e}", String::from_utf8_lossy(&payload));
            covered.insert(reason);
        }
        assert_eq!(covered.len(), ReasonCode::ALL.len(), "a reason code has no test case");
    }

    #[test]
    fn exactly_max_future_skew_is_accepted() {
        let e = ok(
            TimeFormat::Rfc3339,
            r#"{"id":"e","ts":"2026-11-24T08:01:00Z","page":"/","country":"DE","latency_ms":1,"bytes":1}"#,
        );
        assert_eq!(e.time, now().saturating_add(Duration::from_secs(60)));
    }

    /// Found by the malformed-event corpus (issue 8): an integer literal just below i64::MIN reads as the
    /// float -2^63, which was taken for a float written in an int field.
    #[test]
    fn issue_8_integers_just_below_i64_min_are_overflows() {
        for (ms, reason) in [
            ("-9223372036854775809", ReasonCode::IntegerOverflow),
            ("-9223372036854776832", ReasonCode::IntegerOverflow),
            ("-9223372036854775808", ReasonCode::WrongType), // fits: decodes, so `err` is not used below
            ("9223372036854775807.0", ReasonCode::IntegerOverflow), // the float 2^63
            ("-9223372036854774784.0", ReasonCode::WrongType), // the float nearest above -2^63
            ("9223372036854774784.0", ReasonCode::WrongType),
        ] {
            let json = format!(
                r#"{{"id":"e","ts":"2026-11-24T07:00:00Z","page":"/","country":"DE","latency_ms":{ms},"bytes":1}}"#
            );
            if ms == "-9223372036854775808" {
                assert_eq!(ok(TimeFormat::Rfc3339, &json).values[0], Num::Int(i64::MIN));
                continue;
            }
            let e = err(json.as_bytes());
            assert_eq!((e.reason, e.field.as_deref()), (reason, Some("latency_ms")), "{ms}: {e}");
        }
    }

    #[test]
    fn details_do_not_quote_long_payloads() {
        let json = format!(r#"{{"id":"e","ts":"{}"}}"#, "9".repeat(300));
        let e = err(json.as_bytes());
        assert_eq!(e.reason, ReasonCode::BadTime);
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn reason_codes_serialize_as_their_names() {
        for r in ReasonCode::ALL {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.as_str()));
        }
    }
}
