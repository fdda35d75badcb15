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
    /// The range is empty or reversed.
    #[error("invalid range: from {from} must be before to {to}")]
    InvalidRange {
        /// Range start.
        from: tidemark_core::EventTime,
        /// Range end.
        to: tidemark_core::EventTime,
    },
    /// No batch run covers the range and the batch view has no rows there: reconciling would delete every
    /// serving row. Run `tidemark batch` for the range first.
    #[error("no batch run covers [{from}, {to}) and the batch view has no rows there: run `tidemark batch` first")]
    NoBatchRun {
        /// Range start.
        from: tidemark_core::EventTime,
        /// Range end.
        to: tidemark_core::EventTime,
    },
    /// A store (serving store, batch view, dead letters, raw archive) failed.
    #[error(transparent)]
    Store(#[from] tidemark_store::Error),
    /// Writing the report failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A bug in tidemark.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::UnknownMetric { .. } | Error::InvalidRange { .. } | Error::NoBatchRun { .. } => Actor::User,
            Error::DuplicateKey { .. } | Error::Internal(_) => Actor::Internal,
            Error::Store(e) => e.actor(),
            Error::Io { .. } => Actor::External,
        }
    }

    /// Whether retrying can help.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.retryable(),
            Error::Io { .. } => true,
            _ => false,
        }
    }
}
