//! tidemark-stream: the speed layer.
//!
//! - [`Engine`]: the pure, synchronous event-time engine: per-partition watermarks with idleness,
//!   tumbling / hopping / session windows over tidemark-core accumulators, early / on-time / late panes,
//!   de-duplication, per-partition accounting and checkpoints.
//! - [`FileReplay`]: a JSON Lines file replayed in arrival order as [`Record`]s.
//!
//! The Kafka source, the raw archive writer and the sink loop build on these.

pub mod checkpoint;
pub mod clock;
pub mod engine;
pub mod error;
pub mod http;
mod keys;
pub mod metrics;
pub mod output;
pub mod replay;
pub mod service;
pub mod source;
mod state;
pub mod testing;
pub mod watermark;
mod window;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, PartitionAccounts};
pub use error::Error;
pub use output::{DeadLetter, LateEvent, LateReason, Output, Record};
pub use replay::{FileReplay, ReceivedAt};
pub use service::{RunSummary, Service, ServiceConfig, Sinks, Stopped};
pub use source::file::FileSource;
pub use source::kafka::{KafkaConfig, KafkaSource};
pub use watermark::{Watermark, WatermarkTracker};
