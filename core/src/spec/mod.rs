//! The pipeline spec: one TOML file that drives both layers.
//!
//! [`PipelineSpec::parse`] reads the text, rejects unknown fields, checks every rule it can, and returns a
//! [`ValidSpec`] (normalized: every default filled in, paths resolved) or every error found. Each error
//! names the file, the field path (`metrics[1].window.size`) and what is wrong. The rules live in
//! `validate.rs`, one function per section of the spec.

mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use crate::aggregate::{AggregateFn, InputRef, MetricAccumulator, Tolerance};
use crate::decode::{Event, EventSchema, TimeFormat, ValueType};
use crate::dims::Dimensions;
use crate::time::Duration;
use crate::window::WindowSpec;

/// The spec format version this build reads.
pub const SPEC_VERSION: u32 = 1;

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The spec file (as given by the caller).
    pub file: String,
    /// `line:column` of the problem when known.
    pub position: Option<(usize, usize)>,
    /// Field path, e.g. `metrics[1].window.size`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((l, c)) = self.position {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The whole spec, as written (after [`PipelineSpec::parse`]: normalized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Spec format version; must be 1.
    pub version: u32,
    /// Pipeline name (an identifier); names the stream service's consumer state and audit records.
    pub name: String,
    /// Where events come from.
    pub source: SourceSpec,
    /// How to read one event.
    pub event: EventSpec,
    /// Watermarks, lateness and the late policy.
    #[serde(default)]
    pub time: TimePolicy,
    /// The metrics to compute.
    pub metrics: Vec<MetricSpec>,
    /// Where data lives.
    pub stores: StoresSpec,
    /// The latency / correctness contract the reconciler reports on.
    #[serde(default)]
    pub contract: ContractSpec,
}

/// Event source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// A Kafka topic read by a consumer group.
    Kafka {
        /// Bootstrap servers, `host:port[,host:port]`.
        brokers: String,
        /// Topic name.
        topic: String,
        /// Consumer group id.
        group: String,
        /// Extra librdkafka client properties (TLS, SASL, ...). Values are literal strings,
        /// `{ env = "VAR" }` or `{ file = "/path" }`; secrets are never printed.
        #[serde(default, serialize_with = "serialize_options")]
        options: BTreeMap<String, ClientOption>,
        /// Where each record's arrival time comes from (`timestamp`, the default, `create_time`,
        /// `log_append_time` or `{ field = "name" }`). It is the receive time `future_event` is judged by, the speed layer's
        /// processing clock (idleness, early panes, emission times and so every latency the contract
        /// reports) and the raw archive's `ingest_time`, so a backlog replays as the live run it records.
        #[serde(default)]
        arrival: KafkaArrival,
    },
    /// A JSON Lines file replayed in arrival order (one partition; line numbers are offsets).
    File {
        /// Path of the file (relative to the spec file).
        path: String,
        /// The field holding each line's arrival time (RFC 3339), for replaying recorded history: the speed
        /// layer's processing clock then follows the recorded arrivals, so emission times, finalization
        /// latency and idle timeouts are those of the recorded stream, not of the replay. Without it a
        /// line arrives when it is read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received_at: Option<String>,
    },
}

/// Where a Kafka record's arrival time comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KafkaArrival {
    /// The record's timestamp, whichever kind the topic stamps (`CreateTime` by default in Kafka).
    #[default]
    Timestamp,
    /// The record's `CreateTime`, as the producer set it (trusts the producers' clocks); a record stamped
    /// otherwise stops the service with an error naming `source.arrival`.
    CreateTime,
    /// The broker's append time: the topic must be configured `message.timestamp.type=LogAppendTime`
    /// (a record stamped otherwise stops the service with an error naming `source.arrival`).
    LogAppendTime,
    /// A payload field holding the arrival time (RFC 3339 or epoch milliseconds), e.g. a collector's
    /// `received_at`; records without a readable value fall back to the record timestamp.
    Field(String),
}

/// A client property value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientOption {
    /// The value itself.
    Literal(String),
    /// Read from an environment variable when the service starts.
    Env {
        /// Variable name.
        env: String,
    },
    /// Read from a file (trailing newline stripped) when the service starts.
    File {
        /// File path.
        file: String,
    },
}

/// Whether a client property probably holds a secret (its literal value is never printed).
pub fn is_sensitive_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "jaas"].iter().any(|s| k.contains(s))
}

fn serialize_options<S: Serializer>(opts: &BTreeMap<String, ClientOption>, s: S) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&String, ClientOption> = opts
        .iter()
        .map(|(k, v)| match v {
            ClientOption::Literal(_) if is_sensitive_option(k) => (k, ClientOption::Literal("<redacted>".into())),
            v => (k, v.clone()),
        })
        .collect();
    redacted.serialize(s)
}

