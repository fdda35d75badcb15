//! The crate's one error type. Each error says who must act ([`Actor`]) and whether a retry can help.

use tidemark_core::Actor;

/// Errors of tidemark-store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input the caller passed is not acceptable (bad identifier, NUL byte, wrong origin, ...).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which input.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A writer with an older writer epoch tried to write after a newer writer took over the pipeline.
    #[error("writer of pipeline {pipeline:?} with epoch {epoch} is fenced: epoch {current} took over")]
    Fenced {
        /// The pipeline.
        pipeline: String,
        /// The refused writer's epoch.
        epoch: u64,
        /// The epoch now in charge.
        current: u64,
    },
    /// Concurrent writers kept conflicting; the write was not applied. Retrying later may succeed.
    #[error("gave up after {attempts} attempts because concurrent commits conflicted: {last}")]
    Contention {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: String,
    },
    /// The Postgres server could not be reached (or refused the login). `server` names it without secrets.
    #[error("postgres {server}: connecting: {source}")]
    Connect {
        /// `user@host:port/dbname`, never the password.
        server: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Postgres failed (connection, SQL state).
    #[error("postgres: {context}: {source}")]
    Postgres {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The Delta Lake table could not be read or written.
    #[error("delta table {url}: {context}: {source}")]
    Delta {
        /// The table.
        url: String,
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The object store failed.
    #[error("object store {url}: {source}")]
    ObjectStore {
        /// The location.
        url: String,
        /// The driver's error.
        #[source]
        source: object_store::Error,
    },
    /// Data in the store does not have the shape this crate writes (corruption or a foreign writer).
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    /// A bug in this crate: a task it started panicked.
    #[error("internal error: {0}")]
    Internal(String),
    /// A process the test harness needed (initdb, pg_ctl) failed.
    #[error("test harness: {0}")]
    Harness(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Who must act.
    pub fn actor(&self) -> Actor {
        match self {
            Error::InvalidInput { .. } => Actor::User,
            // another instance took over the pipeline: this one must stop (not retry)
            Error::Fenced { .. } => Actor::External,
            Error::Contention { .. }
            | Error::Connect { .. }
            | Error::Postgres { .. }
            | Error::Delta { .. }
            | Error::ObjectStore { .. } => Actor::External,
            Error::Corrupt(_) | Error::Internal(_) => Actor::Internal,
            Error::Harness(_) => Actor::External,
        }
    }

    /// Whether retrying the same call can succeed. After a retryable error the outcome of a write may be
    /// unknown: read the committed marker ([`crate::ServingStore::committed_marker`]) before retrying.
    /// [`crate::RawArchive::append`] can simply be called again: what landed is skipped by offset.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Contention { .. } | Error::ObjectStore { .. } => true,
            Error::Postgres { source, .. } | Error::Connect { source, .. } => postgres_retryable(source),
            Error::Delta { source, .. } => !matches!(
                **source,
                deltalake::DeltaTableError::InvalidTableLocation(_)
                    | deltalake::DeltaTableError::NotATable(_)
                    | deltalake::DeltaTableError::SchemaMismatch { .. }
            ),
            Error::InvalidInput { .. }
            | Error::Fenced { .. }
            | Error::Corrupt(_)
            | Error::Internal(_)
            | Error::Harness(_) => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput { what, reason: reason.into() }
    }

    pub(crate) fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Postgres { context, source }
    }

    pub(crate) fn delta(url: &str, context: &'static str) -> impl FnOnce(deltalake::DeltaTableError) -> Error {
        let url = url.to_owned();
        move |source| Error::Delta { url, context, source: Box::new(source) }
    }
}

/// Connection loss, serialization failures, deadlocks and a concurrent insert of the same serving row are
/// worth a retry; other constraint violations and syntax errors are not.
fn postgres_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("53") || c == "57P01" || postgres_conflict(e)
        }
    }
}

/// A conflict with a concurrent transaction that a new attempt resolves: a serialization failure, a
/// deadlock, or a serving row whose key another writer inserted after this write's snapshot (a new attempt
/// finds the row and updates it under precedence).
pub(crate) fn postgres_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "40001" || c.code() == "40P01") || concurrent_insert(e)
}

/// A unique violation of `serving_rows`' primary key: only the `MERGE` inserts there without `ON CONFLICT`,
/// and it inserts only keys absent from its snapshot, so another writer inserted the key since.
pub(crate) fn concurrent_insert(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "23505")
        && e.as_db_error().and_then(|d| d.constraint()) == Some("serving_rows_pkey")
}
