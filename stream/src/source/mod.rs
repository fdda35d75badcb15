//! Where records come from: the Kafka consumer group ([`kafka`]) or a JSON Lines file ([`file`]) replayed
//! in arrival order ([`replay`] reads it). The service drives any [`Source`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::Error;
use crate::output::Record;

pub mod file;
pub mod kafka;
pub mod replay;

/// A Kafka topic partition (or a replayed file as partition 0).
pub type Partition = (String, i32);

/// Next offset to consume per partition.
pub type Offsets = BTreeMap<Partition, i64>;

/// Something that happened to the source's partitions, reported by [`Source::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions were assigned to this consumer (they resume from the offsets given to `seek`).
    Assigned(Vec<Partition>),
    /// These partitions were taken away (rebalance or shutdown).
    Revoked(Vec<Partition>),
}

/// What one [`Source::poll`] call produced besides records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Polled {
    /// Records appended to the caller's buffer.
    pub records: usize,
    /// Assignment changes since the previous poll, in order.
    pub assignments: Vec<Assignment>,
    /// The source has nothing more and never will (a file at its end); Kafka never ends.
    pub end: bool,
}

/// A source of records, consumed by one task.
///
/// Offsets are the serving store's business, not Kafka's: the service reads them from the store on start,
/// hands them to the source with [`Source::seek`], and after every committed write tells the source with
/// [`Source::committed`] (a Kafka source may also commit them to its group, for lag tooling only).
pub trait Source: Send {
    /// Where each partition resumes: the next offset to read. Partitions not in `offsets` start from the
    /// beginning. Called before the first poll; a Kafka source applies it on every later assignment too.
    fn seek(&mut self, offsets: &Offsets) -> Result<(), Error>;

    /// Appends up to `max` records to `out`, waiting at most `wait` for the first one.
    fn poll(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Polled, Error>> + Send;

    /// Stops fetching from every assigned partition (backpressure). `poll` still reports assignments.
    fn pause(&mut self) -> Result<(), Error>;

    /// Resumes fetching after [`Source::pause`].
    fn resume(&mut self) -> Result<(), Error>;

    /// These offsets are now committed in the serving store (with the rows they produced).
    fn committed(&mut self, offsets: &Offsets) -> Result<(), Error>;

    /// Whether records' `received_at` is the processing clock (Kafka: the record timestamp). The service
    /// then processes each record at its arrival time and lets processing time run with the wall clock
    /// only while polls come back empty ([`crate::ArrivalClock`]), so a backlog is processed as the live
    /// run it records. Default: no (the service's clock is processing time).
    fn arrival_clock(&self) -> bool {
        false
    }

    /// The end offset (next offset to be written) per partition as last known, for lag metrics; sources
    /// that cannot tell return an empty map.
    fn end_offsets(&mut self) -> Offsets {
        Offsets::new()
    }
}
