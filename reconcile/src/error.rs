//! The crate's error type.

use tidemark_core::Actor;

/// Errors of tidemark-reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A row names a metric the spec does not define (a renamed or removed metric); the user must decide
    /// whether to drop those rows or restore the metric.
    #[error("rows of metric {metric:?} are in the {side} but the spec defines no such metric")]
    UnknownMetric {
        /// The metric name found.
        metric: String,
        /// "batch view" or "serving store".
        side: &'static str,
    },
    /// The same key appears twice on one side: the store broke its one-row-per-key promise.
    #[error("key {key} appears twice in the {side}")]
    DuplicateKey {
        /// The key, rendered.
        key: String,
        /// "batch view" or "serving store".
        side: &'static str,
    },
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::UnknownMetric { .. } => Actor::User,
            Error::DuplicateKey { .. } => Actor::Internal,
        }
    }

    /// Whether retrying can help.
    pub fn retryable(&self) -> bool {
        false
    }
}
