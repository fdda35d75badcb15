//! The crate's error type.

use tidemark_core::Actor;

/// Errors of tidemark-batch. Each says who must act ([`Error::actor`]) and whether retrying the same
/// call can succeed ([`Error::retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run was asked for something impossible (empty range, unknown metric, bad URL).
    #[error("invalid batch run: {0}")]
    InvalidRequest(String),
    /// An input URL uses a scheme this build cannot read.
    #[error("unsupported input location {url:?}: {reason}")]
    UnsupportedLocation {
        /// The URL as given.
        url: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// The input has a shape the batch layer cannot read (missing column, wrong type, deletion vectors).
    #[error("input {location}: {reason}")]
    InputShape {
        /// File or table.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// Listing or reading objects failed.
    #[error("object store {location}: {source}")]
    ObjectStore {
        /// What was being read.
        location: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A Delta table operation failed.
    #[error("delta table {location}: {source}")]
    Delta {
        /// The table URL.
        location: String,
        /// The cause.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A polars computation failed.
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// Arrow (output conversion) failed.
    #[error("arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The batch view (tidemark-store) refused or failed an operation.
    #[error("batch view: {0}")]
    View(#[from] tidemark_store::Error),
    /// A result of the plan had an unexpected shape: a bug in tidemark.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Who must act.
    pub fn actor(&self) -> tidemark_core::Actor {
        match self {
            Error::InvalidRequest(_) | Error::UnsupportedLocation { .. } | Error::InputShape { .. } => Actor::User,
            Error::ObjectStore { source, .. } => match source {
                object_store::Error::NotFound { .. } | object_store::Error::InvalidPath { .. } => Actor::User,
                _ => Actor::External,
            },
            Error::Delta { source, .. } => match source {
                deltalake::DeltaTableError::NotATable(_) | deltalake::DeltaTableError::InvalidTableLocation(_) => {
                    Actor::User
                }
                _ => Actor::External,
            },
            Error::Io { .. } => Actor::External,
            Error::View(e) => e.actor(),
            Error::Polars(_) | Error::Arrow(_) | Error::Internal(_) => Actor::Internal,
        }
    }

    /// Whether retrying the same call can succeed (transient storage failures, commit conflicts).
    pub fn retryable(&self) -> bool {
        self.actor() == Actor::External
    }

    pub(crate) fn delta(location: &str, source: deltalake::DeltaTableError) -> Self {
        Error::Delta { location: location.to_owned(), source }
    }

    pub(crate) fn store(location: impl Into<String>, source: object_store::Error) -> Self {
        Error::ObjectStore { location: location.into(), source }
    }

    pub(crate) fn shape(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InputShape { location: location.into(), reason: reason.into() }
    }
}
