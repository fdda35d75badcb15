//! The Kafka source: one member of a consumer group whose partitions start where the serving store says.
//!
//! - Every assigned partition starts at the offset last given to [`Source::seek`] or
//!   [`Source::committed`] (the next offset to read), or at the beginning when it has none. The group's
//!   committed offsets are never used to position the consumer: the serving store is the only truth, so
//!   a wiped store replays the topic instead of silently skipping what the group had read.
//! - Assignment changes are reported by [`Source::poll`]; a poll returns as soon as one happens, so the
//!   caller can [`Source::seek`] newly assigned partitions (e.g. to offsets another instance committed)
//!   before any of their records are delivered.
//! - [`Source::committed`] also commits the offsets to the group, asynchronously and for lag tooling only.
//! - [`Source::end_offsets`] (the lag metric) comes from librdkafka's statistics, emitted every
//!   `statistics.interval.ms` (default [`STATISTICS_INTERVAL_MS`] here; `0` in the options turns the lag
//!   metric off): the high watermark of every assigned partition, as of the last fetch from it.
//! - Records are released in arrival order across partitions: a record waits until every assigned partition
//!   has one buffered or is read to its end (librdkafka's partition EOF), then the earliest (record
//!   timestamp, partition, offset) goes first, as Kafka Streams picks them. While it waits at most
//!   [`MERGE_BUFFER_BYTES`] are buffered and a silent partition is waited for [`MERGE_STALL`]. Each
//!   record's `received_at` is its arrival as `source.arrival` says (default: the record timestamp).
//! - TLS and SASL (`security.protocol`, `ssl.*`, `sasl.*`: PLAIN, SCRAM-SHA-256/512) are plain
//!   librdkafka options; librdkafka is built with OpenSSL. GSSAPI (Kerberos) is not built in.
//!
//! Consumption uses rdkafka's [`StreamConsumer`]: `poll` awaits, it never blocks the runtime.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, Timestamp};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use tidemark_core::spec::{ClientOption, KafkaArrival, SourceSpec, is_sensitive_option};
use tidemark_core::{EventTime, SourceCoordinates};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Assignment, Offsets, Partition, Polled, Source};
use crate::Error;
use crate::clock::{Clock, SystemClock};
use crate::output::Record;

/// librdkafka properties tidemark sets itself; options may not override them.
const FORCED: [(&str, &str); 7] = [
    ("bootstrap.servers", "it comes from source.brokers"),
    ("metadata.broker.list", "it is an alias of bootstrap.servers, which comes from source.brokers"),
    ("group.id", "it comes from source.group"),
    ("enable.auto.commit", "offsets are committed with the serving store's rows, never automatically"),
    ("enable.auto.offset.store", "offsets are committed with the serving store's rows, never automatically"),
    ("auto.offset.reset", "a partition without a stored offset is read from the beginning, so nothing is skipped"),
    (
        "enable.partition.eof",
        "records are merged in arrival order, which needs to know when a partition is read to its end",
    ),
];

/// Payload bytes the arrival-order merge buffers over all partitions while it waits for a partition that
/// has nothing fetched yet; beyond it, the earliest buffered record goes without waiting (fetching is never
/// paused for the merge: librdkafka's own prefetch limits bound what it holds).
pub const MERGE_BUFFER_BYTES: usize = 32 << 20;

/// How long the merge waits for a partition that is neither delivering nor at its end (a broker that
/// stopped answering for it) before it releases the other partitions' records without it.
pub const MERGE_STALL: Duration = Duration::from_secs(5);

/// How often librdkafka reports statistics (the partitions' end offsets for the lag metric) unless the
/// options set `statistics.interval.ms`.
pub const STATISTICS_INTERVAL_MS: u32 = 1000;

/// Longest time a fetch waits on the broker for data unless the options set `fetch.wait.max.ms`.
/// librdkafka's 500 ms default doubled the event→committed latency against the local broker
/// (`cargo bench -p tidemark-stream --bench service`: p50 686 → 345 ms at 20k events/s).
pub const FETCH_WAIT_MAX_MS: u32 = 100;

