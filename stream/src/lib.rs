//! tidemark-stream: the speed layer.
//!
//! - [`Engine`]: the pure, synchronous event-time engine: per-partition watermarks with idleness,
//!   tumbling / hopping / session windows over tidemark-core accumulators, early / on-time / late panes,
//!   de-duplication, per-partition accounting and checkpoints.
//! - [`Source`]s: the Kafka consumer group ([`KafkaSource`]) and a JSON Lines file ([`FileSource`], over
//!   [`FileReplay`], which reads it in arrival order as [`Record`]s).
//! - [`Service`]: the sink loop that drives a source through the engine into the serving store, the raw
//!   archive and the dead-letter store, exporting [`metrics`] (served by [`http`]).
//!
//! Every type has one path: the crate root, except the [`metrics`] and [`http`] namespaces (and
//! `testing`, test support behind the `testing` feature).

mod checkpoint;
mod clock;
mod engine;
mod error;
pub mod http;
mod keys;
pub mod metrics;
mod output;
mod service;
mod source;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod watermark;
mod window_state;

pub use checkpoint::FORMAT as CHECKPOINT_FORMAT;
pub use clock::{ArrivalClock, Clock, ManualClock, SystemClock};
pub use engine::{Engine, PartitionAccounts};
pub use error::Error;
pub use output::{LateEvent, LateReason, Output, Record, RejectedRecord};
pub use service::{RunSummary, Service, ServiceConfig, Sinks, Stopped};
pub use source::file::FileSource;
pub use source::kafka::{KafkaConfig, KafkaSource};
pub use source::replay::{FileReplay, ReceivedAt};
pub use source::{Assignment, Offsets, Partition, Polled, Source};
pub use watermark::{Observed, PartitionSuspicion, SuspectPolicy, Watermark, WatermarkTracker};
