//! tidemark-core: the metric model that the speed layer and the batch layer share.
//!
//! Window semantics, aggregates, the event decoder, the result row and the pipeline spec are written once,
//! here, so that both layers compute the same metric. This crate is pure and synchronous: no I/O, no async,
//! no clock (callers pass "now").

pub mod aggregate;
mod coordinates;
pub mod decode;
pub mod dims;
pub mod error;
pub mod raw_archive;
pub mod row;
pub mod spec;
pub mod time;
pub mod window;

pub use aggregate::{Accumulator, AggValue, AggregateFn, DistinctKey, InputRef, MetricAccumulator, Num, Tolerance};
pub use coordinates::SourceCoordinates;
pub use decode::{DecodeError, Event, EventSchema, ReasonCode};
pub use decode::{MAX_EVENT_TIME_US, TimeFormat, ValueType};
pub use dims::Dimensions;
pub use error::{Actor, Error};
pub use row::{Layer, MetricRow, Origin, Pane, RowChange, RowKey};
pub use spec::{
    CompiledAggregate, CompiledMetric, KafkaArrival, LatePolicy, PipelineSpec, SpecError, SpecErrors, StoreLocation,
    ValidSpec,
};
pub use time::{Duration, EventTime};
pub use window::{FixedWindows, SessionSet, SessionUpdate, SessionWindows, Window, WindowSpec};