/// How to consume one topic with a consumer group. [`KafkaConfig::build`] makes the [`KafkaSource`].
///
/// Option values are resolved (environment variables and files read) when the source is built; secret
/// values are never printed (not by `Debug`, not in errors).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumer group id.
    pub group: String,
    /// Extra librdkafka properties (TLS, SASL, timeouts, ...).
    pub options: BTreeMap<String, ClientOption>,
    /// Where each record's arrival time comes from.
    pub arrival: KafkaArrival,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &dyn fmt::Debug> = self
            .options
            .iter()
            .map(|(k, v)| match v {
                ClientOption::Literal(_) if is_sensitive_option(k) => (k.as_str(), &"<redacted>" as &dyn fmt::Debug),
                v => (k.as_str(), v as &dyn fmt::Debug),
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("options", &options)
            .field("arrival", &self.arrival)
            .finish()
    }
}

impl KafkaConfig {
    /// A config without extra options.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>, group: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            group: group.into(),
            options: BTreeMap::new(),
            arrival: KafkaArrival::default(),
        }
    }

    /// The config of a pipeline spec's `source` (which must be `type = "kafka"`).
    pub fn from_spec(spec: &SourceSpec) -> Result<Self, Error> {
        match spec {
            SourceSpec::Kafka { brokers, topic, group, options, arrival } => Ok(KafkaConfig {
                brokers: brokers.clone(),
                topic: topic.clone(),
                group: group.clone(),
                options: options.clone(),
                arrival: arrival.clone(),
            }),
            SourceSpec::File { .. } => Err(Error::KafkaConfig {
                field: "source.type".into(),
                reason: "the spec's source is a file, not Kafka".into(),
            }),
        }
    }

    /// Sets where records' arrival times come from.
    pub fn arrival(mut self, arrival: KafkaArrival) -> Self {
        self.arrival = arrival;
        self
    }

    /// Adds (or replaces) one librdkafka property.
    pub fn option(mut self, key: impl Into<String>, value: ClientOption) -> Self {
        self.options.insert(key.into(), value);
        self
    }

    /// The librdkafka properties: the resolved options, then the forced settings.
    fn client_config(&self) -> Result<ClientConfig, Error> {
        for (field, v) in
            [("source.brokers", &self.brokers), ("source.topic", &self.topic), ("source.group", &self.group)]
        {
            if v.trim().is_empty() {
                return Err(Error::KafkaConfig { field: field.into(), reason: "must not be empty".into() });
            }
        }
        let mut cfg = ClientConfig::new();
        // librdkafka only hands over lines at or above this level; follow the tracing filter
        cfg.set_log_level(if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
            RDKafkaLogLevel::Debug
        } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
            RDKafkaLogLevel::Info
        } else {
            RDKafkaLogLevel::Warning
        });
        // A default only: options may change it (or turn statistics, and with them the lag metric, off).
        cfg.set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
        cfg.set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string());
        for (key, value) in &self.options {
            let field = option_field(key);
            let normalized = key.trim().to_ascii_lowercase();
            if let Some((_, why)) = FORCED.iter().find(|(k, _)| *k == normalized) {
                return Err(Error::KafkaConfig {
                    field,
                    reason: format!("tidemark sets {normalized} itself ({why}); remove it from the options"),
                });
            }
            cfg.set(key.trim(), resolve(value).map_err(|reason| Error::KafkaConfig { field, reason })?);
        }
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true");
        Ok(cfg)
    }

    /// Creates the consumer and subscribes to the topic. Must run inside a tokio runtime. Partitions are
    /// assigned during later polls; call [`Source::seek`] before the first poll.
    pub fn build(&self) -> Result<KafkaSource, Error> {
        let cfg = self.client_config()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let notify = Arc::new(Notify::new());
        let context =
            SourceContext { topic: self.topic.clone(), shared: Arc::clone(&shared), notify: Arc::clone(&notify) };
        let consumer: StreamConsumer<SourceContext> =
            cfg.create_with_context(context).map_err(|e| creation_error(e, &self.options))?;
        consumer.subscribe(&[&self.topic]).map_err(|source| Error::Kafka { action: "subscribe", source })?;
        Ok(KafkaSource {
            topic: self.topic.clone(),
            group: self.group.clone(),
            arrival: self.arrival.clone(),
            consumer,
            shared,
            notify,
            pending_error: None,
            merge: Merge::default(),
        })
    }
}