/// How to decode an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Field holding a unique event id (string or integer); duplicates by id are counted once.
    pub id: String,
    /// Event-time field.
    pub time: TimeFieldSpec,
    /// Dimension fields (string, integer or boolean values).
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Value fields and their types (`int` or `float`).
    #[serde(default)]
    pub values: BTreeMap<String, ValueType>,
    /// Larger events are dead-lettered as `oversize`. Default 1 MiB.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u64,
}

fn default_max_event_bytes() -> u64 {
    1 << 20
}

/// The event-time field and its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeFieldSpec {
    /// Field name.
    pub field: String,
    /// `rfc3339`, `epoch_s`, `epoch_ms` or `epoch_us`.
    pub format: TimeFormat,
}

/// What happens to an event that arrives after its window fired but within allowed lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Re-emit the whole row with revision + 1.
    Update,
    /// Emit a correction row holding only the late events' contribution.
    Append,
    /// Do not change the row; route the event to the late ledger (the reconciler fixes the row).
    DeadLetter,
}

/// Event-time policy of the speed layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimePolicy {
    /// Watermark = max event time seen on a partition minus this. Default 5s.
    pub watermark_delay: Duration,
    /// How long after a window's end late events still update it. Default 5m.
    pub allowed_lateness: Duration,
    /// A partition with no events for this long stops holding the watermark back. Default 30s.
    pub idle_timeout: Duration,
    /// `update`, `append` or `dead_letter`. Default `update`.
    pub late_policy: LatePolicy,
    /// Events this far ahead of their receive time are dead-lettered as `future_event`. Default 5m.
    pub max_future_skew: Duration,
    /// If set, open windows emit early (provisional) results this often.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_firing: Option<Duration>,
    /// An event whose time runs ahead of its partition's event-time frontier (largest trusted event time
    /// plus the arrival time elapsed since) by more than this is a *suspect*: it is aggregated, but it
    /// does not move the watermark until confirmed. Default 1m.
    pub suspect_lead: Duration,
    /// Suspects needed to confirm a jump of a partition's event time (the watermark then moves to the
    /// smallest of them). `n` tolerates `n - 1` wrong clocks per partition within `suspect_expiry`
    /// events. Default 3.
    pub suspect_confirmations: u32,
    /// A suspect not confirmed within this many later trusted events of its partition is forgotten.
    /// Default 1000.
    pub suspect_expiry: u32,
}

impl Default for TimePolicy {
    fn default() -> Self {
        TimePolicy {
            watermark_delay: Duration::from_secs(5),
            allowed_lateness: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            late_policy: LatePolicy::Update,
            max_future_skew: Duration::from_secs(300),
            early_firing: None,
            suspect_lead: Duration::from_secs(60),
            suspect_confirmations: 3,
            suspect_expiry: 1000,
        }
    }
}

/// One metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Metric name (an identifier).
    pub name: String,
    /// Dimensions to group by (a subset of `event.dimensions`).
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// The window.
    pub window: WindowDef,
    /// The aggregates.
    pub aggregates: Vec<AggregateSpec>,
}

/// A window definition as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowDef {
    /// `[offset + k*size, offset + (k+1)*size)`.
    Tumbling {
        /// Window length.
        size: Duration,
        /// Alignment; default 0s.
        #[serde(default)]
        offset: Duration,
    },
    /// Windows of `size` every `slide` (`size` a multiple of `slide`).
    Hopping {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
        /// Alignment; default 0s.
        #[serde(default)]
        offset: Duration,
    },
    /// Sessions separated by at least `gap` of inactivity per dimension key.
    Session {
        /// Inactivity gap.
        gap: Duration,
    },
}

/// One aggregate of a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Aggregate name (an identifier, unique within the metric).
    pub name: String,
    /// `count`, `sum`, `min`, `max`, `mean` or `count_distinct`.
    #[serde(rename = "fn")]
    pub function: AggregateFn,
    /// Input field: a value field for sum/min/max/mean; a dimension or value field for count_distinct;
    /// none for count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How far the speed layer's value may differ from the batch value and still count as correct.
    /// Default `exact`, except `rel(1e-9)` for means and float sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
}

/// Storage locations: Delta tables at `file://`, `s3://` or `memory://` URLs (plain paths are resolved
/// against the spec file's folder); the serving store may instead be a `postgres://` DSN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresSpec {
    /// Raw events archive (Delta table the stream service appends and the batch layer reads).
    pub raw_archive: String,
    /// The serving store: Delta URL or Postgres DSN.
    #[serde(serialize_with = "serialize_dsn")]
    pub serving: String,
    /// Dead letters and the late ledger.
    pub dead_letter: String,
    /// The batch view (Delta table the batch layer writes).
    pub batch_view: String,
}

