//! The raw event archive's schema: the contract between the stream service (which appends every consumed
//! event that decodes) and the batch layer (which recomputes metrics from it).
//!
//! The archive keeps the original payload, so the batch layer decodes it with the same
//! [`crate::decode::EventSchema`] as the stream service and reaches the same verdicts. The typed columns
//! (`event_id`, `event_time`) exist for pruning and for lateness analysis (`event_time` vs `ingest_time`).
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `event_id` | string, not null | the decoded event id |
//! | `event_time` | timestamp µs UTC, not null | the decoded event time |
//! | `ingest_time` | timestamp µs UTC, not null | when tidemark received the event (Kafka timestamp or read time) |
//! | `source` | string, not null | topic name, or the replayed file's path |
//! | `partition` | int32, not null | Kafka partition (0 for files) |
//! | `offset` | int64, not null | Kafka offset, or 0-based line number in a file |
//! | `payload` | string, not null | the event's JSON text as received |
//! | `ingest_date` | string `YYYY-MM-DD`, not null | partition column: UTC date of `ingest_time` |

/// Column: decoded event id.
pub const EVENT_ID: &str = "event_id";
/// Column: decoded event time (timestamp µs UTC).
pub const EVENT_TIME: &str = "event_time";
/// Column: receive time (timestamp µs UTC).
pub const INGEST_TIME: &str = "ingest_time";
/// Column: topic or file.
pub const SOURCE: &str = "source";
/// Column: partition.
pub const PARTITION: &str = "partition";
/// Column: offset or line number.
pub const OFFSET: &str = "offset";
/// Column: original JSON payload.
pub const PAYLOAD: &str = "payload";
/// Partition column: UTC date of `ingest_time`.
pub const INGEST_DATE: &str = "ingest_date";