/// `source.options."key"`, the way the spec validator names an option.
fn option_field(key: &str) -> String {
    format!("source.options.{key:?}")
}

/// The value of one option; the error never contains the value.
fn resolve(value: &ClientOption) -> Result<String, String> {
    match value {
        ClientOption::Literal(v) => Ok(v.clone()),
        ClientOption::Env { env } => std::env::var(env).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {env} is not set"),
            std::env::VarError::NotUnicode(_) => format!("environment variable {env} is not valid UTF-8"),
        }),
        ClientOption::File { file } => match std::fs::read_to_string(file) {
            Ok(mut v) => {
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                Ok(v)
            }
            Err(e) => Err(format!("cannot read {file}: {e}")),
        },
    }
}

/// Maps a client creation error, hiding the values of secret properties.
fn creation_error(e: KafkaError, options: &BTreeMap<String, ClientOption>) -> Error {
    match e {
        KafkaError::ClientConfig(_, description, key, _value) => {
            let field = match key.as_str() {
                "bootstrap.servers" => "source.brokers".to_owned(),
                "group.id" => "source.group".to_owned(),
                _ => options.keys().find(|k| k.trim() == key).map_or_else(|| option_field(&key), |k| option_field(k)),
            };
            let reason = if is_sensitive_option(&key) {
                "librdkafka rejects the value (not shown: it may be a secret)".to_owned()
            } else {
                description
            };
            Error::KafkaConfig { field, reason }
        }
        KafkaError::ClientCreation(reason) => Error::KafkaConfig { field: "source.options".into(), reason },
        source => Error::Kafka { action: "client creation", source },
    }
}

