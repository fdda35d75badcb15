//! The crate's error type, and [`Actor`]: who must act on an error.

use crate::decode::DecodeError;
use crate::spec::SpecErrors;

/// Who has to act for an error to go away. Every tidemark crate's error reports one; the CLI maps them
/// to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The user must change an input (spec, flag, event data). Retrying unchanged fails again.
    User,
    /// Something outside tidemark (broker, store, network, disk) failed; retrying may help.
    External,
    /// A bug in tidemark; please report it.
    Internal,
}

/// Errors of tidemark-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline spec is invalid; every problem found is listed.
    #[error(transparent)]
    Spec(#[from] SpecErrors),
    /// One event could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stored dimension key could not be parsed back.
    #[error("malformed dimension key {key:?}: {reason}")]
    DimensionKey {
        /// The key as stored.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::Spec(_) | Error::Decode(_) => Actor::User,
            Error::DimensionKey { .. } => Actor::Internal,
        }
    }

    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        false
    }
}
