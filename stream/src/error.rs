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
    #[error("checkpoint format {found} is not supported (this build reads format {expected})")]
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
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::Io { .. } => Actor::External,
            Error::SpecChanged => Actor::User,
            Error::CheckpointEncode(_)
            | Error::CheckpointDecode(_)
            | Error::CheckpointFormat { .. }
            | Error::CheckpointCorrupt(_) => Actor::Internal,
        }
    }

    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Io { .. })
    }
}