/// State shared between the source and its rebalance callback (which runs inside `poll`).
#[derive(Debug, Default)]
struct Shared {
    /// Next offset to read per partition, from `seek` and `committed`.
    seek: Offsets,
    /// The current assignment.
    assigned: BTreeSet<Partition>,
    /// Whether fetching is paused (newly assigned partitions start paused too).
    paused: bool,
    /// Assignment changes not yet reported by `poll`.
    events: Vec<Assignment>,
    /// An error raised in the rebalance callback, reported by the next `poll`.
    failure: Option<String>,
    /// End offset (high watermark: the next offset to be written) per assigned partition, from the latest
    /// statistics that knew it.
    ends: Offsets,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The state stays consistent even if a holder panicked: every update is a single assignment.
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consumer context: positions assigned partitions from the seek map, records assignment changes and
/// keeps the end offsets from librdkafka's statistics.
struct SourceContext {
    topic: String,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
}

impl ClientContext for SourceContext {
    /// librdkafka's own log lines (its `debug` property adds more) become tracing events of target
    /// `librdkafka`. librdkafka redacts sensitive properties (passwords, keys) in what it logs.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return; // not an error: the arrival-order merge takes it from `recv`
        }
        tracing::warn!(error = %error, reason, "Kafka client error (librdkafka retries)");
    }

    /// Keeps the high watermark of every assigned partition (librdkafka reports -1001 until it knows it;
    /// such partitions keep their previous value).
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let mut shared = lock(&self.shared);
        for (partition, p) in &topic.partitions {
            let key = (self.topic.clone(), *partition);
            if p.hi_offset >= 0 && shared.assigned.contains(&key) {
                shared.ends.insert(key, p.hi_offset);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let parts: Vec<Partition> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let mut shared = lock(&self.shared);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (topic, partition) in &parts {
                    let offset =
                        shared.seek.get(&(topic.clone(), *partition)).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        shared.failure = Some(format!("cannot position {topic}[{partition}]: {e}"));
                    }
                }
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match assigned {
                    Ok(()) => {
                        if shared.paused
                            && let Err(e) = consumer.pause(tpl)
                        {
                            shared.failure = Some(format!("cannot pause newly assigned partitions: {e}"));
                        }
                        if !cooperative {
                            shared.assigned.clear();
                        }
                        shared.assigned.extend(parts.iter().cloned());
                        tracing::info!(partitions = ?parts, "Kafka partitions assigned");
                        shared.events.push(Assignment::Assigned(parts));
                    }
                    Err(e) => shared.failure = Some(format!("cannot take the assigned partitions: {e}")),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let unassigned = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = unassigned {
                    shared.failure = Some(format!("cannot release the revoked partitions: {e}"));
                }
                let revoked: Vec<Partition> = if cooperative {
                    parts.into_iter().filter(|p| shared.assigned.remove(p)).collect()
                } else {
                    std::mem::take(&mut shared.assigned).into_iter().collect()
                };
                for p in &revoked {
                    shared.ends.remove(p);
                }
                tracing::info!(partitions = ?revoked, "Kafka partitions revoked");
                shared.events.push(Assignment::Revoked(revoked));
            }
            other => {
                // As librdkafka documents: on a rebalance error, drop the whole assignment.
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "Kafka rebalance failed; dropping the assignment");
                if let Err(e) = consumer.unassign() {
                    shared.failure = Some(format!("cannot drop the assignment after a rebalance error: {e}"));
                }
                let revoked: Vec<Partition> = std::mem::take(&mut shared.assigned).into_iter().collect();
                shared.ends.clear();
                if !revoked.is_empty() {
                    shared.events.push(Assignment::Revoked(revoked));
                }
            }
        }
        drop(shared);
        self.notify.notify_one();
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "committing offsets to the Kafka group failed (informational only)");
        }
    }
}

/// A member of a Kafka consumer group reading one topic. Built by [`KafkaConfig::build`].
///
/// Dropping it leaves the group synchronously (it may block up to the session timeout when the broker is
/// gone); [`KafkaSource::close`] does that off the runtime's threads.
pub struct KafkaSource {
    topic: String,
    group: String,
    arrival: KafkaArrival,
    consumer: StreamConsumer<SourceContext>,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    /// An error met after records were appended, returned by the next poll.
    pending_error: Option<Error>,
    /// Records fetched but not yet released, per partition.
    merge: Merge,
}

/// The arrival-order merge: records fetched per partition wait until every assigned partition either has
/// a record buffered or is read to its end; then the one with the earliest (arrival, partition, offset)
/// goes first. So a backlog is consumed in the order it arrived, across partitions, as a live run would
/// have consumed it (Kafka Streams picks records the same way).
#[derive(Debug, Default)]
struct Merge {
    queues: BTreeMap<i32, VecDeque<Record>>,
    /// Payload bytes buffered over all partitions.
    bytes: usize,
    /// Arrival of the last record fetched per partition (for records without a timestamp).
    last_arrival: BTreeMap<i32, EventTime>,
    /// Partitions read to their end (librdkafka's partition EOF) with nothing fetched since.
    at_end: BTreeSet<i32>,
    /// Next offset expected from the consumer per partition (one past the last record fetched).
    next_fetch: BTreeMap<i32, i64>,
    /// Since when a partition has blocked the merge (empty, not at its end) while others wait, and
    /// whether that wait was reported as stalled.
    blocked_since: Option<(Instant, bool)>,
}

impl Merge {
    /// Forgets what was buffered for `partition`.
    fn reset(&mut self, partition: i32) {
        if let Some(q) = self.queues.remove(&partition) {
            self.bytes -= q.iter().map(|r| r.payload.len()).sum::<usize>();
        }
        self.at_end.remove(&partition);
        self.next_fetch.remove(&partition);
    }

