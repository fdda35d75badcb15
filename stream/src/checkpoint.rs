//! Engine checkpoints: the whole engine state as one binary blob ([postcard], a compact serde format).
//!
//! The blob holds the watermark tracker, accounting, source positions, the de-duplication set (event ids
//! by the watermark at which they expire) and every row with its accumulators as they are (session rows
//! also list the ids of their events). It starts with the format version, so a blob of another format is
//! refused before anything else is read (format 1 blobs were JSON and start with `{`).
//! It also holds a fingerprint of the spec's metrics, event schema and time policy: a blob is only
//! restored into an engine for the same definitions ([`Error::SpecChanged`] otherwise).
//! Equal engine states give equal blobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidemark_core::{Dimensions, EventTime, ValidSpec, Window};

use crate::engine::{Engine, MetricState, PartitionAccounts};
use crate::error::Error;
use crate::state::{EventId, RowState, SeenIds};
use crate::watermark::WatermarkTracker;
use crate::window_state::Step;
use crate::window_state::session::SessionRow;

/// The checkpoint format this build writes and reads (1: JSON with event payloads and row logs;
/// 2: postcard with accumulators and event ids).
pub const FORMAT: u32 = 2;

/// The blob. Written from borrowed parts (`Blob<StoredRow<&..>, &[EventId]>`), read as owned ones;
/// both serialize alike.
#[derive(Serialize, Deserialize)]
struct Blob<R, I> {
    format: u32,
    spec_fingerprint: u64,
    watermarks: WatermarkTracker,
    accounts: BTreeMap<i32, PartitionAccounts>,
    positions: BTreeMap<i32, i64>,
    last_now: Option<EventTime>,
    next_early: Option<EventTime>,
    /// Remembered ids by the watermark at which they expire (ids only session rows hold are listed with
    /// their rows).
    expiring: Vec<(EventTime, I)>,
    /// One list of rows per metric, in spec order, sorted by window and dimensions.
    metrics: Vec<Vec<R>>,
}

#[derive(Serialize, Deserialize)]
struct StoredRow<D, R, I> {
    window: Window,
    dims: D,
    row: R,
    /// The ids of the events a session row holds (empty for fixed windows).
    members: I,
}

type OwnedBlob = Blob<StoredRow<Dimensions, RowState, Vec<EventId>>, Vec<EventId>>;

/// A stable 64-bit FNV-1a hash of the parts of a spec that shape engine state.
pub(crate) fn fingerprint(spec: &ValidSpec) -> u64 {
    let text = format!("{:?}|{:?}|{:?}", spec.metrics(), spec.schema(), spec.spec().time);
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The errors this module can return carry serde_json errors; postcard's are converted by message.
fn decode_error(e: impl std::fmt::Display) -> Error {
    Error::CheckpointDecode(serde::de::Error::custom(e))
}

/// The format version a blob starts with.
fn format_of(blob: &[u8]) -> Result<u32, Error> {
    if blob.first() == Some(&b'{') {
        // format 1 was JSON
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(blob).map_err(Error::CheckpointDecode)?;
        return Ok(header.format);
    }
    postcard::take_from_bytes::<u32>(blob).map(|(format, _)| format).map_err(decode_error)
}

impl Engine {
    /// The engine's whole state as a blob for [`Engine::restore`].
    pub fn checkpoint(&self) -> Result<Vec<u8>, Error> {
        let expiring = self.seen.expiring().collect();
        let metrics = self
            .states
            .iter()
            .map(|s| {
                let mut rows: Vec<StoredRow<&Dimensions, &RowState, &[EventId]>> = match s {
                    MetricState::Fixed(f) => {
                        f.rows().map(|(window, dims, row)| StoredRow { window, dims, row, members: &[][..] }).collect()
                    }
                    MetricState::Session(s) => s
                        .rows()
                        .map(|(window, dims, s)| StoredRow { window, dims, row: &s.row, members: &s.members[..] })
                        .collect(),
                };
                rows.sort_unstable_by(|a, b| (a.window, a.dims).cmp(&(b.window, b.dims)));
                rows
            })
            .collect();
        let blob = Blob {
            format: FORMAT,
            spec_fingerprint: self.fingerprint,
            watermarks: self.watermarks.clone(),
            accounts: self.accounts.clone(),
            positions: self.positions.clone(),
            last_now: self.last_now,
            next_early: self.next_early,
            expiring,
            metrics,
        };
        postcard::to_stdvec(&blob).map_err(|e| Error::CheckpointEncode(serde::ser::Error::custom(e)))
    }

    /// An engine for `spec` in the state a [`Engine::checkpoint`] blob recorded.
    pub fn restore(spec: &ValidSpec, blob: &[u8]) -> Result<Engine, Error> {
        let format = format_of(blob)?;
        if format != FORMAT {
            return Err(Error::CheckpointFormat { found: format, expected: FORMAT });
        }
        let blob: OwnedBlob = postcard::from_bytes(blob).map_err(decode_error)?;
        let mut engine = Engine::new(spec);
        if blob.spec_fingerprint != engine.fingerprint {
            return Err(Error::SpecChanged);
        }
        if blob.metrics.len() != engine.metrics.len() {
            return Err(Error::CheckpointCorrupt(format!(
                "{} metrics in the blob, {} in the spec",
                blob.metrics.len(),
                engine.metrics.len()
            )));
        }
        let watermark = blob.watermarks.current();
        let mut seen = SeenIds::default();
        for (until, ids) in &blob.expiring {
            if watermark.is_some_and(|wm| *until <= wm) {
                return Err(Error::CheckpointCorrupt(format!("ids kept until {until}, behind the watermark")));
            }
            for id in ids {
                if seen.contains(id) {
                    return Err(Error::CheckpointCorrupt(format!("event id {id:?} is listed twice")));
                }
                seen.remember(id, Some(*until), 0);
            }
        }
        for ((metric, state), rows) in engine.metrics.iter().zip(&mut engine.states).zip(blob.metrics) {
            let step = Step { metric, policy: &engine.policy, watermark, now: EventTime::MIN };
            for StoredRow { window, dims, row, members } in rows {
                if !row.acc.computes(metric.aggregates.iter().map(|a| a.function)) {
                    return Err(Error::CheckpointCorrupt(format!(
                        "a row of metric {} has accumulators of other aggregates",
                        metric.name
                    )));
                }
                match state {
                    MetricState::Fixed(f) => {
                        if !members.is_empty() {
                            return Err(Error::CheckpointCorrupt("a fixed-window row lists event ids".into()));
                        }
                        f.restore_row(&step, window, &dims, row);
                    }
                    MetricState::Session(s) => {
                        for id in &members {
                            seen.hold(id);
                        }
                        s.restore_row(&step, window, &dims, SessionRow { row, members })
                            .map_err(Error::CheckpointCorrupt)?;
                    }
                }
            }
        }
        let policy = &engine.policy;
        engine.watermarks = blob.watermarks.with_policy(policy.watermark_delay, policy.idle_timeout);
        engine.seen = seen;
        engine.accounts = blob.accounts;
        engine.positions = blob.positions;
        engine.last_now = blob.last_now;
        engine.next_early = blob.next_early;
        Ok(engine)
    }
}