fn serialize_dsn<S: Serializer>(dsn: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_dsn(dsn))
}

/// The DSN with any password replaced by `<redacted>` (URL and key=value forms).
pub fn redact_dsn(dsn: &str) -> String {
    if let Some(rest) = dsn.strip_prefix("postgres://").or_else(|| dsn.strip_prefix("postgresql://")) {
        let scheme = &dsn[..dsn.len() - rest.len()];
        if let Some((userinfo, host)) = rest.split_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!("{scheme}{user}:<redacted>@{host}");
        }
        return dsn.to_owned();
    }
    dsn.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=<redacted>".to_owned() } else { kv.to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The contract the reconciler checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContractSpec {
    /// A window's on-time result should be visible this long after the window ends. Default 1m.
    pub finalization_latency: Duration,
    /// Share of windows whose first on-time emission is within tolerance (0 < x <= 1). Default 0.99.
    pub accuracy_target: f64,
}

impl Default for ContractSpec {
    fn default() -> Self {
        ContractSpec { finalization_latency: Duration::from_secs(60), accuracy_target: 0.99 }
    }
}

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A Delta table at an object_store URL.
    Delta(String),
    /// A Postgres database.
    Postgres(String),
}

/// A metric compiled for execution.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledMetric {
    /// Metric name.
    pub name: String,
    /// Window semantics.
    pub window: WindowSpec,
    /// `(dimension name, index into Event::dims)`, in spec order.
    pub dims: Vec<(String, usize)>,
    /// Aggregates in spec order.
    pub aggregates: Vec<CompiledAggregate>,
    inputs: Vec<InputRef>,
}

/// An aggregate compiled for execution.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAggregate {
    /// Aggregate name.
    pub name: String,
    /// Function.
    pub function: AggregateFn,
    /// The input field's name (none for count).
    pub field: Option<String>,
    /// Where the input comes from.
    pub input: InputRef,
    /// Comparison tolerance.
    pub tolerance: Tolerance,
}

impl CompiledMetric {
    /// The row dimensions of an event for this metric.
    pub fn dimensions_of(&self, e: &Event) -> Dimensions {
        Dimensions::new(self.dims.iter().map(|(n, i)| (n.clone(), e.dims[*i].to_string())))
    }

    /// Empty accumulators for one row of this metric.
    pub fn new_accumulator(&self) -> MetricAccumulator {
        MetricAccumulator::empty(self.aggregates.iter().map(|a| a.function))
    }

    /// Adds an event to a row's accumulators.
    pub fn add(&self, acc: &mut MetricAccumulator, e: &Event) {
        acc.add_event(e, &self.inputs);
    }
}

/// A spec that passed validation, normalized, with its compiled parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    spec: PipelineSpec,
    schema: EventSchema,
    metrics: Vec<CompiledMetric>,
}

impl ValidSpec {
    /// The normalized spec.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// The event decoder.
    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    /// The compiled metrics, in spec order.
    pub fn metrics(&self) -> &[CompiledMetric] {
        &self.metrics
    }

    /// A metric by name.
    pub fn metric(&self, name: &str) -> Option<&CompiledMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// Where the serving store lives.
    pub fn serving_store(&self) -> StoreLocation {
        let s = &self.spec.stores.serving;
        if is_postgres(s) { StoreLocation::Postgres(s.clone()) } else { StoreLocation::Delta(s.clone()) }
    }

    /// The normalized spec as TOML (secrets redacted).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.spec).unwrap_or_else(|e| format!("# cannot print the spec: {e}\n"))
    }
}

fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://") || s.contains("host=") || s.contains("dbname=")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

impl PipelineSpec {
    /// Parses, validates and normalizes a spec. `file` names the spec in error messages; `base_dir` is the
    /// folder relative paths are resolved against (the spec file's folder).
    pub fn parse(text: &str, file: &str, base_dir: Option<&Path>) -> Result<ValidSpec, SpecErrors> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            SpecErrors(vec![SpecError {
                file: file.to_owned(),
                position: e.span().map(|s| line_col(text, s.start)),
                path: String::new(),
                message: e.message().to_owned(),
            }])
        })?;
        let spec: PipelineSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            SpecErrors(vec![SpecError {
                file: file.to_owned(),
                position: inner.span().map(|s| line_col(text, s.start)),
                path: if path == "." { String::new() } else { path },
                message: inner.message().to_owned(),
            }])
        })?;
        spec.validate(file, base_dir)
    }
}