    /// Whether the earliest buffered record may go: every assigned partition has a record or is at its
    /// end (or the wait for the silent ones has stalled; the wait does not count while fetching is
    /// paused, `fetching` false). Returns its partition.
    fn next(&mut self, assigned: &BTreeSet<i32>, fetching: bool) -> Option<i32> {
        let head = self
            .queues
            .iter()
            .filter_map(|(p, q)| q.front().map(|r| ((r.received_at, *p, r.coords.offset), *p)))
            .min()
            .map(|(_, p)| p)?;
        let blocked =
            assigned.iter().any(|p| !self.at_end.contains(p) && self.queues.get(p).is_none_or(VecDeque::is_empty));
        if !blocked || self.bytes >= MERGE_BUFFER_BYTES {
            self.blocked_since = None;
            return Some(head);
        }
        if !fetching {
            self.blocked_since = None;
            return None;
        }
        let (since, warned) = self.blocked_since.get_or_insert_with(|| (Instant::now(), false));
        if since.elapsed() < MERGE_STALL {
            return None;
        }
        if !*warned {
            *warned = true;
            tracing::warn!(
                waited_s = MERGE_STALL.as_secs(),
                "a Kafka partition neither delivers nor reports its end: releasing the others without it \
                 (arrival order across partitions is not kept meanwhile)"
            );
        }
        Some(head)
    }
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("state", &*lock(&self.shared))
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// The partitions currently assigned to this member.
    pub fn assignment(&self) -> Vec<Partition> {
        lock(&self.shared).assigned.iter().cloned().collect()
    }

    /// Leaves the group and frees the client on a blocking thread.
    pub async fn close(self) {
        let consumer = self.consumer;
        if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::warn!(error = %e, "closing the Kafka consumer failed");
        }
    }

    /// The current assignment as a list with the given offset per partition.
    fn list(&self, parts: impl IntoIterator<Item = (Partition, Option<i64>)>) -> Result<TopicPartitionList, Error> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in parts {
            let offset = offset.map_or(Offset::Invalid, Offset::Offset);
            tpl.add_partition_offset(&topic, partition, offset)
                .map_err(|source| Error::Kafka { action: "building a partition list", source })?;
        }
        Ok(tpl)
    }

    /// Pauses or resumes fetching of some partitions of the topic.
    fn set_paused(&self, partitions: &[i32], paused: bool) -> Result<(), Error> {
        if partitions.is_empty() {
            return Ok(());
        }
        let tpl = self.list(partitions.iter().map(|p| ((self.topic.clone(), *p), None)))?;
        if paused {
            self.consumer.pause(&tpl).map_err(|source| Error::Kafka { action: "pause", source })
        } else {
            self.consumer.resume(&tpl).map_err(|source| Error::Kafka { action: "resume", source })
        }
    }

    /// The error for a consumer error event, or `None` when librdkafka recovers by itself.
    fn consume_error(&self, e: KafkaError) -> Option<Error> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            return Some(Error::KafkaFatal { reason: format!("{code}: {reason}") });
        }
        let refused = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
            )
        );
        if refused {
            return Some(Error::KafkaRefused {
                topic: self.topic.clone(),
                group: self.group.clone(),
                reason: e.to_string(),
            });
        }
        tracing::warn!(topic = %self.topic, error = %e, "Kafka consumer error (librdkafka retries)");
        None
    }
}

