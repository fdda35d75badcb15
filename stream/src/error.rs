//! The crate's error type.

use tidemark_core::Actor;

/// Errors of tidemark-stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A replay file (or another local input) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Engine state could not be encoded as a checkpoint.
    #[error("cannot encode the engine checkpoint: {0}")]
    CheckpointEncode(#[source] serde_json::Error),
    /// A checkpoint blob is not a checkpoint this build can read.
    #[error("cannot decode the engine checkpoint: {0}")]
    CheckpointDecode(#[source] serde_json::Error),
    /// A checkpoint was written by an engine with another format version.
    #[error(
        "checkpoint format {found} is not supported (this build writes format {expected} and reads 2 and {expected})"
    )]
    CheckpointFormat {
        /// The blob's format.
        found: u32,
        /// The format this build writes and reads.
        expected: u32,
    },
    /// A checkpoint was written for a pipeline spec whose metrics, event schema or time policy differ.
    #[error(
        "the checkpoint was written for a different pipeline spec (metrics, event schema or time policy \
         changed); restore the old spec or start the stream state afresh"
    )]
    SpecChanged,
    /// A checkpoint decoded but its parts contradict each other.
    #[error("the engine checkpoint is inconsistent: {0}")]
    CheckpointCorrupt(String),
    /// The serving store, the raw archive or the dead-letter store failed (who acts and whether to retry
    /// are the store's verdict).
    #[error(transparent)]
    Store(#[from] tidemark_store::Error),
    /// A bug: a task panicked or an invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
    /// The Kafka source's settings are wrong: a missing or unreadable option value, a setting tidemark
    /// forces, or a property librdkafka rejects. Never carries a secret value.
    #[error("Kafka source setting {field}: {reason}")]
    KafkaConfig {
        /// The setting, e.g. `source.options."sasl.password"`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The Kafka client failed in a way that may pass (broker unreachable, rebalance in progress, ...).
    #[error("Kafka {action} failed: {source}")]
    Kafka {
        /// What the source was doing.
        action: &'static str,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused the topic or the group (missing topic, no authorization); the user must fix the
    /// spec or the broker's ACLs.
    #[error("Kafka refused topic {topic:?} / group {group:?}: {reason}")]
    KafkaRefused {
        /// The topic.
        topic: String,
        /// The consumer group.
        group: String,
        /// What the broker said.
        reason: String,
    },
    /// The Kafka client hit a fatal error and cannot be used any more; a new source must be built.
    #[error("the Kafka client failed fatally ({reason}); restart the source")]
    KafkaFatal {
        /// What librdkafka said.
        reason: String,
    },
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::Store(e) => e.actor(),
            Error::Internal(_) => Actor::Internal,
            Error::Io { .. } | Error::Kafka { .. } | Error::KafkaFatal { .. } => Actor::External,
            Error::SpecChanged | Error::KafkaConfig { .. } | Error::KafkaRefused { .. } => Actor::User,
            Error::CheckpointEncode(_)
            | Error::CheckpointDecode(_)
            | Error::CheckpointFormat { .. }
            | Error::CheckpointCorrupt(_) => Actor::Internal,
        }
    }

    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        if let Error::Store(e) = self {
            return e.retryable();
        }
        matches!(self, Error::Io { .. } | Error::Kafka { .. })
    }
}
