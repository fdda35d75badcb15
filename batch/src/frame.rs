//! The decoded-events frame: the polars `DataFrame` the plan runs on, and its builder.
//!
//! | column | dtype | meaning |
//! |---|---|---|
//! | `event_id` | String | decoded event id |
//! | `event_time` | Int64 | event time, µs since the epoch |
//! | `dim{i}` | String | `Event::dims[i]` (schema order) |
//! | `val{i}` | Int64 / Float64 | `Event::values[i]` (schema order and type) |
//!
//! A frame built with provenance also has `__received` (Int64 µs), `__source` (String), `__partition`
//! (Int32) and `__offset` (Int64): [`crate::plan::dedupe_by_id`] sorts by them so that, among copies of one
//! event id, the earliest received copy (then the lowest source coordinates) wins.

use polars::prelude::*;
use tidemark_core::{Event, EventSchema, Num, SourceCoordinates, ValueType};

/// Column: event id.
pub const EVENT_ID: &str = "event_id";
/// Column: event time in µs.
pub const EVENT_TIME: &str = "event_time";
/// Provenance column: receive time in µs.
pub const RECEIVED: &str = "__received";
/// Provenance column: topic or file.
pub const SOURCE: &str = "__source";
/// Provenance column: partition.
pub const PARTITION: &str = "__partition";
/// Provenance column: offset or line.
pub const OFFSET: &str = "__offset";

/// The column of dimension `i` (index into `Event::dims`).
pub fn dim_column(i: usize) -> String {
    format!("dim{i}")
}

/// The column of value field `i` (index into `Event::values`).
pub fn value_column(i: usize) -> String {
    format!("val{i}")
}

enum ValueBuilder {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

struct Provenance {
    received: Vec<i64>,
    source: StringChunkedBuilder,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

/// Builds an events frame column by column, one event at a time.
pub struct EventFrameBuilder {
    ids: StringChunkedBuilder,
    times: Vec<i64>,
    dims: Vec<StringChunkedBuilder>,
    values: Vec<ValueBuilder>,
    provenance: Option<Provenance>,
}

impl std::fmt::Debug for EventFrameBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFrameBuilder").field("rows", &self.times.len()).finish_non_exhaustive()
    }
}

impl EventFrameBuilder {
    /// An empty builder for events of `schema`; `provenance` adds the columns that order duplicates.
    pub fn new(schema: &EventSchema, provenance: bool) -> Self {
        EventFrameBuilder {
            ids: StringChunkedBuilder::new(EVENT_ID.into(), 0),
            times: Vec::new(),
            dims: (0..schema.dimensions.len()).map(|i| StringChunkedBuilder::new(dim_column(i).into(), 0)).collect(),
            values: schema
                .values
                .iter()
                .map(|(_, ty)| match ty {
                    ValueType::Int => ValueBuilder::Int(Vec::new()),
                    ValueType::Float => ValueBuilder::Float(Vec::new()),
                })
                .collect(),
            provenance: provenance.then(|| Provenance {
                received: Vec::new(),
                source: StringChunkedBuilder::new(SOURCE.into(), 0),
                partition: Vec::new(),
                offset: Vec::new(),
            }),
        }
    }

    /// Number of events pushed.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Appends one event (decoded with the schema the builder was made for). Values of the wrong numeric
    /// type are converted (an int into a float column; a float into an int column truncates), which a
    /// decoded event never needs. With provenance, the event sorts first among copies of its id.
    pub fn push(&mut self, e: &Event) {
        self.push_columns(e);
        if let Some(p) = &mut self.provenance {
            p.received.push(i64::MIN);
            p.source.append_value("");
            p.partition.push(0);
            p.offset.push(0);
        }
    }

    /// Appends one event with when and where it was received (provenance ignored unless enabled).
    pub fn push_received(&mut self, e: &Event, received_us: i64, at: &SourceCoordinates) {
        self.push_columns(e);
        if let Some(p) = &mut self.provenance {
            p.received.push(received_us);
            p.source.append_value(&at.source);
            p.partition.push(at.partition);
            p.offset.push(at.offset);
        }
    }

    fn push_columns(&mut self, e: &Event) {
        self.ids.append_value(&e.id);
        self.times.push(e.time.as_micros());
        for (b, d) in self.dims.iter_mut().zip(&e.dims) {
            b.append_value(d);
        }
        for (b, v) in self.values.iter_mut().zip(&e.values) {
            match (b, *v) {
                (ValueBuilder::Int(c), Num::Int(i)) => c.push(i),
                (ValueBuilder::Float(c), Num::Float(f)) => c.push(f),
                (ValueBuilder::Float(c), Num::Int(i)) => c.push(i as f64),
                (ValueBuilder::Int(c), Num::Float(f)) => c.push(f as i64),
            }
        }
    }

    /// The frame.
    pub fn finish(self) -> PolarsResult<DataFrame> {
        let height = self.times.len();
        let mut cols: Vec<Column> = Vec::with_capacity(2 + self.dims.len() + self.values.len() + 4);
        cols.push(self.ids.finish().into_column());
        cols.push(Column::new(EVENT_TIME.into(), self.times));
        for b in self.dims {
            cols.push(b.finish().into_column());
        }
        for (i, b) in self.values.into_iter().enumerate() {
            cols.push(match b {
                ValueBuilder::Int(v) => Column::new(value_column(i).into(), v),
                ValueBuilder::Float(v) => Column::new(value_column(i).into(), v),
            });
        }
        if let Some(p) = self.provenance {
            cols.push(Column::new(RECEIVED.into(), p.received));
            cols.push(p.source.finish().into_column());
            cols.push(Column::new(PARTITION.into(), p.partition));
            cols.push(Column::new(OFFSET.into(), p.offset));
        }
        DataFrame::new(height, cols)
    }
}

/// A frame of `events` (no provenance: frame order decides which duplicate wins).
pub fn events_frame(schema: &EventSchema, events: &[Event]) -> PolarsResult<DataFrame> {
    let mut b = EventFrameBuilder::new(schema, false);
    for e in events {
        b.push(e);
    }
    b.finish()
}