/// The record of one message, its arrival time taken as `arrival` says; a record without a timestamp (or
/// field) arrives with the previous record of its partition (`previous`), or now if it is the first; a
/// null payload is empty.
fn record(m: &BorrowedMessage<'_>, arrival: &KafkaArrival, previous: Option<EventTime>) -> Result<Record, Error> {
    let stamp = m.timestamp();
    let wrong_type = |expected: &str| Error::KafkaConfig {
        field: "source.arrival".into(),
        reason: format!(
            "is {expected:?} but {}[{}] offset {} is stamped {stamp:?}: set the topic's \
             message.timestamp.type to match, or choose the other arrival",
            m.topic(),
            m.partition(),
            m.offset()
        ),
    };
    let stamped = match (arrival, stamp) {
        (_, Timestamp::NotAvailable) => None,
        (KafkaArrival::CreateTime, Timestamp::LogAppendTime(_)) => return Err(wrong_type("create_time")),
        (KafkaArrival::LogAppendTime, Timestamp::CreateTime(_)) => return Err(wrong_type("log_append_time")),
        (_, Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms)) => EventTime::from_millis(ms),
    };
    let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let from_field = match arrival {
        KafkaArrival::Field(name) => crate::source::replay::field_time(&payload, name),
        _ => None,
    };
    Ok(Record {
        coords: SourceCoordinates { source: m.topic().to_owned(), partition: m.partition(), offset: m.offset() },
        received_at: from_field.or(stamped).or(previous).unwrap_or_else(|| SystemClock.now()),
        payload,
    })
}

impl Source for KafkaSource {
    /// Records the offsets for later assignments and moves partitions already assigned there at once
    /// (records fetched from their old position are discarded by librdkafka, never delivered).
    fn seek(&mut self, offsets: &Offsets) -> Result<(), Error> {
        let mut shared = lock(&self.shared);
        shared.seek.extend(offsets.iter().map(|(p, o)| (p.clone(), *o)));
        let merge = &mut self.merge;
        let now: Vec<(Partition, Option<i64>)> = offsets
            .iter()
            .filter(|(p, _)| shared.assigned.contains(*p))
            .filter(|((_, p), o)| {
                // Already there: the next record released would be the one at `o`.
                let next = merge.queues.get(p).and_then(|q| q.front()).map(|r| r.coords.offset);
                let there = next.or_else(|| merge.next_fetch.get(p).copied()) == Some(**o);
                if !there {
                    merge.reset(*p);
                }
                !there
            })
            .map(|(p, o)| (p.clone(), Some(*o)))
            .collect();
        drop(shared);
        if now.is_empty() {
            return Ok(());
        }
        let tpl = self.list(now)?;
        // Timeout zero: the seek is started, not awaited (the runtime must not block); librdkafka bumps the
        // partitions' fetch version at once, so nothing fetched before the seek reaches `poll`.
        let result = self
            .consumer
            .seek_partitions(tpl, Timeout::After(Duration::ZERO))
            .map_err(|source| Error::Kafka { action: "seek", source })?;
        for e in result.elements() {
            match e.error() {
                // An asynchronous seek reports "in progress" for every partition it started.
                Ok(()) | Err(KafkaError::OffsetFetch(RDKafkaErrorCode::InProgress)) => {}
                Err(source) => return Err(Error::Kafka { action: "seek", source }),
            }
        }
        Ok(())
    }

    /// Records are released in arrival order across partitions (see the module docs): a record waits until every
    /// assigned partition has one buffered or is read to its end.
    async fn poll(&mut self, out: &mut Vec<Record>, max: usize, wait: Duration) -> Result<Polled, Error> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let deadline = Instant::now() + wait;
        let mut polled = Polled::default();
        loop {
            let (assigned, fetching) = {
                let mut shared = lock(&self.shared);
                if let Some(reason) = shared.failure.take() {
                    return Err(Error::KafkaFatal { reason });
                }
                if !shared.events.is_empty() {
                    polled.assignments.append(&mut shared.events);
                    // Buffers of partitions no longer assigned (or assigned afresh) are stale.
                    let now_assigned: BTreeSet<i32> = shared.assigned.iter().map(|(_, p)| *p).collect();
                    for a in &polled.assignments {
                        let (Assignment::Assigned(parts) | Assignment::Revoked(parts)) = a;
                        for (_, p) in parts {
                            self.merge.reset(*p);
                        }
                    }
                    let stale: Vec<i32> =
                        self.merge.queues.keys().filter(|p| !now_assigned.contains(p)).copied().collect();
                    for p in stale {
                        self.merge.reset(p);
                    }
                    break;
                }
                (shared.assigned.iter().map(|(_, p)| *p).collect::<BTreeSet<i32>>(), !shared.paused)
            };
            // Release what the merge allows.
            while polled.records < max
                && let Some(p) = self.merge.next(&assigned, fetching)
            {
                let q = self.merge.queues.get_mut(&p).expect("next names a non-empty queue");
                let r = q.pop_front().expect("non-empty");
                self.merge.bytes -= r.payload.len();
                out.push(r);
                polled.records += 1;
            }
            if polled.records >= max {
                break;
            }
            // Fetch more: wait for the first record; after one was released take only what is there.
            let until = if polled.records == 0 { deadline } else { Instant::now() };
            let received = tokio::select! {
                biased;
                () = self.notify.notified() => continue,
                r = tokio::time::timeout_at(until, self.consumer.recv()) => r,
            };
            match received {
                Err(_elapsed) => break,
                Ok(Ok(m)) => {
                    let previous = self.merge.last_arrival.get(&m.partition()).copied();
                    let r = match record(&m, &self.arrival, previous) {
                        Ok(r) => r,
                        Err(e) if polled.records == 0 => return Err(e),
                        Err(e) => {
                            self.pending_error = Some(e);
                            break;
                        }
                    };
                    let p = r.coords.partition;
                    self.merge.last_arrival.insert(p, r.received_at);
                    self.merge.at_end.remove(&p);
                    self.merge.next_fetch.insert(p, r.coords.offset + 1);
                    self.merge.bytes += r.payload.len();
                    self.merge.queues.entry(p).or_default().push_back(r);
                }
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    tracing::debug!(partition = p, next = ?self.merge.next_fetch.get(&p), "partition read to its end");
                    self.merge.at_end.insert(p);
                }
                Ok(Err(e)) => {
                    if let Some(err) = self.consume_error(e) {
                        if polled.records == 0 {
                            return Err(err);
                        }
                        self.pending_error = Some(err);
                        break;
                    }
                }
            }
        }
        Ok(polled)
    }

    fn pause(&mut self) -> Result<(), Error> {
        let mut shared = lock(&self.shared);
        shared.paused = true;
        let parts: Vec<i32> = shared.assigned.iter().map(|(_, p)| *p).collect();
        drop(shared);
        self.set_paused(&parts, true)
    }

    fn resume(&mut self) -> Result<(), Error> {
        let mut shared = lock(&self.shared);
        shared.paused = false;
        let parts: Vec<i32> = shared.assigned.iter().map(|(_, p)| *p).collect();
        drop(shared);
        self.set_paused(&parts, false)
    }

    /// Remembers the offsets for later assignments and commits the assigned ones to the group
    /// asynchronously (failures are logged: the group's offsets are informational).
    fn committed(&mut self, offsets: &Offsets) -> Result<(), Error> {
        let mut shared = lock(&self.shared);
        shared.seek.extend(offsets.iter().map(|(p, o)| (p.clone(), *o)));
        let owned: Vec<_> =
            offsets.iter().filter(|(p, _)| shared.assigned.contains(*p)).map(|(p, o)| (p.clone(), Some(*o))).collect();
        drop(shared);
        if owned.is_empty() {
            return Ok(());
        }
        let tpl = self.list(owned)?;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets to the Kafka group failed (informational only)");
        }
        Ok(())
    }

    /// The high watermark of each assigned partition as of librdkafka's latest statistics (taken from
    /// the last fetch response of that partition, so a paused partition's value is the one from before
    /// the pause). Statistics are delivered by `poll`; partitions not fetched yet are absent.
    /// Yes: the record timestamp (or the spec's arrival field) is the processing clock.
    fn arrival_clock(&self) -> bool {
        true
    }

    fn end_offsets(&mut self) -> Offsets {
        let shared = lock(&self.shared);
        shared.ends.iter().filter(|(p, _)| shared.assigned.contains(*p)).map(|(p, o)| (p.clone(), *o)).collect()
    }
}
